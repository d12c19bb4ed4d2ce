"""LSQ (learned step size): golden values against NumPy, gradients at the clip edges, level counts,
step initialisation (weights at prepare, activations from the first training batch, all ranks alike),
and that a resume or reload never initialises a learned step again."""

from __future__ import annotations

import copy
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

from apprentice.errors import ApprenticeError
from apprentice.models import build_model
from apprentice.quant import (
    MIN_LEARNED_STEP,
    ActQuant,
    LayerPlan,
    WeightQuant,
    apply_plan,
    fake_quant_weight,
    lsq_activation,
    lsq_grad_scale,
    lsq_init_step,
    lsq_weight,
    parse_precision,
    prepare,
    quantized_layers,
    to_float,
    weight_codes,
)


def np_lsq(v: np.ndarray, s: np.ndarray, q_n: int, q_p: int, count: int, upstream: np.ndarray):
    """The paper's forward and gradients (eqs. 1-5), written out in NumPy: (v̂, ∂L/∂v, ∂L/∂s per element)."""
    r = v / s
    inside = (r >= -q_n) & (r <= q_p)
    codes = np.round(np.clip(r, -q_n, q_p))  # NumPy rounds half to even, as torch.round
    g = 1 / math.sqrt(count * q_p)
    ds = np.where(inside, codes - r, np.where(r < -q_n, -q_n, q_p)) * g
    return codes * s, upstream * inside, upstream * ds


# --- golden values against NumPy --------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("per_channel", [False, True])
def test_weights_match_numpy(bits, per_channel):
    gen = torch.Generator().manual_seed(bits)
    w = (torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64) * 0.3).requires_grad_()
    spec = WeightQuant("lsq", bits, per_channel)
    n = spec.levels
    shape = (4, 1, 1, 1) if per_channel else ()
    step = (torch.rand(shape, generator=gen, dtype=torch.float64) * 0.2 + 0.05).requires_grad_()
    up = torch.randn(w.shape, generator=gen, dtype=torch.float64)
    (fake_quant_weight(w, spec, step) * up).sum().backward()
    count = 27 if per_channel else w.numel()
    vhat, dv, ds = np_lsq(w.detach().numpy(), step.detach().numpy(), n, n, count, up.numpy())
    with torch.no_grad():
        assert np.array_equal(fake_quant_weight(w, spec, step).numpy(), vhat)
    np.testing.assert_allclose(w.grad.numpy(), dv, rtol=1e-12, atol=0)
    expected_ds = ds.reshape(4, -1).sum(1).reshape(shape) if per_channel else ds.sum()
    np.testing.assert_allclose(step.grad.numpy(), expected_ds, rtol=1e-10, atol=1e-14)
    codes, scale = weight_codes(w, spec, step)
    assert torch.equal(scale, step.detach()) and codes.abs().max() <= n
    assert np.array_equal((codes * scale).numpy(), vhat)


@pytest.mark.parametrize("bits", [2, 3, 8])
def test_activations_match_numpy(bits):
    gen = torch.Generator().manual_seed(bits)
    x = (torch.randn(5, 2, 3, 3, generator=gen, dtype=torch.float64) * 1.5).requires_grad_()
    step = torch.tensor(0.37 / bits, dtype=torch.float64, requires_grad=True)
    up = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    (lsq_activation(x, bits, step) * up).sum().backward()
    # N_F: the features of one sample (2·3·3), not the batch (Esser et al. 2020, sec. 2.2).
    vhat, dv, ds = np_lsq(x.detach().numpy(), step.item(), 0, 2**bits - 1, 18, up.numpy())
    with torch.no_grad():
        assert np.array_equal(lsq_activation(x, bits, step).numpy(), vhat)
    np.testing.assert_allclose(x.grad.numpy(), dv, rtol=1e-12, atol=0)
    assert step.grad.item() == pytest.approx(ds.sum(), rel=1e-10)


def test_docstring_example_by_hand():
    # 3-bit weights, s = 0.25: v/s = [-4, -1.2, 0, 0.8, 1.8, 8] -> codes [-3, -1, 0, 1, 2, 3];
    # ∂/∂s = g·(−3 + 0.2 + 0 + 0.2 + 0.2 + 3) = 0.6/√18.
    s = torch.tensor(0.25, requires_grad=True)
    v = torch.tensor([-1.0, -0.3, 0.0, 0.2, 0.45, 2.0])
    _, codes, scale = lsq_weight(v, WeightQuant("lsq", 3), s)
    assert codes.tolist() == [-3, -1, 0, 1, 2, 3] and scale.item() == 0.25
    fake_quant_weight(v, WeightQuant("lsq", 3), s).sum().backward()
    assert s.grad.item() == pytest.approx(0.6 / math.sqrt(18), rel=1e-6)
    assert lsq_grad_scale(6, 3) == pytest.approx(1 / math.sqrt(18))


