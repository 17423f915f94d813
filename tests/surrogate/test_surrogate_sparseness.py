"""Surrogate paper, eqs. 2–8: the HypParaSet, the two-FC head, L1 terms, dropout and DropConnect."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from raytune_periodic.errors import ConfigError
from raytune_periodic.models import build_model
from raytune_periodic.surrogate.sparseness import (
    NAMES,
    HypParaSet,
    SearchSpace,
    SparsenessTerm,
    SparseTwoFC,
    TwoFCHead,
    attach_sparseness,
    dropconnect,
    feature_dropout,
)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_head(hyp: HypParaSet | None = None, x_before_activation: bool = False) -> SparseTwoFC:
    """z (3) → fc1 (V: 2×3) → ReLU → x (2) → fc2 (W: 2×2), with hand-picked weights (x recorded
    after the ReLU unless ``x_before_activation``)."""
    fc1, fc2 = nn.Linear(3, 2), nn.Linear(2, 2)
    with torch.no_grad():
        fc1.weight.copy_(torch.tensor([[1.0, -1.0, 0.5], [0.0, 2.0, -1.0]]))
        fc1.bias.copy_(torch.tensor([0.0, 1.0]))
        fc2.weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 0.0]]))
        fc2.bias.zero_()
    children = OrderedDict(fc1=fc1, relu=nn.ReLU(), fc2=fc2)
    return SparseTwoFC(children, "fc1", "fc2", hyp, x_before_activation=x_before_activation)


# ----------------------------------------------------------------------------- HypParaSet
def test_hyp_para_set_validates_and_round_trips() -> None:
    hyp = HypParaSet.paper_default()
    assert hyp.to_dict() == {**dict.fromkeys(NAMES[:4], 1e-5), **dict.fromkeys(NAMES[4:], 0.5)}
    assert HypParaSet.from_dict(hyp.to_dict()) == hyp
    assert HypParaSet.from_dict({"p_x": 0.2}) == HypParaSet(p_x=0.2)
    for bad, field in (
        ({"p_z": 1.0}, "hyp.p_z"),
        ({"lam_w": -1e-5}, "hyp.lam_w"),
        ({"lam_x": float("nan")}, "hyp.lam_x"),
        ({"dropout": 0.3}, "hyp.dropout"),
    ):
        with pytest.raises(ConfigError) as err:
            HypParaSet.from_dict(bad)
        assert err.value.field == field and "\n" not in str(err.value)


def test_search_space_bounds_are_checked() -> None:
    space = SearchSpace().validate()
    assert space.center() == HypParaSet.paper_default()  # the paper's 1e-5 / 0.5
    for kwargs, field in (
        ({"lam_bounds": (1e-2, 1e-8)}, "search.lam_bounds"),
        ({"lam_bounds": (1e-5, 1e-5)}, "search.lam_bounds"),
        ({"lam_bounds": (0.0, 1e-2)}, "search.lam_bounds"),
        ({"p_bounds": (0.8, 0.2)}, "search.p_bounds"),
        ({"p_bounds": (0.2, 1.0)}, "search.p_bounds"),
        ({"active": ("p_q",)}, "search.active"),
    ):
        with pytest.raises(ConfigError) as err:
            SearchSpace(**kwargs).validate()  # type: ignore[arg-type]
        assert err.value.field == field and "\n" not in str(err.value)
    sub = SearchSpace(active=("p_z", "lam_x"), fixed=HypParaSet(p_w=0.1))
    full = sub.complete({"p_z": 0.3, "lam_x": 1e-4})
    assert full == HypParaSet(p_z=0.3, lam_x=1e-4, p_w=0.1)
    assert sub.to_unit(full) == pytest.approx({"p_z": (0.3 - 0.2) / 0.6, "lam_x": 4 / 6})


# ----------------------------------------------------------------------------- the head
def test_lenet_head_is_found_and_wrapped_without_changing_keys() -> None:
    model = build_model("lenet", (1, 8, 8), 10)
    keys = list(model.state_dict())
    found = TwoFCHead.find(model)
    assert (found.fc1, found.fc2) == ("fc1", "fc2")
    assert found.v.weight.shape == (500, 200) and found.w.weight.shape == (10, 500)
    v_weight = found.v.weight
    head = attach_sparseness(model, HypParaSet(p_z=0.1))
    assert model.head is head and head.layer_v.weight is v_weight  # same parameters
    assert list(model.state_dict()) == keys
    assert attach_sparseness(model) is head  # idempotent
    x = torch.randn(4, 1, 8, 8)
    model.eval()
    assert model(x).shape == (4, 10)
    assert head.z is not None and head.z.shape == (4, 200) and head.x.shape == (4, 500)


@pytest.mark.parametrize("name", ["mlp", "resnet18"])
def test_model_without_two_fc_head_is_a_one_line_error(name: str) -> None:
    shape = (1, 8, 8)
    model = build_model(name, shape, 10)
    with pytest.raises(ConfigError) as err:
        attach_sparseness(model)
    assert err.value.field == "model.name"
    assert "has no two-FC head" in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- eqs. 2–4
def test_l1_terms_follow_eqs_2_to_4() -> None:
    z = torch.tensor([[1.0, -2.0, 0.0], [3.0, 0.0, -1.0]])
    head = tiny_head()
    head.eval()
    head(z)
    # x = ReLU(V z + b): row 1 = ReLU([3, -3]) = [3, 0]; row 2 = ReLU([2.5, 2]) = [2.5, 2]
    assert torch.allclose(head.x, torch.tensor([[3.0, 0.0], [2.5, 2.0]]))
    cases = {
        "lam_z": (1 + 2 + 0 + 3 + 0 + 1) / 2,  # mean_i ||z_i||_1
        "lam_x": (3 + 0 + 2.5 + 2) / 2,  # mean_i ||x_i||_1
        "lam_v": 1 + 1 + 0.5 + 0 + 2 + 1,  # ||V||_1
        "lam_w": 1 + 2 + 3 + 0,  # ||W||_1
    }
    for name, l1 in cases.items():
        head.set_values({name: 0.1})
        assert float(head.penalty().detach()) == pytest.approx(0.1 * l1)
    head.set_values({k: 0.1 for k in cases})
    assert float(head.penalty().detach()) == pytest.approx(0.1 * sum(cases.values()))
    head.set_values(HypParaSet())
    assert float(head.penalty().detach()) == 0.0
    # eq. 6: the gradient of L_z w.r.t. z is SIGN(z) (per sample, before the batch mean)
    zg = z.clone().requires_grad_(True)
    head.set_values({"lam_z": 1.0})
    head(zg)
    head.penalty().backward()
    assert torch.equal(zg.grad, torch.sign(z) / 2)


def test_x_is_vt_z_before_the_activation_as_table_1_defines_it() -> None:
    """Table 1: x = Vᵀz, FC1's output before the ReLU (the default), so L_x sees its negative
    entries; the outputs are the same either way (p_x dropout commutes with the ReLU)."""
    z = torch.tensor([[1.0, -2.0, 0.0], [3.0, 0.0, -1.0]])
    head, after = tiny_head(x_before_activation=True), tiny_head()
    for h in (head, after):
        h.eval()
    assert torch.equal(head(z), after(z))
    assert torch.allclose(head.x, torch.tensor([[3.0, -3.0], [2.5, 2.0]]))
    head.set_values({"lam_x": 0.1})
    assert float(head.penalty().detach()) == pytest.approx(0.1 * (3 + 3 + 2.5 + 2) / 2)
    assert attach_sparseness(build_model("lenet", (1, 8, 8), 10)).x_before_activation


def test_one_fc_head_has_only_z_and_v() -> None:
    """ResNet20's head (one FC layer): the 4 hyperparameters (p_z, p_V, λ_z, λ_V) of Table 2."""
    model = build_model("resnet20", (1, 28, 28), 7)
    keys = list(model.state_dict())
    head = attach_sparseness(model, {"lam_z": 0.1, "p_v": 0.3})
    assert head.one_fc and head.layer_w is None and list(model.state_dict()) == keys
    model.eval()
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 7)
    assert head.x is None and head.features is head.z and head.z.shape == (3, 64)
    expected = 0.1 * float(head.z.detach().abs().sum(1).mean())
    assert float(head.penalty().detach()) == pytest.approx(expected)
    with pytest.raises(ConfigError) as err:
        head.set_values({"p_x": 0.5})
    assert err.value.field == "hyp" and "one FC layer" in str(err.value)


