"""Publishing a run that was held back in Redis (overlap ``buffer_one`` and ``buffer_all``).

A held run is published by whoever hands it the entry's running marker: the worker that ends
the running run (the RELEASE script), or the beat replica whose claim found the marker expired
with runs still queued (``buffer_all``, the CLAIM outcome ``released``).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, replace
from typing import Any

import redis

from .backends import lua
from .backends.base import to_epoch_us
from .backends.redis_connection import scrub_secrets
from .config import Settings
from .ids import CAPPED_HEADER
from .keys import Keys
from .publishing import CeleryPublisher, Occurrence, is_transient, occurrence_from_json

logger = logging.getLogger("celery_fork_scheduler.worker")

#: Stored error texts are cut to this many characters.
ERROR_TEXT_LIMIT = 2000


class HeldNotSent(Exception):
    """A held run handed over was not sent, and certainly did not leave: Redis failed before
    its publish (confirming the hand-over, taking its place under the cap). It still holds
    the marker: whoever was handed it may try again (the error is the ``__cause__``)."""


def error_text(error: BaseException | None) -> str:
    """An error as stored in history: its type and message, credentials masked, cut short."""
    return scrub_secrets(f"{type(error).__name__}: {error}")[:ERROR_TEXT_LIMIT]


@dataclass(frozen=True, kw_only=True)
class HeldRuns:
    """Publishes held runs of ``app`` with the Redis ``client`` of the scheduler's keys."""

    app: Any
    client: Any
    keys: Keys
    settings: Settings
    #: A run whose failed publish cannot be recorded (Redis away) raises
    #: :class:`HeldNotSent`, for the caller to put it back later (beat, round 67); else the
    #: Redis error (a worker's end settles it its own way).
    keep_unrecorded: bool = False

    @property
    def _lease_ms(self) -> int:
        return int(self.settings.singleton_lease.total_seconds() * 1000)

    def publish(self, held: bytes | str) -> None:
        """Publish a held run (it holds the marker already), with a place under the cap. Over
        the cap it is skipped (``capped``); when its publish fails the marker is freed at once
        and the run recorded as failed (a message that certainly did not leave is held back
        again: at the head of a ``buffer_all`` queue)."""
        ready = self._prepared(held, occurrence_from_json(held))
        if ready is not None:
            self._send(held, ready)

    def _prepared(self, held: bytes | str, occurrence: Occurrence) -> Occurrence | None:
        """The held run ready to be sent (with its place under the cap), or ``None`` when it
        was put back or skipped (and recorded so). :class:`HeldNotSent` when Redis failed
        first."""
        cap = self.settings.max_concurrent
        try:
            confirmed = self.confirmed()
            granted = None
            if confirmed and cap > 0:
                granted = self.client.eval(
                    lua.TAKE_CAP_PLACES,
                    1,
                    self.keys.cap,
                    cap,
                    self._lease_ms * 1000,
                    occurrence.task_id,
                )
        except Exception as exc:
            raise HeldNotSent(f"{occurrence.entry} slot {occurrence.slot.isoformat()}") from exc
        if not confirmed:
            # The hand-over lives on the master only: a failover may undo it, and the slot
            # would be handed over (and published) again. Put it back; whoever releases the
            # entry's marker next sends it, on either side of a failover.
            self.give_back(held, occurrence, "unconfirmed")
            logger.warning(
                "fork scheduler: held-back run of %s slot %s put back: the hand-over was not "
                "confirmed by %d Redis replica(s)",
                occurrence.entry,
                occurrence.slot.isoformat(),
                self.settings.wait_replicas,
            )
            return None
        if granted is not None:
            if not int(granted[0]):
                self.give_back(held, occurrence, "capped")
                logger.warning(
                    "fork scheduler: held-back run of %s slot %s skipped: cap reached",
                    occurrence.entry,
                    occurrence.slot.isoformat(),
                )
                return None
            occurrence = replace(occurrence, headers={**occurrence.headers, CAPPED_HEADER: True})
        return occurrence

    def _send(self, held: bytes | str, occurrence: Occurrence) -> None:
        """Publish the prepared held run; a publish that fails frees the marker and is
        recorded (``failed``, or ``uncertain`` when the message may have left)."""
        try:
            CeleryPublisher(self.app, lambda: None).publish(occurrence)
        except Exception as exc:
            if occurrence.headers.get(CAPPED_HEADER):
                self.client.zrem(self.keys.cap, occurrence.task_id)
            mode = "uncertain" if is_transient(exc) else "failed"
            try:
                self.give_back(held, occurrence, mode, error=error_text(exc))
            except redis.RedisError as lost:  # neither recorded nor put back
                if mode == "failed" and self.keep_unrecorded:  # (an uncertain one may have
                    slot = occurrence.slot.isoformat()  # left: never sent again)
                    raise HeldNotSent(f"{occurrence.entry} slot {slot}") from lost
                raise
            logger.warning(
                "fork scheduler: could not send the held-back run of %s slot %s (%s): %s",
                occurrence.entry,
                occurrence.slot.isoformat(),
                mode,
                exc,
            )
            return
        logger.info(
            "fork scheduler: sent held-back run of %s slot %s id %s",
            occurrence.entry,
            occurrence.slot.isoformat(),
            occurrence.task_id,
        )

    def confirmed(self) -> bool:
        """With ``fork_scheduler_wait_replicas``, whether that many replicas have the writes
        made so far (the hand-over of the marker); always True without it."""
        wanted = self.settings.wait_replicas
        if wanted <= 0:
            return True
        timeout_ms = int(self.settings.wait_timeout.total_seconds() * 1000)
        return int(self.client.execute_command("WAIT", wanted, timeout_ms)) >= wanted

    def give_back(
        self,
        held: bytes | str,
        occurrence: Occurrence,
        mode: str,
        *,
        error: str = "",
        attempt: str = "",
    ) -> bool:
        """The held run handed the marker is not sent: free the marker, record why.
        ``attempt``: an id of this give-back, the same each time it is asked again (a request
        whose reply was lost is then applied once). False when an ``unconfirmed`` put-back
        found the queue moved on (recorded skipped: the caller reports it)."""
        return bool(
            self.client.eval(
                lua.GIVE_BACK_HELD,
                4,
                self.keys.running(occurrence.entry),
                self.keys.buffered(occurrence.entry),
                self.keys.state(occurrence.entry),
                self.keys.history(occurrence.entry),
                held,
                occurrence.task_id,
                to_epoch_us(occurrence.slot),
                socket.gethostname(),
                self.settings.history_size,
                mode,
                error[:500],
                attempt,
            )
        )
