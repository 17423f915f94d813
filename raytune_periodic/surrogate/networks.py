"""The surrogate network, the 'original+surrogate' pair, the Euclidean losses (eq. 9) and FLOPs.

**Surrogate** (§2.2, Table 2). The surrogate keeps the original's FC head (same architecture, its
own parameters, the same 8 sparseness hyperparameters) and replaces the whole feature extractor
by *one* convolution (+ ReLU) that maps the image straight to the feature map the original
flattens (or globally pools) into z. Table 2 gives that convolution as Caffe's
``(num_output, kernel_size, stride, pad)``:

- LeNet ``(50, 7, 7, 0)``: Caffe's LeNet on 28×28 faces ends with a 50×4×4 map (two valid 5×5
  convolutions and two 2×2 poolings: 28→24→12→8→4), and a 7×7 stride-7 convolution gives
  (28−7)/7+1 = 4, i.e. exactly 50×4×4 = 800 = dim z;
- ResNet20 ``(64, 6, 4, 1)``: (28+2−6)/4+1 = 7, ResNet20's last 64×7×7 map before its global pool.

So the tuple is "the last map's channels, and a kernel/stride that reach its size in one step".
This project's LeNet pads its convolutions by default (8×8 digits → 50×2×2 map, 28×28 → 50×7×7);
``lenet`` with ``padding: 0`` is Caffe's (28→4), for which the paper's ``(50, 7, 7, 0)`` fits.
``conv="auto"`` applies the same rule: ``stride = H // H_map``, ``kernel = H − (H_map − 1)·stride``,
``pad = 0`` (padded LeNet on digits: ``(50, 4, 4, 0)``; it reproduces ``(50, 7, 7, 0)`` for
Caffe's 28→4; ResNet20 on 28×28: ``(64, 4, 4, 0)``, where the paper's ``(64, 6, 4, 1)`` reaches
the same 7×7 map and may be given). An explicit tuple that misses the map is a ``ConfigError``
that names the right one.

**Fitting** (eq. 9, 10). While the original trains, the surrogate is trained on the same batch
with its own softmax + sparseness loss plus ``η_x EU(x) + η_z EU(z) + η_W EU(W) + η_V EU(V)``.
EU is Caffe's Euclidean loss ``1/(2N) Σ_i ||a_i^s − a_i^o||²`` (features) and ``½||A^s − A^o||_F²``
(weights), whose gradients are eq. 10's ``a^s − a^o``. Back-propagation is unilateral: the
original's z, x, V, W enter detached, so the original gets no gradient from these losses.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from raytune_periodic.errors import ConfigError
from raytune_periodic.surrogate.fc_head import SparseTwoFC, attach_sparseness
from raytune_periodic.validation import integer, sequence

_COLLAPSE = (nn.Flatten, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass(frozen=True)
class ConvSpec:
    """One convolution as Caffe writes it: ``(num_output, kernel_size, stride, pad)``."""

    out_channels: int
    kernel_size: int
    stride: int
    padding: int = 0

    def output_size(self, size: int) -> int:
        return (size + 2 * self.padding - self.kernel_size) // self.stride + 1

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.kernel_size, self.stride, self.padding)


#: Table 2 of the paper (for Caffe's LeNet and ResNet20 on 28×28 inputs)
PAPER_TABLE2 = {"lenet": ConvSpec(50, 7, 7, 0), "resnet20": ConvSpec(64, 6, 4, 1)}


def auto_conv(map_shape: Sequence[int], input_shape: Sequence[int]) -> ConvSpec:
    """The one-step convolution from ``input_shape`` (C, H, W) to ``map_shape`` (C', H', W')."""
    channels, hm, wm = (int(v) for v in map_shape)
    _, h, w = (int(v) for v in input_shape)
    specs = set()
    for size, target in ((h, hm), (w, wm)):
        if not 1 <= target <= size:
            raise ConfigError(
                "surrogate.conv", f"cannot reach a {map_shape} map from {input_shape}"
            )
        stride = size // target
        specs.add(ConvSpec(channels, size - (target - 1) * stride, stride, 0))
    if len(specs) != 1:
        raise ConfigError(
            "surrogate.conv", f"no square kernel maps {input_shape} to {map_shape}: give conv"
        )
    return specs.pop()


def parse_conv(conv: Any, field: str = "surrogate.conv") -> ConvSpec | None:
    """``None``/``"auto"`` → None (derive), a ConvSpec, or a 4-sequence of non-negative ints."""
    if conv is None or conv == "auto":
        return None
    if isinstance(conv, ConvSpec):
        return conv
    what = "auto or (num_output, kernel, stride, pad)"
    values = sequence(conv, field, what)
    if len(values) != 4:
        raise ConfigError(field, f"expected {what}, got {conv!r}")
    spec = ConvSpec(*(integer(v, field, 0) for v in values))
    if spec.out_channels < 1 or spec.kernel_size < 1 or spec.stride < 1:
        raise ConfigError(field, f"num_output, kernel and stride must be >= 1, got {list(conv)!r}")
    return spec


def feature_map(
    model: nn.Module, input_shape: Sequence[int], field: str = "surrogate"
) -> tuple[tuple[int, ...], list[nn.Module]]:
    """Shape of the map ``model.features`` collapses into z, and the collapsing tail modules.

    ``model.features`` must be a Sequential whose tail (from the first Flatten or adaptive
    pooling on) turns a (C, H, W) map into z.
    """
    features = getattr(model, "features", None)
    children = list(features.children()) if isinstance(features, nn.Sequential) else []
    starts = [i for i, m in enumerate(children) if isinstance(m, _COLLAPSE)]
    if len(input_shape) != 3 or not starts:
        raise ConfigError(
            f"{field}.model",
            f"{type(model).__name__} needs image input and a `features` Sequential ending in "
            "Flatten or global pooling to get a surrogate",
        )
    start = starts[0]
    seen: list[tuple[int, ...]] = []
    hook = children[start].register_forward_pre_hook(
        lambda _m, args: seen.append(tuple(args[0].shape[1:]))
    )
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            features(torch.zeros(1, *input_shape))
    finally:
        hook.remove()
        model.train(was_training)
    return seen[0], [copy.deepcopy(m) for m in children[start:]]


class SurrogateNet(nn.Module):
    """``conv → ReLU → (the original's flatten/pool tail) → copy of the original's head``."""

    def __init__(
        self, in_channels: int, conv: ConvSpec, tail: Sequence[nn.Module], head: SparseTwoFC
    ) -> None:
        super().__init__()
        c = conv
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv=nn.Conv2d(in_channels, c.out_channels, c.kernel_size, c.stride, c.padding),
            relu=nn.ReLU(),
        )
        for i, module in enumerate(tail):
            layers[f"tail{i}"] = module
        self.features = nn.Sequential(layers)
        self.head = head
        self.conv_spec = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_surrogate(
    original: nn.Module, input_shape: Sequence[int], conv: Any = "auto", field: str = "surrogate"
) -> SurrogateNet:
    """The surrogate of ``original`` (whose head must already be sparse or a two-FC head).

    The head is a deep copy of the original's (same initial weights and hyperparameters).
    """
    head = attach_sparseness(original)
    map_shape, tail = feature_map(original, input_shape, field)
    spec = parse_conv(conv, f"{field}.conv")
    needed = auto_conv(map_shape, input_shape)
    if spec is None:
        spec = needed
    got = (spec.out_channels, spec.output_size(input_shape[1]), spec.output_size(input_shape[2]))
    if got != tuple(map_shape):
        raise ConfigError(
            f"{field}.conv",
            f"{spec.as_tuple()} gives a {got} map but the original's is {tuple(map_shape)}; "
            f"use {needed.as_tuple()} (or auto)",
        )
    surrogate = SurrogateNet(int(input_shape[0]), spec, tail, copy.deepcopy(head))
    surrogate.head.clear()
    return surrogate


