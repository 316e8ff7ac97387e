"""Entries another replica owns, set aside while that owner keeps up (see :mod:`.ownership`).

A replica that does not own an entry would otherwise handle each of its slots twice: when the
slot comes (deferred to the owner's grace), then after the grace (the owner's progress record
checked, the next slot queued). When the owner keeps up (its record is trusted and no more than
a grace old), the entry's chain item is **parked** under its owner instead, from the slot that
comes (the first burst after start-up included) or once the owner's record covers a slot: no
heap push, no wake-up, nothing per slot. Each
tick checks each owner once. An owner whose record falls a grace behind may only be busy (its
record is written after its tick): its entries are released once the earliest of their slots
after what its record was trusted for is a grace old, from that slot on, so a dead owner still
costs a grace, never a slot.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import replace
from datetime import datetime

from .timequeue import QueueItem


class ParkedChains:
    """Chain items of other replicas' entries, by owner, then by entry name."""

    def __init__(self) -> None:
        self._by_owner: dict[str, dict[str, QueueItem]] = {}
        #: Per owner, its items by wake-up time (lazily: replaced or forgotten ones are skipped).
        self._heaps: dict[str, list[tuple[float, int, str]]] = {}
        self._counter = itertools.count()
        #: Per owner, the latest ``until`` of its record trusted under this replica's view.
        self._trusted: dict[str, datetime] = {}
        #: Per owner, before when none of its entries needs a look (the earliest slot after
        #: what it was trusted for, plus the grace), once computed.
        self._hold: dict[str, float] = {}

    def __len__(self) -> int:
        return sum(len(items) for items in self._by_owner.values())

    def park(self, owner: str, item: QueueItem, trusted: datetime) -> None:
        """Set ``item`` (an entry's next chain item) aside while ``owner`` keeps up; its
        record says it asked about its slots up to ``trusted``."""
        self._by_owner.setdefault(owner, {})[item.entry.name] = item
        heapq.heappush(
            self._heaps.setdefault(owner, []), (item.when, next(self._counter), item.entry.name)
        )
        self.trust(owner, trusted)

    def trust(self, owner: str, until: datetime) -> None:
        """``owner``'s record, trusted, says it asked about its slots up to ``until``: it keeps
        up, so a hold set while it lagged no longer applies (see :meth:`hold`)."""
        self._trusted[owner] = max(until, self._trusted.get(owner, until))
        self._hold.pop(owner, None)

    def owners(self) -> list[str]:
        """The owners with parked entries."""
        return list(self._by_owner)

    def next_look(self, grace: float) -> float | None:
        """When an owner's entries next need a look (epoch seconds): its trusted ``until``
        plus the grace, or later when its earliest slot after that is later."""
        looks = [
            max(self._trusted[owner].timestamp() + grace, self._hold.get(owner, 0.0))
            for owner in self._by_owner
        ]
        return min(looks, default=None)

    def first_due(self, owner: str) -> float | None:
        """The publish instant (epoch seconds) of the earliest slot of ``owner``'s entries
        after what its record was trusted for (``None``: none left). Items whose slot the
        owner covered move on to their next slot."""
        heap, items = self._heaps.get(owner, []), self._by_owner.get(owner, {})
        trusted = self._trusted.get(owner)
        while heap:
            when, _, name = heap[0]
            item = items.get(name)
            if item is None or item.when != when:
                heapq.heappop(heap)  # replaced or forgotten
                continue
            if trusted is None or item.slot > trusted:
                return when
            heapq.heappop(heap)
            slot = item.entry.first_slot_after(trusted)
            if slot is None:
                del items[name]  # the entry has no slot left
                continue
            moved = replace(item, when=item.entry.publish_at(slot).timestamp(), slot=slot)
            items[name] = moved
            heapq.heappush(heap, (moved.when, next(self._counter), name))
        return None

    def hold(self, owner: str, until: float) -> None:
        """None of ``owner``'s entries needs a look before ``until`` (epoch seconds)."""
        self._hold[owner] = until

    def release(self, owner: str) -> tuple[list[QueueItem], datetime | None]:
        """Take ``owner``'s parked items back, with the latest ``until`` trusted from it."""
        items = self._by_owner.pop(owner, {})
        self._heaps.pop(owner, None)
        self._hold.pop(owner, None)
        return list(items.values()), self._trusted.pop(owner, None)

    def forget(self, name: str) -> None:
        """Drop a removed entry's parked item."""
        for items in self._by_owner.values():
            items.pop(name, None)
