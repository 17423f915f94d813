"""Model registry: ``build_model(name, input_shape, num_classes, **options)``.

Each entry says whether it needs image input ``(C, H, W)`` and the smallest H/W it supports, so
an incompatible model/dataset pair is a one-line ``ConfigError`` instead of a shape error deep in
a forward pass. Builders take ``(input_shape, num_classes, **options)``; their keyword arguments
are the valid ``model.options``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from raytune_periodic.errors import ConfigError
from raytune_periodic.models.iris_mlp import IrisMLP, build_iris_mlp
from raytune_periodic.models.lenet import LeNet, build_lenet
from raytune_periodic.models.mlp import MLP, build_mlp
from raytune_periodic.models.mresnet import MResNet, build_mresnet
from raytune_periodic.models.resnet import build_resnet18, build_resnet34
from raytune_periodic.models.resnet20 import ResNet20, build_resnet20
from raytune_periodic.models.tiny_cnn import TinyImageNetCNN, build_tiny_cnn
from raytune_periodic.registry import Registry


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its builder and what inputs it accepts."""

    builder: Callable[..., nn.Module]
    needs_image: bool = False
    min_size: int = 1
    description: str = ""


def _as_entry(obj: object) -> ModelEntry:
    """A plugin model: a ``ModelEntry``, or a bare builder ``(input_shape, num_classes, **opts)``
    (its ``needs_image``/``min_size`` attributes, when set, say what inputs it accepts)."""
    if isinstance(obj, ModelEntry):
        return obj
    if not callable(obj):
        raise ConfigError("model.name", f"{obj!r} is neither a ModelEntry nor a model builder")
    doc = (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
    return ModelEntry(
        obj, bool(getattr(obj, "needs_image", False)), int(getattr(obj, "min_size", 1)), doc
    )


MODELS: Registry[ModelEntry] = Registry("model", wrap=_as_entry, unwrap=lambda e: e.builder)
MODELS.add("mlp", ModelEntry(build_mlp, False, 1, "MLP over flattened input (hidden, batchnorm)"))
MODELS.add("lenet", ModelEntry(build_lenet, True, 8, "LeNet-5-style CNN, images H, W >= 8"))
MODELS.add("resnet18", ModelEntry(build_resnet18, True, 8, "torchvision ResNet-18, adapted stem"))
MODELS.add("resnet34", ModelEntry(build_resnet34, True, 8, "torchvision ResNet-34, adapted stem"))
MODELS.add("resnet20", ModelEntry(build_resnet20, True, 4, "CIFAR ResNet20, 16-32-64 filters"))
MODELS.add("mresnet", ModelEntry(build_mresnet, True, 8, "surrogate paper's M-ResNet (CoPr/ResBl)"))
MODELS.add("tiny_cnn", ModelEntry(build_tiny_cnn, True, 8, "Tiny-ImageNet paper's custom CNN, LRN"))
MODELS.add("iris_mlp", ModelEntry(build_iris_mlp, False, 1, "iris survey's MLP 64-32 (batchnorm)"))


def model_options(name: str) -> dict[str, object]:
    """The options model ``name`` accepts, with their defaults."""
    return MODELS.options(name, field="model.name", skip=2)


def _incompatibility(name: str, entry: ModelEntry, input_shape: tuple[int, ...]) -> str | None:
    if entry.needs_image and len(input_shape) != 3:
        return (
            f"model {name!r} needs image input (C, H, W) but the dataset's input is {input_shape}"
        )
    if len(input_shape) == 3 and min(input_shape[1:]) < entry.min_size:
        return (
            f"model {name!r} needs H, W >= {entry.min_size}; the dataset's input is {input_shape}"
        )
    return None


def compatible(name: str, input_shape: tuple[int, ...]) -> bool:
    """Whether model ``name`` can take inputs of ``input_shape`` (without the batch dim)."""
    entry = MODELS.get(name, field="model.name")
    return _incompatibility(name, entry, tuple(input_shape)) is None


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, **options: object
) -> nn.Module:
    """Build model ``name`` for inputs of ``input_shape`` (no batch dim) and ``num_classes``.

    Raises ``ConfigError`` naming ``model.name`` (unknown or incompatible model) or
    ``model.options.<key>`` (unknown or bad option).
    """
    entry = MODELS.get(name, field="model.name")
    input_shape = tuple(int(d) for d in input_shape)
    problem = _incompatibility(name, entry, input_shape)
    if problem:
        raise ConfigError("model.name", problem)
    model = MODELS.build(name, options, "model.options", input_shape, num_classes)
    if not isinstance(model, nn.Module):
        raise ConfigError(
            "model.name", f"model {name!r} built a {type(model).__name__}, not a torch nn.Module"
        )
    return model


def classifier_name(model: nn.Module) -> str:
    """Qualified name of the model's final ``nn.Linear`` (``fc``, ``head.fc2``)."""
    name = None
    for qualified, module in model.named_modules():
        if isinstance(module, nn.Linear):
            name = qualified
    if name is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier")
    return name


__all__ = [
    "MLP",
    "MODELS",
    "IrisMLP",
    "LeNet",
    "MResNet",
    "ResNet20",
    "TinyImageNetCNN",
    "ModelEntry",
    "build_model",
    "classifier_name",
    "compatible",
    "model_options",
]
