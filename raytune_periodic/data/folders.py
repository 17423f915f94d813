"""AffectNet and Tiny-ImageNet read from their on-disk folder layouts, streamed (never downloaded).

- **AffectNet** (ImageFolder style): ``root/{train,val}/<class>/<image>`` (``train_set``/``val_set``
  also accepted). Class folders are names (``anger``…) or numbers (``0``…``7``); ``classes``
  picks a subset in a given order (the papers use the 7 basic emotions, i.e. without
  ``contempt``). The official ``val`` is the test split; val is carved from train.
- **Tiny-ImageNet**: ``root/train/<wnid>/images/*.JPEG``, ``root/val/images/*.JPEG`` labelled by
  ``root/val/val_annotations.txt`` (``file<TAB>wnid<TAB>bbox…``); ``classes`` is a list of wnids or
  an integer n (the first n wnids in sorted order, e.g. 25). Official val → test (the official
  test set has no labels); val carved from train.

Images are decoded with PIL per item (a ``torch.utils.data.Dataset``; the engine streams it with a
DataLoader), converted to RGB or grey (``grayscale``), resized to ``size``×``size``, scaled to
[0, 1] and standardised per channel with mean/std measured on a seeded sample of at most
``stat_samples`` training images (recorded in ``info``, which the augmentation regularizer uses).
``seed``, ``val_fraction``, ``train_size`` and ``label_noise`` work as for every loader.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from raytune_periodic.data import add_label_noise, check_common, split_indices
from raytune_periodic.data._base import DataSplits
from raytune_periodic.errors import ConfigError
from raytune_periodic.validation import boolean, integer, is_integer, sequence

ROOT = "dataset.options.root"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


class ImageFiles(Dataset):
    """``(image tensor (C, size, size) standardised, label)`` for a list of image files."""

    def __init__(
        self,
        paths: Sequence[Path],
        labels: torch.Tensor,
        size: int,
        grayscale: bool,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
    ) -> None:
        self.paths = list(paths)
        self.labels = labels
        self.size = size
        self.mode = "L" if grayscale else "RGB"
        self.set_stats(mean, std)

    def set_stats(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def raw(self, i: int) -> torch.Tensor:
        """Image ``i`` in [0, 1], ``(C, size, size)``, not standardised."""
        with Image.open(self.paths[i]) as img:
            img = img.convert(self.mode)
            if img.size != (self.size, self.size):
                img = img.resize((self.size, self.size), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
        x = torch.from_numpy(arr.copy())
        return x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.raw(i) - self.mean) / self.std, self.labels[i]


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _pick_classes(found: list[str], classes: object, field: str = "dataset.options.classes"):
    if classes is None:
        return found
    if is_integer(classes):
        return found[: integer(classes, field, 2, len(found))]
    what = "a list of >= 2 class names or a count"
    names = [str(c) for c in sequence(classes, field, what)]
    if len(names) < 2:
        raise ConfigError(field, f"expected {what}, got {classes!r}")
    missing = [c for c in names if c not in found]
    if missing or len(set(names)) != len(names):
        raise ConfigError(field, f"unknown or repeated classes {missing or names}; found: {found}")
    return names


def _finish(
    name: str,
    files: dict[str, tuple[list[Path], np.ndarray]],
    classes: list[str],
    *,
    size: int,
    grayscale: bool,
    seed: int,
    val_fraction: float,
    train_size: int | None,
    label_noise: float,
    stat_samples: int,
    info: dict[str, object],
) -> DataSplits:
    k = len(classes)
    check_common(
        seed=seed,
        val_fraction=val_fraction,
        train_size=train_size,
        label_noise=label_noise,
        num_classes=k,
    )
    size = integer(size, "dataset.options.size", 8)
    grayscale = boolean(grayscale, "dataset.options.grayscale")
    rng = np.random.default_rng(seed)
    paths, labels = files["train"]
    idx = split_indices(labels, rng, val_fraction=val_fraction, train_size=train_size)
    y = {part: torch.from_numpy(labels[idx[part]]) for part in ("train", "val")}
    noisy, changed = add_label_noise(y["train"], label_noise, k, rng)
    test_paths, test_labels = files["test"]
    sets = {
        "train": ImageFiles([paths[i] for i in idx["train"]], noisy, size, grayscale),
        "val": ImageFiles([paths[i] for i in idx["val"]], y["val"], size, grayscale),
        "test": ImageFiles(test_paths, torch.from_numpy(test_labels), size, grayscale),
    }
    sample = rng.permutation(len(sets["train"]))[:stat_samples]
    pixels = torch.stack([sets["train"].raw(int(i)) for i in sample])
    std, mean = torch.std_mean(pixels, dim=(0, 2, 3), correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    for ds in sets.values():
        ds.set_stats(mean.tolist(), std.tolist())
    facts: dict[str, object] = {f"{p}_size": len(d) for p, d in sets.items()}
    facts |= {"seed": int(seed), "label_noise": float(label_noise), "noisy_labels": len(changed)}
    facts |= {"mean": mean.tolist(), "std": std.tolist(), "classes": classes} | info
    return DataSplits(
        name=name,
        train=sets["train"],
        val=sets["val"],
        test=sets["test"],
        num_classes=k,
        input_shape=(1 if grayscale else 3, size, size),
        info=facts,
    )


def _dir(root: Path, *names: str) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise ConfigError(ROOT, f"{root} has no {' or '.join(n + '/' for n in names)} folder")


def load_affectnet(
    root: str | None = None,
    classes: Sequence[str] | int | None = None,
    size: int = 224,
    grayscale: bool = False,
    seed: int = 0,
    val_fraction: float = 0.1,
    train_size: int | None = None,
    label_noise: float = 0.0,
    stat_samples: int = 256,
) -> DataSplits:
    """AffectNet from ``root/{train,val}/<class>/`` (test = the official val)."""
    if root is None:
        raise ConfigError(ROOT, "required for affectnet")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise ConfigError(ROOT, f"{base} does not exist")
    train_dir, test_dir = _dir(base, "train", "train_set"), _dir(base, "val", "val_set")
    found = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    names = _pick_classes(found, classes)
    files = {}
    for part, folder in (("train", train_dir), ("test", test_dir)):
        paths: list[Path] = []
        labels: list[int] = []
        for label, cls in enumerate(names):
            if (folder / cls).is_dir():
                got = _images(folder / cls)
                paths += got
                labels += [label] * len(got)
        if not paths:
            raise ConfigError(ROOT, f"{folder} has no images of classes {names}")
        files[part] = (paths, np.asarray(labels, dtype=np.int64))
    return _finish(
        "affectnet", files, names, size=size, grayscale=grayscale, seed=seed,
        val_fraction=val_fraction, train_size=train_size, label_noise=label_noise,
        stat_samples=stat_samples, info={"root": str(base), "test_source": "official val"},
    )  # fmt: skip


def load_tiny_imagenet(
    root: str | None = None,
    classes: Sequence[str] | int | None = None,
    size: int = 64,
    grayscale: bool = False,
    seed: int = 0,
    val_fraction: float = 0.1,
    train_size: int | None = None,
    label_noise: float = 0.0,
    stat_samples: int = 256,
) -> DataSplits:
    """Tiny-ImageNet-200 from its archive layout (test = the official, annotated val)."""
    if root is None:
        raise ConfigError(ROOT, "required for tiny_imagenet")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise ConfigError(ROOT, f"{base} does not exist")
    train_dir = _dir(base, "train")
    annotations = base / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise ConfigError(ROOT, f"{annotations} does not exist")
    found = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    names = _pick_classes(found, classes)
    index = {c: i for i, c in enumerate(names)}
    paths: list[Path] = []
    labels: list[int] = []
    for cls in names:
        folder = train_dir / cls / "images"
        got = _images(folder if folder.is_dir() else train_dir / cls)
        paths += got
        labels += [index[cls]] * len(got)
    test_paths: list[Path] = []
    test_labels: list[int] = []
    for line in annotations.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[1] in index:
            test_paths.append(base / "val" / "images" / parts[0])
            test_labels.append(index[parts[1]])
    if not paths or not test_paths:
        raise ConfigError(ROOT, f"{base}: no train or val images for classes {names[:5]}…")
    files = {
        "train": (paths, np.asarray(labels, dtype=np.int64)),
        "test": (test_paths, np.asarray(test_labels, dtype=np.int64)),
    }
    return _finish(
        "tiny_imagenet", files, names, size=size, grayscale=grayscale, seed=seed,
        val_fraction=val_fraction, train_size=train_size, label_noise=label_noise,
        stat_samples=stat_samples, info={"root": str(base), "test_source": "official val"},
    )  # fmt: skip
