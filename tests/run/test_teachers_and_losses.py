"""Distillation inputs through recipes and the command line: teacher ensembles (`distill.teacher` as a
list of runs, live and through a cache, `apprentice cache-teacher RUN RUN ...`; the members' own checks
name their place in the list; a cache of another ensemble is refused before anything is written) and
the named losses of `distill.loss` (a gamma schedule follows the run's progress)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from apprentice.cli import main
from apprentice.config import load_config
from apprentice.errors import ApprenticeError
from apprentice.run.loop import fit

from tiny_runs import TINY, tiny

FP = ["quant.precision=32W/32A"]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ensemble")
    for seed in (0, 1):
        fit(tiny(root / f"t{seed}", *FP, f"train.seed={seed}"))
    return root / "t0", root / "t1"


def test_a_recipe_names_one_teacher_or_several():
    one = load_config(None, ["distill.scheme=B", "distill.teacher=runs/t"])
    two = load_config(None, ["distill.scheme=B", "distill.teacher=[runs/a, runs/b]", "distill.teacher_weights=[2, 1]"])
    assert one.distill.teacher == "runs/t" and two.distill.teacher == ("runs/a", "runs/b")
    assert two.distill.teacher_weights == (2.0, 1.0)


@pytest.mark.parametrize("overrides, message", [
    (["distill.teacher=[a, b]", "distill.teacher_weights=[1, 2, 3]"], "3 weights for 2 teachers"),
    (["distill.teacher=a", "distill.teacher_weights=[1]"], "two or more teachers"),
    (["distill.teacher=[a, b]", "distill.teacher_weights=[1, -1]"], r"teacher_weights\[1\]: must be a finite number > 0"),
    (["distill.teacher=[a, '']"], r"distill.teacher\[1\]: empty path"),
    (["distill.teacher=[]"], "expected a string or a list of strings"),
])
def test_bad_ensembles_in_a_recipe_are_one_line(overrides, message):
    with pytest.raises(ApprenticeError, match=message):
        load_config(None, ["distill.scheme=B", *overrides])


def test_a_student_distils_from_a_live_ensemble(tmp_path, teachers):
    out = tmp_path / "student"
    summary = fit(load_config(None, [*TINY, f"train.out={out}", "distill.scheme=B",
                                     f"distill.teacher=[{teachers[0]},{teachers[1]}]"]))
    assert summary["status"] == "finished"
    assert "- " + str(teachers[1]) in (out / "config.yaml").read_text()


def test_a_member_that_does_not_exist_is_named_by_its_place(tmp_path, teachers):
    with pytest.raises(ApprenticeError, match=r"distill.teacher\[1\]: .*nope.pt.* does not exist"):
        fit(load_config(None, [*TINY, f"train.out={tmp_path / 's'}", "distill.scheme=B",
                               f"distill.teacher=[{teachers[0]},{tmp_path / 'nope.pt'}]"]))
    assert not (tmp_path / "s").exists()


def test_an_ensemble_cache_serves_its_ensemble_and_refuses_another(tmp_path, teachers, capsys):
    cache = tmp_path / "ensemble.cache"
    assert main(["cache-teacher", str(teachers[0]), str(teachers[1]), "--weights", "3", "1", "--out", str(cache),
                 "--device", "cpu"]) == 0
    weighted = [f"distill.teacher=[{teachers[0]},{teachers[1]}]", "distill.teacher_weights=[3, 1]",
                f"distill.teacher_cache={cache}"]
    base = [*TINY, "distill.scheme=B"]
    assert fit(load_config(None, [*base, f"train.out={tmp_path / 'ok'}", *weighted]))["status"] == "finished"
    capsys.readouterr()
    other = tmp_path / "other"
    code = main(["train", str(Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"), *base,
                 f"train.out={other}", *weighted[:1], f"distill.teacher_cache={cache}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "teacher" in err[0] and "distill.teacher_cache" in err[0], err
    assert not other.exists() or not any((other / "checkpoints").glob("*.pt"))


@pytest.mark.parametrize("classes, channels, message", [(100, 1, "predicts 100 classes"),
                                                      (10, 3, "channels|size mismatch|shape")])
def test_a_member_of_other_classes_or_channels_is_named_by_its_place(tmp_path, teachers, classes, channels, message):
    from apprentice.models import build_model

    odd = tmp_path / "odd.pt"
    torch.save(build_model("resnet8", num_classes=classes, in_channels=channels, width=0.25).state_dict(), odd)
    with pytest.raises(ApprenticeError, match=r"distill.teacher\[1\]: .*(" + message + ")"):
        fit(load_config(None, [*TINY, f"train.out={tmp_path / 's'}", "distill.scheme=B",
                               f"distill.teacher=[{teachers[0]},{odd}]", "distill.teacher_model.name=resnet8",
                               "distill.teacher_model.width=0.25"]))
    assert not (tmp_path / "s").exists()


def test_a_named_loss_reaches_the_distiller_and_its_schedule_follows_the_run(tmp_path, teachers, monkeypatch):
    from apprentice.distill import Distiller

    seen: list[tuple[float, float, str]] = []
    real = Distiller.set_progress

    def spy(self, progress):
        real(self, progress)
        seen.append((progress, self.gamma, self.kd))

    monkeypatch.setattr(Distiller, "set_progress", spy)
    cfg = load_config(None, [*TINY, "train.epochs=2", f"train.out={tmp_path / 's'}", "distill.scheme=B",
                             f"distill.teacher={teachers[0]}", "distill.loss=gamma-decay"])
    assert fit(cfg)["status"] == "finished"
    steps = [p for p, _, _ in seen[1:]]  # the first call is the Distiller's own, at 0
    assert steps == [i / 8 for i in range(8)]  # 2 epochs x 4 steps
    assert [g for _, g, _ in seen[1:]] == pytest.approx([0.5 * (1 - i / 8) for i in range(8)])


def test_an_unknown_loss_name_is_one_line_and_writes_nothing(tmp_path, teachers, capsys):
    out = tmp_path / "s"
    code = main(["train", str(Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"), f"train.out={out}",
                 "distill.scheme=B", f"distill.teacher={teachers[0]}", "distill.loss=kl"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [err[0]] and "distill.loss: unknown loss 'kl'" in err[0]
    assert not out.exists()


def test_a_student_trains_on_a_k_view_cache_made_by_the_command_line(tmp_path, teachers, capsys):
    cache = tmp_path / "k.cache"
    assert main(["cache-teacher", str(teachers[0]), "--views", "3", "--out", str(cache), "--device", "cpu"]) == 0
    assert "3 views" in capsys.readouterr().err or cache.exists()
    cfg = load_config(None, [*TINY, f"train.out={tmp_path / 's'}", "distill.scheme=B", f"distill.teacher={teachers[0]}",
                             f"distill.teacher_cache={cache}"])
    assert fit(cfg)["status"] == "finished"


def test_a_full_precision_packed_export_teaches_alone_and_in_an_ensemble(tmp_path, teachers):
    packed = tmp_path / "t1.safetensors"
    assert main(["export", str(teachers[1]), "--format", "packed", "--out", str(packed)]) == 0
    for teacher in (str(packed), f"[{teachers[0]},{packed}]"):
        cfg = load_config(None, [*TINY, f"train.out={tmp_path / str(len(teacher))}", "distill.scheme=B",
                                 f"distill.teacher={teacher}"])
        assert fit(cfg)["status"] == "finished"
    quantized = tmp_path / "student.safetensors"  # a quantized student's export: its float weights are gone
    fit(tiny(tmp_path / "q", "quant.precision=2W/32A"))
    assert main(["export", str(tmp_path / "q"), "--format", "packed", "--out", str(quantized)]) == 0
    with pytest.raises(ApprenticeError, match="is a packed export"):
        fit(load_config(None, [*TINY, f"train.out={tmp_path / 'x'}", "distill.scheme=B", f"distill.teacher={quantized}"]))


def test_an_erased_view_cache_from_the_command_line_serves_students_of_its_erasing_only(tmp_path, teachers, capsys):
    cache = tmp_path / "erase.cache"
    assert main(["cache-teacher", str(teachers[0]), "data.erase=0.5", "--views", "3", "--out", str(cache),
                 "--device", "cpu"]) == 0
    student = [*TINY, "distill.scheme=B", f"distill.teacher={teachers[0]}", f"distill.teacher_cache={cache}"]
    assert fit(load_config(None, [*student, "data.erase=0.5", f"train.out={tmp_path / 's'}"]))["status"] == "finished"
    capsys.readouterr()
    code = main(["train", str(Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"), *student,
                 f"train.out={tmp_path / 'plain'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "random erasing (data.erase): file 0.5, here 0.0" in err[0], err
    assert err[0].endswith("Rebuild it with apprentice cache-teacher ... data.erase=0.0"), err
    assert not (tmp_path / "plain").exists() or not any((tmp_path / "plain" / "checkpoints").glob("*.pt"))


def test_cache_teacher_does_not_take_the_teachers_own_erasing_and_says_so(tmp_path, capsys):
    from apprentice.data.cache_file import MappedFile
    from apprentice.data.teacher_cache import CacheSource

    fit(tiny(tmp_path / "t", *FP, "data.erase=0.5"))
    capsys.readouterr()
    for given, erase in (([], 0.0), (["data.erase=0.25"], 0.25)):
        cache = tmp_path / f"{erase}.cache"
        assert main(["cache-teacher", str(tmp_path / "t"), *given, "--views", "2", "--out", str(cache),
                     "--device", "cpu"]) == 0
        assert CacheSource.from_json(MappedFile(cache).layout.metadata["source"]).erase == erase
        out, err = capsys.readouterr()
        assert ("the teacher trained with data.erase=0.5; this cache holds unerased views" in err) == (not given)
        assert out.strip().endswith(f"distill.teacher_cache={cache}" + (" data.erase=0.25" if given else ""))


def test_cache_teacher_on_a_cpu_keeps_freed_memory_and_forwards_cpu_sized_batches(teachers, tmp_path, monkeypatch):
    import json

    import apprentice.train
    from apprentice.data.cache_build import CACHE_BATCH
    from apprentice.data.cache_file import MappedFile

    kept = []
    monkeypatch.setattr(apprentice.train, "keep_freed_memory", lambda: kept.append(True) or True)
    for given, batch in (([], CACHE_BATCH["cpu"]), (["--batch-size", "7"], 7)):
        cache = tmp_path / f"{batch}.cache"
        assert main(["cache-teacher", str(teachers[0]), "--views", "2", *given, "--out", str(cache),
                     "--device", "cpu"]) == 0
        assert json.loads(MappedFile(cache).layout.metadata["build"])["batch_size"] == batch
    assert kept == [True, True]  # the glibc setting training uses: no page faults a forward
