"""The console while a search runs: one compact line per Tuner instead of Tune's table dump.

``run`` prints, every ``interval`` seconds and when a Tuner ends::

    [PD s0-s1] trials 3/8 done, 2 running, 0 errored | periods 150/240 | best objective 0.912 |
    0:00:42 elapsed, ETA 0:00:25

``-v`` brings Tune's own progress table back (``CLIReporter``), ``-q`` prints nothing. Tune's
"experiment state snapshotting" warning, which fires again and again when trials checkpoint
often, is shown once and counted (``SummarisedWarnings``).
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable
from typing import Any

from ray.tune import ProgressReporter

STATUSES = ("TERMINATED", "RUNNING", "ERROR")


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


class CompactProgress(ProgressReporter):
    """One line per report: trials done/running/errored, periods, best objective, ETA."""

    def __init__(
        self,
        label: str,
        periods_per_trial: int,
        iteration_periods: int,
        interval: float = 15.0,
        out: Callable[[str], Any] | None = None,
    ) -> None:
        """``out``: where lines go (default ``print``, looked up at call time: Tune pickles the
        reporter with the experiment state, and a Ray job's driver replaces ``print``)."""
        self.label = label
        self.periods_per_trial = periods_per_trial
        self.iteration_periods = iteration_periods
        self.interval = interval
        self.out = out
        self.start = time.monotonic()
        self.last = 0.0
        self.total_trials: int | None = None

    def setup(
        self,
        start_time: float | None = None,
        total_samples: int | None = None,
        metric: str | None = None,
        mode: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.total_trials = total_samples

    def should_report(self, trials: list[Any], done: bool = False) -> bool:
        return done or time.monotonic() - self.last >= self.interval

    def line(self, trials: list[Any], now: float | None = None) -> str:
        """The progress line for ``trials`` (Tune ``Trial`` objects)."""
        now = time.monotonic() if now is None else now
        counts = {s: sum(t.status == s for t in trials) for s in STATUSES}
        total = max(len(trials), self.total_trials or 0)
        done_periods = sum(min(self.periods_per_trial, self._periods(t)) for t in trials)
        all_periods = total * self.periods_per_trial
        scores = [_score(t) for t in trials]
        best = max((s for s in scores if s is not None), default=None)
        elapsed = now - self.start
        eta = elapsed * (all_periods - done_periods) / done_periods if done_periods else None
        return (
            f"[{self.label}] trials {counts['TERMINATED']}/{total} done, {counts['RUNNING']} "
            f"running, {counts['ERROR']} errored | periods {done_periods}/{all_periods} | "
            f"best objective {'-' if best is None else f'{best:.3f}'} | {_clock(elapsed)} "
            f"elapsed" + ("" if eta is None else f", ETA {_clock(eta)}")
        )

    def _periods(self, trial: Any) -> int:
        """Periods a trial has run: its ``rp_periods`` (iterations vary in length with
        ``iteration_periods: auto``), else iterations × ``iteration_periods``."""
        periods = (getattr(trial, "last_result", None) or {}).get("rp_periods")
        if isinstance(periods, int | float):
            return int(periods)
        return _iterations(trial) * self.iteration_periods

    def report(self, trials: list[Any], done: bool, *sys_info: str) -> None:
        self.last = time.monotonic()
        (self.out or print)(self.line(trials, self.last))


def _iterations(trial: Any) -> int:
    return int((getattr(trial, "last_result", None) or {}).get("training_iteration", 0) or 0)


def _score(trial: Any) -> float | None:
    value = (getattr(trial, "last_result", None) or {}).get("objective")
    return float(value) if isinstance(value, int | float) else None


class SummarisedWarnings(logging.Filter):
    """Let the first record of a repeated warning through, count the rest."""

    def __init__(self, needle: str) -> None:
        super().__init__()
        self.needle = needle
        self.suppressed = 0
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.needle not in record.getMessage():
            return True
        if not self.seen:
            self.seen = True
            return True
        self.suppressed += 1
        return False


SNAPSHOT_LOGGER = "ray.tune.execution.experiment_state"
SNAPSHOT_NEEDLE = "Experiment state snapshotting has been triggered multiple times"
