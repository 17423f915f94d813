"""Every module of the package imports on its own, first, in a fresh process: no circular
imports held together by import order, no module that only works after another was imported.

Each module is imported in a child forked from a parent that has imported the heavy third-party
libraries (torch, Ray, MLflow, ...) but nothing of this package, so the check costs milliseconds
per module instead of seconds.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import traceback

import pytest

import raytune_periodic

HEAVY = ("torch", "torchvision", "numpy", "sklearn", "yaml", "ray.tune", "mlflow", "pandas",
         "matplotlib", "optuna", "nevergrad", "scipy.stats")  # fmt: skip


def all_modules() -> list[str]:
    found = [raytune_periodic.__name__]
    prefix = raytune_periodic.__name__ + "."
    for info in pkgutil.walk_packages(raytune_periodic.__path__, prefix):
        found.append(info.name)
    return sorted(found)


def _import_alone(name: str) -> str | None:
    """Import ``name`` in a forked child with no module of this package loaded."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        for mod in [m for m in sys.modules if m.split(".")[0] == "raytune_periodic"]:
            del sys.modules[mod]
        try:
            importlib.import_module(name)
            msg = b""
        except BaseException:  # noqa: BLE001 - reported to the parent
            msg = traceback.format_exc().encode()[-4000:]
        os.write(write, msg)
        os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode() or None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_every_module_imports_alone() -> None:
    for heavy in HEAVY:
        importlib.import_module(heavy)
    modules = all_modules()
    assert len(modules) > 60
    failures = {m: err for m in modules if (err := _import_alone(m))}
    assert not failures, "\n".join(f"{m}:\n{e}" for m, e in failures.items())


def test_the_check_sees_a_failing_import() -> None:
    err = _import_alone("raytune_periodic.no_such_module")
    assert err is not None and "ModuleNotFoundError" in err
