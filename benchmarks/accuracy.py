"""Accuracy grid on Fashion-MNIST: FP teacher, FP twin, and 2W/32A, 2W/8A, 4W/8A students trained
without a teacher and with schemes A, B and C, over several seeds; plus a gamma/temperature sweep of
scheme B chosen on held-out training images.

    .venv/bin/python benchmarks/accuracy.py --no-sweep      # the 40-run grid (~90 min on 2 cores)
    .venv/bin/python benchmarks/accuracy.py                 # plus the gamma/temperature sweep (~15 min more)
    .venv/bin/python benchmarks/accuracy.py --report-only   # rebuild json/md/png from finished runs

Precision labels may name the weight quantizer (``lsq:2W/8A``); ``--schemes`` limits the schemes; by
default the B and C cells read the teacher's logits from one teacher cache (``--no-teacher-cache``:
the teacher runs live). Every cell is one `apprentice train` run (a subprocess, so a crash or Ctrl-C loses at most the
current step: runs checkpoint and a rerun of this command resumes them; finished runs are reused).
Results: ``benchmarks/results/accuracy.json`` (one row per run), ``accuracy.md`` (tables) and
``accuracy_epochs.png`` / ``accuracy_size.png`` (plots), written after every finished run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy_goals
import accuracy_report
from _labels import act_quantizer, parse_label, per_channel, split_label
from _runner import (
    CACHE,
    AfterRuns,
    Job,
    cache_file,
    continue_from,
    run_jobs,
)
from _stamp import REPO, stamp
from accuracy_report import SCHEMES

from apprentice.cli.user_code import import_user_code
from apprentice.config import DistillConfig
from apprentice.errors import ApprenticeError
from apprentice.losses import LOSSES

PRECISIONS = ("2W/32A", "2W/8A", "4W/8A")
SWEEP_GAMMA = (0.5, 1.0, 2.0)
SWEEP_TEMPERATURE = (1.0, 2.0, 4.0)
SWEEP_C_LR = (0.003, 0.03)  # a scheme-C sweep also tries its fine-tuning lr around the grid's 0.01
SWEEP_CELL = "2W/32A:B"  # the committed grid's sweep: scheme B at 2W/32A, where the gain was least clear
# The paper's loss weights are the library's defaults; the grid runs at them, the sweep around them.
DEFAULT = {"gamma": DistillConfig().gamma, "temperature": DistillConfig().temperature}


def _slug(label: str) -> str:
    return label.replace(":", "-").replace("@", "-").replace("+", "-").replace("/", "").lower()


def _precision_overrides(label: str) -> dict[str, Any]:
    (quantizer, precision), act = split_label(label), act_quantizer(label)
    return {"quant.precision": precision, **({"quant.quantizer": quantizer} if quantizer else {}),
            **({"quant.per_channel": True} if per_channel(label) else {}),
            **({"quant.act_quantizer": act} if act else {})}




#: regime options and the override each sets when it differs from the committed 10,000-image grid's
#: (so that grid's rows keep matching their jobs): option -> (default, override key)
# option: (default, override key, students' only: the teacher keeps its own value)
REGIME = {"student_width": (1.0, "model.width", True), "batch_size": (128, "data.batch_size", False),
          "channels_last": (False, "train.channels_last", False), "pad": (None, "data.pad", True),
          "erase": (0.0, "data.erase", True)}


#: what a --set may not say: the grid's own axes, set per cell
GRID_KEYS = ("quant.", "distill.", "model.name", "train.seed", "train.epochs", "train.out")


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``--set KEY=VALUE ...`` as overrides (YAML values, as the command line reads them)."""
    import yaml

    sets: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key or key.startswith(GRID_KEYS):
            raise SystemExit(f"accuracy: --set {item!r}: expected KEY=VALUE with a key the grid does not set per "
                             f"cell (not {', '.join(k + '*' if k.endswith('.') else k for k in GRID_KEYS)})")
        sets[key] = yaml.safe_load(value)
    return sets