# ----------------------------------------------------------------------------- eq. 7
def test_feature_dropout_matches_eq_7() -> None:
    torch.manual_seed(0)
    x = torch.ones(400, 250)
    out = feature_dropout(x, 0.3, training=True)
    kept = out != 0
    assert float(kept.float().mean()) == pytest.approx(0.7, abs=0.01)
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / 0.7))  # inverted scaling
    assert torch.equal(feature_dropout(x, 0.3, training=False), x)
    literal = feature_dropout(x, 0.3, training=True, inverted=False)  # eq. 7 as written
    assert set(literal.unique().tolist()) == {0.0, 1.0}
    assert float((literal == 0).float().mean()) == pytest.approx(0.3, abs=0.01)
    assert torch.allclose(feature_dropout(x, 0.3, training=False, inverted=False), 0.7 * x)


def test_dropconnect_matches_eq_7() -> None:
    torch.manual_seed(1)
    w = torch.ones(300, 300, requires_grad=True)
    out = dropconnect(w, 0.4, training=True)
    kept = out != 0
    assert float(kept.float().mean()) == pytest.approx(0.6, abs=0.01)
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / 0.6))
    out.sum().backward()
    assert torch.equal(w.grad != 0, kept)  # dropped weights get no gradient
    assert torch.equal(dropconnect(w, 0.4, training=False), w)
    literal = dropconnect(w, 0.4, training=True, inverted=False)
    assert set(literal.detach().unique().tolist()) == {0.0, 1.0}
    assert torch.allclose(dropconnect(w, 0.4, training=False, inverted=False), 0.6 * w)


