"""How a replica tells what became of each slot: Celery signals for code, logs for operators.

Every due slot ends, on each replica, in exactly one of ``entry_dispatched``, ``entry_skipped``
or ``entry_failed`` (see :mod:`.signals`). Skip reasons an operator must act on are logged at
WARNING, at most once a minute per reason; the others at DEBUG.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from . import signals
from .due import DueSlot
from .entry import Entry
from .ids import slot_isoformat, task_id_for

logger = logging.getLogger("celery_fork_scheduler")

#: Skip reasons an operator must see: logged at WARNING (rate-limited), the others at DEBUG.
WARNED_SKIPS = frozenset(
    {
        "capped",
        "redis_unavailable",
        "behind",
        "in_flight",
        "unknown",
        "error",
        "broker_unavailable",
        "superseded",
    }
)
#: At most one such warning per reason in this many seconds.
WARNING_INTERVAL = 60.0


class SlotReports:
    """The signals (``sender``: the scheduler) and log lines of one replica."""

    def __init__(
        self,
        sender: object,
        replica_id: Callable[[], str],
        monotonic: Callable[[], float],
    ) -> None:
        self.sender = sender
        self.replica_id = replica_id
        self.monotonic = monotonic
        self._warned_at: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def due(self, due_slot: DueSlot) -> None:
        """A slot is due on this replica, before it is claimed."""
        signals.entry_due.send(
            sender=self.sender, entry=due_slot.entry.name, slot=due_slot.claim.slot
        )

    def dispatched(self, due_slot: DueSlot) -> None:
        """This replica published the slot."""
        entry, claim = due_slot.entry, due_slot.claim
        if logger.isEnabledFor(logging.INFO):  # a burst sends thousands: no text made for none
            logger.info(
                "fork scheduler: sent %s (%s) slot %s id %s",
                entry.name,
                entry.task,
                slot_isoformat(claim.slot),
                claim.task_id,
            )
        if signals.entry_dispatched.receivers:
            signals.entry_dispatched.send(
                sender=self.sender,
                entry=entry.name,
                slot=claim.slot,
                task_id=claim.task_id,
                replica=self.replica_id(),
            )

    def skipped(self, due_slot: DueSlot, reason: str) -> None:
        """This replica does not publish the slot, for ``reason`` (a skip reason)."""
        self.skipped_slot(due_slot.entry.name, due_slot.claim.slot, reason)

    def skipped_slot(self, entry: str, slot: datetime, reason: str) -> None:
        """:meth:`skipped`, by entry name and slot."""
        if reason in WARNED_SKIPS:
            self.warn_rate_limited(reason, f"{entry} slot {slot_isoformat(slot)} skipped: {reason}")
        elif logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "fork scheduler: %s slot %s skipped: %s", entry, slot_isoformat(slot), reason
            )
        signals.entry_skipped.send(sender=self.sender, entry=entry, slot=slot, reason=reason)

    def failed(self, entry: Entry, slot: datetime, error: Exception, doing: str) -> None:
        """An error about one slot of ``entry`` while ``doing`` it (``entry_failed``)."""
        logger.error(
            "fork scheduler: %s %s (%s) for slot %s failed: %r",
            doing,
            entry.name,
            entry.task,
            slot_isoformat(slot),
            error,
        )
        signals.entry_failed.send(
            sender=self.sender,
            entry=entry.name,
            slot=slot,
            task_id=task_id_for(entry.name, slot),
            exception=error,
        )

    def warn_rate_limited(self, key: str, message: str) -> None:
        """A WARNING at most every :data:`WARNING_INTERVAL` seconds per key, counting the rest."""
        now = self.monotonic()
        last = self._warned_at.get(key)
        if last is not None and now - last < WARNING_INTERVAL:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._warned_at[key] = now
        suppressed = self._suppressed.pop(key, 0)
        more = f" ({suppressed} more like it since the last warning)" if suppressed else ""
        logger.warning("fork scheduler: %s%s", message, more)
