"""Paired statistics of compare: significance, intervals, P(improve), Holm, power, IQM."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from report_store import Trial, paired_trials

from raytune_periodic.errors import ConfigError
from raytune_periodic.report import compare_frame
from raytune_periodic.report.stats import paired_stats

BASE10 = [0.70, 0.74, 0.78, 0.72, 0.76, 0.71, 0.77, 0.73, 0.75, 0.79]


def test_better_by_0_1_on_every_seed_is_significant_at_10_seeds(
    store_factory: Callable[..., str],
) -> None:
    uri = store_factory(paired_trials([0.1] * 10, BASE10), steps=False)
    frame = compare_frame("exp", uri).set_index("method")
    m = frame.loc["M"]
    for key in ("sel_test_f1", "final_test_f1", "final_test_f1_iqm"):
        assert m[f"{key}_n_seeds"] == 10
        assert m[f"{key}_diff"] == pytest.approx(0.1)
        assert m[f"{key}_p_improve"] == 1.0
        assert m[f"{key}_p_holm"] < 0.001
        assert m[f"{key}_significant"]
    assert "significantly better" in m["verdict"]
    assert frame.attrs["baseline"] == "BL"
    assert math.isnan(frame.loc["BL", "final_test_f1_diff"])  # the baseline's own row


@pytest.mark.parametrize("n", [2, 3, 5, 10, 30])
def test_identical_methods_are_never_significant(n: int) -> None:
    rng = np.random.default_rng(n)
    base = rng.uniform(0.6, 0.9, size=(n, 3))
    res = paired_stats(base.tolist(), base.tolist())
    assert res.diff == 0.0 and res.p_value == 1.0 and res.p_improve == 0.5
    assert (res.ci_low, res.ci_high) == (0.0, 0.0)
    assert res.seeds_80 == math.inf  # no effect: no number of seeds powers it


def test_identical_methods_through_the_store(store_factory: Callable[..., str]) -> None:
    uri = store_factory(paired_trials([0.0] * 10, BASE10), steps=False)
    m = compare_frame("exp", uri, baseline="BL").set_index("method").loc["M"]
    assert m["final_test_f1_p_holm"] == 1.0 and not m["final_test_f1_significant"]
    assert "not significant" in m["verdict"]
    assert "no effect observed" in m["verdict"]


def _coverage(n_seeds: int, n_trials: int, experiments: int = 200) -> float:
    """Share of simulated experiments whose 95 % interval covers the true effect 0.02.

    Seeds shift both methods alike (the pairing); the method's gain varies by seed (sd 0.01);
    trials add noise (sd 0.02)."""
    rng = np.random.default_rng(12345)
    hits = 0
    for i in range(experiments):
        seed_level = rng.normal(0.8, 0.03, n_seeds)
        gain = 0.02 + rng.normal(0, 0.01, n_seeds)
        a = [s + g + rng.normal(0, 0.02, n_trials) for s, g in zip(seed_level, gain)]
        b = [s + rng.normal(0, 0.02, n_trials) for s in seed_level]
        res = paired_stats(a, b, rng_seed=i, n_resamples=2000)
        hits += res.ci_low <= 0.02 <= res.ci_high
    return hits / experiments


@pytest.mark.parametrize("n_trials", [1, 3])
def test_interval_covers_the_true_effect(n_trials: int) -> None:
    assert 0.90 <= _coverage(30, n_trials) <= 0.99


def test_p_improve_is_the_share_of_seeds_or_pairs_won() -> None:
    res = paired_stats([[0.8], [0.7], [0.9], [0.5]], [[0.7], [0.7], [0.8], [0.6]])
    assert res.p_improve == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    # several trials: per seed the share of (method, baseline) pairs won, averaged over seeds
    res = paired_stats([[0.8, 0.6], [0.9, 0.9]], [[0.7, 0.7], [0.8, 1.0]])
    assert res.p_improve == pytest.approx((2 / 4 + 2 / 4) / 2)


def test_power_estimate_matches_the_t_test_power_table() -> None:
    # differences with mean 0.01 and sd 0.02: Cohen's d_z = 0.5 → 34 seeds (33.4 rounded up)
    d = np.array([0.01 + 0.02 * z for z in (-1.5, -0.5, 0.5, 1.5)])
    d = 0.01 + (d - d.mean()) / d.std(ddof=1) * 0.02
    res = paired_stats([[0.7 + x] for x in d], [[0.7]] * 4)
    assert res.seeds_80 == 34


def test_holm_corrects_over_the_methods(store_factory: Callable[..., str]) -> None:
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 0.02, size=(3, 6))
    trials = [Trial("BL", f"b{s}", s, BASE10[s]) for s in range(6)]
    for i, name in enumerate(("A", "B", "C")):
        trials += [
            Trial(name, f"{name}{s}", s, BASE10[s] + 0.01 * i + noise[i, s]) for s in range(6)
        ]
    paired = compare_frame("exp", store_factory(trials, steps=False)).attrs["paired"]
    rows = [r for r in paired if r["metric"] == "final_test_f1"]
    ps = sorted((r["p_value"], r["p_holm"]) for r in rows)
    assert ps[0][1] == pytest.approx(min(1.0, 3 * ps[0][0]))  # the smallest p times 3
    assert all(holm >= p for p, holm in ps)


def test_iqm_aggregates_the_trials_of_a_seed() -> None:
    # one outlier trial per seed: the mean moves, the IQM (middle half of 4 trials) does not
    a = [[0.80, 0.81, 0.82, 0.20], [0.70, 0.71, 0.72, 0.10]]
    b = [[0.80, 0.80, 0.80, 0.80], [0.70, 0.70, 0.70, 0.70]]
    assert paired_stats(a, b, "iqm").diff == pytest.approx(0.005)
    assert paired_stats(a, b, "mean").diff < -0.1


def test_unknown_baseline_is_a_config_error(store_factory: Callable[..., str]) -> None:
    uri = store_factory(paired_trials([0.0] * 2, BASE10[:2]), steps=False)
    with pytest.raises(ConfigError, match="no method 'XX' in this invocation; methods: BL, M"):
        compare_frame("exp", uri, baseline="XX")


def test_two_seeds_are_never_called_significant() -> None:
    """A t-test on 2 seeds whose differences happen to agree gives a tiny p; no verdict."""
    import pandas as pd

    from raytune_periodic.report.stats import _holm, verdict

    frame = pd.DataFrame([{"method": "D", "baseline": "BL", "metric": "final_test_f1",
                           "label": "final test F1", "n_seeds": 2, "diff": 0.044,
                           "ci_low": 0.044, "ci_high": 0.044, "p_improve": 0.84,
                           "p_value": 0.0019, "seeds_80": 2.0}])  # fmt: skip
    row = _holm(frame).iloc[0].to_dict()
    assert row["p_holm"] < 0.05 and not row["significant"]
    assert "not called (a paired test needs >= 3 seeds)" in verdict(row)
