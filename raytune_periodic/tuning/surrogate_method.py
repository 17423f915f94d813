"""The surrogate paper's methods as Tune searches in the same experiments as the others.

=================  ====================================================================
search             one Tune trial runs
=================  ====================================================================
surrogate_de       Algorithm 1 with DE/rand/1/bin (candidates trained on the surrogate)
surrogate_pso      Algorithm 1 with PSO
ea_original        "EA without surrogate": Algorithm 1 whose candidates train copies of
                   the original (DE by default; ``optimizer: pso`` switches)
sparseness_grid    the original alone with one fixed HypParaSet: a tied grid (§3.4) or
                   explicit ``points`` (``none``: the baseline, ``paper``: 1e-5 / 0.5)
=================  ====================================================================

Entries take the :class:`~raytune_periodic.surrogate.config.SurrogateHPOConfig` keys (popsize,
ni_epochs, search, solver, F/CR, omega/phip/phig, cpus_per_candidate, ...); model and data come
from ``base.model``/``base.dataset``. ``base.regularizers`` and ``base.train`` do not apply: these
trials train with the entry's SGD ``solver`` (§3.1) and the 8 values on the two-FC head.

Budget and fairness. One Tune iteration = one Algorithm 1 iteration = NI epochs = one *period*
(``tune.iteration_periods`` does not apply), so every trial trains the original for ``budget.periods
× ni_epochs`` epochs = MaxIter (``max_iter_epochs`` may be given only if it agrees), with the same
init and batch seeds. Per seed, DE/PSO/EA run ``replicates`` trials (default ``budget.trials``;
restarts whose best-validation trial ``compare`` selects) and a grid runs one trial per point,
whatever ``budget.trials``: the paper's point (Table 5) is that the grid costs N_grid original
trainings, so cost is measured, not equalised. Every record carries it cumulatively in units of one
MaxIter training: ``cost/original_trainings`` (≈ 2 for Algorithm 1, 1 per grid point),
``cost/surrogate_trainings`` (= popsize), ``cost/t_ori`` (their sum with surrogate work weighted
by FLOPs T_sur/T_ori), ``cost/wall_s``, ``cost/cpu_s`` (candidate processes included); ``passes``
is the original-equivalent SGD steps. ``val_f1``/``full_val_f1`` (and ``objective``) are the
original's macro-F1 on the whole validation split after each iteration; ``value/*`` are the
values the original trained with in that iteration; ``cand/<i>/*`` every candidate evaluation.

Candidates run in one Ray actor per bundle of the trial's placement group (Tune captures child
tasks/actors into it), created once per trial so worker processes are not restarted each iteration.
Validation calls ``check_base`` when the config wires it (see the report); Ray is imported lazily.
"""

from __future__ import annotations

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
from raytune_periodic.surrogate.algorithm import SurrogateHPO
from raytune_periodic.surrogate.baselines import tied_grid
from raytune_periodic.surrogate.config import SurrogateHPOConfig
from raytune_periodic.surrogate.executors import Executor, SerialExecutor
from raytune_periodic.surrogate.networks import build_surrogate
from raytune_periodic.surrogate.objective import evaluate
from raytune_periodic.surrogate.sparseness import HypParaSet, attach_sparseness
from raytune_periodic.surrogate.training import (
    derive_seed,
    make_sgd,
    plain_loss,
    set_lr,
    steps_per_epoch,
    train_steps,
)
from raytune_periodic.training.engine import resolve_device
from raytune_periodic.tuning.methods import SearchMethod, register

CHECKPOINT_FILE = "surrogate.pt"
TRAIN_KEYS = {"ni_epochs", "max_iter_epochs", "solver", "kappa", "inverted_dropout", "device"}
ALGO_KEYS = TRAIN_KEYS | {"popsize", "search", "initial", "eta", "conv", "executor"}
ALGO_KEYS |= {"cpus_per_candidate", "gpus_per_candidate"}
GRID_KEYS = {"points", "n_p", "n_lambda", "p_range", "log10_lambda_range", "names", "fixed"}
NAMED_POINTS = {"none": HypParaSet(), "paper": HypParaSet.paper_default()}


