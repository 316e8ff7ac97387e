"""Known bugs re-introduced on purpose, to prove the simulator finds them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

DESCRIPTIONS: dict[str, str] = {}


@contextlib.contextmanager
def applied(name: str | None) -> Iterator[None]:
    """Apply mutation ``name`` for the duration of the block (none: do nothing)."""
    if name is None:
        yield
        return
    raise SystemExit(f"unknown mutation {name!r}; known: {', '.join(DESCRIPTIONS)}")
