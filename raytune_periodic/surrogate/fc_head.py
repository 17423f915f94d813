"""The four sparseness strategies of the surrogate paper on a model's FC head (eqs. 2–7).

A *two-FC head* is ``fc1 → activation → fc2`` (LeNet's ``head``); a *one-FC head* is a single
``fc`` (ResNet20's ``head``, Table 2: "ResNet20 includes only one FC layer"). In the paper's
notation (Table 1) ``z`` is the input of FC1, ``V`` its weight, ``x = Vᵀz`` the input of FC2 and
``W`` the weight of FC2. ``x_before_activation=True`` (the default, Table 1's definition) records
x as FC1's output before the activation; ``False`` records what FC2 really receives (after it).
The choice moves only L_x, EU(x) and eq. 11's sparseness term: the dropout on x (p_x) commutes
with a ReLU, so it sits after the activation either way. A one-FC head has no x and no W.

- feature L1 (eq. 2):  ``L_z = mean_i ||z_i||_1``, ``L_x = mean_i ||x_i||_1`` (the paper sums over
  the samples; we average over the mini-batch like the cross-entropy, so λ does not scale with the
  batch size);
- weight L1 (eq. 3):  ``L_V = ||V||_1``, ``L_W = ||W||_1`` (entry-wise, biases excluded);
- feature dropout on z and x and weight dropout (DropConnect) on V and W (eq. 7), with drop
  probability ``p``: one Bernoulli mask per mini-batch for a weight matrix, per element for a
  feature. ``inverted=True`` (default, PyTorch's convention) scales survivors by ``1/(1-p)`` in
  training and is the identity in evaluation; ``inverted=False`` is eq. 7 literally (no scaling in
  training, values weighted by ``1-p`` in evaluation). Both have the same expectation.

``attach_sparseness(model)`` swaps the head for a :class:`SparseTwoFC` that keeps the child names
(state-dict keys do not change) and whose ``hyp`` is a plain attribute set in place, so values can
change between iterations without rebuilding the model or its optimizer. Pure PyTorch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from raytune_periodic.errors import ConfigError
from raytune_periodic.surrogate.sparseness import NAMES, ONE_FC_NAMES, HypParaSet


# ----------------------------------------------------------------------------- operators (eq. 7)
def feature_dropout(
    x: torch.Tensor, p: float, training: bool, inverted: bool = True
) -> torch.Tensor:
    """Drop each element with probability ``p`` (eq. 7, D_x); ``inverted``: see the module."""
    if p == 0.0:
        return x
    if inverted:
        return F.dropout(x, p, training)
    if not training:
        return x * (1.0 - p)
    return x * torch.empty_like(x).bernoulli_(1.0 - p)


def dropconnect(
    weight: torch.Tensor, p: float, training: bool, inverted: bool = True
) -> torch.Tensor:
    """Drop each weight with probability ``p``, one mask per call (eq. 7, D_W)."""
    if p == 0.0:
        return weight
    if not training:
        return weight if inverted else weight * (1.0 - p)
    # rand < p drops (P = p); 4x cheaper than bernoulli_ on CPU, where the mask of a big FC1
    # otherwise costs more than its matmul
    keep = torch.rand_like(weight) >= p
    return weight * keep / (1.0 - p) if inverted else weight * keep


def check_one_fc(hyp: HypParaSet, field: str = "hyp") -> HypParaSet:
    """``hyp`` for a one-FC head: every value outside ``(λ_z, λ_V, p_z, p_V)`` must be 0."""
    extra = [n for n in NAMES if n not in ONE_FC_NAMES and getattr(hyp, n)]
    if extra:
        raise ConfigError(
            field,
            f"a head with one FC layer has only z and V ({', '.join(ONE_FC_NAMES)}); "
            f"{', '.join(extra)} must be 0",
        )
    return hyp


class SparseTwoFC(nn.Module):
    """``fc1 → middle → fc2`` (or ``fc1`` alone) with the sparseness hyperparameters applied.

    The children keep the names they had in the original head. Each forward stores the FC inputs
    ``z`` and ``x`` (before dropout; x: see the module) for the L1 terms, the Euclidean losses and
    eq. 11; ``clear()`` drops them (they are never pickled or deep-copied). ``fc2=None``: a one-FC
    head (``x`` stays None; only λ_z, λ_V, p_z, p_V may be non-zero).
    """

    def __init__(
        self,
        children: Mapping[str, nn.Module],
        fc1: str,
        fc2: str | None,
        hyp: HypParaSet | None = None,
        inverted: bool = True,
        x_before_activation: bool = True,
    ) -> None:
        super().__init__()
        for name, module in children.items():
            self.add_module(name, module)
        self.fc1_name, self.fc2_name = fc1, fc2
        self.middle = [n for n in children if n not in (fc1, fc2)]
        self.inverted = inverted
        self.x_before_activation = bool(x_before_activation)
        self.hyp = HypParaSet()
        self.set_values(hyp or HypParaSet())
        self.z: torch.Tensor | None = None
        self.x: torch.Tensor | None = None

    @property
    def one_fc(self) -> bool:
        return self.fc2_name is None

    @property
    def layer_v(self) -> nn.Linear:
        """FC1 (weight V)."""
        return self._modules[self.fc1_name]  # type: ignore[return-value]

    @property
    def layer_w(self) -> nn.Linear | None:
        """FC2 (weight W); None for a one-FC head."""
        return None if self.fc2_name is None else self._modules[self.fc2_name]  # type: ignore

    @property
    def features(self) -> torch.Tensor | None:
        """What eq. 11 measures: x (FC2's input), or z for a one-FC head (its FC's input)."""
        return self.z if self.one_fc else self.x

    def set_values(self, hyp: HypParaSet | Mapping[str, float]) -> None:
        """Set the 8 values in place (takes effect at the next forward)."""
        values = HypParaSet.from_dict(hyp)
        self.hyp = check_one_fc(values) if self.one_fc else values

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h, inv, train = self.hyp, self.inverted, self.training
        self.z = z
        out = feature_dropout(z, h.p_z, train, inv)
        fc1, fc2 = self.layer_v, self.layer_w
        out = F.linear(out, dropconnect(fc1.weight, h.p_v, train, inv), fc1.bias)
        if fc2 is None:
            return out
        if self.x_before_activation:
            self.x = out
        for name in self.middle:
            out = getattr(self, name)(out)
        if not self.x_before_activation:
            self.x = out
        out = feature_dropout(out, h.p_x, train, inv)
        return F.linear(out, dropconnect(fc2.weight, h.p_w, train, inv), fc2.bias)

    def penalty(self) -> torch.Tensor:
        """λ_z L_z + λ_x L_x + λ_V L_V + λ_W L_W (eq. 4 without the softmax loss), last forward."""
        h, fc2 = self.hyp, self.layer_w
        total = self.layer_v.weight.new_zeros(())
        if h.lam_z:
            total = total + h.lam_z * _features(self.z, "z").abs().sum(1).mean()
        if h.lam_x:
            total = total + h.lam_x * _features(self.x, "x").abs().sum(1).mean()
        if h.lam_v:
            total = total + h.lam_v * self.layer_v.weight.abs().sum()
        if h.lam_w and fc2 is not None:
            total = total + h.lam_w * fc2.weight.abs().sum()
        return total

    def clear(self) -> None:
        self.z = self.x = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["z"] = state["x"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("x_before_activation", False)  # pickled before the switch existed
        self.__dict__.update(state)

    def extra_repr(self) -> str:
        vals = ", ".join(f"{k}={v:g}" for k, v in self.hyp.to_dict().items())
        return f"{vals}, inverted={self.inverted}, x_before_activation={self.x_before_activation}"


def _features(t: torch.Tensor | None, name: str) -> torch.Tensor:
    if t is None:
        raise RuntimeError(f"no {name} recorded: run a forward pass before penalty()")
    return t.flatten(1)


# ----------------------------------------------------------------------------- finding the head
@dataclass
class TwoFCHead:
    """Where a model's FC head is: ``getattr(owner, attr)`` with its FC1/FC2 child names
    (``fc2`` None: a one-FC head)."""

    owner: nn.Module
    attr: str
    fc1: str
    fc2: str | None

    @property
    def module(self) -> nn.Module:
        return getattr(self.owner, self.attr)

    @property
    def v(self) -> nn.Linear:
        """FC1, whose weight is the paper's V."""
        return self.module.get_submodule(self.fc1)  # type: ignore[return-value]

    @property
    def w(self) -> nn.Linear | None:
        """FC2, whose weight is the paper's W (None for a one-FC head)."""
        return None if self.fc2 is None else self.module.get_submodule(self.fc2)  # type: ignore

    @classmethod
    def find(cls, model: nn.Module, attr: str = "head", field: str = "model.name") -> TwoFCHead:
        """The FC head of ``model``; a model without one is a one-line ``ConfigError``."""
        head = getattr(model, attr, None)
        if isinstance(head, SparseTwoFC):
            return cls(model, attr, head.fc1_name, head.fc2_name)
        children = list(head.named_children()) if isinstance(head, nn.Sequential) else []
        linears = [n for n, m in children if isinstance(m, nn.Linear)]
        if len(children) == 1 and len(linears) == 1:
            return cls(model, attr, linears[0], None)
        if (
            len(linears) != 2
            or children[0][0] != linears[0]
            or children[-1][0] != linears[1]
            or head[0].out_features != head[-1].in_features  # type: ignore[index]
        ):
            raise ConfigError(
                field,
                f"{type(model).__name__} has no two-FC head for FC sparseness (needs a "
                f"`{attr}` Sequential fc1 -> activation -> fc2, as lenet has, or one holding "
                "a single Linear, as resnet20 has)",
            )
        return cls(model, attr, linears[0], linears[1])