def hpo_config(name: str, options: Mapping[str, Any], periods: int) -> SurrogateHPOConfig:
    """The Algorithm 1 / fixed-run config of entry ``name``; MaxIter = periods × NI."""
    fld = f"methods.{name}"
    skip = {"description", "replicates", "search", *GRID_KEYS}
    data = {k: v for k, v in options.items() if k not in skip}
    if data.get("cpus_per_candidate") == "auto":
        del data["cpus_per_candidate"]
    ni = data.setdefault("ni_epochs", 1.0)
    if isinstance(ni, bool) or not isinstance(ni, int | float) or not 0 < ni < math.inf:
        raise ConfigError(f"{fld}.ni_epochs", f"must be a number > 0, got {ni!r}")
    want = periods * ni
    given = data.get("max_iter_epochs", want)
    if isinstance(given, bool) or not isinstance(given, int | float) or abs(given - want) > 1e-9:
        raise ConfigError(
            f"{fld}.max_iter_epochs",
            f"is budget.periods × ni_epochs = {want:g} "
            f"(one period = one iteration of NI epochs); got {given!r}",
        )
    data["max_iter_epochs"] = want
    return SurrogateHPOConfig.from_dict(data, field=fld)


def grid_points(name: str, entry: Mapping[str, Any]) -> list[HypParaSet]:
    """Explicit ``points`` (mappings, ``none``, ``paper``) or the tied grid of §3.4."""
    fld = f"methods.{name}"
    if "points" in entry:
        points, other = entry["points"], sorted(GRID_KEYS & set(entry) - {"points"})
        if other:
            raise ConfigError(f"{fld}.{other[0]}", "give either points or the tied-grid keys")
        if not isinstance(points, list) or not points:
            raise ConfigError(f"{fld}.points", f"expected a non-empty list, got {points!r}")
        out = []
        for i, p in enumerate(points):
            if isinstance(p, str) and p not in NAMED_POINTS:
                raise ConfigError(f"{fld}.points[{i}]", f"unknown {p!r}; valid: none, paper")
            out.append(
                NAMED_POINTS[p]
                if isinstance(p, str)
                else HypParaSet.from_dict(p, f"{fld}.points[{i}]")
            )
        return out
    kwargs: dict[str, Any] = {k: entry[k] for k in ("n_p", "n_lambda", "names") if k in entry}
    for key in ("p_range", "log10_lambda_range"):
        if key in entry:
            v = entry[key]
            if (
                not isinstance(v, list | tuple)
                or len(v) != 2
                or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
            ):
                raise ConfigError(f"{fld}.{key}", f"expected [lower, upper], got {v!r}")
            kwargs[key] = (float(v[0]), float(v[1]))
    if "fixed" in entry:
        kwargs["fixed"] = HypParaSet.from_dict(entry["fixed"], f"{fld}.fixed")
    return tied_grid(**kwargs, field=fld)


