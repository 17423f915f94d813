"""GPU readiness (issue #15 item 6): AMP, channels_last, cuDNN autotuning and torch.compile are
resolved per device, are no-ops on the CPU, and a compiled run checkpoints like an eager one."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from raytune_periodic.data import DataSplits
from raytune_periodic.errors import ConfigError
from raytune_periodic.training import build_engine, parse_run_spec
from raytune_periodic.training.device import setup_device
from raytune_periodic.training.spec import load_data

SPEC = {
    "dataset": {"name": "digits", "train_size": 200},
    "model": {"name": "lenet"},
    "regularizers": [{"kind": "dropout", "where": "head"}],
    "controller": {"type": "periodic_random", "ranges": {"dropout": [0, 0.5]}},
    "train": {"period_length": 4, "periods": 2, "batch_size": 32, "seed": 2},
}  # 200 / 32: an epoch ends at pass 7, in period 1


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_data(parse_run_spec(SPEC))


def _spec(**train: object) -> dict:
    spec = copy.deepcopy(SPEC)
    spec["train"].update(train)
    return spec


def _numbers(records) -> list[tuple[float, ...]]:
    return [(r.train_loss, r.val_loss, r.full_val_loss, r.test_f1) for r in records]


def test_defaults_are_no_ops_on_the_cpu(digits: DataSplits) -> None:
    benchmark = torch.backends.cudnn.benchmark
    engine = build_engine(_spec(device="cpu"), data=digits)  # "auto" is CUDA on a GPU node
    accel = engine.accel
    assert (accel.amp, accel.scaler, accel.channels_last) == (False, False, False)
    assert accel.forward is engine.model and not engine.scaler.is_enabled()
    assert torch.backends.cudnn.benchmark == benchmark  # untouched without CUDA
    default_run = _numbers(engine.run())
    explicit = build_engine(
        _spec(device="cpu", amp=False, channels_last=False, cudnn_benchmark=False, compile=False),
        data=digits,
    )
    assert default_run == _numbers(explicit.run())  # bit-identical


def test_cuda_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``auto`` turns on for a CUDA device (decided without one: no kernel runs here)."""
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    accel = setup_device(conv, cuda)
    assert (accel.amp, accel.amp_dtype, accel.scaler) == (True, torch.bfloat16, False)
    assert accel.channels_last and conv[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.backends.cudnn.benchmark
    mlp = nn.Sequential(nn.Linear(4, 2))
    assert not setup_device(mlp, cuda, image_input=False).channels_last
    assert not setup_device(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), cuda).channels_last
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    old_gpu = setup_device(nn.Conv2d(3, 4, 3), cuda)
    assert (old_gpu.amp_dtype, old_gpu.scaler) == (torch.float16, True)  # V100, T4: loss scaling
    off = setup_device(nn.Conv2d(3, 4, 3), cuda, amp=False, channels_last=False)
    assert not off.amp and not off.scaler and not off.channels_last
    cpu_amp = setup_device(nn.Conv2d(3, 4, 3), torch.device("cpu"), amp=True)
    assert (cpu_amp.amp, cpu_amp.amp_dtype, cpu_amp.scaler) == (True, torch.bfloat16, False)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("amp", "sometimes"),
        ("amp", 1),
        ("channels_last", "yes"),
        ("cudnn_benchmark", "auto"),
        ("compile", "no_such_backend"),
        ("eval_in_memory_mb", -1),
    ],
)
def test_bad_values_name_the_key(key: str, value: object, digits: DataSplits) -> None:
    with pytest.raises(ConfigError, match=rf"^train\.{key}: "):
        build_engine(_spec(**{key: value}), data=digits)


def test_compiled_run_equals_eager_and_checkpoints_alike(
    tmp_path: Path, digits: DataSplits
) -> None:
    """``compile`` wraps the forward passes only: same numbers (dynamo's ``eager`` backend runs
    the captured graph with the same kernels), same state_dict keys, checkpoints interchangeable."""
    eager = build_engine(SPEC, data=digits)
    eager_first = _numbers(eager.run(1))
    eager.save(str(tmp_path / "e.pt"))
    eager_rest = _numbers(eager.run())
    compiled = build_engine(_spec(compile="eager"), data=digits)
    assert compiled.accel.forward is not compiled.model
    assert _numbers(compiled.run(1)) == eager_first
    assert list(compiled.state_dict()["model"]) == list(eager.state_dict()["model"])
    compiled.save(str(tmp_path / "c.pt"))
    resumed = build_engine(SPEC, data=digits)  # eager, from the compiled run's checkpoint
    resumed.load(str(tmp_path / "c.pt"))
    assert _numbers(resumed.run()) == eager_rest
    again = build_engine(
        _spec(compile="eager"), data=digits
    )  # compiled, from the eager run's checkpoint
    again.load(str(tmp_path / "e.pt"))
    assert _numbers(again.run()) == eager_rest
