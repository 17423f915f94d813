"""Starting (or joining) Ray for an experiment, with the user's plugin code shipped to workers.

A plugin (a model, dataset, regularizer, controller, reward or method outside this package) is
named by an import path; Ray's trial workers import this package afresh, so the plugin's code
must reach them. Packages installed in the environment (site-packages, e.g. with their entry
points) are already there on a laptop; anything else (a local folder, a notebook's module) is
shipped with Ray's ``runtime_env`` ``py_modules``, which works on a local Ray and on a cluster.
"""

from __future__ import annotations

import importlib.util
import os
import sysconfig
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from raytune_periodic.errors import ConfigError

_INSTALLED = {Path(p).resolve() for key in ("purelib", "platlib") if (p := sysconfig.get_path(key))}


def _installed(path: Path) -> bool:
    return any(root in path.parents for root in _INSTALLED) or "site-packages" in path.parts


def plugin_modules(plugins: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Local paths (package folders or single ``.py`` files) of the plugins' top-level modules
    that are not installed in this environment: what ``runtime_env.py_modules`` must ship."""
    out: list[str] = []
    for names in plugins.values():
        for path in names.values():
            top = path.split(":")[0].split(".")[0]
            spec = importlib.util.find_spec(top)
            if spec is None:
                raise ConfigError("plugins", f"module {top!r} of {path!r} cannot be found")
            if spec.submodule_search_locations:  # a package: ship its folder
                locations = list(spec.submodule_search_locations)
                if len(locations) != 1:
                    msg = f"package {top!r} spans several folders; install it on every node"
                    raise ConfigError("plugins", msg)
                where = Path(locations[0]).resolve()
            elif spec.origin and spec.origin.endswith(".py"):
                where = Path(spec.origin).resolve()
            else:
                continue  # built-in or compiled: nothing to ship
            if not _installed(where) and str(where) not in out:
                out.append(str(where))
    return sorted(out)


def start_ray(address: str | None, num_cpus: int | None, py_modules: list[str]) -> Any:
    """``ray.init`` unless Ray is up; the plugins' modules go into the job's runtime_env.

    Inside ``ray job submit`` the job's own runtime_env applies (``launch/submit.sh
    --py-module``); a Ray started by the caller (a notebook) must already ship them.
    """
    from raytune_periodic._imports import require

    ray = require("ray")
    if ray.is_initialized():
        return ray
    target = address or os.environ.get("RAY_ADDRESS") or "local"
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if target == "local" and num_cpus:
        kwargs["num_cpus"] = num_cpus
    in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ  # set by `ray job submit`
    if py_modules and not in_job:
        kwargs["runtime_env"] = {"py_modules": py_modules}
    ray.init(address=target, **kwargs)
    return ray