class FusedNet(nn.Module):
    """'original+surrogate': both trained on the same batches (surrogate optional)."""

    def __init__(self, original: nn.Module, surrogate: SurrogateNet | None = None) -> None:
        super().__init__()
        self.original = original
        self.surrogate = surrogate
        attach_sparseness(original)

    @property
    def head_o(self) -> SparseTwoFC:
        return self.original.head  # type: ignore[return-value]

    @property
    def head_s(self) -> SparseTwoFC | None:
        return None if self.surrogate is None else self.surrogate.head  # type: ignore[return-value]

    def heads(self) -> list[SparseTwoFC]:
        return [h for h in (self.head_o, self.head_s) if h is not None]

    def set_values(self, hyp: Any) -> None:
        for head in self.heads():
            head.set_values(hyp)

    def clear(self) -> None:
        for head in self.heads():
            head.clear()


@dataclass(frozen=True)
class EtaWeights:
    """η of eq. 9 (all 1e-2 in §3.1)."""

    x: float = 1e-2
    z: float = 1e-2
    w: float = 1e-2
    v: float = 1e-2


def euclidean_terms(
    head_o: SparseTwoFC, head_s: SparseTwoFC, unilateral: bool = True
) -> dict[str, torch.Tensor]:
    """EU(x), EU(z), EU(W), EU(V) of eq. 9 from both heads' last forward (keys x, z, w, v; a
    one-FC head has only z and v).

    ``unilateral=False`` (not detaching the original) exists only to show, in tests, that the
    detaching is what keeps the original's gradients unchanged.
    """

    def const(t: torch.Tensor | None) -> torch.Tensor:
        if t is None:
            raise RuntimeError("run both forwards before the Euclidean losses")
        return t.detach() if unilateral else t

    def feat(s: torch.Tensor | None, o: torch.Tensor | None) -> torch.Tensor:
        assert s is not None
        return 0.5 * (s.flatten(1) - const(o).flatten(1)).pow(2).sum(1).mean()

    terms = {
        "z": feat(head_s.z, head_o.z),
        "v": 0.5 * (head_s.layer_v.weight - const(head_o.layer_v.weight)).pow(2).sum(),
    }
    w_s, w_o = head_s.layer_w, head_o.layer_w
    if w_s is not None and w_o is not None:  # a one-FC head has no x and no W
        terms["x"] = feat(head_s.x, head_o.x)
        terms["w"] = 0.5 * (w_s.weight - const(w_o.weight)).pow(2).sum()
    return terms


