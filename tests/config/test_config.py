"""Config schema: defaults < YAML < overrides, every error names its key, every shipped config loads.
The checks of values and combinations (config_checks.validate): tests/config/test_config_checks.py."""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from pathlib import Path

import pytest

from apprentice.config import (
    Config,
    DistillConfig,
    ModelConfig,
    config_from_dict,
    config_to_dict,
    diff_configs,
    dump_yaml,
    help_text,
    load_config,
    parse_override,
)
from apprentice.errors import ApprenticeError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "configs").rglob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error(*args, **kwargs) -> str:
    with pytest.raises(ApprenticeError) as e:
        load_config(*args, **kwargs)
    message = str(e.value)
    assert "\n" not in message
    return message


# -- defaults and precedence ------------------------------------------------------------------


def test_defaults_match_contract():
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.model.name == "resnet20" and cfg.quant.precision == "32W/32A"
    assert cfg.distill == DistillConfig(scheme="baseline", alpha=1.0, beta=0.5, gamma=0.5, temperature=1.0)
    assert cfg.optim.milestones == (0.5, 0.75) and cfg.data.batch_size == 128
    assert cfg.train.epochs == 10 and cfg.train.out == "runs/run"


@pytest.mark.parametrize("code", [
    "import apprentice.config",
    "import apprentice.config as c; c.parse_override('optim.lr=0.5'); c.help_text()",
    "from apprentice.cli import main; main(['--help'])",
    "from apprentice.cli import main; main(['train', '--help'])",
])
def test_the_config_and_the_help_import_no_torch(code):
    # In a fresh interpreter: the public names of `apprentice` load on first use, the config tree
    # needs PyYAML alone, and the parser builds only the subcommand it is asked for.
    import subprocess
    import sys

    probe = f"import sys\ntry:\n    {code}\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "False"


def test_the_probe_would_see_torch():
    import subprocess
    import sys

    probe = "import sys, apprentice\napprentice.Distiller\nprint('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "True"


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().optim.lr = 1.0  # type: ignore[misc]


def test_yaml_then_overrides(tmp_path):
    path = write(tmp_path, """
        model: {name: resnet8, width: 0.5}
        optim:
          lr: 0.2
          weight_decay: 5e-4     # YAML 1.2 float without a dot
          milestones: [0.3, 0.6, 0.9]
        data:
          limit: 100
    """)
    cfg = load_config(path, ["optim.lr=0.05", "data.limit=null", "quant.exclude=[conv1, fc]"])
    assert cfg.model == ModelConfig(name="resnet8", width=0.5)
    assert cfg.optim.lr == 0.05  # override beats file
    assert cfg.optim.weight_decay == 5e-4 and isinstance(cfg.optim.weight_decay, float)
    assert cfg.optim.milestones == (0.3, 0.6, 0.9)
    assert cfg.data.limit is None
    assert cfg.quant.exclude == ("conv1", "fc")
    assert cfg.optim.momentum == 0.9  # default kept


def test_int_accepted_for_float_and_later_override_wins():
    cfg = load_config(None, ["optim.lr=1", "optim.lr=0.5", "model.width=2"])
    assert cfg.optim.lr == 0.5 and cfg.model.width == 2.0 and isinstance(cfg.model.width, float)


def test_nested_optional_dataclass():
    cfg = load_config(None, ["distill.scheme=A", "distill.teacher_model.name=resnet56"])
    assert cfg.distill.teacher_model == ModelConfig(name="resnet56")
    cfg = load_config(None, ["distill.scheme=A", "distill.teacher_model={name: resnet32, width: 2}"])
    assert cfg.distill.teacher_model == ModelConfig(name="resnet32", width=2.0)


def test_override_into_null_section_from_file(tmp_path):
    path = write(tmp_path, "distill: {scheme: A, teacher_model: null}\n")
    cfg = load_config(path, ["distill.teacher_model.name=resnet44"])
    assert cfg.distill.teacher_model.name == "resnet44"


@pytest.mark.parametrize("text", ["", "# model:\n#   name: resnet8\n", "{}\n", "null\n", "---\n",
                                  "optim:\n  # lr: 0.3\n", "model:\noptim: {}\n"])