class _SurrogateFamily(SearchMethod):
    """Shared by the four searches: validation, the spec handed to the trials, the trainable."""

    kind: ClassVar[str] = "algorithm"  #: "algorithm" (Algorithm 1) or "fixed" (the original)

    @classmethod
    def check(cls, name, entry, trials, periods, bounds) -> None:  # type: ignore[override]
        super().check(name, entry, trials, periods, bounds)
        hpo_config(name, cls.options_of(entry), periods)

    @classmethod
    def options_of(cls, entry: Mapping[str, Any]) -> dict[str, Any]:
        return dict(entry)

    @classmethod
    def check_base(
        cls,
        name: str,
        entry: Mapping[str, Any],
        base: Mapping[str, Any],
        input_shape: Sequence[int] | None,
    ) -> None:
        """The base model must have a two-FC head (and a surrogate); needs the data's shape."""
        if input_shape is None:
            return
        raw = base.get("model") or {"name": "mlp"}
        opts = {"name": raw} if isinstance(raw, str) else dict(raw)
        mname = opts.pop("name")
        try:
            net = build_model(mname, tuple(input_shape), 2, **opts)
            attach_sparseness(net, field="model.name")
            if cls.kind == "algorithm" and cls.options_of(entry).get("evaluate_on") != "original":
                build_surrogate(net, input_shape, entry.get("conv", "auto"), field="surrogate")
        except ConfigError as exc:
            key = exc.field.removeprefix("surrogate.")
            fld = f"methods.{name}.{key}" if key == "conv" else "base.model.name"
            raise ConfigError(fld, exc.message) from None

    def controller(self) -> dict[str, Any]:
        return {"type": self.search}  # descriptive (the rp.controller tag); never built

    def extra_rp(self) -> dict[str, Any]:
        return {"surrogate": {"kind": self.kind, "options": self.options_of(self.entry)}}

    def trainable(self, resources: Mapping[str, float]) -> Any:
        from ray import tune

        cpu, gpu = float(resources.get("cpu", 1) or 1), float(resources.get("gpu", 0) or 0)
        return tune.with_resources(
            trainable_class(),
            tune.PlacementGroupFactory([_bundle(cpu, gpu), *self.candidate_bundles(cpu)]),
        )

    def candidate_bundles(self, trial_cpu: float) -> list[dict[str, float]]:
        return []


class _Algorithm1(_SurrogateFamily):
    keys = ALGO_KEYS | {"description", "replicates"}
    optimizer: ClassVar[str] = "de"
    per_seed = True

    @classmethod
    def check(cls, name, entry, trials, periods, bounds) -> None:  # type: ignore[override]
        super().check(name, entry, trials, periods, bounds)
        reps = entry.get("replicates", trials)
        if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
            raise ConfigError(
                f"methods.{name}.replicates", f"must be an integer >= 1, got {reps!r}"
            )
        cpc = entry.get("cpus_per_candidate", "auto")
        if cpc != "auto" and (
            isinstance(cpc, bool) or not isinstance(cpc, int | float) or cpc <= 0
        ):
            raise ConfigError(
                f"methods.{name}.cpus_per_candidate", f"must be auto or > 0, got {cpc!r}"
            )

    @classmethod
    def options_of(cls, entry: Mapping[str, Any]) -> dict[str, Any]:
        return {"optimizer": cls.optimizer, **entry, "evaluate_on": cls.evaluate_on()}

    @classmethod
    def evaluate_on(cls) -> str:
        return "surrogate"

    def extra_rp(self) -> dict[str, Any]:
        from ray import tune

        reps = int(self.entry.get("replicates", self.trials))
        return {**super().extra_rp(), "replicate": tune.grid_search(list(range(reps)))}

    def candidate_bundles(self, trial_cpu: float) -> list[dict[str, float]]:
        """``popsize`` bundles of ``cpus_per_candidate`` (``auto``: what the cluster has left)."""
        import ray

        opts = self.options_of(self.entry)
        if opts.get("executor", "auto") == "serial":
            return []
        pop, fld = int(opts.get("popsize", 6)), f"methods.{self.name}.cpus_per_candidate"
        total = float(ray.cluster_resources().get("CPU", 0)) if ray.is_initialized() else 0.0
        cpc = opts.get("cpus_per_candidate", "auto")
        if cpc == "auto":
            cpc = math.floor(min(1.0, (total - trial_cpu) / pop) * 1000) / 1000 if total else 0.5
        if cpc < 0.01 or (total and trial_cpu + pop * cpc > total + 1e-9):
            raise ConfigError(
                fld,
                f"a trial needs {trial_cpu:g} + {pop} × {cpc:g} CPUs but the "
                f"cluster has {total:g}: lower it, tune.resources.cpu or popsize",
            )
        return [_bundle(float(cpc), float(opts.get("gpus_per_candidate", 0.0)))] * pop


@register
class SurrogateDE(_Algorithm1):
    """Algorithm 1, DE/rand/1/bin on the surrogate."""

    search = "surrogate_de"
    keys = _Algorithm1.keys | {"F", "CR"}


