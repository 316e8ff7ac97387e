"""The claim backend interface: how a replica wins the right to publish one slot.

The scheduler loop only talks to this interface; the in-process backend (single replica) and
the Redis backend (any number of replicas) implement it, and one contract test suite runs
against both.
"""

from __future__ import annotations

import enum
import os
import secrets
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..outages import Outage
    from ..store import RuntimeStore
    from ..store_shards import ShardedStore

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class ClaimOutcome(enum.Enum):
    """What a claim of one (entry, slot) came to."""

    #: This replica holds the claim: publish now.
    WON = "won"
    #: Another replica claimed the slot, then failed to publish within its lease: publish now.
    TAKEN_OVER = "taken_over"
    #: Another replica holds or already published this slot (or a later one).
    CLAIMED = "claimed"
    #: Another replica claimed the slot and has not published it yet: ask again after
    #: ``retry_after``.
    PENDING = "pending"
    #: The slot is still in the future by the backend's clock; ask again after ``retry_after``.
    EARLY = "early"
    #: Skipped: the entry is paused.
    PAUSED = "paused"
    #: Skipped: the slot falls on one of the entry's exclusion dates (``exclude``, ``calendar``).
    EXCLUDED = "excluded"
    #: Skipped: the runtime entry was removed (this replica had not seen it yet).
    REMOVED = "removed"
    #: Skipped: the runtime entry was disabled (this replica had not read it yet). Nothing is
    #: recorded.
    DISABLED = "disabled"
    #: Skipped: a slot of a runtime entry's earlier definition, after the entry was changed
    #: (this replica had not read the change yet; it reads it at once). Nothing is recorded.
    CHANGED = "changed"
    #: Skipped: the previous run of a singleton entry is still executing.
    BUSY = "busy"
    #: Held back (overlap ``buffer_one``, or queued by ``buffer_all``): published as soon as
    #: the running one (and, for ``buffer_all``, every run queued before it) ends.
    BUFFERED = "buffered"
    #: Skipped: the queue of a ``buffer_all`` entry is full (``fork_scheduler_buffer_limit``).
    BUFFER_FULL = "buffer_full"
    #: ``buffer_all``: the slot was queued (or refused, queue full) while no run held the
    #: marker (its runner died): the head of the queue now holds it and must be published
    #: (``ClaimResult.held``; ``ClaimResult.reason`` says what became of the slot).
    RELEASED = "released"
    #: Skipped: the entry has used up its ``max_runs``.
    FINISHED = "finished"
    #: Another replica began publishing the slot and never confirmed it (it stopped or died
    #: mid-publish): the message may be at the broker already, so it is not published again.
    IN_FLIGHT = "in_flight"
    #: Skipped: due before Redis restarted, and not decided in the data it came back with (or
    #: another replica's claim of it came back): it may have been published before the restart
    #: (Redis may have come back from an older snapshot), so it is not published again.
    UNKNOWN = "unknown"
    #: Claimed and published in one step (see :meth:`PublishesOnce.claim_and_send`): sent.
    SENT = "sent"
    #: Claimed in one step, and a broker command raised after the message may have reached
    #: the broker: recorded as sent, never published again; see ``error``.
    UNCERTAIN = "uncertain"
    #: The backend answered this one claim with an error (e.g. a corrupted stored value); the
    #: other claims of the batch are not affected. Nothing is published; see ``error``.
    ERROR = "error"

    @property
    def publish(self) -> bool:
        """True when this replica must publish the slot."""
        return self in (ClaimOutcome.WON, ClaimOutcome.TAKEN_OVER)


