"""Inside a task: which entry and which nominal slot this run is for."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .ids import ENTRY_HEADER, SLOT_HEADER


@dataclass(frozen=True, slots=True)
class ScheduledSlot:
    """The entry name and the nominal fire time (aware UTC) of a scheduled run."""

    entry: str
    slot: datetime


def scheduled_slot(request: Any) -> ScheduledSlot | None:
    """The slot of a run published by this scheduler, from ``task.request``; else ``None``.

    Use it to make a task idempotent per slot::

        @app.task(bind=True)
        def report(self):
            slot = scheduled_slot(self.request)
            if slot is not None:
                write_report_for(slot.slot)
    """
    entry = request.get(ENTRY_HEADER) if hasattr(request, "get") else None
    slot = request.get(SLOT_HEADER) if hasattr(request, "get") else None
    if not entry or not slot:
        return None
    return ScheduledSlot(entry, datetime.fromisoformat(slot))