def common(args: argparse.Namespace, seed: int, *, students: bool = True) -> dict[str, Any]:
    """Overrides every run shares: data size, holdout, schedule, seed (the student's own recipe), and
    for the students and FP twins (``students``) the regime's ``--set``."""
    o = {
        "model.name": args.student, "data.name": "fashion_mnist", "data.holdout": args.holdout,
        "data.limit": args.train_images or None, "data.batch_size": 128, "optim.name": "sgd",
        "optim.lr": getattr(args, "lr", 0.1), "optim.schedule": "cosine", "optim.weight_decay": 1e-4,
        "optim.warmup_epochs": 0.0, "train.epochs": args.epochs, "train.seed": seed, "train.checkpoint_every": 0,
        "distill.beta": DistillConfig().beta, "distill.gamma": DEFAULT["gamma"], "distill.temperature": DEFAULT["temperature"],
    }
    for option, (default, key, _) in REGIME.items():
        value = getattr(args, option, default)
        if value != default:
            o[key] = value
    return {**o, **(parse_sets(getattr(args, "set", None)) if students else {})}


def teacher_overrides(args: argparse.Namespace, seed: int = 0) -> dict[str, Any]:
    """The teacher's run: FP, its own depth, width and length (a stronger teacher trains longer).
    With ``--teacher-recipe`` the recipe says all of it but the seed and the holdout (the students')."""
    if getattr(args, "teacher_recipe", None):
        return {"data.holdout": args.holdout, "train.seed": seed}
    o = {**common(args, seed, students=False), "model.name": args.teacher, "quant.precision": "32W/32A",
         "distill.scheme": "baseline"}
    for _, key, students_only in REGIME.values():  # e.g. the teacher trains with the data set's own augmentation
        if students_only:
            o.pop(key, None)
    if getattr(args, "teacher_width", 1.0) != 1.0:
        o["model.width"] = args.teacher_width
    if getattr(args, "teacher_epochs", None):
        o["train.epochs"] = args.teacher_epochs
    return o


def teacher_names(args: argparse.Namespace) -> tuple[str, ...]:
    """The teachers' run folders: "teacher" (seed 0), "teacher-sN" (seed N); several are an ensemble."""
    return tuple("teacher" if seed == 0 else f"teacher-s{seed}" for seed in getattr(args, "teacher_seeds", [0]))


def cache_name(args: argparse.Namespace) -> str:
    """The cache job's folder: an ensemble's cache is another file than its first member's, a K-view
    cache (``--cache-views K``) another than the full one."""
    seeds, views = getattr(args, "teacher_seeds", [0]), getattr(args, "cache_views", None)
    name = CACHE if list(seeds) == [0] else f"{CACHE}-s{'-'.join(map(str, seeds))}"
    return name + (f"-k{views}" if views else "")


def _views_suffix(args: argparse.Namespace, scheme: str) -> str:
    """A cached teacher cell's name part for ``--cache-views K`` ("-k4"): grids of other K share a runs
    folder (the teacher, the FP twins, the no-teacher students) but not these runs."""
    views = getattr(args, "cache_views", None)
    return f"-k{views}" if views and args.teacher_cache and scheme in ("B", "C") else ""


