"""The surrogate paper's sparseness hyperparameters (eq. 8) and the box the optimizers search.

The 8-dimensional ``HypParaSet`` weights four strategies on a model's FC head (eqs. 2–7): feature
L1 on z and x, weight L1 on V and W, feature dropout on z and x and weight dropout (DropConnect)
on V and W. In the paper's notation (Table 1) ``z`` is the input of FC1, ``V`` its weight, ``x``
the input of FC2 and ``W`` the weight of FC2; a network with one FC layer (ResNet20, Table 2) has
only z and V, i.e. ``(p_z, p_V, λ_z, λ_V)``.

The head itself (the operators, :class:`SparseTwoFC`, finding and wrapping a model's head) is
:mod:`.fc_head`, re-exported here. Pure PyTorch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from raytune_periodic.errors import ConfigError

#: the HypParaSet names, in this order everywhere (arrays, logs)
LAMBDAS = ("lam_z", "lam_x", "lam_v", "lam_w")
DROPOUTS = ("p_z", "p_x", "p_v", "p_w")
NAMES = LAMBDAS + DROPOUTS
#: the names a head with one FC layer has (z and V only: ResNet20's 4 hyperparameters, Table 2)
ONE_FC_NAMES = ("lam_z", "lam_v", "p_z", "p_v")
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

    def from_unit(self, unit: Mapping[str, float]) -> dict[str, float]:
        """The inverse of :meth:`to_unit` for the given names (values in [0, 1] → the box)."""
        out = {}
        for name, u in unit.items():
            lo, hi = self.bounds(name)
            if self.is_log(name):
                out[name] = float(10 ** (math.log10(lo) + u * (math.log10(hi) - math.log10(lo))))
            else:
                out[name] = float(lo + u * (hi - lo))
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


#: the head's names (operators, SparseTwoFC, finding it) live in :mod:`.fc_head`, which imports
#: this module; they are re-exported lazily (PEP 562) so either module may be imported first
_HEAD = {"SparseTwoFC", "SparsenessTerm", "TwoFCHead", "attach_sparseness", "check_one_fc",
         "dropconnect", "feature_dropout", "sparse_head"}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _HEAD:
        from raytune_periodic.surrogate import fc_head

        return getattr(fc_head, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DROPOUTS",
    "LAMBDAS",
    "NAMES",
    "ONE_FC_NAMES",
    "HypParaSet",
    "SearchSpace",
    *sorted(_HEAD),
]
