#!/usr/bin/env bash
# The patient study (issue 29, benchmarks/README.md "The patient study"), every step in order; each step
# resumes where it stopped and commits each finished run's row (--commit), so this one command continues
# the study on this machine or on a fresh clone. Steps (default: all, in this order):
#   pilot     the strong teacher (configs/fashion_mnist/teacher_strong.yaml), the seed-0 FP twin at 32 and
#             64 epochs (is 32 within 0.3 points of the plateau?), the no-teacher 2W/32A student at 32
#   teacher2  the same teacher recipe with seed 1: the second member of the ensemble
#   losses    seed 0, per precision (2W/32A, 4W/8A, LSQ 2W/2A), scheme C: the no-teacher student, the
#             paper's loss and each other row of the loss table (--sweep-points losses), chosen on the holdout
#   grid      seeds 0-2: the FP twin; 2W/32A, 4W/8A, LSQ 2W/2A without a teacher and with scheme C at the
#             loss the losses step chose per precision on the holdout (--loss-from); the FP student with
#             the teacher (32W/32A, C); the teacher is the ensemble of the two (--teacher-seeds 0 1), the
#             pilot's identical runs (FP twin and no-teacher students at seed 0) are reused
#             (--continue-from); results in accuracy_patient_grid.{json,md}
#   levers    (named only, after grid) quantizer levers for the missed goals: seed 0 of per-channel ternary
#             (pc:2W/32A) and of per-channel 4-bit weights with asym 8-bit activations (pc:4W/8A@asym), without
#             and with scheme C (accuracy_levers); then that 4W/8A over seeds 0-2 beside the grid's default
#             4W/8A rows, reused (accuracy_levers_4w8a)
#   levers-lsq (named only) learned steps for the other two missed goals, seed 0 without and with scheme C:
#             ternary with LSQ's learned step (lsq:2W/32A) and LSQ 2W/2A with per-channel weight steps
#             (lsq+pc:2W/2A), each at its base precision's chosen loss (accuracy_levers_lsq); then that LSQ
#             2W/2A over seeds 0-2 beside the grid's own lsq:2W/2A rows, reused (accuracy_levers_lsq_2w2a)
#   width     (named only) the capacity lever for the two goals no quantizer lever moved: seed 0 at width 1
#             (75,002 parameters, 3.9x the grid's): the FP twin; 2W/32A and LSQ 2W/2A without and with scheme C,
#             each at its precision's chosen loss (accuracy_width1); then the best 4W/8A variant, pc:4W/8A@asym
#             (accuracy_width1_4w8a); its own runs folder (runs/patient-w1: the grid's run names carry no
#             width), the teachers and their cache copied in from RUNS_DIR
#   erase     (named only) the lever for the teacher's gain, seed 0 (SEEDS="1 2" for the rest): the width-1 regime
#             with pad-crop-flip at pad 2 and random erasing 0.5 for every cell, the ensemble's cache holding
#             K = 4 erased views an image; the FP twin, 2W/32A, pc:4W/8A@asym and LSQ 2W/2A without and with
#             scheme C (accuracy_erase_w1; runs/erase-w1, ERASE_RUNS_DIR); the teachers from the grid's snapshots
#   grid-w1   (named only, after width) the grid at width 1 over seeds 0-2: the FP twin; 2W/32A, pc:4W/8A@asym and
#             LSQ 2W/2A without and with scheme C; the FP student with the teacher; the width step's seed-0
#             rows reused (accuracy_patient_grid_w1)
# Usage: benchmarks/patient_study.sh [STEP ...]   (stop with Ctrl-C or SIGTERM: the runs checkpoint)
#        DRY_RUN=1 benchmarks/patient_study.sh ...  prints the steps' commands instead
#        WORKERS=1 benchmarks/patient_study.sh ...  one run at a time (default two), e.g. beside teacher2
#        RUNS_DIR, TEACHER2_SNAPSHOT                 the run folders (runs/patient) and teacher2's committed copy
set -euo pipefail
cd "$(dirname "$0")/.."
PY=(.venv/bin/python)
[ -n "${DRY_RUN:-}" ] && PY=(echo "${PY[@]}")
RUNS=${RUNS_DIR:-runs/patient}
REGIME=(--train-images 0 --pad 0 --student-width 0.5 --epochs "${EPOCHS:-32}" --channels-last
        --teacher-recipe configs/fashion_mnist/teacher_strong.yaml --runs-dir "$RUNS"
        --out benchmarks/results/accuracy_patient.json --workers "${WORKERS:-2}" --threads 1 --commit)

