"""Config checks (apprentice.config.checks.validate): value ranges, choices, combinations, per-layer
rules and a user's own model, each error naming its key. Loading and dumping: tests/config/test_config.py."""

from __future__ import annotations

import pytest

from apprentice.config import Config, load_config, validate
from apprentice.errors import ApprenticeError

from test_config import error


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.epochs=0", "train.epochs: must be > 0"),
        ("data.batch_size=0", "data.batch_size: must be > 0"),
        ("data.eval_batch_size=-1", "data.eval_batch_size: must be > 0"),
        ("optim.lr=0", "optim.lr: must be > 0"),
        ("optim.lr=.nan", "optim.lr: must be > 0"),
        ("optim.weight_decay=-1e-4", "optim.weight_decay: must be >= 0"),
        ("optim.momentum=1", "optim.momentum: must be in [0, 1)"),
        ("optim.lr_decay=0", "optim.lr_decay: must be in (0, 1]"),
        ("distill.alpha=-1", "distill.alpha: must be >= 0"),
        ("distill.gamma=-0.5", "distill.gamma: must be >= 0"),
        ("distill.temperature=0", "distill.temperature: must be > 0"),
        ("model.width=0", "model.width: must be > 0"),
        ("data.holdout=-1", "data.holdout: must be >= 0"),
        ("data.limit=0", "data.limit: must be > 0"),
        ("data.workers=-2", "data.workers: must be >= 0"),
        ("quant.act_clip=0", "quant.act_clip: must be > 0"),
        ("train.log_every=0", "train.log_every: must be > 0"),
        ("train.checkpoint_every=-1", "train.checkpoint_every: must be >= 0"),
        ("optim.milestones=[0.5, 1.5]", "optim.milestones[1]: must be a fraction"),
        ("optim.milestones=[0.75, 0.5]", "optim.milestones: must be strictly increasing"),
        ("optim.warmup_epochs=10", "optim.warmup_epochs: must be shorter than train.epochs=10"),
    ],
)
def test_ranges(override, key):
    assert key in error(None, [override])


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.name=resnet9", "model.name: unknown model 'resnet9'; choose from ["),
        ("data.name=svhn", "data.name: unknown data set 'svhn'; choose from ["),
        ("distill.scheme=D", "distill.scheme: unknown scheme 'D'; choose from ["),
        ("optim.name=lamb", "optim.name: unknown optimizer 'lamb'; choose from ['adamw', 'sgd']"),
        ("optim.schedule=poly", "optim.schedule: unknown schedule 'poly'"),
        ("optim.quant_domain=exp", "optim.quant_domain: unknown quantizer parameter domain 'exp'"),
        ("train.amp=fp8", "train.amp: unknown amp mode 'fp8'"),
        ("train.on_nonfinite=ignore", "train.on_nonfinite: unknown non-finite policy 'ignore'"),
        ("train.device=gpu", "train.device: unknown device 'gpu'"),
        ("model.shortcut=C", "model.shortcut: unknown shortcut 'C'"),
        ("quant.quantizer=apot", "quant.quantizer: unknown weight quantizer 'apot'"),
        ("quant.act_quantizer=signed", "quant.act_quantizer: unknown activation quantizer 'signed'; choose from ["),
        ("quant.precision=2X", "quant.precision='2X'"),
        ("quant.precision=1W/32A", "quant.precision='1W/32A'"),
    ],
)
def test_choices(override, expected):
    assert expected in error(None, [override])


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["distill.scheme=B"], "distill.teacher: scheme 'B' needs a trained teacher"),
        (["distill.scheme=C", "distill.teacher=t"], "distill.student_init: scheme 'C'"),
        (["distill.scheme=A"], "distill.teacher_model: scheme 'A' needs the teacher architecture"),
        (["distill.scheme=A", "distill.teacher_model.name=resnet56", "distill.teacher=t"], "distill.teacher:"),
        (["distill.teacher=runs/t"], "distill.teacher: scheme 'baseline' trains without a teacher"),
        (["distill.teacher_model.name=resnet56"], "distill.teacher_model: scheme 'baseline'"),
        (["distill.scheme=B", "distill.teacher=t", "distill.student_init=s"], "distill.student_init: only scheme C"),
        (["distill.scheme=B", "distill.teacher=t", "distill.teacher_grad_from_gamma=true"],
         "distill.teacher_grad_from_gamma"),
        (["distill.scheme=B", "distill.teacher=t", "distill.beta=0", "distill.gamma=0"], "distill.beta"),
        (["distill.scheme=B", "distill.teacher="], "distill.teacher: scheme 'B' needs"),
        (["distill.scheme=B", "distill.teacher=' '"], "distill.teacher: empty path"),
        (["distill.scheme=A", "distill.teacher_model.name=resnet18", "distill.teacher_model.shortcut=B"],
         "distill.teacher_model.shortcut: only CIFAR-style"),
        (["model.name=resnet18", "model.shortcut=A"], "model.shortcut: only CIFAR-style"),
        (["model.small_input=true"], "model.small_input: only ImageNet-style"),
        (["quant.learned_clip=true"], "quant.learned_clip: needs quantized activations"),
        (["quant.quantizer=uniform"], "quant.precision='32W/32A' with quant.quantizer='uniform'"),
        (["quant.precision=4W/32A", "quant.quantizer=ternary"], "with quant.quantizer='ternary'"),
        (["quant.exclude=['']"], "quant.exclude[0]: empty layer pattern"),
        (["quant.precision=2W/8A", "quant.deploy=int4"], "quant.deploy: unknown deploy mode 'int4'"),
        (["quant.precision=4W/4A", "quant.deploy=int8"], "quant.deploy: 'int8' runs uint8 activations"),
        (["quant.precision=2W/32A", "quant.deploy=int8"], "quant.deploy: 'int8' runs uint8 activations"),
        (["data.holdout=60000"], "data.holdout: holds out 60000 of only 60000 fashion_mnist training images"),
        (["data.name=imagenet", "data.limit=100"], "data.limit: not supported for imagenet"),
        (["data.name=imagenet", "data.holdout=100"], "data.holdout: not supported for imagenet"),
        (["train.out=''"], "train.out: empty path"),
        (["optim.momentum=0"], "optim.nesterov: Nesterov momentum needs optim.momentum > 0"),
    ],
)
def test_combinations(overrides, key):
    assert key in error(None, overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        ["distill.scheme=A", "distill.teacher_model.name=resnet56", "distill.teacher_grad_from_gamma=true"],
        ["distill.scheme=B", "distill.teacher=no/such/run"],  # existence is checked by fit, not here
        ["distill.scheme=C", "distill.teacher=no/such/run", "distill.student_init=no/such.pt"],
        ["quant.precision=4W/8A", "quant.learned_clip=true", "quant.per_channel=true"],
        ["quant.precision=2W/32A", "quant.quantizer=wrpn"],
        ["quant.precision=4W/8A", "quant.deploy=int8", "quant.quantizer=lsq"],
        ["model.name=resnet18", "model.small_input=true"],
        ["model.shortcut=B"],
        ["optim.momentum=0", "optim.nesterov=false"],  # plain SGD
        ["optim.name=adamw", "optim.momentum=0"],  # optim.nesterov is SGD's alone
        ["optim.name=adamw", "optim.lr=1e-3", "optim.schedule=onecycle", "optim.warmup_epochs=0.5"],
        ["distill.beta=0"],  # baseline weighs its label term beta+gamma
        ["data.limit=100", "data.holdout=5000"],  # the holdout comes out of the full set, then the limit
        ["data.limit=128", "data.holdout=200"],  # so a holdout larger than the limit is fine
    ],
)
def test_valid_combinations(overrides):
    load_config(None, overrides)