@dataclass(frozen=True, slots=True)
class Claim:
    """A request to publish occurrence ``slot`` of ``entry`` with task id ``task_id``."""

    entry: str
    slot: datetime
    task_id: str
    #: The entry's overlap policy: ``"allow"``, ``"skip"``, ``"buffer_one"``, ``"buffer_all"``,
    #: ``"cancel_other"`` or ``"terminate_other"``.
    overlap: str = "allow"
    #: The entry's ``max_runs`` (0: no limit).
    max_runs: int = 0
    #: For ``buffer_one`` / ``buffer_all``: the JSON message to hold back while a run executes.
    held_message: str = ""
    #: Ask only to take over (or renew) an existing claim, never to make a new one: the slot
    #: was seen claimed before, so if Redis no longer knows it, it lost its state.
    takeover: bool = False
    #: The latest slot of the entry this replica saw claimed (us); written back if Redis lost
    #: the entry's state, so that a restarted-empty Redis cannot let an old slot be won again.
    known_mark_us: int = 0
    #: True for a runtime entry: its claim is refused once the entry was removed (a replica
    #: may not have seen the removal yet). A static entry of the same name is not affected.
    runtime: bool = False
    #: For a runtime entry: the version of its definition this replica read (0: unknown). A
    #: slot after a later change, within :data:`.lua.CHANGE_FENCE_US` of it, is refused
    #: (``changed``): it belongs to a definition that no longer holds, and winning it would
    #: raise the mark past the slots the change promised.
    definition: int = 0
    #: True when the slot falls on an exclusion date: the claim records it skipped
    #: (``excluded``) instead of winning it; it counts no run and takes no running marker.
    excluded: bool = False
    #: The slot's jitter offset (us): it is asked about at slot + offset, the instant the
    #: claim's restart rule judges (a slot due before Redis's start, published after it, was
    #: never published before it).
    offset_us: int = 0

    @property
    def slot_us(self) -> int:
        """The slot as whole microseconds since the Unix epoch (the form stored in Redis)."""
        return to_epoch_us(self.slot)


@dataclass(frozen=True, slots=True)
class HighWaterMark:
    """The latest claimed slot of an entry, and whether it was published.

    ``unsent``: every slot claimed and never recorded as sent (fenced ones included), oldest
    first. ``finished``: the entry used up its ``max_runs`` (recorded once by the backend).
    ``own_fenced``: those of ``unsent`` that the asking replica itself fenced (it published
    them, or lost the fence's answer and asks again on its own: see
    :meth:`.Scheduler._take_over_unsent`).
    """

    slot: datetime
    sent: bool = True
    unsent: tuple[datetime, ...] = ()
    finished: bool = False
    own_fenced: tuple[datetime, ...] = ()


@dataclass(frozen=True, slots=True)
class Restart:
    """When the store of the claims last started (at the latest): it may have come back from
    data older than the marks its replicas had written (a snapshot, or an append-only file
    that lost its last writes)."""

    at: datetime


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """The outcome of one :class:`Claim`; ``retry_after`` is in seconds, for PENDING and EARLY;
    ``error`` is the backend's error text, for ERROR and UNCERTAIN."""

    claim: Claim
    outcome: ClaimOutcome
    retry_after: float = 0.0
    error: str = ""
    #: For RELEASED: the JSON message of the queued run to publish now, and what became of
    #: the claimed slot itself (``"buffered"`` or ``"buffer_full"``).
    held: str = ""
    reason: str = ""
    #: For WON (overlap ``buffer_one``): the JSON message of the held-back run this slot
    #: superseded (no run held the marker), to report as skipped ``superseded``; else "".
    superseded: str = ""
    #: For RELEASED: the JSON messages of queued runs dropped before the head, to report as
    #: skipped ``unknown`` (queued before Redis's start: maybe released and sent since).
    dropped: tuple[str, ...] = ()


