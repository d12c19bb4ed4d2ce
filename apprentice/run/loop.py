"""The training run: ``fit(cfg)``, one explicit loop written as a short sequence of named steps.

``fit`` opens the run folder, builds what trains (`apprentice.run.build.build_training`: data, student,
teacher, `Distiller`, optimizer, schedule), restores a resumed run's `TrainState`, and then, per
epoch, trains (`apprentice.train.step.train_step` per batch), evaluates every split and saves a
checkpoint; at the end it writes ``summary.json``. Checkpoint layout: `apprentice.train.state`;
run folder: `apprentice.train.checkpoint`; processes and signals: `apprentice.train.runtime`.

Decisions:

- Under ``torchrun`` what trains (the Distiller says what: the student, and scheme A's teacher
  when a loss term reaches it) is wrapped in DistributedDataParallel; a frozen teacher never is.
  BatchNorm statistics are per process (DDP broadcasts rank 0's each forward). Evaluation is
  sharded: each process evaluates a disjoint slice and the counts are summed, so the accuracy is
  exact. Only rank 0 prints and writes files (its logged loss terms are its own share's; the bar's
  loss is the mean over processes); resuming needs the run folder visible to every process.
- A non-finite loss or gradient stops the run (``train.on_nonfinite=stop``; nothing of that step
  is saved) or, with ``skip``, drops the update and rolls back that batch's BatchNorm statistics;
  the step still counts for the schedule and the data position.
- A kill (even ``kill -9`` inside a checkpoint write) loses at most the steps since the last
  checkpoint: files are replaced atomically (`apprentice.atomic`), the next start removes the temp
  files a kill left, and a new run in a folder where one died before its first checkpoint drops
  that run's metrics. A failed checkpoint write (`CheckpointWriteError`, e.g. a full disk) stops
  the run and keeps the previous checkpoint.
- On CPU a run stopped by SIGTERM/SIGINT mid-epoch and resumed ends bit-identical to an
  uninterrupted one. ImageNet folders resume at the right batch in the same order, but the
  workers' augmentation draws differ; cuDNN autotuning makes CUDA runs nondeterministic anyway.

Exit codes (`apprentice.cli`): a signal ends the run with `TrainingInterrupted` (143 for SIGTERM,
130 for SIGINT); a non-finite loss with `NonFiniteLossError` (1); a failed checkpoint write with
`CheckpointWriteError` (1); a dead or hung peer under torchrun with `PeerLostError` (1).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from apprentice.atomic import atomic_copy, atomic_write_text
from apprentice.config import config_to_dict
from apprentice.config.checks import validate
from apprentice.config.schema import Config
from apprentice.errors import ApprenticeError, signal_exit
from apprentice.quant import quantized_layers
from apprentice.quant.report import activation_report, summarize_report
from apprentice.run import build
from apprentice.run.file_checks import check_output_apart
from apprentice.run.opening import (
    check_run_folder,
    open_run_folder,
    read_resume_state,
    restore,
)
from apprentice.run.teacher import teacher_paths
from apprentice.train import checkpoint as ck
from apprentice.train import runtime
from apprentice.train.allocator import keep_freed_memory
from apprentice.train.batchnorm import reestimate_batchnorm
from apprentice.train.checkpoint import (
    CHECKPOINT_DIR,
    LAST,
    SUMMARY_FILE,
)
from apprentice.train.nonfinite import collapsed_note, locate_nonfinite
from apprentice.train.progress import (
    MetricsWriter,
    Progress,
    bar_text,
)
from apprentice.train.runtime import Runtime, StopSignals, TrainingInterrupted
from apprentice.train.state import Counters, Meter, TrainState, take_best
from apprentice.train.step import (
    NonFiniteLossError,
    autocast,
    eval_metrics,
    eval_sums,
    train_step,
)
from apprentice.version import __version__, git_commit
from apprentice.weights import standard_layout

__all__ = ["fit"]



def fit(cfg: Config, *, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train the student described by ``cfg`` and write the run folder ``cfg.train.out``.

    Args:
        cfg: the whole config (`apprentice.config.load_config`); validated again here.
        resume: continue from ``checkpoints/last.pt``. Its stored config must equal ``cfg`` except
            for `apprentice.run.opening.HARMLESS_KEYS`. With no checkpoint in the folder a new run starts.
        overwrite: delete an earlier run's files (summary, metrics, checkpoints, tb/) first.

    Returns:
        The summary, also written to ``summary.json``: final top-1/top-5, and those of ``best.pt``
        (the epoch with the best holdout top-1, ``best_on: holdout``, else the last), epochs, steps,
        wall time, versions, git commit, device, world size, scheme, precision, parameters.

    Raises:
        ApprenticeError: bad config or files; the folder holds a run and neither ``resume`` nor
            ``overwrite`` was given; ``resume`` with a different config (lists the keys).
        TrainingInterrupted: SIGTERM/SIGINT; the current step was checkpointed.
        NonFiniteLossError: NaN/inf with ``train.on_nonfinite=stop``; the last good checkpoint stays.
    """
    if resume and overwrite:
        raise ApprenticeError("give resume or overwrite, not both")
    validate(cfg)
    kd = cfg.distill  # a run never writes where it reads; checked before anything of train.out is touched
    reads = {**teacher_paths(kd.teacher), "distill.student_init": kd.student_init,
             "distill.teacher_cache": kd.teacher_cache}
    check_output_apart(cfg.train.out, "train.out", reads)
    if cfg.train.amp == "fp16" and not (cfg.train.device.startswith("cuda") or
                                        (cfg.train.device == "auto" and torch.cuda.is_available())):
        raise ApprenticeError("train.amp=fp16 needs CUDA (its GradScaler); use train.amp=bf16 or off on the CPU")
    rt = runtime.setup(cfg.train.device)
    if cfg.train.keep_freed_memory:
        keep_freed_memory()
    lost = False
    try:
        with StopSignals() as signals:
            return _run(cfg, rt, signals, resume=resume, overwrite=overwrite)
    except RuntimeError as e:
        if rt.world_size > 1 and not isinstance(e, runtime.PeerLostError) and runtime.is_collective_failure(e):
            lost = True
            raise runtime.peer_lost(rt, e) from e
        raise
    finally:
        if not lost:  # leaving a broken group can block on the dead peer; the process ends anyway
            runtime.teardown(rt)


