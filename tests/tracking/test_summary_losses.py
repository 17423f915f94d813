"""The papers' own metrics in the trial summary: train/val loss at the last epoch."""

from __future__ import annotations

import pytest

from raytune_periodic.protocol.mlflow_layout import SUMMARY_KEYS
from raytune_periodic.tracking import summarize


def _step(step: int, **extra: float) -> dict[str, float]:
    return {"step": step, "period": step, "passes": 10.0 * (step + 1), "train_loss": 2.0 - step,
            "val_loss": 3.0 - step, "train_f1": 0.5, "val_f1": 0.4, **extra}  # fmt: skip


def test_final_losses_come_from_the_last_step_and_the_last_epoch_end() -> None:
    recs = [
        _step(0, full_val_loss=2.5, full_val_f1=0.3, full_val_penalty=0.25),
        _step(1),
        _step(2, full_val_loss=1.75, full_val_f1=0.35, full_val_penalty=0.5),
        _step(3),
    ]
    out = summarize(recs)
    assert out["final_train_loss"] == pytest.approx(-1.0)  # the last step's train_loss
    assert out["final_val_loss"] == pytest.approx(1.75)  # the last epoch end, not val_loss
    assert out["final_val_loss_penalised"] == pytest.approx(2.25)  # Keras' val_loss
    assert {"final_train_loss", "final_val_loss", "final_val_loss_penalised"} <= set(SUMMARY_KEYS)


def test_without_epoch_ends_the_val_loss_is_the_last_mini_batch_one() -> None:
    out = summarize([_step(0), _step(1)])
    assert out["final_val_loss"] == pytest.approx(2.0)
    assert "final_val_loss_penalised" not in out
    assert "final_train_loss" not in summarize([{"step": 0, "train_loss": float("nan")}])