# --- gradients at the clip edges ----------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 4])
def test_gradients_at_and_beyond_the_clip_edges(bits):
    n = 2 ** (bits - 1) - 1
    s = 0.5
    # v/s exactly at −Q_N and Q_P (inside: the range is closed), just beyond both, and far beyond.
    r = torch.tensor([-n - 3.0, -n - 0.25, -float(n), float(n), n + 0.25, n + 3.0], dtype=torch.float64)
    v = (r * s).requires_grad_()
    step = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    g = lsq_grad_scale(v.numel(), n)
    for i in range(v.numel()):  # one element at a time: each one's own gradient to s
        v.grad = step.grad = None
        fake_quant_weight(v, WeightQuant("lsq", bits), step)[i].backward()
        inside = 2 <= i <= 3
        assert v.grad[i].item() == (1.0 if inside else 0.0)
        expected = 0.0 if inside else (-n if r[i] < 0 else n)  # round(v/s) − v/s is 0 on the edge itself
        assert step.grad.item() == pytest.approx(expected * g, abs=1e-15)
    # Activations: unsigned, Q_N = 0, Q_P = 2^b − 1; below 0 the gradient to s is −Q_N = 0.
    q_p = 2**bits - 1
    x = torch.tensor([-1.0, 0.0, q_p * s, q_p * s + 0.1], dtype=torch.float64, requires_grad=True)
    step.grad = None
    for i, (dx, ds) in enumerate([(0.0, 0.0), (1.0, 0.0), (1.0, 0.0), (0.0, q_p)]):
        x.grad = step.grad = None
        lsq_activation(x, bits, step)[i].backward()
        assert x.grad[i].item() == dx
        assert step.grad.item() == pytest.approx(ds * lsq_grad_scale(4, q_p), abs=1e-15)


def test_floor_keeps_the_step_positive_and_lets_it_recover():
    w = torch.tensor([0.3, -0.2, 1e-7])
    for bad in (0.0, -0.5):
        step = torch.tensor(bad, requires_grad=True)
        out = fake_quant_weight(w, WeightQuant("lsq", 4), step)
        assert torch.isfinite(out).all()
        _, scale = weight_codes(w, WeightQuant("lsq", 4), step)
        assert scale.item() == pytest.approx(MIN_LEARNED_STEP)
        out.sum().backward()
        assert step.grad is not None and step.grad.item() != 0  # the gradient still reaches it


def test_step_needed_and_shaped():
    w = torch.randn(4, 3)
    with pytest.raises(ApprenticeError, match="learns its step"):
        weight_codes(w, WeightQuant("lsq", 4))
    with pytest.raises(ApprenticeError, match="needs \\[4, 1\\]"):
        weight_codes(w, WeightQuant("lsq", 4, per_channel=True), torch.tensor(0.1))
    with pytest.raises(ApprenticeError, match="no learned step"):
        weight_codes(w, WeightQuant("uniform", 4), torch.tensor(0.1))


# --- level counts per width ------------------------------------------------------------------------


@pytest.mark.parametrize("bits", range(2, 9))
def test_level_counts(bits):
    n, q_p = 2 ** (bits - 1) - 1, 2**bits - 1
    w = torch.linspace(-2, 2, 20_001)
    q = fake_quant_weight(w, WeightQuant("lsq", bits), torch.tensor(1.5 / n))
    assert len(q.unique()) == 2 * n + 1  # symmetric: −n..n, all reached (3 at 2 bits: ternary)
    assert q.max().item() == pytest.approx(1.5) and q.min().item() == pytest.approx(-1.5)
    a = lsq_activation(torch.linspace(-1, 3, 20_001), bits, torch.tensor(2.0 / q_p))
    assert len(a.unique()) == q_p + 1 and a.min() == 0 and a.max().item() == pytest.approx(2.0)


# --- initialisation and state ----------------------------------------------------------------------


def _lsq_model(bits: int = 4, per_channel: bool = False) -> tuple[nn.Module, dict[str, LayerPlan]]:
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10, in_channels=1)
    return model, prepare(model, weights=WeightQuant("lsq", bits, per_channel),
                          activations=ActQuant(bits, quantizer="lsq"))


