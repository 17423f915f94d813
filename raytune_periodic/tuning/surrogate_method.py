"""The surrogate paper's methods as Tune searches, side by side with the others in ``compare``.

``surrogate_de`` / ``surrogate_pso`` (Algorithm 1, DE/rand/1/bin or PSO on the surrogate),
``ea_original`` ("EA without surrogate": candidates train copies of the original) and
``sparseness_grid`` (the original with fixed values, one trial per point: §3.4's tied grid, or
``points``: mappings, ``none`` = the baseline, ``paper`` = every λ 1e-5 and every p 0.5).

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

import functools
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch

from raytune_periodic.data._base import DataSplits
from raytune_periodic.errors import ConfigError
from raytune_periodic.models import build_model
from raytune_periodic.protocol import trial_results as R
from raytune_periodic.surrogate import training as tr
from raytune_periodic.surrogate.algorithm import SurrogateHPO
from raytune_periodic.surrogate.baselines import tied_grid
from raytune_periodic.surrogate.config import SurrogateHPOConfig
from raytune_periodic.surrogate.executors import RayExecutor, SerialExecutor
from raytune_periodic.surrogate.networks import build_surrogate
from raytune_periodic.surrogate.objective import evaluate
from raytune_periodic.surrogate.sparseness import NAMES, HypParaSet, attach_sparseness
from raytune_periodic.training.engine import resolve_device
from raytune_periodic.tuning.methods import SearchMethod, register

TRAIN_KEYS = {"ni_epochs", "max_iter_epochs", "solver", "kappa", "inverted_dropout", "device"}
ALGO_KEYS = TRAIN_KEYS | {"popsize", "space", "initial", "eta", "conv", "executor", "replicates"}
ALGO_KEYS |= {"cpus_per_candidate", "gpus_per_candidate", "description"}
GRID_KEYS = {"points", "n_p", "n_lambda", "p_range", "log10_lambda_range", "names", "fixed"}
NAMED_POINTS = {"none": HypParaSet(), "paper": HypParaSet.paper_default()}
RENAMED = {"lr": "lr", "fit_loss": "fused_train_loss", "val_f1": "original_val_f1",  # ← record
           "full_val_f1": "original_val_f1", "val_accuracy": "original_val_accuracy",
           "val_objective": "original_val_objective", "test_f1": "original_test_f1",
           "test_accuracy": "original_test_accuracy"}  # fmt: skip
OPTIONAL = ("best_objective", "population_objective_mean", "kept_previous",
            "surrogate_val_accuracy", "ray_tasks")  # fmt: skip
CANDIDATE = ("objective", "accuracy", "wall_seconds", *NAMES)


def _number(value: Any, low: float = 0.0) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and low < value < 1e308


def hpo_config(name: str, options: Mapping[str, Any], periods: int) -> SurrogateHPOConfig:
    """The Algorithm 1 / fixed-run config of entry ``name``: MaxIter = periods × NI epochs."""
    fld = f"methods.{name}"
    skip = {"description", "replicates", "search", "base", *GRID_KEYS}  # "auto": the default
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
            attach_sparseness(net, field="model.name")
            if cls.options_of(entry).get("evaluate_on") == "surrogate":
                build_surrogate(net, input_shape, entry.get("conv", "auto"), field="surrogate")
        except ConfigError as exc:  # surrogate.model: no feature extractor to replace
            fld = exc.field.replace("surrogate.model", "model.name").replace("surrogate.", "")
            raise ConfigError(f"methods.{name}.conv" if fld == "conv" else f"base.{fld}",
                              exc.message) from None  # fmt: skip

    def controller(self) -> dict[str, Any]:
        return {"type": self.search}  # descriptive only (the rp.controller tag); never built

    def extra_rp(self) -> dict[str, Any]:
        from ray import tune

        rp = {"surrogate": {"kind": self.kind, "options": self.options_of(self.entry)}}
        if self.kind == "algorithm":  # replicates per seed, like the controller searches
            reps = int(self.entry.get("replicates", self.trials))
            rp["replicate"] = tune.grid_search(list(range(reps)))
        return rp

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
            return tune.with_resources(trainable_class(), tune.PlacementGroupFactory(bundles))
        pop, cpc = int(opts.get("popsize", 6)), opts.get("cpus_per_candidate", "auto")
        total = float(ray.cluster_resources().get("CPU", 0)) if ray.is_initialized() else 0.0
        if cpc == "auto":
            cpc = math.floor(min(1.0, (total - cpu) / pop) * 1000) / 1000 if total else 0.5
        if cpc < 0.01 or (total and cpu + pop * cpc > total + 1e-9):
            msg = f"a trial needs {cpu:g} + {pop} × {cpc:g} CPUs, the cluster has {total:g}"
            raise ConfigError(f"methods.{self.name}.cpus_per_candidate", msg)
        bundles += [{"CPU": float(cpc), "GPU": float(opts.get("gpus_per_candidate", 0.0))}] * pop
        return tune.with_resources(trainable_class(), tune.PlacementGroupFactory(bundles))


@register
class SurrogateDE(_SurrogateFamily):
    """Algorithm 1, DE/rand/1/bin on the surrogate."""

    search, keys = "surrogate_de", ALGO_KEYS | {"F", "CR"}


@register
class SurrogatePSO(_SurrogateFamily):
    """Algorithm 1, PSO on the surrogate."""

    search, keys, optimizer = "surrogate_pso", ALGO_KEYS | {"omega", "phip", "phig"}, "pso"


@register
class EAOriginal(_SurrogateFamily):
    """EA without surrogate: candidates train copies of the original (DE unless ``optimizer``)."""

    search, evaluate_on = "ea_original", "original"
    keys = (ALGO_KEYS | {"optimizer", "F", "CR", "omega", "phip", "phig"}) - {"eta", "conv"}


@register
class SparsenessGrid(_SurrogateFamily):
    """The original with fixed values: one trial per point and seed, all in one Tuner."""

    search, keys, kind = "sparseness_grid", TRAIN_KEYS | GRID_KEYS | {"description"}, "fixed"
    per_seed = False  # seeds × points in one Tuner: single-point grids run seeds in parallel

    def values_space(self, seed: int) -> dict[str, Any]:
        from ray import tune

        return dict(tune.grid_search([p.to_dict() for p in grid_points(self.name, self.entry)]))


class FixedRun:
    """``baselines.train_original`` reporting every NI epochs (tested equal; paired seeds)."""

    def __init__(self, config: SurrogateHPOConfig, data: DataSplits, hyp: HypParaSet) -> None:
        cfg = self.config = config
        self.data, self.hyp, self.t = data, hyp, 0
        self.device = resolve_device(cfg.device, "surrogate.device")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(tr.derive_seed(cfg.seed, "init"))
            model = build_model(cfg.model, data.input_shape, data.num_classes, **cfg.model_options)
        attach_sparseness(model, hyp, inverted=cfg.inverted_dropout)
        self.original = model.to(self.device)
        self.sgd = tr.make_sgd(model.parameters(), cfg.solver, cfg.solver.lr)
        epoch = tr.steps_per_epoch(data.train, cfg.solver.batch_size)
        self.steps = max(1, round(cfg.ni_epochs * epoch))
        self.flops, self.totals = {"ratio": 1.0}, {"original_epochs": 0.0, "surrogate_epochs": 0.0}
        self.done = False

    def iteration(self) -> dict[str, Any]:
        cfg, opts, net = self.config, self.config.solver, self.original
        lr = opts.lr_at(self.t * self.steps)
        tr.set_lr(self.sgd, lr)
        seed = tr.derive_seed(cfg.seed, self.t, "original")
        fit = tr.train_steps(net, tr.plain_loss(net), self.sgd, self.data.train, self.steps,
                             opts.batch_size, seed, self.device)  # fmt: skip
        out = {"lr": lr, "fused_train_loss": fit["train_loss"]}
        for split in ("val", "test"):
            data = getattr(self.data, split)
            ev = evaluate(net, data, self.device, opts.eval_batch_size, cfg.kappa)
            out.update({f"original_{split}_{k.removeprefix('macro_')}": v for k, v in ev.items()})
        self.t, self.done = self.t + 1, self.t + 1 >= cfg.iterations
        self.totals["original_epochs"] += cfg.ni_epochs
        return {**out, **{f"trained/{k}": v for k, v in self.hyp.to_dict().items()}}

    def state_dict(self) -> dict[str, Any]:
        net, sgd, totals = self.original.state_dict(), self.sgd.state_dict(), dict(self.totals)
        return {"t": self.t, "model": net, "sgd": sgd, "totals": totals}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.t, self.totals = int(state["t"]), dict(state["totals"])
        self.done = self.t >= self.config.iterations
        self.original.load_state_dict(state["model"])
        self.sgd.load_state_dict(state["sgd"])


class _Slot:
    """One candidate process: a Ray actor in one bundle of the trial's placement group."""

    def run(self, fn: Callable[..., Any], payload: Any, **shared: Any) -> Any:
        return fn(payload, **shared)


