"""Registries: names → builders, one style for models, datasets, regularizers, controllers,
rewards and search methods. An unknown name is a one-line error listing the valid names.

Three ways a name resolves, in order:

1. **Registered** with ``REG.add(name, obj)`` / ``@REG.register(name)``; ``obj`` may be an import
   path ``"package.module:attr"`` that is imported on first use (lazy entries, like Ray's
   ``SEARCH_ALG_IMPORT``), so a registry low in the house can name a builder that lives higher up.
2. **An import path** given as the name itself: ``{name: "mypkg.nets:build_unet"}`` in YAML.
3. **An entry point** of group ``raytune_periodic.<plural>`` (e.g. ``raytune_periodic.models``)
   in an installed distribution's metadata.

Plugins (anything outside this package) must reach Ray's trial workers, which import this
package afresh: ``plugin_paths`` says which import paths a config uses, so the runner can ship
them (``runtime_env``) and the trial can re-register names that were added in the driver only.
``build(name, options, field)`` checks options against the builder's signature for every kind.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from typing import Any, Generic, TypeVar

from raytune_periodic.errors import ConfigError

T = TypeVar("T")
PACKAGE = "raytune_periodic"
ENTRY_POINT_PREFIX = "raytune_periodic."
_ALL: dict[str, Registry[Any]] = {}


def is_import_path(name: object) -> bool:
    """``"package.module:attr"`` (a colon, dotted identifiers on both sides)."""
    if not isinstance(name, str) or name.count(":") != 1:
        return False
    module, attr = name.split(":")
    parts = [*module.split("."), *attr.split(".")]
    return all(p.isidentifier() for p in parts)


def import_object(path: str, field: str) -> Any:
    """The object at ``"package.module:attr"``; a one-line ConfigError if it cannot be imported."""
    module_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(field, f"cannot import {module_name!r} ({exc})") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(field, f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def import_path_of(obj: Any) -> str | None:
    """``"module:qualname"`` of a class or function importable by that path, else None."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qualname or "<locals>" in qualname:
        return None
    return f"{module}:{qualname}"


