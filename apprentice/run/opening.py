"""A run folder opened before the first step: checked (`check_run_folder`), the checkpoint to resume
read and matched against the config (`read_resume_state`), its state loaded into what trains
(`restore`), and the folder written (`open_run_folder`). `apprentice.run.loop.fit` calls them in
that order.
"""

from __future__ import annotations

from pathlib import Path

from apprentice.atomic import atomic_write_text, remove_stale_temps
from apprentice.config import diff_configs, dump_yaml
from apprentice.config.schema import Config
from apprentice.errors import ApprenticeError
from apprentice.run.build import Training
from apprentice.run.runs import stored_config
from apprentice.train import checkpoint as ck
from apprentice.train import runtime
from apprentice.train.checkpoint import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LAST,
    METRICS_FILE,
    SUMMARY_FILE,
)
from apprentice.train.progress import MetricsWriter, Progress, trim_metrics
from apprentice.train.runtime import Runtime
from apprentice.train.state import Counters, TrainState
from apprentice.weights import check_finite, load_strict

__all__ = ["HARMLESS_KEYS", "check_run_folder", "open_run_folder", "read_resume_state", "restore"]

# Config keys that may differ when resuming: they move files or change how often things are
# reported, not what is trained (train.device: moving a run to another machine is legitimate).
HARMLESS_KEYS = ("train.out", "train.log_every", "train.checkpoint_every", "train.device",
                 "data.dir", "data.download", "data.workers", "data.eval_batch_size", "train.keep_freed_memory")


def check_run_folder(out: Path, rt: Runtime, progress: Progress, *, resume: bool, overwrite: bool) -> None:
    """Refuse a folder holding a run (unless resume/overwrite); remove temp files a kill left."""
    runtime.raise_from_rank0(ck.check_run_dir(out, resume=resume, overwrite=overwrite) if rt.rank == 0 else None, rt)
    if rt.rank == 0:  # a run killed inside an atomic write leaves its temp file; nothing else writes here
        stale = remove_stale_temps(out) + remove_stale_temps(out / CHECKPOINT_DIR)
        if stale:
            progress.line(f"removed {len(stale)} temporary file(s) left by an interrupted write: "
                          + ", ".join(p.name for p in stale))


def read_resume_state(cfg: Config, out: Path, resume: bool, progress: Progress) -> TrainState | None:
    """The checkpoint to resume from, after checking its config matches ``cfg`` (None: start afresh)."""
    last = out / CHECKPOINT_DIR / LAST
    if not resume:
        return None
    if (out / SUMMARY_FILE).is_file():
        raise ApprenticeError(f"run folder {str(out)!r} holds a finished run ({SUMMARY_FILE}); nothing to resume "
                              f"(use --overwrite to train it again)")
    if not last.is_file():
        if ck.run_files(out):
            raise ApprenticeError(f"run folder {str(out)!r} has no {CHECKPOINT_DIR}/{LAST} to resume from; "
                                  f"use --overwrite to start again")
        progress.line(f"nothing to resume in {out}: no {CHECKPOINT_DIR}/{LAST}; starting a new run")
        return None
    saved = ck.read_checkpoint(last)
    diffs = [x for x in diff_configs(stored_config(saved, last), cfg) if x.split(":")[0] not in HARMLESS_KEYS]
    if diffs:
        raise ApprenticeError(f"cannot resume {str(out)!r}: the config differs from its checkpoint's in "
                              f"{'; '.join(diffs)}; use the same config, or --overwrite to start again")
    state = TrainState.from_dict(saved, f"checkpoint {str(last)!r}")
    weights = {f"{prefix}{k}": v for prefix, sd in (("", state.model), ("teacher ", state.teacher))
               if isinstance(sd, dict) for k, v in sd.items()}
    check_finite(weights, f"checkpoint {str(last)!r}", why="it cannot be resumed; --overwrite starts the run again")
    return state


def restore(training: Training, state: TrainState, rt: Runtime, progress: Progress, last: Path) -> Counters:
    """Load a checkpoint's (``last``'s) state into what trains; returns its counters."""
    t, source = training, f"checkpoint {str(last)!r}"
    load_strict(t.student, state.model, source)
    try:  # a damaged or hand-edited checkpoint must not fail half way with a KeyError
        if state.teacher is not None and t.teacher is not None and t.distiller.scheme.teacher == "joint":
            load_strict(t.teacher, state.teacher, f"{source} (teacher)")
        t.optimizer.load_state_dict(state.optimizer)
        if t.scaler is not None and state.scaler:
            t.scaler.load_state_dict(state.scaler)
        t.data.batches.load_state_dict(state.data)
        ck.set_rng_state(state.rng)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        what = f"missing {e}" if isinstance(e, KeyError) else " ".join(str(e).split())[:200]
        raise ApprenticeError(f"{source} cannot be resumed ({what}); --overwrite starts the run again") from None
    if state.world_size != rt.world_size:
        progress.line(f"note: resuming a {state.world_size}-process run with {rt.world_size}: the batches "
                      f"stay the same, augmentation draws change")
    return state.counters


def open_run_folder(cfg: Config, out: Path, step: int, progress: Progress, *, main: bool, resumed: bool,
                    overwrite: bool) -> MetricsWriter:
    """Rank 0 (``main``) writes the folder and its config; the metrics of steps a resume repeats (after
    ``step``) are dropped."""
    leftovers = False
    if main:
        if overwrite:
            ck.clear_run(out)
        try:
            (out / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ApprenticeError(f"cannot create the run folder {str(out)!r} (train.out): {e.strerror or e}") from None
        atomic_write_text(out / CONFIG_FILE, dump_yaml(cfg))
        # A resumed run re-logs the steps after its checkpoint; a new run in a folder where one was
        # killed before its first checkpoint drops that run's lines (and TensorBoard events) too.
        leftovers = not resumed and (out / METRICS_FILE).is_file()
        if resumed or leftovers:
            trim_metrics(out / METRICS_FILE, step)
    purge = step + 1 if resumed or leftovers else None
    return MetricsWriter(out, enabled=main, purge_step=purge, notice=progress.line)
