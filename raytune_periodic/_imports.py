"""Lazy imports of the heavy optional dependencies, with an install hint instead of a traceback."""

from __future__ import annotations

import importlib
from types import ModuleType

_EXTRA_OF = {
    "ray": "tune",
    "ray.tune": "tune",
    "ray.rllib": "rllib",
    "mlflow": "tune",
    "optuna": "tune",
    "nevergrad": "surrogate",
    "pandas": "tune",
    "matplotlib": "tune",
    "gymnasium": "rllib",
    "pytorch_grad_cam": "tune",
}


class MissingDependencyError(ImportError):
    """An optional dependency is not installed; the message says which extra to install."""


def require(module: str) -> ModuleType:
    """Import ``module`` or raise a one-line error naming the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised only without the extras
        top = module.split(".")[0]
        extra = _EXTRA_OF.get(module, _EXTRA_OF.get(top, "all"))
        raise MissingDependencyError(
            f"{module} is required for this feature: "
            f"pip install 'raytune-periodic[{extra}]' ({exc})"
        ) from exc
