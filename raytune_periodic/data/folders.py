"""AffectNet and Tiny-ImageNet read from their on-disk folder layouts, streamed (never downloaded).

- **AffectNet** (ImageFolder style): ``root/{train,val}/<class>/<image>`` (``train_set``/``val_set``
  also accepted). Class folders are names (``anger``…) or numbers (``0``…``7``); ``classes``
  picks a subset in a given order (the papers use the 7 basic emotions, i.e. without
  ``contempt``). The official ``val`` is the test split; val is carved from train.
- **Tiny-ImageNet**: ``root/train/<wnid>/images/*.JPEG``, ``root/val/images/*.JPEG`` labelled by
  ``root/val/val_annotations.txt`` (``file<TAB>wnid<TAB>bbox…``); ``classes`` is a list of wnids or
  an integer n (the first n wnids in sorted order, e.g. 25). Official val → test (the official
  test set has no labels); val carved from train.

Images are decoded with PIL (a ``torch.utils.data.Dataset``; the engine streams it through one
persistent DataLoader, a mini-batch per ``ImageFiles.batch`` call), converted to RGB or grey
(``grayscale``), resized to ``size``×``size``, scaled to [0, 1] and standardised per channel with
mean/std measured on a seeded sample of at most ``stat_samples`` training images (recorded in
``info``, which the augmentation regularizer uses). ``seed``, ``val_fraction``, ``train_size`` and
``label_noise`` work as for every loader.

``cache`` (``true``, ``false`` or ``auto``, the default) decodes every image once into a
pre-resized uint8 cache (``data/pixel_cache.py``: one memory-mapped ``.npy`` per dataset, size and
file list, found again by later runs and trials) and serves batches from it — the same tensors,
several times faster. ``auto`` caches datasets of at least 2,000 images whose cache fits in 16 GiB
(Tiny-ImageNet at 64 px: 1.2 GB; AffectNet at 224 px, ~42 GB, stays streamed unless ``cache:
true``). ``cache_dir`` (else ``$RAYTUNE_PERIODIC_CACHE``, else ``~/.cache/raytune_periodic``) is
where caches live; ``cache_workers`` processes decode while building one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from raytune_periodic.data import add_label_noise, check_common, split_indices
from raytune_periodic.data._base import DataSplits
from raytune_periodic.data.pixel_cache import PixelCache, decode, open_cache, to_float, wants_cache
from raytune_periodic.errors import ConfigError
from raytune_periodic.validation import boolean, integer, is_integer, sequence

ROOT = "dataset.options.root"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


class ImageFiles(Dataset):
    """``(image tensor (C, size, size) standardised, label)`` for a list of image files.

    ``batch(indices)`` gives a whole mini-batch at once (one vectorised standardisation; the
    engine's loader calls it). With a ``PixelCache`` the pixels are read from its memory-mapped
    rows instead of decoded: the same tensors (both paths go through ``pixel_cache.decode``).
    """

    def __init__(
        self,
        paths: Sequence[Path],
        labels: torch.Tensor,
        size: int,
        grayscale: bool,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
        cache: PixelCache | None = None,
    ) -> None:
        self.paths = list(paths)
        self.labels = labels
        self.size = size
        self.mode = "L" if grayscale else "RGB"
        self.cache = cache
        self.rows = None if cache is None else cache.rows(self.paths)
        self.set_stats(mean, std)

    def set_stats(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def pixels(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 ``(len(indices), size, size, C)``: cached rows, or decoded now."""
        if self.rows is not None and self.cache is not None:
            return self.cache.read(self.rows[np.asarray(indices, dtype=np.int64)])
        return np.stack([decode(self.paths[i], self.size, self.mode) for i in indices])

    def raw(self, i: int) -> torch.Tensor:
        """Image ``i`` in [0, 1], ``(C, size, size)``, not standardised."""
        return to_float(self.pixels([i])[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.raw(i) - self.mean) / self.std, self.labels[i]

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``indices`` standardised, ``(k, C, size, size)``, and their labels."""
        x = self.standardise(torch.from_numpy(self.pixels(indices)))
        return x, self.labels[torch.as_tensor(list(indices), dtype=torch.long)]

    def batch_pixels(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 ``(k, size, size, C)`` and labels: a quarter of ``batch``'s bytes to move (to
        a GPU), turned into ``batch``'s tensor there by ``standardise``."""
        labels = self.labels[torch.as_tensor(list(indices), dtype=torch.long)]
        return torch.from_numpy(self.pixels(indices)), labels

    def standardise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 ``(k, size, size, C)`` → standardised float32 ``(k, C, size, size)`` on their
        device: the values of ``(raw(i) - mean) / std`` (the same float32 operations), in place
        after one transposing uint8 copy (2–3× faster than a new array per operation)."""
        x = pixels.permute(0, 3, 1, 2).contiguous().float()
        return x.div_(255.0).sub_(self.mean.to(x.device)).div_(self.std.to(x.device))


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
    cache: object = "auto",
    cache_dir: str | None = None,
    cache_workers: int = 0,
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
    pcache = _pixel_cache(paths + test_paths, size, grayscale, cache, cache_dir, cache_workers)
    sets = {
        "train": ImageFiles([paths[i] for i in idx["train"]], noisy, size, grayscale, cache=pcache),
        "val": ImageFiles([paths[i] for i in idx["val"]], y["val"], size, grayscale, cache=pcache),
        "test": ImageFiles(
            test_paths, torch.from_numpy(test_labels), size, grayscale, cache=pcache
        ),
    }
    mean, std = _set_stats(sets, rng, stat_samples)
    facts: dict[str, object] = {f"{p}_size": len(d) for p, d in sets.items()}
    facts |= {"seed": int(seed), "label_noise": float(label_noise), "noisy_labels": len(changed)}
    facts |= {"mean": mean, "std": std, "classes": classes} | info
    if pcache is not None:
        facts["pixel_cache"] = str(pcache.folder)
    return DataSplits(
        name=name,
        train=sets["train"],
        val=sets["val"],
        test=sets["test"],
        num_classes=k,
        input_shape=(1 if grayscale else 3, size, size),
        info=facts,
    )


def _set_stats(
    sets: dict[str, ImageFiles], rng: np.random.Generator, stat_samples: int
) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of a seeded sample of training images, set on every split."""
    sample = rng.permutation(len(sets["train"]))[:stat_samples]
    pixels = torch.stack([sets["train"].raw(int(i)) for i in sample])
    std, mean = torch.std_mean(pixels, dim=(0, 2, 3), correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    for ds in sets.values():
        ds.set_stats(mean.tolist(), std.tolist())
    return mean.tolist(), std.tolist()


def _pixel_cache(
    paths: list[Path],
    size: int,
    grayscale: bool,
    cache: object,
    cache_dir: str | None,
    workers: int,
) -> PixelCache | None:
    if cache_dir is not None and not isinstance(cache_dir, str | os.PathLike):
        raise ConfigError("dataset.options.cache_dir", f"expected a path, got {cache_dir!r}")
    workers = integer(workers, "dataset.options.cache_workers", 0, 256)
    if not wants_cache(cache, len(paths), size, 1 if grayscale else 3):
        return None
    return open_cache(paths, size, "L" if grayscale else "RGB", cache_dir, workers)


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
    cache: bool | str = "auto",
    cache_dir: str | None = None,
    cache_workers: int = 0,
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
        cache=cache, cache_dir=cache_dir, cache_workers=cache_workers,
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
    cache: bool | str = "auto",
    cache_dir: str | None = None,
    cache_workers: int = 0,
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
        cache=cache, cache_dir=cache_dir, cache_workers=cache_workers,
    )  # fmt: skip
