"""Deterministic identifiers: the task id and header values of one occurrence (entry, slot)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

#: Namespace of every task id this package makes; fixed forever, so ids stay stable across versions.
TASK_ID_NAMESPACE = uuid.UUID("6f1c2a4e-4b7d-5c1e-9a52-3d0f5b8e7c21")

#: Message header carrying the entry name.
ENTRY_HEADER = "fork_scheduler_entry"
#: Message header carrying the nominal fire time (ISO-8601, UTC).
SLOT_HEADER = "fork_scheduler_slot"
#: Message header of jittered runs: the instant the slot was due to be published (the slot
#: plus its jitter offset; ISO-8601, UTC).
PUBLISH_AT_HEADER = "fork_scheduler_publish_at"
#: Message header of singleton runs: the entry's overlap policy ("skip" or "buffer_one").
OVERLAP_HEADER = "fork_scheduler_overlap"
#: Message header of runs holding a place under ``fork_scheduler_max_concurrent``.
CAPPED_HEADER = "fork_scheduler_capped"
#: Message header of runs whose entry is paused when the run fails for good.
PAUSE_ON_FAILURE_HEADER = "fork_scheduler_pause_on_failure"


def slot_isoformat(slot: datetime) -> str:
    """Return the canonical ISO-8601 UTC form of a slot, e.g. ``2026-11-27T14:00:00+00:00``."""
    return slot.astimezone(timezone.utc).isoformat()


def task_id_for(entry: str, slot: datetime) -> str:
    """Return the task id of occurrence ``slot`` of ``entry``: the same on every replica."""
    return str(uuid.uuid5(TASK_ID_NAMESPACE, f"{entry}@{slot_isoformat(slot)}"))
