"""The README's Python example, run as written (from a copy of the repo's configs, so its
relative paths hold) on a real local Ray and SQLite MLflow."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_readme_python_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    import ray

    block = re.search(
        r"### From Python.*?```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S
    )
    assert block is not None
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    scope: dict[str, Any] = {}
    try:
        exec(compile(block.group(1), "README.md", "exec"), scope)  # noqa: S102 - our own doc
    finally:
        ray.shutdown()
    assert scope["outcome"].ok
    table = scope["table"]
    assert sorted(table["method"]) == ["BL", "D", "PBT", "PD"]
    assert (table["n_trials"] == 2).all()  # --smoke: 2 trials per method (PBT's population)
    assert "sel_test_f1_mean" in capsys.readouterr().out
