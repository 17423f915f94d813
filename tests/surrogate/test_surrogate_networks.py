"""Surrogate paper §2.2–2.4: Table 2's surrogate, unilateral Euclidean fitting (eqs. 9–10), FLOPs,
and the objective of eq. 11."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from raytune_periodic.errors import ConfigError
from raytune_periodic.models import build_model
from raytune_periodic.surrogate.networks import (
    PAPER_TABLE2,
    ConvSpec,
    EtaWeights,
    FusedNet,
    auto_conv,
    build_surrogate,
    count_flops,
    euclidean_terms,
    flops_ratio,
    fused_loss,
)
from raytune_periodic.surrogate.objective import evaluate, l1_l2_ratio, objective
from raytune_periodic.surrogate.sparseness import HypParaSet, SparseTwoFC, attach_sparseness


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def lenet_pair(shape: tuple[int, int, int] = (1, 8, 8)) -> FusedNet:
    torch.manual_seed(0)
    original = build_model("lenet", shape, 10)
    attach_sparseness(original, HypParaSet.paper_default())
    return FusedNet(original, build_surrogate(original, shape))


# ----------------------------------------------------------------------------- Table 2
def test_table2_tuples_are_one_step_convolutions_to_the_last_map() -> None:
    # Caffe's LeNet on 28×28 ends with a 50×4×4 map: (50, 7, 7, 0) gets there in one step
    assert auto_conv((50, 4, 4), (1, 28, 28)) == PAPER_TABLE2["lenet"]
    assert PAPER_TABLE2["lenet"].output_size(28) == 4
    # ResNet20 on 28×28 ends with 64×7×7: (64, 6, 4, 1) → (28 + 2 − 6) // 4 + 1 = 7
    assert PAPER_TABLE2["resnet20"].output_size(28) == 7
    # this project's LeNet pads: digits 8×8 → 50×2×2, 28×28 → 50×7×7
    assert build_surrogate(build_model("lenet", (1, 8, 8), 10), (1, 8, 8)).conv_spec == ConvSpec(
        50, 4, 4, 0
    )
    assert build_surrogate(build_model("lenet", (1, 28, 28), 7), (1, 28, 28)).conv_spec == (
        ConvSpec(50, 4, 4, 0)
    )


def test_table2_surrogates_of_caffe_lenet_and_resnet20_on_28px_faces() -> None:
    """The paper's own tuples fit the paper's networks at 28×28: LeNet (valid padding, z 800)
    takes (50, 7, 7, 0), ResNet20 (one FC layer) takes (64, 6, 4, 1)."""
    lenet = build_model("lenet", (1, 28, 28), 7, padding=0)
    sur = build_surrogate(lenet, (1, 28, 28), conv=(50, 7, 7, 0))
    assert build_surrogate(lenet, (1, 28, 28)).conv_spec == PAPER_TABLE2["lenet"]  # auto
    assert sur.features(torch.zeros(2, 1, 28, 28)).shape == (2, 800)
    resnet = build_model("resnet20", (1, 28, 28), 7)
    pair = FusedNet(resnet, build_surrogate(resnet, (1, 28, 28), conv=(64, 6, 4, 1)))
    assert pair.surrogate is not None and pair.surrogate.conv_spec == PAPER_TABLE2["resnet20"]
    assert pair.head_o.one_fc and pair.surrogate.head.one_fc
    pair.set_values({"lam_z": 1e-3, "p_v": 0.3})
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 7, (4,))
    loss, logits = fused_loss(pair, x, y)
    assert logits.shape == (4, 7) and torch.isfinite(loss)
    assert set(euclidean_terms(pair.head_o, pair.surrogate.head)) == {"z", "v"}  # no x, no W
    assert flops_ratio(resnet, pair.surrogate, (1, 28, 28)) > 50


def test_surrogate_keeps_the_head_and_replaces_the_features() -> None:
    fused = lenet_pair()
    original, surrogate = fused.original, fused.surrogate
    assert surrogate is not None
    assert isinstance(surrogate.head, SparseTwoFC) and surrogate.head is not original.head
    assert surrogate.head.hyp == original.head.hyp
    for a, b in zip(surrogate.head.parameters(), original.head.parameters(), strict=True):
        assert a.shape == b.shape and torch.equal(a, b) and a is not b  # a copy, same start
    convs = [m for m in surrogate.features.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1
    x = torch.randn(5, 1, 8, 8)
    assert surrogate.features(x).shape == original.features(x).shape == (5, 200)
    assert flops_ratio(original, surrogate, (1, 8, 8)) > 1


def test_wrong_or_impossible_surrogate_is_a_one_line_error() -> None:
    original = build_model("lenet", (1, 8, 8), 10)
    with pytest.raises(ConfigError) as err:
        build_surrogate(original, (1, 8, 8), conv=(50, 7, 7, 0))
    assert err.value.field == "surrogate.conv" and "(50, 4, 4, 0)" in str(err.value)
    with pytest.raises(ConfigError) as err:
        build_surrogate(original, (1, 8, 8), conv=(50, 0, 4))
    assert err.value.field == "surrogate.conv"
    with pytest.raises(ConfigError) as err:
        build_surrogate(build_model("mlp", (4,), 3), (4,))
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- eqs. 9–10
def test_unilateral_backprop_leaves_the_original_gradients_unchanged() -> None:
    fused = lenet_pair()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    fused.train()

    def grads(net: FusedNet, eta: EtaWeights, unilateral: bool = True) -> dict[str, torch.Tensor]:
        net.zero_grad(set_to_none=True)
        torch.manual_seed(7)  # same dropout masks in every call
        loss, _ = fused_loss(net, x, y, eta, unilateral)
        loss.backward()
        return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    alone = grads(FusedNet(fused.original), EtaWeights())  # original without the surrogate
    with_eu = grads(fused, EtaWeights())
    no_eu = grads(fused, EtaWeights(0.0, 0.0, 0.0, 0.0))
    for name, g in alone.items():
        assert torch.equal(g, with_eu[name]), name  # bit-identical
    surrogate_keys = [k for k in with_eu if k.startswith("surrogate.")]
    assert surrogate_keys and any(not torch.equal(with_eu[k], no_eu[k]) for k in surrogate_keys)
    # the control: without detaching, the original would be pulled towards the surrogate
    bilateral = grads(fused, EtaWeights(1.0, 1.0, 1.0, 1.0), unilateral=False)
    assert any(not torch.allclose(g, bilateral[name]) for name, g in alone.items())


def test_euclidean_losses_and_their_gradients_follow_eqs_9_and_10() -> None:
    torch.manual_seed(4)

    def head() -> SparseTwoFC:
        return SparseTwoFC(
            OrderedDict(fc1=nn.Linear(3, 4), relu=nn.ReLU(), fc2=nn.Linear(4, 2)), "fc1", "fc2"
        )

    h_o, h_s = head(), head()
    z_o, z_s = torch.randn(5, 3), torch.randn(5, 3, requires_grad=True)
    h_o(z_o)
    h_s(z_s)
    eu = euclidean_terms(h_o, h_s)
    n = 5

    def num(t: torch.Tensor) -> float:
        return t.detach().item()

    assert num(eu["z"]) == pytest.approx(num(((z_s - z_o) ** 2).sum() / (2 * n)))
    assert num(eu["x"]) == pytest.approx(num(((h_s.x - h_o.x) ** 2).sum() / (2 * n)))
    v_o, v_s = h_o.layer_v.weight, h_s.layer_v.weight
    w_o, w_s = h_o.layer_w.weight, h_s.layer_w.weight
    assert num(eu["v"]) == pytest.approx(num(((v_s - v_o) ** 2).sum() / 2))
    assert num(eu["w"]) == pytest.approx(num(((w_s - w_o) ** 2).sum() / 2))
    (eu["w"] + eu["v"] + eu["z"]).backward()
    assert torch.allclose(w_s.grad, w_s - w_o) and torch.allclose(v_s.grad, v_s - v_o)  # eq. 10
    assert torch.allclose(z_s.grad, (z_s - z_o) / n)  # eq. 10 per sample, batch-averaged
    assert v_o.grad is None and w_o.grad is None


# ----------------------------------------------------------------------------- FLOPs (§2.4)
def test_flop_counter_counts_conv_and_fc_multiply_adds() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    macs = 6 * 6 * 3 * 3 * 1 * 4 + 4 * 6 * 6 * 10
    assert count_flops(net, (1, 8, 8)) == 2 * macs
    assert count_flops(net, (1, 8, 8), backward=True) > 2 * macs
    fused = lenet_pair()
    t_ori = count_flops(fused.original, (1, 8, 8))
    lenet_macs = 8 * 8 * 25 * 20 + 4 * 4 * 25 * 20 * 50 + 200 * 500 + 500 * 10
    assert t_ori == 2 * lenet_macs


# ----------------------------------------------------------------------------- eq. 11
def test_objective_eq_11_on_a_hand_computed_case() -> None:
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0], [-2.0, 2.0]])
    # ||x||_1 / ||x||_2: 7/5, 0 (zero vector), 1, 4/sqrt(8)
    ratios = [1.4, 0.0, 1.0, 4 / 8**0.5]
    assert l1_l2_ratio(x).tolist() == pytest.approx(ratios)
    assert objective(0.75, x) == pytest.approx(0.75 - 1e-5 * sum(ratios) / 4)
    assert objective(0.75, x, kappa=0.1) == pytest.approx(0.75 - 0.1 * sum(ratios) / 4)


def test_evaluate_scores_eq_11_on_the_fc2_inputs() -> None:
    head = SparseTwoFC(
        OrderedDict(fc1=nn.Linear(2, 2), relu=nn.ReLU(), fc2=nn.Linear(2, 2)), "fc1", "fc2"
    )
    with torch.no_grad():
        head.layer_v.weight.copy_(torch.eye(2))
        head.layer_v.bias.zero_()
        head.layer_w.weight.copy_(torch.eye(2))
        head.layer_w.bias.zero_()
    model = nn.Module()
    model.head = head
    model.forward = head.forward  # type: ignore[method-assign]
    z = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0], [5.0, 1.0]])
    y = torch.tensor([1, 0, 1, 1])  # predictions: 1, 0, 1, 0 → accuracy 3/4
    out = evaluate(model, TensorDataset(z, y), batch_size=3)
    ratio = (1.4 + 1 + 1 + 6 / 26**0.5) / 4
    assert out["accuracy"] == 0.75 and out["l1_l2"] == pytest.approx(ratio)
    assert out["objective"] == pytest.approx(0.75 - 1e-5 * ratio)
    assert head.z is None and head.x is None  # caches dropped after evaluation
