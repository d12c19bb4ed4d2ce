"""Tests of apprentice.run.loop (fit) and apprentice.run.runs.load_run, end to end on tiny runs.

Everything runs on the CPU with the synthetic data set (1x16x16, 10 classes) and resnet8 at width
0.25, so each fit takes a second or two. Subprocess tests (SIGTERM + resume, torchrun) use one
thread per process so that a busy machine does not change which step the signal lands on much.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from apprentice.config import config_to_dict, load_config
from apprentice.errors import ApprenticeError
from apprentice.models import build_model
from apprentice.run import build, loop
from apprentice.run.loop import fit
from apprentice.run.runs import load_run
from apprentice.train import checkpoint as ck
from apprentice.train.checkpoint import load_state_dict_file
from apprentice.train.runtime import TrainingInterrupted
from apprentice.train.state import take_best
from apprentice.train.step import NonFiniteLossError

from tiny_runs import ROOT, recipe, records, subprocess_env, tiny


def params_sha256(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode() + p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> Path:
    """A finished full-precision baseline run: the teacher of the scheme B/C tests."""
    out = tmp_path_factory.mktemp("runs") / "teacher"
    fit(tiny(out, "data.holdout=32"))
    return out


# ---------------------------------------------------------------------------------------------
# The run folder


def test_fit_writes_every_file_with_the_right_fields(teacher_run):
    run = teacher_run
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())  # tensorboard is installed in the test environment
    assert load_config(str(run / "config.yaml")) == build.resolve_quant(tiny(run, "data.holdout=32"))
    summary = json.loads((run / "summary.json").read_text())
    for key in ("final_top1", "final_top5", "best_top1", "best_top5", "holdout_top1", "epochs", "steps",
                "wall_time_s", "version", "git_commit", "torch", "device", "world_size", "scheme", "precision",
                "parameters"):
        assert key in summary, key
    assert summary["epochs"] == 1 and summary["steps"] == 4  # data.limit=128 training images / 32
    assert summary["world_size"] == 1 and summary["device"] == "cpu" and summary["scheme"] == "baseline"
    # apprentice's own commit, whatever folder the command runs in (None outside a git checkout)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False, cwd=ROOT)
    assert summary["git_commit"] == ((head.stdout.strip() or None) if head.returncode == 0 else None)
    steps, epochs = records(run, "step"), records(run, "epoch")
    assert [r["step"] for r in steps] == [2, 4] and len(epochs) == 1
    assert {"epoch", "step", "lr", "loss", "ce_student", "images_per_s"} <= set(steps[0])
    assert {"train_loss", "test_top1", "test_top5", "holdout_top1", "epoch_time_s"} <= set(epochs[0])
    assert epochs[0]["test_top1"] == summary["final_top1"]
    ckpt = torch.load(run / "checkpoints/last.pt", weights_only=True)
    for key in ("format", "config", "arch", "plan", "epoch", "step", "model", "optimizer", "scheduler", "data",
                "rng", "best_top1", "top1"):
        assert key in ckpt, key
    assert ckpt["config"] == config_to_dict(build.resolve_quant(tiny(run, "data.holdout=32"))) and ckpt["plan"] == {}
    assert (ckpt["epoch"], ckpt["step"], ckpt["data"]) == (1, 4, {"epoch": 1, "step": 0})


def test_refuses_a_finished_run_and_overwrite_starts_again(teacher_run, tmp_path):
    with pytest.raises(ApprenticeError, match="already holds a finished run") as e:
        fit(tiny(teacher_run, "data.holdout=32"))
    assert str(teacher_run) in str(e.value) and "--overwrite" in str(e.value) and "--resume" in str(e.value)
    copy = tmp_path / "copy"
    shutil.copytree(teacher_run, copy)
    (copy / "summary.json").unlink()
    with pytest.raises(ApprenticeError, match=r"checkpoints \(best.pt\)"):
        fit(tiny(copy))
    fit(tiny(copy), overwrite=True)
    assert len(records(copy, "epoch")) == 1 and not (copy / "checkpoints" / ".tmp").exists()


def test_resume_with_another_config_names_the_keys(teacher_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(teacher_run, copy)
    (copy / "summary.json").unlink()  # as if stopped after the last epoch's checkpoint
    with pytest.raises(ApprenticeError, match="differs") as e:
        fit(tiny(copy, "data.holdout=32", "optim.lr=0.2", "train.log_every=7", "train.keep_freed_memory=false",
                 "quant.precision=2W/32A"), resume=True)
    msg = str(e.value)
    assert "optim.lr: 0.05 -> 0.2" in msg and "quant.precision" in msg and "log_every" not in msg
    assert "keep_freed_memory" not in msg  # how fast, not what trains
    summary = fit(tiny(copy, "data.holdout=32", "train.log_every=7", "train.keep_freed_memory=false"),
                  resume=True)  # nothing left to train
    assert summary["steps"] == 4 and (copy / "summary.json").is_file()
    with pytest.raises(ApprenticeError, match="finished run"):
        fit(tiny(copy, "data.holdout=32"), resume=True)


# ---------------------------------------------------------------------------------------------
# Schemes


def test_scheme_b_from_a_run_folder_logs_separate_terms(teacher_run, tmp_path):
    out = tmp_path / "b"
    summary = fit(tiny(out, "distill.scheme=B", f"distill.teacher={teacher_run}", "quant.precision=2W/32A"))
    assert summary["scheme"] == "B" and summary["teacher"] == str(teacher_run)
    step = records(out, "step")[0]
    assert {"loss", "ce_student", "kd"} <= set(step) and "ce_teacher" not in step
    assert {"train_ce_student", "train_kd"} <= set(records(out, "epoch")[0])
    assert load_run(out).plan  # the student is ternary


def test_scheme_b_from_safetensors_and_mismatches_name_the_file(teacher_run, tmp_path):
    from safetensors.torch import save_file

    file = tmp_path / "teacher.safetensors"
    save_file(load_state_dict_file(teacher_run), str(file))
    arch = ["distill.scheme=B", f"distill.teacher={file}", "distill.teacher_model.name=resnet8",
            "distill.teacher_model.width=0.25"]
    fit(tiny(tmp_path / "b", *arch))
    assert "kd" in records(tmp_path / "b", "step")[0]

    with pytest.raises(ApprenticeError, match="set distill.teacher_model"):
        fit(tiny(tmp_path / "x", "distill.scheme=B", f"distill.teacher={file}"))
    five = tmp_path / "five.safetensors"
    save_file(build_model("resnet8", num_classes=5, in_channels=1, width=0.25).state_dict(), str(five))
    with pytest.raises(ApprenticeError, match="predicts 5 classes") as e:
        fit(tiny(tmp_path / "x", *arch[:1], f"distill.teacher={five}", *arch[2:]))
    assert str(five) in str(e.value)
    with pytest.raises(ApprenticeError, match=r"does not fit resnet14.*missing layer1\.1\.") as e:
        fit(tiny(tmp_path / "x", *arch[:2], "distill.teacher_model.name=resnet14", arch[3]))
    assert str(file) in str(e.value)
    with pytest.raises(ApprenticeError, match="teacher_model does not match teacher run"):
        fit(tiny(tmp_path / "x", "distill.scheme=B", f"distill.teacher={teacher_run}",
                 "distill.teacher_model.name=resnet14"))


def test_scheme_c_starts_from_the_runs_weights(teacher_run, tmp_path):
    out = tmp_path / "c"
    # A vanishing learning rate: the trained shadow weights must still be the initial ones.
    fit(tiny(out, "distill.scheme=C", f"distill.teacher={teacher_run}", f"distill.student_init={teacher_run}",
             "quant.precision=2W/32A", "optim.lr=1e-12", "optim.weight_decay=0"))
    student = dict(load_run(out).model.named_parameters())
    init = load_state_dict_file(teacher_run)
    assert student.keys() <= init.keys()
    for name, p in student.items():
        torch.testing.assert_close(p.detach(), init[name], rtol=0, atol=1e-8)


def test_best_checkpoint_is_chosen_on_the_holdout_never_on_test():
    def epoch(c, test, holdout=None):
        c.epoch += 1
        results = {"test": {"top1": test, "top5": 99.0}, **({"holdout": {"top1": holdout}} if holdout else {})}
        return take_best(c, results)

    c = loop.Counters()
    assert epoch(c, 50.0, 60.0) and c.best == {"top1": 50.0, "top5": 99.0, "epoch": 1, "on": "holdout", "score": 60.0}
    assert not epoch(c, 70.0, 59.0)  # test rose, holdout fell: not chosen
    assert not epoch(c, 71.0, 60.0) and c.best["epoch"] == 1  # a tie keeps the earlier epoch
    assert epoch(c, 40.0, 61.0) and (c.best["epoch"], c.best["top1"]) == (4, 40.0)  # holdout rose, test fell: chosen
    c = loop.Counters()  # no holdout: every epoch, so best.pt is the last
    assert epoch(c, 50.0) and epoch(c, 40.0) and (c.best["epoch"], c.best["on"]) == (2, "last")
    old = loop.Counters(best={"top1": 90.0, "top5": None, "epoch": 3})  # a checkpoint of a version that chose on test
    assert epoch(old, 10.0, 10.0) and old.best["score"] == 10.0


def test_bn_reestimate_recomputes_the_statistics_after_the_last_epoch_and_reports_both(tmp_path):
    out = tmp_path / "bn"
    summary = fit(tiny(out, "quant.precision=2W/8A", "data.holdout=32", "train.bn_reestimate=2"))
    (rec,) = records(out, "bn_reestimate")
    assert rec["images"] == 64 and rec["test_top1_before"] == records(out, "epoch")[-1]["test_top1"]
    assert summary["final_top1"] == rec["test_top1"] and "holdout_top1" in rec
    run = load_run(out / "checkpoints" / "last.pt")  # the checkpoint holds the recomputed statistics
    bn = run.model.bn1
    saved = (bn.running_mean.clone(), bn.running_var.clone())
    from apprentice import reestimate_batchnorm
    from apprentice.run.build import eval_data
    reestimate_batchnorm(run.model, eval_data(run.config, "train", batch_size=32), max_batches=2)
    torch.testing.assert_close((bn.running_mean, bn.running_var), saved)  # recomputing gives the same: resumable
    with pytest.raises(ApprenticeError, match="train.bn_reestimate"):
        fit(tiny(tmp_path / "bad", "train.bn_reestimate=-1"))


def test_scheme_a_trains_and_checkpoints_the_teacher(tmp_path):
    out = tmp_path / "a"
    fit(tiny(out, "distill.scheme=A", "distill.teacher_model.name=resnet8", "distill.teacher_model.width=0.5"))
    assert {"ce_teacher", "ce_student", "kd"} <= set(records(out, "step")[0])
    ckpt = ck.read_checkpoint(out / "checkpoints/last.pt")
    assert ckpt["teacher_arch"]["width"] == 0.5 and "conv1.weight" in ckpt["teacher"]
    n_student = sum(p.numel() for p in load_run(out).model.parameters())
    n_state = sum(len(s["momentum_buffer"].flatten()) for s in ckpt["optimizer"]["state"].values())
    assert n_state > n_student  # the optimizer also updates the teacher


# ---------------------------------------------------------------------------------------------
# Non-finite losses


def test_nonfinite_stop_names_the_step_and_keeps_the_last_good_checkpoint(nan_at, tmp_path):
    out = tmp_path / "nan"
    nan_at(3)
    with pytest.raises(NonFiniteLossError, match=r"step 3 \(epoch 1, batch 3/4\)") as e:
        fit(tiny(out, "train.checkpoint_every=2"))
    assert e.value.step == 3 and e.value.exit_code == 1 and e.value.checkpoint == str(out / "checkpoints/last.pt")
    ckpt = ck.read_checkpoint(out / "checkpoints/last.pt")
    assert ckpt["step"] == 2 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not (out / "summary.json").exists()
    assert records(out, "nonfinite")[0]["step"] == 3


def test_nonfinite_skip_counts_and_rolls_back(nan_at, tmp_path):
    out = tmp_path / "skip"
    nan_at(2, 3)
    summary = fit(tiny(out, "train.on_nonfinite=skip", "train.epochs=2"))
    assert summary["skipped_steps"] == 2 and summary["steps"] == 8
    assert (summary["best_epoch"], summary["best_on"], summary["best_top1"]) == (2, "last", summary["final_top1"])
    assert records(out, "step")[-1]["skipped"] == 2 and records(out, "epoch")[-1]["skipped"] == 2
    model = load_run(out).model
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())


def _whole_and_resumed(nan_at, tmp_path, settings: tuple[str, ...]) -> tuple[dict, dict, dict]:
    """An uninterrupted run, and the same run stopped at step 6 then resumed from its step-5 checkpoint:
    the final weights of both and the checkpoint the resume started from."""
    fit(tiny(tmp_path / "whole", *settings, "train.epochs=2", "train.checkpoint_every=5"))
    nan_at(6)
    with pytest.raises(NonFiniteLossError):
        fit(tiny(tmp_path / "cut", *settings, "train.epochs=2", "train.checkpoint_every=5"))
    stopped = ck.read_checkpoint(tmp_path / "cut" / "checkpoints/last.pt")
    fit(tiny(tmp_path / "cut", *settings, "train.epochs=2", "train.checkpoint_every=5"), resume=True)
    whole, cut = (ck.read_checkpoint(tmp_path / r / "checkpoints/last.pt")["model"] for r in ("whole", "cut"))
    return whole, cut, stopped


def test_deployable_run_resumes_bit_identically_without_calibrating_again(nan_at, tmp_path):
    """quant.deploy=int8: the adds' quantizers calibrate on the first batch and are saved; a run stopped
    at step 6 and resumed from its step-5 checkpoint ends exactly where an uninterrupted run ends."""
    whole, cut, stopped = _whole_and_resumed(nan_at, tmp_path, ("quant.precision=2W/8A", "quant.deploy=int8",
                                                                "model.shortcut=B"))
    assert stopped["step"] == 5 and stopped["plan"]["layer3.0.add"]["kind"] == "add"
    assert bool(stopped["model"]["layer3.0.add.quant_out.act_step_initialized"])
    assert whole.keys() == cut.keys() and any(k.endswith(".zero_point") for k in whole)
    assert all(torch.equal(whole[k], cut[k]) for k in whole)


def test_log_domain_steps_learn_and_resume_bit_identically(nan_at, tmp_path):
    """optim.quant_domain=log: the LSQ steps move (relative updates of ln s, momentum in that domain) and a
    run resumed from its step-5 checkpoint ends exactly where an uninterrupted one ends."""
    whole, cut, stopped = _whole_and_resumed(nan_at, tmp_path, ("quant.precision=2W/2A", "quant.quantizer=lsq",
                                                                "optim.quant_domain=log"))
    steps = [k for k in whole if k.endswith(("weight_step", "act_step"))]
    assert steps and all(torch.equal(whole[k], cut[k]) for k in whole)
    assert all(bool((whole[k] > 0).all()) for k in steps)
    assert any(not torch.equal(whole[k], stopped["model"][k]) for k in steps)


# ---------------------------------------------------------------------------------------------
# Several processes


def test_torchrun_two_processes_average_gradients(tmp_path):
    recipe_file = recipe(tmp_path / "r.yaml", "data.limit=256", "quant.precision=2W/32A")
    out, dump = tmp_path / "ddp", tmp_path / "dump"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "fault_hooks.py"), "train", str(recipe_file), f"train.out={out}"]
    done = subprocess.run(cmd, check=False, env=subprocess_env(APPRENTICE_TEST_DUMP=str(dump)), capture_output=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert done.stdout.decode().count("done:") == 1  # only rank 0 reports
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 8  # 256 images / global batch 32
    r0, r1 = (json.loads((dump / f"rank{r}.json").read_text()) for r in (0, 1))
    # Different images on each process, yet the same weights: the gradients were averaged.
    assert len(r0["epoch0_indices"]) == len(r1["epoch0_indices"]) == 128
    assert not set(r0["epoch0_indices"]) & set(r1["epoch0_indices"])
    assert r0["params_sha256"] == r1["params_sha256"] == params_sha256(load_run(out / "checkpoints/last.pt").model)
    assert len(records(out, "epoch")) == 1  # only rank 0 logs


# ---------------------------------------------------------------------------------------------
# Loading runs and files


def test_load_run_from_folder_and_file(teacher_run):
    a, b = load_run(teacher_run), load_run(teacher_run / "checkpoints" / "last.pt")
    assert not a.model.training and a.config == build.resolve_quant(tiny(teacher_run, "data.holdout=32"))
    assert a.summary is not None and a.summary == b.summary and a.checkpoint_path.endswith("best.pt")
    x = torch.randn(3, 1, 16, 16)
    torch.testing.assert_close(a.model(x), b.model(x), rtol=0, atol=0)
    assert a.model.arch["num_classes"] == 10


class _Payload:
    """Unpickling this creates a file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"format": 1, "model": {"w": _Payload(marker)}}, evil)
    # The payload is real: an unsafe load would create a second marker.
    probe = tmp_path / "probe.pt"
    torch.save(_Payload(tmp_path / "probe-ran"), probe)
    torch.load(probe, weights_only=False).close()
    assert (tmp_path / "probe-ran").exists()
    for call in (lambda: load_run(evil), lambda: load_state_dict_file(evil),
                 lambda: fit(tiny(tmp_path / "x", "distill.scheme=B", f"distill.teacher={evil}"))):
        with pytest.raises(ApprenticeError, match="never unpickled") as e:
            call()
        assert str(evil) in str(e.value)
        assert not marker.exists()