@dataclass
class _Run:
    """One training run while it runs: its config, process, folder, what trains, where it stands."""

    cfg: Config
    rt: Runtime
    signals: StopSignals
    out: Path
    progress: Progress
    training: build.Training
    counters: Counters
    metrics: MetricsWriter | None = None
    t_start: float = 0.0
    first_step: int = 0  # this process's first step, and when it began (t_first): the ETA's pace starts there
    t_first: float = 0.0
    commit: str | None = None  # apprentice's git commit when this process started (the code that ran)

    @property
    def main(self) -> bool:
        return self.rt.rank == 0

    @property
    def last(self) -> Path:
        return self.out / CHECKPOINT_DIR / LAST


def _run(cfg: Config, rt: Runtime, signals: StopSignals, *, resume: bool, overwrite: bool) -> dict[str, Any]:
    t_start, out, progress = time.perf_counter(), Path(cfg.train.out), Progress(enabled=rt.rank == 0)
    check_run_folder(out, rt, progress, resume=resume, overwrite=overwrite)
    new_folder = not out.exists()
    cfg, spec = build.resolve_data(cfg, report=progress.line)  # a folder's classes, size, mean/std: recorded in the run
    cfg = build.resolve_quant(cfg, spec)  # the automatic weight scale and activation quantizer, recorded too
    saved = read_resume_state(cfg, out, resume, progress)
    runtime.seed_everything(cfg.train.seed, rt.device)
    training = build.build_training(cfg, rt, spec)
    run = _Run(cfg, rt, signals, out, progress, training, Counters(), t_start=t_start, commit=git_commit())
    if saved is not None:
        run.counters = restore(training, saved, rt, progress, run.last)
    run.metrics = open_run_folder(cfg, out, run.counters.step, progress, main=run.main, resumed=saved is not None,
                                  overwrite=overwrite)
    runtime.wrap_for_processes(training.distiller, rt)
    if cfg.train.compile:
        runtime.compile_step(training.distiller, teacher_runs=cfg.distill.teacher_cache is None)
    progress.line(_describe(run, resumed=saved is not None))
    run.first_step, run.t_first = run.counters.step, time.perf_counter()
    try:
        for epoch in range(run.counters.epoch, cfg.train.epochs):
            _train_epoch(run, epoch)
            _end_epoch(run, _evaluate(run))
        if cfg.train.bn_reestimate:
            _reestimate_bn(run)
    except ApprenticeError:
        if new_folder:
            _remove_unsaved_run(run)
        raise
    finally:
        progress.close()
        run.metrics.close()
    return _finish(run)


def _remove_unsaved_run(run: _Run) -> None:
    """Bad data found while training (an unreadable image of a streamed folder) before the first
    checkpoint: the run folder this command created holds nothing worth keeping, so it goes."""
    if run.main and not ck.run_files(run.out):
        run.metrics.close()
        shutil.rmtree(run.out, ignore_errors=True)