@register
class SurrogatePSO(_Algorithm1):
    """Algorithm 1, PSO on the surrogate."""

    search = "surrogate_pso"
    keys = _Algorithm1.keys | {"omega", "phip", "phig"}
    optimizer = "pso"


@register
class EAOriginal(_Algorithm1):
    """ "EA without surrogate": candidates trained on copies of the original."""

    search = "ea_original"
    keys = (_Algorithm1.keys | {"optimizer", "F", "CR", "omega", "phip", "phig"}) - {"eta", "conv"}

    @classmethod
    def evaluate_on(cls) -> str:
        return "original"


@register
class SparsenessGrid(_SurrogateFamily):
    """The original with fixed values, one trial per point and seed (all in one Tuner)."""

    search = "sparseness_grid"
    keys = TRAIN_KEYS | GRID_KEYS | {"description"}
    kind = "fixed"

    @classmethod
    def check(cls, name, entry, trials, periods, bounds) -> None:  # type: ignore[override]
        super().check(name, entry, trials, periods, bounds)
        grid_points(name, entry)

    def values_space(self, seed: int) -> dict[str, Any]:
        from ray import tune

        return tune.grid_search([p.to_dict() for p in grid_points(self.name, self.entry)])  # type: ignore[no-any-return]


def _bundle(cpu: float, gpu: float) -> dict[str, float]:
    return {"CPU": cpu, **({"GPU": gpu} if gpu else {})}


