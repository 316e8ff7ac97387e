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
    or an object name -> entry (as ``beat_schedule``). JSON; YAML for ``.yaml``/``.yml``."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise BadInputError(f"--file: cannot read {path}: {reason}") from None
    decoded = _yaml(path, text) if path.lower().endswith(YAML_SUFFIXES) else _json(path, text)
    if isinstance(decoded, dict):
        return [
            {**entry, "name": name} if isinstance(entry, dict) else entry
            for name, entry in decoded.items()
        ]
    if isinstance(decoded, list):
        return decoded
    raise BadInputError(
        f"--file: {path} must hold a list of entries or an object name -> entry, "
        f"not {type(decoded).__name__}"
    )


def _json(path: str, text: str) -> Any:
    try:
        return json.loads(text)
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
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        raise BadInputError(f"--file: {path} is not valid YAML{at}: {exc}") from None
    except RecursionError:
        raise BadInputError(f"--file: {path}: YAML nested too deeply") from None
