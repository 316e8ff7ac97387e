"""Fence, publish, record: how a won slot becomes at most one message, and is recorded.

The order is the guarantee (see ``docs/guarantees.md``):

1. **prepare** — build each message and make sure the broker can be reached. A failure here
   costs nothing: the claim is given back (a message that can never be built) or asked for
   again (a broker that cannot be reached yet).
2. **fence** — :meth:`~.backends.base.ClaimBackend.begin_publish`: from here no other replica
   takes the claims over; a claim taken over while this replica stalled is not published.
3. **publish** — one broker round trip per batch. A message that may have left is never sent
   again (``uncertain``, reported ``in_flight``); only one that certainly did not leave, for
   want of the broker, is fenced off again and asked for a second later.
4. **record** — :meth:`~.backends.base.ClaimBackend.mark_sent`; kept in memory and tried
   again at each tick while Redis is away.

A normal stop (SIGTERM, SIGINT) that arrives between the claim request and the record waits
for the record: the scheduler claims and calls :meth:`PublishPipeline.send` inside
:func:`.shutdown.stop_signals_deferred`.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from .backends import Claim, ClaimBackend
from .backends.base import PublishesOnce
from .config import Settings
from .due import DueSlot
from .entry import Entry
from .errors import BackendUnavailableError
from .ids import task_id_for
from .lane import Lane
from .publishing import DeliveryUncertain, Occurrence, Publisher, build_occurrence, is_transient
from .reports import SlotReports
from .timequeue import TimeQueue

#: Messages per broker round trip (Kombu's Producer.batch); staleness is checked between them.
PUBLISH_BATCH = 100
#: How long to wait before asking a backend (or broker) that could not be reached again.
BACKEND_RETRY_SECONDS = 1.0
#: Only entries due within this long of their noting get their message template ahead of
#: time (a later first slot builds it then: once per process).
WARM_HORIZON = timedelta(minutes=10)
#: The broker commands :data:`.lua.PUBLISH_ONCE` runs (what Kombu's Redis ``_put`` issues).
ONCE_COMMANDS = frozenset({"lpush", "pexpire"})
#: The overlap policies whose new claims can be published in the claim's own step (the others
#: hold runs back or replace runs: decided by the claim, published after it).
ONE_STEP_OVERLAPS = frozenset({"allow", "skip"})

logger = logging.getLogger("celery_fork_scheduler")

Prepared = tuple[DueSlot, Occurrence]
#: The broker commands of one message: ``[(name, (key, argument)), ...]``.
Commands = list[tuple[str, tuple[Any, ...]]]
T = TypeVar("T")


@dataclass
class StartedBatch:
    """A prepared batch: the slots its one-step publish script runs for (``once``, with the
    script's ``replies`` to come), and those that take the fence path (``rest``)."""

    rest: list[Prepared]
    once: list[DueSlot] = field(default_factory=list)
    #: The broker commands of each ``once`` slot.
    commands: list[Any] = field(default_factory=list)
    replies: Future[list[Any]] | None = None


class PublishPipeline:
    """The won slots of one replica, from its claims to the broker and back to Redis."""

    def __init__(
        self,
        backend: Callable[[], ClaimBackend],
        publisher: Publisher,
        settings: Settings,
        reports: SlotReports,
        queue: TimeQueue,
        monotonic: Callable[[], float],
    ) -> None:
        """``backend`` gives the claim backend (created on first use by the scheduler);
        slots to ask about again go back to ``queue``."""
        self._backend = backend
        self.publisher = publisher
        self.settings = settings
        self.reports = reports
        self.queue = queue
        self.monotonic = monotonic
        #: Published claims not yet recorded, each with its outcome ("sent", "uncertain").
        self.unmarked: list[tuple[Claim, str]] = []
        #: One-step publishes whose answer was lost (Redis went away): run again first.
        self.unsettled: list[tuple[DueSlot, Any]] = []
        #: Entries whose message template is still to be made (see :meth:`warm`).
        self._cold: deque[Entry] = deque()
        #: The publisher last asked whether the broker shares the claims' Redis, and the answer.
        self._shared_with: tuple[Publisher, bool] | None = None
        #: Slots this replica took over from one that did not publish them (each at least a
        #: lease old then): a broker that refuses them is asked again for longer.
        self._taken_over: set[tuple[str, datetime]] = set()
        #: Where the claim and publish scripts run beside this replica's Python work.
        self.lane = Lane()

    def note_taken_over(self, claims: Iterable[Claim], now: datetime) -> None:
        """Slots won from a replica that did not publish them (see :meth:`_worth_retrying`);
        those past any retry window are forgotten."""
        oldest = now - self._takeover_window
        self._taken_over = {key for key in self._taken_over if key[1] >= oldest}
        self._taken_over.update((claim.entry, claim.slot) for claim in claims)

    @property
    def _takeover_window(self) -> timedelta:
        return self.settings.claim_lease + 2 * self.settings.catchup_grace

    @property
    def backend(self) -> ClaimBackend:
        """The claim backend."""
        return self._backend()

    def note_entries(self, entries: Iterable[Entry]) -> None:
        """Entries whose message template is to be made in idle time (see :meth:`warm`)."""
        self._cold.extend(entry for entry in entries if not entry.lazy)

    def warm(
        self, deadline: float, now: datetime, skip: Callable[[Entry], bool] | None = None
    ) -> bool:
        """Until ``deadline`` (monotonic), make the message templates of noted entries due
        within :data:`WARM_HORIZON`, so that the first slot of each goes out as fast as the
        later ones (a burst of entries that never fired); not for those ``skip`` names (gone,
        or another replica's: made at their first slot here, if it ever comes). Returns
        whether it spent time."""
        warm = getattr(self.publisher, "warm", None)
        if warm is None or not self._cold:
            self._cold.clear()
            return False
        while self._cold and self.monotonic() < deadline:
            entry = self._cold.popleft()
            if skip is not None and skip(entry):
                continue
            slot = entry.first_slot_after(now)
            if slot is not None and slot - now <= WARM_HORIZON:
                warm(build_occurrence(entry, slot, task_id_for(entry.name, slot)))
        return True

    def send(
        self,
        admitted: Sequence[DueSlot],
        now: datetime,
        meanwhile: Callable[[], None] | None = None,
    ) -> BackendUnavailableError | None:
        """Publish and record the admitted slots, :data:`PUBLISH_BATCH` at a time.

        Each batch's messages are built while the previous batch's publish script runs (see
        :mod:`.lane`); ``meanwhile`` (the next chunk's claim) is called once, as soon as the
        first batch's messages are on their way: its publish script started (one step), or
        it was published (the fence path); at the end when there was nothing to publish.

        Returns the error when the backend went away; the slots not yet fenced are then
        queued to be asked about again (takeover-only), and ``meanwhile`` may not be called.
        """
        batches = [
            admitted[start : start + PUBLISH_BATCH]
            for start in range(0, len(admitted), PUBLISH_BATCH)
        ]
        next_claim = AtMostOnce(meanwhile)
        started: StartedBatch | None = None
        lost: BackendUnavailableError | None = None
        for index, batch in enumerate(batches):
            following = self._start_batch(batch, now)
            if following.replies is not None:  # its messages are on their way
                next_claim()
            if started is not None:
                lost = self._finish_batch(started, now)
                if lost is None:
                    next_claim()
            started = following
            if lost is not None:
                self._abandon(started, now)
                for later in batches[index + 1 :]:
                    self.ask_again(later, now)
                return lost
        if started is not None:
            lost = self._finish_batch(started, now)
        if lost is None:
            next_claim()
        return lost

    @property
    def unfinished(self) -> bool:
        """Whether published slots wait for their record, or one-step publishes for their
        answer (see :meth:`record`)."""
        return bool(self.unmarked or self.unsettled)

    def record(self) -> None:
        """Settle the one-step publishes whose answer was lost and record published claims;
        kept for the next tick if the backend is down (raises
        :class:`BackendUnavailableError` then)."""
        self._settle_unsettled()
        if not self.unmarked:
            return
        pending, self.unmarked = self.unmarked, []
        try:
            for outcome in ("sent", "uncertain"):
                claims = [claim for claim, said in pending if said == outcome]
                if claims:
                    self.backend.mark_sent(claims, outcome=outcome)
                pending = [record for record in pending if record[1] != outcome]
        except BaseException:  # Redis away, or a stop (SIGTERM) mid-call: close() tries again
            self.unmarked = pending + self.unmarked
            raise

    def _settle_unsettled(self) -> None:
        """Run the one-step script again for the slots whose answer was lost: it publishes a
        slot that is still this replica's unsent claim, answers that it published one already,
        or that another replica took it over."""
        if not self.unsettled:
            return
        unsettled, self.unsettled = self.unsettled, []
        backend = self.backend
        assert isinstance(backend, PublishesOnce)  # only the one-step path leaves any
        try:
            replies = backend.publish_once(
                [due_slot.claim for due_slot, _ in unsettled], [each for _, each in unsettled]
            )
        except BaseException:  # safe to repeat (see publish_once): kept, also through a stop
            self.unsettled = unsettled + self.unsettled
            raise
        self._report_once([due_slot for due_slot, _ in unsettled], replies)

    def ask_again(self, due_slots: Sequence[DueSlot], now: datetime) -> None:
        """Queue won claims that could not be fenced, to be asked about (takeover-only) soon."""
        when = now.timestamp() + BACKEND_RETRY_SECONDS
        for due_slot in due_slots:
            self.queue.push(when, due_slot.entry, due_slot.claim.slot, takeover=True)

    def sends_for(self, due: Sequence[DueSlot]) -> list[Commands | None] | None:
        """The broker commands with which each slot is claimed and published in one step
        (see :meth:`.backends.base.PublishesOnce.claim_and_send`), ``None`` for a slot that is
        claimed only; ``None`` for them all when the broker does not share the claims' Redis.

        Only the slots of entries without lazy arguments (evaluated once won, never for a slot
        another replica publishes), with overlap ``allow`` or ``skip``, off their exclusion
        dates, and outside the cluster-wide cap (its places are taken once the slot is won),
        whose message has a template (the same text Kombu would send); not the slots asked
        about after another replica's grace (its own entries, or a claim to take over), which
        mostly find the slot taken: their message is built only if they win it. Building a message
        that raises leaves its slot to the claim-then-publish path, which reports it."""
        if not due or self.settings.max_concurrent > 0 or not self._shares_redis_with_broker():
            return None
        commands_for = getattr(self.publisher, "commands_for", None)
        known_commands_for = getattr(self.publisher, "known_commands_for", None)
        if commands_for is None or known_commands_for is None:
            return None
        picked = [
            index
            for index, due_slot in enumerate(due)
            if due_slot.claim.overlap in ONE_STEP_OVERLAPS
            and not due_slot.claim.excluded
            and not due_slot.claim.takeover
            and not due_slot.foreign
            and not due_slot.entry.lazy
        ]
        known = known_commands_for(
            [(due[i].entry, due[i].claim.slot, due[i].claim.task_id) for i in picked]
        )
        if not picked or known is None:
            return None
        sends: list[Commands | None] = [None] * len(due)
        cold: list[int] = []
        for index, commands in zip(picked, known, strict=True):
            if commands is None:
                cold.append(index)  # its template is made from a full occurrence
            else:
                sends[index] = commands
        occurrences: list[Occurrence] = []
        built: list[int] = []
        for index in cold:
            claim = due[index].claim
            try:
                occurrences.append(build_occurrence(due[index].entry, claim.slot, claim.task_id))
            except Exception:  # the claim-then-publish path builds it again and reports it
                continue
            built.append(index)
        if built:
            for index, commands in zip(built, commands_for(occurrences) or (), strict=False):
                sends[index] = commands if isinstance(commands, list) else None
        for index, commands in enumerate(sends):
            if commands is not None and not all(name in ONCE_COMMANDS for name, _ in commands):
                sends[index] = None
        return sends if any(commands is not None for commands in sends) else None

    def _start_batch(self, batch: Sequence[DueSlot], now: datetime) -> StartedBatch:
        """Prepare one batch (step 1 of the module docstring) and, on the one-step path,
        start its publish script in the lane (see :meth:`_start_once`)."""
        prepared = self._prepare(batch, now)
        if prepared and self._shares_redis_with_broker():
            return self._start_once(prepared, now)
        return StartedBatch(prepared)

    def _finish_batch(self, started: StartedBatch, now: datetime) -> BackendUnavailableError | None:
        """Settle a started batch: the one-step publishes' replies, then fence, publish and
        record the rest (steps 2-4 of the module docstring).

        Returns the error when Redis went away; the batch's claims that were not fenced are
        then asked about again.
        """
        rest = started.rest
        try:
            self._settle_once(started, now)
            held = (
                self.backend.begin_publish([due_slot.claim for due_slot, _ in rest]) if rest else []
            )
        except BackendUnavailableError as exc:
            self.ask_again([due_slot for due_slot, _ in rest], now)
            return exc
        if not rest:
            return None
        self.unmarked.extend(self.publish(self._still_held(rest, held), now))
        try:
            self.record()
        except BackendUnavailableError as exc:
            return exc
        return None

    def _shares_redis_with_broker(self) -> bool:
        """True when the broker is a Kombu Redis transport on the claims' Redis server and
        database (asked once per publisher): then :meth:`_start_once` and :meth:`sends_for`
        apply. Never with ``fork_scheduler_wait_replicas``: a write must be confirmed by the
        Redis replicas before its slot is published (the fence path's fence is), and one script
        that claims or fences and also publishes cannot wait in between."""
        if self.settings.wait_replicas > 0:
            return False
        publisher = self.publisher
        if self._shared_with is not None and self._shared_with[0] is publisher:
            return self._shared_with[1]
        broker_client = getattr(publisher, "broker_client", None)
        backend = self.backend
        if broker_client is None or not isinstance(backend, PublishesOnce):
            self._shared_with = (publisher, False)
            return False
        try:
            client = broker_client()
        except Exception:  # the broker is out of reach: ask again at the next batch
            return False
        shared = client is not None and backend.shares_redis_with(client)
        self._shared_with = (publisher, shared)
        if shared:
            logger.info(
                "fork scheduler: the broker shares the claims' Redis: each slot is fenced, "
                "published and recorded in one step"
            )
        return shared

    def _abandon(self, started: StartedBatch, now: datetime) -> None:
        """After Redis went away: settle a started batch's publish script (it runs anyway) and
        ask about the rest of its slots again without trying them."""
        with contextlib.suppress(BackendUnavailableError):
            self._settle_once(started, now)
        self.ask_again([due_slot for due_slot, _ in started.rest], now)

    def _start_once(self, prepared: Sequence[Prepared], now: datetime) -> StartedBatch:
        """Start the script that fences, publishes and records each slot in one step
        (:data:`.lua.PUBLISH_ONCE`): there is no instant at which a stopped or killed replica
        leaves a slot published but unrecorded, nor fenced but unpublished. The slots that
        must take the fence path (no template, or a broker command the script does not run)
        are the batch's ``rest``."""
        commands_for = getattr(self.publisher, "commands_for", None)
        occurrences = [occurrence for _, occurrence in prepared]
        commands = commands_for(occurrences) if commands_for is not None else None
        if commands is None:
            return StartedBatch(list(prepared))
        once: list[tuple[DueSlot, Any]] = []
        rest: list[Prepared] = []
        for (due_slot, occurrence), each in zip(prepared, commands, strict=True):
            if isinstance(each, DeliveryUncertain):  # a capture's publish escaped: maybe sent
                self._uncertain(due_slot, each)
            elif isinstance(each, Exception):  # Celery refused to build it: nothing was sent
                self._not_sent(due_slot, each, now)
            elif each is not None and all(name in ONCE_COMMANDS for name, _ in each):
                once.append((due_slot, each))
            else:
                rest.append((due_slot, occurrence))
        if not once:
            return StartedBatch(rest)
        backend = self.backend
        assert isinstance(backend, PublishesOnce)  # see _shares_redis_with_broker
        claims = [due_slot.claim for due_slot, _ in once]
        commands = [each for _, each in once]
        replies = self.in_lane(partial(backend.publish_once, claims, commands))
        return StartedBatch(rest, [due_slot for due_slot, _ in once], commands, replies)

    def _settle_once(self, started: StartedBatch, now: datetime) -> None:
        """Report the one-step publishes of a batch from their replies.

        Raises :class:`BackendUnavailableError` when Redis went away; the same script is then
        run again for those slots before the next tick's claims (:meth:`record`): a lost reply
        is safe, the script answers whether this replica published the slot already or it is
        still its own claim to publish.
        """
        if started.replies is None:
            return
        try:
            replies = started.replies.result()
        except BackendUnavailableError:
            self.unsettled.extend(zip(started.once, started.commands, strict=True))
            raise
        self._report_once(started.once, replies)

    def _report_once(self, once: Sequence[DueSlot], replies: Sequence[Any]) -> None:
        """Record, then report, one-step publishes from the script's replies (every record
        is kept before a listener runs: a stop during a report loses none)."""
        answered = list(zip(once, replies, strict=True))
        for due_slot, reply in answered:
            if isinstance(reply, Exception):  # fenced, then a command failed: never again
                self.unmarked.append((due_slot.claim, "uncertain"))
        for due_slot, reply in answered:
            if isinstance(reply, Exception):
                self._report_uncertain(due_slot, reply)
            elif reply:
                self.reports.dispatched(due_slot)
            else:
                self.reports.skipped(due_slot, "claimed")

    def in_lane(self, call: Callable[[], T]) -> Future[T]:
        """Start a backend call in the lane (see :mod:`.lane`): in its thread when the backend
        allows calls beside another thread's, else at once."""
        threaded = bool(getattr(self.backend, "concurrent_calls", False))
        return self.lane.submit(call, threaded=threaded)

    def close(self) -> None:
        """Stop the lane's thread."""
        self.lane.close()

    def _prepare(self, batch: Sequence[DueSlot], now: datetime) -> list[Prepared]:
        """Build the messages of won slots and make sure the broker can be reached.

        A message that cannot be built (lazy args that raise) will never be: its claim is
        given back and reported. A broker that cannot be reached leaves the claims unfenced
        and this replica asks again a second later while the slots are recent; after that
        they are given back and reported (``broker_unavailable``). Nothing was sent.
        """
        prepared = []
        for due_slot in batch:
            claim = due_slot.claim
            try:
                occurrence = build_occurrence(
                    due_slot.entry,
                    claim.slot,
                    claim.task_id,
                    capped=due_slot.capped,
                    arguments=due_slot.arguments,
                )
            except Exception as exc:
                self._give_back(due_slot, exc)
            else:
                prepared.append((due_slot, occurrence))
        if not prepared:
            return prepared
        try:
            self.publisher.prepare()
        except Exception as exc:
            self.reports.warn_rate_limited(
                "broker", f"cannot reach the broker, publishing waits: {exc!r}"
            )
            late = []
            for due_slot, _ in prepared:
                if self._worth_retrying(due_slot, now):
                    self.ask_again([due_slot], now)
                else:
                    late.append(due_slot)
            if late:
                with contextlib.suppress(BackendUnavailableError):
                    self.backend.mark_skipped([d.claim for d in late], "broker_unavailable")
                for due_slot in late:
                    self.reports.skipped(due_slot, "broker_unavailable")
            return []
        return prepared

    def _worth_retrying(self, due_slot: DueSlot, now: datetime) -> bool:
        """Whether a slot the broker refused is still recent enough to try again a second
        later: within the catch-up grace of the instant it is published at (its jitter
        offset counts), or, for a dead replica's claim taken over (always a lease old),
        within the lease and twice the grace. This replica's own claim asked about again is
        not a takeover: its window stays the grace."""
        claim = due_slot.claim
        window = self.settings.catchup_grace
        if (claim.entry, claim.slot) in self._taken_over:
            window = self._takeover_window
        return now - due_slot.entry.publish_at(claim.slot) <= window

    def _give_back(self, due_slot: DueSlot, error: Exception) -> None:
        """A won slot whose message cannot be built: report it and give the claim back."""
        self.reports.failed(due_slot.entry, due_slot.claim.slot, error, "building the message of")
        with contextlib.suppress(BackendUnavailableError):
            self.backend.mark_skipped([due_slot.claim], "error")
        self.reports.skipped(due_slot, "error")

    def _still_held(self, batch: Sequence[Prepared], held: Sequence[bool]) -> list[Prepared]:
        """The fenced slots of ``batch``; the others were taken over while this replica stalled.

        The fence is what makes a stall anywhere harmless: a replica stopped before it loses
        its claims to a takeover and publishes none of them; one stopped after it keeps them,
        and nobody else publishes them.
        """
        kept = []
        for prepared, still_held in zip(batch, held, strict=True):
            if still_held:
                kept.append(prepared)
            else:
                self.reports.skipped(prepared[0], "claimed")
        return kept

    def publish(self, batch: Sequence[Prepared], now: datetime) -> list[tuple[Claim, str]]:
        """Send a fenced batch; return the claims to record, each with its outcome.

        A slot is published by this replica at most once: a message whose delivery is
        uncertain is recorded as such and reported (``in_flight``), never sent again. Only a
        message that certainly was not sent, for want of the broker, is tried again.
        """
        errors = self.publisher.publish_many([occurrence for _, occurrence in batch])
        records = []
        for (due_slot, _), error in zip(batch, errors, strict=True):
            if error is None:
                self.reports.dispatched(due_slot)
                records.append((due_slot.claim, "sent"))
            elif isinstance(error, DeliveryUncertain):
                self._report_uncertain(due_slot, error)
                records.append((due_slot.claim, "uncertain"))
            else:
                self._not_sent(due_slot, error, now)
        return records

    def _report_uncertain(self, due_slot: DueSlot, error: Exception) -> None:
        """Report a slot whose message may have left: failed, and skipped ``in_flight``."""
        self.reports.failed(due_slot.entry, due_slot.claim.slot, error, "publishing")
        self.reports.skipped(due_slot, "in_flight")

    def _uncertain(self, due_slot: DueSlot, error: Exception) -> None:
        """A won claim whose message may have left already: reported, and recorded
        ``uncertain`` (its run keeps its place under the cap), never sent again."""
        self.unmarked.append((due_slot.claim, "uncertain"))  # kept before a listener runs
        self._report_uncertain(due_slot, error)

    def _not_sent(self, due_slot: DueSlot, error: Exception, now: datetime) -> None:
        """A message that certainly did not leave: while the broker is what failed and the
        slot is recent, its fence is lifted and this replica asks for it again (should it stop
        meanwhile, another replica takes the claim over after the lease); else the failure is
        recorded and the slot is not published."""
        self.reports.failed(due_slot.entry, due_slot.claim.slot, error, "publishing")
        claim = due_slot.claim
        if is_transient(error) and self._worth_retrying(due_slot, now):
            with contextlib.suppress(BackendUnavailableError):
                self.backend.end_fence([claim])
            # Asked again even when Redis is away too (round 66): the claim script answers
            # ``won`` for this replica's own claim, fenced or not.
            self.ask_again([due_slot], now)
            return
        with contextlib.suppress(BackendUnavailableError):
            self.backend.record_failure(claim, error)


class AtMostOnce:
    """Calls ``action`` (if any) the first time it is called, and never again."""

    def __init__(self, action: Callable[[], None] | None) -> None:
        self._action = action

    def __call__(self) -> None:
        action, self._action = self._action, None
        if action is not None:
            action()
