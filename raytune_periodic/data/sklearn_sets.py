"""The bundled datasets (no download): scikit-learn's digits (8×8 images) and iris (tabular).

scikit-learn is imported inside the loaders: importing it pulls in pandas (~1 s).
"""

from __future__ import annotations

import numpy as np
import torch

from raytune_periodic.data import check_common, make_splits, split_indices
from raytune_periodic.data._base import DataSplits


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
) -> DataSplits:
    check_common(
        seed=seed,
        val_fraction=val_fraction,
        train_size=train_size,
        label_noise=label_noise,
        num_classes=num_classes,
        test_fraction=test_fraction,
    )
    rng = np.random.default_rng(seed)
    idx = split_indices(
        y, rng, test_fraction=test_fraction, val_fraction=val_fraction, train_size=train_size
    )
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
        info={"test_fraction": test_fraction, "val_fraction": val_fraction},
    )


def load_digits(
    seed: int = 0,
    test_fraction: float = 0.3,
    val_fraction: float = 0.2,
    train_size: int | None = None,
    label_noise: float = 0.0,
) -> DataSplits:
    """scikit-learn digits: 1797 8×8 grey images of 0-9, input_shape ``(1, 8, 8)``.

    Pixels are divided by 16, then standardised with the training split's mean/std. Test is
    ``test_fraction`` of all data, val is ``val_fraction`` of the rest (both stratified).
    """
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = (bunch.data / 16.0).reshape(-1, 1, 8, 8)
    return _load_arrays(
        "digits",
        x,
        bunch.target,
        num_classes=10,
        seed=seed,
        test_fraction=test_fraction,
        val_fraction=val_fraction,
        train_size=train_size,
        label_noise=label_noise,
    )


def load_iris(
    seed: int = 0,
    test_fraction: float = 0.3,
    val_fraction: float = 0.2,
    train_size: int | None = None,
    label_noise: float = 0.0,
) -> DataSplits:
    """scikit-learn iris: 150 flowers, 4 features, 3 classes; input_shape ``(4,)``.

    Features are standardised with the training split's per-feature mean/std.
    """
    from sklearn.datasets import load_iris as sk_load_iris

    bunch = sk_load_iris()
    return _load_arrays(
        "iris",
        bunch.data,
        bunch.target,
        num_classes=3,
        seed=seed,
        test_fraction=test_fraction,
        val_fraction=val_fraction,
        train_size=train_size,
        label_noise=label_noise,
    )
