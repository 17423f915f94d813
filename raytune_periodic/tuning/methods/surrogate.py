"""The surrogate paper's methods as Tune searches, side by side with the others in ``compare``.

``surrogate_de`` / ``surrogate_pso`` (Algorithm 1, DE/rand/1/bin or PSO on the surrogate),
``surrogate_ga`` (Table 5's "EA-based" row: Algorithm 1 with a GA, tournament size 2, on the
surrogate, at Algorithm 1's cost), ``rbf_surrogate`` (Table 5's "RBF-based" row: HORD's RBF
surrogate over ``max_time`` full trainings of the original), ``sparseness_grid`` (the original
with fixed values, one trial per point: §3.4's tied grid, or ``points``: mappings, ``none`` = the
baseline, ``paper`` = every λ 1e-5 and every p 0.5) and ``ea_original`` (*not from the paper*: an
EA whose candidates train copies of the original, cost (2 + N)·T_ori per iteration).

Entries take SurrogateHPOConfig's keys (popsize, ni_epochs, solver, F/CR, omega/phip/phig, its
``search`` box as ``space``, cpus_per_candidate: ``auto`` = what the cluster has left, ...). Model
and data come from ``base``; ``base.regularizers``/``base.train`` do not apply (§3.1's SGD).

Budget and fairness: one Tune iteration = one Algorithm 1 iteration = NI epochs = one *period*
(``tune.iteration_periods`` does not apply), so every trial trains the original for MaxIter =
``budget.periods × ni_epochs`` epochs from the same init with the same batch seeds. Per seed,
DE/PSO/EA run ``replicates`` (default ``budget.trials``) searches, ``compare`` selecting the best
by validation; a grid runs one trial per point whatever ``budget.trials``: a grid costs N_grid
trainings (Table 5), so cost is measured, not equalised. Each record carries it cumulatively, in
MaxIter trainings: ``cost/original_trainings`` (≈ 2 for Algorithm 1, 1 per grid point),
``cost/surrogate_trainings`` (popsize), ``cost/t_ori`` (both, surrogate work weighted by FLOPs),
``cost/wall_s``, ``cost/cpu_s`` (candidates' processes included); ``passes`` counts
original-equivalent SGD steps. ``val_f1`` = ``full_val_f1`` = ``objective``: the original's
macro-F1 on the whole validation split after the iteration (``*_accuracy``: the paper's rate);
``train_*``: the original on the training split, eval mode (``fit_loss``: what it minimised);
``value/*``: the values it trained with; ``best/*``: the best candidate; ``cand/<i>/*``: each.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from raytune_periodic.errors import ConfigError
from raytune_periodic.models import build_model
from raytune_periodic.surrogate.baselines import tied_grid
from raytune_periodic.surrogate.config import SurrogateHPOConfig
from raytune_periodic.surrogate.fc_head import attach_sparseness, check_one_fc
from raytune_periodic.surrogate.networks import build_surrogate
from raytune_periodic.surrogate.sparseness import NAMES, ONE_FC_NAMES, HypParaSet
from raytune_periodic.surrogate.training import derive_seed
from raytune_periodic.tuning.methods._base import SearchMethod
from raytune_periodic.validation import integer

TRAIN_KEYS = {"ni_epochs", "max_iter_epochs", "solver", "kappa", "inverted_dropout", "device"}
TRAIN_KEYS |= {"x_before_activation", "pretrained", "pretrained_strict"}
ALGO_KEYS = TRAIN_KEYS | {"popsize", "space", "initial", "eta", "conv", "executor", "replicates"}
ALGO_KEYS |= {"cpus_per_candidate", "gpus_per_candidate", "description"}
GRID_KEYS = {"points", "n_p", "n_lambda", "p_range", "log10_lambda_range", "names", "fixed"}
RBF_KEYS = {"max_time", "n_init", "max_concurrent"}
GA_KEYS = {"tournament", "p_cross", "p_mutation", "sigma"}
SMOKE_SOLVER = {"batch_size": 16, "eval_batch_size": 64}
NAMED_POINTS = {"none": HypParaSet(), "paper": HypParaSet.paper_default()}


def _number(value: Any, low: float = 0.0) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and low < value < 1e308


def hpo_config(name: str, options: Mapping[str, Any], periods: int) -> SurrogateHPOConfig:
    """The Algorithm 1 / fixed-run config of entry ``name``: MaxIter = periods × NI epochs."""
    fld = f"methods.{name}"
    skip = {"description", "replicates", "search", "base", *GRID_KEYS, *RBF_KEYS}  # "auto": default
    data = {k: v for k, v in options.items() if k not in skip and v != "auto"}
    ni = data.setdefault("ni_epochs", 1.0)
    if not _number(ni):
        raise ConfigError(f"{fld}.ni_epochs", f"must be a number > 0, got {ni!r}")
    given = data.setdefault("max_iter_epochs", periods * ni)
    if not _number(given) or abs(given - periods * ni) > 1e-9:
        msg = f"must be budget.periods × ni_epochs = {periods * ni:g} (or left out), got {given!r}"
        raise ConfigError(f"{fld}.max_iter_epochs", msg)
    if "space" in data:  # ``search`` names the method: SurrogateHPOConfig.search is ``space``
        data["search"] = data.pop("space")
    try:
        return SurrogateHPOConfig.from_dict(data, field=fld)
    except ConfigError as exc:
        raise ConfigError(exc.field.replace(f"{fld}.search", f"{fld}.space"), exc.message) from None


def grid_points(name: str, entry: Mapping[str, Any]) -> list[HypParaSet]:
    """Explicit ``points`` (mappings, ``none``, ``paper``) or the tied grid of §3.4."""
    fld = f"methods.{name}"
    if "points" in entry:
        points, other = entry["points"], sorted(GRID_KEYS & set(entry) - {"points"})
        if other:
            raise ConfigError(f"{fld}.{other[0]}", "give either points or the tied-grid keys")
        if not isinstance(points, list) or not points:
            raise ConfigError(f"{fld}.points", f"expected a non-empty list, got {points!r}")
        bad = [p for p in points if isinstance(p, str) and p not in NAMED_POINTS]
        if bad:
            raise ConfigError(f"{fld}.points", f"unknown {bad[0]!r}; valid: none, paper")
        return [NAMED_POINTS[p] if isinstance(p, str) else HypParaSet.from_dict(p, f"{fld}.points")
                for p in points]  # fmt: skip
    kwargs: dict[str, Any] = {k: entry[k] for k in ("n_p", "n_lambda", "names") if k in entry}
    for key in set(entry) & {"p_range", "log10_lambda_range"}:
        v = entry[key]
        if not (isinstance(v, list | tuple) and len(v) == 2 and all(_number(x, -1e308) for x in v)):
            raise ConfigError(f"{fld}.{key}", f"expected [lower, upper], got {v!r}")
        kwargs[key] = (float(v[0]), float(v[1]))
    if "fixed" in entry:
        kwargs["fixed"] = HypParaSet.from_dict(entry["fixed"], f"{fld}.fixed")
    return tied_grid(**kwargs, field=fld)


class _SurrogateFamily(SearchMethod):
    """Shared by the four searches: validation, the options handed to trials, the trainable."""

    keys = ALGO_KEYS
    kind: ClassVar[str] = "algorithm"  #: "algorithm" (Algorithm 1) or "fixed" (the original)
    optimizer: ClassVar[str] = "de"
    evaluate_on: ClassVar[str] = "surrogate"
    per_seed = True
    runs_engine = False  #: Algorithm 1 / fixed runs: §3.1's SGD, not the period engine

    @classmethod
    def check(cls, name, entry, trials, periods, bounds) -> None:  # type: ignore[override]
        super().check(name, entry, trials, periods, bounds)
        hpo_config(name, cls.options_of(entry), periods)
        if cls.kind == "fixed":
            grid_points(name, entry)
            return
        reps, cpc = entry.get("replicates", trials), entry.get("cpus_per_candidate", "auto")
        if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
            raise ConfigError(f"methods.{name}.replicates", f"must be an integer >= 1: {reps!r}")
        if cpc != "auto" and not _number(cpc):
            raise ConfigError(f"methods.{name}.cpus_per_candidate", f"auto or > 0, got {cpc!r}")

    @classmethod
    def options_of(cls, entry: Mapping[str, Any]) -> dict[str, Any]:
        if cls.kind == "fixed":
            return dict(entry)
        return {"optimizer": cls.optimizer, **entry, "evaluate_on": cls.evaluate_on}

    @classmethod
    def check_base(cls, name: str, entry: Mapping[str, Any], base: Mapping[str, Any],
                   input_shape: Sequence[int] | None) -> None:  # fmt: skip
        """The base model needs a two-FC head (and a surrogate); ``input_shape``: the data's."""
        if input_shape is None:
            return
        opts = {"name": m} if isinstance(m := base.get("model", "mlp"), str) else dict(m)
        try:
            net = build_model(opts.pop("name"), tuple(input_shape), 2, **opts)
            one_fc = attach_sparseness(net, field="model.name").one_fc
            if cls.options_of(entry).get("evaluate_on") == "surrogate":
                build_surrogate(net, input_shape, entry.get("conv", "auto"), field="surrogate")
        except ConfigError as exc:  # surrogate.model: no feature extractor to replace
            fld = exc.field.replace("surrogate.model", "model.name").replace("surrogate.", "")
            raise ConfigError(f"methods.{name}.conv" if fld == "conv" else f"base.{fld}",
                              exc.message) from None  # fmt: skip
        if one_fc:
            cls.check_one_fc(name, entry)

    @classmethod
    def check_one_fc(cls, name: str, entry: Mapping[str, Any]) -> None:
        """A one-FC head (ResNet20) has only λ_z, λ_V, p_z, p_V: the searched names and every
        fixed value must stay within them."""
        fld = f"methods.{name}"
        space = entry.get("space") if isinstance(entry.get("space"), Mapping) else {}
        extra = sorted(set(space.get("active", NAMES)) - set(ONE_FC_NAMES))
        if extra:
            msg = f"{extra} not in a one-FC head: give active: {list(ONE_FC_NAMES)}"
            raise ConfigError(f"{fld}.space.active", msg)
        for key, values in (("space.fixed", space.get("fixed")), ("initial", entry.get("initial"))):
            if values is not None:
                check_one_fc(HypParaSet.from_dict(values, f"{fld}.{key}"), f"{fld}.{key}")

    @classmethod
    def smoke_entry(cls, entry: dict[str, Any], trials: int) -> None:
        """One NI epoch per iteration, tiny populations run serially, small solver batches; no
        pretrained file (smoke data has none)."""
        entry["ni_epochs"] = 1.0
        entry.pop("max_iter_epochs", None)  # derived again: budget.periods × ni_epochs
        entry.pop("pretrained", None)
        entry.pop("pretrained_strict", None)
        if "max_time" in entry or cls.search == "rbf_surrogate":
            entry.update(max_time=2, n_init=1, max_concurrent=1)
        elif cls.kind == "fixed":
            if isinstance(entry.get("points"), list):
                entry["points"] = entry["points"][:1]
            else:
                entry["n_p"], entry["n_lambda"] = 1, 1
        else:
            small = cls.optimizer in ("pso", "ga") or entry.get("optimizer") in ("pso", "ga")
            entry["popsize"] = min(int(entry.get("popsize", 6)), 2 if small else 4)
            entry.update(executor="serial", replicates=1)
            entry.pop("cpus_per_candidate", None)
            entry.pop("gpus_per_candidate", None)
        entry["solver"] = {**dict(entry.get("solver") or {}), **SMOKE_SOLVER}
        if "device" in entry:
            entry["device"] = "cpu"

    def controller(self) -> dict[str, Any]:
        return {"type": self.search}  # descriptive only (the rp.controller tag); never built

    def extra_rp(self) -> dict[str, Any]:
        return {"surrogate": {"kind": self.kind, "options": self.options_of(self.entry)}}

    def replicates(self) -> int | None:
        """Algorithm 1 searches run replicates per seed, like the controller searches."""
        return int(self.entry.get("replicates", self.trials)) if self.kind == "algorithm" else None

    def trials_per_seed(self) -> int:
        if self.kind == "fixed":
            return len(grid_points(self.name, self.entry))
        return int(self.entry.get("replicates", self.trials))

    def trainable(self, resources: Mapping[str, float]) -> Any:
        """Head bundle: the trial (stage a); one bundle per candidate: ``cpus_per_candidate``
        (``auto``: what the cluster has left, at most 1)."""
        import ray
        from ray import tune

        cpu, gpu = float(resources.get("cpu", 1) or 1), float(resources.get("gpu", 0) or 0)
        bundles, opts = [{"CPU": cpu, "GPU": gpu}], self.options_of(self.entry)  # 0s dropped
        if self.kind == "fixed" or opts.get("executor", "auto") == "serial":
            return tune.with_resources(_trainable_class(), tune.PlacementGroupFactory(bundles))
        pop, cpc = int(opts.get("popsize", 6)), opts.get("cpus_per_candidate", "auto")
        total = float(ray.cluster_resources().get("CPU", 0)) if ray.is_initialized() else 0.0
        if cpc == "auto":
            cpc = math.floor(min(1.0, (total - cpu) / pop) * 1000) / 1000 if total else 0.5
        if cpc < 0.01 or (total and cpu + pop * cpc > total + 1e-9):
            msg = f"a trial needs {cpu:g} + {pop} × {cpc:g} CPUs, the cluster has {total:g}"
            raise ConfigError(f"methods.{self.name}.cpus_per_candidate", msg)
        bundles += [{"CPU": float(cpc), "GPU": float(opts.get("gpus_per_candidate", 0.0))}] * pop
        return tune.with_resources(_trainable_class(), tune.PlacementGroupFactory(bundles))