def test_a_recipe_that_sets_nothing_is_refused(tmp_path, text):
    """An empty, comment-only or all-empty-sections recipe would train every default silently."""
    message = error(write(tmp_path, text))
    assert message.startswith(f"{tmp_path / 'cfg.yaml'}: the recipe sets nothing")


def test_an_empty_section_beside_a_setting_is_the_defaults(tmp_path):
    assert load_config(write(tmp_path, "model: {name: resnet8}\noptim:\n  # lr: 0.3\n")) == Config(
        model=ModelConfig(name="resnet8"))


def test_parse_override():
    assert parse_override("quant.exclude=[conv1,fc]") == (["quant", "exclude"], ["conv1", "fc"])
    assert parse_override("data.limit=null") == (["data", "limit"], None)
    assert parse_override("train.out=a=b") == (["train", "out"], "a=b")  # split at the first '='


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, key",
    [
        ("lrr=1", "'lrr'"),
        ("optim.lrr=1", "'optim.lrr'"),
        ("distill.teacher_model.nam=resnet8", "'distill.teacher_model.nam'"),
    ],
)
def test_unknown_key_in_override(override, key):
    message = error(None, [override])
    assert f"unknown key {key}" in message and "allowed:" in message and override in message


@pytest.mark.parametrize(
    "text, key, allowed",
    [
        ("foo: 1\n", "'foo'", "model, quant, distill"),
        ("optim: {lrr: 0.1}\n", "'optim.lrr'", "name, lr, momentum"),
        ("distill: {scheme: A, teacher_model: {nme: resnet8}}\n", "'distill.teacher_model.nme'", "name, width"),
    ],
)
def test_unknown_key_in_file(tmp_path, text, key, allowed):
    path = write(tmp_path, text)
    message = error(path)
    assert message.startswith(str(path)) and f"unknown key {key}; allowed: {allowed}" in message


@pytest.mark.parametrize(
    "override, expected",
    [
        ("optim.lr=abc", "optim.lr: expected a float, got 'abc'"),
        ("optim.lr=true", "optim.lr: expected a float, got true"),
        ("train.epochs=1.5", "train.epochs: expected an integer, got 1.5"),
        ("train.epochs=null", "train.epochs: expected an integer, got null"),
        ("model.name=5", "model.name: expected a string, got 5"),
        ("data.limit=ten", "data.limit: expected an integer or null, got 'ten'"),
        ("quant.exclude=conv1", "quant.exclude: expected a list of strings or null, got 'conv1'"),
        ("quant.exclude=[conv1, 3]", "quant.exclude[1]: expected a string, got 3"),
        ("optim.milestones=[0.5, x]", "optim.milestones[1]: expected a float, got 'x'"),
        ("optim=3", "optim: expected a mapping of keys, got 3"),
    ],
)
def test_wrong_types(override, expected):
    assert expected in error(None, [override])


@pytest.mark.parametrize("value", ["1", "0", "yes", "no", "on", "off", "'true'", "y"])
def test_bool_only_true_false(value):
    message = error(None, [f"data.augment={value}"])
    assert "data.augment: expected true or false" in message


@pytest.mark.parametrize("value, expected", [("true", True), ("false", False), ("True", True), ("FALSE", False)])
def test_bool_accepted(value, expected):
    assert load_config(None, [f"data.augment={value}"]).data.augment is expected


def test_wrong_type_in_file_names_file_and_key(tmp_path):
    path = write(tmp_path, "optim:\n  nesterov: yes\n")
    message = error(path)
    assert message == f"{path}: optim.nesterov: expected true or false, got 'yes'"


def test_yaml_tag_refused_with_line(tmp_path):
    path = write(tmp_path, "optim:\n  lr: !!python/object/apply:os.system [echo hacked]\n")
    message = error(path)
    assert message.startswith(f"{path}:2: YAML tag !!python/object/apply:os.system is not allowed")


def test_yaml_tag_refused_in_override():
    assert "YAML tag !!python/name:os.system is not allowed" in error(None, ["optim.lr=!!python/name:os.system ''"])


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "optim:\n  lr: 0.1\n  milestones: [0.5\n")
    assert error(path).startswith(f"{path}:4: invalid YAML:")


