"""Helpers for the tracking tests: a SQLite MLflow store whose server can 'go down' or reject
writes (no server process needed), and a disk that can fill up under the spool."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from raytune_periodic.tracking.mlflow_store import MlflowStore

EXPERIMENT = "durability"


class FlakyClient:
    """An ``MlflowClient`` whose calls raise ``ConnectionError`` (an unreachable server) while
    ``down``, and ``reject(name, args, kwargs)`` may raise to make the server refuse a call."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.down = False
        self.reject: Callable[[str, tuple, dict], None] | None = None

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._real, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise ConnectionError(f"{name}: connection refused")
            if self.reject is not None:
                self.reject(name, args, kwargs)
            return attr(*args, **kwargs)

        return call


def make_store(tmp: Path, **kwargs: Any) -> MlflowStore:
    store = MlflowStore(
        f"sqlite:///{tmp / 'mlflow.db'}", EXPERIMENT, spool_dir=tmp / "spool", **kwargs
    )
    store.client = FlakyClient(store.client)
    return store


def tree(store: MlflowStore, trial: str = "t0") -> tuple[str, str, str]:
    inv = store.start_invocation("inv", {"name": EXPERIMENT}, {"seeds": "0"})
    method = store.start_method(inv, "inv", "PD", "grid", {})
    return inv, method, store.start_trial(method, "inv", "PD", trial, {"lr": 0.1})


def record(step: int) -> dict[str, float]:
    return {"period": float(step), "val_f1": 0.5 + step / 100}


def steps(store: MlflowStore, run_id: str, key: str = "val_f1") -> list[int]:
    store.flush(strict=False)
    real = store._real(run_id)
    return sorted(m.step for m in store.client._real.get_metric_history(real, key))


def fill_disk_under(monkeypatch: pytest.MonkeyPatch, root: Path) -> list[bool]:
    """``os.write`` to files under ``root`` fails with ENOSPC while ``flag[0]`` is True."""
    real = os.write
    flag = [True]

    def write(fd: int, data: Any) -> int:
        if flag[0] and os.readlink(f"/proc/self/fd/{fd}").startswith(str(root)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    return flag
