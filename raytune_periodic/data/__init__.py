"""Dataset registry: ``load_dataset(name, **options) -> DataSplits``.

Every loader takes ``seed`` (all splitting and label noise draw from one
``numpy.random.Generator`` seeded with it, in a fixed order: test split, val split, train
subsample, label noise — so the same seed gives identical splits whatever ``train_size`` or
``label_noise``), ``val_fraction`` (stratified, carved from the training data), ``train_size``
(stratified, seeded subsample of the training split) and ``label_noise`` (that fraction of the
training labels, exactly ``round(noise * n)``, replaced by a uniformly random *different* class;
val/test labels stay clean). Inputs are standardised with statistics of the final training split
only (per channel for images, per feature for tabular data).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import TensorDataset

from raytune_periodic.data._base import DataSplits, labels_of
from raytune_periodic.errors import ConfigError
from raytune_periodic.registry import Registry

DATASETS: Registry[Callable[..., DataSplits]] = Registry("dataset")
"""Loaders ``(seed=..., **options) -> DataSplits``; plugins by import path or entry point."""


def _opt(name: str) -> str:
    return f"dataset.options.{name}"


def check_common(
    *,
    seed: int,
    val_fraction: float | None,
    train_size: int | None,
    label_noise: float,
    num_classes: int,
    test_fraction: float | None = None,
) -> None:
    """Validate the options every loader shares; raise ``ConfigError`` naming the bad one."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ConfigError(_opt("seed"), f"expected an integer, got {seed!r}")
    for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
            raise ConfigError(_opt(key), f"expected a fraction in [0, 1), got {value!r}")
    if isinstance(label_noise, bool) or not isinstance(label_noise, int | float):
        raise ConfigError(_opt("label_noise"), f"expected a rate in [0, 1], got {label_noise!r}")
    if not 0 <= label_noise <= 1:
        raise ConfigError(_opt("label_noise"), f"expected a rate in [0, 1], got {label_noise!r}")
    if train_size is not None and (
        isinstance(train_size, bool)
        or not isinstance(train_size, int | np.integer)
        or train_size < num_classes
    ):
        raise ConfigError(
            _opt("train_size"),
            f"expected an integer >= {num_classes} (the number of classes) or null, "
            f"got {train_size!r}",
        )