def test_duplicate_key_refused(tmp_path):
    path = write(tmp_path, "optim:\n  lr: 0.1\n  lr: 0.2\n")
    assert error(path) == f"{path}:3: invalid YAML: duplicate key 'lr'"


def test_top_level_must_be_mapping(tmp_path):
    assert "expected a mapping of sections" in error(write(tmp_path, "- 1\n- 2\n"))


def test_missing_file():
    assert "cannot read config file 'no/such.yaml'" in error("no/such.yaml")
    assert "the first argument is the YAML recipe" not in error("no/such.yaml")


def test_an_override_given_as_the_recipe_says_where_the_recipe_goes():
    assert error("train.epochs=1", ["optim.lr=0.1"]) == (
        "cannot read config file 'train.epochs=1': No such file or directory; the first argument is the YAML "
        "recipe, key=value overrides come after it")


@pytest.mark.parametrize("bad", ["optim.lr", "=3", "optim..lr=1", "optim.lr 0.1", "1x.y=2"])
def test_bad_override_syntax(bad):
    message = error(None, [bad])
    assert f"bad override {bad!r}" in message and "section.key=value" in message


def test_override_into_a_value():
    assert "'optim.lr' is a value, not a section" in error(None, ["optim.lr.x=1"])


# -- dicts, diffs, help ---------------------------------------------------------------------


def test_round_trip_dict_and_yaml(tmp_path):
    cfg = load_config(None, ["distill.scheme=A", "distill.teacher_model.name=resnet56",
                             "quant.exclude=[conv1]", "optim.milestones=[0.3, 0.6]"])
    d = config_to_dict(cfg)
    assert d["quant"]["exclude"] == ["conv1"] and d["optim"]["milestones"] == [0.3, 0.6]
    assert isinstance(d["distill"]["teacher_model"], dict)
    assert config_from_dict(d) == cfg
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_config(path) == cfg
    import json

    assert config_from_dict(json.loads(json.dumps(d))) == cfg


def test_config_from_dict_partial_and_errors():
    assert config_from_dict({"optim": {"lr": 0.3}}).optim.lr == 0.3
    with pytest.raises(ApprenticeError, match="unknown key 'optim.lrr'"):
        config_from_dict({"optim": {"lrr": 0.3}})
    with pytest.raises(ApprenticeError, match="model.name"):
        config_from_dict({"model": {"name": "nope"}})
    assert config_from_dict({"model": {"name": "nope"}}, check=False).model.name == "nope"


def test_diff_configs():
    a = Config()
    b = load_config(None, ["optim.lr=0.05", "distill.scheme=A", "distill.teacher_model.name=resnet56",
                           "quant.exclude=[conv1]"])
    diff = diff_configs(a, b)
    assert "optim.lr: 0.1 -> 0.05" in diff
    assert "distill.scheme: 'baseline' -> 'A'" in diff
    assert "quant.exclude: null -> ['conv1']" in diff
    assert any(d.startswith("distill.teacher_model: null -> {name: 'resnet56'") for d in diff)
    assert diff_configs(a, b, values=False) == ["quant.exclude", "distill.scheme", "distill.teacher_model", "optim.lr"]
    c = load_config(None, ["distill.scheme=A", "distill.teacher_model.name=resnet44"])
    assert diff_configs(c, load_config(None, ["distill.scheme=A", "distill.teacher_model.name=resnet56"])) == [
        "distill.teacher_model.name: 'resnet44' -> 'resnet56'"
    ]
    assert diff_configs(a, Config()) == []


def _leaf_keys(cls: type = Config, prefix: str = "") -> list[str]:
    import typing

    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        keys.append(key)
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        if dataclasses.is_dataclass(inner[0]):
            keys += _leaf_keys(inner[0], key + ".")
    return keys


def test_every_field_has_help_and_help_text_lists_it():
    text = help_text()
    for key in _leaf_keys():
        assert key in text, key
    for cls in (Config, *(f.type for f in dataclasses.fields(Config))):
        cls = cls if isinstance(cls, type) else getattr(sys.modules["apprentice.config"], cls)
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
    assert "optim.lr: float = 0.1" in text and "data.limit: integer or null = null" in text


