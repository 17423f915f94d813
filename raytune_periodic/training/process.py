"""Settings of a process that trains: torch threads and glibc's malloc thresholds.

Why malloc: glibc serves an allocation of at least ``M_MMAP_THRESHOLD`` (128 KiB at start) with
its own ``mmap`` and gives it back to the OS at ``free``, and returns free memory at the heap's
top beyond ``M_TRIM_THRESHOLD``. It raises the first threshold as it sees large blocks freed,
but in a fresh process (a Ray worker, a subprocess) the training step's weight gradients,
optimizer temporaries and activations (hundreds of KiB to MiB each) can go on being mapped and
unmapped for many periods: every period then page-faults its whole working set in again. On
the MLP of ``bench/tune_overhead.py`` that was 19,000-100,000 minor page faults per period and
periods 1.1-1.3x slower than in a process that had adapted (``docs/BENCHMARKS.md``, "Why a
period was slower in a Ray worker"). ``prepare_process`` fixes both thresholds (32 MiB, the
largest glibc takes, and 512 MiB): freed memory up to that stays in the process for the next
step. The peak memory of a period does not grow; the process keeps its peak between periods.

Skipped, keeping the user's choice, where ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``
or ``GLIBC_TUNABLES`` is set, with ``RP_MALLOC=default``, and off Linux/glibc.
"""

from __future__ import annotations

import ctypes
import os
import sys

import torch

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  #: glibc's ``mallopt`` parameter numbers
MMAP_THRESHOLD = 32 * 1024 * 1024  #: DEFAULT_MMAP_THRESHOLD_MAX on 64-bit glibc
TRIM_THRESHOLD = 512 * 1024 * 1024
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
OPT_OUT = "RP_MALLOC"  #: ``default``: leave malloc as it is

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds in this process (once); whether they are set."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or os.environ.get(OPT_OUT) == "default":
        return False
    if any(os.environ.get(name) for name in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    return _applied


def prepare_process(threads: int | None = None) -> None:
    """What every trial and candidate process does before it trains: ``threads`` torch
    threads (when given) and :func:`keep_freed_memory`."""
    if threads:
        torch.set_num_threads(max(1, int(threads)))
    keep_freed_memory()


__all__ = ["keep_freed_memory", "prepare_process"]
