"""The four sparseness strategies of the surrogate paper on a model's two FC layers (eqs. 2–8).

A *two-FC head* is ``fc1 → activation → fc2`` (LeNet's ``head``). In the paper's notation
(Table 1) ``z`` is the input of FC1, ``V`` its weight, ``x`` the input of FC2 (here: after the
activation, i.e. what FC2 really receives) and ``W`` the weight of FC2. The 8-dimensional
``HypParaSet`` (eq. 8) weights

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

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from raytune_periodic.errors import ConfigError

#: the HypParaSet names, in this order everywhere (arrays, logs)
LAMBDAS = ("lam_z", "lam_x", "lam_v", "lam_w")
DROPOUTS = ("p_z", "p_x", "p_v", "p_w")
NAMES = LAMBDAS + DROPOUTS
#: the paper's initial values (§3.1: "initialized around 1e-5 and 0.5")
PAPER_LAMBDA = 1e-5
PAPER_P = 0.5


@dataclass(frozen=True)
class HypParaSet:
    """Eq. 8: four L1 coefficients (λ ≥ 0) and four drop probabilities (0 ≤ p < 1).

    All default to 0 (plain softmax training). Invalid values raise a one-line ``ConfigError``.
    """

    lam_z: float = 0.0
    lam_x: float = 0.0
    lam_v: float = 0.0
    lam_w: float = 0.0
    p_z: float = 0.0
    p_x: float = 0.0
    p_v: float = 0.0
    p_w: float = 0.0

    def __post_init__(self) -> None:
        for name in NAMES:
            object.__setattr__(self, name, check_value(name, getattr(self, name)))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], field: str = "hyp") -> HypParaSet:
        """From a mapping of (some of) the 8 names; missing ones are 0, unknown ones an error."""
        if isinstance(values, HypParaSet):
            return values
        if not isinstance(values, Mapping):
            raise ConfigError(field, f"expected a mapping of {', '.join(NAMES)}, got {values!r}")
        for key in values:
            if key not in NAMES:
                raise ConfigError(f"{field}.{key}", f"unknown; valid: {', '.join(NAMES)}")
        return cls(**{k: check_value(k, v, f"{field}.{k}") for k, v in values.items()})

    @classmethod
    def uniform(cls, lam: float, p: float) -> HypParaSet:
        """All four λ equal to ``lam`` and all four p equal to ``p``."""
        return cls(*(lam,) * 4, *(p,) * 4)

    @classmethod
    def paper_default(cls) -> HypParaSet:
        """λ = 1e-5 and p = 0.5 everywhere (Table 4's fixed setting, §3.1's initial values)."""
        return cls.uniform(PAPER_LAMBDA, PAPER_P)

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    def replace(self, **values: float) -> HypParaSet:
        return replace(self, **values)


def check_value(name: str, value: Any, field: str | None = None) -> float:
    """Validate one HypParaSet value: λ finite and ≥ 0, p in [0, 1)."""
    field = field or f"hyp.{name}"
    if isinstance(value, bool):
        raise ConfigError(field, f"expected a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(field, f"expected a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ConfigError(field, f"must be finite, got {value!r}")
    if name in LAMBDAS and v < 0:
        raise ConfigError(field, f"an L1 coefficient must be >= 0, got {v}")
    if name in DROPOUTS and not 0 <= v < 1:
        raise ConfigError(field, f"a drop probability must be in [0, 1), got {v}")
    return v


@dataclass(frozen=True)
class SearchSpace:
    """Where the optimizers search: λ in ``lam_bounds`` (log scale), p in ``p_bounds``.

    ``active`` names are searched; the others stay at their value in ``fixed``. The defaults are
    centred on the paper's initial values (geometric mean of λ bounds 1e-5, mean of p bounds 0.5)
    and cover the ranges of its grid search (§3.4: log10 λ in [-8, -2], p in [0.2, 0.8]).
    """

    lam_bounds: tuple[float, float] = (1e-8, 1e-2)
    p_bounds: tuple[float, float] = (0.2, 0.8)
    active: tuple[str, ...] = NAMES
    fixed: HypParaSet = HypParaSet()

    def validate(self, field: str = "search") -> SearchSpace:
        if not self.active:
            raise ConfigError(f"{field}.active", "needs at least one name")
        for name in self.active:
            if name not in NAMES:
                raise ConfigError(f"{field}.active", f"unknown {name!r}; valid: {', '.join(NAMES)}")
        if len(set(self.active)) != len(self.active):
            raise ConfigError(f"{field}.active", f"duplicate names in {list(self.active)}")
        lo, hi = _pair(self.lam_bounds, f"{field}.lam_bounds")
        if lo <= 0:
            raise ConfigError(f"{field}.lam_bounds", f"lower must be > 0 (log scale), got {lo}")
        lo, hi = _pair(self.p_bounds, f"{field}.p_bounds")
        if lo < 0 or hi >= 1:
            raise ConfigError(f"{field}.p_bounds", f"must lie in [0, 1), got [{lo}, {hi}]")
        return self

    def bounds(self, name: str) -> tuple[float, float]:
        lo, hi = self.lam_bounds if name in LAMBDAS else self.p_bounds
        return float(lo), float(hi)

    def is_log(self, name: str) -> bool:
        return name in LAMBDAS

    def center(self) -> HypParaSet:
        """The middle of the box (geometric for λ) for active names, ``fixed`` for the rest."""
        values = self.fixed.to_dict()
        for name in self.active:
            lo, hi = self.bounds(name)
            values[name] = math.sqrt(lo * hi) if self.is_log(name) else (lo + hi) / 2
        return HypParaSet(**values)

    def complete(self, values: Mapping[str, float]) -> HypParaSet:
        """A full HypParaSet from the active names' ``values`` (others from ``fixed``)."""
        full = self.fixed.to_dict()
        full.update({k: float(values[k]) for k in self.active})
        return HypParaSet(**full)

    def to_unit(self, hyp: HypParaSet) -> dict[str, float]:
        """Active values mapped to [0, 1] (log10 for λ): the space LHS stratifies."""
        out = {}
        for name in self.active:
            lo, hi = self.bounds(name)
            v = getattr(hyp, name)
            if self.is_log(name):
                lo, hi, v = math.log10(lo), math.log10(hi), math.log10(max(v, 1e-300))
            out[name] = (v - lo) / (hi - lo)
        return out


