"""Every paper config (``configs/paper/*.yaml``) validates and runs end to end with ``--smoke``.

``--smoke`` writes tiny random data in each dataset's real on-disk format and shrinks the run
(``raytune_periodic.smoke``). One config runs through the CLI in a subprocess (its own Ray); the
others run in-process under one shared local Ray, each method checked in the SQLite MLflow: trial
runs under the method, every period logged once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from raytune_periodic.cli import main
from raytune_periodic.config import read_yaml, validate_config
from raytune_periodic.smoke import SMOKE_PERIODS, smoke_config

REPO = Path(__file__).resolve().parents[2]
PAPER = sorted((REPO / "configs" / "paper").glob("*.yaml"))
CLI_CONFIG = "iris_comparison.yaml"  # the cheapest one runs through the CLI subprocess
NAMES = [p.name for p in PAPER]


def test_the_paper_configs_are_there() -> None:
    expected = {
        "periodic_table1_cifar100_resnet34.yaml",
        "periodic_table1_fer2013_resnet18.yaml",
        "periodic_table1_affectnet_resnet34.yaml",
        "noise_injection_table1_affectnet_resnet18.yaml",
        "tiny_imagenet_comparison.yaml",
        "iris_comparison.yaml",
        "surrogate_table3_fer2013_lenet.yaml",
        "surrogate_table4_fer2013_lenet.yaml",
        "surrogate_table5_fer2013_resnet20.yaml",
    }
    assert expected <= set(NAMES)


@pytest.mark.parametrize("path", PAPER, ids=NAMES)
def test_validate_smoke(path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(path), "--smoke", "--smoke-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("smoke mode:") and str(tmp_path) in out[0]
    raw = read_yaml(path)
    assert out[-1].startswith(f"ok: {raw['name']}-smoke: {len(raw['methods'])} methods x 1 seeds (")


def test_smoke_keeps_methods_and_shrinks(tmp_path: Path) -> None:
    for path in PAPER:
        raw = read_yaml(path)
        small = smoke_config(raw, tmp_path)
        assert list(small["methods"]) == list(raw["methods"])
        assert small["seeds"] == raw.get("seeds", [0])[:1]
        assert small["budget"]["periods"] == SMOKE_PERIODS
        assert small["tune"]["resources"] == {"cpu": 1, "gpu": 0}
        ds = small["base"]["dataset"]
        if "root" in raw["base"]["dataset"]:
            assert Path(ds["root"]).exists() and str(tmp_path) in ds["root"]
        assert ds.get("size", 64) <= 64
        for entry in small["methods"].values():
            ctrl = entry.get("controller", {})
            if ctrl.get("type") == "ppo":
                assert ctrl["train_batch_size"] <= SMOKE_PERIODS
        validate_config(small, check_data=False)


def test_smoke_real_formats(tmp_path: Path) -> None:
    """The generated data is what the real loaders read: Tiny-ImageNet's annotations file etc."""
    raw = read_yaml(REPO / "configs" / "paper" / "tiny_imagenet_comparison.yaml")
    root = Path(smoke_config(raw, tmp_path)["base"]["dataset"]["root"])
    lines = (root / "val" / "val_annotations.txt").read_text().splitlines()
    assert len(lines) == 25 * 2 and lines[0].split("\t")[1] in (root / "wnids.txt").read_text()
    assert len(list((root / "train").iterdir())) == 25
    cifar = smoke_config(
        read_yaml(REPO / "configs" / "paper" / "periodic_table1_cifar100_resnet34.yaml"), tmp_path
    )["base"]["dataset"]
    assert (Path(cifar["root"]) / "cifar-100-python" / "meta").is_file()
    assert cifar["verify"] is False


def test_placeholder_root_fails_without_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    path = REPO / "configs" / "paper" / "periodic_table1_cifar100_resnet34.yaml"
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "base.dataset.options.root" in err