SNAP=${TEACHER2_SNAPSHOT:-benchmarks/results/accuracy_patient_runs/teacher-s1}  # committed: a fresh clone resumes or uses it

teacher2() {  # a plain run folder beside the grid's: resumed if it has a checkpoint, skipped once finished
  local out=$RUNS/teacher-s1 rc=0 done='"status": "finished"'
  if [ -n "${DRY_RUN:-}" ]; then  # a plan, not a copy: say what a real run would find
    if grep -qs "$done" "$out/summary.json" "$SNAP/summary.json"; then echo "# teacher2: finished, nothing to run"; return 0; fi
  elif [ ! -f "$out/checkpoints/last.pt" ] && [ -f "$SNAP/checkpoints/last.pt" ]; then
    mkdir -p "$out" && cp -r "$SNAP/." "$out/"   # the committed half-way (or finished) run
  fi
  if grep -qs "$done" "$out/summary.json"; then return 0; fi
  local how=(--overwrite); [ -f "$out/checkpoints/last.pt" ] && how=(--resume)
  # One thread, as the grid's runs (accuracy.py --threads 1): beside a second run, torch's default of one
  # thread a core made this run 8x slower (22 img/s against 177).
  OMP_NUM_THREADS=1 "${PY[@]}" -m apprentice train configs/fashion_mnist/teacher_strong.yaml "${how[@]}" train.seed=1 \
      data.holdout=5000 train.out="$out" || rc=$?
  [ -n "${DRY_RUN:-}" ] && return 0
  mkdir -p "$SNAP/checkpoints"   # finished or stopped: keep what a fresh clone needs, and commit it
  cp "$out"/{config.yaml,metrics.jsonl} "$SNAP/" && cp "$out/checkpoints/last.pt" "$SNAP/checkpoints/"
  [ -f "$out/summary.json" ] && cp "$out/summary.json" "$SNAP/" && cp "$out/checkpoints/best.pt" "$SNAP/checkpoints/"
  git add "$SNAP" && git commit -q -m "patient study: teacher-s1 $([ $rc -eq 0 ] && echo finished || echo stopped, kept to resume)" \
      -- "$SNAP" || echo "patient_study: could not commit $SNAP" >&2
  return $rc
}

wide_regime() {  # the caller's w1: REGIME at width 1, in RUNS_DIR-w1 (the grid's run names carry no width), out $1
  w1=("${REGIME[@]/%accuracy_patient.json/$1}"); w1=("${w1[@]/#0.5/1.0}"); w1=("${w1[@]/#$RUNS/${RUNS%/}-w1}")
}

