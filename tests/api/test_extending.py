"""Every example of docs/EXTENDING.md, run: the plugin modules are written into a throwaway
package outside the repo, named by import path in one config, validated and trained."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "EXTENDING.md"
BLOCK = re.compile(r"```python\n# example: (\S+)\n(.*?)```", re.S)


def examples() -> dict[str, str]:
    found = dict(BLOCK.findall(DOC.read_text()))
    assert len(found) == 7, sorted(found)
    return found


@pytest.fixture
def mypkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, code in examples().items():
        if name.startswith("mypkg/"):
            path = tmp_path / name
            path.parent.mkdir(exist_ok=True)
            path.write_text(code)
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def config(methods: dict[str, Any], trials: int = 1) -> dict[str, Any]:
    return {
        "name": "extending",
        "budget": {"periods": 4, "trials": trials},
        "base": {
            "dataset": {"name": "mypkg.wine:load_wine_splits"},
            "model": {"name": "mypkg.nets:build_wide_mlp", "width": 16},
            "regularizers": [
                {"kind": "dropout", "where": "head"},
                {"kind": "mypkg.regs:MultiplicativeNoise", "where": "head", "name": "mnoise"},
            ],
            "train": {"period_length": 3, "batch_size": 16, "val_batches": 1},
        },
        "methods": methods,
    }


def engine_for(cfg: Any, method: str) -> Any:
    from raytune_periodic.training import build_engine
    from raytune_periodic.tuning.tuners import trial_rp

    plan = cfg.plan[method]
    rp = {**trial_rp(cfg, plan), "seed": 0}
    from raytune_periodic.training.spec import trial_spec

    return build_engine(trial_spec({"rp": rp}))


def test_model_dataset_regularizer_and_controller_examples(mypkg: Path) -> None:
    import raytune_periodic as rp

    cfg = rp.load(config({"ANNEAL": {"controller": {"type": "mypkg.ctrl:Annealed", "start": 0.6}}}))
    assert set(cfg.plugins) == {"datasets", "models", "regularizers", "controllers"}
    engine = engine_for(cfg, "ANNEAL")
    assert engine.data.name == "wine" and engine.data.input_shape == (13,)
    records = engine.run(4)
    assert [r.values["dropout"] for r in records] == pytest.approx([0.6, 0.45, 0.3, 0.15])
    assert set(records[0].values) == {"dropout", "mnoise"}
    assert all(r.status == "ok" for r in records)


def test_search_method_example(mypkg: Path) -> None:
    import raytune_periodic as rp
    from raytune_periodic.errors import ConfigError

    lin = {"search": "mypkg.methods:Linspace", "group": "dropout", "range": [0.0, 0.6]}
    cfg = rp.load(config({"LIN": lin}, trials=3))
    method = cfg.plan["LIN"].method
    assert method.points() == pytest.approx([0.0, 0.3, 0.6])
    space = method.param_space({"spec": {}}, [0])
    assert space["values"]["dropout"] == {"grid_search": pytest.approx([0.0, 0.3, 0.6])}
    assert cfg.plugins["methods"] == {"mypkg.methods:Linspace": "mypkg.methods:Linspace"}
    bad = {**lin, "range": [0.0, 1.5]}
    with pytest.raises(ConfigError, match="outside valid") as err:
        rp.load(config({"LIN": bad}, trials=3))
    assert err.value.field == "methods.LIN.range"


def test_reward_example(mypkg: Path) -> None:
    import raytune_periodic as rp

    ppo = {"type": "ppo", "groups": {"dropout": [0.0, 0.5]},
           "reward": "mypkg.rewards:ValLossReward", "train_batch_size": 2, "minibatch_size": 2,
           "num_epochs": 1}  # fmt: skip
    cfg = rp.load(config({"PDRL": {"controller": ppo}}))
    assert cfg.plugins["rewards"] == {"mypkg.rewards:ValLossReward": "mypkg.rewards:ValLossReward"}
    engine = engine_for(cfg, "PDRL")
    try:
        for rec in engine.run(3):
            assert rec.extra["ppo/reward"] == pytest.approx(-rec.val_loss)
    finally:
        engine.controller.close()


def test_api_example_runs_from_the_repo(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.chdir(DOC.parents[1])
    exec(compile(examples()["api"], "EXTENDING.md", "exec"), {})  # noqa: S102 - our own doc
    assert "quickstart: 4 methods x 1 seeds" in capsys.readouterr().out