def test_smoke_module_is_core_only() -> None:
    code = (
        "import sys, raytune_periodic.smoke; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'ray', 'mlflow', 'optuna', 'nevergrad', 'gymnasium', 'pandas', 'matplotlib'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ end to end (real Ray)


def _check_mlflow(uri: str, raw: dict[str, Any]) -> None:
    """Each method of the smoke config has a method run and finished trial runs, all periods."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    name = raw["mlflow"].get("experiment") if raw.get("mlflow") else None
    exp = client.get_experiment_by_name(name or raw["name"])
    assert exp is not None, f"no MLflow experiment {raw['name']}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_kind: dict[str, list[Any]] = {}
    for r in runs:
        by_kind.setdefault(r.data.tags.get("rp.kind", ""), []).append(r)
    methods = {r.data.tags["rp.method"]: r for r in by_kind["method"]}
    assert set(methods) == set(raw["methods"])
    for mname, mrun in methods.items():
        trials = [r for r in by_kind["trial"] if r.data.tags["rp.method"] == mname]
        assert trials, f"{raw['name']}: method {mname} has no trial run"
        for r in trials:
            assert r.data.tags["mlflow.parentRunId"] == mrun.info.run_id
            assert r.data.tags["rp.status"] == "ok", f"{raw['name']}/{mname}: {r.data.tags}"
            assert r.info.status == "FINISHED"
            steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_f1")]
            assert steps == list(range(SMOKE_PERIODS)), f"{raw['name']}/{mname}: {steps}"


_SMOKED: set[str] = set()  #: method blocks already smoke-run by an earlier config this session


def _first_runs_only(raw: dict[str, Any]) -> dict[str, Any]:
    """Drop the methods whose exact block an earlier config already smoke-runs, except the
    config's first two (its dataset and model still run under Tune): the three Table 1 configs
    share all nine method blocks, and each method costs ~8 s of Tune start-up."""
    methods = raw["methods"]
    keys = {m: json.dumps(block, sort_keys=True, default=str) for m, block in methods.items()}
    keep = [m for i, m in enumerate(methods) if i < 2 or keys[m] not in _SMOKED]
    _SMOKED.update(keys.values())
    return {**raw, "methods": {m: methods[m] for m in keep}}


@pytest.fixture(scope="module")
def in_process(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> dict[str, Any]:
    """The configs this session selected (``-k``), smoke-run in-process under one local Ray
    (2 CPUs); every config but ``CLI_CONFIG`` when none is deselected.

    Two configs run at a time (threads; each its own SQLite file, so no write contention): a smoke
    trial is mostly Tune/actor start-up (~8 s per method on 2 CPUs), not training.
    """
    import ray

    from raytune_periodic.tuning.runner import run_experiment

    tmp = tmp_path_factory.mktemp("paper")
    selected = {
        item.callspec.params["name"]
        for item in request.session.items
        if getattr(item, "originalname", "") == "test_smoke_run_in_process"
    }
    todo = [p for p in PAPER if p.name != CLI_CONFIG and p.name in selected]
    raws = {p.name: _first_runs_only(smoke_config(read_yaml(p), tmp / "data")) for p in todo}
    uris = {name: f"sqlite:///{tmp / (name + '.db')}" for name in raws}
    seconds: dict[str, float] = {}

    def run(name: str) -> None:
        start = time.perf_counter()
        raw = dict(raws[name], tune={**raws[name]["tune"], "verbose": 0})
        run_experiment(validate_config(raw), storage_path=str(tmp / "ray"), mlflow_uri=uris[name])
        seconds[name] = time.perf_counter() - start

    start = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            for future in [pool.submit(run, name) for name in raws]:
                future.result()
    finally:
        ray.shutdown()
    total = time.perf_counter() - start
    print(f"in-process smoke runs: {total:.0f} s;", {k: round(v) for k, v in seconds.items()})
    return {"uris": uris, "raws": raws}


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in NAMES if n != CLI_CONFIG])
def test_smoke_run_in_process(in_process: dict[str, Any], name: str) -> None:
    _check_mlflow(in_process["uris"][name], in_process["raws"][name])


@pytest.mark.integration
@pytest.mark.slow
def test_smoke_run_cli(tmp_path: Path) -> None:
    path = REPO / "configs" / "paper" / CLI_CONFIG
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "raytune_periodic.cli", "run", str(path), "--smoke"]
    cmd += ["--smoke-dir", str(tmp_path / "data"), "--mlflow-uri", uri]
    cmd += ["--storage-path", str(tmp_path / "ray"), "--set", "tune.num_cpus=2"]
    cmd += ["--set", "tune.verbose=0"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("smoke mode:")
    _check_mlflow(uri, smoke_config(read_yaml(path), tmp_path / "data"))
