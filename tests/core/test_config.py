"""Experiment configs: 20+ broken configs, each a one-line error naming the field, exit 2."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from raytune_periodic.config import apply_overrides, load_config, validate_config
from raytune_periodic.errors import ConfigError

GOOD: dict[str, Any] = {
    "name": "t",
    "seeds": [0, 1],
    "budget": {"periods": 6, "trials": 2},
    "base": {
        "dataset": {"name": "digits", "train_size": 200},
        "model": {"name": "mlp", "hidden": [16]},
        "regularizers": [{"kind": "dropout", "where": "head"}],
        "train": {"period_length": 5},
    },
    "methods": {
        "BL": {"controller": {"type": "constant", "values": {"dropout": 0.0}}},
        "D": {"search": "grid", "grid": {"dropout": [0.2, 0.5]}},
        "PD": {"controller": {"type": "periodic_random", "ranges": {"dropout": [0, 0.7]}}},
        "PBT": {"search": "pbt", "space": {"dropout": [0, 0.8]}, "perturbation_interval": 2},
        "TPE": {"search": "optuna", "space": {"dropout": {"low": 0.01, "high": 0.8, "log": True}}},
    },
}


def _set(path: str, value: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(GOOD)
    node = cfg
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[k]
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return cfg


_DELETE = object()

BROKEN = [
    ("unknown top key", _set("bogus", 1), "bogus"),
    ("missing name", _set("name", _DELETE), "name"),
    ("name with slash", _set("name", "a/b"), "name"),
    ("seeds not a list", _set("seeds", 3), "seeds"),
    ("negative seed", _set("seeds", [0, -1]), "seeds[1]"),
    ("duplicate seeds", _set("seeds", [1, 1]), "seeds"),
    ("zero periods", _set("budget.periods", 0), "budget.periods"),
    ("periods as string", _set("budget.periods", "ten"), "budget.periods"),
    ("unknown budget key", _set("budget.epochs", 3), "budget.epochs"),
    ("zero period length", _set("base.train.period_length", 0), "base.train.period_length"),
    ("negative period length", _set("base.train.period_length", -3), "base.train.period_length"),
    ("negative lr", _set("base.train.lr", -0.1), "base.train.lr"),
    ("unknown train key", _set("base.train.momentum", 0.9), "base.train.momentum"),
    ("unknown model", _set("base.model", {"name": "vgg"}), "base.model.name"),
    ("unknown dataset", _set("base.dataset", {"name": "svhn"}), "base.dataset.name"),
    (
        "dataset path missing",
        _set("base.dataset", {"name": "cifar10", "root": "/no/such/dir"}),
        "base.dataset.options.root",
    ),
    (
        "bad dataset option",
        _set("base.dataset.label_noise", 1.5),
        "base.dataset.options.label_noise",
    ),
    (
        "dropout rate > 1",
        _set("base.regularizers", [{"kind": "dropout", "value": 1.2}]),
        "base.regularizers[0].value",
    ),
    (
        "negative std",
        _set("base.regularizers", [{"kind": "gaussian_noise", "value": -1}]),
        "base.regularizers[0].value",
    ),
    (
        "unknown regularizer",
        _set("base.regularizers", [{"kind": "dropblock"}]),
        "base.regularizers[0].kind",
    ),
    ("no methods", _set("methods", {}), "methods"),
    ("method without controller", _set("methods.BL", {"trials": 3}), "methods.BL"),
    ("unknown search", _set("methods.D", {"search": "hyperband"}), "methods.D.search"),
    (
        "unknown controller",
        _set("methods.BL.controller", {"type": "bandit"}),
        "methods.BL.controller.type",
    ),
    (
        "controller range outside [0,1]",
        _set("methods.PD.controller.ranges", {"dropout": [0.2, 1.4]}),
        "methods.PD.controller.ranges.dropout",
    ),
    (
        "controller range reversed",
        _set("methods.PD.controller.ranges", {"dropout": [0.6, 0.1]}),
        "methods.PD.controller.ranges.dropout",
    ),
    (
        "controller unknown group",
        _set("methods.BL.controller.values", {"noise": 0.1}),
        "methods.BL.controller.noise",
    ),
    ("grid size != trials", _set("methods.D.grid", {"dropout": [0.1, 0.2, 0.3]}), "methods.D.grid"),
    (
        "grid value out of range",
        _set("methods.D.grid", {"dropout": [0.1, 1.3]}),
        "methods.D.grid.dropout",
    ),
    (
        "space low >= high",
        _set("methods.PBT.space", {"dropout": [0.5, 0.5]}),
        "methods.PBT.space.dropout",
    ),
    (
        "space unknown group",
        _set("methods.PBT.space", {"noise": [0, 1]}),
        "methods.PBT.space.noise",
    ),
    (
        "log space from zero",
        _set("methods.TPE.space", {"dropout": {"low": 0, "high": 0.5, "log": True}}),
        "methods.TPE.space.dropout",
    ),
    (
        "pbt interval zero",
        _set("methods.PBT.perturbation_interval", 0),
        "methods.PBT.perturbation_interval",
    ),
    ("unknown method key", _set("methods.PBT.population", 8), "methods.PBT.population"),
    ("cpu zero", _set("tune", {"resources": {"cpu": 0}}), "tune.resources.cpu"),
    ("negative gpu", _set("tune", {"resources": {"cpu": 1, "gpu": -1}}), "tune.resources.gpu"),
    (
        "iteration_periods not dividing",
        _set("tune", {"iteration_periods": 4}),
        "tune.iteration_periods",
    ),
    ("unknown metric", _set("tune", {"metric": "accuracy"}), "tune.metric"),
    ("reuse_actors not a bool", _set("tune", {"reuse_actors": "yes"}), "tune.reuse_actors"),
    ("tensorboard not a bool", _set("tune", {"tensorboard": 1}), "tune.tensorboard"),
    ("unknown mlflow key", _set("mlflow", {"uri": "x"}), "mlflow.uri"),
    (
        "method base: unknown model",
        _set("methods.BL.base", {"model": {"name": "vgg"}}),
        "methods.BL.base.model.name",
    ),
    (
        "method base: bad regularizer value",
        _set("methods.BL.base", {"regularizers": [{"kind": "dropout", "value": 2}]}),
        "methods.BL.base.regularizers[0].value",
    ),
    (
        "method base: controller group missing in variant",
        _set("methods.BL.base", {"regularizers": []}),
        "methods.BL.controller.dropout",
    ),
]


def test_good_config_validates() -> None:
    cfg = validate_config(GOOD)
    assert cfg.name == "t" and cfg.trials == 2 and list(cfg.methods) == list(GOOD["methods"])
    assert cfg.raw["tune"]["iteration_periods"] == "auto"  # defaults resolved


@pytest.mark.parametrize(("case", "cfg", "field"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_configs_fail_with_one_line_naming_the_field(
    case: str, cfg: dict, field: str
) -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert err.value.field == field, f"{case}: {err.value}"
    assert "\n" not in str(err.value)


def test_method_base_trains_a_variant_of_base() -> None:
    from raytune_periodic.config import method_base

    cfg = copy.deepcopy(GOOD)
    cfg["methods"]["BN"] = {
        "base": {"model": {"name": "mlp", "batchnorm": True}},
        "controller": {"type": "constant"},
    }
    cfg["methods"]["L2"] = {
        "base": {"regularizers": [{"kind": "l2", "where": "model", "value": 0.001}]},
        "controller": {"type": "constant"},
    }
    validated = validate_config(cfg)
    bn = method_base(validated.base, validated.methods["BN"])
    assert bn["model"] == {"name": "mlp", "batchnorm": True}  # another model: fresh options
    assert bn["dataset"] == GOOD["base"]["dataset"] and bn["train"] == GOOD["base"]["train"]
    l2 = method_base(validated.base, validated.methods["L2"])
    assert l2["regularizers"] == [{"kind": "l2", "where": "model", "value": 0.001}]  # replaced
    assert l2["model"] == GOOD["base"]["model"]


def test_overrides_parse_yaml_values() -> None:
    out = apply_overrides(GOOD, ["budget.periods=12", "base.model.hidden=[8, 8]", "tune.x.y=true"])
    assert out["budget"]["periods"] == 12
    assert out["base"]["model"]["hidden"] == [8, 8]
    assert out["tune"]["x"]["y"] is True
    assert GOOD["budget"]["periods"] == 6  # the input is not modified
    with pytest.raises(ConfigError, match="--set"):
        apply_overrides(GOOD, ["budget.periods"])


def test_load_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "raytune_periodic.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_validate_and_bad_config_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(GOOD))
    ok = _cli("validate", str(good))
    assert ok.returncode == 0, ok.stderr
    assert "5 methods x 2 seeds (2+2+2+2+2 trials per seed) x 6 periods = 20 trials" in ok.stdout
    bad = _cli("validate", str(good), "--set", "base.train.period_length=0")
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "base.train.period_length" in lines[0]
    # run refuses a bad config before Ray starts (fast, nothing written)
    run = _cli(
        "run",
        str(good),
        "--set",
        "methods.D.grid.dropout=[0.1]",
        "--storage-path",
        str(tmp_path / "ray"),
    )
    assert run.returncode == 2 and "methods.D.grid" in run.stderr
    assert not (tmp_path / "ray").exists()


def test_cli_list_shows_registries() -> None:
    out = _cli("list")
    assert out.returncode == 0
    for word in ("mlp", "resnet18", "digits", "fer2013", "sign_flip", "periodic_random", "pbt"):
        assert word in out.stdout
