"""Seeded, resumable mini-batch sources.

``TensorBatches`` keeps a TensorDataset's tensors on the training device and slices shuffled
mini-batches there (no DataLoader, no workers); ``StreamBatches`` streams any other Dataset through
a DataLoader over the same seeded index permutation. Both can save their position mid-epoch and
continue exactly.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset, default_collate


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
        self.gen.set_state(state["gen"].cpu())
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self.batches = [b.cpu().clone() for b in state["batches"]]
        self.epoch_ended = False


class TensorBatches(BatchSource):
    """Mini-batches sliced from tensors that live on the training device."""

    def __init__(self, dataset: TensorDataset, batch_size: int, seed: int, device: torch.device):
        super().__init__(dataset, batch_size, seed, device)
        self.x, self.y = (t.to(device) for t in dataset.tensors)
        self._indexed: list[torch.Tensor] | None = None  # this epoch's batches, on the device
        self._indexed_for: list[torch.Tensor] | None = None

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._indexed_for is not self.batches:  # one host-to-device copy per epoch
            self._indexed_for = self.batches
            flat = torch.cat(self.batches).to(self.device, non_blocking=True)
            self._indexed = list(flat.split([len(b) for b in self.batches]))
        idx = self._indexed[self.pos]  # type: ignore[index]
        self._advance()
        return self.x.index_select(0, idx), self.y.index_select(0, idx)


class _Batched(Dataset):
    """A dataset indexed by whole mini-batches: ``ds.batch(indices)`` where the dataset has it
    (``ImageFiles``: one vectorised standardisation), else its items collated; with ``pixels``,
    ``ds.batch_pixels(indices)`` (uint8, standardised later on the device)."""

    def __init__(self, dataset: Dataset, pixels: bool = False) -> None:
        self.dataset = dataset
        self.pixels = pixels

    def __getitem__(self, indices: list[int]) -> Any:
        if self.pixels:
            return self.dataset.batch_pixels(indices)  # type: ignore[attr-defined]
        batch = getattr(self.dataset, "batch", None)
        if batch is not None:
            return batch(indices)
        return default_collate([self.dataset[i] for i in indices])


class _Order(Sampler):
    """The source's order from where it stands now, endless: the rest of this epoch, then the
    epochs its generator will draw (a copy of the generator, so the source draws them again)."""

    def __init__(self, source: BatchSource) -> None:
        self.source = source

    def __iter__(self) -> Iterator[list[int]]:
        src = self.source
        gen = torch.Generator().manual_seed(0)
        gen.set_state(src.gen.get_state())
        yield from (b.tolist() for b in src.batches[src.pos :])
        while True:
            yield from (b.tolist() for b in _epoch_batches(src.n, src.batch_size, gen))


def _seed_worker(worker_id: int) -> None:
    """numpy and ``random`` in a worker seeded from its torch seed (which the loader's seeded
    generator fixes), so any randomness in a dataset repeats from run to run."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class StreamBatches(BatchSource):
    """Mini-batches streamed over the same seeded order by one DataLoader, created once.

    The loader's sampler is endless (:class:`_Order`), so epochs follow each other without a new
    loader or new worker processes; with ``num_workers > 0`` workers are persistent (they survive
    a restore), prefetch ``prefetch`` batches each and are seeded deterministically; with CUDA,
    batches come in pinned memory and are copied asynchronously. ``device_pixels`` (default: on
    CUDA, for datasets with ``batch_pixels``/``standardise``) moves uint8 images and converts
    and standardises them on the device: the same tensors, a quarter of the bytes, no CPU work.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        device: torch.device,
        num_workers: int,
        prefetch: int = 4,
        device_pixels: bool | None = None,
    ) -> None:
        super().__init__(dataset, batch_size, seed, device)
        self.num_workers = num_workers
        if device_pixels is None:
            device_pixels = device.type == "cuda"
        self.device_pixels = device_pixels and hasattr(dataset, "batch_pixels")
        extra: dict[str, Any] = {}
        if num_workers > 0:
            extra = {"persistent_workers": True, "prefetch_factor": prefetch}
            extra["worker_init_fn"] = _seed_worker
        self.loader = DataLoader(
            _Batched(dataset, self.device_pixels),
            sampler=_Order(self),
            batch_size=None,  # the sampler yields whole mini-batches of indices
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(seed + 104729),
            **extra,
        )
        self._it: Iterator[Any] | None = None

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._it is None:
            self._it = iter(self.loader)
        x, y = next(self._it)
        self._advance()
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.device_pixels:
            x = self.dataset.standardise(x)  # type: ignore[attr-defined]
        return x, y

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._it = None  # the order restarts from the restored position

    def close(self) -> None:
        """Stop the workers now (they also stop when this object is garbage-collected)."""
        self._it = None
        self.loader = None  # type: ignore[assignment]


def make_batches(
    dataset: Dataset, batch_size: int, seed: int, device: torch.device, num_workers: int = 0
) -> BatchSource:
    """Tensor datasets stay on the device; anything else streams through a DataLoader."""
    if isinstance(dataset, TensorDataset):
        return TensorBatches(dataset, batch_size, seed, device)
    return StreamBatches(dataset, batch_size, seed, device, num_workers)


def _stream_eval(dataset: Dataset, batch_size: int, num_workers: int) -> DataLoader:
    order = [
        list(range(i, min(i + batch_size, len(dataset))))
        for i in range(0, len(dataset), batch_size)
    ]  # type: ignore[arg-type]
    return DataLoader(_Batched(dataset), sampler=order, batch_size=None, num_workers=num_workers)


def iterate_eval(
    dataset: Dataset, batch_size: int, device: torch.device, num_workers: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """All of ``dataset`` in order, for full evaluation."""
    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors
        for i in range(0, len(y), batch_size):
            yield x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        return
    for x, y in _stream_eval(dataset, batch_size, num_workers):
        yield x.to(device), y.to(device)


def in_memory(
    dataset: Dataset,
    device: torch.device,
    max_bytes: int,
    num_workers: int = 0,
    batch_size: int = 512,
) -> Dataset:
    """``dataset`` as a TensorDataset on ``device``: a streamed one decoded once when its inputs
    take at most ``max_bytes`` (evaluation sets, which every epoch end would decode again),
    else returned as it is. The tensors equal the streamed items (same decode, same order)."""
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(t.to(device) for t in dataset.tensors))
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0 or max_bytes <= 0:
        return dataset
    first = torch.as_tensor(dataset[0][0])
    if n * first.numel() * first.element_size() > max_bytes:
        return dataset
    xs, ys = zip(*_stream_eval(dataset, batch_size, num_workers), strict=True)
    return TensorDataset(torch.cat(xs).to(device), torch.cat(ys).to(device))
