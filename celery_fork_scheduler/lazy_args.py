"""Celery beat's lazy arguments: the ``BeatLazyFunc`` items of an entry's ``args`` (or values of
its ``kwargs``) are called at each publish, as Celery beat calls them, and their results sent.

An entry that holds one gets a callable ``args`` (or ``kwargs``), so it is *lazy* like an entry
whose ``args`` is itself a callable: evaluated once its slot is won, never templated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery.beat import BeatLazyFunc


class LazyItems:
    """``args`` (a list or tuple) or ``kwargs`` (a mapping) holding ``BeatLazyFunc`` items;
    calling it gives them with each such item replaced by what it returns."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __call__(self) -> Any:
        if isinstance(self.value, Mapping):
            return {key: _evaluated(item) for key, item in self.value.items()}
        return [_evaluated(item) for item in self.value]

    def __repr__(self) -> str:
        return f"LazyItems({self.value!r})"


def with_lazy_items(value: Any) -> Any:
    """``value`` (an entry's ``args`` or ``kwargs``) as given, or a :class:`LazyItems` when it
    holds ``BeatLazyFunc`` items."""
    items = value.values() if isinstance(value, Mapping) else value
    if isinstance(value, (list, tuple, Mapping)) and any(
        isinstance(item, BeatLazyFunc) for item in items
    ):
        return LazyItems(value)
    return value


def shown(value: Any) -> Any:
    """An entry's ``args`` or ``kwargs`` as listings show them: a :class:`LazyItems` with each
    ``BeatLazyFunc`` item as ``"<BeatLazyFunc name>"`` (called only at a publish), another
    callable as empty (``default``)."""
    if isinstance(value, LazyItems):
        if isinstance(value.value, Mapping):
            return {key: _shown_item(item) for key, item in value.value.items()}
        return [_shown_item(item) for item in value.value]
    return value


def _shown_item(item: Any) -> Any:
    if not isinstance(item, BeatLazyFunc):
        return item
    func = getattr(item, "_func", None)
    return f"<BeatLazyFunc {getattr(func, '__qualname__', None) or func!r}>"


def _evaluated(item: Any) -> Any:
    return item() if isinstance(item, BeatLazyFunc) else item