def grid_jobs(args: argparse.Namespace, runs: Path) -> list[Job]:
    """Teachers first, then seed by seed (so a partial grid is balanced): FP twin, then each precision's
    baseline, A, B, C. B and C need the teacher (or ensemble); C also needs the same seed's FP twin."""
    recipe = {"recipe": args.teacher_recipe} if getattr(args, "teacher_recipe", None) else {}
    jobs = [Job(name, teacher_overrides(args, seed), meta={"role": "teacher", "precision": "32W/32A",
                                                            "scheme": "baseline", "seed": seed}, **recipe)
            for name, seed in zip(teacher_names(args), getattr(args, "teacher_seeds", [0]))]
    if args.teacher_cache:  # the students' data: the grid's holdout and limit
        views = {"data.pad": args.pad} if getattr(args, "pad", None) is not None else {}
        if getattr(args, "erase", 0.0):  # the cache holds the students' erased views (keyed erasing)
            views["data.erase"] = args.erase
        k = {"views": args.cache_views} if getattr(args, "cache_views", None) else {}
        jobs.append(Job(cache_name(args), {"data.holdout": args.holdout, "data.limit": args.train_images or None,
                                           **views}, teacher_names(args), {"role": "cache", **k}))
    for seed in args.seeds:
        twin = f"fp-s{seed}"
        jobs.append(Job(twin, {**common(args, seed), "quant.precision": "32W/32A", "distill.scheme": "baseline"},
                        meta={"role": "fp_twin", "precision": "32W/32A", "scheme": "baseline", "seed": seed}))
        for precision in args.precisions:
            for scheme in args.schemes:
                if split_label(precision)[1] == "32W/32A" and scheme == "baseline":
                    continue  # the FP twin is that cell; 32W/32A with a teacher is the FP student distilled
                o, needs = student_overrides(args, runs, precision, scheme, seed)
                loss = o.get("distill.loss")  # a named loss is part of the cell's name: its runs differ
                name = f"{_slug(precision)}-{scheme}{f'-{loss}' if loss else ''}{_views_suffix(args, scheme)}-s{seed}"
                jobs.append(Job(name, o, needs,
                                {"role": "student", "precision": precision, "scheme": scheme, "seed": seed,
                                 **({"loss": loss} if loss else {})}))
    return jobs


def losses_by_precision(args: argparse.Namespace) -> dict[str, str]:
    """``--loss PRECISION=NAME`` as a mapping, completed by ``--loss-from`` (each precision's best row, on
    the holdout, of a pilot's seed-0 teacher cells: its grid run at the paper's loss and its loss sweep)."""
    chosen: dict[str, str] = {}
    for item in getattr(args, "loss", None) or ():
        precision, sep, name = item.rpartition("=")
        if not sep or name not in LOSSES:
            raise SystemExit(f"accuracy: --loss {item!r}: expected PRECISION=NAME with NAME in {list(LOSSES)}")
        chosen[precision] = name
    pilot = getattr(args, "loss_from", None)
    if pilot:
        try:
            rows = json.loads((REPO / pilot).read_text())["rows"]
        except (OSError, ValueError, KeyError) as e:
            raise SystemExit(f"accuracy: --loss-from {pilot}: no rows to choose from ({e})") from None
        for precision in args.precisions:
            cands = [r for r in rows if r.get("precision") == precision and r.get("seed") == 0
                     and r.get("scheme") in ("B", "C") and r.get("final_holdout_top1") is not None
                     and (r.get("role") == "student" or (r.get("role") == "sweep" and "loss" in r))]
            if cands and precision not in chosen:
                best = max(cands, key=lambda r: r["final_holdout_top1"])
                chosen[precision] = best.get("loss") or "paper"
    return chosen


def student_overrides(args: argparse.Namespace, runs: Path, precision: str, scheme: str,
                      seed: int) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A student cell's overrides and the jobs it needs: B and C the teacher (and its cache), C also
    the same seed's FP twin, which it starts from at ``--c-lr``."""
    o = {**common(args, seed), **_precision_overrides(precision), "distill.scheme": scheme}
    if getattr(args, "deploy", None):  # the deployable graph (quant.deploy) for the students
        o["quant.deploy"] = args.deploy
    needs: tuple[str, ...] = ()
    if scheme in ("A", "B", "C"):
        extra, needs = _teacher(args, runs, scheme)
        o.update(extra)
        loss = losses_by_precision(args).get(precision, "paper")
        if loss != "paper":  # the paper's loss is the defaults' (the grid's committed rows keep their names)
            o["distill.loss"] = loss
    if scheme == "C":
        o["distill.student_init"] = str(runs / f"fp-s{seed}")
        o["optim.lr"] = args.c_lr
        needs = (*needs, f"fp-s{seed}")
    return o, needs