def _describe(run: _Run, *, resumed: bool) -> str:
    cfg, t, rt = run.cfg, run.training, run.rt
    deploy = f", deployable {cfg.quant.deploy}" if cfg.quant.deploy else ""
    return (f"training {cfg.model.name} ({cfg.quant.precision}{deploy}, {t.quantized_layers} quantized layers, "
            f"{t.parameters:,} parameters), scheme {t.distiller.scheme.name}, on {cfg.data.name}: "
            f"{t.data.images} images, {t.steps_per_epoch} steps/epoch x {cfg.train.epochs} epochs on {rt.device}"
            f"{f' x {rt.world_size} processes' if rt.world_size > 1 else ''}; run folder {run.out}"
            + (f"; resuming at step {run.counters.step}" if resumed else ""))


# ---------------------------------------------------------------------------------------------
# Per epoch: train, evaluate, save


def _train_epoch(run: _Run, epoch: int) -> None:
    """Train over the rest of ``epoch``; checkpoint every train.checkpoint_every steps and on a signal."""
    cfg, t, c = run.cfg, run.training, run.counters
    t.data.batches.set_epoch(epoch)
    t.distiller.train()
    interval, t_interval, t_epoch = Meter(), time.perf_counter(), time.perf_counter()
    for images, labels, *cached in t.data.batches:  # a teacher cache adds the teacher's logits
        if cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        t.distiller.set_progress(c.step / (t.steps_per_epoch * cfg.train.epochs))  # a gamma schedule's t
        res = train_step(t.distiller, t.optimizer, images, labels, lr=t.schedule(c.step), amp=cfg.train.amp,
                         scaler=t.scaler, restore_buffers=cfg.train.on_nonfinite == "skip",
                         teacher_logits=cached[0] if cached else None)
        c.step += 1
        if c.step == 1 and run.main:
            _report_activations(run, images)
        if res.finite:
            interval.add(res.losses, res.logits, labels)
            c.meter.add(res.losses, res.logits, labels)
        else:
            _nonfinite(run, res, epoch, lambda: _batch_loss(run, images, labels, cached))  # noqa: B023 (called at once)
        if run.main:
            _report_step(run, epoch, res.loss, res.grad_norm, interval, t_interval)
        if c.step % cfg.train.log_every == 0:
            interval, t_interval = Meter(), time.perf_counter()
        stopping = runtime.agree(run.signals.signum is not None, run.rt)
        if stopping or (cfg.train.checkpoint_every and c.step % cfg.train.checkpoint_every == 0):
            c.meter.seconds += time.perf_counter() - t_epoch
            t_epoch = time.perf_counter()
            _save(run, is_best=False)
        if stopping:
            _stop(run)
    c.meter.seconds += time.perf_counter() - t_epoch


def _report_activations(run: _Run, images: Tensor) -> None:
    """After the first step (whose batch calibrated the asym quantizers): which layer got which activation
    quantizer and what it clips of that batch, on the console and in metrics.jsonl."""
    report = activation_report(run.training.student, images)
    for line in summarize_report(report):
        run.progress.line(line)
    run.metrics.write({"type": "activations", "step": 1,
                       "layers": {n: dataclasses.asdict(r) for n, r in report.items()}})


def _batch_loss(run: _Run, images: Tensor, labels: Tensor, cached: list[Tensor]) -> Tensor:
    """The loss of one batch as the step computed it (to run a failed batch again)."""
    with autocast(images.device, run.cfg.train.amp):
        return run.training.distiller(images, labels, **({"teacher_logits": cached[0]} if cached else {}))[1]["loss"]


def _nonfinite(run: _Run, res: Any, epoch: int, loss_of_batch: Callable[[], Tensor]) -> None:
    """Log a non-finite step; stop the run (``stop``: naming where the first non-finite value appeared,
    the batch run again with hooks) or count it as skipped (``skip``)."""
    c, skip = run.counters, run.cfg.train.on_nonfinite == "skip"
    where = f"step {c.step} (epoch {epoch + 1}, batch {run.training.data.batches.step}/{run.training.steps_per_epoch})"
    run.metrics.write({"type": "nonfinite", "epoch": epoch + 1, "step": c.step, "loss": res.loss,
                       "grad_norm": res.grad_norm, "action": "skip" if skip else "stop"})
    if not skip:
        kept = f"the last good checkpoint {run.last} is kept" if run.last.is_file() else "no checkpoint was written yet"
        first = locate_nonfinite(run.training.distiller, loss_of_batch)
        advice = collapsed_note(run.training.distiller) or (
            "Lower optim.lr, try train.amp=off or quant.per_channel=true (a per-layer weight scale can zero whole "
            "channels)")
        raise NonFiniteLossError(f"non-finite loss or gradient at {where}: loss {res.loss}, gradient norm "
                                 f"{res.grad_norm}; the first non-finite value is {first}. This step was not "
                                 f"saved and {kept}. {advice}, or set train.on_nonfinite=skip",
                                 step=c.step, checkpoint=str(run.last) if run.last.is_file() else None)
    c.skipped += 1
    run.progress.line(f"skipped {where}: non-finite loss or gradient ({c.skipped} skipped so far)")