# -- shipped configs --------------------------------------------------------------------------


def test_configs_are_shipped():
    names = {p.relative_to(ROOT / "configs").as_posix() for p in SHIPPED}
    for required in ("smoke.yaml", "fashion_mnist/teacher.yaml", "fashion_mnist/student_baseline.yaml",
                     "fashion_mnist/student_a.yaml", "fashion_mnist/student_b.yaml", "fashion_mnist/student_c.yaml",
                     "imagenet/resnet18_2w32a_baseline.yaml", "imagenet/resnet18_2w32a_b_resnet50.yaml",
                     "imagenet/resnet50_fp.yaml", "cifar10/resnet56_fp.yaml"):
        assert required in names, required


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(ROOT / "configs").as_posix())
def test_shipped_config_loads(path):
    cfg = load_config(path)
    assert config_from_dict(config_to_dict(cfg)) == cfg
    # Recipes name their run folder after themselves, so two recipes never share one.
    assert cfg.train.out.startswith("runs/")
    if path.parent.name == "imagenet" and cfg.distill.scheme != "C":
        assert (cfg.optim.lr, cfg.data.batch_size, cfg.train.epochs) == (0.1, 256, 90)
    if path.parent.name == "cifar10" and cfg.distill.scheme != "C":
        assert (cfg.optim.lr, cfg.data.batch_size, cfg.train.epochs) == (0.1, 128, 160)


def test_shipped_run_folders_are_unique():
    outs = [load_config(p).train.out for p in SHIPPED]
    assert len(outs) == len(set(outs))


def test_shipped_filenames_match_contents():
    for path in SHIPPED:
        cfg = load_config(path)
        parts = path.stem.split("_")
        if path.parent.name in ("imagenet", "cifar10"):
            assert parts[0] == cfg.model.name, path
            if parts[1] == "fp":
                assert cfg.quant.precision == "32W/32A"
                continue
            if "w" not in parts[1]:  # model_QUANTIZER_precision_...: the weight quantizer is named
                assert cfg.quant.quantizer == parts.pop(1), path
            w, a = parts[1].upper().split("W")
            assert cfg.quant.precision == f"{w}W/{a}", path
            scheme = "baseline" if parts[2] == "baseline" else parts[2].upper()
            assert cfg.distill.scheme == scheme, path
            if scheme == "A":
                assert cfg.distill.teacher_model.name == parts[3]
            elif scheme in ("B", "C"):
                assert cfg.distill.teacher.endswith(f"/{parts[3]}_fp"), path


# ---------------------------------------------------------------------------------------------
# Per-layer precision (quant.layers)


def test_layers_keep_their_order_through_yaml_overrides_and_the_stored_config(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("quant:\n  precision: 2W/8A\n  layers:\n    conv1: 8W/32A\n    'layer3.*': 4W/8A\n    '*': 2W/8A\n")
    cfg = load_config(f)
    assert cfg.quant.layers == (("conv1", "8W/32A"), ("layer3.*", "4W/8A"), ("*", "2W/8A"))
    assert load_config(None, ["quant.layers={'*': 4W/4A, conv1: 8W/32A}"]).quant.layers == (
        ("*", "4W/4A"), ("conv1", "8W/32A"))
    assert config_from_dict(config_to_dict(cfg)) == cfg  # stored as ordered pairs, read back equal
    assert "- - conv1" in dump_yaml(cfg)  # the dumped recipe lists the pairs in order


# ---------------------------------------------------------------------------------------------
# A model of the user's own (model.name registered, model.args)


def test_user_model_and_its_arguments_round_trip(tmp_path, user_models):
    f = write(tmp_path, """\
        model:
          name: tinyvgg
          args: {hidden: 64, channels: 8}
        """)
    cfg = load_config(f, ["distill.scheme=A", "distill.teacher_model.name=sepnet",
                          "distill.teacher_model.args={channels: 4}"])
    assert cfg.model.args == (("hidden", 64), ("channels", 8))
    assert cfg.distill.teacher_model.args == (("channels", 4),)
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert load_config(write(tmp_path, dump_yaml(cfg), "again.yaml")) == cfg