def stratified_take(
    labels: np.ndarray, n_take: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``0..len(labels)-1`` into ``(taken, rest)`` with ``n_take`` taken.

    Class proportions are kept (each class within one of its share); when ``n_take`` is at least
    the number of classes present, every class gets at least one. Both arrays are shuffled.
    """
    n = len(labels)
    if not 0 <= n_take <= n:
        raise ValueError(f"cannot take {n_take} of {n}")
    perm = rng.permutation(n)
    shuffled = labels[perm]
    order = np.argsort(shuffled, kind="stable")  # grouped by class, random within a class
    grouped = shuffled[order]
    first = np.searchsorted(grouped, grouped, side="left")
    last = np.searchsorted(grouped, grouped, side="right")
    quantile = (np.arange(n) - first) / (last - first)  # rank within class / class size
    key = np.lexsort((rng.random(n), quantile))  # smallest quantiles first, ties at random
    chosen = perm[order[key]]
    return chosen[:n_take], chosen[n_take:]


def split_indices(
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    test_fraction: float = 0.0,
    val_fraction: float = 0.0,
    train_size: int | None = None,
) -> dict[str, np.ndarray]:
    """Stratified ``train``/``val``/``test`` (and unused ``spare``) indices into ``labels``.

    Order of draws: test (``round(test_fraction * n)``), then val (``round(val_fraction * rest)``),
    then the train subsample (``train_size``, the rest goes to ``spare``).
    """
    labels = np.asarray(labels)
    test_pos, pool = stratified_take(labels, round(test_fraction * len(labels)), rng)
    val_pos, train_pos = stratified_take(labels[pool], round(val_fraction * len(pool)), rng)
    val, train = pool[val_pos], pool[train_pos]
    spare = np.empty(0, dtype=np.int64)
    if train_size is not None:
        if train_size > len(train):
            raise ConfigError(
                _opt("train_size"),
                f"{train_size} exceeds the {len(train)} training examples available",
            )
        keep, drop = stratified_take(labels[train], train_size, rng)
        train, spare = train[keep], train[drop]
    return {"train": train, "val": val, "test": test_pos, "spare": spare}


def add_label_noise(
    labels: torch.Tensor, rate: float, num_classes: int, rng: np.random.Generator
) -> tuple[torch.Tensor, np.ndarray]:
    """Copy of ``labels`` with ``round(rate * n)`` entries set to a random *different* class.

    Returns the noisy labels and the (sorted) positions changed.
    """
    n = len(labels)
    k = round(rate * n)
    if k == 0 or num_classes < 2:
        return labels.clone(), np.empty(0, dtype=np.int64)
    positions = np.sort(rng.choice(n, size=k, replace=False))
    shift = torch.from_numpy(rng.integers(1, num_classes, size=k)).to(labels.dtype)
    noisy = labels.clone()
    noisy[positions] = (labels[positions] + shift) % num_classes
    return noisy, positions


def standardise(train: torch.Tensor, *others: torch.Tensor) -> tuple[list[float], list[float]]:
    """Standardise float tensors in place with the train split's per-channel/feature stats.

    Statistics are over every dim except dim 1 (channels of ``(N, C, H, W)``, features of
    ``(N, F)``). Returns ``(mean, std)``; a zero std is treated as 1.
    """
    dims = (0, *range(2, train.dim()))
    if len(train) == 0:
        raise ValueError("cannot standardise with an empty training split")
    std, mean = torch.std_mean(train, dim=dims, correction=0, keepdim=True)
    std = torch.where(std > 0, std, torch.ones_like(std))
    for tensor in (train, *others):
        tensor.sub_(mean).div_(std)
    return mean.flatten().tolist(), std.flatten().tolist()


def make_splits(
    name: str,
    x: dict[str, torch.Tensor],
    y: dict[str, torch.Tensor],
    *,
    num_classes: int,
    seed: int,
    label_noise: float,
    rng: np.random.Generator,
    info: dict[str, object] | None = None,
) -> DataSplits:
    """Standardise ``x`` by train stats, add label noise to train, pack TensorDatasets.

    ``x`` and ``y`` hold float32 inputs / int64 labels under ``train``, ``val`` and ``test``.
    """
    mean, std = standardise(x["train"], x["val"], x["test"])
    noisy, changed = add_label_noise(y["train"], label_noise, num_classes, rng)
    splits = {
        "train": (x["train"], noisy),
        "val": (x["val"], y["val"]),
        "test": (x["test"], y["test"]),
    }
    facts: dict[str, object] = {f"{k}_size": len(v[1]) for k, v in splits.items()}
    facts |= {"seed": int(seed), "label_noise": float(label_noise), "noisy_labels": len(changed)}
    facts |= {"mean": mean, "std": std}
    facts |= info or {}
    return DataSplits(
        name=name,
        train=TensorDataset(*splits["train"]),
        val=TensorDataset(*splits["val"]),
        test=TensorDataset(*splits["test"]),
        num_classes=num_classes,
        input_shape=tuple(x["train"].shape[1:]),
        info=facts,
    )


def dataset_options(name: str) -> dict[str, object]:
    """The options dataset ``name`` accepts, with their defaults."""
    return DATASETS.options(name, field="dataset.name")


def load_dataset(name: str, **options: object) -> DataSplits:
    """Load dataset ``name``; unknown names/options raise ``ConfigError`` listing valid ones."""
    DATASETS.get(name, field="dataset.name")
    root = options.get("root")
    if root is not None and not isinstance(root, str | os.PathLike):
        raise ConfigError(_opt("root"), f"expected a path, got {type(root).__name__} {root!r}")
    data = DATASETS.build(name, options, "dataset.options")
    if not isinstance(data, DataSplits):
        raise ConfigError(
            "dataset.name", f"dataset {name!r} returned a {type(data).__name__}, not DataSplits"
        )
    return data


# Loaders import the helpers above, so they are registered last.
from raytune_periodic.data.fer2013 import load_fer2013  # noqa: E402
from raytune_periodic.data.folders import load_affectnet, load_tiny_imagenet  # noqa: E402
from raytune_periodic.data.sklearn_sets import load_digits, load_iris  # noqa: E402

DATASETS.add("digits", load_digits)
DATASETS.add("iris", load_iris)
# lazy (import path): the CIFAR readers import torchvision, ~2 s of every trial worker's start
DATASETS.add("cifar10", "raytune_periodic.data.cifar:load_cifar10")
DATASETS.add("cifar100", "raytune_periodic.data.cifar:load_cifar100")
DATASETS.add("fer2013", load_fer2013)
DATASETS.add("affectnet", load_affectnet)
DATASETS.add("tiny_imagenet", load_tiny_imagenet)

__all__ = [
    "DATASETS",
    "DataSplits",
    "add_label_noise",
    "dataset_options",
    "labels_of",
    "load_dataset",
    "split_indices",
    "standardise",
    "stratified_take",
]
