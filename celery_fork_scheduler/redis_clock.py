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

    def follow(self) -> None:
        """Measure this host's clock against Redis ``TIME`` (a no-op without Redis)."""
        backend = self._backend()
        if not self.follows or not backend.protects_replicas:
            return
        try:
            before = self.clock()
            server = backend.server_time()
            after = self.clock()
        except BackendUnavailableError:
            return
        round_trip = after - before
        offset = server - (before + round_trip / 2)
        if round_trip > CLOCK_TOLERANCE and abs(offset - self.offset) < round_trip:
            return  # a slow answer (a paused or busy Redis) cannot tell this change from noise
        if abs(offset) < CLOCK_TOLERANCE:
            offset = timedelta(0)
        if abs(offset - self.offset) >= CLOCK_TOLERANCE and offset:
            logger.warning(
                "fork scheduler: this host's clock is %+.3f s off Redis TIME; scheduling on "
                "Redis's clock",
                -offset.total_seconds(),
            )
        self.offset = offset

    def watch_for_steps(self) -> None:
        """Measure again at once when this host's clock stepped since the last look.

        A step (NTP, a VM resumed, an operator) shows as a change of wall time that monotonic
        time does not share; the due slots are then computed on the corrected clock.
        """
        wall, steady = self.clock().timestamp(), self.monotonic()
        if self._last_clocks is not None:
            step = (wall - self._last_clocks[0]) - (steady - self._last_clocks[1])
            if abs(step) >= CLOCK_TOLERANCE.total_seconds():
                self.follow()
        self._last_clocks = (wall, steady)
