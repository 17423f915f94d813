"""What a surrogate evaluation saves, measured (surrogate paper §2.4, Table 5's cost column).

1. Per model: wall time of one *surrogate* evaluation (copy the surrogate, train it NI epochs with
   a candidate's values, score eq. 11 on validation) vs one *original* evaluation of the same NI
   epochs (the same function on the original network: what an EA without surrogate pays), on one
   torch thread (a Ray task with one CPU or less); medians of ``--repeats``. Also the paper's
   T_ori/T_sur from FLOPs (forward, and forward+backward) per sample.
2. A population of 6 surrogate evaluations: serially in this process vs as Ray tasks
   (``num_cpus`` 0.5 and 1 per task on a local ``ray.init(num_cpus=--cpus)``), after one warm-up
   population (worker start-up is reported apart); medians of ``--repeats``.

    .venv/bin/python bench/surrogate_cost.py [--repeats 5] [--ni-epochs 1] [--no-ray]

Models: LeNet on digits (8×8, the bundled data), LeNet on 28×28 and 48×48 inputs (the paper's
LeNet size and FER2013's size; random pixels of the same shapes: training time does not depend on
pixel values). Timings on a shared machine are noisy; the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import TensorDataset

from raytune_periodic.data import load_dataset
from raytune_periodic.data._base import DataSplits
from raytune_periodic.models import build_model
from raytune_periodic.surrogate import (
    HypParaSet,
    RayExecutor,
    SerialExecutor,
    SolverOptions,
    attach_sparseness,
    build_surrogate,
    count_flops,
)
from raytune_periodic.surrogate.training import evaluate_candidate, steps_per_epoch


def synthetic(shape: tuple[int, int, int], classes: int, n_train: int, n_val: int) -> DataSplits:
    gen = torch.Generator().manual_seed(0)

    def split(n: int) -> TensorDataset:
        return TensorDataset(
            torch.randn(n, *shape, generator=gen), torch.randint(0, classes, (n,), generator=gen)
        )

    return DataSplits(f"random{shape}", split(n_train), split(n_val), split(n_val), classes, shape)


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def setup_for(data: DataSplits, ni_epochs: float, executor: str = "serial") -> dict[str, Any]:
    opts = SolverOptions()
    steps = max(1, round(ni_epochs * steps_per_epoch(data.train, opts.batch_size)))
    return {"solver": opts, "lr": opts.lr, "steps": steps, "seed": 0, "kappa": 1e-5,
            "device": "cpu", "threads": 1, "executor": executor}  # fmt: skip


def pair(data: DataSplits) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    original = build_model("lenet", data.input_shape, data.num_classes)
    attach_sparseness(original, HypParaSet.paper_default())
    return original, build_surrogate(original, data.input_shape)


def per_model(name: str, data: DataSplits, ni_epochs: float, repeats: int) -> dict[str, float]:
    original, surrogate = pair(data)
    setup = setup_for(data, ni_epochs)
    payload = {"index": 0, "hyp": HypParaSet.paper_default().to_dict()}

    def run(model: torch.nn.Module) -> Callable[[], Any]:
        return lambda: evaluate_candidate(payload, model=model, data=data, setup=setup)

    run(surrogate)()  # warm-up
    t_sur = median_time(run(surrogate), repeats)
    t_ori = median_time(run(original), repeats)
    shape = data.input_shape
    f_ori, f_sur = count_flops(original, shape), count_flops(surrogate, shape)
    b_ori, b_sur = count_flops(original, shape, True), count_flops(surrogate, shape, True)
    row = {
        "train_size": float(len(data.train)),  # type: ignore[arg-type]
        "steps": float(setup["steps"]),
        "t_original_s": t_ori,
        "t_surrogate_s": t_sur,
        "time_ratio": t_ori / t_sur,
        "flops_ratio_fwd": f_ori / f_sur,
        "flops_ratio_train": b_ori / b_sur,
    }
    conv = surrogate.conv_spec.as_tuple()
    print(
        f"{name:<14} conv={conv!s:<15} n={len(data.train):>5} steps={setup['steps']:>3} "  # type: ignore[arg-type]
        f"T_ori={t_ori:7.3f}s T_sur={t_sur:7.3f}s  measured T_ori/T_sur={row['time_ratio']:5.2f}  "
        f"FLOPs fwd {row['flops_ratio_fwd']:5.2f}, fwd+bwd {row['flops_ratio_train']:5.2f} "
        f"(T_sur/T_ori = 1/{row['time_ratio']:.1f})"
    )
    return row


def population(data: DataSplits, ni_epochs: float, repeats: int, cpus: int) -> None:
    _, surrogate = pair(data)
    payloads = [
        {"index": i, "hyp": HypParaSet.uniform(10.0 ** -(3 + i), 0.2 + 0.1 * i).to_dict()}
        for i in range(6)
    ]
    serial_setup = setup_for(data, ni_epochs)
    serial = SerialExecutor()
    t_serial = median_time(
        lambda: serial.map(
            evaluate_candidate, payloads, model=surrogate, data=data, setup=serial_setup
        ),
        repeats,
    )
    print(f"population of 6, serial in-process (1 thread): {t_serial:.3f}s")
    import ray

    temp = tempfile.mkdtemp(prefix="rtp-bench-", dir="/tmp")
    start = time.perf_counter()
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, _temp_dir=temp,
             log_to_driver=False)  # fmt: skip
    print(f"ray.init(num_cpus={cpus}): {time.perf_counter() - start:.1f}s")
    try:
        for per_task in (0.5, 1.0):
            executor = RayExecutor(num_cpus=per_task)
            handle = executor.share(data)
            setup = {**serial_setup, "threads": executor.threads, "executor": "ray"}

            def go(ex: RayExecutor = executor, h: Any = handle, s: Any = setup) -> list[Any]:
                return ex.map(evaluate_candidate, payloads, model=surrogate, data=h, setup=s)

            pids: set[int] = set()
            start = time.perf_counter()
            pids.update(r["pid"] for r in go())  # starts (and imports torch in) the workers
            cold = time.perf_counter() - start
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                pids.update(r["pid"] for r in go())
                times.append(time.perf_counter() - start)
            warm = statistics.median(times)
            print(
                f"population of 6 as Ray tasks, num_cpus={per_task}: first {cold:.2f}s "
                f"(worker start-up), then median {warm:.3f}s "
                f"[{', '.join(f'{t:.2f}' for t in times)}] in {len(pids)} worker processes "
                f"-> serial/parallel = {t_serial / warm:.2f}x"
            )
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ni-epochs", type=float, default=1.0)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--only-population", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    digits = load_dataset("digits", seed=0)
    models = {
        "lenet/digits": digits,
        "lenet/28x28": synthetic((1, 28, 28), 7, 2000, 500),
        "lenet/48x48": synthetic((1, 48, 48), 7, 2000, 500),
    }
    for name, data in models.items():
        if not args.only_population:
            per_model(name, data, args.ni_epochs, args.repeats)
    if not args.no_ray:
        population(digits, args.ni_epochs, args.repeats, args.cpus)


if __name__ == "__main__":
    main()