class SurrogateDE(_SurrogateFamily):
    """Algorithm 1, DE/rand/1/bin on the surrogate."""

    search, keys = "surrogate_de", ALGO_KEYS | {"F", "CR"}


class SurrogatePSO(_SurrogateFamily):
    """Algorithm 1, PSO on the surrogate."""

    search, keys, optimizer = "surrogate_pso", ALGO_KEYS | {"omega", "phip", "phig"}, "pso"


class SurrogateGA(_SurrogateFamily):
    """Table 5's "EA-based" row: Algorithm 1 with a GA (tournament 2) on the surrogate."""

    search, keys, optimizer = "surrogate_ga", ALGO_KEYS | GA_KEYS, "ga"


class EAOriginal(_SurrogateFamily):
    """Not from the paper: an EA whose candidates train copies of the original (DE unless
    ``optimizer``), cost (2 + N)·T_ori per iteration. Table 5's EA is ``surrogate_ga``."""

    search, evaluate_on = "ea_original", "original"
    keys = (ALGO_KEYS | GA_KEYS | {"optimizer", "F", "CR", "omega", "phip", "phig"}) - {"eta"}
    keys -= {"conv"}


class SparsenessGrid(_SurrogateFamily):
    """The original with fixed values: one trial per point and seed, all in one Tuner."""

    search, keys, kind = "sparseness_grid", TRAIN_KEYS | GRID_KEYS | {"description"}, "fixed"
    per_seed = False  # seeds × points in one Tuner: single-point grids run seeds in parallel

    @classmethod
    def check_one_fc(cls, name: str, entry: Mapping[str, Any]) -> None:
        """Every point (``points``, or the tied grid of ``names``) within λ_z, λ_V, p_z, p_V."""
        fld = f"methods.{name}.{'points' if 'points' in entry else 'names'}"
        for point in grid_points(name, entry):
            check_one_fc(point, fld)

    def values_space(self, seed: int) -> dict[str, Any]:
        from ray import tune

        return dict(tune.grid_search([p.to_dict() for p in grid_points(self.name, self.entry)]))


