"""Entries another replica owns, set aside while that owner keeps up (see :mod:`.ownership`).

A replica that does not own an entry would otherwise handle each of its slots twice: when the
slot comes (deferred to the owner's grace), then after the grace (the owner's progress record
checked, the next slot queued). Once the owner's record covers a slot, the entry's next chain
item is **parked** under its owner instead: no heap push, no wake-up, nothing per slot. Each
tick checks each owner once; an owner that stops keeping up (dead, slow, or under another view)
has its entries' chains released, from the first slot after the last point its record was
trusted up to, so a dead owner still costs a grace, never a slot.
"""

from __future__ import annotations

from datetime import datetime

from .timequeue import QueueItem


class ParkedChains:
    """Chain items of other replicas' entries, by owner, then by entry name."""

    def __init__(self) -> None:
        self._by_owner: dict[str, dict[str, QueueItem]] = {}
        #: Per owner, the latest ``until`` of its record trusted under this replica's view.
        self._trusted: dict[str, datetime] = {}

    def __len__(self) -> int:
        return sum(len(items) for items in self._by_owner.values())

    def park(self, owner: str, item: QueueItem, trusted: datetime) -> None:
        """Set ``item`` (an entry's next chain item) aside while ``owner`` keeps up; its
        record says it asked about its slots up to ``trusted``."""
        self._by_owner.setdefault(owner, {})[item.entry.name] = item
        self.trust(owner, trusted)

    def trust(self, owner: str, until: datetime) -> None:
        """``owner``'s record, trusted, says it asked about its slots up to ``until``."""
        self._trusted[owner] = max(until, self._trusted.get(owner, until))

    def earliest_trusted(self) -> datetime | None:
        """The oldest ``until`` trusted from an owner with parked entries: that owner's
        entries are released once it is a grace old."""
        return min((self._trusted[owner] for owner in self._by_owner), default=None)

    def owners(self) -> list[str]:
        """The owners with parked entries."""
        return list(self._by_owner)

    def release(self, owner: str) -> tuple[list[QueueItem], datetime | None]:
        """Take ``owner``'s parked items back, with the latest ``until`` trusted from it."""
        items = self._by_owner.pop(owner, {})
        return list(items.values()), self._trusted.pop(owner, None)

    def forget(self, name: str) -> None:
        """Drop a removed entry's parked item."""
        for items in self._by_owner.values():
            items.pop(name, None)