class ActorPoolExecutor(RayExecutor):
    """``map`` over ``size`` actors that live (and die) with the trial: Ray kills idle task workers
    beyond ``num_cpus`` within seconds, and restarting them (torch imports) costs more than an
    Algorithm 1 iteration on digits. The trial's placement group captures the actors."""

    def __init__(self, size: int, num_cpus: float, num_gpus: float = 0.0) -> None:
        super().__init__(num_cpus, num_gpus)
        slot = self.ray.remote(_Slot).options(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0)
        self.actors = [slot.remote() for _ in range(size)]

    def map(self, fn: Callable[..., Any], payloads: Sequence[Any], **shared: Any) -> list[Any]:
        ray, n = self.ray, len(self.actors)
        refs = {k: v if isinstance(v, ray.ObjectRef) else ray.put(v) for k, v in shared.items()}
        futures = [self.actors[i % n].run.remote(fn, p, **refs) for i, p in enumerate(payloads)]
        return list(ray.get(futures))


class _TrialBody:
    """What ``SurrogateTrainable`` does (free of Ray, so this module imports without it)."""

    trial_id: str
    config: dict[str, Any]
    run: SurrogateHPO | FixedRun
    pool: ActorPoolExecutor | None = None

    def setup(self, config: Mapping[str, Any]) -> None:
        from raytune_periodic.training.spec import load_data, parse_run_spec
        from raytune_periodic.tuning.trainable import trial_spec

        torch.set_num_threads(max(1, int(config["rp"].get("threads", 1))))
        rp, spec = config["rp"], trial_spec(config)
        model = dict(spec["model"])
        options = {**rp["surrogate"]["options"], "model": model.pop("name"),
                   "model_options": model, "seed": int(spec["train"]["seed"])}  # fmt: skip
        cfg = self.cfg = hpo_config(str(rp["method"]), options, int(rp["periods"]))
        self.data, self.wall, self.cpu = load_data(parse_run_spec(spec)), 0.0, 0.0
        if rp["surrogate"]["kind"] == "fixed":
            self.run = FixedRun(cfg, self.data, HypParaSet.from_dict(config["values"]))
            return
        if cfg.executor != "serial" and self.pool is None:  # one actor per candidate bundle
            from ray.util import get_current_placement_group

            pg, own = get_current_placement_group(), {"CPU": cfg.cpus_per_candidate}
            bundles = (pg.bundle_specs[1:] if pg is not None else []) or [own] * cfg.popsize
            cpu, gpu = float(bundles[0].get("CPU", 0)), float(bundles[0].get("GPU", 0))
            self.pool = ActorPoolExecutor(len(bundles), cpu, gpu)
        self.run = SurrogateHPO(cfg, self.data, self.pool or SerialExecutor())

    def step(self) -> dict[str, Any]:
        wall0, cpu0, t, run = time.perf_counter(), time.process_time(), self.run.t, self.run
        rec = run.iteration()
        net, opts = run.fused.original if isinstance(run, SurrogateHPO) else run.original, self.cfg
        train = evaluate(net, self.data.train, run.device, opts.solver.eval_batch_size, opts.kappa)
        cands = rec.get("candidates", [])
        seconds = time.perf_counter() - wall0
        remote = sum(c["cpu_seconds"] for c in cands if c["task_id"])  # the candidates' processes
        self.wall, self.cpu = self.wall + seconds, self.cpu + time.process_time() - cpu0 + remote
        out = self._record(t, rec, train, cands, seconds)
        ok = math.isfinite(out["val_f1"]) and math.isfinite(out["fit_loss"])
        result = {k: out[k] for k in ("val_f1", "test_f1", "cost/t_ori", "cost/wall_s")}
        result["full_val_f1_last"] = out["val_f1"]  # every tune.metric the config allows
        result.update(objective=out["val_f1"] if ok else 0.0, rp_records=json.dumps([out]),
                      rp_status="ok" if ok else "diverged", done=run.done or not ok)  # fmt: skip
        return result

    def _record(self, t: int, rec: dict, train: dict, cands: list, seconds: float) -> dict:
        """One MLflow step: the original's metrics, the values, the cost so far, candidates."""
        cfg, run = self.cfg, self.run
        ratio, max_ep = float(run.flops["ratio"]), cfg.max_iter_epochs
        orig, sur = run.totals["original_epochs"] / max_ep, run.totals["surrogate_epochs"] / max_ep
        out = {new: rec[old] for new, old in RENAMED.items()}
        out.update({"period": t, "epoch": (t + 1) * cfg.ni_epochs,
                    "passes": (orig + sur / ratio) * cfg.iterations * run.steps,
                    "train_loss": train["loss"], "train_f1": train["macro_f1"],
                    "train_accuracy": train["accuracy"], "gap": train["macro_f1"] - out["val_f1"],
                    "period_seconds": seconds, "cost/original_trainings": orig,
                    "cost/surrogate_trainings": sur, "cost/t_ori": orig + sur / ratio,
                    "cost/flops_ratio": ratio, "cost/wall_s": self.wall,
                    "cost/cpu_s": self.cpu})  # fmt: skip
        for key, val in rec.items():
            if key.startswith(("trained/", "best/")):
                out[key.replace("trained/", "value/")] = val
        out.update({key: rec[key] for key in OPTIONAL if key in rec})
        for i, c in enumerate(cands):
            out.update({f"cand/{i}/{key}": c[key] for key in CANDIDATE})
        return {k: float(v) for k, v in out.items()}

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        state = {"run": self.run.state_dict(), R.STATE_TRIAL_ID: self.trial_id}
        torch.save({**state, "wall": self.wall, "cpu": self.cpu},
                   os.path.join(checkpoint_dir, R.SURROGATE_FILE))  # fmt: skip

    def load_checkpoint(self, checkpoint: str) -> None:
        path = os.path.join(checkpoint, R.SURROGATE_FILE)
        state = torch.load(path, map_location=self.run.device, weights_only=False)
        self.run.load_state_dict(state["run"])
        self.wall, self.cpu = float(state["wall"]), float(state["cpu"])

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        self.setup(new_config)  # an actor reused for another trial of the same method
        self.config = new_config
        return True


@functools.cache
def trainable_class() -> type:
    """``SurrogateTrainable(tune.Trainable)``, made on first use (Ray is imported then)."""
    from ray import tune

    doc = "One Tune iteration = one Algorithm 1 iteration (or NI epochs of a fixed run)."
    attrs = {"__module__": __name__, "__doc__": doc}
    return type("SurrogateTrainable", (_TrialBody, tune.Trainable), attrs)


def __getattr__(name: str) -> Any:
    if name == "SurrogateTrainable":  # importable by name: Ray pickles the class by reference
        return trainable_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
