"""Surrogate paper Algorithm 1: config errors, exact resume, comparators, a run under real Ray."""

from __future__ import annotations

import io
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from raytune_periodic.data import load_dataset
from raytune_periodic.data._base import DataSplits
from raytune_periodic.errors import ConfigError
from raytune_periodic.surrogate import (
    HypParaSet,
    SearchSpace,
    SerialExecutor,
    SolverOptions,
    SurrogateHPO,
    SurrogateHPOConfig,
    ea_config,
    run_grid,
    tied_grid,
    train_original,
)
from raytune_periodic.surrogate.sparseness import DROPOUTS, LAMBDAS, NAMES

TIMING = ("wall_seconds", "cpu_seconds", "pid", "task_id", "executor")


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return load_dataset("digits", train_size=160, seed=0)


def tiny(**overrides: Any) -> SurrogateHPOConfig:
    base: dict[str, Any] = {
        "ni_epochs": 1.0,
        "max_iter_epochs": 2.0,
        "executor": "serial",
        "solver": SolverOptions(lr=0.05, batch_size=32),
        "seed": 3,
    }
    return SurrogateHPOConfig(**{**base, **overrides})


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    """A record without its timings / process ids (which differ between identical runs)."""
    out = {k: v for k, v in record.items() if "seconds" not in k and k != "candidates"}
    out["candidates"] = [
        {k: v for k, v in c.items() if not any(t in k for t in TIMING)}
        for c in record["candidates"]
    ]
    return out


# ----------------------------------------------------------------------------- config
def test_config_errors_are_one_line() -> None:
    for data_, field in (
        ({"optimizer": "de", "popsize": 3}, "surrogate.popsize"),
        ({"optimizer": "cma"}, "surrogate.optimizer"),
        ({"search": {"lam_bounds": [1e-2, 1e-6]}}, "surrogate.search.lam_bounds"),
        ({"search": {"p_bounds": [0.5, 0.5]}}, "surrogate.search.p_bounds"),
        ({"search": {"bounds": [0, 1]}}, "surrogate.search.bounds"),
        ({"ni_epochs": 2, "max_iter_epochs": 1}, "surrogate.max_iter_epochs"),
        ({"ni_epochs": 0}, "surrogate.ni_epochs"),
        ({"solver": {"lr": -1}}, "surrogate.solver.lr"),
        ({"evaluate_on": "both"}, "surrogate.evaluate_on"),
        ({"conv": [50, 4]}, "surrogate.conv"),
        ({"initial": {"p_z": 1.5}}, "surrogate.initial.p_z"),
        ({"popsize_": 6}, "surrogate.popsize_"),
    ):
        with pytest.raises(ConfigError) as err:
            SurrogateHPOConfig.from_dict(data_)
        assert err.value.field == field, data_
        assert "\n" not in str(err.value)
    cfg = SurrogateHPOConfig.from_dict(
        {"optimizer": "de", "search": {"lam_bounds": [1e-7, 1e-3], "active": ["p_z", "p_x"]}}
    )
    assert cfg.search.lam_bounds == (1e-7, 1e-3) and cfg.search.active == ("p_z", "p_x")
    assert SurrogateHPOConfig(ni_epochs=2, max_iter_epochs=9).iterations == 4


def test_model_without_two_fc_head_is_rejected(data: DataSplits) -> None:
    with pytest.raises(ConfigError) as err:
        SurrogateHPO(tiny(model="mlp"), data)
    assert err.value.field == "model.name" and "two-FC head" in str(err.value)


# ----------------------------------------------------------------------------- resume
def test_state_dict_round_trip_gives_an_identical_next_iteration(data: DataSplits) -> None:
    cfg = tiny(optimizer="de", max_iter_epochs=3.0)
    straight = SurrogateHPO(cfg, data)
    first = straight.iteration()
    buf = io.BytesIO()
    torch.save(straight.state_dict(), buf)
    buf.seek(0)
    resumed = SurrogateHPO(cfg, data)
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    a, b = straight.iteration(), resumed.iteration()
    assert comparable(a) == comparable(b)
    assert a["iteration"] == 1 and comparable(a) != comparable(first)
    sa, sb = straight.state_dict(), resumed.state_dict()
    for key, tensor in sa["fused"].items():
        assert torch.equal(tensor, sb["fused"][key]), key
    assert [comparable(r) for r in sa["history"]] == [comparable(r) for r in sb["history"]]


