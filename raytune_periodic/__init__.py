"""raytune_periodic: periodic regularization research at cluster scale.

The Python API (``raytune_periodic.api``), importable from here::

    import raytune_periodic as rp

    cfg = rp.load("configs/quickstart.yaml", overrides=["budget.periods=10"])
    outcome = rp.run(cfg)                       # Ray Tune + MLflow, like `raytune-periodic run`
    table = rp.compare(cfg.name)                # a DataFrame, like `raytune-periodic compare`

The core (regularizers, controllers, models, data, training) depends on torch and numpy only.
Ray Tune, RLlib, Nevergrad, Optuna and MLflow are imported lazily by the modules that need them;
``import raytune_periodic`` itself imports none of them (nor torch) until an API name is used.
"""

from typing import Any

from raytune_periodic.errors import ConfigError, DivergedError

__version__ = "0.1.0"
_API = {
    "load": "raytune_periodic.api",
    "validate": "raytune_periodic.api",
    "run": "raytune_periodic.api",
    "compare": "raytune_periodic.api",
    "export": "raytune_periodic.api",
    "ExperimentConfig": "raytune_periodic.config",
    "RunOutcome": "raytune_periodic.tuning.runner",
    "TrialsErroredError": "raytune_periodic.tuning.runner",
    "RunInterrupted": "raytune_periodic.tuning.runner",
}
__all__ = ["ConfigError", "DivergedError", "__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'raytune_periodic' has no attribute {name!r}")