def attach_sparseness(
    model: nn.Module,
    hyp: HypParaSet | Mapping[str, float] | None = None,
    attr: str = "head",
    inverted: bool = True,
    field: str = "model.name",
    x_before_activation: bool = True,
) -> SparseTwoFC:
    """Replace ``model.<attr>`` by a :class:`SparseTwoFC` (idempotent) and return it."""
    found = TwoFCHead.find(model, attr, field)
    head = found.module
    if isinstance(head, SparseTwoFC):
        if hyp is not None:
            head.set_values(hyp)
        return head
    values = HypParaSet.from_dict(hyp) if hyp is not None else None
    sparse = SparseTwoFC(
        dict(head.named_children()), found.fc1, found.fc2, values, inverted, x_before_activation
    )
    setattr(model, attr, sparse)
    return sparse


def sparse_head(model: nn.Module, attr: str = "head") -> SparseTwoFC:
    """The model's :class:`SparseTwoFC` (after :func:`attach_sparseness`)."""
    head = getattr(model, attr, None)
    if not isinstance(head, SparseTwoFC):
        raise ConfigError("model.name", f"{type(model).__name__} has no sparse head: attach first")
    return head


class SparsenessTerm:
    """A ``PeriodEngine`` loss term (callable model → tensor) adding eq. 4's L1 terms."""

    def __init__(self, head: SparseTwoFC) -> None:
        self.head = head

    def __call__(self, model: nn.Module) -> torch.Tensor:
        return self.head.penalty()


__all__ = [
    "SparseTwoFC",
    "SparsenessTerm",
    "TwoFCHead",
    "attach_sparseness",
    "check_one_fc",
    "dropconnect",
    "feature_dropout",
    "sparse_head",
]
