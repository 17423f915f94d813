"""Algorithm 1 of the surrogate paper as a resumable object: one ``iteration()`` per NI epochs.

Each iteration t (``curIter = (t+1)·NI ≤ MaxIter``):

(a) copy the stored 'original+surrogate' pair (and its SGD momentum) and train it for NI epochs
    with the previous best setting X_ib^(t-1) and with the current one X_ib^(t) (once if they are
    equal; both on the same batch order), keep the copy whose *original* has the higher validation
    accuracy (ties: the current setting);
(b) hand the kept surrogate to each candidate of the population, train it NI epochs with the
    candidate's values (softmax + sparseness, no original) and score eq. 11 on validation — the
    population runs through an :class:`~raytune_periodic.surrogate.executors.Executor`: Ray tasks
    with fractional CPUs when Ray is initialised, in-process otherwise; the best candidate becomes
    the next X_ib;
(c) tell the population's objectives to the Nevergrad optimizer; the learning rate follows
    ``lr · decay^(steps / decay_steps)``, updated at iteration boundaries (line 16).

``evaluate_on="original"`` drops the surrogate and evaluates candidates by training copies of the
original: the "EA without surrogate" comparator (not the paper's Table 5 EA, which is a GA on the
surrogate: ``optimizer="ga"``). The network starts from seeded random weights, or from
``pretrained`` (the paper fine-tunes a face-recognition model in its first iteration:
:mod:`.original`). ``state_dict()`` between
iterations captures everything (weights, momentum, the pickled optimizer with its RNG, seeds are
derived from (seed, t)), so a restored object's next iteration equals the uninterrupted one.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import torch

from raytune_periodic.data._base import DataSplits
from raytune_periodic.surrogate.config import EVALUATE_ON, SurrogateHPOConfig
from raytune_periodic.surrogate.executors import Executor, make_executor
from raytune_periodic.surrogate.networks import (
    FusedNet,
    count_flops,
    fused_loss,
)
from raytune_periodic.surrogate.objective import evaluate
from raytune_periodic.surrogate.optimizers import PopulationOptimizer
from raytune_periodic.surrogate.original import build_original
from raytune_periodic.surrogate.sparseness import NAMES, HypParaSet
from raytune_periodic.surrogate.training import (
    derive_seed,
    evaluate_candidate,
    make_sgd,
    set_lr,
    steps_per_epoch,
    train_steps,
)
from raytune_periodic.training.engine import resolve_device


def _prefixed(prefix: str, hyp: HypParaSet) -> dict[str, float]:
    return {f"{prefix}/{k}": v for k, v in hyp.to_dict().items()}


class SurrogateHPO:
    """Algorithm 1 on ``data``; call ``iteration()`` until ``done`` (or ``run()``)."""

    def __init__(
        self, config: SurrogateHPOConfig, data: DataSplits, executor: Executor | None = None
    ) -> None:
        cfg = self.config = config.validate()
        self.data = data
        self.device = resolve_device(cfg.device, "surrogate.device")
        initial = cfg.initial or cfg.search.center()
        original, surrogate = build_original(cfg, data, initial, cfg.evaluate_on == "surrogate")
        self.fused = FusedNet(original, surrogate).to(self.device)
        t_ori = count_flops(original, data.input_shape)
        t_sur = count_flops(surrogate, data.input_shape) if surrogate is not None else t_ori
        self.flops = {"t_ori": float(t_ori), "t_sur": float(t_sur), "ratio": t_ori / t_sur}
        self.search = PopulationOptimizer(
            cfg.search, cfg.optimizer_options(), derive_seed(cfg.seed, "search")
        )
        self.executor = executor or make_executor(
            cfg.executor, cfg.cpus_per_candidate, cfg.gpus_per_candidate
        )
        self.steps = max(
            1, round(cfg.ni_epochs * steps_per_epoch(data.train, cfg.solver.batch_size))
        )
        self.previous = self.current = initial
        self.sgd_state: dict[str, Any] | None = None
        self.t = 0
        self.steps_done = 0
        self.totals = dict.fromkeys(
            ("original_runs", "surrogate_runs", "original_epochs", "surrogate_epochs",
             "wall_seconds", "cpu_seconds"), 0.0,
        )  # fmt: skip
        self.history: list[dict[str, Any]] = []
        self._data_handle: Any = None

    # ----------------------------------------------------------------------------- progress
    @property
    def done(self) -> bool:
        return self.t >= self.config.iterations

    @property
    def lr(self) -> float:
        return self.config.solver.lr_at(self.steps_done)

    def run(
        self, on_record: Callable[[dict[str, Any]], None] | None = None
    ) -> list[dict[str, Any]]:
        """Iterate until MaxIter; returns this call's records."""
        out = []
        while not self.done:
            record = self.iteration()
            out.append(record)
            if on_record is not None:
                on_record(record)
        return out

    # ----------------------------------------------------------------------------- stage (a)
    def _train_pair(self, hyp: HypParaSet, lr: float, seed: int) -> tuple[FusedNet, Any, dict]:
        cfg = self.config
        fused = copy.deepcopy(self.fused)
        fused.set_values(hyp)
        sgd = make_sgd(fused.parameters(), cfg.solver, lr)
        if self.sgd_state is not None:
            sgd.load_state_dict(self.sgd_state)
            set_lr(sgd, lr)

        def loss_fn(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return fused_loss(fused, x, y, cfg.eta)

        fit = train_steps(fused, loss_fn, sgd, self.data.train, self.steps,
                          cfg.solver.batch_size, seed, self.device)  # fmt: skip
        val = self._evaluate(fused.original, "val")
        return fused, sgd, {**fit, **val}

    def _evaluate(self, model: torch.nn.Module, split: str) -> dict[str, float]:
        dataset = self.data.val if split == "val" else self.data.test
        opts = self.config.solver
        return evaluate(model, dataset, self.device, opts.eval_batch_size, self.config.kappa)

    # ----------------------------------------------------------------------------- iteration
    def iteration(self) -> dict[str, Any]:
        """One pass of Algorithm 1's loop body; returns a flat record (plus ``candidates``)."""
        if self.done:
            raise RuntimeError(f"Algorithm 1 already ran its {self.config.iterations} iterations")
        t, lr = self.t, self.lr
        wall0, cpu0 = time.perf_counter(), time.process_time()
        stage_a = self._stage_a(t, lr)
        wall_b0 = time.perf_counter()
        population, results, objectives, best = self._stage_b(t, lr, stage_a["fused"])
        self.previous, self.current = stage_a["kept"], population[best]
        self.t += 1
        walls = {
            "wall_seconds_original": wall_b0 - wall0,
            "wall_seconds_population": time.perf_counter() - wall_b0,
        }
        cost = self._cost(stage_a["n_settings"], results, wall0, cpu0)
        record = self._record(t, lr, stage_a, population, results, objectives, best, cost)
        record.update(walls)
        self.history.append(record)
        return record

    def _stage_a(self, t: int, lr: float) -> dict[str, Any]:
        """(a) train original+surrogate with the previous and the current best, keep the
        better (by validation accuracy; ties keep the current)."""
        cfg = self.config
        settings = [("previous", self.previous), ("current", self.current)]
        if self.previous == self.current:
            settings = settings[1:]
        seed_a = derive_seed(cfg.seed, t, "original")
        trained = [(role, hyp, *self._train_pair(hyp, lr, seed_a)) for role, hyp in settings]
        role, kept, fused, sgd, val = max(
            trained, key=lambda r: (r[4]["accuracy"], r[0] == "current")
        )
        self.fused, self.sgd_state = fused, copy.deepcopy(sgd.state_dict())
        self.steps_done += self.steps
        test = self._evaluate(fused.original, "test")
        sur_val = self._evaluate(fused.surrogate, "val") if fused.surrogate is not None else None
        return {"role": role, "kept": kept, "fused": fused, "val": val, "test": test,
                "sur_val": sur_val, "n_settings": len(settings)}  # fmt: skip

    def _stage_b(self, t: int, lr: float, fused: Any) -> tuple[list[HypParaSet], list, list, int]:
        """(b) evaluate the population on copies of the kept surrogate (or original), in
        parallel; (c) tell the optimizer. Returns population, results, objectives, best."""
        cfg = self.config
        population = self.search.ask_population()
        base = fused.surrogate if fused.surrogate is not None else fused.original
        setup = {
            "solver": cfg.solver, "lr": lr, "steps": self.steps, "kappa": cfg.kappa,
            "seed": derive_seed(cfg.seed, t, "candidates"), "device": str(self.device),
            "threads": self.executor.threads, "executor": self.executor.name,
        }  # fmt: skip
        if self._data_handle is None:
            self._data_handle = self.executor.share(self.data)
        payloads = [{"index": i, "hyp": h.to_dict()} for i, h in enumerate(population)]
        results = self.executor.map(
            evaluate_candidate, payloads,
            model=copy.deepcopy(base).cpu(), data=self._data_handle, setup=setup,
        )  # fmt: skip
        objectives = [float(r["objective"]) for r in results]
        self.search.tell_population(objectives)
        finite = [i for i, o in enumerate(objectives) if math.isfinite(o)] or [0]
        best = max(finite, key=lambda i: objectives[i])
        return population, results, objectives, best

    def _cost(self, n_settings: int, results: list, wall0: float, cpu0: float) -> dict[str, float]:
        """This iteration's cost (added to ``totals``): runs, epochs, wall and CPU seconds."""
        cfg = self.config
        remote = self.executor.name != "serial"
        n_orig = n_settings + (cfg.popsize if cfg.evaluate_on == "original" else 0)
        n_sur = cfg.popsize if cfg.evaluate_on == "surrogate" else 0
        cost = {
            "original_runs": float(n_orig),
            "surrogate_runs": float(n_sur),
            "original_epochs": n_orig * cfg.ni_epochs,
            "surrogate_epochs": n_sur * cfg.ni_epochs,
            "wall_seconds": time.perf_counter() - wall0,
            "cpu_seconds": time.process_time()
            - cpu0
            + (sum(r["cpu_seconds"] for r in results) if remote else 0.0),
        }
        for key, val_ in cost.items():
            self.totals[key] += val_
        return cost

    def _record(
        self, t: int, lr: float, a: dict[str, Any], population: list[HypParaSet],
        results: list, objectives: list[float], best: int, cost: dict[str, float],
    ) -> dict[str, Any]:  # fmt: skip
        cfg, totals, val, test, sur_val = (
            self.config,
            self.totals,
            a["val"],
            a["test"],
            a["sur_val"],
        )
        cost_t_ori = (
            totals["original_epochs"] + totals["surrogate_epochs"] / self.flops["ratio"]
        ) / cfg.max_iter_epochs
        return {
            "iteration": float(t),
            "epoch": (t + 1) * cfg.ni_epochs,
            "lr": lr,
            "kept_previous": float(a["role"] == "previous"),
            "original_val_accuracy": val["accuracy"],
            "original_val_f1": val["macro_f1"],
            "original_val_objective": val["objective"],
            "original_val_loss": val["loss"],
            "fused_train_loss": val["train_loss"],
            "original_test_accuracy": test["accuracy"],
            "original_test_f1": test["macro_f1"],
            "original_test_loss": test["loss"],
            **({"surrogate_val_accuracy": sur_val["accuracy"]} if sur_val else {}),
            **_prefixed("trained", a["kept"]),
            "best_objective": objectives[best],
            "best_accuracy": float(results[best]["accuracy"]),
            **_prefixed("best", self.current),
            "population_objective_mean": sum(objectives) / len(objectives),
            **cost,
            **{f"total/{k}": v for k, v in totals.items()},
            "total/cost_t_ori": cost_t_ori,
            "flops_ratio": self.flops["ratio"],
            "ray_tasks": float(sum(1 for r in results if r["task_id"])),
            "candidates": [
                {**h.to_dict(), **r, "executor": self.executor.name}
                for h, r in zip(population, results, strict=True)
            ],
        }

    def best(self) -> HypParaSet:
        """The setting the original was last trained with (X_ib after the last stage (a))."""
        return self.previous

    def result(self) -> dict[str, float]:
        """Table-5 row of the finished (or current) run: final original accuracy and the costs."""
        if not self.history:
            raise RuntimeError("no iteration has run yet")
        last = self.history[-1]
        keys = ("original_test_accuracy", "original_test_f1", "original_val_accuracy")
        return {
            **{k: float(last[k]) for k in keys},
            **{k: float(v) for k, v in last.items() if k.startswith("total/")},
            "flops_ratio": self.flops["ratio"],
            **_prefixed("final", self.best()),
        }

    # ----------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly; valid between iterations."""
        return {
            "t": self.t,
            "steps_done": self.steps_done,
            "fused": copy.deepcopy(self.fused.state_dict()),
            "sgd": copy.deepcopy(self.sgd_state),
            "search": self.search.state_dict(),
            "previous": self.previous.to_dict(),
            "current": self.current.to_dict(),
            "totals": dict(self.totals),
            "history": copy.deepcopy(self.history),
            "names": list(NAMES),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.t = int(state["t"])
        self.steps_done = int(state["steps_done"])
        self.fused.load_state_dict(state["fused"])
        self.sgd_state = copy.deepcopy(state["sgd"])
        self.search.load_state_dict(state["search"])
        self.previous = HypParaSet.from_dict(state["previous"])
        self.current = HypParaSet.from_dict(state["current"])
        self.totals = {k: float(v) for k, v in state["totals"].items()}
        self.history = copy.deepcopy(list(state["history"]))


def ea_config(config: SurrogateHPOConfig) -> SurrogateHPOConfig:
    """The "EA without surrogate" variant of ``config`` (candidates trained on the original)."""
    return replace(config, evaluate_on="original")


__all__ = ["EVALUATE_ON", "SurrogateHPO", "SurrogateHPOConfig", "ea_config"]