class FixedRun:
    """The original alone with fixed ``hyp`` for MaxIter epochs, reporting every NI epochs.

    Same init, batch seeds and learning-rate steps as ``baselines.train_original`` (tested equal)
    and as Algorithm 1's stage (a), so the grid and the searches are paired per seed.
    """

    def __init__(self, config: SurrogateHPOConfig, data: DataSplits, hyp: HypParaSet) -> None:
        cfg = self.config = config
        self.data, self.hyp = data, hyp
        self.device = resolve_device(cfg.device, "surrogate.device")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(cfg.seed, "init"))
            model = build_model(cfg.model, data.input_shape, data.num_classes, **cfg.model_options)
        attach_sparseness(model, hyp, inverted=cfg.inverted_dropout)
        self.original = model.to(self.device)
        self.sgd = make_sgd(model.parameters(), cfg.solver, cfg.solver.lr)
        spe = steps_per_epoch(data.train, cfg.solver.batch_size)
        self.steps = max(1, round(cfg.ni_epochs * spe))
        self.t = 0
        self.flops = {"ratio": 1.0}
        self.totals = {"original_epochs": 0.0, "surrogate_epochs": 0.0}

    @property
    def done(self) -> bool:
        return self.t >= self.config.iterations

    def iteration(self) -> dict[str, Any]:
        cfg, opts, t = self.config, self.config.solver, self.t
        lr = opts.lr_at(t * self.steps)
        set_lr(self.sgd, lr)
        seed = derive_seed(cfg.seed, t, "original")
        fit = train_steps(
            self.original,
            plain_loss(self.original),
            self.sgd,
            self.data.train,
            self.steps,
            opts.batch_size,
            seed,
            self.device,
        )
        val, test = (
            evaluate(self.original, split, self.device, opts.eval_batch_size, cfg.kappa)
            for split in (self.data.val, self.data.test)
        )
        self.t += 1
        self.totals["original_epochs"] += cfg.ni_epochs
        return {
            "lr": lr,
            "fused_train_loss": fit["train_loss"],
            "original_val_f1": val["macro_f1"],
            "original_val_accuracy": val["accuracy"],
            "original_val_objective": val["objective"],
            "original_test_f1": test["macro_f1"],
            "original_test_accuracy": test["accuracy"],
            **{f"trained/{k}": v for k, v in self.hyp.to_dict().items()},
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "model": self.original.state_dict(),
            "sgd": self.sgd.state_dict(),
            "totals": dict(self.totals),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.t = int(state["t"])
        self.original.load_state_dict(state["model"])
        self.sgd.load_state_dict(state["sgd"])
        self.totals = {k: float(v) for k, v in state["totals"].items()}


class _Slot:
    """One candidate process (a Ray actor in one bundle of the trial's placement group)."""

    def __init__(self) -> None:
        torch.set_num_threads(1)

    def run(self, fn: Callable[..., Any], payload: Any, **shared: Any) -> Any:
        return fn(payload, **shared)


class ActorPoolExecutor(Executor):
    """``map`` over persistent actors (Ray tasks would restart worker processes between
    iterations: Ray kills idle workers above ``num_cpus`` after a second)."""

    name = "ray"

    def __init__(self, size: int, num_cpus: float, num_gpus: float = 0.0) -> None:
        import ray

        self.ray = ray
        remote = ray.remote(_Slot).options(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0)
        self.actors = [remote.remote() for _ in range(size)]

    @property
    def threads(self) -> int:
        return 1

    def share(self, obj: Any) -> Any:
        return self.ray.put(obj)

    def map(self, fn: Callable[..., Any], payloads: Sequence[Any], **shared: Any) -> list[Any]:
        ray, n = self.ray, len(self.actors)
        refs = {k: v if isinstance(v, ray.ObjectRef) else ray.put(v) for k, v in shared.items()}
        futures = [self.actors[i % n].run.remote(fn, p, **refs) for i, p in enumerate(payloads)]
        return list(ray.get(futures))

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []


def _pool(popsize: int, config: SurrogateHPOConfig) -> ActorPoolExecutor:
    """Actors sized like the trial's candidate bundles (outside Tune: the config's numbers)."""
    import ray

    pg = ray.util.get_current_placement_group()
    bundles = pg.bundle_specs[1:] if pg is not None else []
    if bundles:
        b = bundles[0]
        return ActorPoolExecutor(len(bundles), float(b.get("CPU", 0)), float(b.get("GPU", 0)))
    return ActorPoolExecutor(popsize, config.cpus_per_candidate, config.gpus_per_candidate)


class _TrialBody:
    """What ``SurrogateTrainable`` does (kept free of Ray so the module imports without it)."""

    trial_id: str
    config: dict[str, Any]

    def setup(self, config: dict[str, Any]) -> None:
        torch.set_num_threads(max(1, int(config["rp"].get("threads", 1))))
        self.pool: ActorPoolExecutor | None = None
        self._build(config)

    def _build(self, config: Mapping[str, Any]) -> None:
        from raytune_periodic.training.spec import load_data, parse_run_spec
        from raytune_periodic.tuning.trainable import trial_spec

        rp, spec = config["rp"], trial_spec(config)
        model = dict(spec["model"])
        options = {
            **rp["surrogate"]["options"],
            "model": model.pop("name"),
            "model_options": model,
            "seed": int(spec["train"]["seed"]),
        }
        cfg = self.cfg = hpo_config(str(rp["method"]), options, int(rp["periods"]))
        self.data = load_data(parse_run_spec(spec))
        self.run: SurrogateHPO | FixedRun
        if rp["surrogate"]["kind"] == "fixed":
            self.run = FixedRun(cfg, self.data, HypParaSet.from_dict(config["values"]))
        else:
            executor: Executor = SerialExecutor()
            if cfg.executor != "serial":
                self.pool = self.pool or _pool(cfg.popsize, cfg)
                executor = self.pool
            self.run = SurrogateHPO(cfg, self.data, executor)
        self.wall = self.cpu = 0.0

    def step(self) -> dict[str, Any]:
        wall0, cpu0, t = time.perf_counter(), time.process_time(), self.run.t
        rec = self.run.iteration()
        original = (
            self.run.fused.original if isinstance(self.run, SurrogateHPO) else self.run.original
        )
        train = evaluate(
            original,
            self.data.train,
            self.run.device,
            self.cfg.solver.eval_batch_size,
            self.cfg.kappa,
        )
        cands = rec.get("candidates", [])
        seconds = time.perf_counter() - wall0
        self.wall += seconds
        self.cpu += (
            time.process_time() - cpu0 + sum(c["cpu_seconds"] for c in cands if c["task_id"])
        )
        out = self._record(t, rec, train, cands, seconds)
        diverged = not (math.isfinite(out["val_f1"]) and math.isfinite(out["fit_loss"]))
        result = {k: out[k] for k in ("val_f1", "test_f1", "cost/t_ori", "cost/wall_s")}
        result.update(
            objective=0.0 if diverged else out["val_f1"],
            rp_records=json.dumps([out]),
            rp_status="diverged" if diverged else "ok",
        )
        if diverged or self.run.done:
            result["done"] = True
        return result

    def _record(
        self,
        t: int,
        rec: Mapping[str, Any],
        train: Mapping[str, float],
        cands: Sequence[Mapping[str, Any]],
        seconds: float,
    ) -> dict[str, float]:
        cfg, run = self.cfg, self.run
        tot, ratio = run.totals, float(run.flops["ratio"])
        orig, sur = (
            tot["original_epochs"] / cfg.max_iter_epochs,
            tot["surrogate_epochs"] / cfg.max_iter_epochs,
        )
        out = {
            "period": float(t),
            "epoch": (t + 1) * cfg.ni_epochs,
            "lr": rec["lr"],
            "passes": (orig + sur / ratio) * cfg.iterations * run.steps,
            "train_loss": train["loss"],
            "train_f1": train["macro_f1"],
            "train_accuracy": train["accuracy"],
            "fit_loss": rec["fused_train_loss"],
            "val_f1": rec["original_val_f1"],
            "full_val_f1": rec["original_val_f1"],
            "val_accuracy": rec["original_val_accuracy"],
            "val_objective": rec["original_val_objective"],
            "test_f1": rec["original_test_f1"],
            "test_accuracy": rec["original_test_accuracy"],
            "gap": train["macro_f1"] - rec["original_val_f1"],
            "period_seconds": seconds,
            "cost/original_trainings": orig,
            "cost/surrogate_trainings": sur,
            "cost/t_ori": orig + sur / ratio,
            "cost/flops_ratio": ratio,
            "cost/wall_s": self.wall,
            "cost/cpu_s": self.cpu,
        }
        for key, val in rec.items():
            if key.startswith(("trained/", "best/")):
                out[key.replace("trained/", "value/")] = float(val)
        for key in (
            "best_objective",
            "population_objective_mean",
            "kept_previous",
            "surrogate_val_accuracy",
            "ray_tasks",
        ):
            if key in rec:
                out[key] = float(rec[key])
        for i, c in enumerate(cands):
            for key in ("objective", "accuracy", "wall_seconds", *HypParaSet().to_dict()):
                out[f"cand/{i}/{key}"] = float(c[key])
        return {k: float(v) for k, v in out.items()}

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        state = {
            "run": self.run.state_dict(),
            "rp_trial_id": self.trial_id,
            "wall": self.wall,
            "cpu": self.cpu,
        }
        torch.save(state, os.path.join(checkpoint_dir, CHECKPOINT_FILE))

    def load_checkpoint(self, checkpoint: str | dict | None) -> None:
        assert isinstance(checkpoint, str)
        path = os.path.join(checkpoint, CHECKPOINT_FILE)
        state = torch.load(path, map_location=self.run.device, weights_only=False)
        self.run.load_state_dict(state["run"])
        self.wall, self.cpu = float(state["wall"]), float(state["cpu"])

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        self._build(new_config)  # an actor reused for another trial of the same method
        self.config = new_config
        return True

    def cleanup(self) -> None:
        if self.pool is not None:
            self.pool.close()


_CLASSES: dict[str, type] = {}


def trainable_class() -> type:
    """``SurrogateTrainable(tune.Trainable)``, made on first use (Ray imported then)."""
    if "trainable" not in _CLASSES:
        from ray import tune

        doc = "One Tune iteration = one Algorithm 1 iteration (or NI epochs of a fixed run)."
        _CLASSES["trainable"] = type(
            "SurrogateTrainable",
            (_TrialBody, tune.Trainable),
            {"__module__": __name__, "__doc__": doc},
        )
    return _CLASSES["trainable"]


def __getattr__(name: str) -> Any:
    if name == "SurrogateTrainable":  # importable by name: Ray pickles the class by reference
        return trainable_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
