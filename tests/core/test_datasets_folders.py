"""AffectNet and Tiny-ImageNet loaders on tiny JPEG/PNG files written in the real layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from raytune_periodic.data import DATASETS, load_dataset
from raytune_periodic.data.folders import ImageFiles
from raytune_periodic.data.synthetic import write_affectnet, write_tiny_imagenet
from raytune_periodic.errors import ConfigError
from raytune_periodic.training import build_engine

EMOTIONS = ["anger", "contempt", "happy", "neutral"]
WNIDS = ["n01443537", "n01629819", "n01641577"]


@pytest.fixture(scope="module")
def affectnet(tmp_path_factory) -> Path:
    return write_affectnet(tmp_path_factory.mktemp("affectnet"), EMOTIONS, n_train=10, n_val=3)


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory) -> Path:
    return write_tiny_imagenet(tmp_path_factory.mktemp("tiny-imagenet-200"), WNIDS, 8, 2, 64)


def test_registered() -> None:
    assert {"affectnet", "tiny_imagenet"} <= set(DATASETS.names())


def test_affectnet_layout_subset_grayscale(affectnet: Path) -> None:
    data = load_dataset("affectnet", root=str(affectnet), size=16, seed=3, val_fraction=0.2)
    assert data.num_classes == 4 and data.input_shape == (3, 16, 16)
    assert isinstance(data.train, ImageFiles)  # streamed, not tensors
    assert (len(data.train), len(data.val), len(data.test)) == (32, 8, 12)
    x, y = data.train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and 0 <= int(y) < 4
    batch = torch.stack([data.train[i][0] for i in range(len(data.train))])
    assert batch.mean().abs().item() < 0.2  # standardised by train statistics
    seven = ["anger", "happy", "neutral"]  # e.g. the papers' basic emotions without contempt
    sub = load_dataset(
        "affectnet", root=str(affectnet), classes=seven, size=12, grayscale=True, label_noise=0.25
    )
    assert sub.num_classes == 3 and sub.input_shape == (1, 12, 12)
    assert sub.info["classes"] == seven and len(sub.test) == 9
    assert sub.info["noisy_labels"] == round(0.25 * len(sub.train))
    assert sub.train[0][0].shape == (1, 12, 12)
    again = load_dataset(
        "affectnet", root=str(affectnet), classes=seven, size=12, grayscale=True, label_noise=0.25
    )
    assert [str(p) for p in again.train.paths] == [str(p) for p in sub.train.paths]
    assert torch.equal(again.train.labels, sub.train.labels)


def test_tiny_imagenet_layout_and_class_count(tiny_imagenet: Path) -> None:
    data = load_dataset("tiny_imagenet", root=str(tiny_imagenet), val_fraction=0.25)
    assert data.input_shape == (3, 64, 64) and data.num_classes == 3
    assert (len(data.train), len(data.val), len(data.test)) == (18, 6, 6)
    labels = sorted(int(data.test[i][1]) for i in range(len(data.test)))
    assert labels == [0, 0, 1, 1, 2, 2]  # from val_annotations.txt
    two = load_dataset("tiny_imagenet", root=str(tiny_imagenet), classes=2, size=32)
    assert two.num_classes == 2 and two.info["classes"] == WNIDS[:2] and len(two.test) == 4


def test_folder_errors(affectnet: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dataset.options.root"):
        load_dataset("affectnet")
    with pytest.raises(ConfigError, match="dataset.options.root"):
        load_dataset("tiny_imagenet", root=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="dataset.options.classes"):
        load_dataset("affectnet", root=str(affectnet), classes=["anger", "joy"])
    with pytest.raises(ConfigError, match="dataset.options.root"):
        load_dataset("tiny_imagenet", root=str(affectnet))  # no val_annotations.txt


def test_streamed_folder_dataset_trains(tiny_imagenet: Path) -> None:
    spec = {
        "dataset": {"name": "tiny_imagenet", "root": str(tiny_imagenet), "size": 16},
        "model": {"name": "resnet20", "blocks": 1},
        "regularizers": [{"kind": "augment", "where": "model", "value": 1.0}],
        "train": {"period_length": 2, "periods": 1, "batch_size": 8, "val_batches": 1},
    }
    record = build_engine(spec).step_period()
    assert np.isfinite(record.train_loss) and np.isfinite(record.val_loss)
