"""The surrogate searches' Tune trainable: one Tune iteration = one Algorithm 1 iteration (or NI
epochs of a fixed run of the original). The methods themselves (validation, the options handed
to trials, resources) are ``tuning/methods/surrogate.py``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from raytune_periodic.data._base import DataSplits
from raytune_periodic.protocol import trial_results as R
from raytune_periodic.surrogate import training as tr
from raytune_periodic.surrogate.algorithm import SurrogateHPO
from raytune_periodic.surrogate.config import SurrogateHPOConfig
from raytune_periodic.surrogate.executors import RayExecutor, SerialExecutor
from raytune_periodic.surrogate.fc_head import sparse_head
from raytune_periodic.surrogate.objective import evaluate
from raytune_periodic.surrogate.original import build_original
from raytune_periodic.surrogate.sparseness import NAMES, HypParaSet
from raytune_periodic.tracking.best_weights import SURROGATE_BUILDER, BestWeights
from raytune_periodic.training.engine import resolve_device
from raytune_periodic.training.process import prepare_process
from raytune_periodic.tuning.methods.surrogate import hpo_config

RENAMED = {"lr": "lr", "fit_loss": "fused_train_loss", "val_f1": "original_val_f1",  # ← record
           "full_val_f1": "original_val_f1", "val_accuracy": "original_val_accuracy",
           "val_objective": "original_val_objective", "test_f1": "original_test_f1",
           "test_accuracy": "original_test_accuracy", "val_loss": "original_val_loss",
           "full_val_loss": "original_val_loss", "test_loss": "original_test_loss"}  # fmt: skip
OPTIONAL = ("best_objective", "population_objective_mean", "kept_previous",
            "surrogate_val_accuracy", "ray_tasks")  # fmt: skip
CANDIDATE = ("objective", "accuracy", "wall_seconds", *NAMES)


class FixedRun:
    """``baselines.train_original`` reporting every NI epochs (tested equal; paired seeds)."""

    def __init__(self, config: SurrogateHPOConfig, data: DataSplits, hyp: HypParaSet) -> None:
        cfg = self.config = config
        self.data, self.hyp, self.t = data, hyp, 0
        self.device = resolve_device(cfg.device, "surrogate.device")
        model = build_original(cfg, data, hyp)[0]
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
        from raytune_periodic.training.spec import load_data, parse_run_spec, trial_spec

        prepare_process(config["rp"].get("threads", 1))
        rp, spec = config["rp"], trial_spec(config)
        model = dict(spec["model"])
        options = {**rp["surrogate"]["options"], "model": model.pop("name"),
                   "model_options": model, "seed": int(spec["train"]["seed"])}  # fmt: skip
        cfg = self.cfg = hpo_config(str(rp["method"]), options, int(rp["periods"]))
        self.builder = {"kind": SURROGATE_BUILDER, "method": str(rp["method"]), "options": options,
                        "periods": int(rp["periods"])}  # fmt: skip
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
        tracker = self._models()  # before the iteration: complete iff the trial starts at t=0
        rec = run.iteration()
        net, opts = self.original, self.cfg
        train = evaluate(net, self.data.train, run.device, opts.solver.eval_batch_size, opts.kappa)
        cands = rec.get("candidates", [])
        seconds = time.perf_counter() - wall0
        remote = sum(c["cpu_seconds"] for c in cands if c["task_id"])  # the candidates' processes
        self.wall, self.cpu = self.wall + seconds, self.cpu + time.process_time() - cpu0 + remote
        out = self._record(t, rec, train, cands, seconds)
        if tracker is not None:  # the best iteration's original, like the engine's (#16)
            tracker.offer_model(out["val_f1"], t, sparse_head(net).hyp.to_dict(), net)
        ok = math.isfinite(out["val_f1"]) and math.isfinite(out["fit_loss"])
        result = {k: out[k] for k in ("val_f1", "test_f1", "cost/t_ori", "cost/wall_s")}
        score = out["val_f1"] if ok else R.WORST_SCORE  # every tune.metric the config allows
        result.update({R.FULL_VAL_LAST: score, R.OBJECTIVE: score, R.VAL_F1: score,
                       R.RECORDS: json.dumps([out]), R.STATUS: "ok" if ok else "diverged",
                       R.DONE: run.done or not ok})  # fmt: skip
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

    def _models(self) -> BestWeights | None:
        """The trial's best-iteration tracker (None with ``mlflow.log_models: none``)."""
        if self.config["rp"].get("log_models", "selected") == "none":
            return None
        tracker: BestWeights | None = getattr(self, "_rp_best", None)
        if tracker is None or tracker.trial_id != self.trial_id:  # a reused actor's new trial
            tracker = self._rp_best = BestWeights(self.trial_id, complete=self.run.t == 0)
        return tracker

    @property
    def original(self) -> torch.nn.Module:
        """The original network as it is after the last iteration."""
        return self.run.fused.original if isinstance(self.run, SurrogateHPO) else self.run.original

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        state = {"run": self.run.state_dict(), R.STATE_TRIAL_ID: self.trial_id}
        torch.save({**state, "wall": self.wall, "cpu": self.cpu},
                   os.path.join(checkpoint_dir, R.SURROGATE_FILE))  # fmt: skip
        tracker = self._models()
        if tracker is not None:  # best and last weights, read by tracking/models.py
            net = self.original
            last = {"period": self.run.t - 1, "values": sparse_head(net).hyp.to_dict()}
            tracker.write(checkpoint_dir, net, self.data, last, self.builder)

    def load_checkpoint(self, checkpoint: str) -> None:
        path = os.path.join(checkpoint, R.SURROGATE_FILE)
        state = torch.load(path, map_location="cpu", weights_only=False)  # RNG states: CPU
        self.run.load_state_dict(state["run"])
        self.wall, self.cpu = float(state["wall"]), float(state["cpu"])
        own = BestWeights.load(checkpoint, self.trial_id)
        if own is not None:
            self._rp_best = own

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