def _teacher(args: argparse.Namespace, runs: Path, scheme: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A cell's teacher overrides and the jobs it needs: A trains its own (the grid teacher's
    architecture), B and C read the grid's trained teacher (or ``--teacher-seeds``' ensemble, a list),
    through the cache when there is one."""
    if scheme == "A":
        o = {"distill.teacher_model.name": args.teacher}
        if getattr(args, "teacher_width", 1.0) != 1.0:
            o["distill.teacher_model.width"] = args.teacher_width
        return o, ()
    names = teacher_names(args)
    folders = [str(runs / n) for n in names]
    o = {"distill.teacher": folders[0] if len(folders) == 1 else folders}
    if not args.teacher_cache:
        return o, names
    return {**o, "distill.teacher_cache": str(cache_file(runs, cache_name(args)))}, (*names, cache_name(args))


def regime_jobs(args: argparse.Namespace, runs: Path) -> list[Job]:
    """The converged regime's extra runs: the seed-0 FP twin trained twice as long (``--plateau``: is
    the grid's length within reach of the plateau?), and schemes A and B at 2W/32A under the paper's
    step schedule (``--convergence``: which reaches 99 % of its final accuracy sooner?)."""
    jobs = []
    if getattr(args, "plateau", False):
        o = {**common(args, 0), "quant.precision": "32W/32A", "distill.scheme": "baseline", "train.epochs": 2 * args.epochs}
        jobs.append(Job("fp-long-s0", o, meta={"role": "plateau", "precision": "32W/32A", "scheme": "baseline",
                                                "seed": 0, "epochs": 2 * args.epochs}))
    for seed in args.seeds if getattr(args, "convergence", False) else ():
        for scheme in ("A", "B"):
            o = {**common(args, seed), "quant.precision": "2W/32A", "distill.scheme": scheme, "optim.schedule": "step",
                 "optim.milestones": list(args.milestones), "optim.lr_decay": 0.1}
            extra, needs = _teacher(args, runs, scheme)
            jobs.append(Job(f"conv-{scheme}-s{seed}", {**o, **extra}, needs,
                            {"role": "convergence", "precision": "2W/32A", "scheme": scheme, "seed": seed}))
    return jobs


def ordered(grid: list[Job], regime: list[Job]) -> list[Job]:
    """The grid, then the regime's runs; the plateau run right after the FP twin it doubles, since it
    says whether the grid's schedule is long enough (better known before most of the grid is spent)."""
    plateau = [j for j in regime if j.meta.get("role") == "plateau"]
    at = next((i + 1 for i, j in enumerate(grid) if j.name == "fp-s0"), len(grid))
    return grid[:at] + plateau + grid[at:] + [j for j in regime if j not in plateau]


def sweep_cell(cell: str) -> tuple[str, str]:
    """A ``--sweep-cell`` "PRECISION:SCHEME" (a teacher's scheme), e.g. "lsq:4W/4A:C", split and checked."""
    label, _, scheme = cell.rpartition(":")
    if scheme not in ("A", "B", "C") or not label:
        raise SystemExit(f"accuracy: --sweep-cell {cell!r}: expected PRECISION:SCHEME with a teacher's scheme "
                         "(A, B or C), e.g. 4W/8A:C")
    return label, scheme


def sweep_jobs(args: argparse.Namespace, runs: Path) -> list[Job]:
    """Each ``--sweep-cell``, seed 0, over gamma and temperature (`SWEEP_POINTS`), and for scheme C
    also its learning rate at the default gamma and temperature; each cell's default point is the
    grid's own run."""
    cells = getattr(args, "sweep_cell", [SWEEP_CELL])
    return [j for cell in ([cells] if isinstance(cells, str) else cells) for j in _sweep_of(args, runs, *sweep_cell(cell))]


