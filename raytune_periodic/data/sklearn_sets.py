"""The bundled datasets (no download): scikit-learn's digits (8×8 images) and iris (tabular).

Both take the common options and two for reproducing a paper's own split: ``split_seed`` draws
the test split with scikit-learn's ``train_test_split(test_size=test_fraction,
random_state=split_seed, stratify=y)`` (the iris survey: 0.2 and 42) instead of from ``seed``
(val carving, the train subsample and label noise still follow ``seed``), and ``val_is_test``
validates on the test split, as the survey's ``validation_data=(X_test, y_test)`` does
(``val_fraction`` then carves nothing).

The data files are read from scikit-learn's installed package folder with numpy
(``_bundled``: the same values as ``sklearn.datasets.load_digits``/``load_iris``) without
importing scikit-learn: its import (scipy, pandas; ~1 s of CPU) was the largest part of a trial
worker's setup. If the files are not where they are expected, scikit-learn's loaders are used.
"""

from __future__ import annotations

import gzip
import importlib.util
import os

import numpy as np
import torch

from raytune_periodic.data import check_common, make_splits, split_indices
from raytune_periodic.data._base import DataSplits
from raytune_periodic.validation import boolean, integer


def _indices(
    y: np.ndarray,
    rng: np.random.Generator,
    test_fraction: float,
    val_fraction: float,
    train_size: int | None,
    split_seed: int | None,
    val_is_test: bool,
) -> dict[str, np.ndarray]:
    """train/val/test indices: ``split_indices`` from ``rng``, or the paper's split (module doc)."""
    if split_seed is None and not val_is_test:
        return split_indices(
            y, rng, test_fraction=test_fraction, val_fraction=val_fraction, train_size=train_size
        )
    if split_seed is None:
        idx = split_indices(y, rng, test_fraction=test_fraction, train_size=train_size)
    else:
        from sklearn.model_selection import train_test_split

        integer(split_seed, "dataset.options.split_seed", 0)
        pool, test = train_test_split(
            np.arange(len(y)), test_size=test_fraction, random_state=split_seed, stratify=y
        )
        sub = split_indices(
            y[pool], rng, val_fraction=0.0 if val_is_test else val_fraction, train_size=train_size
        )
        idx = {k: pool[v] for k, v in sub.items()} | {"test": np.asarray(test)}
    if val_is_test:
        idx["val"] = idx["test"].copy()
    return idx


def _load_arrays(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_classes: int,
    seed: int,
    test_fraction: float,
    val_fraction: float,
    train_size: int | None,
    label_noise: float,
    split_seed: int | None = None,
    val_is_test: bool = False,
) -> DataSplits:
    val_is_test = boolean(val_is_test, "dataset.options.val_is_test")
    check_common(
        seed=seed,
        val_fraction=val_fraction,
        train_size=train_size,
        label_noise=label_noise,
        num_classes=num_classes,
        test_fraction=test_fraction,
    )
    rng = np.random.default_rng(seed)
    idx = _indices(y, rng, test_fraction, val_fraction, train_size, split_seed, val_is_test)
    parts = ("train", "val", "test")
    xs = {k: torch.tensor(x[idx[k]], dtype=torch.float32) for k in parts}
    ys = {k: torch.tensor(y[idx[k]], dtype=torch.int64) for k in parts}
    return make_splits(
        name,
        xs,
        ys,
        num_classes=num_classes,
        seed=seed,
        label_noise=label_noise,
        rng=rng,
        info={
            "test_fraction": test_fraction,
            "val_fraction": val_fraction,
            "split_seed": split_seed,
            "val_is_test": val_is_test,
        },  # fmt: skip
    )


def _sklearn_data_file(name: str) -> str | None:
    """The path of a file in ``sklearn/datasets/data`` (located without importing sklearn)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = os.path.join(root, "datasets", "data", name)
        if os.path.exists(path):
            return path
    return None


def _bundled(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(data, target) of scikit-learn's ``digits`` or ``iris``, as its loaders return them."""
    if name == "digits":
        path = _sklearn_data_file("digits.csv.gz")
        if path is not None:  # sklearn: np.loadtxt of the gzip file; last column the target
            with gzip.open(path, "rt", encoding="utf-8") as f:
                data = np.loadtxt(f, delimiter=",")
            return data[:, :-1], data[:, -1].astype(int, copy=False)
        from sklearn.datasets import load_digits as sk_load

    else:
        path = _sklearn_data_file("iris.csv")
        if path is not None:  # sklearn: a header line (n, features, names), then rows
            with open(path, encoding="utf-8") as f:
                n, features = (int(v) for v in f.readline().split(",")[:2])
                data = np.loadtxt(f, delimiter=",", ndmin=2)
            if data.shape == (n, features + 1):
                return data[:, :-1], data[:, -1].astype(int)
        from sklearn.datasets import load_iris as sk_load
    bunch = sk_load()
    return bunch.data, bunch.target


def load_digits(
    seed: int = 0,
    test_fraction: float = 0.3,
    val_fraction: float = 0.2,
    train_size: int | None = None,
    label_noise: float = 0.0,
    split_seed: int | None = None,
    val_is_test: bool = False,
) -> DataSplits:
    """scikit-learn digits: 1797 8×8 grey images of 0-9, input_shape ``(1, 8, 8)``.

    Pixels are divided by 16, then standardised with the training split's mean/std. Test is
    ``test_fraction`` of all data, val is ``val_fraction`` of the rest (both stratified).
    """
    data, target = _bundled("digits")
    x = (data / 16.0).reshape(-1, 1, 8, 8)
    return _load_arrays(
        "digits",
        x,
        target,
        num_classes=10,
        seed=seed,
        test_fraction=test_fraction,
        val_fraction=val_fraction,
        train_size=train_size,
        label_noise=label_noise,
        split_seed=split_seed,
        val_is_test=val_is_test,
    )


def load_iris(
    seed: int = 0,
    test_fraction: float = 0.3,
    val_fraction: float = 0.2,
    train_size: int | None = None,
    label_noise: float = 0.0,
    split_seed: int | None = None,
    val_is_test: bool = False,
) -> DataSplits:
    """scikit-learn iris: 150 flowers, 4 features, 3 classes; input_shape ``(4,)``.

    Features are standardised with the training split's per-feature mean/std.
    """
    data, target = _bundled("iris")
    return _load_arrays(
        "iris",
        data,
        target,
        num_classes=3,
        seed=seed,
        test_fraction=test_fraction,
        val_fraction=val_fraction,
        train_size=train_size,
        label_noise=label_noise,
        split_seed=split_seed,
        val_is_test=val_is_test,
    )