def test_validate_is_idempotent_on_defaults():
    validate(Config())


# ---------------------------------------------------------------------------------------------
# Per-layer precision (quant.layers)


@pytest.mark.parametrize("value, message", [
    ("{conv1: 9W/8A}", r"quant.layers: .*9"),
    ("{conv1: 8}", r"quant.layers: expected a mapping of strings to strings"),
    ("{}", r"quant.layers: an empty mapping"),
    ("[conv1]", r"quant.layers: expected a mapping of strings to strings"),
])
def test_bad_layer_rules_name_the_key(value, message):
    with pytest.raises(ApprenticeError, match=message):
        load_config(None, [f"quant.layers={value}"])


# ---------------------------------------------------------------------------------------------
# A model of the user's own (model.name registered, model.args)


@pytest.mark.parametrize("overrides, message", [
    (["model.args={depth: 3}"], r"model.args: model 'tinyvgg' takes no argument 'depth'"),
    (["model.args={num_classes: 3}"], r"model.args: 'num_classes' is not set here: the data set gives it"),
    (["model.args={width: 2.0}"], r"model.args: 'width' is not set here: use model.width"),
    (["model.args={channels: [1, 2]}"], r"model.args: expected a mapping of names to plain values"),
    (["model.args={channels: null}"], r"model.args: expected a mapping of names to plain values"),
    (["model.width=2.0"], r"model.width: model 'tinyvgg' takes no width argument"),
    (["model.shortcut=B"], r"model.shortcut: only CIFAR-style ResNets take shortcut"),
    (["model.small_input=true"], r"model.small_input: only ImageNet-style ResNets take small_input"),
])
def test_bad_user_model_settings_name_the_key(user_models, overrides, message):
    assert message in error(None, ["model.name=tinyvgg", *overrides]) or pytest.fail(
        error(None, ["model.name=tinyvgg", *overrides]))


def test_unregistered_model_name_says_how_to_register():
    assert "--import" in error(None, ["model.name=tinyvgg"])
