"""Garbage collection in a beat process that holds many entries.

A replica with 10 000 entries holds some hundreds of thousands of long-lived objects
(entries, schedules, message templates), none of them garbage. CPython's cycle collector
still walks them all in each full collection, and publishing 10 000 slots a second promotes
enough short-lived objects (queued slots, claims) to start one every second or so: measured,
about a fifth of the process's CPU time went to the collector.

So once start-up is done, :func:`settle_heap` moves the objects alive then to the permanent
generation (``gc.freeze``: they are no longer walked; they are still freed by reference
counting, only a reference cycle among them is kept until exit) and raises the young
generation's threshold, so that short-lived objects are mostly freed by reference counting
before a collection looks at them. Only a scheduler that a beat service runs (``celery
beat``, or the beat of ``celery worker -B``) does it, once per process: not one that a test
or an application runs itself, whose process may live on long after it. A collector switched
off (a young threshold of 0) stays off. ``fork_scheduler_freeze_heap = False`` leaves the
collector as Python configured it.
"""

from __future__ import annotations

import gc

#: Container allocations (less deallocations) between two young collections, at least.
YOUNG_THRESHOLD = 20_000
#: Young collections between two middle-generation ones, and those between two full ones,
#: at least.
OLDER_THRESHOLD = 20

_settled: list[bool] = []


def settle_heap() -> None:
    """Keep the objects alive now out of the collector's walks, and collect less often
    (thresholds are only raised, never lowered). Only the first call in a process acts."""
    if _settled:
        return
    _settled.append(True)
    gc.freeze()
    young, middle, old = gc.get_threshold()
    if young == 0:  # automatic collection is off: it stays off
        return
    gc.set_threshold(
        max(young, YOUNG_THRESHOLD), max(middle, OLDER_THRESHOLD), max(old, OLDER_THRESHOLD)
    )