def _report_step(run: _Run, epoch: int, loss: float, grad_norm: float, interval: Meter, t_interval: float) -> None:
    """The progress bar (time elapsed, ETA of the epoch and of the run) and, every log_every steps, a metrics line."""
    cfg, t, c, now = run.cfg, run.training, run.counters, time.perf_counter()
    rate = interval.images * run.rt.world_size / max(now - t_interval, 1e-9)
    per_step = (now - run.t_first) / max(c.step - run.first_step, 1)  # this process's pace, evaluations included
    log = c.step % cfg.train.log_every == 0
    run.progress.step(bar_text(epoch=epoch + 1, epochs=cfg.train.epochs, step=t.data.batches.step,
                               steps=t.steps_per_epoch, loss=loss, images_per_s=rate,
                               elapsed_s=c.elapsed + now - run.t_start,
                               eta_epoch_s=per_step * (t.steps_per_epoch - t.data.batches.step),
                               eta_run_s=per_step * (t.schedule.total_steps - c.step)), log=log)
    if log:
        run.metrics.write({"type": "step", "epoch": epoch + 1, "step": c.step, "lr": t.schedule(c.step - 1),
                           **interval.means(), "grad_norm": grad_norm, "images_per_s": rate,
                           **({"skipped": c.skipped} if cfg.train.on_nonfinite == "skip" else {})})


def _stop(run: _Run) -> None:
    """End the run on SIGTERM/SIGINT, after the caller checkpointed the current step."""
    signals, c = run.signals, run.counters
    signals.signum = signals.signum or signal.SIGTERM  # set if only another process was signalled
    name = signal.Signals(signals.signum).name
    if run.rt.world_size > 1:
        dist.barrier()  # nobody exits (and makes torchrun kill rank 0) before the checkpoint is written
    run.metrics.write({"type": "stopped", "step": c.step, "signal": name})
    raise TrainingInterrupted(f"stopped by {name} at step {c.step}; checkpoint {run.last}; continue with --resume",
                              exit_code=signal_exit(signals.signum), step=c.step, checkpoint=str(run.last))


def _evaluate(run: _Run) -> dict[str, dict[str, float]]:
    """Every evaluation split, sharded over the processes with the counts summed (exact)."""
    results = {}
    for split, batches in run.training.evals.items():
        sums = eval_sums(run.training.student, batches, device=run.rt.device, amp=run.cfg.train.amp,
                         channels_last=run.cfg.train.channels_last)
        if run.rt.world_size > 1:
            dist.all_reduce(sums)
        results[split] = eval_metrics(sums)
    return results


def _end_epoch(run: _Run, results: dict[str, dict[str, float]]) -> None:
    """Record the epoch's evaluation (best so far, metrics line, console line) and checkpoint it."""
    c, t, skip = run.counters, run.training, run.cfg.train.on_nonfinite == "skip"
    c.epoch, c.results, test = c.epoch + 1, results, results["test"]
    is_best = take_best(c, results)
    rec = {"type": "epoch", "epoch": c.epoch, "step": c.step, "lr": t.schedule(max(c.step - 1, 0)),
           **c.meter.means("train_"),
           **{f"{s}_{k}": v for s, r in results.items() for k, v in r.items() if k != "images"},
           "best_top1": c.best["top1"], "epoch_time_s": c.meter.seconds,
           "images_per_s": c.meter.images * run.rt.world_size / max(c.meter.seconds, 1e-9),
           **({"skipped": c.skipped} if skip else {})}
    run.metrics.write(rec)
    run.progress.line(f"epoch {c.epoch}/{run.cfg.train.epochs}: train loss {rec.get('train_loss', float('nan')):.4f}, "
                      f"test top-1 {test['top1']:.2f}%" + (f" top-5 {test['top5']:.2f}%" if "top5" in test else "")
                      + (f", holdout top-1 {results['holdout']['top1']:.2f}%" if "holdout" in results else "")
                      + f", {c.meter.seconds:.1f} s")
    c.meter = Meter()
    _save(run, top1=test["top1"], is_best=is_best)
    if runtime.agree(run.signals.signum is not None, run.rt):
        _stop(run)