class Registry(Generic[T]):
    """Names → entries (builders, classes or entry records) of one extension point.

    ``wrap`` turns a plain object found by import path or entry point into this registry's entry
    type (e.g. a bare model builder into a ``ModelEntry``); ``unwrap`` gives the callable of an
    entry whose signature ``build`` checks options against.
    """

    def __init__(
        self,
        kind: str,
        plural: str | None = None,
        *,
        wrap: Callable[[Any], T] | None = None,
        unwrap: Callable[[T], Callable[..., Any]] | None = None,
    ) -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self.group = ENTRY_POINT_PREFIX + self.plural
        self._wrap = wrap or (lambda obj: obj)
        self._unwrap = unwrap or (lambda entry: entry)  # type: ignore[assignment,return-value]
        self._items: dict[str, Any] = {}  # name -> entry, or an import path not yet imported
        self._paths: dict[str, str] = {}  # name -> import path, for entries outside the package
        self._entry_points: dict[str, Any] | None = None
        _ALL[self.plural] = self

    # ------------------------------------------------------------------ registration
    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj

        return deco

    def add(self, name: str, obj: T | str) -> None:
        """Register ``obj`` (or a lazy import path) under ``name``; twice is an error."""
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._items[name] = obj
        path = obj if isinstance(obj, str) else import_path_of(getattr(obj, "builder", obj))
        if path and not path.startswith(PACKAGE + ".") and not path.startswith(PACKAGE + ":"):
            self._paths[name] = path

    def remove(self, name: str) -> None:
        """Forget ``name`` (tests and notebooks that re-register)."""
        self._items.pop(name, None)
        self._paths.pop(name, None)

    # ------------------------------------------------------------------ lookup
    def get(self, name: str, field: str = "") -> T:
        """The entry of ``name``: registered, an import path, or an entry point."""
        field = field or self.kind
        if not isinstance(name, str) or not name:
            raise ConfigError(field, f"expected a {self.kind} name, got {name!r}")
        if name in self._items:
            entry = self._items[name]
            if isinstance(entry, str):  # lazy: import once, keep the object
                entry = self._items[name] = self._wrap(import_object(entry, field))
            return entry  # type: ignore[no-any-return]
        if is_import_path(name):
            return self._wrap(import_object(name, field))
        ep = self._load_entry_points().get(name)
        if ep is not None:
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin install: say which distribution
                raise ConfigError(
                    field, f"entry point {name!r} ({ep.value}) failed: {exc}"
                ) from None
            self._items[name] = self._wrap(obj)
            self._paths[name] = ep.value
            return self._items[name]  # type: ignore[no-any-return]
        raise ConfigError(
            field,
            f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())} "
            f"(or an import path 'package.module:name')",
        )

    def _load_entry_points(self) -> dict[str, Any]:
        if self._entry_points is None:
            found = metadata.entry_points(group=self.group)
            self._entry_points = {ep.name: ep for ep in found}
        return self._entry_points

    def names(self) -> list[str]:
        """Registered names and installed entry points."""
        return sorted(set(self._items) | set(self._load_entry_points()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._items or name in self._load_entry_points())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    # ------------------------------------------------------------------ plugins
    def plugin_path(self, name: str) -> str | None:
        """The import path a Ray worker needs to resolve ``name``; None for in-package names.

        A name registered in the driver only (``REG.add`` in a script or notebook) is resolved
        in workers through this path. One defined in ``__main__`` or inside a function has no
        importable path: a one-line error says how to make it reach the workers.
        """
        if is_import_path(name):
            return name
        self.get(name)
        path = self._paths.get(name)
        if path is not None and not isinstance(self._items.get(name), str):
            obj = self._items[name]
            if import_path_of(getattr(obj, "builder", obj)) is None or path.startswith("__main__"):
                raise ConfigError(
                    self.kind,
                    f"{self.kind} {name!r} is defined in {path.split(':')[0] or 'a function'}: "
                    f"Ray workers cannot import it; move it into a module of your own package "
                    f"and name it by import path ('mypkg.module:name') or an entry point",
                )
        return path

    # ------------------------------------------------------------------ building
    def build(
        self,
        name: str,
        options: Mapping[str, Any] | None = None,
        field: str = "",
        *args: Any,
        defaults: Mapping[str, Any] | None = None,
    ) -> Any:
        """Call the builder of ``name`` with positional ``args`` and keyword ``options``.

        Unknown options are a one-line ConfigError at ``{field}.{option}`` listing the valid
        ones; ``defaults`` fill parameters the builder accepts and ``options`` leaves out.
        """
        field = field or self.kind
        builder = self._unwrap(self.get(name, field=f"{field}"))
        opts = dict(options or {})
        valid = builder_options(builder, skip=len(args))
        if valid is not None:
            for key in opts:
                if key not in valid:
                    raise ConfigError(
                        f"{field}.{key}",
                        f"unknown option {key!r} for {self.kind} {name!r}; "
                        f"valid: {', '.join(valid) or '(none)'}",
                    )
        for key, value in (defaults or {}).items():
            if (valid is None or key in valid) and key not in opts:
                opts[key] = value
        return builder(*args, **opts)

    def options(self, name: str, field: str = "", skip: int = 0) -> dict[str, Any]:
        """The options ``name``'s builder accepts, with their defaults."""
        builder = self._unwrap(self.get(name, field=field))
        params = _parameters(builder)[skip:]
        return {p.name: p.default for p in params if p.kind is not p.VAR_KEYWORD}


def _parameters(builder: Callable[..., Any]) -> list[inspect.Parameter]:
    params = list(inspect.signature(builder).parameters.values())
    return [p for p in params if p.name != "self" and p.kind is not p.VAR_POSITIONAL]


def builder_options(builder: Callable[..., Any], skip: int = 0) -> list[str] | None:
    """Keyword options of ``builder`` after ``skip`` positional ones; None if it takes **kwargs."""
    params = _parameters(builder)
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params[skip:]]


def registries() -> dict[str, Registry[Any]]:
    """Every registry created so far, by plural name (``models``, ``controllers``, ...)."""
    return dict(_ALL)


def install_plugins(plugins: Mapping[str, Mapping[str, str]]) -> None:
    """Re-register in this process (a Ray worker) names the driver registered by hand.

    ``plugins`` maps a registry's plural name to ``{name: import path}`` (``plugin_paths``).
    """
    for plural, names in plugins.items():
        reg = _ALL.get(plural)
        if reg is None:
            continue
        for name, path in names.items():
            if name not in reg._items and not is_import_path(name):
                reg.add(name, path)