def fused_loss(
    fused: FusedNet,
    x: torch.Tensor,
    y: torch.Tensor,
    eta: EtaWeights = EtaWeights(),
    unilateral: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of one 'original+surrogate' step and the original's logits.

    ``CE_o + sparseness_o`` (eq. 4) ``+ CE_s + sparseness_s + Σ η·EU`` (eq. 9) when a surrogate
    is present; the original's parameters get gradients from the first two terms only.
    """
    logits = fused.original(x)
    loss = F.cross_entropy(logits, y) + fused.head_o.penalty()
    if fused.surrogate is not None:
        head_s = fused.head_s
        assert head_s is not None
        logits_s = fused.surrogate(x)
        loss = loss + F.cross_entropy(logits_s, y) + head_s.penalty()
        eu = euclidean_terms(fused.head_o, head_s, unilateral)
        loss = loss + sum(getattr(eta, k) * term for k, term in eu.items())
    return loss, logits


def count_flops(module: nn.Module, input_shape: Sequence[int], backward: bool = False) -> int:
    """FLOPs of one sample through ``module`` (forward, or forward+backward) by FlopCounterMode.

    Counts matrix multiplications and convolutions (2 FLOPs per multiply-add), like §2.4's
    T_conv + T_fc; activations, pooling and dropout are not counted.
    """
    was_training = module.training
    module.eval()
    try:
        x = torch.zeros(1, *input_shape)
        with FlopCounterMode(display=False) as counter:
            out = module(x)
            if backward:
                out.sum().backward()
        return int(counter.get_total_flops())
    finally:
        module.train(was_training)
        module.zero_grad(set_to_none=True)
        for head in module.modules():
            if isinstance(head, SparseTwoFC):
                head.clear()


def flops_ratio(original: nn.Module, surrogate: nn.Module, input_shape: Sequence[int]) -> float:
    """T_ori / T_sur from forward FLOPs per sample (§2.4: the paper's T_sur/T_ori is 1/82)."""
    return count_flops(original, input_shape) / max(count_flops(surrogate, input_shape), 1)


__all__ = [
    "PAPER_TABLE2",
    "ConvSpec",
    "EtaWeights",
    "FusedNet",
    "SurrogateNet",
    "auto_conv",
    "build_surrogate",
    "count_flops",
    "euclidean_terms",
    "feature_map",
    "flops_ratio",
    "fused_loss",
    "parse_conv",
]
