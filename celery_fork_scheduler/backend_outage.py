"""Fail closed while the claim backend is away: publish nothing, report each due slot once,
and sum the outage up once the backend answers again (:class:`.outages.Outage`)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from datetime import datetime

from . import signals
from .backends import ClaimBackend
from .due import DueSlot
from .errors import BackendUnavailableError
from .outages import LISTED_ENTRIES, Outage
from .reports import SlotReports

logger = logging.getLogger("celery_fork_scheduler")


class BackendOutage:
    """The current outage of one replica's claim backend, if any."""

    def __init__(
        self,
        reports: SlotReports,
        backend: Callable[[], ClaimBackend],
        now: Callable[[], datetime],
    ) -> None:
        self.reports = reports
        self._backend = backend
        self._now = now
        self.active = False
        #: Per entry, the latest slot reported skipped during the outage: each slot is
        #: reported once, and the record stays as small as the number of entries.
        self.reported_entries: dict[str, datetime] = {}
        self._missed = 0
        #: When the current outage began (``None`` when there is none).
        self.started: datetime | None = None

    def begin(self, exc: Exception, now: datetime) -> None:
        """The backend could not be reached: said once per outage."""
        if self.active:
            return
        logger.error(
            "fork scheduler: claim backend unavailable, publishing nothing until it is back: %s",
            exc,
        )
        self.active = True
        self.started = now

    def miss(self, due_slot: DueSlot) -> None:
        """Report a due slot not published for want of the backend (once per outage)."""
        if self.reported(due_slot):
            return
        self.reported_entries[due_slot.entry.name] = due_slot.claim.slot
        self._missed += 1
        self.reports.skipped(due_slot, "redis_unavailable")

    def reported(self, due_slot: DueSlot) -> bool:
        """True when this slot was reported skipped (``redis_unavailable``) already."""
        reported = self.reported_entries.get(due_slot.entry.name)
        return reported is not None and due_slot.claim.slot <= reported

    def end(self) -> None:
        """The backend answered: say so, and sum up what the outage cost."""
        if not self.active:
            return
        logger.warning("fork scheduler: claim backend reachable again, publishing resumes")
        if self._missed:
            self._sum_up()
        self.active = False
        self.reported_entries.clear()
        self._missed = 0
        self.started = None

    def _sum_up(self) -> None:
        """Log, keep in Redis and signal (``outage_ended``) what the outage cost."""
        backend = self._backend()
        ended = self._now()
        outage = Outage(
            replica=backend.replica_id,
            started=self.started or ended,
            ended=ended,
            slots=self._missed,
            entry_count=len(self.reported_entries),
            entries=tuple(itertools.islice(self.reported_entries, LISTED_ENTRIES)),
        )
        logger.warning("fork scheduler: %s", outage.summary())
        try:
            backend.record_outage(outage)
        except BackendUnavailableError as exc:
            logger.warning("fork scheduler: the outage summary was not kept in Redis: %s", exc)
        signals.outage_ended.send(sender=self.reports.sender, outage=outage)
