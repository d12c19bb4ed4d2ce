"""Your own images vs the packaged files: Fashion-MNIST written out as a PNG folder, trained from the CLI.

The same recipe twice, from the command line, on the same images:

* **idx**: ``data.name=fashion_mnist`` (the IDX files, as the quickstart trains);
* **folder**: the training images written as ``train/<k>_<class>/<i>.png`` and the test images as
  ``val/...`` in a temporary folder, trained with ``data.name=folder data.channels=1
  data.augmentation=pad-crop-flip data.pad=2`` (Fashion-MNIST's own augmentation: the folder's
  default pad would be 28 // 8 = 3). Its mean and std are computed from the PNGs; the folder is
  decoded once into its tensor cache by the first run.

For each data path and seed: the FP ResNet-14 teacher (configs/fashion_mnist/teacher.yaml), then
the ternary ResNet-8 student with scheme B (configs/fashion_mnist/student_b.yaml). Reported: final
test top-1 of both runs, training images per second (median over the epochs of each run, from its
metrics.jsonl), the wall time of every command, the time to write the PNGs and to decode them
once; then the folder student is exported and ``apprentice predict`` runs on a few test PNGs.

    .venv/bin/python benchmarks/folder_vs_idx.py                       # full: 60,000 + 10,000 images, 3 epochs, seed 0
    .venv/bin/python benchmarks/folder_vs_idx.py --seeds 0 1 2         # seed noise
    .venv/bin/python benchmarks/folder_vs_idx.py --images 512 --test-images 500 --epochs 1 --out /tmp/fvi.json  # tiny
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stamp import REPO, markdown_table, stamp, stamp_markdown, write_results

from apprentice.atomic import atomic_write_text
from apprentice.data import DATASETS, load_tensors

RECIPES = {"teacher": "configs/fashion_mnist/teacher.yaml", "student": "configs/fashion_mnist/student_b.yaml"}
FOLDER_SETTINGS = ["data.name=folder", "data.channels=1", "data.augmentation=pad-crop-flip", "data.pad=2", "data.flip=true"]


def class_folder(k: int) -> str:
    """``3_Dress``: the index first, so natural order is label order; no '/' (T-shirt/top)."""
    return f"{k}_{re.sub(r'[^A-Za-z0-9]+', '-', DATASETS['fashion_mnist'].classes[k])}"


def write_png_folder(root: Path, images: np.ndarray, labels: np.ndarray, split: str) -> list[Path]:
    """Write uint8 N×28×28 images as ``root/split/<class>/<i>.png``; returns the paths in order."""
    from PIL import Image

    paths = []
    for k in range(10):
        (root / split / class_folder(k)).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        path = root / split / class_folder(int(label)) / f"{i:05d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def cli(args: list[str], log: Path) -> tuple[float, str]:
    """Run ``python -m apprentice ARGS``; returns (wall seconds, stderr). Fails loudly with the log's tail."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "apprentice", *args], cwd=REPO, capture_output=True, text=True,
                         check=False, env={**os.environ, "PYTHONPATH": str(REPO)})
    log.write_text(f"$ apprentice {' '.join(args)}\n{out.stdout}\n{out.stderr}")
    if out.returncode != 0:
        raise SystemExit(f"apprentice {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return time.perf_counter() - t0, out.stdout + out.stderr


def run_summary(run: Path) -> dict[str, Any]:
    """Final/best test top-1, wall time and the median training images per second of a finished run."""
    summary = json.loads((run / "summary.json").read_text())
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [e["images_per_s"] for e in epochs if e.get("type") == "epoch"]
    return {"final_top1": summary["final_top1"], "best_top1": summary["best_top1"],
            "train_images": summary["train_images"], "run_wall_s": round(summary["wall_time_s"], 1),
            "images_per_s_median": round(statistics.median(rates), 1), "images_per_s_epochs": [round(r, 1) for r in rates]}


def train_pair(path: str, seed: int, common: list[str], work: Path) -> dict[str, Any]:
    """Teacher then scheme-B student on one data path; their results and command times. Each finished
    run's result is kept in the work folder, so a rerun with the same ``--workdir`` skips it (and
    restarts an unfinished one)."""
    runs = work / "runs" / f"{path}-s{seed}"
    out: dict[str, Any] = {"path": path, "seed": seed}
    for role, recipe in RECIPES.items():
        done = work / f"{path}-s{seed}-{role}.json"
        if done.exists():
            out[role] = json.loads(done.read_text())
            continue
        extra = [f"distill.teacher={runs / 'teacher'}"] if role == "student" else []
        wall, text = cli(["train", recipe, "--overwrite", *common, f"train.seed={seed}", f"train.out={runs / role}",
                          *extra], work / f"{path}-s{seed}-{role}.log")
        decoded = re.findall(r"decoded the \d+ images of .*?\(([\d.]+) s,", text)
        out[role] = {**run_summary(runs / role), "command_wall_s": round(wall, 1),
                     **({"decode_s": [float(s) for s in decoded]} if decoded else {})}
        atomic_write_text(done, json.dumps(out[role]))
    return out


def predict_some(student: Path, images: list[Path], work: Path) -> dict[str, Any]:
    """Export the folder student as a packed file and predict a few test PNGs with it."""
    packed = work / "student.safetensors"
    cli(["export", str(student), "--format", "packed", "--out", str(packed)], work / "export.log")
    _, text = cli(["predict", str(packed), *map(str, images), "--top-k", "2", "--json"], work / "predict.log")
    answers = json.loads(text[text.index("{"):text.rindex("}") + 1])["predictions"]
    return {"packed_bytes": packed.stat().st_size,
            "predictions": [{"image": Path(a["image"]).relative_to(work).as_posix(), "true": Path(a["image"]).parent.name,
                             "top": [(t["class"], round(t["probability"], 4)) for t in a["top"]]} for a in answers]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=60000, help="training images, the first N of the IDX file (default all)")
    ap.add_argument("--test-images", type=int, default=10000, help="test images written as val/ (default all 10,000)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of teacher and student (default 3, as the quickstart)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--predict", type=int, default=5, help="test PNGs to predict at the end")
    ap.add_argument("--workdir", help="keep the PNG folder and runs here (default: a temporary folder, removed); "
                    "rerun with the same folder to continue: finished pairs are skipped")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/folder_vs_idx.json"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="folder_vs_idx-") as tmp:
        work = Path(args.workdir or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        result = run(args, work)
    result["stamp"] = stamp(argv)
    rows = [[r["path"], r["seed"], r["teacher"]["final_top1"], r["student"]["final_top1"],
             r["teacher"]["images_per_s_median"], r["student"]["images_per_s_median"],
             r["teacher"]["command_wall_s"], r["student"]["command_wall_s"]] for r in result["runs"]]
    table = markdown_table(["data", "seed", "teacher top-1 %", "student top-1 %", "teacher img/s", "student img/s",
                            "teacher command s", "student command s"], rows)
    lines = "\n".join(f"- `{p['image']}` ({p['true']}): " + ", ".join(f"{c} {100 * q:.1f} %" for c, q in p["top"])
                      for p in result["predict"]["predictions"])
    md = (f"# Fashion-MNIST as a PNG folder vs the IDX files\n\n{stamp_markdown(result['stamp'])}\n\n{table}\n\n"
          f"PNGs written in {result['png_write_s']} s ({result['train_images']} training, {result['test_images']} "
          f"test images; the IDX runs are scored on all {result['idx_test_images']} test images). Predictions of the folder student's packed file "
          f"({result['predict']['packed_bytes']:,} bytes):\n\n{lines}\n")
    write_results(args.out, result, md, table)
    return result


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    train, test = load_tensors("fashion_mnist", "train"), load_tensors("fashion_mnist", "test")
    n, m = min(args.images, len(train)), min(args.test_images, len(test))
    folder = work / "fashion_png"
    written = work / "png_write.json"  # a kept work folder (--workdir) is written once
    if written.exists():
        png_s = json.loads(written.read_text())["seconds"]
        val_paths = sorted((folder / "val").glob("*/*.png"), key=lambda q: q.name)
    else:
        t0 = time.perf_counter()
        write_png_folder(folder, train.images[:n, 0].numpy(), train.labels[:n].numpy(), "train")
        val_paths = write_png_folder(folder, test.images[:m, 0].numpy(), test.labels[:m].numpy(), "val")
        png_s = round(time.perf_counter() - t0, 1)
        atomic_write_text(written, json.dumps({"seconds": png_s, "train": n, "test": m}))
    common = [f"train.epochs={args.epochs}"]
    idx = [*common, *([f"data.limit={n}"] if n < len(train) else [])]
    own = [*common, *FOLDER_SETTINGS, f"data.dir={folder}"]
    runs = [train_pair(path, seed, settings, work) for seed in args.seeds
            for path, settings in (("idx", idx), ("folder", own))]
    student = work / "runs" / f"folder-s{args.seeds[0]}" / "student"
    picks = [val_paths[i] for i in np.linspace(0, m - 1, args.predict).round().astype(int)]
    return {"train_images": n, "test_images": m, "idx_test_images": len(test), "epochs": args.epochs,
            "seeds": args.seeds, "png_write_s": png_s, "folder_settings": FOLDER_SETTINGS, "runs": runs,
            "predict": predict_some(student, picks, work)}


if __name__ == "__main__":
    main()
