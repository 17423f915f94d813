"""The data pipeline: the pre-resized pixel cache, the one persistent DataLoader, evaluation sets
decoded once (issue #15 item 5). Real JPEG/PNG files in the AffectNet layout."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, TensorDataset

from raytune_periodic.data import load_dataset
from raytune_periodic.data.pixel_cache import AUTO_MIN_IMAGES, PixelCache, wants_cache
from raytune_periodic.data.synthetic import write_affectnet
from raytune_periodic.errors import ConfigError
from raytune_periodic.training import build_engine
from raytune_periodic.training.batching import StreamBatches, TensorBatches, in_memory

CLASSES = ["anger", "happy", "sad"]


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    return write_affectnet(tmp_path / "affectnet", CLASSES, n_train=8, n_val=2, side=24)


def _load(root: Path, **options: object):
    return load_dataset("affectnet", root=str(root), size=16, seed=1, val_fraction=0.25, **options)


def _all(ds) -> torch.Tensor:
    return torch.stack([ds[i][0] for i in range(len(ds))])


def test_cached_tensors_equal_decoded_ones(folder: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    plain = _load(folder, cache=False)
    cached = _load(folder, cache=True, cache_dir=str(cache_dir))
    assert "pixel_cache" not in plain.info
    assert Path(str(cached.info["pixel_cache"])).parent == cache_dir
    assert cached.info["mean"] == plain.info["mean"] and cached.info["std"] == plain.info["std"]
    for part in ("train", "val", "test"):
        a, b = getattr(plain, part), getattr(cached, part)
        assert isinstance(b.cache, PixelCache) and a.cache is None
        assert torch.equal(_all(a), _all(b))  # bit-identical, item by item
        idx = list(range(len(a)))[::-1]
        xa, ya = a.batch(idx)
        xb, yb = b.batch(idx)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(xa, _all(a).flip(0))  # a batch is its items, stacked
    again = _load(folder, cache=True, cache_dir=str(cache_dir))
    assert again.info["pixel_cache"] == cached.info["pixel_cache"]  # found, not rebuilt
    assert sorted(p.name for p in cache_dir.iterdir() if p.is_dir()) == [
        Path(str(cached.info["pixel_cache"])).name
    ]


def test_changed_folder_gets_a_new_cache(folder: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    before = _load(folder, cache=True, cache_dir=str(cache_dir))
    target = folder / "val" / "happy" / "0.png"
    Image.fromarray(np.zeros((24, 28, 3), dtype=np.uint8)).save(target)  # another image
    stamp = target.stat().st_mtime_ns + 10**9
    os.utime(target, ns=(stamp, stamp))
    after = _load(folder, cache=True, cache_dir=str(cache_dir))
    assert after.info["pixel_cache"] != before.info["pixel_cache"]
    fresh = _load(folder, cache=False)
    assert torch.equal(_all(after.test), _all(fresh.test))
    assert not torch.equal(_all(after.test), _all(before.test))  # the old cache: the old image
    Image.fromarray(np.zeros((24, 28, 3), dtype=np.uint8)).save(folder / "train" / "sad" / "9.jpg")
    added = _load(folder, cache=True, cache_dir=str(cache_dir))  # one more file: a new cache too
    assert added.info["pixel_cache"] not in (after.info["pixel_cache"], before.info["pixel_cache"])


def test_cache_options_are_checked(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^dataset\.options\.cache: .*true, false or auto"):
        _load(folder, cache="sometimes")
    with pytest.raises(ConfigError, match=r"^dataset\.options\.cache: "):
        _load(folder, cache=2)
    with pytest.raises(ConfigError, match=r"^dataset\.options\.cache_workers: "):
        _load(folder, cache=True, cache_dir=str(tmp_path), cache_workers=-1)
    with pytest.raises(ConfigError, match=r"^dataset\.options\.cache_dir: "):
        _load(folder, cache=True, cache_dir=5)
    assert "pixel_cache" not in _load(folder).info  # auto: 30 images stay streamed
    assert not wants_cache("auto", AUTO_MIN_IMAGES - 1, 64, 3)
    assert wants_cache("auto", AUTO_MIN_IMAGES, 64, 3)
    assert not wants_cache("auto", 300_000, 224, 3)  # AffectNet at 224 px: 42 GB


class Numbered(Dataset):
    """Item i is ``(i, i)``: the order a loader delivers is visible in the labels."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.full((3,), float(i)), torch.tensor(i)


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_follows_the_seeded_order_with_one_loader(workers: int) -> None:
    n, bs, cpu = 21, 4, torch.device("cpu")
    ref = TensorBatches(TensorDataset(torch.zeros(n, 3), torch.arange(n)), bs, 5, cpu)
    stream = StreamBatches(Numbered(n), bs, 5, cpu, workers)
    loader = stream.loader
    expected = [ref.next()[1] for _ in range(17)]  # 5 batches per epoch: 3+ epochs
    got = [stream.next() for _ in range(12)]
    pids = None if workers == 0 else sorted(w.pid for w in stream._it._workers)
    state = stream.state_dict()  # mid-epoch (12 = 2 epochs + 2)
    tail = [stream.next()[1] for _ in range(5)]
    assert stream.loader is loader and stream.epoch == 3  # one loader across the epochs
    assert all(torch.equal(x[:, 0].long(), y) for x, y in got)
    assert [y.tolist() for _, y in got] + [y.tolist() for y in tail] == [
        y.tolist() for y in expected
    ]
    stream.load_state_dict(state)  # restore: the same batches again, same workers
    assert [stream.next()[1].tolist() for _ in range(5)] == [y.tolist() for y in tail]
    if workers:
        assert sorted(w.pid for w in stream._it._workers) == pids
    stream.close()