def _sweep_of(args: argparse.Namespace, runs: Path, precision: str, scheme: str) -> list[Job]:
    base, needs = student_overrides(args, runs, precision, scheme, 0)
    prefix = "sweep" if f"{precision}:{scheme}" == SWEEP_CELL else f"sweep-{_slug(precision)}-{scheme}"
    meta = {"role": "sweep", "precision": precision, "scheme": scheme, "seed": 0}
    points, tries_lr = SWEEP_POINTS[getattr(args, "sweep_points", "grid")]
    points = points() + [({"optim.lr": lr}, f"lr{lr:g}") for lr in (SWEEP_C_LR if scheme == "C" and tries_lr else ())]
    return [Job(f"{prefix}-{tag}", {**base, **change}, needs,
                {**meta, "gamma": change.get("distill.gamma", DEFAULT["gamma"]),
                 "temperature": change.get("distill.temperature", DEFAULT["temperature"]),
                 "lr": change.get("optim.lr", base["optim.lr"]),
                 **({"loss": change["distill.loss"]} if "distill.loss" in change else {})})
            for change, tag in points]


def _gamma_tau(pairs: list[tuple[float, float]]) -> list[tuple[dict[str, Any], str]]:
    """(overrides, tag) of each (gamma, temperature) point but the default (the grid's own run)."""
    return [({"distill.gamma": g, "distill.temperature": t}, f"g{g:g}-t{t:g}")
            for g, t in dict.fromkeys(pairs) if {"gamma": g, "temperature": t} != DEFAULT]


def _loss_points() -> list[tuple[dict[str, Any], str]]:
    """Each row of `apprentice.losses.LOSSES` but the paper's (the grid's own run is that point)."""
    return [({"distill.loss": name}, f"loss-{name}") for name in LOSSES if name != "paper"]


#: ``--sweep-points``: the points a sweep tries besides the grid's own run, and whether a scheme-C cell
#: also tries its fine-tuning lr: the full 3 x 3 gamma x temperature grid (the committed 10k grid's
#: sweep), one axis at a time through the default (half the runs, for the converged regime's slower
#: runs), or each other row of the loss table (at the grid's lr: a loss is compared with a loss)
SWEEP_POINTS: dict[str, tuple[Callable[[], list[tuple[dict[str, Any], str]]], bool]] = {
    "grid": (lambda: _gamma_tau([(g, t) for g in SWEEP_GAMMA for t in SWEEP_TEMPERATURE]), True),
    "axes": (lambda: _gamma_tau([(g, DEFAULT["temperature"]) for g in SWEEP_GAMMA]
                                + [(DEFAULT["gamma"], t) for t in SWEEP_TEMPERATURE]), True),
    "losses": (_loss_points, False),
}


