"""Training: `fit` is the one consumer of the config tree; everything below it takes plain arguments.

``fit(cfg)`` builds the data (`apprentice.data.batches`), the student (quantized by
`distill.make_student`), the teacher of the scheme and the `Distiller`, then runs one explicit
loop: a `train_step` (`apprentice.train.step`) per batch at the learning rate of `optim.lr_factor`, a
metrics line every ``train.log_every`` steps, a checkpoint every ``train.checkpoint_every`` steps
and at each epoch end, an evaluation of the test (and holdout) split per epoch, ``summary.json``
at the end. Run folder and checkpoint layout: `apprentice.train.checkpoint`; processes and signals:
`apprentice.train.runtime`.

Decisions:

- Under ``torchrun`` the student (and scheme A's teacher) are wrapped in DistributedDataParallel
  separately; a frozen teacher never is. BatchNorm statistics are per process (DDP broadcasts
  rank 0's each forward). Evaluation is sharded: each process evaluates a disjoint slice and the
  counts are summed, so the accuracy is exact. Only rank 0 prints and writes files (its logged
  loss terms are its own share's; the bar's loss is the mean over processes); resuming needs
  the run folder visible to every process (one node or a shared file system).
- A non-finite loss or gradient stops the run (``train.on_nonfinite=stop``; nothing of that step
  is saved) or, with ``skip``, drops the update and rolls back that batch's BatchNorm statistics;
  the step still counts for the schedule and the data position.
- A kill (even ``kill -9`` inside a checkpoint write) loses at most the steps since the last
  checkpoint: files are replaced atomically (`apprentice.atomic`), the next start removes the temp
  files a kill left, and a new run in a folder where one died before its first checkpoint drops
  that run's metrics. A failed checkpoint write (`checkpoint.CheckpointWriteError`, e.g. a full
  disk) stops the run and keeps the previous checkpoint.
- On CPU a run stopped by SIGTERM/SIGINT mid-epoch and resumed ends bit-identical to an
  uninterrupted one. ImageNet folders resume at the right batch in the same order, but the
  workers' augmentation draws differ; cuDNN autotuning makes CUDA runs nondeterministic anyway.

Exit codes (`apprentice.cli`): a signal ends the run with `runtime.TrainingInterrupted` (143 for
SIGTERM, 130 for SIGINT); a non-finite loss with `step.NonFiniteLossError` (1); a failed checkpoint
write with `checkpoint.CheckpointWriteError` (1); a dead or hung peer under torchrun with
`runtime.PeerLostError` (1).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from apprentice import build
from apprentice.atomic import atomic_copy, atomic_write_text, remove_stale_temps
from apprentice.config import (
    Config,
    config_to_dict,
    diff_configs,
    dump_yaml,
    validate,
)
from apprentice.errors import ApprenticeError
from apprentice.train import checkpoint as ck
from apprentice.train import runtime
from apprentice.train.checkpoint import CHECKPOINT_DIR, LAST, load_state_dict_file
from apprentice.train.optim import lr_factor, make_optimizer, param_groups
from apprentice.train.progress import (
    Meter,
    MetricsWriter,
    Progress,
    bar_text,
    trim_metrics,
)
from apprentice.train.runtime import Runtime, StopSignals, TrainingInterrupted
from apprentice.train.step import (
    NonFiniteLossError,
    eval_metrics,
    eval_sums,
    train_step,
)
from apprentice.weights import check_finite, load_strict

__all__ = ["HARMLESS_KEYS", "fit"]

# Config keys that may differ when resuming: they move files or change how often things are
# reported, not what is trained (train.device: moving a run to another machine is legitimate).
HARMLESS_KEYS = ("train.out", "train.log_every", "train.checkpoint_every", "train.device",
                 "data.dir", "data.download", "data.workers", "data.eval_batch_size")
# Set to a folder to make every process write rank<R>.json (hash of its final parameters, its
# first-epoch sample indices) when fit ends; the multi-process test compares them.
DEBUG_DUMP_ENV = "APPRENTICE_DEBUG_DUMP"


# ---------------------------------------------------------------------------------------------
# The config mapped onto the data functions






# ---------------------------------------------------------------------------------------------
# fit


def fit(cfg: Config, *, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train the student described by ``cfg`` and write the run folder ``cfg.train.out``.

    Args:
        cfg: the whole config (`apprentice.config.load_config`); validated again here.
        resume: continue from ``checkpoints/last.pt``. Its stored config must equal ``cfg`` except
            for `HARMLESS_KEYS`. With no checkpoint in the folder a new run starts.
        overwrite: delete an earlier run's files (summary, metrics, checkpoints, tb/) first.

    Returns:
        The summary, also written to ``summary.json``: final and best top-1/top-5, epochs, steps,
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
    if cfg.train.amp == "fp16" and not (cfg.train.device.startswith("cuda") or
                                        (cfg.train.device == "auto" and torch.cuda.is_available())):
        raise ApprenticeError("train.amp=fp16 needs CUDA (its GradScaler); use train.amp=bf16 or off on the CPU")
    d = runtime.setup(cfg.train.device)
    lost = False
    try:
        with StopSignals() as signals:
            return _fit(cfg, d, signals, resume=resume, overwrite=overwrite)
    except RuntimeError as e:
        if d.world_size > 1 and not isinstance(e, runtime.PeerLostError) and runtime.is_collective_failure(e):
            lost = True
            raise runtime.peer_lost(d, e) from e
        raise
    finally:
        if not lost:  # leaving a broken group can block on the dead peer; the process ends anyway
            runtime.teardown(d)


def _read_resume_state(cfg: Config, out: Path, resume: bool, progress: Progress) -> dict[str, Any] | None:
    last = out / CHECKPOINT_DIR / LAST
    if not resume:
        return None
    if (out / "summary.json").is_file():
        raise ApprenticeError(f"run folder {str(out)!r} holds a finished run (summary.json); nothing to resume "
                              f"(use --overwrite to train it again)")
    if not last.is_file():
        if ck.run_files(out):
            raise ApprenticeError(f"run folder {str(out)!r} has no {CHECKPOINT_DIR}/{LAST} to resume from; "
                                  f"use --overwrite to start again")
        progress.line(f"nothing to resume in {out}: no {CHECKPOINT_DIR}/{LAST}; starting a new run")
        return None
    state = ck.read_checkpoint(last)
    diffs = [x for x in diff_configs(build.stored_config(state, last), cfg) if x.split(":")[0] not in HARMLESS_KEYS]
    if diffs:
        raise ApprenticeError(f"cannot resume {str(out)!r}: the config differs from its checkpoint's in "
                              f"{'; '.join(diffs)}; use the same config, or --overwrite to start again")
    return state


def _fit(cfg: Config, d: Runtime, signals: StopSignals, *, resume: bool, overwrite: bool) -> dict[str, Any]:
    from apprentice.distill import Distiller, make_student, resolve_scheme
    from apprentice.models import count_parameters
    from apprentice.quant import parse_precision, quantized_layers

    t_start, main, out = time.perf_counter(), d.rank == 0, Path(cfg.train.out)
    last = out / CHECKPOINT_DIR / LAST
    progress = Progress(enabled=main)
    runtime.raise_from_rank0(ck.check_run_dir(out, resume=resume, overwrite=overwrite) if main else None, d)
    if main:  # a run killed inside an atomic write leaves its temp file; nothing else writes here
        stale = remove_stale_temps(out) + remove_stale_temps(out / CHECKPOINT_DIR)
        if stale:
            progress.line(f"removed {len(stale)} temporary file(s) left by an interrupted write: "
                          + ", ".join(p.name for p in stale))
    state = _read_resume_state(cfg, out, resume, progress)

    # ---- data and models, seeded alike on every process
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    if d.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    train_batches, num_classes, channels, train_images = build.train_data(cfg, d)
    evals = {"test": build.eval_data(cfg, "test", device=d.device, rank=d.rank, world_size=d.world_size)}
    if cfg.data.holdout > 0:
        evals["holdout"] = build.eval_data(cfg, "holdout", device=d.device, rank=d.rank, world_size=d.world_size)
    scheme, dc, q, o = resolve_scheme(cfg.distill.scheme), cfg.distill, cfg.quant, cfg.optim
    student = build.build_from_config(cfg.model, num_classes=num_classes, in_channels=channels)
    init = None
    if scheme.student_init == "pretrained":
        try:
            init = load_state_dict_file(dc.student_init)  # type: ignore[arg-type]
            check_finite(init, repr(dc.student_init))
        except ApprenticeError as e:
            raise ApprenticeError(f"distill.student_init: {e}") from None
    weights, acts = parse_precision(q.precision, quantizer=q.quantizer, per_channel=q.per_channel,
                                    clip=q.act_clip, learned=q.learned_clip)
    try:
        make_student(student, scheme=scheme, weights=weights, activations=acts, init_state_dict=init,
                     exclude=list(q.exclude) if q.exclude is not None else None)
    except ApprenticeError as e:
        if init is None or "init_state_dict" not in str(e):
            raise
        raise ApprenticeError(f"distill.student_init {dc.student_init!r}: {e}") from None
    teacher: Any = None
    if scheme.teacher == "joint":
        teacher = build.build_from_config(dc.teacher_model, num_classes=num_classes, in_channels=channels)  # type: ignore[arg-type]
    elif scheme.frozen_teacher:
        teacher = build.load_teacher(dc.teacher, dc.teacher_model, num_classes=num_classes, in_channels=channels)  # type: ignore[arg-type]
    memory = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    for m in (student, teacher):
        if m is not None:
            m.to(d.device, memory_format=memory)
    distiller = Distiller(student, teacher, scheme=scheme, alpha=dc.alpha, beta=dc.beta, gamma=dc.gamma,
                          temperature=dc.temperature, teacher_grad_from_gamma=dc.teacher_grad_from_gamma)
    # Scheme A's teacher trains only if some loss term reaches it (else DDP would wait for its grads).
    teacher_trains = scheme.teacher == "joint" and (distiller.alpha > 0 or dc.teacher_grad_from_gamma)
    if scheme.teacher == "joint" and not teacher_trains:
        teacher.requires_grad_(False)
    trained = [student, teacher] if teacher_trains else [student]
    optimizer = make_optimizer(o.name, param_groups(trained, weight_decay=o.weight_decay,
                                                    decay_norm_and_bias=o.decay_norm_and_bias),
                               lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)
    scaler = torch.amp.GradScaler("cuda") if cfg.train.amp == "fp16" else None
    steps_per_epoch, epochs = len(train_batches), cfg.train.epochs
    total_steps, warmup_steps = epochs * steps_per_epoch, round(o.warmup_epochs * steps_per_epoch)

    def lr_at(step: int) -> float:
        return o.lr * lr_factor(step, schedule=o.schedule, total_steps=total_steps, warmup_steps=warmup_steps,
                                milestones=o.milestones, decay=o.lr_decay)

    # ---- restore a resumed run's state
    step, done_epochs, skipped, elapsed = 0, 0, 0, 0.0
    best: dict[str, Any] = {"top1": -1.0, "top5": None, "epoch": 0}
    epoch_meter = Meter()
    if state is not None:
        load_strict(student, state["model"], f"checkpoint {str(last)!r}")
        try:  # a damaged or hand-edited checkpoint must not fail half way with a KeyError
            if teacher_trains:
                load_strict(teacher, state["teacher"], f"checkpoint {str(last)!r} (teacher)")
            optimizer.load_state_dict(state["optimizer"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            train_batches.load_state_dict(state["data"])
            step, done_epochs, skipped, elapsed = (int(state["step"]), int(state["epoch"]), int(state["skipped"]),
                                                   float(state["elapsed"]))
            best, epoch_meter = dict(state["best"]), Meter.from_state_dict(state["meter"])
            ck.set_rng_state(state["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            what = f"missing {e}" if isinstance(e, KeyError) else " ".join(str(e).split())[:200]
            raise ApprenticeError(f"checkpoint {str(last)!r} cannot be resumed ({what}); --overwrite starts the "
                                  f"run again") from None
        if state.get("world_size") != d.world_size:
            progress.line(f"note: resuming a {state['world_size']}-process run with {d.world_size}: the batches "
                          f"stay the same, augmentation draws change")

    # ---- run folder: rank 0 writes, the others only train
    leftovers = False
    if main:
        if overwrite:
            ck.clear_run(out)
        try:
            (out / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ApprenticeError(f"cannot create the run folder {str(out)!r} (train.out): {e.strerror or e}") from None
        atomic_write_text(out / "config.yaml", dump_yaml(cfg))
        # A resumed run re-logs the steps after its checkpoint; a new run in a folder where one was
        # killed before its first checkpoint drops that run's lines (and TensorBoard events) too.
        leftovers = state is None and (out / "metrics.jsonl").is_file()
        if state is not None or leftovers:
            trim_metrics(out / "metrics.jsonl", step)
    purge = step + 1 if state is not None or leftovers else None
    metrics = MetricsWriter(out, enabled=main, purge_step=purge, notice=progress.line)
    if d.world_size > 1:  # average the gradients of what trains; a frozen teacher is never wrapped
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [d.device.index] if d.device.type == "cuda" else None
        distiller.student = DDP(student, device_ids=ids)
        if teacher_trains:
            distiller.teacher = DDP(teacher, device_ids=ids)
    n_params, n_quantized = count_parameters(student), len(quantized_layers(student))
    progress.line(f"training {cfg.model.name} ({q.precision}, {n_quantized} quantized layers, {n_params:,} parameters), "
                  f"scheme {scheme.name}, on {cfg.data.name}: {train_images} images, {steps_per_epoch} steps/epoch x "
                  f"{epochs} epochs on {d.device}{f' x {d.world_size} processes' if d.world_size > 1 else ''}; "
                  f"run folder {out}" + (f"; resuming at step {step}" if state is not None else ""))

    def save(top1: float | None, is_best: bool) -> None:
        if not main:
            return
        blob = {"format": ck.FORMAT, "config": config_to_dict(cfg), "arch": student.arch,
                "plan": {n: lp.to_dict() for n, lp in quantized_layers(student).items()},
                "epoch": done_epochs, "step": step, "model": student.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": {"schedule": o.schedule, "step": step, "total_steps": total_steps, "warmup_steps": warmup_steps},
                "data": train_batches.state_dict(), "rng": ck.rng_state(), "best_top1": best["top1"], "best": best,
                "top1": top1, "results": results, "meter": epoch_meter.state_dict(), "skipped": skipped, "world_size": d.world_size,
                "elapsed": elapsed + time.perf_counter() - t_start}
        if scheme.teacher == "joint":
            blob.update(teacher=teacher.state_dict(), teacher_arch=teacher.arch)
        if scaler is not None:
            blob["scaler"] = scaler.state_dict()
        ck.save_checkpoint(blob, last)
        if is_best:
            atomic_copy(last, out / CHECKPOINT_DIR / ck.BEST)

    def stop() -> None:
        signals.signum = signals.signum or signal.SIGTERM  # set if only another process was signalled
        name = signal.Signals(signals.signum).name
        if d.world_size > 1:
            dist.barrier()  # nobody exits (and makes torchrun kill rank 0) before the checkpoint is written
        msg = f"stopped by {name} at step {step}; checkpoint {last}; continue with --resume"
        metrics.write({"type": "stopped", "step": step, "signal": name})
        raise TrainingInterrupted(msg, exit_code=128 + signals.signum, step=step, checkpoint=str(last))

    skip_mode, results = cfg.train.on_nonfinite == "skip", {}
    interval, t_interval = Meter(), time.perf_counter()
    try:
        for epoch in range(done_epochs, epochs):
            train_batches.set_epoch(epoch)
            distiller.train()
            t_epoch = time.perf_counter()
            for images, labels in train_batches:
                if cfg.train.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                lr = lr_at(step)
                res = train_step(distiller, optimizer, images, labels, lr=lr, amp=cfg.train.amp, scaler=scaler,
                                 restore_buffers=skip_mode)
                step += 1
                if res.finite:
                    interval.add(res.losses, res.logits, labels)
                    epoch_meter.add(res.losses, res.logits, labels)
                else:
                    where = f"step {step} (epoch {epoch + 1}, batch {train_batches.step}/{steps_per_epoch})"
                    metrics.write({"type": "nonfinite", "epoch": epoch + 1, "step": step, "loss": res.loss,
                                   "grad_norm": res.grad_norm, "action": "skip" if skip_mode else "stop"})
                    if not skip_mode:
                        kept = f"the last good checkpoint {last} is kept" if last.is_file() else "no checkpoint was written yet"
                        msg = (f"non-finite loss or gradient at {where}: loss {res.loss}, gradient norm {res.grad_norm}; "
                               f"this step was not saved and {kept}. Lower optim.lr, try train.amp=off, or set "
                               f"train.on_nonfinite=skip")
                        raise NonFiniteLossError(msg, step=step, checkpoint=str(last) if last.is_file() else None)
                    skipped += 1
                    progress.line(f"skipped {where}: non-finite loss or gradient ({skipped} skipped so far)")
                log_due = step % cfg.train.log_every == 0
                if main:
                    rate = interval.images * d.world_size / max(time.perf_counter() - t_interval, 1e-9)
                    progress.step(bar_text(epoch=epoch + 1, epochs=epochs, step=train_batches.step, steps=steps_per_epoch,
                                           loss=res.loss, images_per_s=rate), log=log_due)
                    if log_due:
                        metrics.write({"type": "step", "epoch": epoch + 1, "step": step, "lr": lr, **interval.means(),
                                       "grad_norm": res.grad_norm, "images_per_s": rate,
                                       **({"skipped": skipped} if skip_mode else {})})
                if log_due:
                    interval, t_interval = Meter(), time.perf_counter()
                stopping = runtime.agree(signals.signum is not None, d)
                if stopping or (cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0):
                    epoch_meter.seconds += time.perf_counter() - t_epoch
                    t_epoch = time.perf_counter()
                    save(None, False)
                if stopping:
                    stop()

            # ---- epoch end: evaluate every split (sharded, counts summed), log, checkpoint
            epoch_meter.seconds += time.perf_counter() - t_epoch
            results = {}
            for split, split_batches in evals.items():
                sums = eval_sums(student, split_batches, device=d.device, amp=cfg.train.amp, channels_last=cfg.train.channels_last)
                if d.world_size > 1:
                    dist.all_reduce(sums)
                results[split] = eval_metrics(sums)
            done_epochs, test = epoch + 1, results["test"]
            is_best = test["top1"] > best["top1"]
            if is_best:
                best = {"top1": test["top1"], "top5": test.get("top5"), "epoch": done_epochs}
            rec = {"type": "epoch", "epoch": done_epochs, "step": step, "lr": lr_at(max(step - 1, 0)),
                   **epoch_meter.means("train_"),
                   **{f"{s}_{k}": v for s, r in results.items() for k, v in r.items() if k != "images"},
                   "best_top1": best["top1"], "epoch_time_s": epoch_meter.seconds,
                   "images_per_s": epoch_meter.images * d.world_size / max(epoch_meter.seconds, 1e-9),
                   **({"skipped": skipped} if skip_mode else {})}
            metrics.write(rec)
            progress.line(f"epoch {done_epochs}/{epochs}: train loss {rec.get('train_loss', float('nan')):.4f}, "
                          f"test top-1 {test['top1']:.2f}%" + (f" top-5 {test['top5']:.2f}%" if "top5" in test else "")
                          + (f", holdout top-1 {results['holdout']['top1']:.2f}%" if "holdout" in results else "")
                          + f", {epoch_meter.seconds:.1f} s")
            epoch_meter = Meter()
            save(test["top1"], is_best)
            if runtime.agree(signals.signum is not None, d):
                stop()
    finally:
        progress.close()
        metrics.close()

    if not results:  # resumed a run that had finished its last epoch but not written its summary
        saved = ck.read_checkpoint(last)  # its last evaluation (every split), else the test top-1 alone
        results = saved.get("results") or {"test": {"top1": saved.get("top1")}}
    test = results["test"]
    summary = {
        "status": "finished", "final_top1": test.get("top1"), "final_top5": test.get("top5"),
        "final_loss": test.get("loss"), "best_top1": best["top1"], "best_top5": best["top5"],
        "best_epoch": best["epoch"], **({"holdout_top1": results["holdout"]["top1"]} if "holdout" in results else {}),
        "epochs": epochs, "steps": step, "skipped_steps": skipped, "wall_time_s": elapsed + time.perf_counter() - t_start,
        "version": _version(), "git_commit": _git_commit(), "torch": torch.__version__, "device": str(d.device),
        "host": socket.gethostname(), "threads": torch.get_num_threads(), "world_size": d.world_size,
        "scheme": scheme.name, "precision": q.precision, "model": cfg.model.name,
        "parameters": n_params, "quantized_layers": n_quantized, "train_images": train_images,
        "teacher": dc.teacher if scheme.frozen_teacher else (dc.teacher_model.name if dc.teacher_model else None),
    }
    if main:
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    if os.environ.get(DEBUG_DUMP_ENV):
        _debug_dump(Path(os.environ[DEBUG_DUMP_ENV]), d, student, train_batches)
    if d.world_size > 1:
        dist.barrier()
    return summary


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def _version() -> str:
    from apprentice import __version__

    return __version__


def _debug_dump(folder: Path, d: Runtime, student: nn.Module, train_batches: Any) -> None:
    h = hashlib.sha256()
    for name, p in student.named_parameters():
        h.update(name.encode() + p.detach().cpu().contiguous().numpy().tobytes())
    indices = train_batches.indices(0).tolist() if hasattr(train_batches, "indices") else []
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank{d.rank}.json").write_text(json.dumps(
        {"rank": d.rank, "world_size": d.world_size, "params_sha256": h.hexdigest(), "epoch0_indices": indices}))