@pytest.mark.parametrize("per_channel", [False, True])
def test_weight_step_starts_from_the_weights_at_prepare(per_channel):
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10, in_channels=1)
    with torch.no_grad():  # "pretrained" weights: the step must follow these, not an earlier init
        model.layer1[0].conv1.weight.mul_(3)
    w = model.layer1[0].conv1.weight.detach().clone()
    prepare(model, weights=WeightQuant("lsq", 3, per_channel), activations=ActQuant(8, quantizer="lsq"))
    layer = model.layer1[0].conv1
    rows = w.reshape(w.shape[0] if per_channel else 1, -1).abs().mean(1)
    expected = 2 * rows / math.sqrt(3)
    assert layer.weight_step.shape == ((w.shape[0], 1, 1, 1) if per_channel else ())
    assert torch.allclose(layer.weight_step.detach().reshape(-1), expected, rtol=1e-6)
    assert {"weight_step", "act_step"} <= {n for n, _ in layer.named_parameters()}


def test_activation_step_from_the_first_training_batch_only():
    model, _ = _lsq_model()
    layer = model.layer1[0].conv1
    seen = []
    layer.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, 1, 12, 12))  # evaluation does not initialise it
    assert not layer.act_step_initialized and layer.activation_step() is None
    assert quantized_layers(model)["layer1.0.conv1"].activations.step is None
    model.train()
    model(torch.randn(4, 1, 12, 12) * 3)
    first = seen[-1]
    assert bool(layer.act_step_initialized)
    assert layer.act_step.item() == pytest.approx(2 * first.abs().mean().item() / math.sqrt(15), rel=1e-5)
    kept = layer.act_step.item()
    model(torch.randn(4, 1, 12, 12) * 10)  # a second batch leaves it to the optimizer
    assert layer.act_step.item() == kept
    assert quantized_layers(model)["layer1.0.conv1"].activations.step == pytest.approx(kept)


def test_resume_and_reload_keep_learned_steps():
    model, plan = _lsq_model(3, per_channel=True)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 1, 12, 12)).logsumexp(1).sum().backward()
        opt.step()
    layer = model.layer2[0].conv1
    assert layer.weight_step.grad is not None and layer.act_step.grad is not None
    state = copy.deepcopy(model.state_dict())
    assert "layer2.0.conv1.act_step_initialized" in state and "layer2.0.conv1.weight_step" in state
    # As a checkpoint resumes: the plan from quantized_layers, applied to a fresh model, then the state.
    stored = {n: LayerPlan.from_dict(p.to_dict()) for n, p in quantized_layers(model).items()}
    fresh = build_model("resnet8", num_classes=10, in_channels=1)
    apply_plan(fresh, stored)
    fresh.load_state_dict(state)
    fresh.train()
    fresh(torch.randn(4, 1, 12, 12) * 50)  # a "first" batch after resume must not re-initialise
    for name in plan:
        a, b = model.get_submodule(name), fresh.get_submodule(name)
        assert torch.equal(a.act_step, b.act_step) and torch.equal(a.weight_step, b.weight_step)
    # A plan alone (no state dict) with the step as a number starts there and is never re-initialised.
    other = build_model("resnet8", num_classes=10, in_channels=1)
    apply_plan(other, stored)
    assert other.layer2[0].conv1.act_step.item() == pytest.approx(layer.act_step.item())
    other.train()
    other(torch.randn(4, 1, 12, 12) * 50)
    assert other.layer2[0].conv1.act_step.item() == pytest.approx(layer.act_step.item())


def test_to_float_drops_the_steps_and_eval_cache_follows_the_step():
    model, plan = _lsq_model()
    reference = {k: v.clone() for k, v in model.state_dict().items() if not k.rsplit(".", 1)[-1].startswith(("act_", "weight_step"))}
    layer = model.layer1[0].conv1
    model.eval()
    with torch.no_grad():
        w1 = layer.quantized_weight()
        layer.weight_step.mul_(2)  # an optimizer step on the step alone must invalidate the cache
        assert not torch.equal(layer.quantized_weight(), w1)
    assert sorted(to_float(model)) == sorted(plan)
    assert model.state_dict().keys() == reference.keys()


def test_ddp_initialises_activation_steps_identically_on_every_rank(tmp_path):
    import torch.multiprocessing as mp

    # a file rendezvous, not a free port picked then released (another process may take it first)
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["steps"].keys() == ranks[1]["steps"].keys() and len(ranks[0]["steps"]) > 3
    spread = 0.0
    for name, step in ranks[0]["steps"].items():
        assert torch.equal(step, ranks[1]["steps"][name])  # identical on both ranks
        alone = [r["alone"][name].item() for r in ranks]  # what each rank's own batch says
        assert step.item() == pytest.approx(sum(alone) / 2, rel=1e-6)  # their mean
        spread = max(spread, abs(alone[0] - alone[1]) / step.item())
    assert spread > 1e-4  # the ranks did see different inputs (BatchNorm keeps them alike in scale)


