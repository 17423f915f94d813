"""Strict validation before Ray starts: every bad input is one line naming the key."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from raytune_periodic.config import load_config, read_yaml, validate_config
from raytune_periodic.errors import ConfigError

GOOD: dict[str, Any] = {
    "name": "strict",
    "seeds": [0],
    "budget": {"periods": 4, "trials": 1},
    "base": {
        "dataset": {"name": "digits", "train_size": 100},
        "model": {"name": "mlp", "hidden": [16]},
        "regularizers": [{"kind": "dropout", "where": "head"}],
        "train": {"period_length": 2, "val_batches": 1},
    },
    "methods": {"BL": {"controller": {"type": "constant", "values": {"dropout": 0.0}}}},
}


def with_(path: str, value: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(GOOD)
    node = cfg
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    return cfg


BAD = [
    ("string false is no boolean", with_("tune", {"reuse_actors": "false"}), "tune.reuse_actors"),
    ("budget of the wrong type", with_("budget", 5), "budget"),
    ("a null section", with_("tune", None), "tune"),
    ("name with ..", with_("name", "a..b"), "name"),
    ("name with a NUL", with_("name", "a\x00b"), "name"),
    ("name with a leading dot", with_("name", ".hidden"), "name"),
    ("name too long", with_("name", "x" * 101), "name"),
    ("method name with a slash", {**GOOD, "methods": {"a/b": GOOD["methods"]["BL"]}},
     "methods.a/b"),
    ("absurd periods", with_("budget.periods", 10**9), "budget.periods"),
    ("absurd period length", with_("base.train.period_length", 10**9), "base.train.period_length"),
    ("bool as a number", with_("budget.trials", True), "budget.trials"),
    ("seed list of strings", with_("seeds", ["0"]), "seeds[0]"),
    ("val_f1 metric without val batches",
     {**with_("base.train.val_batches", 0), "tune": {"metric": "val_f1"}},
     "methods.BL.base.train.val_batches"),
    ("constant objective",
     with_("base.train", {"period_length": 2, "val_batches": 0, "eval_every_epochs": 0}),
     "methods.BL.base.train"),
    ("empty validation split", with_("base.dataset", {"name": "digits", "val_fraction": 0.0}),
     "base.dataset.options"),
    ("a model too large to allocate", with_("base.model", {"name": "mlp", "hidden": [10**6] * 3}),
     "base.model.name"),
    ("dataset root that is a number", with_("base.dataset", {"name": "cifar10", "root": 5}),
     "base.dataset.options.root"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "cfg", "field"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_naming_the_key(case: str, cfg: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert err.value.field == field, f"{case}: {err.value}"
    assert "\n" not in str(err.value)


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("name: a\nseeds: [0]\nname: b\n")
    with pytest.raises(ConfigError, match="duplicate key 'name' at line 3"):
        read_yaml(path)


def test_merge_keys_may_override(tmp_path: Path) -> None:
    path = tmp_path / "merge.yaml"
    path.write_text("a: &x {p: 1, q: 2}\nb:\n  <<: *x\n  q: 3\n")
    assert read_yaml(path)["b"] == {"p": 1, "q": 3}


def test_non_utf8_and_deep_nesting_are_refused(tmp_path: Path) -> None:
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"name: \xff\xfe secret-content\n")
    with pytest.raises(ConfigError, match="not UTF-8") as err:
        read_yaml(binary)
    assert "secret-content" not in str(err.value)  # no file content echoed
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: x\nmethods: " + "[" * 200 + "]" * 200 + "\n")
    with pytest.raises(ConfigError, match="nested"):
        read_yaml(deep)


def test_a_plugin_builder_that_raises_is_one_line(tmp_path: Path, monkeypatch: Any) -> None:
    code = "def build(input_shape, num_classes):\n    raise ValueError('my net is broken\\nx')\n"
    (tmp_path / "badnets.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="ValueError: my net is broken$") as err:
        validate_config(with_("base.model", {"name": "badnets:build"}))
    assert err.value.field == "base"


def test_cli_exit_2_before_ray(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: ok\nbudget: {periods: 2}\nbudget: {periods: 3}\nmethods: {}\n")
    out = subprocess.run(
        [sys.executable, "-m", "raytune_periodic.cli", "run", str(path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "duplicate key 'budget'" in out.stderr
    assert not (tmp_path / "runs").exists()  # nothing started, nothing written


def test_the_good_config_is_valid() -> None:
    assert load_config  # the public loader exists
    cfg = validate_config(GOOD)
    assert cfg.plan["BL"].bounds == {"dropout": (0.0, 1.0)}
