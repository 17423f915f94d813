"""FER2013 facial expressions (48×48 grey, 7 classes; ``size`` resizes) from a local CSV; never
downloaded.

Accepted layouts (``root`` is a CSV file or a directory holding one of these, first found wins):

- Kaggle ``fer2013.csv`` (``emotion,pixels,Usage``) or ``icml_face_data.csv`` (same columns with
  spaces): Training → train, PublicTest → val, PrivateTest → test.
- torchvision's ``fer2013/train.csv`` (``emotion,pixels``): its ``test.csv`` has no labels, so
  val and test are both carved (stratified, seeded) from ``train.csv``.

torchvision's ``FER2013`` class is not used: it md5-checks the file on every load and merges
PublicTest and PrivateTest into one test split.
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from raytune_periodic.data import check_common, make_splits, split_indices
from raytune_periodic.data._base import DataSplits
from raytune_periodic.errors import ConfigError
from raytune_periodic.validation import integer

ROOT = "dataset.options.root"
NUM_CLASSES = 7
SIDE = 48
USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
CANDIDATES = (
    "fer2013.csv",
    "icml_face_data.csv",
    "fer2013/fer2013.csv",
    "fer2013/icml_face_data.csv",
    "fer2013/train.csv",
)


def find_csv(root: str | os.PathLike[str]) -> Path:
    """The FER2013 CSV that ``root`` names or contains; ``ConfigError`` if there is none."""
    path = Path(root).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise ConfigError(ROOT, f"{path} does not exist")
    for name in CANDIDATES:
        if (path / name).is_file():
            return path / name
    raise ConfigError(ROOT, f"{path} has none of {', '.join(CANDIDATES)} (it does not exist)")


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read ``(images uint8 N×48×48, labels int64 N, usage str N or None)`` from a FER CSV."""
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = [column.strip() for column in next(reader, [])]
        for column in ("emotion", "pixels"):
            if column not in header:
                raise ConfigError(ROOT, f"{path}: no {column!r} column (header {header})")
        i_label, i_pixels = header.index("emotion"), header.index("pixels")
        i_usage = header.index("Usage") if "Usage" in header else None
        images, labels, usage = [], [], []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fromstring on a malformed row
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                pixels = np.fromstring(row[i_pixels], dtype=np.int16, sep=" ")
                if pixels.size != SIDE * SIDE or pixels.min() < 0 or pixels.max() > 255:
                    raise ConfigError(ROOT, f"{path} line {line}: expected 2304 pixels in 0..255")
                images.append(pixels.astype(np.uint8))
                labels.append(int(row[i_label]))
                if i_usage is not None:
                    usage.append(row[i_usage].strip())
    if not images:
        raise ConfigError(ROOT, f"{path} has no rows")
    y = np.asarray(labels, dtype=np.int64)
    if y.min() < 0 or y.max() >= NUM_CLASSES:
        raise ConfigError(ROOT, f"{path}: emotion labels outside 0..{NUM_CLASSES - 1}")
    x = np.stack(images).reshape(-1, SIDE, SIDE)
    return x, y, (np.asarray(usage) if i_usage is not None else None)


def _kaggle_splits(
    path: Path,
    labels: np.ndarray,
    usage: np.ndarray,
    rng: np.random.Generator,
    val_fraction: float | None,
    train_size: int | None,
    info: dict[str, object],
) -> dict[str, np.ndarray]:
    """Split indices of the Kaggle CSV by its Usage column (PublicTest = val unless
    ``val_fraction`` carves val from Training; PrivateTest = test); ``info`` says which."""
    unknown = sorted(set(usage) - set(USAGE))
    if unknown:
        raise ConfigError(ROOT, f"{path}: unknown Usage {unknown}; valid: {', '.join(USAGE)}")
    where = {part: np.flatnonzero(usage == name) for name, part in USAGE.items()}
    pool = where["train"]
    if val_fraction is None:
        sub = split_indices(labels[pool], rng, train_size=train_size)
        info |= {"val_source": "PublicTest", "test_source": "PrivateTest"}
        return {"train": pool[sub["train"]], "val": where["val"], "test": where["test"]}
    sub = split_indices(labels[pool], rng, val_fraction=val_fraction, train_size=train_size)
    info |= {"val_source": f"{val_fraction} of Training", "test_source": "PrivateTest"}
    return {"train": pool[sub["train"]], "val": pool[sub["val"]], "test": where["test"]}


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 1, 48, 48) in [0, 1] → (N, 1, size, size), bilinear with antialiasing, in chunks."""
    if len(images) == 0:
        return images.new_zeros((0, images.shape[1], size, size))
    chunks = [
        F.interpolate(c, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        for c in images.split(4096)
    ]
    return torch.cat(chunks).clamp_(0.0, 1.0)


def load_fer2013(
    root: str | None = None,
    seed: int = 0,
    val_fraction: float | None = None,
    test_fraction: float = 0.1,
    train_size: int | None = None,
    label_noise: float = 0.0,
    size: int = SIDE,
) -> DataSplits:
    """FER2013, input_shape ``(1, size, size)``: pixels /255, then standardised by train stats.

    ``val_fraction`` None uses PublicTest as val (Kaggle CSV) or 0.1 of ``train.csv``; a number
    carves that fraction of the training rows instead. ``test_fraction`` applies only to the
    ``train.csv`` layout (the Kaggle CSV's test split is PrivateTest). ``size`` resizes the 48×48
    faces (bilinear, antialiased): the surrogate paper's 28×28 for LeNet and ResNet20, 227×227
    for M-ResNet.
    """
    if root is None:
        raise ConfigError(ROOT, "required for fer2013")
    size = integer(size, "dataset.options.size", 8, 1024)
    check_common(
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        train_size=train_size,
        label_noise=label_noise,
        num_classes=NUM_CLASSES,
    )
    path = find_csv(root)
    images, labels, usage = read_csv(path)
    rng = np.random.default_rng(seed)
    info: dict[str, object] = {"root": str(path)}
    if usage is None:  # torchvision's train.csv: carve val and test
        val = 0.1 if val_fraction is None else val_fraction
        idx = split_indices(
            labels, rng, test_fraction=test_fraction, val_fraction=val, train_size=train_size
        )
        info |= {
            "val_source": f"{val} of {path.name}",
            "test_source": f"{test_fraction} of {path.name} (torchvision's test.csv has no labels)",
        }
    else:
        idx = _kaggle_splits(path, labels, usage, rng, val_fraction, train_size, info)
    parts = ("train", "val", "test")
    xs = {k: torch.from_numpy(images[idx[k]]).unsqueeze(1).to(torch.float32) / 255 for k in parts}
    if size != SIDE:
        xs = {k: resize(v, size) for k, v in xs.items()}
        info["size"] = size
    ys = {k: torch.from_numpy(labels[idx[k]]) for k in parts}
    return make_splits(
        "fer2013",
        xs,
        ys,
        num_classes=NUM_CLASSES,
        seed=seed,
        label_noise=label_noise,
        rng=rng,
        info=info,
    )
