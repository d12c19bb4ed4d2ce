#!/bin/bash
# The K-view study (issue 29): what a teacher cache of K views an image gives against one of every
# view (pad-crop-flip at pad 2: 50 views), on the cell where the teacher mattered most in the
# 10,000-image, 8-epoch grid (2W/8A, scheme B; its no-teacher students and FP twins beside it).
# Seed 0 of every K first, then seeds 1 and 2; resumable (rerun the same command); each finished row
# committed (--commit). Results: benchmarks/results/accuracy_kviews_{1,5,full}.{json,md}.
#   WORKERS=1 benchmarks/kviews_study.sh          # from a worktree with its own venv
set -euo pipefail
cd "$(dirname "$0")/.."
common=(--train-images 10000 --epochs 8 --precisions 2W/8A --schemes baseline B --no-sweep
        --runs-dir "${RUNS_DIR:-runs/kviews}" --workers "${WORKERS:-1}" --threads 1 --commit)
for seeds in "0" "0 1 2"; do
  for k in 1 5 full; do
    views=(); [ "$k" != full ] && views=(--cache-views "$k")
    # shellcheck disable=SC2086  # seeds: one or several words
    .venv/bin/python benchmarks/accuracy.py "${common[@]}" "${views[@]}" --seeds $seeds \
        --out "benchmarks/results/accuracy_kviews_$k.json"
  done
done
