"""Reading the entries of ``schedule add --file``: JSON, or YAML when PyYAML is installed."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

from .session import BadInputError

#: Names an ``add --file`` line shows (the rest are counted).
SHOWN_NAMES = 10
YAML_SUFFIXES = (".yaml", ".yml")


def read_entries(path: str) -> list[Any]:
    """The definitions of a file (``-``: stdin): a list of entries, each with its ``name``,
    or an object name -> entry (as ``beat_schedule``). JSON; YAML for ``.yaml``/``.yml``.

    A key given twice in one object (JSON and YAML parsers keep the last silently) is refused,
    naming the entry and the field; in the object form an entry carries no ``name`` of its own
    (``beat_schedule`` refuses it too)."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise BadInputError(f"--file: cannot read {path}: {reason}") from None
    decoded = _yaml(path, text) if path.lower().endswith(YAML_SUFFIXES) else _json(path, text)
    if isinstance(decoded, dict):
        _refuse_repeated(path, decoded, None)
        for name, entry in decoded.items():
            if isinstance(entry, dict) and "name" in entry:
                raise BadInputError(
                    f"--file: {path}: entry {name!r}, field 'name': not an entry key in the "
                    "object form (the entry's name is its key)"
                )
        return [
            {**entry, "name": name} if isinstance(entry, dict) else entry
            for name, entry in decoded.items()
        ]
    if isinstance(decoded, list):
        for index, entry in enumerate(decoded):
            if isinstance(entry, dict):
                name = entry.get("name")
                _refuse_repeated(path, entry, name if isinstance(name, str) else f"#{index + 1}")
        return decoded
    raise BadInputError(
        f"--file: {path} must hold a list of entries or an object name -> entry, "
        f"not {type(decoded).__name__}"
    )


class _Keyed(dict[Any, Any]):
    """An object as the file gives it: its keys, and those given more than once."""

    repeated: tuple[Any, ...] = ()


def _keyed(pairs: list[tuple[Any, Any]]) -> _Keyed:
    mapping = _Keyed(pairs)
    if len(mapping) < len(pairs):
        mapping.repeated = _repeated([key for key, _ in pairs])
    return mapping


def _repeated(keys: list[Any]) -> tuple[Any, ...]:
    """The keys given again after their first time, in order."""
    seen: set[Any] = set()
    repeated = []
    for key in keys:
        if key in seen:
            repeated.append(key)
        seen.add(key)
    return tuple(repeated)


def _refuse_repeated(path: str, mapping: dict[Any, Any], entry: str | None) -> None:
    """Refuse a key given twice in ``mapping`` (the file's top object when ``entry`` is
    ``None``, else that entry's definition) or in any object inside it."""
    repeated = getattr(mapping, "repeated", ())
    if repeated and entry is None:
        raise BadInputError(
            f"--file: {path}: entry {repeated[0]!r}, field 'name': is given more than once"
        )
    if repeated:
        raise BadInputError(
            f"--file: {path}: entry {entry!r}, field {repeated[0]!r}: is given more than once"
        )
    for key, value in mapping.items():
        inside = entry if entry is not None else key
        for nested in _objects_in(value):
            deeper = getattr(nested, "repeated", ())
            if deeper:
                where = f"field {key!r}" if entry is not None else "its definition"
                raise BadInputError(
                    f"--file: {path}: entry {inside!r}, {where}: key {deeper[0]!r} is given "
                    "more than once"
                )


def _objects_in(value: Any) -> list[dict[Any, Any]]:
    """Every object in ``value`` (itself included), depth first."""
    found: list[dict[Any, Any]] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _json(path: str, text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_keyed)
    except ValueError as exc:
        raise BadInputError(f"--file: {path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadInputError(f"--file: {path}: JSON nested too deeply") from None


def _yaml(path: str, text: str) -> Any:
    try:
        yaml: Any = importlib.import_module("yaml")  # optional: no stubs required
    except ImportError:
        raise BadInputError(
            f"--file: {path} is YAML, which needs PyYAML (pip install pyyaml); "
            "or give the entries as JSON"
        ) from None
    try:
        return yaml.load(text, Loader=_loader(yaml))  # a SafeLoader (see _loader)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        raise BadInputError(f"--file: {path} is not valid YAML{at}: {exc}") from None
    except RecursionError:
        raise BadInputError(f"--file: {path}: YAML nested too deeply") from None


def _loader(yaml: Any) -> Any:
    """PyYAML's ``SafeLoader``, keeping the keys an object gives twice (see :class:`_Keyed`),
    and reading ``10:30`` as text: YAML 1.1 makes it the base-60 number 630, which as a
    ``schedule`` would be an interval of 630 seconds (YAML 1.2 dropped that rule)."""

    class Loader(yaml.SafeLoader):  # type: ignore[misc]
        pass

    def mapping(loader: Any, node: Any) -> _Keyed:
        # Only the keys the object writes itself count as repeated: one overriding a key a
        # merge (``<<: *defaults``) brought is YAML's way to share fields (round 67).
        own = [
            loader.construct_object(key, deep=True)
            for key, _ in node.value
            if key.tag != "tag:yaml.org,2002:merge"
        ]
        loader.flatten_mapping(node)
        mapping = _Keyed(loader.construct_pairs(node, deep=True))
        mapping.repeated = _repeated(own)
        return mapping

    def number(loader: Any, node: Any) -> Any:
        text = loader.construct_scalar(node)
        if ":" in text:
            return text
        return (yaml.SafeLoader.construct_yaml_int if node.tag.endswith(":int") else
                yaml.SafeLoader.construct_yaml_float)(loader, node)  # fmt: skip

    Loader.add_constructor("tag:yaml.org,2002:map", mapping)
    Loader.add_constructor("tag:yaml.org,2002:int", number)
    Loader.add_constructor("tag:yaml.org,2002:float", number)
    return Loader
