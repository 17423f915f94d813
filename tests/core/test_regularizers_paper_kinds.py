"""The model-level regularizers (EWA, penalties, max-norm, augmentation), CliffReLU/AutoReLU."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from raytune_periodic.errors import ConfigError
from raytune_periodic.regularizers import (
    REGULARIZERS,
    AdaptivePenalty,
    Augment,
    AutoReLU,
    CliffReLU,
    L1Penalty,
    L2Penalty,
    MaxNorm,
    Placement,
    SignFlip,
    WeightEWA,
    apply_augmentation,
    insert_regularizers,
)
from raytune_periodic.training import build_engine as _build_engine
from raytune_periodic.training.spec import load_data, parse_run_spec

SPEC = {
    "dataset": {"name": "digits", "train_size": 120},
    "model": {"name": "mlp", "hidden": [16]},
    "train": {"period_length": 3, "periods": 2, "batch_size": 32, "seed": 1, "val_batches": 1},
}


_DATA: dict[str, object] = {}


def build_engine(spec: dict):
    """``build_engine`` with the digits splits loaded once per module."""
    name = spec["dataset"]["name"]
    if name not in _DATA:
        _DATA[name] = load_data(parse_run_spec(spec))
    return _build_engine(spec, data=_DATA[name])


def _spec(*placements: dict) -> dict:
    return {**SPEC, "regularizers": list(placements)}


def _params(engine) -> list[torch.Tensor]:
    return [p.detach().clone() for p in engine.model.parameters()]


# ----------------------------------------------------------------------------- EWA (PFREWA)
def test_ewa_update_formula_on_known_tensors() -> None:
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0]]))  # W_pre(t)
    ewa = WeightEWA(0.9)
    ewa.period_start(layer)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 6.0]]))  # W_post(t)
    ewa.period_end(layer)
    # W_pre(t+1) = 0.9 * [3, 6] + 0.1 * [1, 2]
    torch.testing.assert_close(layer.weight.data, torch.tensor([[2.8, 5.6]]))
    ewa.set_value(1.0)  # α = 1: no averaging
    ewa.period_start(layer)
    with torch.no_grad():
        layer.weight.add_(1.0)
    ewa.period_end(layer)
    torch.testing.assert_close(layer.weight.data, torch.tensor([[3.8, 6.6]]))


def test_ewa_in_the_engine() -> None:
    # α = 0 restores each period's starting weights: training never moves them
    frozen = build_engine(_spec({"kind": "ewa", "where": "model", "value": 0.0}))
    start = _params(frozen)
    frozen.step_period()
    for a, b in zip(start, _params(frozen), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # α = 1 is bit-for-bit the run without EWA
    plain, ewa1 = (
        build_engine(SPEC),
        build_engine(_spec({"kind": "ewa", "where": "model", "value": 1.0})),
    )
    plain.step_period(), ewa1.step_period()
    for a, b in zip(_params(plain), _params(ewa1), strict=True):
        assert torch.equal(a, b)
    # α = 0.9: after one period the weights are 0.9·W_post + 0.1·W_pre
    probe = build_engine(_spec({"kind": "ewa", "where": "model", "value": 0.9}))
    pre = _params(probe)
    ref = build_engine(_spec({"kind": "ewa", "where": "model", "value": 1.0}))
    ref.step_period(), probe.step_period()
    for w_pre, w_post, got in zip(pre, _params(ref), _params(probe), strict=True):
        torch.testing.assert_close(got, 0.9 * w_post + 0.1 * w_pre)
    assert probe.last.values == {"ewa": 0.9}


# ----------------------------------------------------------------------------- CliffReLU / AutoReLU
def test_cliff_relu_zero_above_constant_identity_inside() -> None:
    x = torch.tensor([-2.0, -0.1, 0.0, 0.5, 1.9, 2.0, 2.1, 50.0])
    y = CliffReLU(2.0)(x)
    torch.testing.assert_close(y, torch.tensor([0.0, 0.0, 0.0, 0.5, 1.9, 0.0, 0.0, 0.0]))
    assert torch.equal(CliffReLU(0.0)(x), torch.relu(x))  # value 0: no cliff (plain ReLU)
    assert torch.equal(CliffReLU(float("inf"))(x), torch.relu(x))


def test_auto_relu_positive_w_is_cliff_negative_w_is_the_sign_flip() -> None:
    x = torch.linspace(-5, 5, 101)
    auto = AutoReLU(2.0, init=0.5)
    # w > 0: CliffReLU(x·w)/w — identity on 0 < x < Constant/w = 4
    torch.testing.assert_close(auto(x), torch.where((x > 0) & (x < 4), x, torch.zeros_like(x)))
    assert not auto.noisy
    with torch.no_grad():
        auto.w.fill_(-0.5)
    assert auto.noisy
    # w < 0: ReLU(−x) cliffed at 4 — the sign flip after BN followed by ReLU
    flipped = torch.relu(SignFlip(1.0)(x))
    torch.testing.assert_close(auto(x), torch.where(flipped < 4, flipped, torch.zeros_like(x)))


def test_auto_relu_w_moves_only_by_weight_decay_and_crosses_zero() -> None:
    torch.manual_seed(0)
    auto = AutoReLU(0.0, init=0.05)
    x = torch.randn(64, 8)
    auto(x).sum().backward()
    assert auto.w.grad is not None and auto.w.grad.item() == 0.0  # no gradient from the loss
    opt = torch.optim.Adam(auto.parameters(), lr=0.01, weight_decay=1e-4)
    signs = []
    for _ in range(12):
        opt.zero_grad()
        auto(x).sum().backward()
        opt.step()
        signs.append(auto.noisy)
    assert signs[0] is False and any(signs)  # decays to 0 and flips to negative


def test_auto_relu_resets_after_a_flip_so_the_sign_holds_and_the_cycle_repeats() -> None:
    """Steps 1–3: w decays to 0 and flips; restarted at ±init the sign holds for a stretch and
    flips back ("and vice versa"). Adam moves a w with only weight decay by about lr per step
    toward 0; here that drift is applied by hand (0.01 per step), so the test is exact."""
    x = torch.randn(4, 3)

    def sign_changes(reset: bool, steps: int = 200) -> list[int]:
        auto = AutoReLU(0.0, init=0.5, reset_after_flip=reset).train()
        signs = []
        for _ in range(steps):
            auto(x)  # a training forward: where the reset happens
            with torch.no_grad():
                auto.w.sub_(0.01 * torch.sign(auto.w))  # the optimizer's step toward 0
            signs.append(auto.noisy)
        return [i for i in range(1, steps) if signs[i] != signs[i - 1]]

    with_reset, drift = sign_changes(True), sign_changes(False)
    assert len(with_reset) == 3  # the sign holds ~50 steps (init / drift), then flips back
    assert all(b - a > 45 for a, b in zip([0, *with_reset], with_reset, strict=False))
    assert len(drift) > 100  # without the reset it hovers at 0, flipping at every step
    auto = AutoReLU(0.0, init=0.5)
    with torch.no_grad():
        auto.w.fill_(-1e-6)  # the optimizer just moved w across 0
    auto.train()(x)
    assert auto.w.item() == -0.5 and auto.noisy  # restarted at −init before the forward
    assert "last_sign" in auto.state_dict()  # part of an exact restore
    auto.eval()(x)
    assert auto.last_sign.item() == -1.0  # evaluations never reset


def test_auto_relu_in_eval_keeps_its_sign_unless_told_not_to() -> None:
    x = torch.linspace(-2, 2, 9)
    on, off = AutoReLU(0.0), AutoReLU(0.0, apply_in_eval=False)
    for auto in (on, off):
        with torch.no_grad():
            auto.w.fill_(-0.5)
    assert torch.equal(on.eval()(x), torch.relu(-x)) and on.eval_state() == 1.0
    assert torch.equal(off.eval()(x), torch.relu(x)) and off.eval_state() == 0.0
    assert torch.equal(off.train()(x), torch.relu(-x))  # training still sees the noise


# ----------------------------------------------------------------------------- penalties
def _two_by_two() -> nn.Linear:
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 0.0]]))
        layer.bias.fill_(5.0)
    return layer


@pytest.mark.parametrize(
    ("reg", "value", "grad"),
    [
        (L1Penalty(0.1), 0.1 * 6, 0.1 * torch.tensor([[1.0, -1.0], [1.0, 0.0]])),
        (L2Penalty(0.1), 0.1 * 14, 0.2 * torch.tensor([[1.0, -2.0], [3.0, 0.0]])),
        # Σ w²/(1+w²) = 1/2 + 4/5 + 9/10 + 0; d/dw = 2w/(1+w²)²
        (AdaptivePenalty(0.1, w0=1.0), 0.1 * 2.2, 0.1 * torch.tensor([[0.5, -0.16], [0.06, 0.0]])),
    ],
)
def test_penalty_values_and_gradients(reg, value, grad) -> None:
    layer = _two_by_two()
    loss = reg.penalty(layer)
    assert loss.item() == pytest.approx(value)
    loss.backward()
    torch.testing.assert_close(layer.weight.grad, grad)
    assert layer.bias.grad is None  # biases are not penalised
    layer.eval()
    assert reg.penalty(layer).item() == 0.0  # training loss only
    layer.train()
    reg.set_value(0.0)
    assert reg.penalty(layer).item() == 0.0


def test_adaptive_penalty_w0_and_classifier_exclusion() -> None:
    layer = _two_by_two()
    assert AdaptivePenalty(1.0, w0=2.0).penalty(layer).item() == pytest.approx(
        1 / 5 + 4 / 8 + 9 / 13
    )
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    full = L1Penalty(1.0).penalty(net).item()
    body = L1Penalty(1.0, include_classifier=False).penalty(net).item()
    assert body == pytest.approx(net[0].weight.abs().sum().item())
    assert full == pytest.approx(body + net[2].weight.abs().sum().item())


def test_max_norm_clamps_each_unit() -> None:
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 4.0], [0.6, 0.8]]))  # norms 5 and 1
    MaxNorm(2.0).after_step(layer)
    torch.testing.assert_close(layer.weight.data, torch.tensor([[1.2, 1.6], [0.6, 0.8]]))
    conv = nn.Conv2d(1, 3, 3)
    with torch.no_grad():
        conv.weight.mul_(100)
    MaxNorm(0.5).after_step(conv)
    norms = conv.weight.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full((3,), 0.5))
    before = conv.weight.detach().clone()
    MaxNorm(0.0).after_step(conv)  # 0: off
    assert torch.equal(before, conv.weight)


def test_penalties_and_max_norm_in_the_engine() -> None:
    plain = build_engine(SPEC)
    zero = build_engine(_spec({"kind": "l2", "where": "model", "value": 0.0}))
    plain.run(), zero.run()
    for a, b in zip(_params(plain), _params(zero), strict=True):
        assert torch.equal(a, b)  # a zero-strength penalty changes nothing
    spec = _spec(
        {"kind": "l1", "where": "model", "value": 1e-3, "options": {"include_classifier": False}},
        {"kind": "max_norm", "where": "model", "value": 0.5, "name": "mn"},
    )
    engine = build_engine(spec)
    engine.run()
    for p in engine.model.parameters():
        if p.ndim >= 2:
            assert p.flatten(1).norm(dim=1).max().item() <= 0.5 + 1e-5
    assert engine.last.values == {"l1": 1e-3, "mn": 0.5}


# ----------------------------------------------------------------------------- augmentation
def test_augmentation_matches_torchvision_per_sample() -> None:
    torch.manual_seed(0)
    x = torch.rand(6, 3, 5, 7)
    aug = Augment(1.0)
    params = aug.draw(6)
    out = apply_augmentation(x, params)
    for i in range(6):
        ref = x[i]
        if params["hflip"][i]:
            ref = TF.horizontal_flip(ref)
        if params["vflip"][i]:
            ref = TF.vertical_flip(ref)
        ref = TF.adjust_brightness(ref, float(params["brightness"][i]))
        ref = TF.adjust_contrast(ref, float(params["contrast"][i]))
        ref = TF.adjust_saturation(ref, float(params["saturation"][i]))
        torch.testing.assert_close(out[i], ref)


def test_augmentation_statistics() -> None:
    torch.manual_seed(1)
    n = 4000
    params = Augment(1.0).draw(n)
    assert abs(params["hflip"].float().mean().item() - 0.5) < 0.04
    assert abs(params["vflip"].float().mean().item() - 0.5) < 0.04
    for key, mag in (("brightness", 0.4), ("contrast", 0.2), ("saturation", 0.3)):
        f = params[key]
        assert f.min() >= 1 - mag and f.max() <= 1 + mag
        assert abs(f.mean().item() - 1) < 0.02
        assert abs(f.var().item() - mag**2 / 3) < 0.1 * mag**2  # uniform on [1−m, 1+m]
    half = Augment(0.5).draw(n)
    assert abs(half["hflip"].float().mean().item() - 0.25) < 0.04
    assert half["brightness"].min() >= 0.8 and half["brightness"].max() <= 1.2
    # strength 0 is the identity; standardised batches round-trip
    x = torch.randn(8, 1, 4, 4)
    assert Augment(0.0).transform(x) is x
    aug = Augment(1.0, hflip=0, vflip=0, brightness=0, contrast=0, saturation=0)
    aug.setup(nn.Identity(), {"mean": [0.3], "std": [0.2]})
    x = (torch.rand(8, 1, 4, 4) - 0.3) / 0.2
    torch.testing.assert_close(aug.transform(x), x)


def test_augmentation_in_the_engine_changes_training_only() -> None:
    engine = build_engine(_spec({"kind": "augment", "where": "model", "value": 1.0}))
    seen = []
    hook = engine.hooks[0]
    original = hook.transform
    hook.transform = lambda x: seen.append(x) or original(x)  # type: ignore[method-assign]
    engine.step_period()
    assert len(seen) == 3  # one per training pass, none for validation
    with pytest.raises(ConfigError, match="augment"):
        build_engine({**_spec({"kind": "augment", "where": "model", "value": 1.0}),
                      "dataset": {"name": "iris"}}).step_period()  # fmt: skip


# ----------------------------------------------------------------------------- placement
def test_model_level_placement_rules() -> None:
    for kind in ("ewa", "l1", "l2", "adaptive_penalty", "max_norm", "augment"):
        assert kind in REGULARIZERS
    for kind in ("cliff_relu", "auto_relu"):
        assert kind in REGULARIZERS
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ConfigError, match=r"regularizers\[0\]\.where.*'model'"):
        insert_regularizers(net, [Placement("l2", "head")])
    with pytest.raises(ConfigError, match=r"regularizers\[0\]\.where"):
        insert_regularizers(net, [Placement("dropout", "model")])
    with pytest.raises(ConfigError, match=r"regularizers\[0\]\.options\.w1.*w0"):
        insert_regularizers(net, [Placement("adaptive_penalty", "model", options={"w1": 1})])
    with pytest.raises(ConfigError, match="w0"):
        insert_regularizers(net, [Placement("adaptive_penalty", "model", options={"w0": -1})])
    keys = set(net.state_dict())
    regs = insert_regularizers(
        net,
        [
            Placement("l2", "model", value=1e-4),
            Placement("ewa", "model", value=0.9),
            Placement("cliff_relu", "before_relu", value=6.0),
        ],
    )
    assert regs.values() == {"l2": 1e-4, "ewa": 0.9, "cliff_relu": 6.0}
    assert [m.kind for m in regs.model_level()] == ["l2", "ewa"]
    regs.set_values({"l2": 0.01, "ewa": 0.5})  # controllers set them per period
    assert regs.values()["l2"] == 0.01
    assert len(set(net.state_dict())) == len(keys)  # model-level kinds add no layer
    with pytest.raises(ConfigError):
        regs.set_values({"ewa": 1.5})


def test_ewa_evaluation_mid_period_sees_the_averaged_weights() -> None:
    layer = nn.Linear(2, 2)
    ewa = WeightEWA(0.9)
    ewa.period_start(layer)
    before = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.add_(1.0)  # a period's training
    trained = layer.weight.detach().clone()
    ewa.eval_start(layer)
    torch.testing.assert_close(layer.weight.detach(), 0.9 * trained + 0.1 * before)
    ewa.eval_end(layer)
    assert torch.equal(layer.weight.detach(), trained)  # training resumes from the exact W
    ewa.period_end(layer)
    torch.testing.assert_close(layer.weight.detach(), 0.9 * trained + 0.1 * before)


def test_epoch_end_evaluation_logs_flag_states_and_the_penalty() -> None:
    """An epoch end mid-period with the flip on: the flipped network is evaluated, the flag as
    evaluated is logged (eval_state/<group>), PFREWA's evaluation uses the averaged weights,
    and Keras' val_loss is recoverable (full_val_penalty)."""
    base = {**SPEC, "model": {"name": "mlp", "hidden": [16], "batchnorm": True},
            "controller": {"type": "constant", "values": {"sign_flip": 1.0}}}  # fmt: skip
    flip = {"kind": "sign_flip", "where": "after_bn"}
    ewa = {"kind": "ewa", "where": "model", "value": 0.5}
    l2 = {"kind": "l2", "where": "model", "value": 1e-3}
    runs = {}
    for name, regs in {
        "flip": [flip, ewa, l2],
        "clean_eval": [{**flip, "options": {"apply_in_eval": False}}, ewa, l2],
    }.items():
        engine = build_engine({**base, "regularizers": regs})
        runs[name] = [r for r in engine.run() if r.epoch_ended]
    # 120 × 0.7 × 0.8 → 67 training examples / 32: an epoch ends at pass 3, inside period 0
    first, clean = runs["flip"][0], runs["clean_eval"][0]
    assert first.extra["eval_state/sign_flip"] == 1.0
    assert clean.extra["eval_state/sign_flip"] == 0.0
    assert first.full_val_loss != clean.full_val_loss  # the same weights, flipped or not
    assert first.extra["full_val_penalty"] > 0
    assert first.metrics()["eval_state/sign_flip"] == 1.0


