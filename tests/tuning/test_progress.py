"""The compact console line, the summarised snapshot warning, and a quiet `validate`."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from raytune_periodic.tuning.progress import CompactProgress, SummarisedWarnings

ROOT = Path(__file__).resolve().parents[2]


def trial(status: str, iteration: int, objective: float | None) -> SimpleNamespace:
    result = {"training_iteration": iteration}
    if objective is not None:
        result["objective"] = objective
    return SimpleNamespace(status=status, last_result=result)


def test_compact_line_counts_periods_best_and_eta() -> None:
    lines: list[str] = []
    rep = CompactProgress("PD s0", periods_per_trial=10, iteration_periods=2, out=lines.append)
    rep.setup(total_samples=4)
    trials = [trial("TERMINATED", 5, 0.81), trial("RUNNING", 2, 0.9), trial("ERROR", 1, None)]
    line = rep.line(trials, now=rep.start + 30)
    # 4 trials expected (one not generated yet), periods 10 + 4 + 2 of 40, half-way → ETA 45 s
    assert line == (
        "[PD s0] trials 1/4 done, 1 running, 1 errored | periods 16/40 | best objective 0.900 | "
        "0:00:30 elapsed, ETA 0:00:45"
    )
    assert rep.should_report(trials, done=True)
    rep.report(trials, done=False)
    assert lines and not rep.should_report(trials)  # not again within the interval


def test_repeated_warning_is_shown_once_and_counted(caplog: object) -> None:
    logger = logging.getLogger("rp.test.snapshot")
    flt = SummarisedWarnings("snapshotting has been triggered")
    logger.addFilter(flt)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        for _ in range(5):
            logger.warning("Experiment state snapshotting has been triggered multiple times")
        logger.warning("something else")
    finally:
        logger.removeHandler(handler)
        logger.removeFilter(flt)
    assert [r.getMessage()[:10] for r in records] == ["Experiment", "something "]
    assert flt.suppressed == 4


def test_validate_prints_no_third_party_warnings() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "raytune_periodic.cli", "validate", "configs/ppo_digits.yaml"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok: ppo_digits") and out.stderr == ""