def test_truncated_and_foreign_files_name_the_file(teacher_run, tmp_path):
    data = (teacher_run / "checkpoints" / "last.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    for path in (cut, text, tmp_path / "missing.pt"):  # load_state_dict_file's own: tests/train/test_checkpoint.py
        with pytest.raises(ApprenticeError) as e:
            load_run(path)
        assert str(path) in str(e.value)
    plain = tmp_path / "plain.pt"
    torch.save({"module.w": torch.ones(2)}, plain)
    with pytest.raises(ApprenticeError, match="not an apprentice checkpoint"):
        load_run(plain)
    with pytest.raises(ApprenticeError, match="no checkpoint"):
        load_run(tmp_path)


# ---------------------------------------------------------------------------------------------
# Precision options


def test_bf16_autocast_and_channels_last_run_on_cpu(tmp_path):
    summary = fit(tiny(tmp_path / "bf16", "train.amp=bf16", "train.channels_last=true", "quant.precision=4W/8A"))
    assert summary["steps"] == 4 and 0 <= summary["final_top1"] <= 100
    with pytest.raises(ApprenticeError, match="fp16 needs CUDA"):
        fit(tiny(tmp_path / "fp16", "train.amp=fp16"))


def test_image_folder_runs_stop_and_resume_through_the_dataloader_path(tmp_path, monkeypatch, image_folder):
    out = tmp_path / "run"
    cfg = load_config(None, ["model.name=resnet18", "model.width=0.125", "model.small_input=true",
                             "data.name=imagenet", f"data.dir={image_folder}", "data.image_size=16",
                             "data.workers=0", "data.batch_size=4", "data.eval_batch_size=4", "train.epochs=2",
                             "train.device=cpu", f"train.out={out}", "train.log_every=1", "quant.precision=4W/8A"])
    original, calls = loop.train_step, [0]

    def stop_at_step_2(*args, **kwargs):
        result = original(*args, **kwargs)
        calls[0] += 1
        if calls[0] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(loop, "train_step", stop_at_step_2)
    with pytest.raises(TrainingInterrupted):
        fit(cfg)
    assert ck.read_checkpoint(out / "checkpoints/last.pt")["data"] == {"epoch": 0, "step": 2}
    summary = fit(cfg, resume=True)
    assert summary["steps"] == 6 and summary["final_top5"] is None  # 12 images / 4; 2 classes: no top-5
    assert [r["step"] for r in records(out, "step")] == [1, 2, 3, 4, 5, 6]
    assert load_run(out).model.arch["num_classes"] == 2


def test_resume_after_the_last_checkpoint_keeps_every_split_in_the_summary(tmp_path):
    # A stop between the final epoch's checkpoint and summary.json: the resumed run has no epoch
    # left to train and must report the last evaluation as it was (holdout, top-5, loss included).
    cfg = tiny(tmp_path / "run", "data.holdout=32")
    first = fit(cfg)
    (tmp_path / "run" / "summary.json").unlink()
    again = fit(cfg, resume=True)
    for key in ("final_top1", "final_top5", "final_loss", "holdout_top1"):
        assert again[key] == first[key], key


def test_nonfinite_stop_names_the_first_layer_whose_output_went_nonfinite(monkeypatch, tmp_path):
    """A NaN born in one layer at step 3: the stop names that layer (the batch is run again with hooks)."""
    original, calls = build.build_distiller, [0]

    def spoil(module, inputs, output):
        calls[0] += module.training
        return output * float("nan") if calls[0] >= 3 else output

    def with_spoiled_layer(*args, **kwargs):
        distiller = original(*args, **kwargs)
        distiller.student.get_submodule("layer2.0.conv1").register_forward_hook(spoil)
        return distiller

    monkeypatch.setattr(build, "build_distiller", with_spoiled_layer)
    with pytest.raises(NonFiniteLossError, match=r"at step 3 .*the first non-finite value is the output of layer "
                                                 r"'student.layer2.0.conv1' \(QConv2d\)") as e:
        fit(tiny(tmp_path / "nan", "train.checkpoint_every=2", "quant.precision=2W/8A"))
    assert e.value.step == 3 and e.value.checkpoint is not None


def test_the_first_step_reports_each_layers_activation_quantizer_and_what_it_clips(tmp_path, capsys):
    out = tmp_path / "acts"
    fit(tiny(out, "quant.precision=2W/8A"))
    layers = records(out, "activations")[0]["layers"]
    assert layers and all(r["quantizer"] == "clip" and r["zero_point"] == 0 and r["below"] == 0 for r in layers.values())
    assert "activation quantizers on the first batch: 0 of" in capsys.readouterr().err


def test_a_run_records_the_automatic_quantizer_choices_and_an_older_run_still_resumes(tmp_path, user_models):
    cfg = tiny(tmp_path / "run", "quant.precision=2W/8A")
    fit(cfg)
    stored = (tmp_path / "run" / "config.yaml").read_text()
    assert "per_channel: false" in stored  # a built-in ResNet: the paper's per-layer scale, written out
    # A run written before the choices were automatic: per_channel false, no act_quantizer key.
    (tmp_path / "run" / "config.yaml").write_text("\n".join(l for l in stored.splitlines() if "act_quantizer" not in l))
    (tmp_path / "run" / "summary.json").unlink()
    assert fit(cfg, resume=True)["final_top1"] >= 0  # compares equal: resumes
    fit(tiny(tmp_path / "own", "model.name=tinyvgg", "model.width=1.0", "model.args={channels: 4, hidden: 8}",
             "quant.precision=4W/8A"))
    own = load_config(str(tmp_path / "own" / "config.yaml")).quant
    assert own.per_channel is True and own.act_quantizer == "asym"
