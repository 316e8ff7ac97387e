"""The per-replica queue of next slots: a heap keyed by wake-up time.

Items of entries that were changed or removed are dropped lazily when they surface, so a
change costs O(log n) and a tick never scans idle entries.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from datetime import datetime

from .entry import Entry


@dataclass(order=True, slots=True)
class QueueItem:
    """Wake up at ``when`` (epoch seconds) for ``slot`` of ``entry``.

    A *chain* item carries the earliest slot of its entry not yet handled; handling it pushes
    the entry's next chain item. A *retry* item asks again about one slot only; a *takeover*
    retry asks about a slot known to be claimed already, so it never makes a new claim.
    """

    when: float
    seq: int
    entry: Entry = field(compare=False)
    slot: datetime = field(compare=False)
    retry: bool = field(compare=False, default=False)
    takeover: bool = field(compare=False, default=False)


class TimeQueue:
    """A min-heap of :class:`QueueItem` by wake-up time."""

    def __init__(self) -> None:
        self._heap: list[QueueItem] = []
        self._counter = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(
        self,
        when: float,
        entry: Entry,
        slot: datetime,
        *,
        retry: bool = False,
        takeover: bool = False,
    ) -> None:
        """Queue a wake-up at ``when`` for ``slot`` of ``entry``."""
        item = QueueItem(when, next(self._counter), entry, slot, retry or takeover, takeover)
        heapq.heappush(self._heap, item)

    def pop_due(self, now: float) -> list[QueueItem]:
        """Remove and return every item whose wake-up time is ``<= now``."""
        due = []
        heap = self._heap
        while heap and heap[0].when <= now:
            due.append(heapq.heappop(heap))
        return due

    def next_wakeup(self) -> float | None:
        """The earliest wake-up time, or ``None`` when the queue is empty."""
        return self._heap[0].when if self._heap else None
