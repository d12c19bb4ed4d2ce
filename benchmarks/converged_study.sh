#!/usr/bin/env bash
# The accuracy-at-convergence study, every step in order; each step resumes where it stopped and
# commits each finished run's row (--commit), so this one command continues the study on this
# machine or on a fresh clone. Steps (default: all, in this order):
#   grid      the 16-epoch grid: FP twin, 5 precisions x {no teacher, B, C}, 3 seeds, plateau, convergence
#   frontier  top-1 against packed bytes, precision x width, scheme C, 2 seeds (shares the grid's runs)
#   sweep     the missed goals' cells, seed 0, gamma and temperature one at a time (and C's lr), chosen on
#             the holdout; SWEEP_CELLS names cells (default "missed": each student goal the grid misses,
#             at the scheme its holdout chose)
#   teacher   teacher strength: a 3-epoch teacher for the LSQ 2W/2A cells B and C, seed 0 (the grid's
#             12-epoch teacher is the comparison; C's FP twin is retrained there, same seed and recipe)
# Usage: benchmarks/converged_study.sh [STEP ...]   (stop with Ctrl-C or SIGTERM: the runs checkpoint)
#        DRY_RUN=1 benchmarks/converged_study.sh ...  prints the steps' commands instead
set -euo pipefail
cd "$(dirname "$0")/.."
PY=(.venv/bin/python)
[ -n "${DRY_RUN:-}" ] && PY=(echo "${PY[@]}")
REGIME=(--train-images 0 --pad 0 --student-width 0.5 --epochs 16 --teacher resnet14)
GRID=("${REGIME[@]}" --teacher-epochs 12 --precisions 2W/32A 2W/8A 4W/8A lsq:2W/2A lsq:4W/4A
      --schemes baseline B C --plateau --convergence --milestones 0.5 0.75
      --runs-dir runs/converged16 --out benchmarks/results/accuracy_converged.json --workers 2 --threads 1 --commit)
read -r -a CELLS <<< "${SWEEP_CELLS:-missed}"

step() {
  case "$1" in
    grid) "${PY[@]}" benchmarks/accuracy.py "${GRID[@]}" --no-sweep ;;
    frontier) "${PY[@]}" benchmarks/frontier.py "${REGIME[@]}" --teacher-epochs 12 --runs-dir runs/converged16 \
                --shared-results benchmarks/results/accuracy_converged.json \
                --out benchmarks/results/frontier.json --workers 2 --commit ;;
    sweep) "${PY[@]}" benchmarks/accuracy.py "${GRID[@]}" --sweep-cell "${CELLS[@]}" --sweep-points axes ;;
    teacher) "${PY[@]}" benchmarks/accuracy.py "${REGIME[@]}" --teacher-epochs 3 --precisions lsq:2W/2A --schemes B C \
               --seeds 0 --no-sweep --runs-dir runs/weak_teacher \
               --out benchmarks/results/accuracy_weak_teacher.json --workers 2 --threads 1 --commit ;;
  esac
}

STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(grid frontier sweep teacher)
for s in "${STEPS[@]}"; do  # every name checked before any step runs
  case "$s" in grid|frontier|sweep|teacher) ;;
    *) echo "converged_study: unknown step '$s' (grid, frontier, sweep, teacher)" >&2; exit 2 ;;
  esac
done
for s in "${STEPS[@]}"; do step "$s"; done
