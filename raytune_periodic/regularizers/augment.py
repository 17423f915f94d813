"""On-device data augmentation of training batches (Tiny-ImageNet paper §3.5), model-level.

Per sample, in this order: horizontal flip, vertical flip, brightness, contrast, saturation — the
paper's five augmentations. The deterministic kernels are torchvision's
(``transforms.v2.functional``: ``horizontal_flip``, ``vertical_flip``, ``rgb_to_grayscale``) and
the colour adjustments are torchvision's formulas (``adjust_brightness``/``adjust_contrast``/
``adjust_saturation``: multiply or blend with the grey image, clamp to [0, 1]) evaluated with a
*different random factor per sample* in one batched op (``v2.ColorJitter`` on a batch tensor would
draw one factor for the whole batch). The test checks every sample against the v2 functionals.

``value`` s ∈ [0, 1] scales everything: flip probabilities ``s·hflip``/``s·vflip`` and factors
uniform in ``[1 − s·m, 1 + s·m]`` for each magnitude ``m``. The defaults at s = 1 are the paper's:
flips with p = 0.5, contrast 0.8–1.2, saturation 0.7–1.3, brightness ±0.4 (the paper's TF
``max_delta`` is additive; here it is torchvision's multiplicative factor 0.6–1.4). s = 0 is the
identity. Inputs are standardised by the loaders, so a batch is mapped back to pixel range with the
dataset's ``info`` mean/std, augmented, and standardised again. Random draws come from the global
torch RNG of the batch's device (saved in the engine's checkpoints).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from raytune_periodic.errors import ConfigError
from raytune_periodic.regularizers.model_level import ModelRegularizer
from raytune_periodic.validation import fraction

_MAGNITUDES = ("hflip", "vflip", "brightness", "contrast", "saturation")


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 3:
        from torchvision.transforms.v2 import functional as TF  # lazy: ~2 s of trial start-up

        return TF.rgb_to_grayscale(x, num_output_channels=1)
    return x.mean(dim=1, keepdim=True)


def apply_augmentation(x: torch.Tensor, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Augment a batch ``(N, C, H, W)`` in [0, 1] with per-sample ``params``.

    ``params``: ``hflip``/``vflip`` bool masks and ``brightness``/``contrast``/``saturation``
    factors, each of shape ``(N,)``.
    """
    from torchvision.transforms.v2 import functional as TF  # lazy: ~2 s of trial start-up

    x = torch.where(_per_sample(params["hflip"]), TF.horizontal_flip(x), x)
    x = torch.where(_per_sample(params["vflip"]), TF.vertical_flip(x), x)
    x = (x * _per_sample(params["brightness"])).clamp(0, 1)
    f = _per_sample(params["contrast"])
    mean = _grey(x).mean(dim=(-3, -2, -1), keepdim=True)
    x = (f * x + (1 - f) * mean).clamp(0, 1)
    if x.shape[1] == 3:  # saturation is the identity on one channel, as in torchvision
        f = _per_sample(params["saturation"])
        x = (f * x + (1 - f) * _grey(x)).clamp(0, 1)
    return x


class Augment(ModelRegularizer):
    """Random flips and brightness/contrast/saturation jitter of training batches, strength s."""

    kind = "augment"
    low = 0.0
    high = 1.0
    value_name = "strength"

    def __init__(
        self,
        value: float = 0.0,
        hflip: float = 0.5,
        vflip: float = 0.5,
        brightness: float = 0.4,
        contrast: float = 0.2,
        saturation: float = 0.3,
    ) -> None:
        super().__init__(value)
        self.magnitudes: dict[str, float] = {}
        for key, mag in zip(
            _MAGNITUDES, (hflip, vflip, brightness, contrast, saturation), strict=True
        ):
            self.magnitudes[key] = fraction(mag, f"augment.options.{key}")
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None

    def setup(self, model: nn.Module, info: Mapping[str, Any]) -> None:
        mean, std = info.get("mean"), info.get("std")
        if mean is not None and std is not None:
            self.mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
            self.std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def draw(self, n: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Per-sample parameters for ``n`` images at the current strength."""
        s, m = self.value, self.magnitudes
        params = {
            "hflip": torch.rand(n, device=device) < s * m["hflip"],
            "vflip": torch.rand(n, device=device) < s * m["vflip"],
        }
        for key in ("brightness", "contrast", "saturation"):
            params[key] = 1 + s * m[key] * (2 * torch.rand(n, device=device) - 1)
        return params

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        if self.value == 0.0:
            return x
        if x.dim() != 4:
            raise ConfigError(
                "regularizers.augment", f"needs image batches (N, C, H, W), got {tuple(x.shape)}"
            )
        params = self.draw(len(x), x.device)
        if self.mean is None or self.std is None:
            return apply_augmentation(x, params)
        mean, std = self.mean.to(x.device, x.dtype), self.std.to(x.device, x.dtype)
        return (apply_augmentation(x * std + mean, params) - mean) / std
