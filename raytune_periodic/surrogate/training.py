"""The small SGD loops of Algorithm 1 and the candidate evaluation that runs in a Ray task.

Every training seeds its own data order and dropout masks from a derived seed inside
``torch.random.fork_rng`` (the caller's RNG is left as it was), so a training is a function of
its inputs: the basis of exact resume between iterations and of running candidates anywhere.
"""

from __future__ import annotations

import copy
import os
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from raytune_periodic.data._base import DataSplits
from raytune_periodic.surrogate.fc_head import SparseTwoFC, sparse_head
from raytune_periodic.surrogate.objective import KAPPA, evaluate
from raytune_periodic.training.batching import make_batches
from raytune_periodic.training.process import prepare_process
from raytune_periodic.validation import integer, number

StepLoss = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class SolverOptions:
    """SGD of §3.1: batch 64, momentum 0.9, ``lr = base_lr · lr_decay^(steps / lr_decay_steps)``.

    Per Algorithm 1 (line 16) the rate is updated between iterations: it is constant within one.
    """

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 64
    lr_decay: float = 0.5
    lr_decay_steps: int = 4000
    eval_batch_size: int = 512

    def validate(self, field: str = "solver") -> SolverOptions:
        for key in ("batch_size", "lr_decay_steps", "eval_batch_size"):
            integer(getattr(self, key), f"{field}.{key}", 1)
        number(self.lr, f"{field}.lr", 0.0, low_open=True)
        number(self.momentum, f"{field}.momentum", 0.0, 1.0)
        number(self.weight_decay, f"{field}.weight_decay", 0.0)
        number(self.lr_decay, f"{field}.lr_decay", 0.0, 1.0, low_open=True)
        return self

    def lr_at(self, steps: int) -> float:
        return self.lr * self.lr_decay ** (steps / self.lr_decay_steps)


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 31-bit seed from ``seed`` and keys (strings hashed by CRC32), stable across processes."""
    ints = [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return int(np.random.SeedSequence([int(seed) % 2**32, *ints]).generate_state(1)[0] >> 1)


def steps_per_epoch(dataset: Dataset, batch_size: int) -> int:
    """Optimizer steps in one epoch (the project's batching drops a trailing batch of one)."""
    n = len(dataset)  # type: ignore[arg-type]
    full, rest = divmod(n, batch_size)
    return max(full + (1 if rest > 1 or (rest == 1 and full == 0) else 0), 1)


def make_sgd(params: Iterable[nn.Parameter], opts: SolverOptions, lr: float) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=lr, momentum=opts.momentum, weight_decay=opts.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _heads(model: nn.Module) -> list[SparseTwoFC]:
    return [m for m in model.modules() if isinstance(m, SparseTwoFC)]


def train_steps(
    model: nn.Module,
    loss_fn: StepLoss,
    optimizer: torch.optim.Optimizer,
    dataset: Dataset,
    steps: int,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> dict[str, float]:
    """``steps`` SGD steps on shuffled mini-batches; mean loss and accuracy of the steps."""
    heads = _heads(model)
    devices = [device.index or 0] if device.type == "cuda" else []
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = seen = 0
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        batches = make_batches(dataset, batch_size, seed, device)
        model.train()
        try:
            for _ in range(steps):
                x, y = batches.next()
                loss, logits = loss_fn(x, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach().double()
                correct += int((logits.detach().argmax(1) == y).sum())
                seen += len(y)
        finally:
            for head in heads:
                head.clear()
    mean = float(loss_sum) / max(steps, 1)
    return {"train_loss": mean, "train_accuracy": correct / max(seen, 1), "steps": float(steps)}


def plain_loss(model: nn.Module) -> StepLoss:
    """Softmax + the head's sparseness terms (eq. 4): how a lone network (a candidate) trains."""
    head = sparse_head(model)

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return F.cross_entropy(logits, y) + head.penalty(), logits

    return loss_fn


def current_task_id(in_ray: bool) -> str:
    """The Ray task id when running inside a Ray task (``in_ray``), else ``""``."""
    ray = sys.modules.get("ray")
    if not in_ray or ray is None or not ray.is_initialized():
        return ""
    return str(ray.get_runtime_context().get_task_id() or "")


def evaluate_candidate(
    payload: Mapping[str, Any], *, model: nn.Module, data: DataSplits, setup: Mapping[str, Any]
) -> dict[str, Any]:
    """Train a copy of ``model`` with the candidate's values for ``setup['steps']`` and score it.

    ``payload``: ``{"index", "hyp"}``; ``setup``: solver options (``solver``), ``lr``, ``steps``,
    ``seed``, ``kappa``, ``device``, ``threads`` (torch threads inside a Ray task) and
    ``executor`` (its name). Returns the eq. 11 evaluation on the validation split plus timings
    and where it ran (pid, Ray task id).
    """
    wall0, cpu0 = time.perf_counter(), time.process_time()
    prepare_process(setup.get("threads"))
    device = torch.device(setup.get("device", "cpu"))
    opts: SolverOptions = setup["solver"]
    net = copy.deepcopy(model).to(device)
    sparse_head(net).set_values(payload["hyp"])
    sgd = make_sgd(net.parameters(), opts, float(setup["lr"]))
    fit = train_steps(
        net, plain_loss(net), sgd, data.train, int(setup["steps"]), opts.batch_size,
        int(setup["seed"]), device,
    )  # fmt: skip
    val = evaluate(net, data.val, device, opts.eval_batch_size, float(setup.get("kappa", KAPPA)))
    return {
        "index": int(payload["index"]),
        **val,
        "train_loss": fit["train_loss"],
        "wall_seconds": time.perf_counter() - wall0,
        "cpu_seconds": time.process_time() - cpu0,
        "pid": os.getpid(),
        "task_id": current_task_id(setup.get("executor") == "ray"),
    }


__all__ = [
    "SolverOptions",
    "derive_seed",
    "evaluate_candidate",
    "make_sgd",
    "plain_loss",
    "set_lr",
    "steps_per_epoch",
    "train_steps",
]