def test_records_are_flat_numbers_plus_candidates(data: DataSplits) -> None:
    cfg = tiny(optimizer="pso", popsize=4)
    algo = SurrogateHPO(cfg, data)
    records = algo.run()
    assert algo.done and len(records) == 2
    with pytest.raises(RuntimeError):
        algo.iteration()
    for t, rec in enumerate(records):
        flat = {k: v for k, v in rec.items() if k != "candidates"}
        assert all(isinstance(v, float) and math.isfinite(v) for v in flat.values()), flat
        assert rec["iteration"] == t and rec["epoch"] == t + 1
        assert {f"best/{n}" for n in NAMES} | {f"trained/{n}" for n in NAMES} <= set(rec)
        assert len(rec["candidates"]) == 4
        objectives = [c["objective"] for c in rec["candidates"]]
        assert rec["best_objective"] == max(objectives)
        for c in rec["candidates"]:
            assert all(1e-8 <= c[n] <= 1e-2 for n in LAMBDAS)
            assert all(0.2 <= c[n] <= 0.8 for n in DROPOUTS)
            assert c["objective"] == pytest.approx(c["accuracy"] - 1e-5 * c["l1_l2"])
        assert rec["surrogate_runs"] == 4 and rec["ray_tasks"] == 0
    # t = 0: previous = current = the centre (1e-5 / 0.5), so the original trains once
    assert records[0]["original_runs"] == 1 and records[1]["original_runs"] == 2
    assert records[0]["trained/p_z"] == 0.5 and records[0]["trained/lam_z"] == pytest.approx(1e-5)
    assert records[1]["total/original_runs"] == 3 and records[1]["total/surrogate_runs"] == 8
    assert records[1]["lr"] < records[0]["lr"] == 0.05  # decayed between iterations
    result = algo.result()
    assert result["original_test_accuracy"] == records[-1]["original_test_accuracy"]
    assert result["flops_ratio"] > 1


# ----------------------------------------------------------------------------- comparators
def test_tied_grid_matches_section_3_4() -> None:
    grid = tied_grid()
    assert len(grid) == 64
    lams = sorted({h.lam_z for h in grid})
    ps = sorted({h.p_z for h in grid})
    assert len(lams) == len(ps) == 8
    assert lams[0] == pytest.approx(1e-8) and lams[-1] == pytest.approx(1e-2)
    assert ps[0] == pytest.approx(0.2) and ps[-1] == pytest.approx(0.8)
    for h in grid:
        assert (
            len({getattr(h, n) for n in LAMBDAS}) == 1
            and len({getattr(h, n) for n in DROPOUTS}) == 1
        )
    resnet20_style = tied_grid(names=("p_z", "p_v", "lam_z", "lam_v"))
    assert all(h.p_x == h.lam_w == 0 for h in resnet20_style)
    with pytest.raises(ConfigError):
        tied_grid(n_p=0)
    with pytest.raises(ConfigError):
        tied_grid(p_range=(0.8, 0.2))


def test_grid_and_fixed_settings_train_the_original(data: DataSplits) -> None:
    cfg = tiny()
    fixed = train_original(cfg, data, HypParaSet.paper_default())
    assert fixed["original_epochs"] == 2 and 0 <= fixed["test_accuracy"] <= 1
    points = [HypParaSet(), HypParaSet.paper_default()]
    grid = run_grid(cfg, data, points, executor=SerialExecutor())
    assert grid["original_runs"] == 2 and len(grid["points"]) == 2
    assert grid["best"]["val_accuracy"] == max(p["val_accuracy"] for p in grid["points"])
    assert grid["points"][1]["test_accuracy"] == fixed["test_accuracy"]  # deterministic


def test_ea_without_surrogate_evaluates_candidates_on_the_original(data: DataSplits) -> None:
    algo = SurrogateHPO(ea_config(tiny(optimizer="de", popsize=4, max_iter_epochs=1.0)), data)
    assert algo.fused.surrogate is None and algo.flops["ratio"] == 1
    rec = algo.iteration()
    assert rec["original_runs"] == 1 + 4 and rec["surrogate_runs"] == 0
    assert "surrogate_val_accuracy" not in rec


def test_ga_on_the_surrogate_is_table_5s_ea_at_algorithm_1s_cost(data: DataSplits) -> None:
    """Table 5's "EA-based" row: Algorithm 1 with a GA (tournament 2) in place of PSO, the same
    2·T_ori + N·T_sur; ``ea_original`` (candidates on the original) is another method."""
    algo = SurrogateHPO(tiny(optimizer="ga", popsize=4, max_iter_epochs=1.0), data)
    assert algo.search.options.tournament == 2 and algo.fused.surrogate is not None
    rec = algo.iteration()
    assert rec["surrogate_runs"] == 4 and rec["original_runs"] == 1


