"""Seeded, resumable mini-batch sources.

``TensorBatches`` keeps a TensorDataset's tensors on the training device and slices shuffled
mini-batches there (no DataLoader, no workers); ``StreamBatches`` streams any other Dataset through
a DataLoader over the same seeded index permutation. Both can save their position mid-epoch and
continue exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset


def _epoch_batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    batches = list(perm.split(batch_size))
    if len(batches) > 1 and batches[-1].numel() == 1:
        batches.pop()  # BatchNorm cannot train on a batch of one
    return batches


class BatchSource:
    """Endless shuffled mini-batches with an epoch counter; ``epoch_ended`` flags a wrap."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, device: torch.device) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.device = device
        self.gen = torch.Generator().manual_seed(seed)
        self.n = len(dataset)  # type: ignore[arg-type]
        self.epoch = 0
        self.pos = 0
        self.batches = _epoch_batches(self.n, batch_size, self.gen)
        self.epoch_ended = False

    @property
    def batches_per_epoch(self) -> int:
        return len(self.batches)

    @property
    def epoch_progress(self) -> float:
        return self.epoch + self.pos / len(self.batches)

    def _advance(self) -> torch.Tensor:
        idx = self.batches[self.pos]
        self.pos += 1
        self.epoch_ended = False
        if self.pos == len(self.batches):
            self.epoch += 1
            self.pos = 0
            self.batches = _epoch_batches(self.n, self.batch_size, self.gen)
            self.epoch_ended = True
        return idx

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {
            "gen": self.gen.get_state(),
            "epoch": self.epoch,
            "pos": self.pos,
            "batches": [b.clone() for b in self.batches],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self.batches = [b.clone() for b in state["batches"]]
        self.epoch_ended = False


class TensorBatches(BatchSource):
    """Mini-batches sliced from tensors that live on the training device."""

    def __init__(self, dataset: TensorDataset, batch_size: int, seed: int, device: torch.device):
        super().__init__(dataset, batch_size, seed, device)
        self.x, self.y = (t.to(device) for t in dataset.tensors)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self._advance().to(self.device, non_blocking=True)
        return self.x.index_select(0, idx), self.y.index_select(0, idx)


class StreamBatches(BatchSource):
    """Mini-batches streamed by a DataLoader (``num_workers`` processes) over the same order."""

    def __init__(
        self, dataset: Dataset, batch_size: int, seed: int, device: torch.device, num_workers: int
    ) -> None:
        super().__init__(dataset, batch_size, seed, device)
        self.num_workers = num_workers
        self._it: Iterator[Any] | None = None

    def _loader(self) -> Iterator[Any]:
        order = [b.tolist() for b in self.batches[self.pos :]]
        loader = DataLoader(
            self.dataset,
            batch_sampler=order,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        return iter(loader)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._it is None:
            self._it = self._loader()
        x, y = next(self._it)
        self._advance()
        if self.pos == 0:
            self._it = None  # a new epoch: new order
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._it = None


def make_batches(
    dataset: Dataset, batch_size: int, seed: int, device: torch.device, num_workers: int = 0
) -> BatchSource:
    """Tensor datasets stay on the device; anything else streams through a DataLoader."""
    if isinstance(dataset, TensorDataset):
        return TensorBatches(dataset, batch_size, seed, device)
    return StreamBatches(dataset, batch_size, seed, device, num_workers)


def iterate_eval(
    dataset: Dataset, batch_size: int, device: torch.device, num_workers: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """All of ``dataset`` in order, for full evaluation."""
    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors
        for i in range(0, len(y), batch_size):
            yield x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        return
    for x, y in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
        yield x.to(device), y.to(device)