def test_auto_relu_in_a_resnet_block_trains_its_w() -> None:
    spec = {
        **SPEC,
        "model": {"name": "resnet20", "blocks": 1},
        "regularizers": [{"kind": "auto_relu", "where": "block_bn", "value": 6.0}],
    }
    engine = build_engine(spec)
    autos = [m for m in engine.model.modules() if isinstance(m, AutoReLU)]
    assert len(autos) == 3  # one BN+ReLU unit per block
    ids = {id(p) for g in engine.optimizer.param_groups for p in g["params"]}
    assert all(id(a.w) in ids for a in autos)
    engine.step_period()
    assert all(a.w.item() < 0.5 for a in autos)  # weight decay pulls w toward 0


def test_restore_with_hooks_is_exact() -> None:
    spec = _spec(
        {"kind": "augment", "where": "model", "value": 0.5},
        {"kind": "ewa", "where": "model", "value": 0.9},
        {"kind": "l2", "where": "model", "value": 1e-3},
    )
    full = build_engine(spec)
    full.run()
    half = build_engine(spec)
    half.step_period()
    state = half.state_dict()
    resumed = build_engine(spec)
    resumed.load_state_dict(state)
    resumed.run()
    for a, b in zip(_params(full), _params(resumed), strict=True):
        assert torch.equal(a, b)