def _ddp_worker(rank: int, world: int, rendezvous: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        model, plan = _lsq_model()
        alone: dict[str, torch.Tensor] = {}
        def record(module: nn.Module, args: tuple) -> None:  # the init this rank's own input would give
            alone.setdefault(names[module], lsq_init_step(args[0].detach().float(), 15))

        names = {model.get_submodule(n): n for n in plan}
        for m in names:
            m.register_forward_pre_hook(record)
        ddp = nn.parallel.DistributedDataParallel(model.train())
        torch.manual_seed(100 + rank)  # each rank its own batch
        ddp(torch.randn(4, 1, 12, 12) * (1 + 2 * rank)).sum().backward()
        steps = {n: model.get_submodule(n).act_step.detach().clone() for n in plan}
        torch.save({"steps": steps, "alone": alone}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


# --- settings ------------------------------------------------------------------------------------


def test_settings_and_parse():
    w, a = parse_precision("3W/3A", quantizer="lsq")
    assert w == WeightQuant("lsq", 3) and a == ActQuant(3, quantizer="lsq")
    assert parse_precision("2W/8A", quantizer="lsq")[0].levels == 1  # ternary codes, learned scale
    assert parse_precision("4W/8A", quantizer="lsq", act_quantizer="clip")[1] == ActQuant(8)
    assert parse_precision("4W/32A", quantizer="lsq")[1] == ActQuant(32)  # "off" has one spelling
    assert parse_precision("4W/8A", act_quantizer="lsq")[1].learns_step
    assert ActQuant(4, quantizer="lsq", step=0.5).describe() == "4-bit LSQ (s=0.5)"
    for make, words in [(lambda: ActQuant(4, quantizer="lsq", learned=True), "learns a step"),
                        (lambda: ActQuant(4, 2.0, quantizer="lsq"), "learns a step"),
                        (lambda: ActQuant(4, quantizer="lsq", step=-1.0), "positive"),
                        (lambda: ActQuant(4, step=0.5), "LSQ's"),
                        (lambda: ActQuant(4, quantizer="pact"), "unknown activation quantizer 'pact'"),
                        (lambda: parse_precision("4W/8A", quantizer="lsq", learned=True), "learns a step")]:
        with pytest.raises(ApprenticeError, match=words):
            make()


def test_zero_point_activation_keeps_negative_values_and_learns_its_step_as_lsq():
    from apprentice.quant import calibrate_zero_point, zero_point_activation

    x = torch.tensor([-2.0, -0.3, 0.0, 0.6, 100.0])
    step = torch.tensor(0.25, requires_grad=True)
    y = zero_point_activation(x, 4, step, torch.tensor(4.0))  # codes 0..15, z = 4: range [-1, 2.75]
    assert y.tolist() == [-1.0, -0.25, 0.0, 0.5, 2.75]
    y.sum().backward()  # LSQ with Q_N = 4, Q_P = 11: g·(−4 + (−1 + 1.2) + 0 + (2 − 2.4) + 11), g = 1/√(5·15)
    assert step.grad.item() == pytest.approx((-4 + 0.2 + 0 - 0.4 + 11) / (5 * 15) ** 0.5, rel=1e-5)
    s, z = calibrate_zero_point(torch.tensor([-1.0, 0.5, 2.0]), 4)  # [-1, 2] over 15 levels
    assert s.item() == pytest.approx(0.2) and z.item() == 5
    assert calibrate_zero_point(torch.tensor([0.0, 0.5, 3.0]), 8)[1].item() == 0  # nothing negative: unsigned


@pytest.mark.parametrize("fields, words", [
    ({"quantizer": "asym", "step": 0.1}, "takes step and zero_point together"),
    ({"quantizer": "asym", "step": 0.1, "zero_point": 256}, "zero point must be an integer in 0..255"),
    ({"quantizer": "clip", "zero_point": 3}, "an activation zero point is the asym quantizer's"),
    ({"quantizer": "asym", "learned": True}, "learns a step, not a clip"),
])
def test_bad_asym_settings_are_refused(fields, words):
    from apprentice.quant import ActQuant

    with pytest.raises(ApprenticeError, match=words):
        ActQuant(8, **fields)