step() {
  case "$1" in
    pilot) "${PY[@]}" benchmarks/accuracy.py "${REGIME[@]}" --precisions 2W/32A --schemes baseline --seeds 0 \
             --plateau --no-sweep ;;
    teacher2) teacher2 ;;
    losses) "${PY[@]}" benchmarks/accuracy.py "${REGIME[@]}" --precisions 2W/32A 4W/8A lsq:2W/2A \
              --schemes baseline C --seeds 0 --plateau --sweep-cell 2W/32A:C 4W/8A:C lsq:2W/2A:C --sweep-points losses ;;
    grid) "${PY[@]}" benchmarks/accuracy.py "${REGIME[@]/%accuracy_patient.json/accuracy_patient_grid.json}" \
            --precisions 2W/32A 4W/8A lsq:2W/2A 32W/32A --schemes baseline C --seeds 0 1 2 \
            --loss-from benchmarks/results/accuracy_patient.json --no-sweep \
            --teacher-seeds 0 1 --continue-from benchmarks/results/accuracy_patient.json ;;
    levers)
      local lever=(--precisions pc:2W/32A pc:4W/8A@asym --seeds 0 --loss pc:2W/32A=gamma-rise pc:4W/8A@asym=gamma-rise)
      local four=(--precisions 4W/8A pc:4W/8A@asym --seeds 0 1 2 --loss-from benchmarks/results/accuracy_patient.json
                  --loss pc:4W/8A@asym=gamma-rise)
      "${PY[@]}" benchmarks/accuracy.py "${REGIME[@]/%accuracy_patient.json/accuracy_levers.json}" "${lever[@]}" \
        --schemes baseline C --no-sweep --teacher-seeds 0 1 --continue-from benchmarks/results/accuracy_patient_grid.json
      "${PY[@]}" benchmarks/accuracy.py "${REGIME[@]/%accuracy_patient.json/accuracy_levers_4w8a.json}" "${four[@]}" \
        --schemes baseline C --no-sweep --teacher-seeds 0 1 \
        --continue-from benchmarks/results/accuracy_levers.json benchmarks/results/accuracy_patient_grid.json ;;
    levers-lsq)
      "${PY[@]}" benchmarks/accuracy.py "${REGIME[@]/%accuracy_patient.json/accuracy_levers_lsq.json}" \
        --precisions lsq:2W/32A lsq+pc:2W/2A --seeds 0 --loss lsq:2W/32A=gamma-rise lsq+pc:2W/2A=paper \
        --schemes baseline C --no-sweep --teacher-seeds 0 1 --continue-from benchmarks/results/accuracy_patient_grid.json
      "${PY[@]}" benchmarks/accuracy.py "${REGIME[@]/%accuracy_patient.json/accuracy_levers_lsq_2w2a.json}" \
        --precisions lsq:2W/2A lsq+pc:2W/2A --seeds 0 1 2 --loss-from benchmarks/results/accuracy_patient.json \
        --loss lsq+pc:2W/2A=paper --schemes baseline C --no-sweep --teacher-seeds 0 1 \
        --continue-from benchmarks/results/accuracy_levers_lsq.json benchmarks/results/accuracy_patient_grid.json ;;
    width)
      local wide=${RUNS%/}-w1 n w1
      for n in teacher teacher-s1 teacher-cache-s0-1; do  # the same teachers: no 5.4 h teacher, no 41 min cache again
        [ -e "$wide/$n" ] || [ ! -d "$RUNS/$n" ] || { mkdir -p "$wide" && cp -r "$RUNS/$n" "$wide/$n"; }
      done
      wide_regime accuracy_width1.json
      "${PY[@]}" benchmarks/accuracy.py "${w1[@]}" --precisions 2W/32A lsq:2W/2A --seeds 0 --schemes baseline C \
        --loss-from benchmarks/results/accuracy_patient.json --no-sweep --teacher-seeds 0 1
      "${PY[@]}" benchmarks/accuracy.py "${w1[@]/%accuracy_width1.json/accuracy_width1_4w8a.json}" \
        --precisions pc:4W/8A@asym --loss pc:4W/8A@asym=gamma-rise --seeds 0 --schemes baseline C --no-sweep \
        --teacher-seeds 0 1 ;;
    erase)
      local w1
      wide_regime accuracy_erase_w1.json   # argparse keeps an option's last value: these replace the regime's
      "${PY[@]}" benchmarks/accuracy.py "${w1[@]}" --pad 2 --erase 0.5 --cache-views 4 \
        --runs-dir "${ERASE_RUNS_DIR:-runs/erase-w1}" --precisions 2W/32A pc:4W/8A@asym lsq:2W/2A \
        --schemes baseline C --seeds ${SEEDS:-0} --loss-from benchmarks/results/accuracy_patient.json \
        --loss pc:4W/8A@asym=gamma-rise --no-sweep --teacher-seeds 0 1 \
        --continue-from benchmarks/results/accuracy_patient_grid.json ;;
    grid-w1)
      local w1
      wide_regime accuracy_patient_grid_w1.json
      "${PY[@]}" benchmarks/accuracy.py "${w1[@]}" --precisions 2W/32A pc:4W/8A@asym lsq:2W/2A 32W/32A \
        --schemes baseline C --seeds 0 1 2 --loss-from benchmarks/results/accuracy_patient.json \
        --loss pc:4W/8A@asym=gamma-rise --no-sweep --teacher-seeds 0 1 \
        --continue-from benchmarks/results/accuracy_width1.json benchmarks/results/accuracy_width1_4w8a.json \
        benchmarks/results/accuracy_patient_grid.json ;;
  esac
}

STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(pilot teacher2 losses grid)
for s in "${STEPS[@]}"; do  # every name checked before any step runs
  case "$s" in pilot|teacher2|losses|grid|levers|levers-lsq|width|grid-w1|erase) ;;
    *) echo "patient_study: unknown step '$s' (pilot, teacher2, losses, grid, levers, levers-lsq, width, grid-w1, erase)" >&2; exit 2 ;;
  esac
done
for s in "${STEPS[@]}"; do step "$s"; done
