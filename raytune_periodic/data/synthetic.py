"""Tiny random datasets written in the real on-disk formats the loaders read.

Used by the tests and by ``--smoke`` (``raytune_periodic.smoke``): every writer produces the same
files as the real dataset's distribution would (torchvision's CIFAR pickle batches, the Kaggle
FER2013 CSV, AffectNet's ImageFolder layout, Tiny-ImageNet's archive layout with
``val/val_annotations.txt``), only with few, random images. Pixels are uniform noise from a seeded
``numpy.random.Generator``, so a writer called with the same arguments writes the same bytes.
Needs numpy and PIL only.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: Kaggle FER2013's ``Usage`` values, in file order.
FER_USAGE = ("Training", "PublicTest", "PrivateTest")
#: AffectNet's seven basic emotions (the papers' classes), as named folders.
AFFECTNET_EMOTIONS = ("anger", "disgust", "fear", "happy", "neutral", "sad", "surprise")


def _pickle(path: Path, obj: Any) -> None:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle)


def write_cifar10(root: str | Path, per_batch: int = 20, n_test: int = 20, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py/``: 5 data batches of ``per_batch`` and a test batch.

    Batches are dicts with str keys, ``data`` uint8 N×3072 and ``labels`` (``(j + i) % 10`` for
    row j of batch i), plus ``batches.meta``. Returns the folder.
    """
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        n = n_test if name == "test_batch" else per_batch
        labels = [(j + i) % 10 for j in range(n)]
        _pickle(
            folder / name,
            {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": labels},
        )
    _pickle(folder / "batches.meta", {"label_names": [f"c{k}" for k in range(10)]})
    return folder


def write_cifar100(root: str | Path, n_train: int = 300, n_test: int = 100, seed: int = 1) -> Path:
    """``root/cifar-100-python/{train,test,meta}``; fine label of row j is ``j % 100``."""
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = [j % 100 for j in range(n)]
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        _pickle(
            folder / name,
            {"data": data, "fine_labels": fine, "coarse_labels": [f // 5 for f in fine]},
        )
    _pickle(folder / "meta", {"fine_label_names": [f"f{k}" for k in range(100)]})
    return folder


def fer_rows(n: int, rng: np.random.Generator) -> list[tuple[int, str]]:
    """``n`` FER rows ``(emotion, "p0 p1 … p2303")``; the emotion of row j is ``j % 7``."""
    return [(j % 7, " ".join(map(str, rng.integers(0, 256, 2304)))) for j in range(n)]


def write_fer2013_csv(
    path: str | Path,
    counts: Sequence[int] = (21, 5, 4),
    header: str = "emotion,pixels,Usage",
    seed: int = 2,
) -> Path:
    """A Kaggle FER2013 CSV at ``path``: ``counts`` rows of Training, PublicTest, PrivateTest.

    ``header`` may also be icml_face_data.csv's ``"emotion, Usage, pixels"``. Returns the path.
    """
    rng = np.random.default_rng(seed)
    usage = [use for use, n in zip(FER_USAGE, counts, strict=True) for _ in range(n)]
    lines = [header]
    for (label, pixels), use in zip(fer_rows(len(usage), rng), usage, strict=True):
        if header.startswith("emotion, Usage"):
            lines.append(f"{label},{use},{pixels}")
        else:
            lines.append(f"{label},{pixels},{use}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines) + "\n")
    return target


def write_image(path: str | Path, rng: np.random.Generator, side: int = 20) -> None:
    """A random RGB image of ``side`` × ``side + 4`` pixels (format from the suffix)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, size=(side, side + 4, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(target)


def write_affectnet(
    root: str | Path,
    classes: Sequence[str] = AFFECTNET_EMOTIONS,
    n_train: int = 10,
    n_val: int = 3,
    side: int = 20,
    seed: int = 0,
) -> Path:
    """``root/train/<class>/<i>.jpg`` (``n_train`` each) and ``root/val/<class>/<i>.png``."""
    base = Path(root)
    rng = np.random.default_rng(seed)
    for cls in classes:
        for i in range(n_train):
            write_image(base / "train" / cls / f"{i}.jpg", rng, side)
        for i in range(n_val):
            write_image(base / "val" / cls / f"{i}.png", rng, side)
    return base


def tiny_imagenet_wnids(n: int) -> list[str]:
    """``n`` WordNet-style ids (``n0000000k``), sorted as the loader sorts them."""
    return [f"n{k:08d}" for k in range(n)]


def write_tiny_imagenet(
    root: str | Path,
    wnids: Sequence[str] = ("n01443537", "n01629819", "n01641577"),
    n_train: int = 8,
    n_val: int = 2,
    side: int = 64,
    seed: int = 1,
) -> Path:
    """Tiny-ImageNet-200's layout: ``train/<wnid>/images/<wnid>_<i>.JPEG``, ``val/images/``
    labelled by ``val/val_annotations.txt`` (``file<TAB>wnid<TAB>x0 y0 x1 y1``), ``wnids.txt``."""
    base = Path(root)
    rng = np.random.default_rng(seed)
    lines = []
    for wnid in wnids:
        for i in range(n_train):
            write_image(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", rng, side)
        for i in range(n_val):
            name = f"val_{wnid}_{i}.JPEG"
            write_image(base / "val" / "images" / name, rng, side)
            lines.append(f"{name}\t{wnid}\t0\t0\t{side - 1}\t{side - 1}")
    (base / "val").mkdir(parents=True, exist_ok=True)
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    return base


__all__ = [
    "AFFECTNET_EMOTIONS",
    "FER_USAGE",
    "fer_rows",
    "tiny_imagenet_wnids",
    "write_affectnet",
    "write_cifar10",
    "write_cifar100",
    "write_fer2013_csv",
    "write_image",
    "write_tiny_imagenet",
]
