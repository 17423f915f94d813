"""What every dataset loader returns: seeded train/val/test splits plus shape metadata.

Small datasets are ``torch.utils.data.TensorDataset`` (float32 inputs, int64 labels); the engine
moves their tensors onto the training device once and batches them there (no DataLoader workers).
Anything else is streamed through a DataLoader.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset


@dataclass
class DataSplits:
    """Train/val/test splits of one dataset.

    ``input_shape`` is ``(C, H, W)`` for images (digits is ``(1, 8, 8)``) or ``(F,)`` for tabular
    data (iris is ``(4,)``). ``info`` carries loader facts worth logging (sizes, label-noise rate).
    """

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    info: dict[str, object] = field(default_factory=dict)

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3


def labels_of(dataset: Dataset) -> torch.Tensor:
    """The int64 label tensor of a TensorDataset (used by tests and reports)."""
    tensors = getattr(dataset, "tensors", None)
    if tensors is None:
        raise TypeError("labels_of needs a TensorDataset")
    return tensors[1]
