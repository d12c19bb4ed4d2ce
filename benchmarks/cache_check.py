"""The teacher cache of the accuracy grid, checked and priced: its size and build time, whether its
logits equal the live teacher's, and after how many student epochs it has paid for itself.

    .venv/bin/python benchmarks/cache_check.py --runs-dir runs/accuracy     # after benchmarks/accuracy.py --teacher-cache

Equality: ``--pairs`` random (image, view) pairs of the grid's training images; for each, the teacher
is run live on exactly that view (`apprentice.data.apply_views`, the training augmentation's own code)
and compared with the cache's float16 logits. Float16 keeps 11 significant bits, so a stored logit
may differ from the float32 one by up to 2^-11 of its magnitude (half a unit in the last place); the
check allows 1e-5 relative more, as the build ran the teacher on batches of another size.

Price: the build time is estimated from the teacher's forward timed here (one quiet thread, the build's
batch of 500) over every image and view; the build job's own wall time (its last progress line) is
reported beside it but counts whatever shared the CPU. The saving per student epoch is the frozen
teacher's forward over one epoch of training batches, timed here at the grid's batch size.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stamp import REPO, markdown_table, stamp, stamp_markdown, write_results

from apprentice.data import (
    HOLDOUT_SEED,
    apply_views,
    load_tensors,
    normalize,
    open_teacher_cache,
    teacher_hash,
    tensor_source,
    view_count,
)
from apprentice.data.cache_file import MappedFile
from apprentice.run.runs import load_run


def build_seconds(log: Path) -> float | None:
    """The cache-teacher job's elapsed time, from its last progress line ("... 12 min 03 s so far ...")."""
    if not log.is_file():
        return None
    found = re.findall(r"(\d+) min (\d+) s so far", log.read_text(errors="replace"))
    return 60 * int(found[-1][0]) + int(found[-1][1]) if found else None


def build_batch(path: Path) -> int:
    """The images a teacher forward that the build of the cache at ``path`` used (recorded in its header)."""
    return int(json.loads(MappedFile(path).layout.metadata["build"])["batch_size"])


def equality(teacher: torch.nn.Module, cache: Any, data: Any, pairs: int) -> dict[str, Any]:
    """Largest difference of cached and live logits over random (image, view) pairs, against float16's half-ulp."""
    g = torch.Generator().manual_seed(0)
    index = torch.randint(len(data), (pairs,), generator=g)
    views = torch.randint(view_count(data.pad, data.flip), (pairs,), generator=g)
    with torch.no_grad():
        images = apply_views(data.images[index], views, pad=data.pad, flip=data.flip)
        live = teacher.eval()(normalize(images, data.mean, data.std))
    cached = cache.lookup(index, views)
    diff = (cached - live).abs()
    # float16: half a unit in the last of its 11 significant bits; plus 1e-5 relative, since the build ran
    # the teacher on batches of another size (float32 sums in another order)
    bound = live.abs() * (2.0**-11 + 1e-5) + 1e-6
    return {"pairs": pairs, "max_abs_diff": float(diff.max()), "max_abs_logit": float(live.abs().max()),
            "within_float16_rounding": bool((diff <= bound).all()), "max_diff_over_bound": float((diff / bound).max()),
            "argmax_agreement": float((cached.argmax(1) == live.argmax(1)).float().mean())}


def forward_seconds(teacher: torch.nn.Module, data: Any, batch: int, repeats: int = 10) -> float:
    """Median seconds of one frozen-teacher forward over ``batch`` training images (eval, no grad)."""
    x = normalize(data.images[:batch], data.mean, data.std)
    times = []
    with torch.no_grad():
        for _ in range(repeats + 2):
            t0 = time.perf_counter()
            teacher(x)
            times.append(time.perf_counter() - t0)
    return sorted(times[2:])[len(times[2:]) // 2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs-dir", default="runs/accuracy")
    ap.add_argument("--holdout", type=int, default=5000)
    ap.add_argument("--train-images", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--out", default="benchmarks/results/teacher_cache.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    runs = (REPO / args.runs_dir).resolve()
    teacher = load_run(runs / "teacher").model
    data = load_tensors("fashion_mnist", "train", download=False, holdout=args.holdout, seed=HOLDOUT_SEED,
                        limit=args.train_images)
    path = runs / "teacher-cache" / "teacher.cache"
    cache = open_teacher_cache(path, tensor_source(data, teacher=teacher_hash(teacher), holdout=args.holdout,
                                                   limit=args.train_images))
    views = view_count(data.pad, data.flip)
    # The build's own wall time is logged but counts whatever shared the CPU with it; the estimate is
    # the same work at this process's quiet, one-thread pace (at the batch size the build recorded).
    logged = build_seconds(runs / "logs" / "teacher-cache.log")
    batch = build_batch(path)
    estimate = len(data) * views * forward_seconds(teacher, data, batch) / batch
    per_epoch = forward_seconds(teacher, data, args.batch) * (len(data) // args.batch)
    result = {"benchmark": "teacher_cache", "stamp": stamp(argv), "settings": vars(args),
              "images": len(data), "views": views, "file_bytes": path.stat().st_size,
              "build_seconds_logged": logged, "build_seconds_estimated_one_thread": round(estimate, 1),
              "teacher_forward_seconds_per_student_epoch": round(per_epoch, 2),
              "break_even_student_epochs": round(estimate / per_epoch, 1),
              "equality": equality(teacher, cache, data, args.pairs)}
    e = result["equality"]
    table = markdown_table(
        ["images × views", "file MB", "build s (estimated, 1 thread)", "build s (logged)", "teacher s / student epoch",
         "break-even epochs", f"{e['pairs']} pairs: max abs difference", "within float16 rounding", "argmax agreement"],
        [[f"{len(data):,} × {views}", round(result["file_bytes"] / 1e6, 1), round(estimate), logged, round(per_epoch, 1),
          result["break_even_student_epochs"], round(e["max_abs_diff"], 5), e["within_float16_rounding"],
          e["argmax_agreement"]]])
    md = "\n".join(["# Teacher cache of the accuracy grid", "", stamp_markdown(result["stamp"]), "", table, ""])
    write_results(REPO / args.out, result, md, table)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
