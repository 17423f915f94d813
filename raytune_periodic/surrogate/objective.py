"""The optimizers' objective, eq. 11: ``acc_v − κ · mean_j ||x_j||_1 / ||x_j||_2`` (κ = 1e-5).

``acc_v`` is the validation accuracy as a fraction in [0, 1]; ``x_j`` is the FC2 input of
validation sample j (the head's ``x``: Table 1's ``Vᵀz`` unless the head records it after the
activation; for a one-FC head such as ResNet20's, which has no x, its FC's input z). The L1/L2
ratio is Hoyer's sparseness measure: small for sparse x. A zero vector counts as ratio 0. Larger
is better; the optimizers minimise ``−objective``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from raytune_periodic.surrogate.fc_head import sparse_head
from raytune_periodic.training.batching import iterate_eval
from raytune_periodic.training.metrics import confusion_update, macro_f1

KAPPA = 1e-5


def l1_l2_ratio(x: torch.Tensor) -> torch.Tensor:
    """Per-row ``||x||_1 / ||x||_2`` of a (N, ...) tensor (0 for an all-zero row)."""
    flat = x.flatten(1).double()
    l1 = flat.abs().sum(1)
    l2 = flat.norm(dim=1)
    return torch.where(l2 > 0, l1 / l2.clamp_min(1e-300), torch.zeros_like(l1))


def objective(accuracy: float, x: torch.Tensor, kappa: float = KAPPA) -> float:
    """Eq. 11 from an accuracy in [0, 1] and the FC2 inputs ``x`` of the validation samples."""
    return float(accuracy) - kappa * float(l1_l2_ratio(x).mean())


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    kappa: float = KAPPA,
) -> dict[str, float]:
    """Eval-mode pass over ``dataset``: accuracy, macro-F1, loss, mean L1/L2 of x, objective."""
    device = torch.device(device)
    head = sparse_head(model)
    was_training = model.training
    model.eval()
    correct = total = 0
    loss_sum = ratio_sum = 0.0
    conf: torch.Tensor | None = None
    try:
        for x, y in iterate_eval(dataset, batch_size, device):
            logits = model(x)
            if conf is None:
                conf = torch.zeros(logits.shape[1] ** 2, dtype=torch.long, device=device)
            pred = logits.argmax(1)
            confusion_update(conf, y, pred)
            correct += int((pred == y).sum())
            total += len(y)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            features = head.features
            assert features is not None
            ratio_sum += float(l1_l2_ratio(features).sum())
    finally:
        head.clear()
        model.train(was_training)
    n = max(total, 1)
    accuracy, ratio = correct / n, ratio_sum / n
    return {
        "accuracy": accuracy,
        "macro_f1": macro_f1(conf) if conf is not None else 0.0,
        "loss": loss_sum / n,
        "l1_l2": ratio,
        "objective": accuracy - kappa * ratio,
    }


__all__ = ["KAPPA", "evaluate", "l1_l2_ratio", "objective"]