def regime_arguments(ap: argparse.ArgumentParser) -> None:
    """The options that make the runs' regime (shared with frontier.py, which must match the grid's)."""
    ap.add_argument("--student", default="resnet8")
    ap.add_argument("--teacher", default="resnet14")
    ap.add_argument("--teacher-cache", action=argparse.BooleanOptionalAction, default=True,
                    help="B and C cells read the teacher's logits from one cache (apprentice cache-teacher); "
                         "--no-teacher-cache runs the teacher live, as the committed 40-run grid did")
    ap.add_argument("--cache-views", type=int, default=None, metavar="K",
                    help="the teacher cache holds K views an image (apprentice cache-teacher --views K), not every one")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--train-images", type=int, default=10000, help="training images after the holdout (0: all)")
    ap.add_argument("--student-width", type=float, default=1.0, help="the students' and FP twins' width multiplier")
    ap.add_argument("--teacher-width", type=float, default=1.0, help="the teacher's width multiplier")
    ap.add_argument("--teacher-epochs", type=int, default=None, help="the teacher's epochs (default --epochs)")
    ap.add_argument("--teacher-recipe", default=None,
                    help="train the teacher from this recipe (e.g. configs/fashion_mnist/teacher_strong.yaml) "
                         "instead of --teacher/--teacher-width/--teacher-epochs on the students' recipe")
    ap.add_argument("--teacher-seeds", nargs="+", type=int, default=[0], metavar="SEED",
                    help="the teacher's seeds: several train an ensemble (runs teacher, teacher-s1, ...) whose "
                         "mean logits teach the B and C cells (distill.teacher set to the list)")
    ap.add_argument("--lr", type=float, default=0.1, help="learning rate of every run but scheme C's")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--channels-last", action="store_true", help="train.channels_last for every run")
    ap.add_argument("--pad", type=int, default=None,
                    help="the students' crop padding (data.pad; 0 = flips only: 2 views an image, a cache 25x "
                         "smaller and cheaper than pad 2's 50); the teacher keeps the data set's own")
    ap.add_argument("--erase", type=float, default=0.0, metavar="P",
                    help="the students' random erasing (data.erase); with --teacher-cache the cache holds the "
                         "same erased views (keyed by image and view); the teacher keeps its own")
    ap.add_argument("--milestones", nargs="+", type=float, default=[0.5, 0.75],
                    help="fractions of the run where the step schedule divides lr by 10")
    ap.add_argument("--holdout", type=int, default=5000, help="training images held out for the sweep")
    ap.add_argument("--c-lr", type=float, default=0.01, help="scheme C's (fine-tuning) learning rate")
    ap.add_argument("--loss", nargs="+", default=None, metavar="PRECISION=NAME",
                    help="the distilled cells' loss per precision, a LOSSES row (default: the paper's)")
    ap.add_argument("--set", nargs="+", default=None, metavar="KEY=VALUE",
                    help="overrides of every student and FP twin (not the teacher), e.g. an optimizer of their own: "
                         "optim.name=adamw optim.lr=0.002 optim.weight_decay=0.01 optim.quant_domain=log")
    ap.add_argument("--loss-from", default=None, metavar="PILOT.json",
                    help="choose each precision's loss on the holdout from a pilot's seed-0 rows (its loss sweep)")


def with_missed_goals(cells: list[str], out: Path) -> list[str]:
    """``--sweep-cell missed`` stands for the cells of the student goals the grid in ``out`` misses,
    each at the scheme its holdout chose (`accuracy_goals.missed_cells`), read from its analysis."""
    if "missed" not in cells:
        return cells
    try:
        result = json.loads(out.read_text())
        missed = accuracy_goals.missed_cells(result["analysis"], accuracy_goals.goal_set(result.get("settings", {})))
    except (OSError, ValueError, KeyError, TypeError):
        raise SystemExit(f"accuracy: --sweep-cell missed: no grid analysis in {out}; run the grid first") from None
    print(f"accuracy: the missed goals' cells: {', '.join(missed) or 'none (every student goal is met)'}", flush=True)
    return [c for cell in cells for c in (missed if cell == "missed" else [cell])]