class ClaimBackend(Protocol):
    """Where claims, high-water marks and send records live."""

    #: ``hostname:pid:token`` of this replica, recorded with each claim.
    replica_id: str

    def describe(self) -> str:
        """A one-line description for the startup banner (no password)."""

    @property
    def protects_replicas(self) -> bool:
        """True when several replicas may safely run against this backend."""

    def last_restart(self) -> Restart | None:
        """When the store last started, or ``None`` when that bounds nothing (it is this
        process's own, or its start cannot be read: a cluster)."""

    def high_water_marks(self, entries: Sequence[str]) -> Mapping[str, HighWaterMark]:
        """Return the latest claimed slot of each entry that has one (an entry whose stored
        state cannot be read is left out, with an error logged)."""

    def claim(self, claims: Sequence[Claim]) -> list[ClaimResult]:
        """Try to claim every slot, in one round trip; results in the order of ``claims``.

        Raises :class:`~celery_fork_scheduler.errors.BackendUnavailableError` when the backend
        cannot be reached after the configured retries: nothing is claimed then.
        """

    def begin_publish(self, claims: Sequence[Claim]) -> list[bool]:
        """Fence won claims just before publishing them, in one round trip.

        True for each claim this replica still holds: from then on no replica takes it over.
        False where another replica took it over meanwhile (this replica stalled past the
        lease), or where the backend answered that claim with an error (logged): that one
        must not be published. Raises
        :class:`~celery_fork_scheduler.errors.BackendUnavailableError` like :meth:`claim`.
        """

    def end_fence(self, claims: Sequence[Claim]) -> None:
        """Lift the fence of claims whose messages certainly did not leave (refused by the
        broker): the slots may be published again, by this replica or, after the lease, by
        another. Raises :class:`~celery_fork_scheduler.errors.BackendUnavailableError` like
        :meth:`claim`."""

    def mark_sent(self, claims: Sequence[Claim], outcome: str = "sent") -> None:
        """Record that these won claims were published (state ``claimed`` -> ``sent``).

        ``outcome="uncertain"``: the publish raised after it may have reached the broker; the
        claims are closed the same way (never published again), with that history outcome.
        """

    def mark_skipped(self, claims: Sequence[Claim], reason: str) -> None:
        """Give back won claims that will not be published (their runs do not count)."""

    def record_failure(self, claim: Claim, error: BaseException) -> None:
        """Count a publish that raised, in the entry's counters and history, and drop its
        pending claim (nobody publishes that slot); the state becomes ``failed`` at the mark."""

    def take_cap_places(self, claims: Sequence[Claim], cap: int) -> list[bool]:
        """Reserve places under the cluster-wide cap for the runs of ``claims``.

        Returns, for each claim in order, whether its run may be published. A run that holds
        a place already keeps it, wherever it stands in ``claims``.
        """

    def record_outage(self, outage: Outage) -> None:
        """Keep the summary of an outage this replica just came through (the local backend,
        with nobody else to tell, keeps none)."""

    def server_time(self) -> datetime:
        """The backend's clock (Redis ``TIME``); this host's clock for the local backend."""

    def runtime_store(self) -> RuntimeStore | ShardedStore | None:
        """Where runtime entries and pause state live (``None``: static entries only)."""

    def sync(self) -> None:
        """Persist whatever is kept in memory (a no-op for backends that store at once)."""

    def close(self) -> None:
        """Release connections and files this backend opened."""


@runtime_checkable
class PublishesOnce(Protocol):
    """A backend that can fence, publish and record a slot in one step, when the broker is a
    Kombu Redis transport on its own Redis (the Redis backend, outside Redis Cluster)."""

    def shares_redis_with(self, broker_client: Any) -> bool:
        """True when ``broker_client`` reaches this backend's Redis server and database."""

    def publish_once(
        self, claims: Sequence[Claim], commands: Sequence[Sequence[tuple[str, tuple[Any, ...]]]]
    ) -> list[Any]:
        """Per claim: 1 published now, 2 published before, 0 not this replica's, or the error."""

    def claim_and_send(
        self,
        claims: Sequence[Claim],
        sends: Sequence[Sequence[tuple[str, tuple[Any, ...]]] | None],
    ) -> list[ClaimResult]:
        """Claim each slot; one with broker commands in ``sends`` that is won anew is published
        and recorded in the same step (outcome ``sent``)."""


def to_epoch_us(instant: datetime) -> int:
    """Whole microseconds since the Unix epoch of an aware datetime."""
    delta = instant - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_epoch_us(value: int) -> datetime:
    """The aware UTC datetime of a count of microseconds since the Unix epoch."""
    return EPOCH + timedelta(microseconds=value)


#: This process's token, with the pid it was drawn in (a forked child draws its own).
_process_token: tuple[int, str] | None = None


def replica_identity() -> str:
    """``hostname:pid:token``: readable, and unique even for two PID-1 containers on one host.

    The same for every backend of one process (beat's banner builds a scheduler of its own:
    it shows the id the replica then uses); several replicas in one process (tests, the
    simulator) set distinct ids themselves.
    """
    global _process_token
    pid = os.getpid()
    if _process_token is None or _process_token[0] != pid:
        _process_token = (pid, secrets.token_hex(3))
    return f"{socket.gethostname()}:{pid}:{_process_token[1]}"
