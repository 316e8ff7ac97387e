"""What an outage of the claim backend cost: the summary a replica logs, stores and signals once
Redis answers again (``schedule history --outages``, :data:`.signals.outage_ended`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .ids import slot_isoformat

#: How many outage summaries Redis keeps (newest first).
KEPT_OUTAGES = 100
#: How many entry names one summary lists (the count says how many there were).
LISTED_ENTRIES = 20


@dataclass(frozen=True)
class Outage:
    """The slots one replica reported ``redis_unavailable`` between ``started`` and ``ended``."""

    replica: str
    started: datetime
    ended: datetime
    slots: int
    entry_count: int
    #: The first :data:`LISTED_ENTRIES` entries that missed slots, by name.
    entries: tuple[str, ...]
    reason: str = "redis_unavailable"

    def summary(self) -> str:
        """The line the replica logs: ``N slots of M entries missed between A and B: reason``."""
        return (
            f"{self.slots} slots of {self.entry_count} entries missed between "
            f"{slot_isoformat(self.started)} and {slot_isoformat(self.ended)}: {self.reason}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape stored in Redis and printed by ``schedule history --outages --json``."""
        return {
            "replica": self.replica,
            "started": slot_isoformat(self.started),
            "ended": slot_isoformat(self.ended),
            "slots": self.slots,
            "entry_count": self.entry_count,
            "entries": list(self.entries),
            "reason": self.reason,
        }

    def encode(self) -> str:
        """The stored form."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def decode(cls, raw: bytes | str) -> Outage | None:
        """A stored summary, or ``None`` when it is not one (a foreign or damaged item)."""
        try:
            data = json.loads(raw)
            return cls(
                replica=str(data["replica"]),
                started=datetime.fromisoformat(data["started"]),
                ended=datetime.fromisoformat(data["ended"]),
                slots=int(data["slots"]),
                entry_count=int(data["entry_count"]),
                entries=tuple(str(name) for name in data["entries"]),
                reason=str(data.get("reason", "redis_unavailable")),
            )
        except (ValueError, TypeError, KeyError):
            return None
