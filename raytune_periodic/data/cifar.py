"""CIFAR-10/100 from torchvision's python-pickle layout on disk (never downloaded here).

``root`` is the directory holding ``cifar-10-batches-py/`` or ``cifar-100-python/`` (what
``torchvision.datasets.CIFAR10(root, download=True)`` leaves behind). The official test batch is
the test split; val is carved from the training batches.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100

from raytune_periodic.data import check_common, make_splits, split_indices
from raytune_periodic.data._base import DataSplits
from raytune_periodic.errors import ConfigError
from raytune_periodic.validation import boolean

ROOT = "dataset.options.root"


class _PresenceOnly:
    """Check that the files exist instead of their md5 sums (``verify=False``).

    torchvision verifies md5 sums of the official archive's files on every load; a copy that was
    re-pickled, or the tiny files the tests write in the same layout, fail that check although
    they are read the same way. Files torchvision downloaded were checked at download time.
    """

    root: str
    base_folder: str
    train_list: list[list[str]]
    test_list: list[list[str]]
    meta: dict[str, str]

    def _check_integrity(self) -> bool:
        folder = os.path.join(self.root, self.base_folder)
        files = [name for name, _ in self.train_list + self.test_list]
        return all(os.path.isfile(os.path.join(folder, name)) for name in files)

    def _load_meta(self) -> None:
        path = os.path.join(self.root, self.base_folder, self.meta["filename"])
        if not os.path.isfile(path):
            raise RuntimeError(f"{path} not found")
        with open(path, "rb") as infile:
            self.classes = pickle.load(infile, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


class _UnverifiedCIFAR10(_PresenceOnly, CIFAR10):
    pass


class _UnverifiedCIFAR100(_PresenceOnly, CIFAR100):
    pass


def _images(data: np.ndarray) -> torch.Tensor:
    """uint8 N×H×W×C → float32 N×C×H×W (contiguous)."""
    return torch.from_numpy(np.ascontiguousarray(data.transpose(0, 3, 1, 2))).to(torch.float32)


def _read_batches(
    cls: type[CIFAR10], unverified: type[CIFAR10], base: Path, folder: Path, verify: bool
) -> tuple[CIFAR10, CIFAR10]:
    """torchvision's readers on the pickle batches (md5-checked with ``verify``); one-line
    errors for a missing folder, missing or corrupt files."""
    for path in (base, folder):
        if not path.is_dir():
            raise ConfigError(ROOT, f"{path} does not exist (need {folder}; no download is made)")
    expected = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    reader = cls if verify else unverified
    try:
        return (
            reader(str(base), train=True, download=False),
            reader(str(base), train=False, download=False),
        )
    except RuntimeError:
        check = "missing files or files failing torchvision's md5 check" if verify else "missing"
        raise ConfigError(
            ROOT,
            f"{folder}: {check}; expected {', '.join(expected)}"
            + (" (dataset.options.verify: false skips the md5 check)" if verify else ""),
        ) from None
    except (OSError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as exc:
        raise ConfigError(ROOT, f"cannot read {folder}: {type(exc).__name__}: {exc}") from None


def _load_cifar(
    name: str,
    cls: type[CIFAR10],
    unverified: type[CIFAR10],
    num_classes: int,
    *,
    root: str | os.PathLike[str] | None,
    seed: int,
    val_fraction: float,
    train_size: int | None,
    label_noise: float,
    verify: bool,
) -> DataSplits:
    if root is None:
        raise ConfigError(ROOT, f"required for {name}")
    verify = boolean(verify, "dataset.options.verify")
    check_common(
        seed=seed,
        val_fraction=val_fraction,
        train_size=train_size,
        label_noise=label_noise,
        num_classes=num_classes,
    )
    base = Path(root).expanduser()
    folder = base / cls.base_folder
    train_set, test_set = _read_batches(cls, unverified, base, folder, verify)
    labels = np.asarray(train_set.targets, dtype=np.int64)
    test_labels = np.asarray(test_set.targets, dtype=np.int64)
    for part, ys in (("train", labels), ("test", test_labels)):
        if len(ys) and (ys.min() < 0 or ys.max() >= num_classes):
            raise ConfigError(ROOT, f"{folder}: {part} labels outside 0..{num_classes - 1}")
    rng = np.random.default_rng(seed)
    idx = split_indices(labels, rng, val_fraction=val_fraction, train_size=train_size)
    xs = {k: _images(train_set.data[idx[k]]) for k in ("train", "val")}
    ys = {k: torch.from_numpy(labels[idx[k]]) for k in ("train", "val")}
    xs["test"], ys["test"] = _images(test_set.data), torch.from_numpy(test_labels)
    return make_splits(
        name,
        xs,
        ys,
        num_classes=num_classes,
        seed=seed,
        label_noise=label_noise,
        rng=rng,
        info={"root": str(folder), "val_fraction": val_fraction, "md5_verified": bool(verify)},
    )


def load_cifar10(
    root: str | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    train_size: int | None = None,
    label_noise: float = 0.0,
    verify: bool = True,
) -> DataSplits:
    """CIFAR-10: 32×32 RGB, 10 classes, input_shape ``(3, 32, 32)``, per-channel standardised.

    ``verify`` keeps torchvision's md5 check of the files; false only checks they exist.
    """
    return _load_cifar(
        "cifar10",
        CIFAR10,
        _UnverifiedCIFAR10,
        10,
        root=root,
        seed=seed,
        val_fraction=val_fraction,
        train_size=train_size,
        label_noise=label_noise,
        verify=verify,
    )


def load_cifar100(
    root: str | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    train_size: int | None = None,
    label_noise: float = 0.0,
    verify: bool = True,
) -> DataSplits:
    """CIFAR-100 (fine labels): 32×32 RGB, 100 classes, input_shape ``(3, 32, 32)``.

    ``verify`` keeps torchvision's md5 check of the files; false only checks they exist.
    """
    return _load_cifar(
        "cifar100",
        CIFAR100,
        _UnverifiedCIFAR100,
        100,
        root=root,
        seed=seed,
        val_fraction=val_fraction,
        train_size=train_size,
        label_noise=label_noise,
        verify=verify,
    )
