"""The beat Scheduler: orchestration only. One tick reads top to bottom:

1. **queue** — each entry's next slot waits in a heap (:mod:`.timequeue`); :meth:`Scheduler.tick`
   pops the due ones (after the start-up catch-up, :mod:`.startup_catchup`, and the runtime
   entry refresh, :mod:`.runtime`);
2. **decide** — :meth:`Scheduler._decide` turns each due item into the slots to claim now
   (:mod:`.catchup`), with the entry's next slot;
3. **claim** — :meth:`Scheduler._run_chunk` asks the claim backend (:mod:`.backends`) about a
   chunk of them in one round trip;
4. **admit** — :meth:`Scheduler._admit` keeps the won slots, queues retries, reports skips and
   applies the cluster-wide cap;
5. **pipeline** — :class:`.pipeline.PublishPipeline` fences, publishes and records them.

Reports (signals, logs) go through :mod:`.reports`; a backend that cannot be reached is handled
by :mod:`.backend_outage`; time is Redis's (:mod:`.redis_clock`).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta, timezone, tzinfo
from functools import partial
from typing import Any

import redis
from celery import beat, signals
from celery.schedules import crontab

from .backend_outage import BackendOutage
from .backends import Claim, ClaimBackend, ClaimOutcome, ClaimResult
from .backends.base import PublishesOnce, from_epoch_us, to_epoch_us
from .backends.factory import create_backend
from .catchup import MAX_CATCH_UP_SLOTS, slots_due
from .config import Settings, app_timezone, read_settings
from .decorators import periodic_entries
from .due import ChunkClaim, DueSlot, Work
from .entry import BUFFERING, Entry, entries_from_config, entry_to_dict
from .errors import BackendUnavailableError, ConfigError
from .heap import settle_heap
from .held import HeldNotSent, HeldRuns
from .ids import slot_isoformat, task_id_for
from .listeners import resolve_listeners
from .metrics import Metrics
from .ownership import Ownership
from .parking import ParkedChains
from .pipeline import BACKEND_RETRY_SECONDS, AtMostOnce, Commands, PublishPipeline
from .publishing import (
    CeleryPublisher,
    DeliveryUncertain,
    Publisher,
    build_occurrence,
    occurrence_from_json,
    occurrence_to_json,
)
from .redis_clock import CLOCK_TOLERANCE, RedisClock
from .reports import SlotReports
from .runtime import RuntimeEntries
from .shutdown import stop_signals_deferred
from .startup_catchup import StartupCatchUp
from .startup_checks import warn_about_tasks, warn_about_unsupported_policies
from .static_build import StaticBuild
from .timequeue import QueueItem, TimeQueue

logger = logging.getLogger("celery_fork_scheduler")

Clock = Callable[[], datetime]

#: Claims per round trip; a burst is claimed and published batch by batch.
CLAIM_BATCH = 500
#: How many runs carried by claims' answers a replica remembers (see _first_answer).
ANSWERED_RUNS_KEPT = 10_000
#: The first batch of a burst is smaller: its first message leaves sooner.
HEAD_CHUNK = 100
#: The claim + publish rate assumed before one is measured (slots per second).
INITIAL_CLAIM_RATE = 1000.0
#: Batches smaller than this say little about the rate.
RATE_SAMPLE_MIN = 50
#: How often a replica records itself in Redis (``celery schedule replicas``).
ANNOUNCE_SECONDS = 5.0
#: An ``early`` answer this far ahead of the slot: this host's clock is measured again at once.
EARLY_CLOCK_CHECK = 1.0
#: The shortest wait before asking again about a slot that is pending or early.
MIN_RETRY_SECONDS = 0.05
#: Idle time is spent making message templates, up to this long before the next wake-up...
WARM_MARGIN = 0.05
#: ... and at most this long per tick (a tick stays responsive to stop signals and changes).
WARM_LONGEST = 0.5
#: Earlier definitions of a changed entry remembered, for the slots they still owe.
SUPERSEDED_KEPT = 4
#: Entries are built and read page by page at start-up (static entries first, then runtime
#: entries): this long before the first tick (a configuration and a store of ordinary size are
#: read whole), then, per tick, this long for static entries (built on this host: their slots
#: wait until they are) ...
SETUP_LOAD_SECONDS = 1.0
TICK_BUILD_SECONDS = 0.4
#: ... and this long for runtime entries (read from Redis: the others cover their slots).
TICK_LOAD_SECONDS = 0.1


def _same_definition(first: Entry, second: Entry) -> bool:
    """True when two entry objects define the same thing (as stored)."""
    if first is second:
        return True
    try:
        return entry_to_dict(first) == entry_to_dict(second)
    except Exception:  # a definition that cannot be stored (lazy args) compares unequal
        return False


def _head_first(chunks: list[list[QueueItem]]) -> list[list[QueueItem]]:
    """The first chunk cut to about :data:`HEAD_CHUNK` items (whole entries), so that the first
    message of a burst leaves after a small claim round trip, not a full one."""
    first = chunks[0]
    if len(first) <= HEAD_CHUNK:
        return chunks
    head: list[QueueItem] = []
    names: set[str] = set()
    for item in first:
        name = item.entry.name
        if len(head) >= HEAD_CHUNK and name not in names:
            break
        names.add(name)
        head.append(item)
    rest = [item for item in first if item.entry.name not in names]
    return [head, rest, *chunks[1:]] if rest else chunks


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Hold Python's cyclic garbage collector off while entries are built: the objects made
    at start-up all live on, and each full collection walks every one of them (about 15 % of
    building 500 000 entries). Reference counting frees everything else as usual."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _reach(entry: Entry, until: datetime) -> datetime:
    """Up to when an earlier definition, in force until ``until``, publishes: its last slot
    up to ``until`` is still its own, also when its jitter offset falls after the change."""
    last = entry.last_slot_at_or_before(until)
    return until if last is None else max(until, entry.publish_at(last))


#: Claim answers that say nothing of the entry's high-water mark (see ``_learn_marks``).
_NO_MARK = frozenset(
    (
        ClaimOutcome.EARLY,
        ClaimOutcome.ERROR,
        ClaimOutcome.CHANGED,
        ClaimOutcome.REMOVED,
        ClaimOutcome.DISABLED,
        ClaimOutcome.UNKNOWN,
    )
)


def _from_timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def utc_now() -> datetime:
    """The real clock: the current aware UTC instant."""
    return datetime.now(timezone.utc)


class Scheduler(beat.Scheduler):  # type: ignore[misc]
    """Active-active Celery beat scheduler (``celery beat -S fork``)."""

    #: How won slots are fenced, published and recorded (a subclass may extend it).
    pipeline_class: type[PublishPipeline] = PublishPipeline

    def __init__(
        self,
        app: Any,
        *args: Any,
        schedule_filename: str | None = None,
        clock: Clock | None = None,
        backend: ClaimBackend | None = None,
        publisher: Publisher | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        exit_on_config_error: bool = True,
        **kwargs: Any,
    ) -> None:
        """``celery beat`` passes only the Celery arguments; the keywords after
        ``schedule_filename`` let tests and the testing harness inject their parts.

        A bad setting or entry stops ``celery beat`` with one line naming it
        (``exit_on_config_error``); with ``False`` the :class:`ConfigError` is raised instead.
        """
        self.exit_on_config_error = exit_on_config_error
        self.schedule_filename = schedule_filename or app.conf.beat_schedule_filename
        self.clock: Clock = clock or utc_now
        self.monotonic = monotonic
        self.entries: dict[str, Entry] = {}
        self.queue = TimeQueue()
        #: Items of entries another replica owns, waiting for the owner's grace.
        self.deferred = TimeQueue()
        #: Chains of entries whose owner keeps up, set aside (see :mod:`.parking`).
        self.parked = ParkedChains()
        self.ownership: Ownership | None = None
        self._static_digest = 0
        self._closed = False
        #: The exit status owed once Celery's beat loop has stopped (a bad entry found after
        #: the first tick: Celery's loop ends quietly on ``SystemExit``, see :meth:`sync`).
        self._exit_status = 0
        with self._config_errors_stop_beat():
            self.settings: Settings = read_settings(app.conf)
        self._backend_override = backend
        self._backend: ClaimBackend | None = None
        self.reports = SlotReports(self, lambda: self.backend.replica_id, monotonic)
        self.pipeline = self.pipeline_class(
            lambda: self.backend,
            publisher or CeleryPublisher(app, lambda: self.producer),
            self.settings,
            self.reports,
            self.queue,
            monotonic,
        )
        self.outage = BackendOutage(self.reports, lambda: self.backend, self.now)
        self.static = StaticBuild(None, {}, default_timezone=timezone.utc)
        self.static_names: frozenset[str] = frozenset()
        self.runtime: RuntimeEntries | None = None
        self.metrics: Metrics | None = None
        #: Earlier definitions of changed entries (by name, then ``id``) with the instant up to
        #: which their slots are still theirs: a change never drops a slot already due.
        self._superseded: dict[str, dict[int, tuple[Entry, datetime]]] = {}
        #: Entries that used up ``max_runs``: never claimed again by this replica.
        self._finished: set[str] = set()
        #: Slots per second this replica handles (claim + publish), to spot a backlog.
        self._claim_rate = INITIAL_CLAIM_RATE
        #: The latest slot of each entry Redis confirmed claimed (us): written back to a Redis
        #: that lost its data, so that no replica can claim an older slot again.
        self._known_marks: dict[str, int] = {}
        self.redis_clock = RedisClock(
            self.clock, monotonic, lambda: self.backend, follow=clock is None
        )
        self.catch_up = StartupCatchUp(
            lambda: self.backend,
            self.settings,
            self.queue,
            self.reports,
            monotonic,
            self._known_marks,
        )
        self._next_refresh = 0.0
        self._next_announce = 0.0
        #: The instant beat started (runtime entries read later are queued from it).
        self._started = datetime.now(timezone.utc)
        self._startup_read_done = False
        self._settle_heap = False
        self._run_by_beat = False  # a beat service started this scheduler (see heap.py)
        signals.beat_init.connect(self._on_beat_init)
        #: While entries are read at start-up: the spans this replica could not have claimed
        #: in (no tick for longer than the catch-up grace, or the backend away), from ... to.
        #: An entry read later judges its slots in them by its catch-up policy, as an entry
        #: read before them did.
        self._interruptions: list[tuple[datetime, datetime]] = []
        self._last_tick_end: datetime | None = None
        #: The slots of the chunk in hand answered ``early`` by far, (entry, slot) -> when they
        #: are due on Redis's clock; see :meth:`_queue_follow_ups`.
        self._early: dict[tuple[str, datetime], float] = {}
        #: Per runtime entry, its slots refused as ``changed`` (this replica had not read a
        #: change yet): asked again when the change read turns out to keep the definition.
        self._refused_as_changed: dict[str, list[datetime]] = {}
        #: Per entry read within the owner grace of its add or change, the instant (epoch
        #: seconds, Redis's clock) before which none of its slots is asked about (see
        #: :meth:`_after_owed_slots`); dropped at the first refresh after it.
        self._holds: dict[str, float] = {}
        #: Entries disabled or removed, with when (epoch seconds, Redis's clock) their unsent
        #: claims are looked for once more (see :meth:`_take_over_unsent`).
        self._looks_again: list[tuple[float, Sequence[Entry]]] = []
        #: The clock offset the queued wake-ups were computed with (see _follow_corrections).
        self._seen_offset = timedelta(0)
        #: Queued runs a claim handed the marker that Redis kept from leaving, to be put back
        #: at the head of their queue: JSON message -> (entry name, monotonic end of the
        #: marker's lease, the id of the put-back, the same each time it is asked again).
        self._to_put_back: dict[bytes | str, tuple[str, float, str]] = {}
        #: (claim task id, run message) of the runs claims' answers carried, latest last
        #: (see _first_answer).
        self._answered_runs: dict[tuple[str, str], None] = {}
        super().__init__(app, *args, **kwargs)

    # -- set-up -----------------------------------------------------------------------------

    @property
    def backend(self) -> ClaimBackend:
        """The claim backend, created on first use."""
        if self._backend is None:
            try:
                self._backend = self._backend_override or create_backend(
                    self.app, self.settings, self.schedule_filename
                )
            except redis.RedisError as exc:  # a cluster client connects at once
                raise ConfigError(
                    f"cannot use the claims Redis: {exc}", field="fork_scheduler_redis_url"
                ) from None
        return self._backend

    @property
    def publisher(self) -> Publisher:
        """What sends the messages (Celery's producer unless one is injected)."""
        return self.pipeline.publisher

    @publisher.setter
    def publisher(self, publisher: Publisher) -> None:
        self.pipeline.publisher = publisher

    @property
    def default_timezone(self) -> tzinfo:
        """The app's ``timezone`` setting (UTC when unset); :class:`ConfigError` when bad."""
        return app_timezone(self.app)

    @contextlib.contextmanager
    def _config_errors_stop_beat(self) -> Iterator[None]:
        try:
            yield
        except ConfigError as exc:
            if not self.exit_on_config_error:
                raise
            logger.critical("fork scheduler: invalid configuration: %s", exc)
            self._exit_status = 1
            # The line above says it all; a message here would be printed (and logged) again.
            raise SystemExit(1) from None

    def setup_schedule(self) -> None:
        """Validate every entry, pick the backend and queue each entry's first slot."""
        with self._config_errors_stop_beat(), _no_cyclic_gc():
            self._setup_schedule()

    def _setup_schedule(self) -> None:
        floor = self.settings.min_interval
        calendars = self.settings.calendars
        beat_schedule = self.app.conf.beat_schedule
        config = beat_schedule if isinstance(beat_schedule, Mapping) else {}
        built = periodic_entries(
            self.app,
            default_timezone=self.default_timezone,
            min_interval=floor,
            calendars=calendars,
        )
        for name in built:
            if name in config:
                logger.warning(
                    "fork scheduler: @periodic entry %s is shadowed by beat_schedule", name
                )
        built.update(self._default_entries(lambda name: name in config or name in built))
        self.static = StaticBuild(
            beat_schedule,
            built,
            default_timezone=self.default_timezone,
            min_interval=floor,
            calendars=calendars,
        )
        resolve_listeners(self.settings.event_listeners)
        self.static_names = self.static.names
        backend = self.backend
        store = backend.runtime_store()
        if store is not None:
            self.runtime = RuntimeEntries(
                store,
                self.default_timezone,
                backend.replica_id,
                min_interval=floor,
                calendars=calendars,
            )
            self.runtime.begin_load()
            if self._divides_entries():
                self.ownership = Ownership(
                    store.client,
                    store.keys.progress,
                    backend.replica_id,
                    self.settings.owner_grace,
                    self.monotonic,
                )
        if not backend.protects_replicas and getattr(backend, "warns_single_replica", True):
            logger.warning(
                "fork scheduler: no Redis configured (fork_scheduler_redis_url, or a redis:// "
                "broker_url): running as a single replica; several beat replicas would NOT be "
                "protected from each other"
            )
        if not self.settings.enabled:
            logger.warning(
                "fork scheduler: fork_scheduler_enabled is False: this beat publishes nothing"
            )
        else:
            self.redis_clock.follow()
            self._started = self.now()
            if self.settings.metrics_port:
                self.metrics = Metrics()
                self.metrics.connect(self)
                self.metrics.serve(self.settings.metrics_port)
                logger.info("fork scheduler: metrics on port %d", self.settings.metrics_port)
        self._read_entries(SETUP_LOAD_SECONDS)
        self._last_tick_end = self.now()
        if self._reading_entries:
            logger.info(
                "fork scheduler: backend %s, %d entries so far; the other %s are read over the "
                "first ticks",
                backend.describe(),
                len(self.entries),
                "entries" if self.static.complete else f"{self.static.remaining} static entries",
            )
        else:
            logger.info(
                "fork scheduler: backend %s, %d entries", backend.describe(), len(self.entries)
            )
            self._all_entries_read()

    def _jittered(self, entry: Entry) -> Entry:
        """``entry`` under ``fork_scheduler_default_jitter`` (unless it has its own)."""
        return entry.with_default_jitter(self.settings.default_jitter)

    def _divides_entries(self) -> bool:
        """Whether this replica takes part in dividing the entries (see :mod:`.ownership`): not
        when it publishes nothing, nor when the owner's grace would outlast the catch-up grace
        (a dead owner's slots would be missed slots)."""
        grace, catchup = self.settings.owner_grace, self.settings.catchup_grace
        if not self.settings.enabled or grace <= timedelta(0):
            return False
        if grace >= catchup:
            logger.warning(
                "fork scheduler: fork_scheduler_owner_grace (%s s) is not below "
                "fork_scheduler_catchup_grace (%s s): every replica asks about every slot",
                grace.total_seconds(),
                catchup.total_seconds(),
            )
            return False
        return True

    def _default_entries(self, taken: Callable[[str], bool]) -> dict[str, Entry]:
        """Celery's own default entry (``celery.backend_cleanup``), when Celery would add it
        (``taken``: whether an entry of a name is defined)."""
        conf = self.app.conf
        if taken("celery.backend_cleanup") or not conf.result_expires:
            return {}
        if self.app.backend.supports_autoexpire:
            return {}
        definition = {
            "task": "celery.backend_cleanup",
            "schedule": crontab("0", "4", "*"),
            "options": {"expires": 12 * 3600},
        }
        return entries_from_config(
            {"celery.backend_cleanup": definition}, default_timezone=self.default_timezone
        )

    def _follow_corrections(self) -> None:
        """After the clock was corrected (a host clock that stepped, measured again): the
        items queued on the wrong clock wake no later than their slots on Redis's (a chain
        resumed after an ``early`` answer while the clock was ahead by minutes would wait that
        long after its slot). Takeover retries wait for a claim lease and keep their time.

        A clock that was ahead also put each chain's next slot too far: the first after an
        instant that had not come yet, so the slots in between were never asked about (and
        the progress record said they were: simulator seed 5832, a replica started while Redis
        was away with its clock 20 s ahead, 8 slots lost). Each chain goes back to the first
        slot after its previous slot moved back by the correction, and not before the latest
        slot Redis said is decided (a chain resumed after ``early`` answers is right already);
        the catch-up policy judges the ones that came due meanwhile. Only a chain whose
        previous slot is still to come on Redis's clock was decided on the wrong clock: a
        chain decided before the clock stepped ahead stays (adversary round 37: it fired slots
        from before beat started, or before a change)."""
        offset = self.redis_clock.offset
        change = offset - self._seen_offset
        if abs(change) < CLOCK_TOLERANCE:
            return
        self._seen_offset = offset
        corrected = self.now()
        now = corrected.timestamp()
        for item in self.queue.pop_all():
            slot = item.slot
            if change < timedelta(0) and not item.retry:
                known = self._known_marks.get(item.entry.name, 0)
                floor = from_epoch_us(known) if known else None
                slot = self._rewound_slot(item.entry, slot, change, floor, corrected)
            when = item.when
            if not item.takeover:  # (an entry's hold stands: see _after_owed_slots)
                hold = self._holds.get(item.entry.name, 0.0)
                when = min(item.when, max(item.entry.publish_at(slot).timestamp(), now, hold))
            self.queue.push(when, item.entry, slot, retry=item.retry, takeover=item.takeover)

    @staticmethod
    def _rewound_slot(
        entry: Entry, slot: datetime, change: timedelta, floor: datetime | None, now: datetime
    ) -> datetime:
        """The chain slot ``slot`` of ``entry``, decided on a clock ``-change`` ahead when its
        previous slot is after ``now`` (a chain follows an instant that has come): the first
        slot after that previous slot moved back by ``-change``, and after ``floor`` (the
        latest slot known decided); ``slot`` itself otherwise."""
        try:
            previous = entry.last_slot_at_or_before(slot - timedelta(microseconds=1))
            if previous is None or previous <= now:
                return slot
            start = previous + change
            if floor is not None and floor > start:
                start = floor
            earlier = entry.first_slot_after(start)
        except Exception:  # one entry's failure is that entry's: its chain stays as it was
            return slot
        return earlier if earlier is not None and earlier < slot else slot

    def _note_interruptions(self, now: datetime) -> None:
        """While entries are read: a pause since the last tick (longer than the catch-up
        grace) is a span this replica claimed nothing in."""
        last = self._last_tick_end
        if last is not None and now - last > self.settings.catchup_grace:
            self._interruptions.append((last, now))

    def _outage_ended(self, now: datetime) -> None:
        """The backend answered: the outage, if any, ends (a span claimed nothing in)."""
        if self.outage.active and not self._startup_read_done and self.outage.started:
            self._interruptions.append((self.outage.started, now))
        self.outage.end()

    def _interruption_end(self, instant: datetime) -> datetime | None:
        """The end of the span this replica could not claim in that holds ``instant``, if
        any."""
        for start, end in self._interruptions:
            if start <= instant < end:
                return end
        return None

    def _read_entries(self, seconds: float) -> None:
        """Build pages of the static entries, then read pages of the runtime entries, for
        about ``seconds`` (at least one page): a replica starting with a million entries
        publishes the slots of those it has meanwhile."""
        static, runtime = self.static, self.runtime
        if static.complete and (runtime is None or not runtime.loading):
            return
        deadline = self.monotonic() + seconds
        now = self.now()
        loaded: list[Entry] = []
        while not static.complete:
            loaded.extend(self._add_read_late(entry, now, None) for entry in static.page())
            if static.complete:  # the default jitter moves every slot of every entry
                jitter = self.settings.default_jitter.total_seconds()
                self._static_digest = zlib.crc32(f"jitter={jitter}".encode(), static.digest)
            elif self.monotonic() >= deadline:
                break
        while static.complete and runtime is not None and runtime.loading:
            page = runtime.load_page(self.static_names)
            for entry in page.changed:
                if entry.name not in self.entries:  # a page scan may return a name twice
                    loaded.append(self._add_read_late(entry, now, page.added.get(entry.name)))
            self._take_over_unsent([entry for entry in page.changed if not entry.enabled], now)
            if self.monotonic() >= deadline:
                break
        if self.settings.enabled:
            self.pipeline.note_entries(loaded)

    def _add_read_late(self, entry: Entry, now: datetime, added: datetime | None) -> Entry:
        """Add an entry read after start-up (a static entry by a page of the build, a runtime
        entry by a page, or by a poll before every page was read), scheduled as if it had been
        read when beat started (see :meth:`_queue_read_late`); ``added``: the instant a
        runtime entry was added."""
        entry = self.entries[entry.name] = self._jittered(entry)
        if self.settings.enabled and entry.enabled:
            self._queue_read_late(entry, now, added)
        return entry

    def _queue_read_late(self, entry: Entry, now: datetime, added: datetime | None) -> None:
        """Queue an entry read at ``now`` as if it had been read at ``began``: when beat
        started; for an entry added since, when it was added (what ``add`` answered as its
        next run fires); for one changed since, when it was changed (a change's next run
        fires, and no slot of the new definition before it).

        Its missed slots before ``began`` are looked for by the start-up catch-up as of
        ``began``; the slots that fell due since are due slots, asked about now whatever its
        catch-up policy (a replica reading is not a replica down), except those that fell due
        while it could not have claimed them (paused, or the backend away): those are judged
        by the catch-up policy as of the end of that span, as for an entry read before it
        (the backend away now: all of them, by the chain, as every entry's are).
        """
        since = self.runtime.since.get(entry.name) if self.runtime is not None else None
        if added is not None and added > self._started:
            began = added
        else:
            began = self._started if since is None else max(self._started, since)
        began = min(began, now)  # a writer's clock ahead of Redis's promises nothing later
        upcoming = entry.first_slot_after(entry.due_edge(self._first_slot_start(began, since)))
        self.catch_up.add(entry, upcoming, began, since)
        when = self._after_owed_slots(since, now)
        if when > now.timestamp():
            self._holds[entry.name] = when
        slot = upcoming
        for _ in range(0 if self.outage.active else MAX_CATCH_UP_SLOTS):
            # (the backend away: the chain meets the outage, as every entry's does)
            if slot is None or entry.publish_at(slot) > now:
                break
            ended = self._interruption_end(entry.publish_at(slot))
            if ended is None:
                self.queue.push(when, entry, slot, retry=True)
                slot = entry.first_slot_after(slot)
                continue
            grace = self.settings.catchup_grace
            for due in slots_due(entry, slot - timedelta(microseconds=1), ended, grace=grace):
                self.queue.push(now.timestamp(), entry, due, retry=True)
            slot = entry.first_slot_after(entry.due_edge(ended))
        if slot is not None:  # not before the due slots held back (it would pass them)
            self._push_chain(entry, slot)

    def _after_owed_slots(self, since: datetime | None, now: datetime) -> float:
        """When a runtime entry read late may ask about its slots (epoch seconds).

        After a change (``since``; an add too: it may follow a removal of the name), a replica
        that knew the earlier definition may still owe a slot of it due before the change:
        another replica's entry, asked about a grace after its slot (its owner died). This
        replica knows only the new definition; claiming its slots now would raise the mark past
        that slot, which would then never fire (rounds 39 and 40). So with ownership on, its
        slots wait until a grace after the change (those of the change's first grace fire up
        to a grace late)."""
        if since is None or self.ownership is None:
            return now.timestamp()
        owed_until = since + self.settings.owner_grace
        return max(now.timestamp(), owed_until.timestamp() + MIN_RETRY_SECONDS)

    def _all_entries_read(self) -> None:
        """Every entry is read: the start-up warnings and the metrics cover them all."""
        self._startup_read_done = True
        self._settle_heap = self.settings.enabled and self.settings.freeze_heap
        self._interruptions.clear()
        if self.runtime is not None:
            # Each entry's add or change instant served its first queued slot (and its
            # catch-up item keeps its own); later changes carry theirs in each Update.
            self.runtime.since.clear()
        if not self.settings.enabled:
            return
        warn_about_unsupported_policies(
            self.entries.values(), self.settings, self.backend, self.runtime
        )
        warn_about_tasks(self.app, self.entries.values())
        if self.metrics is not None:
            self.metrics.entries.set(len(self.entries))

    def _first_slot_start(self, now: datetime, since: datetime | None) -> datetime:
        """What an entry's first slot at start-up follows: ``now``, or ``since`` (the instant a
        runtime entry was added or changed) when that is within the catch-up grace."""
        grace = self.settings.catchup_grace
        return now if since is None else min(now, max(since, now - grace))

    def _queue_upcoming(self, entry: Entry, now: datetime) -> datetime | None:
        """Queue an entry's first slot to publish after ``now`` (beat starting is no reason
        to fire; a runtime entry starts from the instant it was added, when that is recent).

        With jitter, that is the first slot whose publish instant is after ``now``: a slot
        just before ``now`` may still be waiting for its offset.
        """
        upcoming = entry.first_slot_after(entry.due_edge(now))
        if upcoming is not None:
            self._push_chain(entry, upcoming)
        return upcoming

    def _push_chain(self, entry: Entry, slot: datetime) -> None:
        """Queue ``slot`` of ``entry`` to wake up at its publish instant (the slot plus its
        jitter offset), or at the entry's hold when that is later."""
        when = entry.publish_at(slot).timestamp()
        if self._holds:
            when = max(when, self._holds.get(entry.name, when))
        self.queue.push(when, entry, slot)

    # -- the tick ---------------------------------------------------------------------------

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Handle every due slot, then return the seconds to sleep until the next one."""
        self.redis_clock.watch_for_steps()
        if not self._startup_read_done:
            self._note_interruptions(self.now())
        with self._config_errors_stop_beat():
            self._read_entries(TICK_LOAD_SECONDS if self.static.complete else TICK_BUILD_SECONDS)
            self._refresh_runtime_entries()  # a store of another shard layout stops beat
        self.redis_clock.watch_for_steps()  # (a step during the refresh's calls to Redis)
        self._follow_corrections()
        if self._to_put_back:
            self._put_back_released()
        if not self._startup_read_done and not self._reading_entries:
            logger.info("fork scheduler: %d entries, every runtime entry read", len(self.entries))
            self._all_entries_read()
        now = self.now()
        self._catch_up(now)
        self._follow_owners(now)
        due_items = self.queue.pop_due(now.timestamp()) + self.deferred.pop_due(now.timestamp())
        due_items, held, error = self._missed_first(due_items, now)
        if error is not None:
            self._hold_back(held, error, now, alone=not due_items)
        handled = True
        if due_items or self.pipeline.unfinished:
            handled = self._handle(due_items, now)
        if handled:
            self._report_progress(now)
        if self._settle_heap and self._run_by_beat:  # every entry read, its first slots sent
            self._settle_heap = False
            settle_heap()
        sleep = self._seconds_to_next_wakeup()
        if sleep > WARM_MARGIN:
            started = self.monotonic()
            deadline = started + min(sleep - WARM_MARGIN, WARM_LONGEST)
            if self.pipeline.warm(deadline, now, self._not_to_warm):
                sleep = max(0.0, sleep - (self.monotonic() - started))
        if not self._startup_read_done:
            self._last_tick_end = self.now()
        return sleep

    def _not_to_warm(self, entry: Entry) -> bool:
        """Whether ``entry``'s template is not to be made ahead: it was removed or changed
        since it was noted, or another live replica owns it (see :mod:`.ownership`; asked in
        idle time, this also hashes the entry's owner before its slot comes)."""
        if self.entries.get(entry.name) is not entry:
            return True
        return self.ownership is not None and self.ownership.other_owner(entry.name) is not None

    def _hold_back(
        self, held: list[QueueItem], error: Exception, now: datetime, *, alone: bool
    ) -> None:
        """Due items whose entries' marks could not be read: none is claimed now. When Redis
        is down (an outage already noticed, or nothing else to ask about) they meet the
        outage like any other; when only the marks read failed, they are asked again a
        second later without reporting an outage the claims would then end. ``alone``: no
        other item is due now."""
        if self.outage.active or alone:
            works = self._decide(held, now, set(), len(held))
            for work in works:  # said due as on the claim path (once per outage)
                for due_slot in work.due:
                    if not self.outage.reported(due_slot):
                        self.reports.due(due_slot)
            self._on_backend_down(error, works, now)
            return
        when = now.timestamp() + BACKEND_RETRY_SECONDS
        for item in held:
            self.queue.push(when, item.entry, item.slot, retry=item.retry, takeover=item.takeover)

    def _missed_first(
        self, due_items: list[QueueItem], now: datetime
    ) -> tuple[list[QueueItem], list[QueueItem], BackendUnavailableError | None]:
        """``due_items``, preceded by the missed slots of those entries whose high-water marks
        the start-up catch-up has not read yet (read now, out of turn): a claim raises an
        entry's mark, so its older missed slots are claimed first (also while batches back
        off after a failed read).

        Returns the items to handle now, and those held back with the error when the marks
        cannot be read (none may be claimed before its missed slots).
        """
        catch_up = self.catch_up
        if not catch_up.unchecked:
            return due_items, [], None
        names = {item.entry.name for item in due_items if catch_up.pending(item.entry.name)}
        if not names:
            return due_items, [], None
        error = catch_up.check_now(
            names,
            now,
            self.entries,
            self.settings.starting_deadline,
        )
        if error is not None:
            held = [item for item in due_items if item.entry.name in names]
            return [item for item in due_items if item.entry.name not in names], held, error
        return self.queue.pop_due(now.timestamp()) + due_items, [], None

    def _follow_owners(self, now: datetime) -> None:
        """Follow which replicas are live, and so which entries this one owns; when that view
        changes, the deferred items are decided again (one may be this replica's now)."""
        if self.ownership is None or self.runtime is None or not self.static.complete:
            return  # while static entries are built, this replica asks about all it has
        basis = zlib.crc32(f"{self._static_digest}|{self.runtime.basis()}".encode())
        ownership = self.ownership
        ownership.config = self._static_digest
        changed = ownership.follow(now, basis)
        if not changed and any(ownership.keeps_up(o, now) is None for o in self.parked.owners()):
            # Look again before releasing an owner's chains: its record may be newer than the
            # last read (a release costs every parked entry a deferral and a check).
            changed = ownership.follow(now, basis, force=True)
        if changed:
            for item in self.deferred.pop_all():
                self.queue.push(
                    item.when, item.entry, item.slot, retry=item.retry, takeover=item.takeover
                )
        self._release_parked(now, everything=changed)

    def _release_parked(self, now: datetime, *, everything: bool) -> None:
        """Queue again the parked chains of each owner that stopped keeping up, once the
        earliest of their slots after what its record was trusted for is a grace old (a busy
        owner writes its record after its tick), or all of them at once when the view
        changed; from the first slot after what the owner's record was trusted for."""
        ownership = self.ownership
        if ownership is None:
            return
        grace = ownership.grace.total_seconds()
        for owner in self.parked.owners():
            until = None if everything else ownership.keeps_up(owner, now)
            if until is not None:
                self.parked.trust(owner, until)
                continue
            if not everything:
                first = self.parked.first_due(owner)
                if first is not None and now.timestamp() < first + grace:
                    self.parked.hold(owner, first + grace)
                    continue
            items, trusted = self.parked.release(owner)
            for item in items:
                slot: datetime | None = item.slot
                if trusted is not None and item.slot <= trusted:
                    slot = item.entry.first_slot_after(trusted)  # the owner asked about those
                if slot is not None:
                    self._push_chain(item.entry, slot)

    def _report_progress(self, now: datetime) -> None:
        """Tell the other replicas up to when this one asked about every slot it owns: every
        item due by ``now`` was handled, except those queued again after their slot."""
        if self.ownership is None or self.catch_up.unchecked or self._reading_entries:
            return  # until every entry is read and its missed slots queued, nothing is promised
        late = self.queue.oldest_late_slot()
        until = now if late is None else min(now, _from_timestamp(late) - timedelta(microseconds=1))
        self.ownership.report(until, now)

    @property
    def _reading_entries(self) -> bool:
        """Whether some static entries are not built, or some runtime entries may not be read
        yet, since start-up."""
        return not self.static.complete or (self.runtime is not None and not self.runtime.complete)

    def now(self) -> datetime:
        """The current instant on Redis's clock: this host's clock plus the measured offset."""
        return self.redis_clock.now()

    def _catch_up(self, now: datetime) -> None:
        """Read the next batch of high-water marks at start-up; queue what they missed."""
        self.catch_up.run_batch(
            now,
            self.entries,
            self.settings.starting_deadline,
        )

    def _refresh_runtime_entries(self) -> None:
        """At most every ``fork_scheduler_refresh_interval``: follow Redis's clock, apply
        runtime entry changes, record this replica."""
        if self.runtime is None or self.monotonic() < self._next_refresh:
            return
        self._next_refresh = self.monotonic() + self.settings.refresh_interval.total_seconds()
        self.redis_clock.follow()
        now = self.now()
        if self._holds:
            passed = [name for name, hold in self._holds.items() if hold <= now.timestamp()]
            for name in passed:
                del self._holds[name]
        if self._looks_again:
            looks, self._looks_again = self._looks_again, []
            for when, entries in looks:
                if when <= now.timestamp() and not self.outage.active:  # (then once it is back)
                    self._take_over_unsent(entries, now, again=False)
                else:
                    self._looks_again.append((when, entries))
        starting = not self.runtime.complete  # entries not read yet are read "late"
        update = self.runtime.poll(self.static_names)
        if self.monotonic() >= self._next_announce:
            self._next_announce = self.monotonic() + ANNOUNCE_SECONDS
            self.runtime.announce(now, len(self.entries))
        if update is None:
            return
        refused, self._refused_as_changed = self._refused_as_changed, {}
        stopped: list[Entry] = []  # disabled or removed: their unsent claims are asked about
        for name in update.removed:
            previous = self.entries.get(name)
            if previous is not None and previous.enabled:
                stopped.append(previous)
            self.remove_entry(name)
        read_late: list[Entry] = []
        for entry in update.changed:
            since = update.since.get(entry.name)
            previous = self.entries.get(entry.name)
            if not entry.enabled and (previous is None or previous.enabled):
                stopped.append(entry)
            if entry.name not in self.entries and starting:
                read_late.append(self._add_read_late(entry, now, update.added.get(entry.name)))
                continue
            if entry.name not in self.entries:
                since = update.added.get(entry.name, since)  # changed before this replica saw it
            if not self.put_entry(entry, now, since=since):
                self._ask_again_as_changed(entry, refused.get(entry.name, ()), since, now)
        if read_late and self.settings.enabled:
            self.pipeline.note_entries(read_late)
        self._take_over_unsent(stopped, now)

    def _take_over_unsent(
        self, entries: Sequence[Entry], now: datetime, *, again: bool = True
    ) -> None:
        """Ask, takeover-only, about every claim of ``entries`` left unsent: entries disabled
        or removed since this replica read them, or read disabled. Nobody asks about their
        slots any more, so a dead replica's claim of one, won before the change, would stay
        pending for ever, unreported (adversary round 58); a claimed slot is published.

        Not this replica's own fenced claims: it published them (their ``sent`` record lost
        since, say by a failover to a lagging Redis replica: simulator seed 261 published one
        twice), or lost the fence's answer and asks about them again on its own already.

        With ``again``, it looks once more a claim lease (and two refreshes) later: a replica
        that had not read the change yet may still win a slot due before it, then die before
        its fence (adversary round 59); its claim is taken over at the lease."""
        if not entries or not self.settings.enabled:
            return
        if again:
            later = self.settings.claim_lease + 2 * self.settings.refresh_interval
            self._looks_again.append(((now + later).timestamp(), entries))
        try:
            marks = self.backend.high_water_marks([entry.name for entry in entries])
        except BackendUnavailableError:
            if not again:  # the second look is tried again at each refresh (round 60)
                self._looks_again.append((now.timestamp(), entries))
            return
        for entry in entries:
            mark = marks.get(entry.name)
            if mark is None:
                continue
            unsent = set(mark.unsent)
            if not mark.sent:
                unsent.add(mark.slot)
            for slot in sorted(unsent.difference(mark.own_fenced)):
                self.queue.push(now.timestamp(), entry, slot, takeover=True)

    def _ask_again_as_changed(
        self, entry: Entry, slots: Sequence[datetime], since: datetime | None, now: datetime
    ) -> None:
        """Ask again about the slots of ``entry`` refused as ``changed`` when the change read
        (made at ``since``) kept its definition (removed and added again as it was, or only its
        version moved): those after the change are its slots still (each as a retry: its chain
        has moved on). Those before it were refused by an earlier change this replica could
        not read: not its slots (adversary round 41)."""
        for slot in slots:
            if since is None or slot > since:
                self.queue.push(now.timestamp(), entry, slot, retry=True)

    def put_entry(
        self, entry: Entry, now: datetime | None = None, *, since: datetime | None = None
    ) -> bool:
        """Schedule a new or changed entry from its first slot after ``since``; False when it
        is the definition this replica runs already (nothing changes).

        ``since`` is the instant the change was made (a runtime entry's writer computed its
        promised ``next_run`` from it); it defaults to ``now``. The slots up to ``since`` stay
        with the entry's earlier definition: one already due still fires, unless the new
        definition is disabled.
        """
        start = since or now or self.now()
        entry = self._jittered(entry)
        previous = self.entries.get(entry.name)
        if previous is not None and _same_definition(previous, entry):
            return False  # read again (a full reload), not changed: its queued slots stand
        if previous is not None and previous is not entry:
            kept = self._superseded.setdefault(entry.name, {})
            kept[id(previous)] = (previous, start)
            while len(kept) > SUPERSEDED_KEPT:
                del kept[next(iter(kept))]
        self.entries[entry.name] = entry
        self._finished.discard(entry.name)
        self.pipeline.note_entries([entry])
        logger.info("fork scheduler: entry %s (%s)", entry.name, entry.schedule.describe())
        if entry.enabled and self.settings.enabled:
            self._queue_upcoming(entry, start)
        if self.metrics is not None:
            self.metrics.entries.set(len(self.entries))
        return True

    def remove_entry(self, name: str) -> None:
        """Stop scheduling an entry (its queued slots are dropped when they surface)."""
        if self.entries.pop(name, None) is not None:
            logger.info("fork scheduler: entry %s removed", name)
        self._superseded.pop(name, None)
        self._holds.pop(name, None)
        self._finished.discard(name)
        self.parked.forget(name)
        self.catch_up.forget(name)
        if self.ownership is not None:
            self.ownership.forget_entry(name)
        self.outage.reported_entries.pop(name, None)
        self._known_marks.pop(name, None)
        if self.metrics is not None:
            self.metrics.forget(name)
            self.metrics.entries.set(len(self.entries))

    def _handle(self, items: Sequence[QueueItem], now: datetime) -> bool:
        """One tick, streamed chunk by chunk: decide -> claim -> admit -> publish -> record.

        The first chunk is published before the next one is decided, so that the first
        message of a large burst leaves as soon as that of a small one; the next chunk's claim
        runs while this one's messages are published (see :mod:`.lane`). Returns False when
        the claim backend went away (the items not handled are queued again).
        """
        seen: set[tuple[str, datetime]] = set()
        try:
            self.pipeline.record()
        except BackendUnavailableError as exc:
            self._on_backend_down(exc, self._decide(items, now, seen, len(items)), now)
            return False
        chunks = deque(self._chunks(items))
        left = len(items)

        def claim_next() -> ChunkClaim | None:
            nonlocal left
            if not chunks:
                return None
            chunk = chunks.popleft()
            works = self._decide(chunk, now, seen, left)
            left -= len(chunk)
            for work in works:
                for due_slot in work.due:
                    if not self.outage.reported(due_slot):
                        self.reports.due(due_slot)
            return self._start_claim(works)

        ahead: list[ChunkClaim | None] = []  # the next chunk's claim, once started

        def claim_ahead() -> None:
            ahead.append(claim_next())

        with stop_signals_deferred():  # a won claim is published before a normal stop
            current = claim_next()
            since = self.monotonic()  # the chunks' rate: from one's end to the next's
            while current is not None:
                ahead.clear()
                lost = self._run_chunk(current, now, claim_ahead)
                if lost is None:
                    self._note_rate(len(current.due), since)
                    since = self.monotonic()
                    current = ahead[0] if ahead else claim_next()
                    continue
                waiting = [] if lost is not current.error else current.works
                for claim in ahead:
                    if claim is not None:
                        waiting += self._settle_ahead(claim, now)
                rest = [item for later in chunks for item in later]
                self._on_backend_down(lost, waiting + self._decide(rest, now, seen, left), now)
                return False
        return True

    def _decide(
        self, items: Sequence[QueueItem], now: datetime, seen: set[tuple[str, datetime]], left: int
    ) -> list[Work]:
        """Turn due queue items into slots to claim, each with its entry's next slot.

        A slot asked for twice in one tick (say, by a retry and by its entry's chain) is
        claimed once (``seen``: the slots of this tick so far): a replica renews its own unsent
        claim, so a second claim would publish it twice. ``left``: the items of the tick not
        decided yet, these included (the backlog, for :meth:`_shed_backlog`, which runs before
        any claim is made: under overload most slots are shed, and making their task ids and
        messages first took about a third of a replica's time at 100 000 entries a second).
        """
        works: list[Work] = []
        for item in items:
            try:
                work = self._work_for(item, now, seen)
            except Exception as exc:  # one entry's failure is that entry's, never the tick's
                self._entry_broke(item, exc, now)
                continue
            if work is not None:
                works.append(work)
        works = self._shed_backlog(works, left - len(items))
        for work in works:
            entry = work.claims_of
            if entry is None:
                continue
            takeover, foreign = work.item.takeover, work.foreign
            for slot in work.slots:
                try:
                    work.due.append(self._due_slot(entry, slot, takeover=takeover, foreign=foreign))
                except Exception as exc:  # a message that cannot be held back: that slot's
                    self.reports.failed(entry, slot, exc, "preparing the claim of")
                    self.reports.skipped_slot(entry.name, slot, "error")
        return works

    def _work_for(
        self, item: QueueItem, now: datetime, seen: set[tuple[str, datetime]]
    ) -> Work | None:
        """The slots one queue item asks for, or ``None`` when its entry is gone or paused.

        Items follow their entry by name: a retry asks about its slot under the entry's
        current definition, and the chain of an earlier definition still claims the slots
        due up to the change (see :meth:`put_entry`).
        """
        name = item.entry.name
        entry = self.entries.get(name)
        if (entry is None or not entry.enabled) and item.retry and item.takeover:
            # Removed or disabled since (a runtime entry that finished, deleted or disabled by
            # hand): a slot claimed before the change still fires, and a claim of it, unsent,
            # is taken over (seed 8387: the last run's claimant died before its fence, then the
            # entry finished and was deleted, and nobody took the claim over; round 56: this
            # replica's own claim, asked about again after the broker refused it, was dropped
            # once the entry was disabled, and stayed pending, unreported; round 58: see
            # _take_over_unsent). Takeover-only: it never makes a new claim.
            entry = item.entry
        elif entry is None or not entry.enabled:
            return None  # removed or disabled since it was queued
        if name in self._finished and not item.retry:
            return None  # finished: no new slot; a retry still settles its claim
        ownership = self.ownership
        owner = None
        if not item.retry and ownership is not None:
            owner = ownership.other_owner(name)
            if owner and not ownership.shares_config(owner):
                # A rolling deploy of a changed beat_schedule: asked about at once (the owner
                # may define the entry otherwise: a static entry moved to a runtime one too).
                owner = None
        # Another replica's entry: only its slots published longer than the grace ago are
        # this one's business (a slot is published at its jittered instant).
        horizon = now
        if owner is not None and ownership is not None:
            horizon = now - ownership.grace
            publish_at = item.entry.publish_at(item.slot)
            if publish_at > horizon:  # its owner asks first
                trusted = ownership.keeps_up(owner, now, item.slot) if entry is item.entry else None
                if trusted is not None:  # and keeps up: parked until it falls a grace behind
                    self.parked.park(owner, item, trusted)
                else:
                    when = (publish_at + ownership.grace).timestamp()
                    self.deferred.push(when, item.entry, item.slot)
                return None
        until: datetime | None = None
        if item.retry:
            slots = [item.slot]
        elif entry is item.entry:
            after = item.slot - timedelta(microseconds=1)
            slots = slots_due(entry, after, horizon, grace=self.settings.catchup_grace)
        else:
            superseded = self._superseded.get(name, {}).get(id(item.entry))
            if superseded is None:
                return None
            entry, until = superseded
            after = item.slot - timedelta(microseconds=1)
            slots = slots_due(
                entry, after, min(horizon, _reach(entry, until)), grace=self.settings.catchup_grace
            )
        decided = entry.due_edge(horizon)  # a slot still waiting for its jitter comes next
        if owner is not None and ownership is not None and ownership.handled_by(owner, slots, now):
            for slot in slots:
                self.reports.skipped_slot(name, slot, "claimed")
            # the current definition's next slot waits, parked, while the owner keeps up
            park = owner if entry is item.entry else None
            return Work(item, [], entry, until, decided, park_under=park)
        fresh = []
        for slot in slots:
            if (name, slot) not in seen:
                seen.add((name, slot))
                fresh.append(slot)
        follow = None if item.retry else entry
        return Work(
            item,
            [],
            follow,
            until,
            decided,
            slots=fresh,
            claims_of=entry,
            foreign=owner is not None,
        )

    def _entry_broke(self, item: QueueItem, error: Exception, now: datetime) -> None:
        """Report an entry whose slot could not even be prepared (skipped, ``error``), and keep
        it scheduled."""
        entry = item.entry
        self.reports.failed(entry, item.slot, error, "preparing the claim of")
        self.reports.skipped_slot(entry.name, item.slot, "error")
        if item.retry or self.entries.get(entry.name) is not entry:
            return
        with contextlib.suppress(Exception):
            self._queue_upcoming(entry, now)

    def _shed_backlog(self, works: list[Work], undecided: int) -> list[Work]:
        """When this replica is too far behind, keep only each entry's latest due slot.

        A backlog that cannot be published before it is older than the catch-up grace (at the
        rate this replica has been publishing) would only make every entry later still; instead
        each entry gets its newest slot, in turn, and the older ones are reported skipped
        (reason ``"behind"``) — Celery's fire-once, applied under overload.
        """
        backlog = sum(len(work.slots) for work in works) + undecided  # one slot per item left
        capacity = self._claim_rate * self.settings.catchup_grace.total_seconds()
        if backlog <= max(capacity, CLAIM_BATCH):
            return works
        for work in works:
            if len(work.slots) > 1:
                name, entry = work.item.entry.name, work.claims_of or work.item.entry
                kept = _latest_firing(entry, work.slots)
                for slot in work.slots:
                    if slot != kept:
                        self.reports.skipped_slot(name, slot, "behind")
                work.slots = [kept]
        return works

    def _chunks(self, items: Sequence[QueueItem]) -> list[list[QueueItem]]:
        """Split a burst's queue items into claim batches, in an order of this replica's own.

        Every replica cuts the burst at the same places but starts at a different chunk, so
        replicas share a burst instead of racing for the same entries in the same order. All
        the items of one entry go in one chunk, whatever its size: an entry's slots must be
        claimed oldest first, since a claim raises the entry's high-water mark past every
        earlier slot.
        """
        by_entry: dict[str, list[QueueItem]] = {}
        for item in items:
            group = by_entry.get(item.entry.name)
            if group is None:
                by_entry[item.entry.name] = [item]
            else:
                group.append(item)
        groups = sorted(
            (min(item.slot for item in group) if len(group) > 1 else group[0].slot, name, group)
            for name, group in by_entry.items()
        )
        chunks: list[list[QueueItem]] = [[]]
        for _, _, group in groups:
            if chunks[-1] and len(chunks[-1]) + len(group) > CLAIM_BATCH:
                chunks.append([])
            chunks[-1].extend(group)
        start = zlib.crc32(self.backend.replica_id.encode()) % len(chunks)
        return _head_first(chunks[start:] + chunks[:start])

    def _start_claim(self, works: list[Work]) -> ChunkClaim:
        """Start claiming the due slots of a chunk's works, oldest first, in the lane."""
        due = sorted(
            (due_slot for work in works for due_slot in work.due),
            key=lambda due_slot: (due_slot.claim.slot, due_slot.entry.name),
        )
        claims = [slot.claim for slot in due]
        sends = self.pipeline.sends_for(due)
        results = self.pipeline.in_lane(partial(self._claim, claims, sends))
        sent_with_claim = sends is not None and all(send is not None for send in sends)
        return ChunkClaim(works, due, results, sent_with_claim=sent_with_claim)

    def _claim(self, claims: list[Claim], sends: list[Commands | None] | None) -> list[ClaimResult]:
        """The backend's claim of ``claims`` (in the lane), its latency observed; with
        ``sends``, the slots won anew are published in the same step (see
        :meth:`.PublishPipeline.sends_for`)."""
        started = self.monotonic()
        backend = self.backend
        if sends is not None and isinstance(backend, PublishesOnce):
            results = backend.claim_and_send(claims, sends)
        else:
            results = backend.claim(claims)
        if self.metrics is not None and claims:
            self.metrics.claim_latency.observe(self.monotonic() - started)
        return results

    def _run_chunk(
        self, chunk: ChunkClaim, now: datetime, meanwhile: Callable[[], None]
    ) -> BackendUnavailableError | None:
        """Admit one chunk's claims, publish what was won, record it, then queue its entries'
        next slots (after the publish: the messages of a burst go first). ``meanwhile``
        starts the next chunk's claim once this one's first publish is under way.

        Returns the error when the backend went away: ``chunk.error`` when nothing of the
        chunk was claimed or admitted, else after the claims (the won slots not yet fenced are
        then queued to be asked about again).
        """
        next_claim = AtMostOnce(meanwhile)
        if chunk.sent_with_claim:
            next_claim()  # its slots leave with its claim: the next chunk is decided meanwhile
        try:
            results = chunk.results.result()
        except BackendUnavailableError as exc:  # nothing of this chunk was claimed
            chunk.error = exc
            return exc
        self._learn_marks(results)
        admitted, lost = self._admit(chunk.due, results, now)
        if lost is None:
            if chunk.due:  # an empty chunk asked the backend nothing: no sign it is back
                self._outage_ended(now)
            lost = self.pipeline.send(admitted, now, next_claim)
        self._queue_follow_ups(chunk.works, now)
        return lost

    def _settle_ahead(self, chunk: ChunkClaim, now: datetime) -> list[Work]:
        """The next chunk's claim, run in the lane before the backend went away: its answers
        stand (skips reported, a released run published, an entry finished retired) and its
        won slots are asked about again, takeover-only, as the current chunk's are; its
        entries' next slots are queued. Returns its works when the claim itself failed (they
        are queued again)."""
        try:
            results = chunk.results.result()
        except BackendUnavailableError:
            return chunk.works
        self._learn_marks(results)
        admitted, _ = self._admit(chunk.due, results, now)
        self.pipeline.ask_again(admitted, now)
        self._queue_follow_ups(chunk.works, now)
        return []

    def _queue_follow_ups(self, works: Sequence[Work], now: datetime) -> None:
        """Queue the next slot of each work's entry. Slots that came back ``early`` by more
        than :data:`EARLY_CLOCK_CHECK` (decided on a clock that had stepped ahead) are asked
        again once due on Redis's clock (see :meth:`_admit`): a chain resumes from the
        earliest of its own (not one retry per slot: a catchup="all" entry would queue a
        thousand), a retry asks about its slot again (each of a burst of retries too: seed
        5639, shared broker, 11 slots missed when only the earliest was kept)."""
        early = self._early
        if not early:  # the usual case: no per-work lookup on the claim path
            for work in works:
                self._queue_follow_up(work, now)
            return
        for work in works:
            name = work.item.entry.name
            ahead = [
                (early.pop((name, due.claim.slot)), due)
                for due in work.due
                if (name, due.claim.slot) in early
            ]
            if not ahead:
                self._queue_follow_up(work, now)
            elif work.follow is not None:
                when, due = min(ahead, key=lambda pair: pair[1].claim.slot)
                self.queue.push(when, due.entry, due.claim.slot)  # the chain resumes there
            else:
                for when, due in ahead:
                    slot, takeover = due.claim.slot, due.claim.takeover
                    self.queue.push(when, due.entry, slot, retry=True, takeover=takeover)
        early.clear()

    def _queue_follow_up(self, work: Work, now: datetime) -> None:
        """Queue the next slot of a work's entry after the instant its slots were decided up
        to (an earlier definition's only up to its change)."""
        entry = work.follow
        if entry is None or work.item.entry.name in self._finished:
            return
        try:
            upcoming = entry.first_slot_after(work.horizon or now)
        except Exception as exc:  # one entry's failure is that entry's, never the tick's
            self.reports.failed(entry, work.item.slot, exc, "computing the next slot of")
            return
        if upcoming is None or (work.until is not None and upcoming > work.until):
            return
        owner, ownership = work.park_under, self.ownership
        trusted = None if owner is None or ownership is None else ownership.keeps_up(owner, now)
        if owner is not None and trusted is not None:
            item = QueueItem(work.item.entry.publish_at(upcoming).timestamp(), entry, upcoming)
            self.parked.park(owner, item, trusted)
        else:
            self._push_chain(work.item.entry, upcoming)

    def _due_slot(
        self, entry: Entry, slot: datetime, *, takeover: bool = False, foreign: bool = False
    ) -> DueSlot:
        """The claim of one slot. A slot on an exclusion date is claimed too, so that one
        replica records it skipped (``excluded``); it holds no message back and asks no overlap
        policy (the claim script never lets it win)."""
        task_id = task_id_for(entry.name, slot)
        excluded = entry.excludes(slot)
        held, arguments = "", None
        # A slot asked about again (takeover-only) is never held back anew: no message to
        # hold, so a lazy item is called once, at the publish, where a failure gives the
        # claim back (round 66: it raised here, and the claim kept its run and marker).
        if entry.overlap in BUFFERING and not excluded and not takeover:
            built = build_occurrence(entry, slot, task_id)
            held = occurrence_to_json(built)
            if entry.lazy:
                arguments = (built.args, built.kwargs)
        claim = Claim(
            entry.name,
            slot,
            task_id,
            overlap="allow" if excluded else entry.overlap,
            max_runs=entry.max_runs or 0,
            held_message=held,
            takeover=takeover,
            known_mark_us=self._known_marks.get(entry.name, 0),
            runtime=entry.source == "runtime",
            definition=self._definition_read(entry),
            excluded=excluded,
            offset_us=to_epoch_us(entry.publish_at(slot)) - to_epoch_us(slot)
            if entry.effective_jitter
            else 0,
        )
        return DueSlot(entry, claim, foreign=foreign, arguments=arguments)

    def _definition_read(self, entry: Entry) -> int:
        """For a runtime entry, the version of its definition this replica read (0: unknown,
        or a static entry): the claim of a slot after a later change is refused."""
        if self.runtime is None or entry.source != "runtime":
            return 0
        return max(self.runtime.versions.get(entry.name, 0), 0)

    def _learn_marks(self, results: Sequence[ClaimResult]) -> None:
        """Remember, per entry, the latest slot Redis said is claimed or decided.

        Every answer but ``early``, ``error`` and those that record nothing (``changed``,
        ``removed``: the slot's definition no longer holds; ``unknown``: Redis does not know
        either) says so, ``pending`` included: a
        replica that is always a few milliseconds behind the winner hears only ``pending``, and
        must still know the marks it would write back if Redis lost its data.
        """
        known = self._known_marks
        for result in results:
            if result.outcome not in _NO_MARK:
                name, slot_us = result.claim.entry, result.claim.slot_us
                if slot_us > known.get(name, 0):
                    known[name] = slot_us

    def _note_rate(self, count: int, started: float) -> None:
        """Follow how many slots per second this replica claims and publishes."""
        elapsed = self.monotonic() - started
        if count >= RATE_SAMPLE_MIN and elapsed > 0:
            self._claim_rate = 0.7 * self._claim_rate + 0.3 * (count / elapsed)

    def _admit(
        self, due: Sequence[DueSlot], results: Sequence[ClaimResult], now: datetime
    ) -> tuple[list[DueSlot], BackendUnavailableError | None]:
        """The won slots that may be published: retries queued, skips reported, cap applied.

        An entry answered ``finished`` is retired, unless one of its slots of the same batch
        is given back under the cap (its run count then drops below ``max_runs`` again).
        Also the error when the backend went away while taking places under the cap: the won
        slots it could not place are then asked about again (takeover-only) and none is
        admitted.
        """
        won: list[DueSlot] = []
        finished: list[Entry] = []
        taken_over: list[Claim] = []
        if any(
            r.outcome is ClaimOutcome.EARLY and r.retry_after >= EARLY_CLOCK_CHECK for r in results
        ):
            # Redis says a slot is well ahead: this host's clock stepped ahead since it was
            # last measured. Measured again now, the retries wake at their slots on Redis's
            # clock, not a step later (seed 42: a +33 min step, 1 000 retries stranded).
            self.redis_clock.follow()
            now = self.now()
        sent = ClaimOutcome.SENT
        for due_slot, result in zip(due, results, strict=True):
            outcome = result.outcome
            if result.superseded:
                self._report_superseded(result)
            if outcome is sent:  # the usual answer on a shared Redis: sent by the claim
                self.reports.dispatched(due_slot)
                continue
            if outcome.publish:
                if outcome is ClaimOutcome.TAKEN_OVER:
                    taken_over.append(due_slot.claim)
                    self.reports.warn_rate_limited(
                        "taken_over",
                        f"{due_slot.entry.name} slot {slot_isoformat(due_slot.claim.slot)} "
                        "taken over from a replica that did not publish it",
                    )
                won.append(due_slot)
            elif outcome is ClaimOutcome.EARLY and result.retry_after >= EARLY_CLOCK_CHECK:
                # Decided on a clock that stepped ahead: asked again by its chain or its retry
                # (see _queue_follow_ups), at its publish instant on Redis's clock (the answer
                # counts the slot's jitter offset: seed 8393 published a jittered slot at the
                # slot).
                key = (due_slot.entry.name, due_slot.claim.slot)
                self._early[key] = now.timestamp() + result.retry_after
            elif outcome in (ClaimOutcome.PENDING, ClaimOutcome.EARLY):
                when = now.timestamp() + max(result.retry_after, MIN_RETRY_SECONDS)
                takeover = outcome is ClaimOutcome.PENDING
                self.queue.push(
                    when, due_slot.entry, due_slot.claim.slot, retry=True, takeover=takeover
                )
            elif outcome is ClaimOutcome.RELEASED:
                self.reports.skipped(due_slot, result.reason)
                for message in result.dropped:
                    self._report_held(result.claim.entry, message, "unknown")
                self._publish_released(result)
            elif outcome is ClaimOutcome.UNCERTAIN:
                error = DeliveryUncertain(RuntimeError(result.error))
                self.reports.failed(due_slot.entry, due_slot.claim.slot, error, "publishing")
                self.reports.skipped(due_slot, "in_flight")
            elif outcome is ClaimOutcome.ERROR:
                self.reports.failed(
                    due_slot.entry, due_slot.claim.slot, RuntimeError(result.error), "claiming"
                )
                self.reports.skipped(due_slot, "error")
            else:
                if outcome is ClaimOutcome.FINISHED:
                    finished.append(due_slot.entry)
                elif outcome is ClaimOutcome.CHANGED:
                    self._next_refresh = 0.0  # read the change at the next tick
                    refused = self._refused_as_changed.setdefault(due_slot.entry.name, [])
                    refused.append(due_slot.claim.slot)
                self.reports.skipped(due_slot, outcome.value)
        if taken_over:
            self.pipeline.note_taken_over(taken_over, now)
        try:
            admitted, given_back = self._apply_cap(won, now)
        except BackendUnavailableError as exc:
            self.pipeline.ask_again(won, now)
            return [], exc
        for entry in finished:
            if entry.name not in given_back:
                self._retire(entry)
        return admitted, None

    def _report_superseded(self, result: ClaimResult) -> None:
        """A won ``buffer_one`` slot replaced the run held back while no run held the marker
        (its runner died, or its publish failed): that held slot is missed, so say so (once:
        a claim asked again carries the run its first answer carried, see
        :meth:`_first_answer`)."""
        if self._first_answer(result.claim.task_id, result.superseded):
            self._report_held(result.claim.entry, result.superseded, "superseded")

    def _report_held(self, entry: str, message: bytes | str, reason: str) -> None:
        """Report a held-back run (its JSON message) that the claim dropped, skipped ``reason``."""
        try:
            held = occurrence_from_json(message)
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning(
                "fork scheduler: unreadable held-back run of %s %s: %r", entry, reason, exc
            )
            return
        self.reports.skipped_slot(entry, held.slot, reason)

    def _first_answer(self, claim_task_id: str, run: str) -> bool:
        """Whether the run (its message) that a claim's answer carried (a released head, a
        superseded held run) is heard of from that claim for the first time: the claim script
        carries it again when the claim is asked again (its first answer may have been lost:
        round 66). Another claim releasing the same run (put back since) is a new answer."""
        key = (claim_task_id, run)
        if key in self._answered_runs:
            return False
        self._answered_runs[key] = None
        while len(self._answered_runs) > ANSWERED_RUNS_KEPT:
            del self._answered_runs[next(iter(self._answered_runs))]
        return True

    def _publish_released(self, result: ClaimResult) -> None:
        """Publish the queued run of a ``buffer_all`` entry that a claim handed the marker
        (the last runner died): as a worker does when a run ends."""
        held = self._held_runs()
        if held is None:
            return
        if not self._first_answer(result.claim.task_id, result.held):
            return  # this claim's answer was acted on already (published, or put back)
        try:
            held.publish(result.held)
        except HeldNotSent as exc:  # nothing left: put it back at the head of its queue
            logger.warning(
                "fork scheduler: could not send the queued run of %s (%r); it is put back",
                result.claim.entry,
                exc.__cause__ or exc,
            )
            lease = self.settings.singleton_lease.total_seconds()
            end, attempt = self.monotonic() + lease, uuid.uuid4().hex
            self._to_put_back.setdefault(result.held, (result.claim.entry, end, attempt))
            self._put_back_released()
        except Exception as exc:  # the run's marker expires with its lease; the queue goes on
            logger.warning(
                "fork scheduler: could not send the queued run of %s: %r", result.claim.entry, exc
            )

    def _held_runs(self) -> HeldRuns | None:
        """Held runs published and given back through the backend's Redis (none without)."""
        client = getattr(self.backend, "client", None)
        keys = getattr(self.backend, "keys", None)
        if client is None or keys is None:
            return None
        return HeldRuns(
            app=self.app, client=client, keys=keys, settings=self.settings, keep_unrecorded=True
        )

    def _put_back_released(self) -> None:
        """Put back at the head of their queue the released runs Redis kept from leaving
        (their marker freed, nothing recorded), while their marker's lease lasts: the entry's
        next release sends them, in slot order."""
        held = self._held_runs()
        if held is None:
            return
        now = self.monotonic()
        for message, (_, end, attempt) in list(self._to_put_back.items()):
            if end <= now:
                self._drop_put_back(message)
                continue
            try:
                put_back = held.give_back(
                    message, occurrence_from_json(message), "unconfirmed", attempt=attempt
                )
            except Exception:  # Redis still away: at the next tick
                logger.debug("fork scheduler: queued run not put back yet", exc_info=True)
                continue
            if put_back:
                del self._to_put_back[message]
            else:  # its lease ended and the queue moved on (recorded by the script)
                self._drop_put_back(message)

    def _drop_put_back(self, message: bytes | str) -> None:
        """Give up putting back a released run (Redis stayed away for its marker's lease, or
        this replica stops first): it is reported skipped (``redis_unavailable``), never
        dropped without a word (round 66)."""
        entry, _, _ = self._to_put_back.pop(message)
        self._report_held(entry, message, "redis_unavailable")

    def _apply_cap(self, won: list[DueSlot], now: datetime) -> tuple[list[DueSlot], set[str]]:
        """Take places under ``fork_scheduler_max_concurrent`` for the won slots: those that
        find one, and the names of the entries whose slots were given back (``capped``).
        Raises :class:`BackendUnavailableError` when no place could be asked for; a slot
        found over the cap whose skip cannot be recorded is asked about again."""
        cap = self.settings.max_concurrent
        if cap <= 0 or not won:
            return won, set()
        granted = self.backend.take_cap_places([slot.claim for slot in won], cap)
        over = [slot for slot, ok in zip(won, granted, strict=True) if not ok]
        if over:
            try:
                self.backend.mark_skipped([slot.claim for slot in over], "capped")
            except BackendUnavailableError:
                self.pipeline.ask_again(over, now)
                over = []
            for due_slot in over:
                self.reports.skipped(due_slot, "capped")
        admitted = [replace(slot, capped=True) for slot, ok in zip(won, granted, strict=True) if ok]
        return admitted, {due_slot.entry.name for due_slot in over}

    def _retire(self, entry: Entry) -> None:
        """An entry that used up ``max_runs`` is never claimed again; a runtime one is removed."""
        if entry.name in self._finished:
            return
        self._finished.add(entry.name)
        logger.info("fork scheduler: entry %s finished (max_runs %s)", entry.name, entry.max_runs)
        if self.runtime is not None and entry.name not in self.static_names:
            # Only the definition this replica ran out: an update made since (max_runs
            # raised) is newer, and stays (StaleVersionError).
            with contextlib.suppress(Exception):
                self.runtime.store.delete(entry.name, self.runtime.versions.get(entry.name))

    def _on_backend_down(self, exc: Exception, works: Sequence[Work], now: datetime) -> None:
        """Fail closed: publish nothing of ``works`` now, report their slots (once per
        outage), and ask again a second later.

        Their queue items go back unchanged, so that the catch-up rule decides, once Redis is
        back, which of the slots missed meanwhile still fire.
        """
        self.outage.begin(exc, now)
        when = now.timestamp() + BACKEND_RETRY_SECONDS
        for work in works:
            for due_slot in work.due:
                if not due_slot.claim.excluded:  # it would not have fired: not missed
                    self.outage.miss(due_slot)
            item = work.item
            if item.entry.name in self.entries or (item.retry and item.takeover):
                # (a takeover retry follows a removed entry too: see _work_for; round 60)
                self.queue.push(
                    when, item.entry, item.slot, retry=item.retry, takeover=item.takeover
                )

    def _seconds_to_next_wakeup(self) -> float:
        """Until the next slot, bounded by ``beat_max_loop_interval`` and, with runtime
        entries, by ``fork_scheduler_refresh_interval``."""
        longest = float(self.max_interval)
        if not self.static.complete or (self.runtime is not None and self.runtime.loading):
            return 0.0
        if self.runtime is not None:
            longest = min(longest, self.settings.refresh_interval.total_seconds())
        if self.pipeline.unfinished:
            longest = min(longest, BACKEND_RETRY_SECONDS)
        next_read = self.catch_up.seconds_to_next_read()
        if next_read is not None:
            longest = min(longest, next_read)
        wakeups = [w for w in (self.queue.next_wakeup(), self.deferred.next_wakeup()) if w]
        if self.ownership is not None:  # an owner that stopped is seen at once
            look = self.parked.next_look(self.ownership.grace.total_seconds())
            if look is not None:
                wakeups.append(look + MIN_RETRY_SECONDS)
        if not wakeups:
            return longest
        wakeup = min(wakeups)
        return max(0.0, min(wakeup - self.now().timestamp(), longest))

    # -- Celery's Scheduler hooks -------------------------------------------------------------

    def get_schedule(self) -> dict[str, Entry]:
        """The entries, by name."""
        return self.entries

    def set_schedule(self, schedule: Any) -> None:
        """Celery sets an empty ``data`` dict at construction; entries come from setup_schedule."""

    schedule = property(get_schedule, set_schedule)

    def sync(self) -> None:
        """Persist backend state that is kept in memory: the ``sent`` records of slots
        published while Redis blinked, then the backend's own (Celery calls this on a stop)."""
        if self._backend is None:
            return
        if self.pipeline.unfinished:
            unrecorded = len(self.pipeline.unmarked)
            try:
                self.pipeline.record()
            except BackendUnavailableError as exc:
                if unrecorded:
                    logger.warning(
                        "fork scheduler: %d published slot(s) could not be recorded sent (%s); "
                        "the other replicas will report them in_flight",
                        unrecorded,
                        exc,
                    )
                if self.pipeline.unsettled:
                    logger.warning(
                        "fork scheduler: %d slot(s) whose one-step publish lost its answer are "
                        "not settled (%s): each was published and recorded, or is still this "
                        "replica's claim, which another replica takes over after the lease",
                        len(self.pipeline.unsettled),
                        exc,
                    )
        self._backend.sync()
        if self._exit_status:  # Celery's loop stops quietly on SystemExit; beat still fails
            status, self._exit_status = self._exit_status, 0
            raise SystemExit(status)

    def _on_beat_init(self, sender: Any = None, **_: Any) -> None:
        """Celery's ``beat_init``: when its beat service runs this scheduler, the process is
        beat's, whose heap may be settled (see :mod:`.heap`); not a test's or an app's that
        runs a scheduler of its own."""
        if getattr(sender, "scheduler", None) is self:
            self._run_by_beat = True

    def close(self) -> None:
        """Sync, close the backend and release the broker connection; once (Celery closes
        beat's scheduler twice on a stop: a closed Redis Cluster client fails when used)."""
        if self._closed:
            return
        self._closed = True
        signals.beat_init.disconnect(self._on_beat_init)
        if self._to_put_back and self._backend is not None:  # one more try, then reported
            self._put_back_released()
            for message in list(self._to_put_back):
                self._drop_put_back(message)
        try:
            super().close()
        finally:
            if self.runtime is not None:
                self.runtime.forget()
            if self.ownership is not None:
                self.ownership.forget()
            self.pipeline.close()
            if self._backend is not None:
                self._backend.close()

    @property
    def info(self) -> str:
        """Shown in beat's startup banner."""
        with self._config_errors_stop_beat():
            return f"    . fork scheduler -> {self.backend.describe()}"


def _latest_firing(entry: Entry, slots: Sequence[datetime]) -> datetime:
    """The latest of ``slots`` (oldest first) not on an exclusion date of ``entry`` (one that
    is does not stand in for a slot that fires), else the latest."""
    try:
        return next(slot for slot in reversed(slots) if not entry.excludes(slot))
    except Exception:  # none fires, or the entry cannot tell: the latest
        return slots[-1]