def test_head_drops_weights_per_batch_and_features_per_sample() -> None:
    torch.manual_seed(2)
    fc1, fc2 = nn.Linear(20, 30), nn.Linear(30, 5)
    head = SparseTwoFC(OrderedDict(fc1=fc1, act=nn.ReLU(), fc2=fc2), "fc1", "fc2")
    z = torch.randn(1, 20).repeat(8, 1)  # 8 identical samples
    head.train()
    head.set_values({"p_v": 0.5, "p_w": 0.5})  # DropConnect: one mask for the mini-batch
    out = head(z)
    assert torch.allclose(out, out[:1].expand_as(out), atol=1e-6)
    head.set_values({"p_z": 0.5})  # feature dropout: one mask per sample
    out = head(z)
    assert not torch.allclose(out, out[:1].expand_as(out), atol=1e-6)
    head.eval()  # inverted dropout: evaluation is the plain head
    assert torch.allclose(head(z), fc2(torch.relu(fc1(z))))


def test_values_change_in_place_without_rebuilding() -> None:
    torch.manual_seed(3)
    model = build_model("lenet", (1, 8, 8), 10)
    head = attach_sparseness(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    model.train()
    base = model(x)
    head.set_values({"p_x": 0.9})
    dropped = model(x)
    assert not torch.allclose(base, dropped)
    head.set_values(HypParaSet())
    assert torch.allclose(model(x), base)
    loss = nn.functional.cross_entropy(model(x), y) + SparsenessTerm(head)(model)
    loss.backward()
    optimizer.step()  # the optimizer built before the swap owns the head's parameters


def test_sparseness_term_plugs_into_the_period_engine() -> None:
    from raytune_periodic.training import build_engine

    spec = {
        "dataset": {"name": "digits", "train_size": 100},
        "model": {"name": "lenet"},
        "train": {"period_length": 2, "periods": 2, "batch_size": 32},
    }
    engine = build_engine(spec)
    head = attach_sparseness(engine.model, HypParaSet.paper_default())
    engine.loss_terms.append(SparsenessTerm(head))
    records = engine.run()
    assert len(records) == 2 and all(r.status == "ok" for r in records)
