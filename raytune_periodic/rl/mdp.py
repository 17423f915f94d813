"""The per-period MDP of the periodic-regularization paper (§3.4), in plain numpy.

**Observation** (float32, every feature clipped to ``[0, OBS_HIGH]``), built at a period's start
from the previous period's record:

- ``log1p(train_loss)``, ``train_f1``, ``log1p(val_loss)``, ``val_f1`` — the paper's state (§3.4.2:
  the period's training loss/F1 and the loss/F1 of a few validation mini-batches at its end).
  Losses go through ``log1p`` so a cross-entropy of 0.05 and one of 4.6 (100 classes at start)
  both land in a range a small MLP handles; F1 is already in ``[0, 1]``.
- the values in force during that period, each normalised to ``[0, 1]`` within its configured
  bounds — the previous action. The metrics are measured *under* those values, so without them the
  state is ambiguous (a high gap at dropout 0.7 means something else than at dropout 0).
- ``progress`` in ``[0, 1]`` (fraction of the run's period budget spent): training is
  non-stationary, so the value baseline needs to know how far along it is, and the policy may
  anneal (e.g. regularize less late).

Before the first period there is no record: every feature is 0.

**Action**: one real number per controlled group (a group is whatever name the regularizer
placement gives — one shared rate, or ``dropout_0, dropout_1, …`` for per-layer placements). RLlib
samples an unbounded Gaussian; :meth:`MDP.values` squashes it with ``tanh`` into ``(-1, 1)`` (no
clipping: every raw action maps to a distinct value) and maps that linearly onto the group's
``[low, high]``, which must lie inside the regularizer's valid range.

**Reward** of a period (registry ``REWARDS``, ``controllers/rewards.py``): ``gap`` (the paper:
``−(train F1 − val F1)``, train F1 measured in eval mode on a fixed training subset), its gamed
train-mode variant ``gap_train_mode``, ``val_f1``, ``val_f1_delta`` and ``val_f1_minus_gap``.

**Episode** = one epoch of the child model: a period in which an epoch ended terminates the
episode; the child keeps training into the next one.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from raytune_periodic.controllers._base import check_range
from raytune_periodic.controllers.rewards import (  # noqa: F401  (re-exported)
    REWARDS,
    GapReward,
    Reward,
    ValF1DeltaReward,
    ValF1MinusGapReward,
    ValF1Reward,
    make_reward,
)
from raytune_periodic.errors import ConfigError
from raytune_periodic.records import PeriodRecord, PeriodState

OBS_VERSION = 1  #: bump when the observation layout changes (agent checkpoints record it)
OBS_HIGH = 5.0
METRIC_FEATURES = ("log1p_train_loss", "train_f1", "log1p_val_loss", "val_f1")


def parse_groups(groups: Any, field: str = "controller.groups") -> dict[str, tuple[float, float]]:
    """``{name_or_pattern: [low, high]}`` → validated ranges (low < high, finite)."""
    if not isinstance(groups, Mapping) or not groups:
        raise ConfigError(field, f"expected a mapping {{group: [low, high]}}, got {groups!r}")
    out: dict[str, tuple[float, float]] = {}
    for name, rng in groups.items():
        f = f"{field}.{name}"
        if isinstance(rng, str) or not isinstance(rng, Sequence) or len(rng) != 2:
            raise ConfigError(f, f"expected [low, high], got {rng!r}")
        lo, hi = check_range(f, rng[0], rng[1])
        if lo == hi:
            raise ConfigError(f, f"low must be < high for a learned value, got [{lo}, {hi}]")
        out[str(name)] = (lo, hi)
    return out


def resolve_groups(
    groups: Mapping[str, tuple[float, float]],
    valid: Mapping[str, tuple[float, float]],
    field: str = "controller.groups",
) -> dict[str, tuple[float, float]]:
    """Expand glob patterns (``dropout_*``) against the model's groups and check each range.

    ``valid`` maps the model's group names to the regularizer's valid range; a configured range
    outside it, or a name matching no group, is a one-line ConfigError.
    """
    out: dict[str, tuple[float, float]] = {}
    for pattern, (lo, hi) in groups.items():
        names = sorted(fnmatch.filter(valid, pattern)) if _is_glob(pattern) else [pattern]
        if not names or names[0] not in valid:
            raise ConfigError(
                f"{field}.{pattern}", f"no regularizer group {pattern!r}; groups: {sorted(valid)}"
            )
        for name in names:
            check_range(f"{field}.{pattern}", lo, hi, valid[name])
            if name in out:
                raise ConfigError(f"{field}.{pattern}", f"group {name!r} is matched twice")
            out[name] = (lo, hi)
    return out


def _is_glob(name: str) -> bool:
    return any(c in name for c in "*?[")


def _log1p(x: float) -> float:
    return math.log1p(max(float(x), 0.0)) if math.isfinite(x) else OBS_HIGH


@dataclass(frozen=True)
class MDP:
    """Observation and action layout for a fixed, ordered set of groups with ranges."""

    groups: tuple[str, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]

    @classmethod
    def from_ranges(cls, ranges: Mapping[str, tuple[float, float]]) -> MDP:
        names = tuple(ranges)
        return cls(names, tuple(ranges[n][0] for n in names), tuple(ranges[n][1] for n in names))

    def ranges(self) -> dict[str, tuple[float, float]]:
        return {n: (lo, hi) for n, lo, hi in zip(self.groups, self.low, self.high, strict=True)}

    @property
    def action_dim(self) -> int:
        return len(self.groups)

    @property
    def obs_dim(self) -> int:
        return len(METRIC_FEATURES) + self.action_dim + 1

    def observation(self, state: PeriodState) -> np.ndarray:
        """The agent's input at the start of ``state.period`` (see the module docstring)."""
        obs = np.zeros(self.obs_dim, dtype=np.float32)
        last = state.last
        if last is not None:
            obs[0] = _log1p(last.train_loss)
            obs[1] = last.train_f1
            obs[2] = _log1p(last.val_loss)
            obs[3] = last.val_f1
            k = len(METRIC_FEATURES)
            for i, (name, lo, hi) in enumerate(zip(self.groups, self.low, self.high, strict=True)):
                obs[k + i] = (last.values.get(name, lo) - lo) / (hi - lo)
        obs[-1] = state.progress
        np.nan_to_num(obs, copy=False, nan=0.0, posinf=OBS_HIGH, neginf=0.0)
        return np.clip(obs, 0.0, OBS_HIGH, out=obs)

    def values(self, action: np.ndarray) -> dict[str, float]:
        """Raw agent action → ``{group: value}``: ``tanh`` squashes it into ``[low, high]``."""
        a = np.tanh(np.asarray(action, dtype=np.float64).reshape(-1))
        return {
            name: float(lo + (x + 1.0) * 0.5 * (hi - lo))
            for name, lo, hi, x in zip(self.groups, self.low, self.high, a, strict=True)
        }

    def action(self, values: Mapping[str, float]) -> np.ndarray:
        """Inverse of :meth:`values` (for tests and hand-written policies)."""
        u = [
            2.0 * (values[n] - lo) / (hi - lo) - 1.0
            for n, lo, hi in zip(self.groups, self.low, self.high, strict=True)
        ]
        return np.arctanh(np.clip(u, -1 + 1e-6, 1 - 1e-6)).astype(np.float32)

    def meta(self) -> dict[str, Any]:
        """JSON-able description stored beside agent checkpoints (to detect mismatches)."""
        return {
            "obs_version": OBS_VERSION,
            "obs_dim": self.obs_dim,
            "action_dim": self.action_dim,
            "groups": {n: list(r) for n, r in self.ranges().items()},
        }


# --------------------------------------------------------------------------------------- rewards
def check_record(
    record: PeriodRecord, field: str = "controller", reward: Reward | None = None
) -> None:
    """The MDP needs validation mini-batches: a NaN val metric is a configuration error; so is
    a reward that needs the eval-mode training subset on a record without it."""
    if not (math.isfinite(record.val_f1) and math.isfinite(record.train_f1)):
        raise ConfigError(
            field, "the ppo controller needs validation mini-batches: set train.val_batches >= 1"
        )
    if reward is not None and reward.needs_train_eval and record.train_eval_f1 is None:
        raise ConfigError(
            f"{field}.reward",
            f"{reward.name!r} needs train F1 in eval mode: set train.train_eval_samples"
            " (-1: as many as the validation mini-batches)",
        )
