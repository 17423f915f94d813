"""A one-time, pre-resized uint8 pixel cache for folder datasets (memory-mapped ``.npy``).

Decoding a JPEG with PIL and resizing it costs milliseconds per image, every epoch. The cache
decodes every image of a dataset once (the same PIL decode, convert and resize as the streamed
path, :func:`decode`), stores the ``size``×``size`` uint8 pixels as one ``(N, size, size, C)``
``.npy`` file, and afterwards serves mini-batches by memory-mapped row reads: a cached batch
holds exactly the tensors the uncached path computes, from a fraction of the CPU time
(``bench/data_pipeline.py``).

The cache folder is named by a key over the image size, the colour mode and the file list (each
file's resolved path, byte size and modification time): a folder whose files change gets a new
key and a new cache. Builds are atomic (written under a temporary name, renamed when complete)
and serialised by a lock file, so concurrent trials on one node build a cache once and share it.
Location: ``dataset.options.cache_dir``, else ``$RAYTUNE_PERIODIC_CACHE``, else
``~/.cache/raytune_periodic``. Needs numpy, PIL and torch only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from raytune_periodic.errors import ConfigError
from raytune_periodic.validation import boolean, integer

CACHE_ENV = "RAYTUNE_PERIODIC_CACHE"
#: ``cache: auto`` caches a dataset of at least this many images …
AUTO_MIN_IMAGES = 2000
#: … whose cache takes at most this many bytes (AffectNet at 224 px, ~42 GB, stays streamed)
AUTO_MAX_BYTES = 16 * 2**30
VERSION = 1  # bump when the decode changes: old caches are then not found again


def decode(path: str | Path, size: int, mode: str) -> np.ndarray:
    """The one decode of both paths: ``(size, size, C)`` uint8 (PIL, bilinear resize)."""
    with Image.open(path) as img:
        img = img.convert(mode)
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr.copy()


def to_float(pixels: np.ndarray) -> torch.Tensor:
    """uint8 ``(..., H, W, C)`` → float32 ``(..., C, H, W)`` in [0, 1] (contiguous)."""
    arr = pixels.astype(np.float32) / 255.0
    return torch.from_numpy(arr).movedim(-1, -3).contiguous()


def default_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$RAYTUNE_PERIODIC_CACHE``, else ``~/.cache/raytune_periodic``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "raytune_periodic"


def cache_key(paths: Sequence[Path], size: int, mode: str) -> str:
    """A hex digest of the size, mode and every file's resolved path, byte size and mtime."""
    digest = hashlib.sha256(f"v{VERSION}|{size}|{mode}|{len(paths)}".encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"\n{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def wants_cache(
    cache: object, n_images: int, size: int, channels: int, field: str = "dataset.options.cache"
) -> bool:
    """Resolve ``cache`` (true, false or ``auto``) for ``n_images`` of ``size``² × ``channels``."""
    if cache == "auto":
        nbytes = n_images * size * size * channels
        return n_images >= AUTO_MIN_IMAGES and nbytes <= AUTO_MAX_BYTES
    if isinstance(cache, str):
        raise ConfigError(field, f"expected true, false or auto, got {cache!r}")
    return boolean(cache, field)


class _Decode(Dataset):
    def __init__(self, paths: Sequence[Path], size: int, mode: str) -> None:
        self.paths, self.size, self.mode = list(paths), size, mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return decode(self.paths[i], self.size, self.mode)


class PixelCache:
    """The read side: rows of a ``(N, size, size, C)`` uint8 array, memory-mapped per process."""

    def __init__(self, folder: Path, paths: Sequence[Path]) -> None:
        self.folder = folder
        self.file = folder / "pixels.npy"
        self.row = {str(p): i for i, p in enumerate(paths)}
        self._pixels: np.ndarray | None = None

    @property
    def pixels(self) -> np.ndarray:
        if self._pixels is None:  # opened lazily: each DataLoader worker maps the file itself
            self._pixels = np.load(self.file, mmap_mode="r")
        return self._pixels

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_pixels": None}  # pickled to workers without the mapping

    def rows(self, paths: Sequence[Path]) -> np.ndarray:
        return np.asarray([self.row[str(p)] for p in paths], dtype=np.int64)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """uint8 ``(len(rows), size, size, C)`` (a copy, in the order of ``rows``)."""
        return self.pixels[rows]


def _write(folder: Path, paths: Sequence[Path], size: int, mode: str, workers: int) -> None:
    channels = 1 if mode == "L" else 3
    shape = (len(paths), size, size, channels)
    out = np.lib.format.open_memmap(folder / "pixels.npy", mode="w+", dtype=np.uint8, shape=shape)
    loader = DataLoader(
        _Decode(paths, size, mode),
        batch_size=64,
        num_workers=workers,
        collate_fn=np.stack,
    )
    start = 0
    for block in loader:
        out[start : start + len(block)] = block
        start += len(block)
    out.flush()
    del out
    meta = {"version": VERSION, "size": size, "mode": mode, "images": len(paths)}
    meta |= {"built_by_pid": os.getpid(), "built_at": time.time()}
    (folder / "meta.json").write_text(json.dumps(meta) + "\n")


def open_cache(
    paths: Sequence[Path],
    size: int,
    mode: str,
    cache_dir: str | os.PathLike | None = None,
    workers: int = 0,
) -> PixelCache:
    """The cache of ``paths`` at ``size``/``mode``: found, or built once (under a file lock)."""
    workers = integer(workers, "dataset.options.cache_workers", 0, 256)
    base = default_dir(cache_dir)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError("dataset.options.cache_dir", f"cannot create {base}: {err}") from None
    key = cache_key(paths, size, mode)
    folder = base / key
    if not (folder / "meta.json").is_file():
        import fcntl  # POSIX: imported where it is needed

        with open(base / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it: wait
            if not (folder / "meta.json").is_file():
                tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=base))
                try:
                    _write(tmp, paths, size, mode, workers)
                    tmp.rename(folder)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    return PixelCache(folder, paths)
