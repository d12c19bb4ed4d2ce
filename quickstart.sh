#!/usr/bin/env bash
# The main job, from a fresh checkout: get Fashion-MNIST, train a full-precision teacher, distil a
# ternary student into it with scheme B, train the same student without a teacher (the baseline),
# export the student as a packed file and print teacher / baseline / student accuracy and sizes.
#
#   ./quickstart.sh                     # about 7 minutes on 2 CPU cores with AVX-512 (21 without)
#   OUT=runs/mine ./quickstart.sh       # where the runs go (default: runs/quickstart-<time>)
#   QS_ARGS="train.epochs=1" ./quickstart.sh   # extra overrides for every training run
set -euo pipefail
cd "$(dirname "$0")"

# 1. Data: Debian packages Fashion-MNIST; without it apprentice downloads it where a network allows.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
    sudo_=""; [ "$(id -u)" -ne 0 ] && sudo_="sudo"
    $sudo_ apt-get install -y -q dataset-fashion-mnist >/dev/null \
        || echo "quickstart: apt-get could not install dataset-fashion-mnist; apprentice will try to download it"
fi

# 2. Environment: the pinned CPU torch (constraints.txt) and the package with TensorBoard events.
if [ ! -x .venv/bin/apprentice ]; then
    python3 -m venv .venv
    .venv/bin/pip install -q -c constraints.txt -e '.[tensorboard]'
fi
ap=.venv/bin/apprentice
out=${OUT:-runs/quickstart-$(date +%Y%m%d-%H%M%S)}
read -r -a extra <<< "${QS_ARGS:-}"

# 3. Teacher (FP ResNet-14), no-teacher baseline and scheme-B student (ternary ResNet-8, 2W/32A).
"$ap" train configs/fashion_mnist/teacher.yaml train.out="$out/teacher" "${extra[@]}"
"$ap" train configs/fashion_mnist/student_baseline.yaml train.out="$out/baseline" "${extra[@]}"
"$ap" train configs/fashion_mnist/student_b.yaml train.out="$out/student" distill.teacher="$out/teacher" "${extra[@]}"

# 4. Export: ternary weights packed five to a byte, in one safetensors file; then the summary table.
"$ap" export "$out/student" --format packed --out "$out/student.safetensors"
"$ap" compare "$out/teacher" "$out/baseline" "$out/student" "$out/student.safetensors"
echo
echo "quickstart: a 3-epoch sketch. The full recipe, where the teacher pays (issue 29's patient study, 3 seeds:"
echo "the ternary student 93.31 % with the teachers, 93.09 % without, its FP twin 92.93 %) does not fit a"
echo "quickstart: two teachers (configs/fashion_mnist/teacher_strong.yaml, 3.6-5.4 h each on 2 CPU cores), their"
echo "cache (20-50 min), then student_patient_fp.yaml and student_patient.yaml (36-81 min each): about 9-14 h one after another;"
echo "the commands are in the header of configs/fashion_mnist/student_patient.yaml, the study in benchmarks/README.md."
