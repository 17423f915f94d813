"""How a run uses its device: mixed precision, memory format, cuDNN autotuning, ``torch.compile``.

The engine's ``TrainOptions`` carry four keys, resolved here against the device and the model:

- ``amp`` (``auto``, true, false): ``auto`` turns mixed precision on for CUDA and off on the CPU.
  On CUDA it runs in bfloat16 where the GPU supports it (``torch.cuda.is_bf16_supported()``:
  Ampere and later; no loss scaling needed), else in float16 with a ``GradScaler``; ``amp: true``
  on the CPU is bfloat16 autocast.
- ``channels_last`` (``auto``, true, false): ``auto`` stores the weights of a model with 2-D
  convolutions and its image batches in NHWC order on CUDA (what Tensor Cores and cuDNN's fastest
  kernels want), and does nothing on the CPU.
- ``cudnn_benchmark`` (true): on CUDA, cuDNN times its convolution algorithms on the first batch of
  each shape and keeps the fastest. Runs then stop being bit-reproducible on the GPU (they are not
  anyway with atomics in the backward pass); the CPU is unaffected.
- ``compile`` (false, true or a backend name such as ``inductor``, ``aot_eager``, ``eager``):
  training and evaluation passes go through ``torch.compile(model)``; the module itself (its
  ``state_dict``, the regularizers' in-place values) is unchanged, so checkpoints load either way.
  Values set in place each period do not recompile (Dynamo does not specialise on
  ``PeriodicDropout.p``: one frame for six values); a module branching on its value in Python
  recompiles per branch, up to ``torch._dynamo.config.recompile_limit``, then runs eagerly.

With the defaults every one of these is a no-op on the CPU: CPU results stay bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from raytune_periodic.errors import ConfigError
from raytune_periodic.validation import boolean

AUTO = "auto"


def tri_state(value: object, field: str) -> bool | None:
    """``auto`` → None, else a strict boolean (``ConfigError`` naming ``field`` otherwise)."""
    if value == AUTO:
        return None
    if isinstance(value, str):
        raise ConfigError(field, f"expected true, false or auto, got {value!r}")
    return boolean(value, field)


def compile_backend(value: object, field: str) -> str | None:
    """``false`` → None, ``true`` → ``inductor``, a string → that ``torch.compile`` backend."""
    if isinstance(value, str):
        import torch._dynamo  # only when asked for: dynamo is a heavy import

        known = torch._dynamo.list_backends(exclude_tags=())
        if value not in known:
            raise ConfigError(field, f"unknown torch.compile backend {value!r}; known: {known}")
        return value
    return "inductor" if boolean(value, field) else None


def check_options(amp: object, channels_last: object, cudnn: object, comp: object, field: str):
    """Validate the four keys (one-line ``ConfigError`` naming the bad one)."""
    tri_state(amp, f"{field}.amp")
    tri_state(channels_last, f"{field}.channels_last")
    boolean(cudnn, f"{field}.cudnn_benchmark")
    compile_backend(comp, f"{field}.compile")


@dataclass
class Acceleration:
    """What ``setup_device`` decided for one run (the engine reads these fields)."""

    amp: bool  #: autocast on
    amp_dtype: torch.dtype  #: autocast's dtype
    scaler: bool  #: float16 loss scaling (``GradScaler`` enabled)
    channels_last: bool  #: weights and image batches in NHWC order
    forward: Callable[[torch.Tensor], torch.Tensor]  #: the model, or its compiled form


def _has_conv2d(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def setup_device(
    model: nn.Module,
    device: torch.device,
    *,
    amp: object = AUTO,
    channels_last: object = AUTO,
    cudnn_benchmark: bool = True,
    compile: object = False,
    image_input: bool = True,
    field: str = "train",
) -> Acceleration:
    """Resolve the options for ``model`` (already on ``device``) and apply them to it."""
    cuda = device.type == "cuda"
    amp_on = tri_state(amp, f"{field}.amp")
    amp_on = cuda if amp_on is None else amp_on
    dtype = torch.bfloat16
    if cuda and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
    if cuda and boolean(cudnn_benchmark, f"{field}.cudnn_benchmark"):
        torch.backends.cudnn.benchmark = True
    nhwc = tri_state(channels_last, f"{field}.channels_last")
    if nhwc is None:
        nhwc = cuda and image_input and _has_conv2d(model)
    nhwc = nhwc and image_input
    if nhwc:
        model.to(memory_format=torch.channels_last)
    backend = compile_backend(compile, f"{field}.compile")
    forward = model if backend is None else torch.compile(model, backend=backend)
    return Acceleration(
        amp=amp_on,
        amp_dtype=dtype,
        scaler=amp_on and cuda and dtype == torch.float16,
        channels_last=nhwc,
        forward=forward,
    )
