"""Search methods: how one ``methods.<name>`` entry becomes Ray Tune searches.

``SearchMethod`` (``_base.py``) is the protocol; each method is one module and one entry in
``METHODS`` below. Entries are import paths, imported when a config names them, so validating a
config imports no method it does not use and nothing here imports Ray. Every method gets the same
budget per seed: ``budget.trials`` trials of ``budget.periods`` periods.

================  =======================================================================
search            what it runs
================  =======================================================================
controller        an in-trial controller (constant, periodic_random, toggle, schedule, ppo,
                  a plugin's); ``trials`` replicates per seed differing in initialisation
grid              ``tune.grid_search`` over constant values (exactly ``trials`` points)
random            Tune's random search (``tune.uniform`` / ``tune.loguniform``)
optuna            Optuna's TPE sampler through ``OptunaSearch``, one search per seed
pbt               ``PopulationBasedTraining``: a population of ``trials`` per seed whose values
                  are mutated every ``perturbation_interval`` iterations, weights exploited
pb2               ``PB2`` (GP-bandit explore, scikit-learn), same shape as pbt
ppo_shared        one RLlib PPO agent per seed acting for, and learning from, all ``trials``
                  children of the seed (each child a trial run)
surrogate_de/pso  the surrogate paper's Algorithm 1 (DE/rand/1/bin or PSO on the surrogate)
surrogate_ga      Table 5's EA-based row: Algorithm 1 with a GA (tournament 2) on the surrogate
rbf_surrogate     Table 5's RBF-based row: HORD's RBF surrogate over full trainings
ea_original       EA on the original network (not from the paper)
sparseness_grid   the original with fixed sparseness values, one trial per point
================  =======================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from raytune_periodic.errors import ConfigError
from raytune_periodic.registry import Registry
from raytune_periodic.tuning.methods._base import SearchMethod, space_entry

_HERE = "raytune_periodic.tuning.methods"
METHODS: Registry[type[SearchMethod]] = Registry("search", "methods")
for _name, _path in {
    "controller": "controller:ControllerMethod",
    "grid": "values:GridMethod",
    "random": "values:RandomMethod",
    "optuna": "values:OptunaMethod",
    "pbt": "pbt:PBTMethod",
    "pb2": "pbt:PB2Method",
    "ppo_shared": "shared_ppo:SharedPPOMethod",
    "surrogate_de": "surrogate:SurrogateDE",
    "surrogate_pso": "surrogate:SurrogatePSO",
    "surrogate_ga": "surrogate:SurrogateGA",
    "rbf_surrogate": "surrogate:RBFSurrogate",
    "ea_original": "surrogate:EAOriginal",
    "sparseness_grid": "surrogate:SparsenessGrid",
}.items():
    METHODS.add(_name, f"{_HERE}.{_path}")


def method_search(name: str, entry: Mapping[str, Any]) -> str:
    """The search kind of an entry: explicit ``search``, else ``controller`` if one is given."""
    search = entry.get("search")
    if search is None:
        if "controller" not in entry:
            raise ConfigError(f"methods.{name}", "needs a 'controller' or a 'search'")
        return "controller"
    return str(search)


def method_class(name: str, entry: Mapping[str, Any]) -> type[SearchMethod]:
    """The ``SearchMethod`` subclass an entry names (one-line error if it is none)."""
    cls = METHODS.get(method_search(name, entry), field=f"methods.{name}.search")
    if not (isinstance(cls, type) and issubclass(cls, SearchMethod)):
        raise ConfigError(f"methods.{name}.search", f"{cls!r} is not a SearchMethod subclass")
    return cls


def build_method(name: str, entry: Mapping[str, Any], trials: int) -> SearchMethod:
    return method_class(name, entry)(name, entry, trials)


__all__ = [
    "METHODS",
    "SearchMethod",
    "build_method",
    "method_class",
    "method_search",
    "space_entry",
]