class RBFSurrogate(_SurrogateFamily):
    """Table 5's "RBF-based" row (ref. 13, HORD): ``max_time`` (40) trainings of the original
    with fixed values, each proposed by a cubic RBF fitted to the validation scores so far
    (``surrogate/rbf.py``, through a Tune searcher); ``compare`` selects the best trial by
    validation. Cost: MaxTime·T_ori. The paper trains its 40 evaluations for 4e4 iterations and
    retrains the winner for 6e4; here every evaluation trains the full budget."""

    search, kind = "rbf_surrogate", "fixed"
    keys = TRAIN_KEYS | RBF_KEYS | {"space", "description"}
    per_seed = True  # one RBF model per seed

    @classmethod
    def check(cls, name, entry, trials, periods, bounds) -> None:  # type: ignore[override]
        super(_SurrogateFamily, cls).check(name, entry, trials, periods, bounds)  # no grid
        hpo_config(name, cls.options_of(entry), periods)
        for key in sorted(RBF_KEYS & set(entry)):
            integer(entry[key], f"methods.{name}.{key}", 1)

    def trials_per_seed(self) -> int:
        return int(self.entry.get("max_time", 40))

    def space(self) -> Any:
        data = {"search": dict(self.entry.get("space") or {})}
        return SurrogateHPOConfig.from_dict(data, field=f"methods.{self.name}").search

    def tune_config(self, seed: int) -> dict[str, Any]:
        from ray.tune.search import ConcurrencyLimiter

        from raytune_periodic.tuning.rbf_searcher import RBFSearcher

        budget, e = self.trials_per_seed(), self.entry
        searcher = RBFSearcher(self.space(), budget, derive_seed(seed, "rbf"), e.get("n_init"))
        limited = ConcurrencyLimiter(searcher, max_concurrent=int(e.get("max_concurrent", 1)))
        return {"num_samples": budget, "search_alg": limited}


def _trainable_class() -> type:
    from raytune_periodic.tuning.surrogate_trainable import trainable_class

    return trainable_class()