def _save(run: _Run, *, top1: float | None = None, is_best: bool = False) -> None:
    """Rank 0 checkpoints the run (`TrainState`) atomically; ``is_best`` also copies it to best.pt."""
    if not run.main:
        return
    t, c = run.training, run.counters
    c.top1 = top1
    joint = t.distiller.scheme.teacher == "joint"
    state = TrainState(
        config=config_to_dict(run.cfg), arch=t.student.arch,
        plan={n: lp.to_dict() for n, lp in quantized_layers(t.student).items()},
        model=standard_layout(t.student.state_dict()), optimizer=t.optimizer.state_dict(),
        scheduler=t.schedule.state_dict(c.step),
        data=t.data.batches.state_dict(), rng=ck.rng_state(),
        counters=Counters(**{**vars(c), "elapsed": c.elapsed + time.perf_counter() - run.t_start}),
        world_size=run.rt.world_size, teacher=standard_layout(t.teacher.state_dict()) if joint else None,
        teacher_arch=t.teacher.arch if joint else None,
        scaler=t.scaler.state_dict() if t.scaler is not None else None)
    ck.save_checkpoint(state.to_dict(), run.last)
    if is_best:
        atomic_copy(run.last, run.out / CHECKPOINT_DIR / ck.BEST)


# ---------------------------------------------------------------------------------------------
# After the last epoch


def _reestimate_bn(run: _Run) -> None:
    """``train.bn_reestimate``: BatchNorm statistics recomputed from the first N training batches
    (unaugmented) with the final weights, then the evaluation again; the final results, the
    checkpoint and a metrics line say so. Every process uses the same batches (not its shard) on its
    plain student (no DDP wrapper), so all agree without a collective; a resumed run's pass is the same."""
    cfg, c = run.cfg, run.counters
    batches = build.eval_data(cfg, "train", batch_size=cfg.data.batch_size, device=run.rt.device,
                              spec=run.training.spec)
    images = reestimate_batchnorm(run.training.student, batches, max_batches=cfg.train.bn_reestimate, device=run.rt.device)
    before = c.results.get("test", {}).get("top1")
    c.results = _evaluate(run)
    test = c.results["test"]
    rec = {"type": "bn_reestimate", "epoch": c.epoch, "images": images, "test_top1_before": before,
           **{f"{s}_{k}": v for s, r in c.results.items() for k, v in r.items() if k != "images"}}
    run.metrics.write(rec)
    run.progress.line(f"BatchNorm re-estimated from {images:,} training images: test top-1 "
                      + (f"{before:.2f}% -> " if before is not None else "") + f"{test['top1']:.2f}%")
    _save(run, top1=test["top1"], is_best=take_best(c, c.results))


def _finish(run: _Run) -> dict[str, Any]:
    """Write ``summary.json`` (rank 0) and return the summary."""
    summary = _summary(run)
    if run.main:
        atomic_write_text(run.out / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    if run.rt.world_size > 1:
        dist.barrier()
    return summary


def _summary(run: _Run) -> dict[str, Any]:
    cfg, t, c, rt = run.cfg, run.training, run.counters, run.rt
    test = c.results.get("test") or {"top1": c.top1}  # a checkpoint written before results were saved
    scheme = t.distiller.scheme
    return {
        "status": "finished", "final_top1": test.get("top1"), "final_top5": test.get("top5"),
        "final_loss": test.get("loss"), "best_top1": c.best["top1"], "best_top5": c.best["top5"],
        "best_epoch": c.best["epoch"], "best_on": c.best.get("on"), **({"holdout_top1": c.results["holdout"]["top1"]} if "holdout" in c.results else {}),
        "epochs": cfg.train.epochs, "steps": c.step, "skipped_steps": c.skipped,
        "wall_time_s": c.elapsed + time.perf_counter() - run.t_start,
        "version": __version__, "git_commit": run.commit, "torch": torch.__version__, "device": str(rt.device),
        "host": socket.gethostname(), "threads": torch.get_num_threads(), "world_size": rt.world_size,
        "scheme": scheme.name, "precision": cfg.quant.precision, "model": cfg.model.name,
        "parameters": t.parameters, "quantized_layers": t.quantized_layers, "train_images": t.data.images,
        "teacher_cache": cfg.distill.teacher_cache, "teacher": cfg.distill.teacher if scheme.frozen_teacher else (
            cfg.distill.teacher_model.name if cfg.distill.teacher_model else None),
    }
