"""The validation vocabulary: one-line ``ConfigError``s naming the field, for every checker.

``config/``, the method classes and every options dataclass (models, datasets, controllers,
regularizers, surrogate options) check user input with these few functions, so the same mistake
reads the same everywhere and a bool never passes for a number (``True`` is an ``int`` in Python,
and YAML turns ``yes`` into ``True``). Core module: standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from raytune_periodic.errors import ConfigError

_NUMBER_TYPES = (int, float)


def _numpy_kind(value: Any) -> str:
    """The dtype kind of a numpy scalar (``i``, ``u``, ``f``, ...), else ``""``."""
    if type(value).__module__ != "numpy" or not hasattr(value, "dtype"):
        return ""
    return str(value.dtype.kind)


def is_number(value: Any) -> bool:
    """A real int or float (numpy scalars included), never a bool."""
    if isinstance(value, bool):
        return False
    if isinstance(value, _NUMBER_TYPES):
        return True
    return _numpy_kind(value) in ("i", "u", "f")


def is_integer(value: Any) -> bool:
    """A real int (numpy integers included), never a bool."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return _numpy_kind(value) in ("i", "u")


def integer(value: Any, field: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]`` (either bound optional)."""
    if not is_integer(value):
        raise ConfigError(field, f"expected an integer, got {_show(value)}")
    value = int(value)
    if low is not None and value < low:
        raise ConfigError(field, f"must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ConfigError(field, f"must be <= {high}, got {value}")
    return value


def number(
    value: Any,
    field: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite float in the interval (closed unless ``*_open``)."""
    if not is_number(value) or not math.isfinite(float(value)):
        raise ConfigError(field, f"expected a finite number, got {_show(value)}")
    value = float(value)
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(field, f"must be {'>' if low_open else '>='} {low:g}, got {value:g}")
    if high is not None and (value >= high if high_open else value > high):
        raise ConfigError(field, f"must be {'<' if high_open else '<='} {high:g}, got {value:g}")
    return value


def fraction(value: Any, field: str, *, allow_one: bool = True) -> float:
    """A number in ``[0, 1]`` (``[0, 1)`` without ``allow_one``)."""
    return number(value, field, 0.0, 1.0, high_open=not allow_one)


def boolean(value: Any, field: str) -> bool:
    """A real boolean: ``true``/``false`` in YAML. The string ``"false"`` is refused."""
    if not isinstance(value, bool):
        raise ConfigError(field, f"expected true or false, got {_show(value)}")
    return value


def string(value: Any, field: str, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ConfigError(field, f"expected a string, got {_show(value)}")
    if not empty and not value:
        raise ConfigError(field, "must not be empty")
    return value


def mapping(value: Any, field: str, what: str = "a mapping") -> dict[str, Any]:
    """A mapping with string keys (a copy)."""
    if not isinstance(value, Mapping):
        raise ConfigError(field, f"expected {what}, got {_show(value)}")
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(field, f"keys must be strings, got {_show(key)}")
    return dict(value)


def sequence(value: Any, field: str, what: str = "a list") -> list[Any]:
    if not isinstance(value, list | tuple):
        raise ConfigError(field, f"expected {what}, got {_show(value)}")
    return list(value)


def known_keys(section: Mapping[str, Any], allowed: Iterable[str], field: str) -> None:
    """Every key of ``section`` is in ``allowed``; else name the first unknown one."""
    allowed = set(allowed)
    for key in section:
        if key not in allowed:
            where = f"{field}.{key}" if field else str(key)
            raise ConfigError(where, f"unknown key; valid: {', '.join(sorted(allowed))}")


def bounded_range(
    value: Any, field: str, bounds: tuple[float, float] | None = None
) -> tuple[float, float]:
    """``[low, high]`` with ``low <= high``, inside ``bounds`` when given."""
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ConfigError(field, f"expected [low, high], got {_show(value)}")
    low, high = (number(v, field) for v in value)
    if low > high:
        raise ConfigError(field, f"low must be <= high, got [{low:g}, {high:g}]")
    if bounds is not None and (low < bounds[0] or high > bounds[1]):
        raise ConfigError(
            field, f"range [{low:g}, {high:g}] outside valid [{bounds[0]:g}, {bounds[1]:g}]"
        )
    return low, high


def choice(value: Any, field: str, valid: Iterable[str]) -> str:
    valid = list(valid)
    if value not in valid:
        raise ConfigError(field, f"unknown {_show(value)}; valid: {', '.join(map(str, valid))}")
    return str(value)


def _show(value: Any) -> str:
    """A short, safe rendering of a bad value (never a whole file's content)."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}" if not isinstance(value, str | bool) else text


__all__ = [
    "boolean",
    "bounded_range",
    "choice",
    "fraction",
    "integer",
    "is_integer",
    "is_number",
    "known_keys",
    "mapping",
    "number",
    "sequence",
    "string",
]
