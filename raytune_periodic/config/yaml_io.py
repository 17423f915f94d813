"""Reading experiment YAML strictly, and ``--set key.path=value`` overrides.

Refused with a one-line ``ConfigError`` (never a traceback, never the file's content echoed):
a missing file, non-UTF-8 bytes, invalid YAML (with its line), duplicate keys, anchors/aliases
nested deeper than ``MAX_DEPTH``, a file over ``MAX_BYTES``, and a top level that is not a
mapping.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from raytune_periodic.errors import ConfigError

MAX_BYTES = 4 * 1024 * 1024  #: an experiment file is a few KiB; refuse anything absurd
MAX_DEPTH = 32  #: nesting deeper than this is not a config (and guards the recursion below)


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys (PyYAML keeps the last silently)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # ``<<: *anchor``: merged keys may be overridden, that is its purpose
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key: let PyYAML report it
            break
        if duplicate:
            line = key_node.start_mark.line + 1
            raise ConfigError("config", f"duplicate key {str(key)[:40]!r} at line {line}")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _depth(obj: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(obj, dict):
        return max([_depth(v, level + 1) for v in obj.values()], default=level)
    if isinstance(obj, list):
        return max([_depth(v, level + 1) for v in obj], default=level)
    return level


def parse_yaml(text: str, where: str) -> Any:
    """Strict YAML → Python (duplicate keys and pathological nesting refused)."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        raise ConfigError("config", f"{where} is not valid YAML{at}") from None
    except RecursionError:
        raise ConfigError("config", f"{where} is nested too deeply") from None
    if _depth(data) > MAX_DEPTH:
        raise ConfigError("config", f"{where} is nested deeper than {MAX_DEPTH} levels")
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping of an experiment file (see the module doc for what is refused)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("config", f"file {str(p)!r} does not exist")
    if p.stat().st_size > MAX_BYTES:
        raise ConfigError("config", f"{p.name} is larger than {MAX_BYTES // 1024} KiB")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("config", f"{p.name} is not UTF-8 text (byte {exc.start})") from None
    data = parse_yaml(text, p.name)
    if not isinstance(data, dict):
        raise ConfigError("config", f"{p.name} must hold a mapping at the top level")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to a config mapping."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError("--set", f"expected key.path=value, got {item!r}")
        path, _, text = item.partition("=")
        keys = [k for k in path.strip().split(".") if k]
        if not keys:
            raise ConfigError("--set", f"empty key in {item!r}")
        try:
            value = parse_yaml(text, f"--set {path}")
        except ConfigError:
            raise ConfigError(f"--set {path}", f"value is not valid YAML: {text!r}") from None
        node = data
        for k in keys[:-1]:
            if not isinstance(node.get(k, {}), dict):
                raise ConfigError(f"--set {path}", f"{k!r} is not a mapping")
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return data
