"""Epoch time of ResNet-18 on CIFAR-shaped synthetic data: the period engine vs a tuned bare loop.

Both train the same ResNet-18 (``models/resnet.py``: torchvision's, 3×3 stem for 32 px) from the
same initial weights with the same Adam and batch size on the same on-device tensors (N×3×32×32,
10 classes). One engine period is one epoch (``period_length`` = batches per epoch; no validation
batches or epoch-end evaluation, so both do the same passes). The bare loop is what a careful
hand-written PyTorch loop does on this device: on CUDA, bfloat16 autocast where supported (else
float16 + GradScaler), channels_last, cuDNN benchmark mode — the engine's defaults, so the ratio is
the engine's own overhead (controller, on-device loss/F1 sums, batch source). ``--compile``
compiles both. Goal: engine / bare <= 1.05x.

Runs anywhere: ``--tiny`` (128 images, batch 32, one CPU thread, thread CPU time) keeps the script
working on a machine without a GPU; the GPU numbers of docs/BENCHMARKS.md come from the default
sizes (a CIFAR-10 epoch: 50,000 images, batch 256) on a CUDA machine.

``--side 224`` (ImageNet stem) measures what a GPU consumes at AffectNet/ImageNet sizes, the number
``bench/data_pipeline.py``'s per-core rates are compared with.

Usage: python bench/gpu_epoch.py [--tiny] [--images N] [--batch B] [--side 32] [--repeats 5]
                                 [--compile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from raytune_periodic.data._base import DataSplits
from raytune_periodic.training import build_engine

CLOCK = time.perf_counter


def synthetic(n: int, side: int = 32, seed: int = 0) -> DataSplits:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, side, side, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    small = TensorDataset(x[:64], y[:64])
    return DataSplits("synthetic_cifar", TensorDataset(x, y), small, small, 10, (3, side, side))


def engine_for(data: DataSplits, batch: int, compile_: bool):
    train = {
        "period_length": len(data.train) // batch, "periods": 10**6, "batch_size": batch,
        "val_batches": 0, "val_samples_per_class": 0, "eval_every_epochs": 0,
        "compile": compile_, "seed": 0,
    }  # fmt: skip
    return build_engine({"dataset": "digits", "model": "resnet18", "train": train}, data=data)


class BareLoop:
    """The same passes as a hand-tuned loop: shuffled on-device batches, forward, backward, step."""

    def __init__(self, engine, data: DataSplits, batch: int, compile_: bool) -> None:
        self.device = engine.device
        self.model = engine.model  # a second engine's module: the same initial weights
        cuda = self.device.type == "cuda"
        self.amp = cuda
        self.dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=cuda and self.dtype == torch.float16)
        self.memory = torch.channels_last if cuda else torch.contiguous_format
        if cuda:
            torch.backends.cudnn.benchmark = True
            self.model.to(memory_format=self.memory)
        self.forward = torch.compile(self.model) if compile_ else self.model
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3, weight_decay=1e-4)
        self.x, self.y = (t.to(self.device) for t in data.train.tensors)
        self.batch = batch
        self.gen = torch.Generator().manual_seed(1)

    def epoch(self) -> float:
        self.model.train()
        perm = torch.randperm(len(self.y), generator=self.gen).to(self.device)
        total = torch.zeros((), device=self.device)
        for idx in perm.split(self.batch):
            x = self.x[idx].contiguous(memory_format=self.memory)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.amp):
                loss = F.cross_entropy(self.forward(x), self.y[idx])
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            total += loss.detach().float()
        return float(total)  # one host sync per epoch, as the engine's period end


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="128 images, batch 32, CPU-sized")
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--side", type=int, default=32, help="image side; >= 64 uses the ImageNet stem")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="torch.compile both (inductor)")
    args = ap.parse_args()
    global CLOCK
    if args.tiny:
        args.images, args.batch = 128, 32
        torch.set_num_threads(1)
        CLOCK = time.thread_time  # a shared 2-core machine: this thread's CPU time
    data = synthetic(args.images - args.images % args.batch, args.side)
    engine = engine_for(data, args.batch, args.compile)
    bare_engine = engine_for(data, args.batch, args.compile)  # its model, same initial weights
    bare = BareLoop(bare_engine, data, args.batch, args.compile)
    a = engine.accel
    gpu = torch.cuda.get_device_name() if engine.device.type == "cuda" else "no GPU"
    print(
        f"device {engine.device} ({gpu}); "
        f"{len(data.train)} images 3x{args.side}x{args.side}, batch {args.batch}, ResNet-18; "
        f"engine: amp {a.amp} "
        f"{a.amp_dtype if a.amp else ''}, channels_last {a.channels_last}, compile {args.compile}; "
        f"load {os.getloadavg()[0]:.1f}"
    )
    engine.step_period()  # warm-up: cuDNN autotuning, compilation, allocator
    bare.epoch()
    times: dict[str, list[float]] = {"engine": [], "bare": []}
    for i in range(args.repeats):
        for k in ("engine", "bare") if i % 2 == 0 else ("bare", "engine"):
            if engine.device.type == "cuda":
                torch.cuda.synchronize()
            start = CLOCK()
            engine.step_period() if k == "engine" else bare.epoch()
            times[k].append(CLOCK() - start)
    e, b = statistics.median(times["engine"]), statistics.median(times["bare"])
    clock = "thread CPU" if args.tiny else "wall"
    print(f"epoch ({clock} time, median of {args.repeats}, interleaved):")
    print(f"  engine {e:.3f} s ({len(data.train) / e:.0f} img/s)   bare {b:.3f} s")
    print(f"  engine / bare = {e / b:.3f}x (goal <= 1.05x)")


if __name__ == "__main__":
    main()
