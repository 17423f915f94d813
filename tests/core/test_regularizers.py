"""Each regularizer's effect is measurable, and placement puts it where it says."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from raytune_periodic.errors import ConfigError
from raytune_periodic.regularizers import (
    GaussianNoise,
    PeriodicDropout,
    Placement,
    SignFlip,
    algorithm1_flags,
    insert_regularizers,
)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.7])
def test_dropout_zeroes_p_of_units_in_train_and_nothing_in_eval(p: float) -> None:
    torch.manual_seed(0)
    drop = PeriodicDropout(p)
    x = torch.ones(200, 500)
    y = drop.train()(x)
    zero_frac = float((y == 0).float().mean())
    assert abs(zero_frac - p) < 0.01
    # survivors are rescaled by 1/(1-p) so the expectation is unchanged
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - p)))
    assert torch.equal(drop.eval()(x), x)


def test_dropout_rate_changes_in_place_between_calls() -> None:
    torch.manual_seed(0)
    drop = PeriodicDropout(0.0).train()
    x = torch.ones(100, 1000)
    assert torch.equal(drop(x), x)
    drop.set_value(0.5)
    assert abs(float((drop(x) == 0).float().mean()) - 0.5) < 0.01
    assert "p=0.5" in repr(drop)


@pytest.mark.parametrize("std", [0.1, 1.0, 2.5])
def test_noise_std_matches_and_is_off_in_eval(std: float) -> None:
    torch.manual_seed(0)
    noise = GaussianNoise(std).train()
    x = torch.full((400, 500), 3.0)
    d = noise(x) - x
    assert abs(float(d.mean())) < 0.02 * max(std, 1)
    assert abs(float(d.std()) - std) / std < 0.01
    assert torch.equal(noise.eval()(x), x)


def test_sign_flip_flips_exactly_while_flag_is_on() -> None:
    flip = SignFlip(0.0).train()
    x = torch.randn(8, 4)
    assert torch.equal(flip(x), x)
    flip.set_value(1)
    assert torch.equal(flip(x), -x)
    assert torch.equal(flip.eval()(x), -x)  # evaluation sees the network as trained now
    assert flip.eval_state() == 1.0
    assert torch.equal(SignFlip(1.0, apply_in_eval=False).eval()(x), x)
    assert SignFlip(1.0, apply_in_eval=False).eval_state() == 0.0


def test_algorithm1_transcription() -> None:
    # T = 3: the flag turns on after step 2 (2 % 3 == 2), off after step 5, on after step 8 ...
    flags = algorithm1_flags(12, 3)
    assert flags == [False, False, True, True, True, False, False, False, True, True, True, False]


@pytest.mark.parametrize(
    ("cls", "bad"),
    [(PeriodicDropout, -0.1), (PeriodicDropout, 1.5), (GaussianNoise, -1.0), (SignFlip, 0.5)],
)
def test_out_of_range_values_are_one_line_errors(cls: type, bad: float) -> None:
    with pytest.raises(ConfigError) as err:
        cls(bad)
    assert "\n" not in str(err.value)
    assert cls.kind in str(err.value)


def _mlp(bn: bool = True) -> nn.Module:
    layers: list[nn.Module] = [nn.Linear(4, 8)]
    if bn:
        layers.append(nn.BatchNorm1d(8))
    layers += [nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)]
    return nn.Sequential(*layers)


def test_head_placement_wraps_last_linear_and_values_set_by_group() -> None:
    model = _mlp()
    regs = insert_regularizers(model, [Placement("dropout", "head", value=0.2)])
    assert regs.names == ["dropout"]
    head = model[-1]
    assert isinstance(head, nn.Sequential) and isinstance(head[0], PeriodicDropout)
    assert isinstance(head[1], nn.Linear)
    regs.set_values({"dropout": 0.4})
    assert head[0].value == 0.4
    with pytest.raises(ConfigError, match="no regularizer group 'noise'"):
        regs.set_values({"noise": 0.1})


def test_after_bn_and_per_layer_groups() -> None:
    model = _mlp()
    regs = insert_regularizers(
        model,
        [
            Placement("sign_flip", "after_bn"),
            Placement("gaussian_noise", "before_relu", name="noise", per_layer=True),
        ],
    )
    assert set(regs.names) == {"sign_flip", "noise_0", "noise_1"}
    assert isinstance(model[1][1], SignFlip)  # BN -> flip
    model.train()
    out = model(torch.randn(5, 4))
    assert out.shape == (5, 3)


def test_after_relu_acts_on_the_activated_nodes() -> None:
    """The periodic paper injects noise "into activated nodes": after each ReLU, so the noisy
    activation can be negative; in torchvision's ResNet each ReLU module is one site."""
    model = _mlp()
    regs = insert_regularizers(model, [Placement("gaussian_noise", "after_relu", name="noise")])
    relus = [m for m in model.modules() if isinstance(m, nn.Sequential) and len(m) == 2
             and isinstance(m[0], nn.ReLU)]  # fmt: skip
    assert len(relus) == len(regs.groups["noise"]) == 2
    assert all(isinstance(m[1], GaussianNoise) for m in relus)
    regs.set_values({"noise": 1.0})
    assert bool((relus[0].train()(torch.zeros(64, 8)) < 0).any())  # noise after the ReLU
    net = resnet18(weights=None, num_classes=10)
    sites = insert_regularizers(net, [Placement("dropout", "after_relu", per_layer=True)])
    assert len(sites.names) == 1 + 8  # the stem's ReLU and each block's (shared) ReLU module


def test_block_bn_puts_one_unit_per_residual_block() -> None:
    model = resnet18(weights=None, num_classes=10)
    n_blocks = sum(1 for m in model.modules() if type(m).__name__ == "BasicBlock")
    regs = insert_regularizers(model, [Placement("sign_flip", "block_bn")])
    assert len(regs.groups["sign_flip"]) == n_blocks == 8
    assert isinstance(model.layer1[0].bn1[1], SignFlip)
    assert isinstance(model.layer1[0].bn2, nn.BatchNorm2d)  # second unit untouched
    regs.set_values({"sign_flip": 1})
    model.train()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_placement_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"regularizers\[0\]\.where"):
        insert_regularizers(_mlp(bn=False), [Placement("sign_flip", "after_bn")])
    with pytest.raises(ConfigError, match=r"regularizers\[0\]\.kind.*valid: .*dropout"):
        insert_regularizers(_mlp(), [Placement("dropconnect", "head")])
    with pytest.raises(ConfigError, match=r"regularizers\[0\]\.value"):
        insert_regularizers(_mlp(), [Placement("dropout", "head", value=2.0)])
