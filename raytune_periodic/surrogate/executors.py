"""Where a population's evaluations run: in-process one after another, or as Ray tasks.

Both implement ``map(fn, payloads, **shared) -> results`` (results in payload order), with ``fn``
a module-level function ``fn(payload, **shared)``. ``share(obj)`` marks an object used by many
calls (the dataset): Ray puts it in the object store once; other shared values are put once per
``map`` call and read by all of its tasks. Ray is imported only here, and only when asked for.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from raytune_periodic._imports import require
from raytune_periodic.errors import ConfigError
from raytune_periodic.validation import choice, number

EXECUTORS = ("auto", "serial", "ray")


class Executor(ABC):
    """Maps a function over a population's payloads."""

    name: str = ""

    @property
    def threads(self) -> int | None:
        """Torch threads each evaluation should use (None: leave the process's setting)."""
        return None

    def share(self, obj: Any) -> Any:
        """A handle for an object reused across many ``map`` calls."""
        return obj

    @abstractmethod
    def map(self, fn: Callable[..., Any], payloads: Sequence[Any], **shared: Any) -> list[Any]:
        """``[fn(p, **shared) for p in payloads]``, possibly in parallel."""


class SerialExecutor(Executor):
    """In this process, one after another (no Ray needed: tests, debugging, single CPU)."""

    name = "serial"

    def map(self, fn: Callable[..., Any], payloads: Sequence[Any], **shared: Any) -> list[Any]:
        return [fn(p, **shared) for p in payloads]


class RayExecutor(Executor):
    """One Ray task per payload with fractional resources (``num_cpus`` may be 0.5)."""

    name = "ray"

    def __init__(self, num_cpus: float = 0.5, num_gpus: float = 0.0) -> None:
        num_cpus = number(num_cpus, "surrogate.cpus_per_candidate", 0.0)
        num_gpus = number(num_gpus, "surrogate.gpus_per_candidate", 0.0)
        if num_cpus <= 0 and num_gpus <= 0:
            raise ConfigError("surrogate.cpus_per_candidate", "a task needs some CPU or GPU")
        self.ray = require("ray")
        if not self.ray.is_initialized():
            raise RuntimeError("RayExecutor needs ray.init() first (or use the serial executor)")
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self._remote: dict[Callable[..., Any], Any] = {}

    @property
    def threads(self) -> int:
        return max(1, int(self.num_cpus))

    def share(self, obj: Any) -> Any:
        return self.ray.put(obj)

    def _remote_fn(self, fn: Callable[..., Any]) -> Any:
        if fn not in self._remote:
            self._remote[fn] = self.ray.remote(fn).options(
                num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=0
            )
        return self._remote[fn]

    def map(self, fn: Callable[..., Any], payloads: Sequence[Any], **shared: Any) -> list[Any]:
        ray = self.ray
        refs = {k: v if isinstance(v, ray.ObjectRef) else ray.put(v) for k, v in shared.items()}
        remote = self._remote_fn(fn)
        return list(ray.get([remote.remote(p, **refs) for p in payloads]))


def ray_ready() -> bool:
    """Whether Ray is already imported and initialised (never imports it)."""
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def make_executor(kind: str = "auto", num_cpus: float = 0.5, num_gpus: float = 0.0) -> Executor:
    """``serial``, ``ray`` (after ``ray.init()``), or ``auto``: Ray if initialised, else serial."""
    choice(kind, "surrogate.executor", EXECUTORS)
    if kind == "serial" or (kind == "auto" and not ray_ready()):
        return SerialExecutor()
    return RayExecutor(num_cpus, num_gpus)


__all__ = ["EXECUTORS", "Executor", "RayExecutor", "SerialExecutor", "make_executor", "ray_ready"]
