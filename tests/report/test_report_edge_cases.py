"""compare on awkward stores: an errored trial, a diverged trial, a duplicated trial run, a
method with a single seed. Each gets a clear message; nothing crashes; the table is written."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from report_store import Trial

from raytune_periodic.report import compare_experiment, compare_frame, load_experiment


def _trials() -> list[Trial]:
    trials = []
    for seed in range(3):
        trials.append(Trial("BL", f"bl-{seed}", seed, 0.70 + 0.01 * seed))
        trials.append(Trial("ERR", f"err-{seed}a", seed, 0.72 + 0.01 * seed))
        trials.append(Trial("ERR", f"err-{seed}b", seed, 0.10, status="error" if seed else "ok"))
        trials.append(Trial("DIV", f"div-{seed}", seed, 0.71 + 0.01 * seed,
                            status="diverged" if seed == 1 else "ok"))  # fmt: skip
        trials.append(Trial("DUP", f"dup-{seed}", seed, 0.73 + 0.01 * seed, duplicate=seed == 2))
    trials.append(Trial("ONE", "one-0", 0, 0.75))  # a single seed
    return trials


@pytest.fixture
def uri(store_factory: Callable[..., str]) -> str:
    return store_factory(_trials())


def test_duplicated_trial_run_is_kept_once_with_a_warning(uri: str) -> None:
    with pytest.warns(UserWarning, match="trial dup-2 of DUP has 2 runs: kept run"):
        data = load_experiment(uri, "exp")
    dup = next(m for m in data.methods if m.name == "DUP")
    assert [t.trial_id for t in dup.trials] == ["dup-0", "dup-1", "dup-2"]
    assert dup.trials[2].status == "ok"  # the finished run wins over the running copy
    assert len(dup.trials[2].history["val_f1"]) == 4
    assert any("dup-2" in m and "ignored" in m for m in data.messages)


@pytest.mark.filterwarnings("ignore:trial dup-2")
def test_markdown_has_a_message_for_each_case(uri: str, tmp_path: Path) -> None:
    text = compare_experiment("exp", uri, tmp_path, "md")
    assert "| BL | grid | 3 | 0 | 0 | 3 |" in text  # the table is there
    assert "trial dup-2 of DUP has 2 runs" in text
    assert "ERR: 2 trial(s) ended in error: left out of the scores" in text
    assert "DIV: 1 trial(s) diverged" in text and "(div-1)" in text
    assert "ONE vs BL: fewer than 2 paired seeds" in text
    assert "ONE vs BL: selected test F1 +0.050, P(improve) 1.00, untested (n=1 seed" in text
    # ERR keeps its scored trials: seeds 1 and 2 have one trial, seed 0 two
    assert "ERR vs BL: final test F1" in text
    assert (tmp_path / "methods.md").read_text().startswith("| method | search |")
    assert (tmp_path / "anytime.png").stat().st_size > 10_000


@pytest.mark.filterwarnings("ignore:trial dup-2")
def test_every_format_survives(uri: str, tmp_path: Path) -> None:
    frame = compare_frame("exp", uri)
    assert list(frame["method"]) == ["BL", "ERR", "DIV", "DUP", "ONE"]
    assert frame.set_index("method").loc["ERR", "n_errors"] == 2
    csv_text = compare_experiment("exp", uri, fmt="csv")
    back = pd.read_csv(io.StringIO(csv_text))
    assert list(back.columns) == list(frame.columns)
    doc = json.loads(compare_experiment("exp", uri, fmt="json"))
    assert [m["method"] for m in doc["methods"]] == ["BL", "ERR", "DIV", "DUP", "ONE"]
    one = [p for p in doc["paired"] if p["method"] == "ONE"]
    assert one and all(p["p_value"] is None and p["n_seeds"] == 1 for p in one)
    assert any("fewer than 2 paired seeds" in n for n in doc["notes"])
    text = compare_experiment("exp", uri, tmp_path, "html")
    assert (tmp_path / "report.html").exists() and "wrote" in text
    assert "note: ONE vs BL: fewer than 2 paired seeds" in text


def test_baseline_with_a_single_seed(store_factory: Callable[..., str]) -> None:
    trials = [Trial("BL", "b0", 0, 0.7)] + [Trial("M", f"m{s}", s, 0.8) for s in range(3)]
    text = compare_experiment("exp", store_factory(trials, steps=False))
    assert "M vs BL: seed(s) 1, 2 have a value on one side only" in text
    assert "untested (n=1 seed" in text


def test_a_single_method_has_nothing_to_pair(store_factory: Callable[..., str]) -> None:
    uri = store_factory([Trial("BL", f"b{s}", s, 0.7) for s in range(3)], steps=False)
    text = compare_experiment("exp", uri)
    assert "| BL | grid | 3 |" in text and "Verdicts" not in text
    doc = json.loads(compare_experiment("exp", uri, fmt="json"))
    assert doc["paired"] == [] and doc["baseline"] == "BL"
    assert compare_frame("exp", uri)["verdict"].isna().all()
