"""The per-replica queue of next slots: a heap keyed by wake-up time.

Items of entries that were changed or removed are dropped lazily when they surface, so a
change costs O(log n) and a tick never scans idle entries.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from .entry import Entry

#: Due items popped one by one before the rest of a burst is taken in one pass over the heap.
POPS_BEFORE_PARTITION = 256


@dataclass(slots=True)
class QueueItem:
    """Wake up at ``when`` (epoch seconds) for ``slot`` of ``entry``.

    A *chain* item carries the earliest slot of its entry not yet handled; handling it pushes
    the entry's next chain item. A *retry* item asks again about one slot only; a *takeover*
    retry asks about a slot known to be claimed already, so it never makes a new claim.
    """

    when: float
    entry: Entry
    slot: datetime
    retry: bool = False
    takeover: bool = False


class TimeQueue:
    """A min-heap of :class:`QueueItem` by wake-up time (first queued first among equal
    times)."""

    def __init__(self) -> None:
        #: (wake-up time, sequence number, item): tuples compare in C, a burst pops 10 000.
        self._heap: list[tuple[float, int, QueueItem]] = []
        self._counter = itertools.count()
        #: Items queued to wake up after their slot (retries, catch-up, deferred): how many per
        #: slot (epoch seconds), and those slots in a lazy min-heap.
        self._late: Counter[float] = Counter()
        self._late_slots: list[float] = []

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
        item = QueueItem(when, entry, slot, retry or takeover, takeover)
        heapq.heappush(self._heap, (when, next(self._counter), item))
        at = slot.timestamp()
        if at < when:
            if not self._late[at]:
                heapq.heappush(self._late_slots, at)
            self._late[at] += 1

    def pop_due(self, now: float) -> list[QueueItem]:
        """Remove and return every item whose wake-up time is ``<= now``, earliest first."""
        heap = self._heap
        popped: list[tuple[float, int, QueueItem]] = []
        while heap and heap[0][0] <= now and len(popped) < POPS_BEFORE_PARTITION:
            popped.append(heapq.heappop(heap))
        if heap and heap[0][0] <= now:
            # A burst: one pass and a sort beat thousands of heap pops.
            popped.extend(sorted(queued for queued in heap if queued[0] <= now))
            heap[:] = [queued for queued in heap if queued[0] > now]
            heapq.heapify(heap)
        due = [queued[2] for queued in popped]
        late = self._late
        for item in due:
            at = item.slot.timestamp()
            if at < item.when:
                late[at] -= 1
                if not late[at]:
                    del late[at]
        return due

    def pop_all(self) -> list[QueueItem]:
        """Remove and return every item."""
        return self.pop_due(float("inf"))

    def oldest_late_slot(self) -> float | None:
        """The earliest slot (epoch seconds) of an item queued to wake up after its slot, or
        ``None``: every slot before the next wake-up has been handled."""
        late = self._late_slots
        while late and not self._late[late[0]]:
            heapq.heappop(late)
        return late[0] if late else None

    def next_wakeup(self) -> float | None:
        """The earliest wake-up time, or ``None`` when the queue is empty."""
        return self._heap[0][0] if self._heap else None

    def items(self) -> list[QueueItem]:
        """Every queued item, in no particular order."""
        return [queued[2] for queued in self._heap]
