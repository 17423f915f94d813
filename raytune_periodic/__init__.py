"""raytune_periodic: periodic regularization research at cluster scale.

The core (regularizers, controllers, models, data, training) depends on torch and numpy only.
Ray Tune, RLlib, Nevergrad, Optuna and MLflow are imported lazily by the modules that need them.
"""

from raytune_periodic.errors import ConfigError, DivergedError

__version__ = "0.1.0"
__all__ = ["ConfigError", "DivergedError", "__version__"]
