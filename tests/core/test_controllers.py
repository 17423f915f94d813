"""Controllers' schedules are seeded, correct and restorable."""

from __future__ import annotations

import pytest

from raytune_periodic.controllers import build_controller
from raytune_periodic.errors import ConfigError
from raytune_periodic.records import PeriodState

BOUNDS = {"dropout": (0.0, 1.0), "noise": (0.0, float("inf")), "sign_flip": (0.0, 1.0)}


def _schedule(ctrl, periods: int, start: int = 0) -> list[dict[str, float]]:
    return [
        ctrl.decide(PeriodState(period=p, last=None, progress=0.0)) for p in range(start, periods)
    ]


def _bound(spec: dict, seed: int = 0):
    ctrl = build_controller(spec, seed=seed)
    ctrl.bind(BOUNDS)
    return ctrl


def test_constant() -> None:
    ctrl = _bound({"type": "constant", "values": {"dropout": 0.3}})
    assert _schedule(ctrl, 3) == [{"dropout": 0.3}] * 3


def test_periodic_random_is_seeded_in_range_and_restorable() -> None:
    spec = {"type": "periodic_random", "ranges": {"dropout": [0.1, 0.7], "noise": [0, 2]}}
    a, b, c = _bound(spec, 1), _bound(spec, 1), _bound(spec, 2)
    sa, sb, sc = _schedule(a, 20), _schedule(b, 20), _schedule(c, 20)
    assert sa == sb and sa != sc
    assert all(0.1 <= v["dropout"] <= 0.7 and 0 <= v["noise"] <= 2 for v in sa)
    assert len({v["dropout"] for v in sa}) == 20  # a fresh value every period
    # restore mid-way: continue exactly
    d = _bound(spec, 1)
    _schedule(d, 7)
    saved = d.state_dict()
    e = _bound(spec, 99)
    e.load_state_dict(saved)
    assert _schedule(e, 20, start=7) == sa[7:]


def test_periodic_random_every_k_holds_values() -> None:
    ctrl = _bound({"type": "periodic_random", "ranges": {"dropout": [0, 0.5]}, "every": 3})
    s = [v["dropout"] for v in _schedule(ctrl, 9)]
    assert s[0] == s[1] == s[2] != s[3] == s[4] == s[5] != s[6]


def test_toggle_every_k_schedule() -> None:
    ctrl = _bound({"type": "toggle", "mode": "every", "every": 2})
    flags = [v["sign_flip"] for v in _schedule(ctrl, 8)]
    assert flags == [0, 0, 1, 1, 0, 0, 1, 1]


def test_toggle_bernoulli_rate_seed_and_restore() -> None:
    ctrl = _bound({"type": "toggle", "p": 0.5}, seed=3)
    flags = [v["sign_flip"] for v in _schedule(ctrl, 2000)]
    assert set(flags) == {0.0, 1.0}
    assert abs(sum(flags) / len(flags) - 0.5) < 0.04
    again = _bound({"type": "toggle", "p": 0.5}, seed=3)
    saved = None
    for p in range(2000):
        if p == 500:
            saved = again.state_dict()
        again.decide(PeriodState(period=p, last=None, progress=0))
    fresh = _bound({"type": "toggle", "p": 0.5}, seed=0)
    fresh.load_state_dict(saved)
    assert [v["sign_flip"] for v in _schedule(fresh, 2000, start=500)] == flags[500:]


def test_schedule_replays_values_exactly() -> None:
    rows = [{"dropout": 0.1}, {"dropout": 0.25}, {"dropout": 0.6}]
    ctrl = _bound({"type": "schedule", "schedule": rows})
    assert _schedule(ctrl, 4) == rows + [rows[-1]]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"type": "nope"}, "controller.type"),
        ({"type": "constant", "valuez": {}}, "controller.valuez"),
        (
            {"type": "periodic_random", "ranges": {"dropout": [0.8, 0.2]}},
            "controller.ranges.dropout",
        ),
        ({"type": "periodic_random", "ranges": {"dropout": [0, 1.5]}}, "controller.ranges.dropout"),
        ({"type": "periodic_random", "ranges": {"missing": [0, 1]}}, "controller.missing"),
        ({"type": "toggle", "p": 1.5}, "controller.p"),
        ({"type": "toggle", "mode": "sometimes"}, "controller.mode"),
        ({"type": "constant", "values": {"dropout": -0.2}}, "controller.values.dropout"),
    ],
)
def test_bad_controller_specs_are_one_line_errors(spec: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        _bound(spec)
    assert err.value.field == field
    assert "\n" not in str(err.value)


def test_a_per_layer_name_stands_for_each_layer_with_independent_draws() -> None:
    """PD/PNI: "the standard deviation of each injection layer periodically changes"."""
    layers = {f"noise_{i}": (0.0, float("inf")) for i in range(12)} | {"dropout": (0.0, 1.0)}
    pni = build_controller({"type": "periodic_random", "ranges": {"noise": [0, 0.5]}}, seed=1)
    pni.bind(layers)
    first, second = _schedule(pni, 2)
    assert sorted(first) == sorted(f"noise_{i}" for i in range(12))
    assert len(set(first.values())) == 12 and first != second  # independent, redrawn
    gni = build_controller({"type": "constant", "values": {"noise": 0.25, "noise_3": 0.0}})
    gni.bind(layers)
    values = _schedule(gni, 1)[0]
    assert values["noise_3"] == 0.0 and {values[f"noise_{i}"] for i in (0, 11)} == {0.25}
    with pytest.raises(ConfigError, match="no regularizer group 'nois'"):
        build_controller({"type": "constant", "values": {"nois": 0.1}}).bind(layers)
