"""Tests of training on your own images and of ``apprentice predict`` (apprentice.cli.predict): the facts a
folder run records and reuses, predictions of a run, a packed file and an ONNX file, unreadable
images, and commands that fail on bad data leaving no run folder behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from apprentice.cli import main
from apprentice.cli.predict import load_predictor, predict
from apprentice.data import Preprocess
from apprentice.run.build import data_spec, eval_data, preprocess_from_config
from apprentice.run.runs import load_run

from format_writers import write_image_folder

pytest.importorskip("PIL.Image")

TINY = ["model.name=resnet8", "model.width=0.25", "data.batch_size=8", "data.eval_batch_size=16", "data.workers=0",
        "train.epochs=1", "train.device=cpu", "optim.lr=0.05", "train.log_every=2"]


def _train(out: Path, folder: Path, *extra: str) -> int:
    return main(["train", str(Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"), *TINY,
                 "data.name=folder", "data.limit=null", f"data.dir={folder}", f"train.out={out}", *extra])


@pytest.fixture(scope="module")
def grey_run(tmp_path_factory) -> tuple[Path, Path]:
    """A finished run on a 3-class folder of 20x16 grey PNGs, classes named so that text order is wrong."""
    root = tmp_path_factory.mktemp("grey")
    folder = write_image_folder(root / "images", classes=("10", "2", "1"), counts=(("train", 8), ("val", 4)))
    assert _train(root / "run", folder) == 0
    return root / "run", folder


def test_a_folder_run_records_the_facts_it_computed_and_reuses_them(grey_run, capsys):
    run, folder = grey_run
    recorded = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert recorded["classes"] == ["1", "2", "10"] and (recorded["channels"], recorded["image_size"]) == (1, 16)
    assert recorded["tensor_cache"] is True and len(recorded["mean"]) == len(recorded["std"]) == 1
    cfg = load_run(run).config
    facts = data_spec(cfg).preprocess
    assert (facts.mean, facts.std, facts.classes) == (tuple(recorded["mean"]), tuple(recorded["std"]), ("1", "2", "10"))
    pre = preprocess_from_config(cfg, 3)
    assert (pre.mean, pre.std, pre.resize) == (facts.mean, facts.std, 16)
    assert main(["eval", str(run), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    # Images the run never saw change what a fresh computation would give, not what the run uses.
    extra = folder.parent / "more"
    shutil.copytree(folder, extra)
    for p in (extra / "train" / "1").iterdir():
        p.write_bytes((folder / "train" / "10" / p.name).read_bytes())
    assert data_spec(cfg, data_dir=str(extra)).preprocess.mean == facts.mean
    assert main(["eval", str(run), "--json", "--split", "val"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == first["top1"] and first["images"] == 12


def test_predict_gives_the_same_classes_for_a_run_a_packed_file_and_an_onnx_file(grey_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    run, folder = grey_run
    packed, onnx = tmp_path / "m.safetensors", tmp_path / "m.onnx"
    assert main(["export", str(run), "--format", "packed", "--out", str(packed)]) == 0
    assert main(["export", str(run), "--format", "onnx", "--out", str(onnx)]) == 0
    capsys.readouterr()
    answers = {}
    for model in (run, packed, onnx):
        assert main(["predict", str(model), str(folder / "val"), "--top-k", "3", "--json"]) == 0
        answers[model.suffix or "run"] = json.loads(capsys.readouterr().out)
    images = [p["image"] for p in answers["run"]["predictions"]]
    assert len(images) == 12 and images[0].endswith("val/1/0.png")  # a folder: its images, class folders in order
    assert [a["kind"] for a in answers.values()] == ["run", "packed", "onnx"]
    for other in (".safetensors", ".onnx"):
        for mine, theirs in zip(answers["run"]["predictions"], answers[other]["predictions"]):
            assert [t["class"] for t in mine["top"]] == [t["class"] for t in theirs["top"]]
            assert [t["probability"] for t in mine["top"]] == pytest.approx([t["probability"] for t in theirs["top"]],
                                                                             abs=1e-4)
    assert {t["class"] for t in answers["run"]["predictions"][0]["top"]} == {"1", "2", "10"}
    # The prediction of a validation image is the one evaluation counted: same decoding, same logits.
    loaded, predictor = load_run(run), load_predictor(str(packed))
    batch = next(iter(eval_data(loaded.config, "val")))[0]
    expected = loaded.model(batch[:1]).softmax(1).max().item()
    assert predict(predictor, [folder / "val" / "1" / "0.png"])[0].top[0][2] == pytest.approx(expected, abs=1e-5)


def test_predict_names_an_unreadable_image_and_predicts_the_others(grey_run, tmp_path, capsys):
    run, folder = grey_run
    bad, cut = tmp_path / "bad.png", tmp_path / "cut.png"
    bad.write_text("not an image")
    cut.write_bytes((folder / "val" / "2" / "1.png").read_bytes()[:70])
    good = folder / "val" / "2" / "0.png"
    assert main(["predict", str(run), str(bad), str(good), str(cut)]) == 2
    out, err = capsys.readouterr()
    assert out.strip().startswith(f"{good}: ") and len(out.strip().splitlines()) == 1 and "%" in out
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(ln.startswith("apprentice: error: cannot read image") for ln in lines)
    assert "bad.png" in lines[0] and "cut.png" in lines[1]
    # A path that does not exist is one of those images: named, and the others still predicted.
    assert main(["predict", str(run), str(tmp_path / "nope.png"), str(good)]) == 2
    out, err = capsys.readouterr()
    assert out.strip().startswith(f"{good}: ") and len(out.strip().splitlines()) == 1
    assert err.strip() == f"apprentice: error: cannot read image '{tmp_path / 'nope.png'}': it does not exist"


def test_an_rgb_folder_trains_with_a_given_normalisation_and_the_named_augmentation(tmp_path):
    folder = write_image_folder(tmp_path / "rgb", channels=3, counts=(("train", 8), ("val", 2), ("test", 2)))
    out = tmp_path / "run"
    assert _train(out, folder, "data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]", "data.image_size=12",
                  "data.augmentation=random-resized-crop", "data.flip=false") == 0
    cfg = load_run(out).config
    assert (cfg.data.channels, cfg.data.image_size, cfg.data.mean, cfg.data.tensor_cache) == (3, 12, (0.5,) * 3, False)
    assert preprocess_from_config(cfg, 2).resize == 14  # random-resized-crop: evaluated at 12 / 0.875
    assert load_run(out).model.conv1.weight.shape[1] == 3


def test_train_on_mismatched_classes_fails_naming_the_class_and_leaves_no_run_folder(tmp_path, capsys):
    folder = write_image_folder(tmp_path / "f", classes=("cat", "dog"), counts=(("train", 4), ("val", 2)))
    shutil.rmtree(folder / "val" / "dog")
    assert _train(tmp_path / "run", folder) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing 'dog'" in err and "val/" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("cached", [True, False])
def test_a_corrupt_image_stops_training_naming_the_file_and_leaves_no_run_folder(tmp_path, capsys, cached):
    # Cached: found while decoding, before the run starts. Streamed: found by the DataLoader in the
    # first epoch, after the run folder was made; it goes again, as no checkpoint was written.
    folder = write_image_folder(tmp_path / "f", counts=(("train", 8), ("val", 2)))
    (folder / "train" / "b" / "5.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    settings = [] if cached else ["data.tensor_cache=false", "data.mean=[0.5]", "data.std=[0.25]"]
    assert _train(tmp_path / "run", folder, *settings) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("apprentice: error: cannot read image") and "b/5.png" in err[-1]
    assert not (tmp_path / "run").exists()


def test_predict_refuses_an_export_without_preprocessing(grey_run, tmp_path, capsys):
    from apprentice.errors import ApprenticeError
    from apprentice.export import save_packed

    run, folder = grey_run
    bare = tmp_path / "bare.safetensors"
    save_packed(load_run(run).model, bare)  # by the API, without the metadata `apprentice export` writes
    assert main(["predict", str(bare), str(folder / "val" / "1" / "0.png")]) == 2
    assert "records neither its preprocessing nor its training config" in capsys.readouterr().err
    bad = Preprocess(1, 16, 16, (0.5,), (0.25,), ("a",)).to_metadata()
    bad["preprocess"]["std"] = [0.0]
    with pytest.raises(ApprenticeError, match="recorded preprocessing is inconsistent"):
        Preprocess.from_metadata(bad["preprocess"], bad["classes"], "x")
    with pytest.raises(ApprenticeError, match="malformed"):
        Preprocess.from_metadata({"channels": 1}, ["a"], "x")


def test_npz_arrays_train_from_the_command_line_and_record_their_classes(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    labels = np.arange(24) % 2
    images = (40 + 170 * labels[:, None, None] + rng.normal(0, 20, (24, 16, 16))).clip(0, 255).astype(np.uint8)
    (tmp_path / "arrays").mkdir()
    np.savez(tmp_path / "arrays" / "train.npz", images=images[:16], labels=labels[:16], classes=np.array(["dark", "light"]))
    np.savez(tmp_path / "arrays" / "test.npz", images=images[16:], labels=labels[16:])
    out = tmp_path / "run"
    assert main(["train", str(Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"), *TINY, "data.name=npz",
                 "data.limit=null", f"data.dir={tmp_path / 'arrays'}", f"train.out={out}"]) == 0
    cfg = load_run(out).config
    assert cfg.data.classes == ("dark", "light") and cfg.data.mean == pytest.approx(((images[:16] / 255).mean(),), abs=1e-4)
    Image.fromarray(images[17]).save(tmp_path / "light.png")
    capsys.readouterr()
    assert main(["predict", str(out), str(tmp_path / "light.png"), "--top-k", "2"]) == 0
    answer = capsys.readouterr().out
    assert answer.startswith(f"{tmp_path / 'light.png'}: ") and "dark" in answer and "light" in answer


def test_the_preprocessing_of_a_fashion_mnist_config_is_the_tables_even_from_an_old_config():
    from apprentice.config import load_config

    cfg = load_config(None, ["data.name=fashion_mnist"])
    old = cfg.__class__(**{**vars(cfg), "data": cfg.data.__class__(**{**vars(cfg.data), "image_size": 224})})
    for c in (cfg, old):  # configs written before data.image_size could be null say 224 for every data set
        p = preprocess_from_config(c, 10)
        assert (p.channels, p.image_size, p.resize, p.mean, p.classes[0]) == (1, 28, 28, (0.286,), "T-shirt/top")


def test_an_executorch_and_a_litert_export_evaluate_and_predict_as_the_run(grey_run, tmp_path, capsys):
    """A deployable run exported for phones: ``eval`` and ``predict`` run the shipped files in their runtimes,
    read the class names and preprocessing from the files' metadata, and answer as the run does."""
    pytest.importorskip("executorch")
    pytest.importorskip("litert_torch")
    _, folder = grey_run
    run = tmp_path / "deploy"
    assert _train(run, folder, "quant.deploy=int8") == 0
    files = {"executorch": tmp_path / "m.pte", "litert": tmp_path / "m.tflite"}
    for fmt, path in files.items():
        assert main(["export", str(run), "--format", fmt, "--out", str(path)]) == 0
    text = capsys.readouterr().out
    assert "int8 program: 6 of 6 quantized layers run as XNNPACK int8 kernels; float in XNNPACK: conv1, fc" in text
    assert "int8 model: 6 of 6 quantized layers run as int8 kernels; float kernels: none" in text
    assert "kernels: int8 6 CONV_2D, 3 ADD; float " in text
    results = {}
    for name, model in (("run", run), *files.items()):
        assert main(["eval", str(model), "--json", "--split", "val"]) == 0
        results[name] = json.loads(capsys.readouterr().out)
        assert main(["predict", str(model), str(folder / "val"), "--json"]) == 0
        results[name]["classes"] = [p["top"][0]["class"] for p in json.loads(capsys.readouterr().out)["predictions"]]
    assert results["executorch"]["kind"] == "executorch" and results["litert"]["kind"] == "litert"
    for fmt in files:
        assert results[fmt]["images"] == 12 and results[fmt]["top1"] == results["run"]["top1"]
        assert results[fmt]["classes"] == results["run"]["classes"]
    # A shipped file is not a run: export, info and a teacher refuse it by name.
    assert main(["export", str(files["litert"]), "--format", "onnx", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "is a LiteRT export (apprentice export --format litert)" in capsys.readouterr().err
