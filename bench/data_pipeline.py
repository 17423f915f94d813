"""Images per second of the streamed folder-dataset pipeline, side by side in one run.

Writes a folder dataset of real JPEG files in AffectNet's ImageFolder layout (smooth synthetic
pictures, which compress and decode like photographs, not like noise), then times whole epochs of
training batches, the variants interleaved in alternating order:

(a) ours, streamed: ``load_dataset("affectnet", cache=False)`` through the engine's batch source
    (one persistent DataLoader, a mini-batch per ``ImageFiles.batch`` call: PIL decode + resize);
(b) torchvision's ``ImageFolder`` + ``DataLoader`` with the same transforms (RGB, bilinear
    ``Resize``, ``ToTensor``, ``Normalize`` with our statistics), batch size, shuffling and workers
    (persistent workers too) — goal (a)/(b) >= 1.0x;
(c) ours, cached: ``cache=True``, the pre-resized uint8 memory-mapped cache (built once, its build
    time reported as a number of PIL epochs) — goal (c)/(a) >= 3x;
(d) torchvision.io: ``decode_jpeg`` + antialiased tensor ``resize`` per item (not used by the
    package; shown for the decode-path alternative);
(e) ours, cached, uint8 batches: the CPU side of the CUDA path (``device_pixels``: the float
    conversion and standardisation then run on the GPU, not timed here).

With 0 workers everything runs in the timing thread, so its CPU time is measured: images per
core-second, undisturbed by the neighbours of a shared machine. With workers (other processes) it
is wall-clock time, and the load average is printed. Each worker count gets its own loaders;
images/s are medians over ``--repeats`` epochs.

Usage: python bench/data_pipeline.py [--images 1200] [--side 256] [--size 112] [--batch 64]
                                     [--workers 0 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from raytune_periodic.data import load_dataset
from raytune_periodic.training.batching import StreamBatches, make_batches

CLASSES = ["anger", "fear", "happy", "neutral", "sad"]


def write_folder(root: Path, n_images: int, side: int, seed: int = 0) -> Path:
    """``root/{train,val}/<class>/<i>.jpg``: smooth pictures (8×8 noise upsampled + grain)."""
    rng = np.random.default_rng(seed)
    per_class = max(1, n_images // len(CLASSES))
    for part, count in (("train", per_class), ("val", 2)):
        for cls in CLASSES:
            (root / part / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
                big = np.asarray(small.resize((side + 16, side), Image.Resampling.BICUBIC))
                grain = rng.normal(0, 6, big.shape)
                pixels = np.clip(big + grain, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / part / cls / f"{i}.jpg", quality=90)
    return root


class TorchvisionIO(Dataset):
    """(d): ``torchvision.io.decode_jpeg`` + antialiased bilinear resize, standardised."""

    def __init__(self, paths: list[str], labels: list[int], size: int, mean, std) -> None:
        self.paths, self.labels, self.size = paths, labels, size
        self.norm = v2.Normalize(mean, std)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = torchvision.io.decode_jpeg(torchvision.io.read_file(self.paths[i]))
        img = TF.resize(img, [self.size, self.size], antialias=True)
        return self.norm(img.float() / 255.0), self.labels[i]


class Uint8Only:
    """(e): ``ImageFiles`` whose device-side standardisation is left out (the GPU's work)."""

    def __init__(self, files) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def batch_pixels(self, indices):
        return self.files.batch_pixels(indices)

    def standardise(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels


def ours(
    root: Path, size: int, batch: int, workers: int, cache_dir: Path | None, uint8: bool = False
):
    data = load_dataset(
        "affectnet", root=str(root), size=size, val_fraction=0.0, stat_samples=64,
        cache=cache_dir is not None, cache_dir=None if cache_dir is None else str(cache_dir),
    )  # fmt: skip
    cpu = torch.device("cpu")
    if uint8:
        source = StreamBatches(Uint8Only(data.train), batch, 0, cpu, workers, device_pixels=True)
    else:
        source = make_batches(data.train, batch, 0, cpu, workers)

    def epoch() -> int:
        n = 0
        for _ in range(source.batches_per_epoch):
            x, _ = source.next()
            n += len(x)
        return n

    def reset() -> None:
        # the endless sampler lets workers prefetch the next epoch while the other variants are
        # timed; a restore drops those batches, so each timed epoch starts with an empty pipeline
        # (warm workers), as a torchvision loader's epoch does
        source.load_state_dict(source.state_dict())

    epoch.reset = reset  # type: ignore[attr-defined]
    return data, epoch


def loader_epoch(loader: DataLoader):
    def epoch() -> int:
        return sum(len(x) for x, _ in loader)

    return epoch


def baselines(root: Path, data, size: int, batch: int, workers: int):
    mean, std = data.info["mean"], data.info["std"]
    tf = torchvision.transforms.Compose(
        [
            torchvision.transforms.Resize((size, size)),  # PIL bilinear, as ours
            torchvision.transforms.ToTensor(),
            torchvision.transforms.Normalize(mean, std),
        ]
    )
    folder = torchvision.datasets.ImageFolder(str(root / "train"), transform=tf)
    extra = {"persistent_workers": True} if workers > 0 else {}
    gen = torch.Generator().manual_seed(0)
    tv = DataLoader(
        folder, batch_size=batch, shuffle=True, num_workers=workers, generator=gen, **extra
    )
    paths = [p for p, _ in folder.samples]
    labels = [y for _, y in folder.samples]
    io = DataLoader(
        TorchvisionIO(paths, labels, size, mean, std),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        generator=gen,
        **extra,
    )
    return loader_epoch(tv), loader_epoch(io)


def measure(variants: dict, repeats: int, clock) -> dict[str, float]:
    """Images/s per variant: median over ``repeats`` epochs, interleaved, order alternating."""
    for fn in variants.values():
        fn()  # warm-up: workers started, page cache filled
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(repeats):
        for k in list(variants) if i % 2 == 0 else list(variants)[::-1]:
            getattr(variants[k], "reset", lambda: None)()
            start = clock()
            n = variants[k]()
            rates[k].append(n / (clock() - start))
    return {k: statistics.median(v) for k, v in rates.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=1200)
    ap.add_argument("--side", type=int, default=256, help="side of the JPEG files")
    ap.add_argument("--size", type=int, default=112, help="the dataset's size option")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="rp-data-bench-") as tmp:
        root = write_folder(Path(tmp) / "affectnet", args.images, args.side)
        cache_dir = Path(tmp) / "cache"
        print(
            f"{args.images} JPEGs of {args.side + 16}x{args.side} px -> {args.size} px, "
            f"batch {args.batch}, torch threads 1, load {os.getloadavg()[0]:.1f}"
        )
        data, _ = ours(root, args.size, args.batch, 0, None)
        start = time.perf_counter()
        ours(root, args.size, args.batch, 0, cache_dir)  # builds the cache
        build = time.perf_counter() - start
        for workers in args.workers:
            _, streamed = ours(root, args.size, args.batch, workers, None)
            _, cached = ours(root, args.size, args.batch, workers, cache_dir)
            _, uint8 = ours(root, args.size, args.batch, workers, cache_dir, uint8=True)
            tv, io = baselines(root, data, args.size, args.batch, workers)
            variants = {"ours": streamed, "ImageFolder": tv, "cached": cached, "tv.io": io}
            variants["uint8"] = uint8
            clock = time.thread_time if workers == 0 else time.perf_counter
            r = measure(variants, args.repeats, clock)
            what = "per core (thread CPU time)" if workers == 0 else "(wall)"
            print(
                f"workers {workers}: images/s {what}  (a) ours {r['ours']:.0f}  "
                f"(b) ImageFolder {r['ImageFolder']:.0f}  (c) cached {r['cached']:.0f}  "
                f"(d) torchvision.io {r['tv.io']:.0f}  (e) cached uint8 {r['uint8']:.0f}"
            )
            print(
                f"  (a)/(b) = {r['ours'] / r['ImageFolder']:.2f}x (goal >= 1.0)   "
                f"(c)/(a) = {r['cached'] / r['ours']:.2f}x (goal >= 3)   "
                f"(d)/(a) = {r['tv.io'] / r['ours']:.2f}x   (e)/(a) = {r['uint8'] / r['ours']:.1f}x"
            )
            if workers == args.workers[0]:
                pil_epoch = len(data.train) / r["ours"]
                print(
                    f"  cache build (one-time, in-process): {build:.1f} s = "
                    f"{build / pil_epoch:.1f} streamed epochs at {workers} workers (wall / CPU)"
                )
        print(f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
