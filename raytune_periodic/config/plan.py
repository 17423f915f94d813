"""Each method entry resolved once into a ``MethodPlan`` the runner consumes as-is.

A plan holds the method object (the ``SearchMethod`` protocol), the run spec its trials start
from (``base`` with the method's own ``base`` merged in), the valid ranges of its regularizer
groups, and the plugins (names outside this package) its trials must resolve in Ray workers.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from raytune_periodic.controllers import CONTROLLERS, REWARDS, build_controller
from raytune_periodic.data import DATASETS, load_dataset
from raytune_periodic.errors import ConfigError
from raytune_periodic.models import MODELS, build_model, compatible
from raytune_periodic.regularizers import REGULARIZERS, insert_regularizers
from raytune_periodic.training.spec import RunSpec, parse_run_spec
from raytune_periodic.validation import mapping

Bounds = dict[str, tuple[float, float]]


@dataclass
class MethodPlan:
    """What the runner needs of one method, resolved and checked at validation."""

    name: str
    entry: dict[str, Any]
    method: Any  #: a ``tuning.methods.SearchMethod`` instance
    spec: dict[str, Any]  #: the run spec the method's trials start from (no controller yet)
    bounds: Bounds | None  #: valid ranges of the regularizer groups (None: data not checked)
    plugins: dict[str, dict[str, str]] = field(default_factory=dict)  #: registry → name → path

    @property
    def search(self) -> str:
        return str(self.method.search)


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``: mappings merge by key, anything else replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def method_base(base: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """The run spec a method's trials start from: ``base`` with the method's ``base`` merged in.

    Lists (``regularizers``) are replaced whole; a string ``model``/``dataset`` is a name.
    """
    over = dict(entry.get("base") or {})
    merged_base = dict(base)
    for section in (over, merged_base):
        for key in ("model", "dataset"):
            if isinstance(section.get(key), str):
                section[key] = {"name": section[key]}
    if isinstance(over.get("model"), Mapping) and "name" in over["model"]:
        merged_base["model"] = {}  # another model: its options start fresh
    return deep_merge(merged_base, over)


def parse_spec(spec: Mapping[str, Any], fld: str) -> RunSpec:
    """The run spec (no controller) parsed; errors re-anchored at ``fld``."""
    try:
        return parse_run_spec({**spec, "controller": {"type": "constant"}})
    except ConfigError as exc:
        raise ConfigError(f"{fld}.{exc.field}", exc.message) from None


#: a model with more parameters than this is refused at validation (float32: 4 GB of weights,
#: about 16 GB with Adam's moments and the gradients): almost surely a wrong option
MAX_PARAMETERS = 1_000_000_000


def check_data_and_model(spec: RunSpec, fld: str) -> tuple[Bounds, tuple[int, ...]]:
    """Load the dataset and build the model once: paths, names and shapes fail before Ray.

    The model is built on PyTorch's ``meta`` device (shapes, no memory), so an absurd size is
    refused instead of allocated.
    """
    opts = dict(spec.dataset)
    dname = opts.pop("name")
    try:
        data = load_dataset(dname, **opts)
        if len(data.val) == 0:
            raise ConfigError("dataset.options", "the validation split is empty")
        mopts = dict(spec.model)
        mname = mopts.pop("name")
        if not compatible(mname, data.input_shape):
            build_model(mname, data.input_shape, data.num_classes, **mopts)  # raises the error
        with torch.device("meta"):
            model = build_model(mname, data.input_shape, data.num_classes, **mopts)
        size = sum(p.numel() for p in model.parameters())
        if size > MAX_PARAMETERS:
            msg = f"model {mname!r} has {size:,} parameters (limit {MAX_PARAMETERS:,})"
            raise ConfigError("model.name", msg)
        regs = insert_regularizers(model, spec.regularizers)
    except ConfigError as exc:
        raise ConfigError(f"{fld}.{exc.field}", exc.message) from None
    except Exception as exc:  # a plugin's builder or loader failing: one line, not a traceback
        raise ConfigError(fld, f"{type(exc).__name__}: {_first_line(exc)}") from None
    return regs.bounds(), tuple(data.input_shape)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else "(no message)"


def anchor_agent_checkpoint(ctrl: dict[str, Any], fld: str) -> None:
    """Trials run in their own working directories: a relative agent path is anchored here."""
    if ctrl.get("agent_checkpoint"):
        agent = Path(str(ctrl["agent_checkpoint"])).expanduser()
        if not agent.exists():
            raise ConfigError(f"{fld}.controller.agent_checkpoint", f"{agent} does not exist")
        ctrl["agent_checkpoint"] = str(agent.absolute())


def plugins_of(spec: RunSpec, controller: Mapping[str, Any] | None) -> dict[str, dict[str, str]]:
    """The names a trial resolves that live outside this package: registry → name → path."""
    used = [
        (DATASETS, spec.dataset["name"], "dataset.name"),
        (MODELS, spec.model["name"], "model.name"),
        *((REGULARIZERS, p.kind, "regularizers.kind") for p in spec.regularizers),
    ]
    if controller is not None:
        used.append((CONTROLLERS, controller.get("type"), "controller.type"))
        if isinstance(controller.get("reward"), str):
            used.append((REWARDS, controller["reward"], "controller.reward"))
    out: dict[str, dict[str, str]] = {}
    for reg, name, fld in used:
        try:
            path = reg.plugin_path(name)
        except ConfigError as exc:
            raise ConfigError(fld, exc.message) from None
        if path is not None:
            out.setdefault(reg.plural, {})[name] = path
    return out


def resolve_method(
    name: Any,
    entry: Any,
    *,
    base: Mapping[str, Any],
    trials: int,
    periods: int,
    data_checks: dict[str, tuple[Bounds, tuple[int, ...]]] | None,
) -> MethodPlan:
    """Validate one ``methods.<name>`` entry and resolve it into a plan.

    ``data_checks`` caches the data/model check per distinct run spec (None: no data check).
    """
    from raytune_periodic.config.sections import METHOD_RE, safe_name
    from raytune_periodic.tuning.methods import build_method, method_class

    fld = f"methods.{name}"
    safe_name(name, fld, METHOD_RE)
    entry = mapping(entry, fld)
    if "base" in entry:  # the method trains a variant of base (e.g. another model option)
        mapping(entry["base"], f"{fld}.base", "a mapping (a partial run spec)")
    spec = method_base(base, entry)
    parsed = parse_spec(spec, f"{fld}.base" if "base" in entry else "base")
    bounds = shape = None
    if data_checks is not None:
        key = repr(sorted(spec.items()))
        if key not in data_checks:
            where = f"{fld}.base" if "base" in entry else "base"
            data_checks[key] = check_data_and_model(parsed, where)
        bounds, shape = data_checks[key]
    cls = method_class(name, entry)
    cls.check(name, entry, trials, periods, bounds)
    cls.check_base(name, entry, spec, shape)
    ctrl = entry.get("controller")
    if isinstance(ctrl, dict):
        anchor_agent_checkpoint(ctrl, fld)
        if bounds is not None:
            _check_controller(ctrl, bounds, f"{fld}.controller")
    method = build_method(name, entry, trials)
    plugins = plugins_of(parsed, method.controller() if isinstance(ctrl, dict) else None)
    search_path = _method_plugin(entry)
    if search_path:
        plugins.setdefault("methods", {})[str(entry["search"])] = search_path
    return MethodPlan(str(name), entry, method, spec, bounds, plugins)


def _check_controller(ctrl: dict[str, Any], bounds: Bounds, fld: str) -> None:
    """Build and bind the controller once (a plugin's exception becomes one line)."""
    try:
        built = build_controller(ctrl, field=fld)
        built.bind(bounds, field=fld)
        built.close()
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(fld, f"{type(exc).__name__}: {_first_line(exc)}") from None


def _method_plugin(entry: Mapping[str, Any]) -> str | None:
    from raytune_periodic.tuning.methods import METHODS

    search = entry.get("search")
    return METHODS.plugin_path(search) if isinstance(search, str) else None