def _pair(value: Any, field: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(field, f"expected [lower, upper], got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ConfigError(field, f"bounds must be finite, got [{lo}, {hi}]")
    if lo >= hi:
        raise ConfigError(field, f"lower must be < upper, got [{lo}, {hi}]")
    return lo, hi


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


class SparseTwoFC(nn.Module):
    """``fc1 → middle → fc2`` with the 8 sparseness hyperparameters applied around both layers.

    The children keep the names they had in the original head. Each forward stores the FC inputs
    ``z`` and ``x`` (before dropout) for the L1 terms, the Euclidean losses and eq. 11; ``clear()``
    drops them (they are never pickled or deep-copied).
    """

    def __init__(
        self,
        children: Mapping[str, nn.Module],
        fc1: str,
        fc2: str,
        hyp: HypParaSet | None = None,
        inverted: bool = True,
    ) -> None:
        super().__init__()
        for name, module in children.items():
            self.add_module(name, module)
        self.fc1_name, self.fc2_name = fc1, fc2
        self.middle = [n for n in children if n not in (fc1, fc2)]
        self.hyp = hyp or HypParaSet()
        self.inverted = inverted
        self.z: torch.Tensor | None = None
        self.x: torch.Tensor | None = None

    @property
    def layer_v(self) -> nn.Linear:
        """FC1 (weight V)."""
        return self._modules[self.fc1_name]  # type: ignore[return-value]

    @property
    def layer_w(self) -> nn.Linear:
        """FC2 (weight W)."""
        return self._modules[self.fc2_name]  # type: ignore[return-value]

    def set_values(self, hyp: HypParaSet | Mapping[str, float]) -> None:
        """Set the 8 values in place (takes effect at the next forward)."""
        self.hyp = HypParaSet.from_dict(hyp)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h, inv, train = self.hyp, self.inverted, self.training
        self.z = z
        out = feature_dropout(z, h.p_z, train, inv)
        fc1, fc2 = self.layer_v, self.layer_w
        out = F.linear(out, dropconnect(fc1.weight, h.p_v, train, inv), fc1.bias)
        for name in self.middle:
            out = getattr(self, name)(out)
        self.x = out
        out = feature_dropout(out, h.p_x, train, inv)
        return F.linear(out, dropconnect(fc2.weight, h.p_w, train, inv), fc2.bias)

    def penalty(self) -> torch.Tensor:
        """λ_z L_z + λ_x L_x + λ_V L_V + λ_W L_W (eq. 4 without the softmax loss), last forward."""
        h = self.hyp
        total = self.layer_v.weight.new_zeros(())
        if h.lam_z:
            total = total + h.lam_z * _features(self.z, "z").abs().sum(1).mean()
        if h.lam_x:
            total = total + h.lam_x * _features(self.x, "x").abs().sum(1).mean()
        if h.lam_v:
            total = total + h.lam_v * self.layer_v.weight.abs().sum()
        if h.lam_w:
            total = total + h.lam_w * self.layer_w.weight.abs().sum()
        return total

    def clear(self) -> None:
        self.z = self.x = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["z"] = state["x"] = None
        return state

    def extra_repr(self) -> str:
        vals = ", ".join(f"{k}={v:g}" for k, v in self.hyp.to_dict().items())
        return f"{vals}, inverted={self.inverted}"


def _features(t: torch.Tensor | None, name: str) -> torch.Tensor:
    if t is None:
        raise RuntimeError(f"no {name} recorded: run a forward pass before penalty()")
    return t.flatten(1)


# ----------------------------------------------------------------------------- finding the head
@dataclass
class TwoFCHead:
    """Where a model's two-FC head is: ``getattr(owner, attr)`` with its FC1/FC2 child names."""

    owner: nn.Module
    attr: str
    fc1: str
    fc2: str

    @property
    def module(self) -> nn.Module:
        return getattr(self.owner, self.attr)

    @property
    def v(self) -> nn.Linear:
        """FC1, whose weight is the paper's V."""
        return self.module.get_submodule(self.fc1)  # type: ignore[return-value]

    @property
    def w(self) -> nn.Linear:
        """FC2, whose weight is the paper's W."""
        return self.module.get_submodule(self.fc2)  # type: ignore[return-value]

    @classmethod
    def find(cls, model: nn.Module, attr: str = "head", field: str = "model.name") -> TwoFCHead:
        """The two-FC head of ``model``; a model without one is a one-line ``ConfigError``."""
        head = getattr(model, attr, None)
        if isinstance(head, SparseTwoFC):
            return cls(model, attr, head.fc1_name, head.fc2_name)
        children = list(head.named_children()) if isinstance(head, nn.Sequential) else []
        linears = [n for n, m in children if isinstance(m, nn.Linear)]
        if (
            len(linears) != 2
            or children[0][0] != linears[0]
            or children[-1][0] != linears[1]
            or head[0].out_features != head[-1].in_features  # type: ignore[index]
        ):
            raise ConfigError(
                field,
                f"{type(model).__name__} has no two-FC head for FC sparseness (needs a "
                f"`{attr}` Sequential fc1 -> activation -> fc2, as lenet has)",
            )
        return cls(model, attr, linears[0], linears[1])


def attach_sparseness(
    model: nn.Module,
    hyp: HypParaSet | Mapping[str, float] | None = None,
    attr: str = "head",
    inverted: bool = True,
    field: str = "model.name",
) -> SparseTwoFC:
    """Replace ``model.<attr>`` by a :class:`SparseTwoFC` (idempotent) and return it."""
    found = TwoFCHead.find(model, attr, field)
    head = found.module
    if isinstance(head, SparseTwoFC):
        if hyp is not None:
            head.set_values(hyp)
        return head
    values = HypParaSet.from_dict(hyp) if hyp is not None else None
    sparse = SparseTwoFC(dict(head.named_children()), found.fc1, found.fc2, values, inverted)
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
    "DROPOUTS",
    "LAMBDAS",
    "NAMES",
    "HypParaSet",
    "SearchSpace",
    "SparseTwoFC",
    "SparsenessTerm",
    "TwoFCHead",
    "attach_sparseness",
    "dropconnect",
    "feature_dropout",
    "sparse_head",
]