def plan(args: argparse.Namespace, runs: Path) -> list[Job]:
    """Every job of a command: the grid, the regime's runs, the sweep (unless ``--no-sweep``)."""
    return ordered(grid_jobs(args, runs), regime_jobs(args, runs)) + ([] if args.no_sweep else sweep_jobs(args, runs))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/accuracy.json")
    ap.add_argument("--runs-dir", default="runs/accuracy", help="run folders (resumed when rerun)")
    ap.add_argument("--precisions", nargs="+", default=list(PRECISIONS),
                    help="precision labels: 2W/8A (default quantizers), lsq:2W/8A (a weight quantizer named), "
                         "pc:2W/32A or uniform+pc:4W/8A (per-channel weight scales: quant.per_channel), 4W/8A@asym (an activation quantizer named: quant.act_quantizer)")
    ap.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES), help="schemes per precision")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--plateau", action="store_true", help="also the seed-0 FP twin trained twice as long")
    ap.add_argument("--convergence", action="store_true",
                    help="also schemes A and B at 2W/32A with the step schedule (lr x0.1 at --milestones), per seed")
    regime_arguments(ap)
    ap.add_argument("--workers", type=int, default=2, help="trainings at once")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per training")
    ap.add_argument("--no-sweep", action="store_true", help="skip the gamma/temperature sweep")
    ap.add_argument("--sweep-cell", nargs="+", default=[SWEEP_CELL], metavar="PRECISION:SCHEME",
                    help="the cells the sweep tunes on the holdout, seed 0 (scheme C: its lr too), e.g. 4W/8A:C; "
                         "'missed': the cells of the goals the grid in --out misses, at their holdout-chosen scheme")
    ap.add_argument("--sweep-points", choices=list(SWEEP_POINTS), default="grid",
                    help="grid: gamma x temperature (8 runs a cell); axes: one at a time through the default (4); "
                         "losses: each other row of the loss table (distill.loss; 5)")
    ap.add_argument("--deploy", default=None, help="train the students' deployable graph (quant.deploy, e.g. int8; "
                                                   "8-bit activations only): what it costs in accuracy")
    ap.add_argument("--continue-from", nargs="+", default=[], metavar="RESULTS.json",
                    help="also reuse the rows (and snapshots) of these results files where a job is the same run, "
                         "e.g. a pilot's no-teacher students and FP twin at seed 0")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the results from finished runs")
    ap.add_argument("--import", dest="imports", action="append", default=[], metavar="FILE_OR_MODULE",
                    help="run this file (or import this module) first, here and in every run (apprentice --import): "
                         "a user's own --student, or this VM's torchvision shim beside torchvision:/timm: students")
    ap.add_argument("--commit", action="store_true", help="git-commit the results (only their files) as each run "
                                                          "finishes, so a fresh clone continues from there")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        for spec in args.imports:  # a user's model (or this VM's shim) is needed here too: the report's sizes
            import_user_code(spec)
        for label in args.precisions:
            parse_label(label)
    except ApprenticeError as e:
        raise SystemExit(f"accuracy: {e}") from None
    if len(set(args.teacher_seeds)) != len(args.teacher_seeds):
        raise SystemExit(f"accuracy: --teacher-seeds {args.teacher_seeds}: a seed given twice (each trains one member)")
    out = REPO / args.out
    runs = (REPO / args.runs_dir).resolve()
    (runs / "logs").mkdir(parents=True, exist_ok=True)
    if not args.no_sweep:
        args.sweep_cell = with_missed_goals(args.sweep_cell, out)
    jobs = plan(args, runs)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "report_only", "commit")}
    settings["shared_overrides"] = {k: v for k, v in common(args, 0).items() if k != "train.seed"}
    info = {"stamp": stamp(argv), "settings": settings}

    committed, matching = continue_from(jobs, runs, [out, *(REPO / f for f in args.continue_from)], args.runs_dir)

    report = AfterRuns(jobs, runs, out, lambda: accuracy_report.write(out, jobs, runs, info, matching),
                       args.commit, f"accuracy grid {out.stem}", shared=tuple(REPO / f for f in args.continue_from))

    if args.report_only:
        report()
        return 0
    t0 = time.time()
    failed = run_jobs(jobs, runs, args.workers, args.threads, report, committed, args.runs_dir,
                      on_stop=report.interrupted, imports=tuple(args.imports))
    report()
    print(f"accuracy: {len(jobs) - len(failed)}/{len(jobs)} runs finished, {(time.time() - t0) / 60:.1f} min "
          f"this invocation; results in {args.out}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
