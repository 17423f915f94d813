"""Confusion-matrix based metrics computed on the device without per-step host syncs."""

from __future__ import annotations

import torch


def confusion_update(conf: torch.Tensor, target: torch.Tensor, pred: torch.Tensor) -> None:
    """Add a batch into a flat ``C*C`` confusion count tensor (row = true, column = predicted).

    ``index_add_``, not ``bincount``: CUDA's bincount reads the input's maximum back to the host
    to size its output, a device sync per training step (measured: the engine 1.11x a bare loop
    on an H200 with it, see docs/BENCHMARKS.md)."""
    c = int(conf.numel() ** 0.5)
    idx = target * c + pred
    conf.index_add_(0, idx, torch.ones_like(idx))


def macro_f1(conf: torch.Tensor) -> float:
    """Macro-averaged F1 over the classes that occur (as true or predicted) in ``conf``.

    Classes absent from both the targets and the predictions are ignored (sklearn's
    ``f1_score(average="macro", labels=present)`` convention), so small validation batches do not
    score missing classes as 0.
    """
    c = int(conf.numel() ** 0.5)
    m = conf.view(c, c).to(torch.float64)
    tp = m.diagonal()
    support = m.sum(1)
    predicted = m.sum(0)
    present = (support + predicted) > 0
    if not bool(present.any()):
        return 0.0
    denom = support + predicted
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))
    return float(f1[present].mean())