def test_resnet20_runs_algorithm_1_on_its_four_hyperparameters() -> None:
    """ResNet20's one FC layer: (p_z, p_V, λ_z, λ_V) (Table 2), its surrogate (64, 6, 4, 1)."""
    data = load_dataset("digits", train_size=60, seed=0)  # 8×8: the conv is derived
    space = SearchSpace(active=("lam_z", "lam_v", "p_z", "p_v"))
    cfg = tiny(model="resnet20", model_options={"blocks": 1}, search=space, popsize=2,
               max_iter_epochs=1.0)  # fmt: skip
    rec = SurrogateHPO(cfg, data).run()
    assert len(rec) == 1 and all(c["p_x"] == c["lam_w"] == 0 for c in rec[0]["candidates"])
    with pytest.raises(ConfigError) as err:  # the default box searches x and W too
        SurrogateHPO(tiny(model="resnet20", model_options={"blocks": 1}), data)
    assert "one FC layer" in str(err.value)


def test_pretrained_state_dict_starts_every_original(data: DataSplits, tmp_path: Any) -> None:
    """Algorithm 1 line 4: fine-tune a given network; weights only, matching tensors loaded."""
    from raytune_periodic.surrogate.original import build_original, load_pretrained

    donor = build_original(tiny(seed=11), data, None)[0]
    state = {k: v for k, v in donor.state_dict().items() if not k.startswith("head.fc2")}
    path = tmp_path / "face.pt"
    torch.save(state, path)
    cfg = SurrogateHPOConfig.from_dict({**vars(tiny()), "pretrained": str(path)})
    model = build_original(cfg, data, None)[0]
    plain = build_original(tiny(), data, None)[0]
    assert torch.equal(model.head.fc1.weight, donor.head.fc1.weight)
    assert torch.equal(model.head.fc2.weight, plain.head.fc2.weight)  # not in the file: seeded
    algo = SurrogateHPO(cfg, data)
    assert torch.equal(algo.fused.original.head.fc1.weight, donor.head.fc1.weight)
    with pytest.raises(ConfigError) as err:
        load_pretrained(plain, path, strict=True)
    assert "missing" in str(err.value) and "\n" not in str(err.value)
    torch.save({"model": donor}, tmp_path / "pickled.pt")  # a pickled module: refused
    with pytest.raises(ConfigError) as err:
        load_pretrained(plain, tmp_path / "pickled.pt")
    assert err.value.field == "surrogate.pretrained" and "weights-only" in str(err.value)
    with pytest.raises(ConfigError) as err:
        SurrogateHPOConfig.from_dict({"pretrained": str(tmp_path / "missing.pt")})
    assert err.value.field == "surrogate.pretrained"


def test_x_before_activation_reaches_the_heads(data: DataSplits) -> None:
    algo = SurrogateHPO(tiny(), data)
    assert algo.fused.head_o.x_before_activation and algo.fused.head_s.x_before_activation
    assert not SurrogateHPO(tiny(x_before_activation=False), data).fused.head_o.x_before_activation


# ----------------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray session is already running in this process")
    temp = tempfile.mkdtemp(prefix="rtp-sur-", dir="/tmp")  # own cluster, short socket paths
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=temp,
        log_to_driver=False,
    )
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.integration
def test_algorithm1_end_to_end_under_ray(local_ray: Any, data: DataSplits) -> None:
    from raytune_periodic.surrogate import RayExecutor

    cfg = tiny(optimizer="pso", executor="auto", cpus_per_candidate=0.5)
    algo = SurrogateHPO(cfg, data)
    assert isinstance(algo.executor, RayExecutor) and algo.executor.num_cpus == 0.5
    records = algo.run()
    assert len(records) == 2
    for rec in records:
        assert rec["ray_tasks"] == 6  # the whole population ran as Ray tasks
        tasks = [c["task_id"] for c in rec["candidates"]]
        assert all(tasks) and len(set(tasks)) == 6
        assert all(c["pid"] != os.getpid() and c["executor"] == "ray" for c in rec["candidates"])
        assert math.isfinite(rec["best_objective"]) and rec["cpu_seconds"] > 0
    # the same run in-process gives the same numbers: candidates are pure functions of inputs
    serial = SurrogateHPO(tiny(optimizer="pso", executor="serial"), data).run()
    assert [comparable(r) for r in serial] == [{**comparable(r), "ray_tasks": 0.0} for r in records]
    _ = SearchSpace  # imported for readers: the default box is SearchSpace()
