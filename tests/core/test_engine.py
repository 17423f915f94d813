"""The period engine: records, epoch-end evaluation, exact restore, divergence."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from raytune_periodic.errors import ConfigError
from raytune_periodic.records import STATUS_DIVERGED
from raytune_periodic.training import build_engine, parse_run_spec

SPEC = {
    "dataset": {"name": "digits", "train_size": 200, "label_noise": 0.2},
    "model": {"name": "mlp", "hidden": [64, 64]},
    "regularizers": [
        {"kind": "dropout", "where": "head"},
        {"kind": "gaussian_noise", "where": "before_relu", "name": "noise"},
    ],
    "controller": {"type": "periodic_random", "ranges": {"dropout": [0, 0.6], "noise": [0, 0.3]}},
    "train": {"period_length": 5, "periods": 8, "batch_size": 32, "seed": 3},
}


def test_records_carry_values_metrics_and_epoch_evaluation() -> None:
    engine = build_engine(SPEC)
    records = engine.run()
    assert [r.period for r in records] == list(range(8))
    assert [r.passes for r in records] == [5 * (i + 1) for i in range(8)]
    # 200 samples / 32 = 7 batches per epoch: epochs end at passes 7, 14, 21, 28, 35,
    # which fall in periods 1, 2, 4, 5, 6
    ended = [r.period for r in records if r.epoch_ended]
    assert ended == [1, 2, 4, 5, 6]
    for r in records:
        assert set(r.values) == {"dropout", "noise"}
        assert 0 <= r.values["dropout"] <= 0.6
        assert 0 <= r.train_f1 <= 1 and 0 <= r.val_f1 <= 1
        assert r.gap == pytest.approx(r.train_f1 - r.val_f1)
        assert math.isfinite(r.train_loss) and r.seconds > 0
    metrics = records[1].metrics()
    assert {"value/dropout", "value/noise", "full_val_f1", "test_f1", "gap"} <= set(metrics)
    # the values in force are what the controller decided for that period
    assert len({r.values["dropout"] for r in records}) == 8


def test_full_evaluation_is_independent_of_the_controller() -> None:
    engine = build_engine(SPEC)
    engine.run(3)
    loss1, f1_1 = engine.evaluate("val")
    rng = torch.get_rng_state()
    loss2, f1_2 = engine.evaluate("val")
    assert (loss1, f1_1) == (loss2, f1_2)
    assert torch.equal(rng, torch.get_rng_state())  # evaluation consumes no training randomness


def test_restore_at_period_k_is_bit_identical(tmp_path: Path) -> None:
    straight = build_engine(SPEC)
    full = straight.run()

    first = build_engine(SPEC)
    first.run(3)
    first.save(str(tmp_path / "ckpt.pt"))
    torch.manual_seed(12345)  # disturb the global RNG between save and restore
    resumed = build_engine(SPEC)
    resumed.load(str(tmp_path / "ckpt.pt"))
    rest = resumed.run()
    assert [r.period for r in rest] == list(range(3, 8))
    for a, b in zip(full[3:], rest, strict=True):
        assert a.values == b.values
        assert a.train_loss == b.train_loss and a.val_loss == b.val_loss
        assert a.train_f1 == b.train_f1 and a.full_val_f1 == b.full_val_f1
    for (n1, p1), (n2, p2) in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        assert n1 == n2 and torch.equal(p1, p2)


def test_nan_loss_ends_the_run_as_diverged() -> None:
    spec = {**SPEC, "train": {**SPEC["train"], "lr": 1e30}}
    engine = build_engine(spec)
    records = engine.run()
    assert records[-1].status == STATUS_DIVERGED
    assert len(records) < 8 and engine.done
    with pytest.raises(RuntimeError, match="diverged"):
        engine.step_period()


def test_sign_flip_toggle_run_steps() -> None:
    spec = {
        "dataset": "digits",
        "model": {"name": "mlp", "hidden": [32], "batchnorm": True},
        "regularizers": [{"kind": "sign_flip", "where": "after_bn"}],
        "controller": {"type": "toggle", "mode": "every", "every": 1},
        "train": {"period_length": 3, "periods": 4, "batch_size": 16},
    }
    flags = [r.values["sign_flip"] for r in build_engine(spec).run()]
    assert flags == [0, 1, 0, 1]


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"train": {"period_length": 0}}, "train.period_length"),
        ({"train": {"period_length": -5}}, "train.period_length"),
        ({"train": {"lr": -1}}, "train.lr"),
        ({"train": {"bogus": 1}}, "train.bogus"),
        ({"model": {"name": "transformer"}}, "model.name"),
        ({"dataset": {"name": "mnist-ish"}}, "dataset.name"),
        ({"dataset": {"name": "cifar10", "root": "/nonexistent/cifar"}}, "dataset.options.root"),
        ({"regularizers": [{"kind": "dropout", "value": 1.5}]}, "regularizers[0].value"),
        ({"regularizers": [{"kind": "gaussian_noise", "value": -0.1}]}, "regularizers[0].value"),
        ({"regularizers": [{"kind": "dropout", "where": "everywhere"}]}, "regularizers[0].where"),
        (
            {"controller": {"type": "constant", "values": {"dropout": 3}}},
            "controller.values.dropout",
        ),
    ],
)
def test_bad_input_is_a_one_line_error_naming_the_field(patch: dict, field: str) -> None:
    spec = {**SPEC, **patch}
    if "regularizers" in patch or "controller" in patch:
        spec.setdefault("controller", {"type": "constant"})
    if "regularizers" in patch and "controller" not in patch:
        spec["controller"] = {"type": "constant"}
    with pytest.raises(ConfigError) as err:
        build_engine(parse_run_spec(spec))
    assert err.value.field.startswith(field), str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"valid: .*lenet.*mlp.*resnet18"):
        build_engine({**SPEC, "model": {"name": "vgg"}})
    with pytest.raises(ConfigError, match=r"valid: .*digits.*iris"):
        build_engine({**SPEC, "dataset": {"name": "svhn"}})
