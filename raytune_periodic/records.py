"""Plain data passed between the engine, controllers and trackers (no behaviour, no imports)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

STATUS_OK = "ok"
STATUS_DIVERGED = "diverged"


@dataclass
class PeriodRecord:
    """One period's outcome: the values in force and what training/validation measured.

    ``train_*`` average over the period's forward passes; ``val_*`` come from a few random
    validation mini-batches at the period's end; ``gap = train_f1 - val_f1`` (the overfitting gap).
    ``train_eval_*`` (optional) evaluate a fixed training subset in eval mode, so ``eval_gap`` is
    the gap with both F1s measured the same way (the paper's). ``full_val_*``/``test_*`` are set
    only on periods where an epoch ended (full evaluation,
    independent of the controller).
    """

    period: int
    epoch: float
    passes: int
    values: dict[str, float]
    train_loss: float
    train_f1: float
    val_loss: float
    val_f1: float
    seconds: float
    status: str = STATUS_OK
    full_val_loss: float | None = None
    full_val_f1: float | None = None
    test_loss: float | None = None
    test_f1: float | None = None
    #: eval-mode (regularizers off) loss/F1 on a fixed, seeded training subset at the period's
    #: end (``train.train_eval_samples``; None when not measured): the paper's train F1
    train_eval_loss: float | None = None
    train_eval_f1: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def gap(self) -> float:
        return self.train_f1 - self.val_f1

    @property
    def eval_gap(self) -> float:
        """Train F1 measured in eval mode − val F1 (NaN when the subset was not evaluated)."""
        if self.train_eval_f1 is None:
            return math.nan
        return self.train_eval_f1 - self.val_f1

    @property
    def epoch_ended(self) -> bool:
        return self.full_val_f1 is not None

    def metrics(self) -> dict[str, float]:
        """Flat numeric metrics (``value/<name>`` for values) for trackers and Tune reports."""
        out: dict[str, float] = {
            "period": float(self.period),
            "epoch": float(self.epoch),
            "passes": float(self.passes),
            "train_loss": self.train_loss,
            "train_f1": self.train_f1,
            "val_loss": self.val_loss,
            "val_f1": self.val_f1,
            "gap": self.gap,
            "period_seconds": self.seconds,
        }
        if self.train_eval_f1 is not None:
            out["eval_gap"] = self.eval_gap
        for key in (
            "full_val_loss",
            "full_val_f1",
            "test_loss",
            "test_f1",
            "train_eval_loss",
            "train_eval_f1",
        ):
            val = getattr(self, key)
            if val is not None:
                out[key] = val
        for name, val in self.values.items():
            out[f"value/{name}"] = float(val)
        out.update(self.extra)
        return out

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> PeriodRecord:
        return cls(**data)  # type: ignore[arg-type]


@dataclass
class PeriodState:
    """What a controller sees when deciding the values of period ``period``.

    ``last`` is the previous period's record (None before the first period); ``progress`` is the
    fraction of the run's period budget already spent (0 at the start, < 1 during the run).
    """

    period: int
    last: PeriodRecord | None
    progress: float
    epoch: float = 0.0


def is_finite(x: float) -> bool:
    return math.isfinite(x)
