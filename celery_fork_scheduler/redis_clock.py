"""Schedule on Redis's clock: this host's clock plus an offset measured against Redis ``TIME``.

A replica whose clock is off (or jumps) then computes the same due slots as the others, and
the claim script still refuses a slot that is early by Redis ``TIME``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from .backends import ClaimBackend
from .errors import BackendUnavailableError

logger = logging.getLogger("celery_fork_scheduler")

#: Clock differences with Redis below this are noise, not skew.
CLOCK_TOLERANCE = timedelta(milliseconds=250)


class RedisClock:
    """The current instant on Redis's clock, as one replica sees it."""

    def __init__(
        self,
        clock: Callable[[], datetime],
        monotonic: Callable[[], float],
        backend: Callable[[], ClaimBackend],
        *,
        follow: bool,
    ) -> None:
        """``follow=False`` (an injected test clock) never measures: the offset stays zero."""
        self.clock = clock
        self.monotonic = monotonic
        self._backend = backend
        self.follows = follow
        self.offset = timedelta(0)
        #: (wall, monotonic) at the last look, to notice a stepped host clock.
        self._last_clocks: tuple[float, float] | None = None

    def now(self) -> datetime:
        """This host's clock plus the measured offset."""
        return self.clock() + self.offset

    def follow(self) -> bool:
        """Measure this host's clock against Redis ``TIME`` (a no-op without Redis); whether it
        was measured. A measurement is the new base against which :meth:`watch_for_steps`
        looks for a step."""
        backend = self._backend()
        if not self.follows or not backend.protects_replicas:
            return False
        try:
            before = self.clock()
            server = backend.server_time()
            after = self.clock()
        except BackendUnavailableError:
            return False
        round_trip = after - before
        offset = server - (before + round_trip / 2)
        if round_trip > CLOCK_TOLERANCE and abs(offset - self.offset) < round_trip:
            # A slow answer (a paused or busy Redis) cannot tell this change from noise; nor
            # can one across a step of this host's clock, which the next look then sees.
            return False
        self._last_clocks = (after.timestamp(), self.monotonic())
        if abs(offset) < CLOCK_TOLERANCE:
            offset = timedelta(0)
        if abs(offset - self.offset) >= CLOCK_TOLERANCE and offset:
            logger.warning(
                "fork scheduler: this host's clock is %+.3f s off Redis TIME; scheduling on "
                "Redis's clock",
                -offset.total_seconds(),
            )
        self.offset = offset
        return True

    def watch_for_steps(self) -> None:
        """Measure again at once when this host's clock stepped since the last look (or the
        last measurement).

        A step (NTP, a VM resumed, an operator) shows as a change of wall time that monotonic
        time does not share; the due slots are then computed on the corrected clock. When
        Redis cannot be asked, the offset takes the step back (Redis's clock did not step), so
        that nothing is decided on the stepped clock meanwhile (simulator seed 40110: a step
        during a slow refresh, then a tick's catch-up skipped a slot it took for 14 minutes
        old, and the entry's chain ended at its ``end_at``).
        """
        wall, steady = self.clock().timestamp(), self.monotonic()
        if self._last_clocks is not None:
            step = (wall - self._last_clocks[0]) - (steady - self._last_clocks[1])
            if (
                abs(step) >= CLOCK_TOLERANCE.total_seconds()
                and not self.follow()
                and self.follows
                and self._backend().protects_replicas
            ):
                self.offset -= timedelta(seconds=step)
        self._last_clocks = (wall, steady)