def test_evaluation_sets_decoded_once_into_tensors(folder: Path) -> None:
    data = _load(folder, cache=False)
    cpu = torch.device("cpu")
    val = in_memory(data.val, cpu, max_bytes=10**8, batch_size=4)
    assert isinstance(val, TensorDataset)
    x, y = val.tensors
    assert torch.equal(x, _all(data.val)) and torch.equal(y, data.val.labels)
    assert in_memory(data.test, cpu, max_bytes=100) is data.test  # too big: stays streamed
    assert in_memory(data.test, cpu, max_bytes=0) is data.test  # 0: never


def test_device_pixels_give_the_same_batches(folder: Path, tmp_path: Path) -> None:
    """On CUDA, uint8 batches are standardised on the device (the default there); the same path
    forced on the CPU gives exactly the float batches."""
    cpu = torch.device("cpu")
    data = _load(folder, cache=True, cache_dir=str(tmp_path))
    floats = StreamBatches(data.train, 5, 3, cpu, 0)
    pixels = StreamBatches(data.train, 5, 3, cpu, 0, device_pixels=True)
    assert not floats.device_pixels and pixels.device_pixels
    for _ in range(7):  # past an epoch end (18 training images: 4 batches)
        (xa, ya), (xb, yb) = floats.next(), pixels.next()
        assert xb.dtype == torch.float32 and torch.equal(xa, xb) and torch.equal(ya, yb)


def test_cached_batches_through_worker_processes(folder: Path, tmp_path: Path) -> None:
    """The cache travels to DataLoader workers without its memory map (each maps the file)."""
    data = _load(folder, cache=True, cache_dir=str(tmp_path))
    cpu = torch.device("cpu")
    inline = StreamBatches(data.train, 4, 1, cpu, 0)
    workers = StreamBatches(data.train, 4, 1, cpu, 2)
    for _ in range(6):
        (xa, ya), (xb, yb) = inline.next(), workers.next()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    workers.close()


def test_engine_run_same_with_cache_and_evaluation_sets_in_memory(
    folder: Path, tmp_path: Path
) -> None:
    """A run on the cache, its val/test sets kept as tensors, equals a run decoding every image
    at every use: the record of a period with an epoch-end evaluation, bit for bit."""
    spec = {
        "dataset": "affectnet",
        "model": {"name": "resnet20", "blocks": 1},
        "train": {"period_length": 3, "periods": 1, "batch_size": 8, "val_batches": 1},
    }
    cached = _load(folder, cache=True, cache_dir=str(tmp_path))
    kept = build_engine(spec, data=cached)
    assert isinstance(kept.val_set, TensorDataset) and isinstance(kept.test_set, TensorDataset)
    a = kept.step_period()  # an epoch ends at pass 3 (18 training images)
    plain = _load(folder, cache=False)
    spec["train"]["eval_in_memory_mb"] = 0
    streamed = build_engine(spec, data=plain)
    assert streamed.val_set is plain.val and streamed.test_set is plain.test
    b = streamed.step_period()
    assert a.epoch_ended and a.full_val_loss is not None
    assert (a.train_loss, a.val_loss, a.full_val_loss, a.test_f1) == (
        b.train_loss,
        b.val_loss,
        b.full_val_loss,
        b.test_f1,
    )


def _open_in_process(args: tuple[list[Path], str]) -> tuple[str, int]:
    from raytune_periodic.data.pixel_cache import open_cache

    paths, cache_dir = args
    cache = open_cache(paths, 16, "RGB", cache_dir)
    meta = json.loads((cache.folder / "meta.json").read_text())
    return str(cache.folder), int(meta["built_by_pid"])


def test_concurrent_processes_build_one_cache(folder: Path, tmp_path: Path) -> None:
    """Trials starting together on one node: one builds (under the lock), the other waits and
    maps the same cache; no half-written folder is left behind."""
    paths, cache_dir = sorted(folder.rglob("*.jpg")), tmp_path / "cache"
    with multiprocessing.get_context("fork").Pool(3) as pool:
        got = pool.map(_open_in_process, [(paths, str(cache_dir))] * 3)
    assert len({f for f, _ in got}) == 1 and len({pid for _, pid in got}) == 1
    assert [p.name for p in cache_dir.iterdir() if p.is_dir()] == [Path(got[0][0]).name]
