"""The Redis claim backend: any number of replicas, each slot published exactly once.

Key layout and scripts: :mod:`.lua`. Claims for a burst of due entries go in one pipeline of
``EVALSHA`` calls (one round trip per batch). Connection errors are retried
``fork_scheduler_max_retries`` times ``fork_scheduler_retry_delay`` apart, then raised as
:class:`~celery_fork_scheduler.errors.BackendUnavailableError` so the tick publishes nothing.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import redis

from ..config import Settings
from ..errors import BackendUnavailableError
from . import lua
from .base import Claim, ClaimOutcome, ClaimResult, from_epoch_us
from .redis_connection import client_from_url, mask_url

T = TypeVar("T")

#: A slot may be claimed this early by Redis TIME (clocks of replicas and Redis differ a little).
EARLY_TOLERANCE = timedelta(milliseconds=500)
#: Pending-claim records expire after this long without a new claim of the entry.
PENDING_TTL = timedelta(days=7)
#: Errors that mean "Redis cannot be reached right now".
CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError)


class RedisBackend:
    """Claims, high-water marks and send records in Redis."""

    protects_replicas = True

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        *,
        display_url: str = "redis",
        sleep: Callable[[float], None] = time.sleep,
        owns_client: bool = False,
    ) -> None:
        self.client = client
        self.settings = settings
        self.prefix = settings.key_prefix
        self.replica_id = f"{socket.gethostname()}:{os.getpid()}"
        self.display_url = display_url
        self._sleep = sleep
        self._owns_client = owns_client
        self._claim_script = client.register_script(lua.CLAIM)
        self._mark_sent_script = client.register_script(lua.MARK_SENT)
        self._lease_us = _us(settings.claim_lease)
        self._tolerance_us = _us(EARLY_TOLERANCE)
        self._pending_ttl_ms = _us(PENDING_TTL) // 1000

    @classmethod
    def from_url(
        cls, url: str, settings: Settings, transport_options: Mapping[str, Any] | None = None
    ) -> RedisBackend:
        """A backend with its own client for ``url`` (closed by :meth:`close`)."""
        client = client_from_url(url, settings.redis_options, transport_options)
        return cls(client, settings, display_url=mask_url(url), owns_client=True)

    def describe(self) -> str:
        """The startup banner line (password masked)."""
        return f"redis {self.display_url} (prefix {self.prefix!r}, replica {self.replica_id})"

    # -- keys -------------------------------------------------------------------------------

    def state_key(self, entry: str) -> str:
        """The state hash of ``entry``."""
        return f"{self.prefix}{{{entry}}}:state"

    def pending_key(self, entry: str) -> str:
        """The hash of claimed, not yet published slots of ``entry``."""
        return f"{self.prefix}{{{entry}}}:pending"

    # -- operations -------------------------------------------------------------------------

    def high_water_marks(self, entries: Sequence[str]) -> dict[str, datetime]:
        """The latest claimed slot of each entry that has one (one round trip)."""

        def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for entry in entries:
                pipe.hget(self.state_key(entry), "hwm")
            return pipe.execute()

        values = self._retrying(read) if entries else []
        return {
            entry: from_epoch_us(int(value))
            for entry, value in zip(entries, values, strict=True)
            if value is not None
        }

    def claim(self, claims: Sequence[Claim]) -> list[ClaimResult]:
        """Claim every slot in one pipeline; see :data:`.lua.CLAIM`."""
        if not claims:
            return []

        def run() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for claim in claims:
                self._claim_script(
                    keys=[self.state_key(claim.entry), self.pending_key(claim.entry)],
                    args=[
                        claim.slot_us,
                        claim.task_id,
                        self.replica_id,
                        self._tolerance_us,
                        self._lease_us,
                        self._pending_ttl_ms,
                    ],
                    client=pipe,
                )
            return pipe.execute()

        replies = self._retrying(run)
        return [
            ClaimResult(claim, ClaimOutcome(_text(reply[0])), int(reply[1]) / 1_000_000)
            for claim, reply in zip(claims, replies, strict=True)
        ]

    def mark_sent(self, claims: Sequence[Claim]) -> None:
        """Move published slots from ``claimed`` to ``sent`` (one round trip)."""
        if not claims:
            return

        def run() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for claim in claims:
                self._mark_sent_script(
                    keys=[self.state_key(claim.entry), self.pending_key(claim.entry)],
                    args=[claim.slot_us],
                    client=pipe,
                )
            return pipe.execute()

        self._retrying(run)

    def sync(self) -> None:
        """Nothing is kept in memory: every write goes to Redis at once."""

    def close(self) -> None:
        """Close the client if this backend created it."""
        if self._owns_client:
            self.client.close()

    # -- retries ----------------------------------------------------------------------------

    def _retrying(self, operation: Callable[[], T]) -> T:
        attempts = self.settings.max_retries + 1
        delay = self.settings.retry_delay.total_seconds()
        for attempt in range(attempts):
            try:
                return operation()
            except CONNECTION_ERRORS as exc:
                if attempt + 1 == attempts:
                    raise BackendUnavailableError(
                        f"Redis {self.display_url} unreachable after {attempts} attempts: "
                        f"{type(exc).__name__}"
                    ) from None
                self._sleep(delay)
        raise AssertionError("unreachable")


def _us(delta: timedelta) -> int:
    return int(delta.total_seconds() * 1_000_000)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
