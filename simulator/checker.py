"""The promises of docs/guarantees.md, stated as invariants over one run's records.

Inputs: the broker log (every message the broker accepted, with the Redis time it arrived),
the runs the simulated worker executed, the reports the replicas sent (``entry_skipped``,
``entry_failed``, ``entry_dispatched`` and the claim answers seen at the backend), the fault
windows, the replicas' lives, and Redis itself at the end.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from celery_fork_scheduler.entry import REPLACING, Entry, entries_from_config, entry_from_config

from .model import Report, Violation, Window
from .redis_proc import datetime_to_us, us_to_datetime
from .world import World

SECOND = 1_000_000

# -- tolerances (all in microseconds of virtual time) ----------------------------------------

#: A replica counts as healthy for a slot only if it was up this long before it (it has loaded
#: its entries and measured Redis's clock).
PRE = 2 * SECOND
#: ... and stays up, unfrozen, this long after it: the claim lease (10 s) for a takeover of a
#: claim whose winner stalled, plus one retry (1 s) and a margin.
HORIZON = 14 * SECOND
#: Freezes shorter than this (a retry sleep, a slow call) do not make a replica unhealthy.
SHORT_FREEZE = SECOND
#: Redis accepts a claim this early by its own clock (EARLY_TOLERANCE of the claim script).
EARLY = 500_000
#: Claim answers that record nothing in Redis: they decide (and supersede) nothing.
_RECORDS_NOTHING = frozenset(
    (
        "claim:early",
        "claim:unknown",
        "claim:removed",
        "claim:disabled",
        "claim:changed",
        "claim:error",
    )
)
#: Scheduling noise allowed on top of EARLY (the simulated tick jitter is 0-2 ms).
EARLY_SLACK = 5_000
#: A replica schedules a jittered slot on its measure of Redis's clock, which may be off by as
#: much as the claim script tolerates for a slot itself (EARLY), plus the scheduling noise.
JITTER_SLACK = EARLY + EARLY_SLACK
#: Slots this close before a loss of Redis data may be lost with it (claimed, not yet fenced:
#: documented), and slots up to this long after Redis is back may be refused by the restored
#: high-water mark: the claim bounds the loss by Redis's uptime, counted in whole seconds and
#: plus one second (the restart instant plus 1-2 s), then adds the 0.5 s early tolerance.
LOSS_BEFORE = 1_500_000
LOSS_AFTER = 2_500_000
#: A runtime change reaches every replica within one refresh (1 s) plus the tick in hand.
REFRESH = 1_600_000
#: A change this close after a slot may come before the replicas handled it.
CHANGE_SLACK = 50_000
#: A removal this close after a slot may reach every replica before one claimed it, and a
#: replica that has seen the removal drops the entry's slots, those already due too
#: (guarantees.md: slots already due at a change still fire "unless the change disables the
#: entry or removes it"). The entry's owner asks at its next tick (the tick in hand, slow on a
#: slow Redis, first), the others only ``fork_scheduler_owner_grace`` (1 s) after the slot, and
#: each tick begins with the refresh that may see the removal (seed 9118: a slot due 0.3 s
#: before the removal, its owner busy publishing on a Redis answering in 163 ms).
REMOVAL_SLACK = 1_600_000
#: Bound on the number of Redis keys: per entry ever defined (state, pending, running,
#: buffered, history) plus global keys.
KEYS_PER_ENTRY = 5
GLOBAL_KEYS = 10
#: Bound on each in-process container of a replica, per entry ever defined (queue items,
#: reported slots, known marks, superseded definitions...), plus a constant.
CONTAINER_PER_ENTRY = 8
CONTAINER_BASE = 200
#: Pending-claim fields left per killed replica at most (one publish batch).
PUBLISH_BATCH = 100

#: catchup="all" after all replicas were down: missed slots older than the grace (5 s) at the
#: restart are the catch-up's, at most MAX_CATCH_UP_SLOTS (1000) of them, all published
#: within this long after the first replica is back.
CATCH_UP_GRACE = 6 * SECOND
MAX_CATCH_UP = 1000
CATCH_UP_SETTLE = 30 * SECOND

#: Skip reasons that excuse a missing slot, with the condition checked for each.
EXCUSES = (
    "paused",
    "finished",
    "busy",
    "buffered",
    "buffer_full",
    "capped",
    "in_flight",
    "behind",
    "error",
)


class Checker:
    """Checks one finished run."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.scenario = world.scenario
        self.zone = ZoneInfo(self.scenario.timezone)
        self.violations: list[Violation] = []
        self.static: dict[str, dict[str, Entry]] = {
            version: entries_from_config(schedule, default_timezone=self.zone)
            for version, schedule in self.scenario.configs.items()
        }
        self.reports: dict[tuple[str, datetime], list[Report]] = defaultdict(list)
        for report in world.reports:
            self.reports[(report.entry, report.slot)].append(report)
        self.published: dict[tuple[str, datetime], list[Any]] = defaultdict(list)
        for message in world.messages:
            if message.source != "trigger":
                self.published[(message.entry, message.slot)].append(message)
        self.loss = [w for w in world.windows if w.kind == "data_loss"]
        #: Runs a worker did not execute (its marker or cap place was another's): given back,
        #: they do not count towards max_runs.
        self.not_run = {task_id for _, _, task_id, _ in world.worker_skips}
        self.lease = self.scenario.workers.singleton_lease * SECOND
        self.redis_trouble = [
            w for w in world.windows if w.kind in ("redis_down", "redis_paused", "data_loss")
        ]

    def fail(self, rule: str, entry: str, text: str, slot: datetime | None = None) -> None:
        self.violations.append(Violation(rule, entry, text, slot))

    # -- entry definitions over time ----------------------------------------------------------

    def runtime_epochs(self, name: str) -> list[tuple[int, int, Entry | None]]:
        """(from, to, entry) for each definition a runtime entry had (None: removed)."""
        changes = self.world.runtime_definitions.get(name, [])
        epochs: list[tuple[int, int, Entry | None]] = []
        for index, (at, definition) in enumerate(changes):
            end = changes[index + 1][0] if index + 1 < len(changes) else self.scenario.t_end
            entry = (
                entry_from_config(name, definition, default_timezone=self.zone, source="runtime")
                if definition is not None
                else None
            )
            epochs.append((at, end, entry))
        # Runtime entries live in Redis: a loss of its data (restart without persistence,
        # failover to a lagging replica) may take them away until they are added again.
        for loss in sorted(self.loss, key=lambda w: w.start):
            cut: list[tuple[int, int, Entry | None]] = []
            for start, end, entry in epochs:
                if entry is not None and loss.start <= start < loss.end:
                    # A change stored inside the window is lost with the data: a failover to a
                    # lagging replica loses the Manager's writes since the lag began (they are
                    # not WAITed for), and the promoted replica never had it (seed 12069: an
                    # update of rt1 to every 5 s, 1.3 s into the lag, was owed after it).
                    cut.append((start, end, None))
                elif entry is not None and start <= loss.start < end:
                    cut += [(start, loss.start, entry), (loss.start, end, None)]
                else:
                    cut.append((start, end, entry))
            epochs = cut
        return epochs

    def healthy(self, start: int, end: int, defines: Any) -> bool:
        """Whether one replica defining the entry was up and unfrozen over [start, end]."""
        for replica in self.world.history:
            if not defines(replica.config):
                continue
            if replica.started_at > start:
                continue
            stopped = replica.stopped_at if replica.stopped_at is not None else self.scenario.t_end
            if stopped < end:
                continue
            if any(
                w.end - w.start >= SHORT_FREEZE and w.start <= end and w.end >= start
                for w in replica.frozen
            ):
                continue
            if any(
                cut_from <= end and cut_to >= start
                for cut_from, cut_to, _ in self.world.partitions.get(replica.slot, [])
            ):
                continue  # cut off from Redis (``--partitions``)
            return True
        return False

    def troubled(self, start: int, end: int, windows: Iterable[Window]) -> bool:
        return any(w.start <= end and w.end >= start for w in windows)

    # -- the invariants -----------------------------------------------------------------------

    def check(self) -> list[Violation]:
        self.violations.extend(self.world.crashes)
        self.check_once_and_early()
        self.check_expected()
        self.check_catch_up()
        self.check_policies()
        self.check_backfills()
        self.check_bounded()
        return self.violations

    def all_definitions(self, name: str) -> list[Entry]:
        found = [config[name] for config in self.static.values() if name in config]
        # Every definition stored, a lost one too (a replica may have loaded it before the loss).
        found += [
            entry_from_config(name, definition, default_timezone=self.zone, source="runtime")
            for _, definition in self.world.runtime_definitions.get(name, [])
            if definition is not None
        ]
        return found

    def check_once_and_early(self) -> None:
        for (name, slot), messages in self.published.items():
            if len(messages) > 1:
                where = ", ".join(f"{m.replica}@{self._t(m.at)}" for m in messages)
                self.fail(
                    "duplicate",
                    name,
                    f"{name} slot {slot.isoformat()} published {len(messages)} times ({where})",
                    slot,
                )
            for message in messages:
                if message.source != "beat":
                    continue
                if message.at < datetime_to_us(slot) - EARLY - EARLY_SLACK:
                    self.fail(
                        "early",
                        name,
                        f"{name} slot {slot.isoformat()} published at "
                        f"{self._t(message.at)}, before Redis's clock reached it",
                        slot,
                    )
            definitions = self.all_definitions(name)
            if not definitions:
                continue
            self._check_jitter(name, slot, messages, definitions)
            if not any(self._is_slot(entry, slot) for entry in definitions):
                self.fail(
                    "not_a_slot",
                    name,
                    f"{name} published {slot.isoformat()}, which is "
                    "not a slot of any of its definitions (or is outside start/end)",
                    slot,
                )

    def _check_jitter(
        self, name: str, slot: datetime, messages: list[Any], definitions: list[Entry]
    ) -> None:
        """Never published before slot + offset (the earliest publish instant of the
        definitions that have the slot), on Redis's clock as the replica measured it."""
        instants = [entry.publish_at(slot) for entry in definitions if self._is_slot(entry, slot)]
        if not instants or min(instants) == slot:
            return
        due = datetime_to_us(min(instants))
        for message in messages:
            if message.source == "beat" and message.at < due - JITTER_SLACK:
                self.fail(
                    "jitter_early",
                    name,
                    f"{name} slot {slot.isoformat()} published at {self._t(message.at)}, "
                    f"before its jittered instant {self._t(due)}",
                    slot,
                )

    @staticmethod
    def _is_slot(entry: Entry, slot: datetime) -> bool:
        if entry.start_at is not None and slot < entry.start_at:
            return False
        if entry.end_at is not None and slot > entry.end_at:
            return False
        previous = entry.schedule.previous_slot(slot)
        return previous == slot

    def _t(self, us: int) -> str:
        return f"+{(us - self.scenario.t0) / SECOND:.3f}s"

    def expected_slots(self) -> list[tuple[str, datetime, Entry]]:
        """Slots that a healthy cluster must publish (or report with a documented reason)."""
        expected: list[tuple[str, datetime, Entry]] = []
        first = self.scenario.t0
        last = self.scenario.t_end - HORIZON
        names = sorted({n for config in self.static.values() for n in config})
        for name in names:
            seen: set[datetime] = set()
            for version, config in self.static.items():
                entry = config.get(name)
                if entry is None:
                    continue
                definers = {v for v, c in self.static.items() if name in c}
                for slot in self._slots(entry, first, last):
                    if slot in seen:
                        continue
                    s = datetime_to_us(slot)
                    if self.healthy(s - PRE, s + HORIZON, definers.__contains__):
                        seen.add(slot)
                        expected.append((name, slot, entry))
                del version
        for name in self.scenario.runtime_names:
            epochs = self.runtime_epochs(name)
            seen_runtime: set[datetime] = set()
            for index, (start, end, entry) in enumerate(epochs):
                if entry is None or not entry.enabled:
                    continue
                low, high = max(first, start - CHANGE_SLACK), min(last, end + REFRESH)
                for slot in self._slots(entry, low, high):
                    s = datetime_to_us(slot)
                    if slot in seen_runtime or not self._runtime_required(epochs, index, slot):
                        continue
                    if self.healthy(s - PRE, s + HORIZON, lambda _config: True):
                        seen_runtime.add(slot)
                        expected.append((name, slot, entry))
        return expected

    def _runtime_required(
        self, epochs: list[tuple[int, int, Entry | None]], index: int, slot: datetime
    ) -> bool:
        """Whether a runtime definition owes ``slot``.

        Clearly in force (from one refresh after it was stored until just before the next
        change): owed. Within a change's refresh: owed when the definitions on both sides of the
        change have that slot (an edit of args or tags must not drop the slot due meanwhile).
        Not owed: a slot due within :data:`REMOVAL_SLACK` before a later removal.
        """
        start, end, _ = epochs[index]
        s = datetime_to_us(slot)
        if s <= self._added_at(epochs, index):
            # ``add`` promises the slots after its instant (seed 20134: an add and an update
            # at the very instant of a slot; the update's window reached back to it)
            return False
        if any(
            at <= s < until and until - at < REFRESH and following is not None
            for (at, until, _), (_, _, following) in itertools.pairwise(epochs)
        ):
            # a definition replaced within one refresh may be read by no replica: its slots
            # before the next change do not fire (guarantees.md, runtime row: "changed twice
            # within one refresh"; seed 60080: two adds with replace_existing 2 ms apart, the
            # first one's next_run due between them)
            return False
        if any(
            (entry is None or not entry.enabled) and at - REMOVAL_SLACK <= s < at + REFRESH
            for at, _, entry in epochs[index + 1 :]
        ):
            return False  # a removal or disable (or loss of data) soon after the slot may drop it
        if start + REFRESH <= s < end - CHANGE_SLACK:
            return True
        if end - CHANGE_SLACK <= s < end + REFRESH:
            # the definition in force at the slot: a second change within the window decides
            # (seed 487: every 5 s -> an edit -> every 3 s 0.7 s later, the slot after both)
            later = [e for at, _, e in epochs[index + 1 :] if at <= max(s, end)] or [None]
            following = later[-1]
            return following is not None and following.enabled and self._is_slot(following, slot)
        if start - CHANGE_SLACK <= s < start + REFRESH:
            previous = epochs[index - 1][2] if index > 0 else None
            return previous is not None and previous.enabled and self._is_slot(previous, slot)
        return False

    @staticmethod
    def _added_at(epochs: list[tuple[int, int, Entry | None]], index: int) -> int:
        """The instant the definition of ``epochs[index]`` was added (the first of the
        definitions in force since the last removal before it)."""
        while index > 0 and epochs[index - 1][2] is not None:
            index -= 1
        return epochs[index][0]

    def _slots(self, entry: Entry, first: int, last: int) -> list[datetime]:
        after, until = us_to_datetime(first), us_to_datetime(last)
        if entry.start_at is not None and after < entry.start_at:
            after = entry.start_at - (us_to_datetime(1) - us_to_datetime(0))
        if entry.end_at is not None and until > entry.end_at:
            until = entry.end_at
        if until <= after:
            return []
        return list(entry.schedule.slots(after, until))

    def check_expected(self) -> None:
        world = self.world
        corrupted = world.corrupted
        for name, slot, entry in self.expected_slots():
            key = (name, slot)
            if key in self.published:
                continue
            s = datetime_to_us(slot)
            if self.troubled(s - SECOND, s + HORIZON, self.redis_trouble):
                continue
            if any(w.start - LOSS_BEFORE <= s <= w.end + LOSS_AFTER for w in self.loss):
                continue
            if self._unmarked_after_restart(name, s):
                continue
            if self._first_claim_after_promotion(name, slot):
                continue
            if key in world.lost_unfenced:
                continue
            killed_at = world.killed_fenced.get(key)
            if killed_at is not None and killed_at + HORIZON > self.scenario.t_end:
                # Fenced by a replica killed so late (say, after a first owner's lease ran out)
                # that the replica asking again after the claim lease reports it (in_flight)
                # only after the run ends (seed 8056: won, killed, taken over 10 s later,
                # fenced and killed again 4.5 s before the end).
                continue
            if key in world.killed_fenced and any(
                s <= at <= s + HORIZON for at in world.removals.get(name, [])
            ):
                # Fenced by a replica killed before its publish (in_flight, documented): the
                # replica asking again after the claim lease reports it, unless the entry is
                # removed before that (seed 89: removed 2 s after the slot, lease 10 s).
                continue
            if name in corrupted and corrupted[name] <= s + HORIZON and self.reports.get(key):
                continue
            if self._paused_at(name, s) or self._finished_before(name, entry, s):
                continue
            if self._singleton_busy(name, s):
                continue
            reasons = self._valid_excuses(name, slot, entry)
            if reasons:
                continue
            said = sorted(
                {
                    f"{r.replica}:{r.kind}{'=' + r.reason if r.reason else ''}"
                    for r in self.reports.get(key, [])
                }
            )
            self.fail(
                "missed",
                name,
                f"{name} slot {slot.isoformat()} ({self._t(s)}) never published while Redis was "
                f"up and a replica healthy; reports: {', '.join(said) or 'none (silent loss)'}",
                slot,
            )

    def check_catch_up(self) -> None:
        """After every replica was down, ``catchup="all"`` publishes each missed slot."""
        for down, up in self.scenario.cold_restarts:
            settled = up + CATCH_UP_SETTLE
            if settled > self.scenario.t_end or self.troubled(down, settled, self.redis_trouble):
                continue
            for name, entry in self.static["v1"].items():
                if entry.catchup != "all" or entry.catchup_window is not None or entry.max_runs:
                    continue
                if name in self.world.pauses or name in self.world.corrupted:
                    continue
                if not self._defined_after(name, down, settled):
                    continue  # a rolling deploy dropped it meanwhile: nobody catches it up
                before = [
                    datetime_to_us(m.slot)
                    for m in self.world.messages
                    if m.entry == name and m.at <= down and m.source == "beat"
                ]
                if not before:
                    continue  # no high-water mark to catch up from
                missed = self._slots(entry, max(before), up - CATCH_UP_GRACE)
                lost = [
                    slot
                    for slot in missed[-MAX_CATCH_UP:]
                    if (name, slot) not in self.published
                    and not self._valid_excuses(name, slot, entry)
                    and not self._redis_troubled_at(slot)
                ]
                if lost:
                    self.fail(
                        "catch_up",
                        name,
                        f"{name} (catchup='all') missed {len(missed)} slots while every replica "
                        f"was down ({self._t(down)} to {self._t(up)}); {len(lost)} never "
                        f"published, first {lost[0].isoformat()}; reports for it: "
                        f"{self._said((name, lost[0]))}",
                        lost[0],
                    )

    def _redis_troubled_at(self, slot: datetime) -> bool:
        """A slot that Redis's trouble excuses (as :meth:`check_expected` does): the catch-up
        owes the slots missed while every replica was down, not those an earlier outage or
        loss of Redis took (seed 8045: a slot due while Redis restarted empty, long before the
        replicas went down, was the first after the last one published)."""
        s = datetime_to_us(slot)
        return self.troubled(s - SECOND, s + HORIZON, self.redis_trouble) or any(
            w.start - LOSS_BEFORE <= s <= w.end + LOSS_AFTER for w in self.loss
        )

    def _defined_after(self, name: str, down: int, settled: int) -> bool:
        """Whether a replica started after the cold restart began defines ``name``: only such
        a replica can catch the entry up (each replica claims only the entries it defines)."""
        return any(
            down <= replica.started_at <= settled and name in self.static.get(replica.config, {})
            for replica in self.world.history
        )

    def _said(self, key: tuple[str, datetime]) -> str:
        said = sorted(
            {
                f"{r.replica}:{r.kind}{'=' + r.reason if r.reason else ''}"
                for r in self.reports.get(key, [])
            }
        )
        return ", ".join(said) or "none (silent loss)"

    def _paused_at(self, name: str, s: int) -> bool:
        for start, end in self.world.pauses.get(name, []):
            stop = end if end is not None else self.scenario.t_end
            if start - EARLY - SECOND <= s <= stop + REFRESH:
                return True
        return False

    def _pause_lost(self, start: int, s: int) -> bool:
        """Whether a loss of Redis data before slot ``s`` took the pause set at ``start``: a
        pause set before the loss, or one stored inside it (a failover's lag: Manager writes
        are not WAITed for, so the pause is lost with the data; seeds 9047, 9117)."""
        return any(
            w.start <= s and (w.start >= start - SECOND or w.start <= start <= w.end)
            for w in self.loss
        )

    def _finished_before(self, name: str, entry: Entry, s: int) -> bool:
        if not entry.max_runs:
            return False
        if self._retired(name, s):
            return True
        since = self._fresh_since(name, s)
        runs = [
            m
            for m in self.world.messages
            if m.entry == name
            and since < m.at <= s + HORIZON
            and m.source != "backfill"  # backfilled runs do not count (documented)
            and m.task_id not in self.not_run
        ]
        failed = {
            r.slot
            for (n, _), rs in self.reports.items()
            if n == name
            for r in rs
            if r.kind == "failed"
        }
        return len(runs) + len(failed) >= entry.max_runs

    def _retired(self, name: str, s: int) -> bool:
        """KNOWN PRODUCT ISSUE (open): a claim that Redis ran after its client gave up (a
        CLIENT PAUSE longer than the socket timeout) counts a run that was never published nor
        given back, so the entry can be answered ``finished`` before it ran ``max_runs`` times
        and is then retired. (The same batch giving a run back under the cap no longer retires
        it.) The slot answered ``finished`` and the later ones are not owed here, so that the
        other rules stay exact; seed 6 shows it, and seed 50 with ``buffer_all`` (queued runs
        count when released, and one that waited past its lease is not run)."""
        since = self._fresh_since(name, s)  # a re-added entry counts its runs afresh
        for (entry, _), reports in self.reports.items():
            if entry != name:
                continue
            for report in reports:
                answered = min(report.at, datetime_to_us(report.slot))  # its own slot too
                if (
                    report.kind == "skipped"
                    and report.reason == "finished"
                    and since < report.at
                    and answered <= s
                ):
                    return True
        return False

    def _fresh_since(self, name: str, s: int) -> int:
        """The latest instant up to ``s`` at which ``name`` was removed or added anew (its run
        counter starts afresh then), or 0."""
        return max((m for m in self.world.fresh_starts.get(name, []) if m <= s), default=0)

    def _singleton_busy(self, name: str, s: int) -> bool:
        return any(
            run.entry == name and run.singleton and run.start - EARLY <= s <= run.end + SECOND
            for run in self.world.runs
        )

    def _valid_excuses(self, name: str, slot: datetime, entry: Entry) -> list[str]:
        key = (name, slot)
        valid = []
        for report in self.reports.get(key, []):
            reason = report.reason if report.kind == "skipped" else report.kind
            if report.kind in ("claim:busy", "claim:buffered", "claim:paused", "claim:buffer_full"):
                reason = report.kind.split(":")[1]  # Redis's answer, before the replica stopped
            if report.kind == "claim:released":
                reason = "buffered"  # queued (buffer_all), the head of the queue released
            if self._excuses(reason, name, key, entry):
                valid.append(reason)
        return valid

    def _excuses(self, reason: str, name: str, key: tuple[str, datetime], entry: Entry) -> bool:
        """Whether a reported reason is a documented exception that applies here."""
        world = self.world
        checks = {
            "busy": entry.singleton,
            "buffered": entry.singleton,
            "buffer_full": entry.overlap == "buffer_all",
            "capped": self.scenario.max_concurrent > 0,
            "in_flight": key in world.killed_fenced or key in world.uncertain,
            "unknown": self._before_a_restart(key[1]),
            "behind": True,
            "error": name in world.corrupted,
            "failed": name in world.corrupted or key in world.uncertain,
            "paused": name in world.pauses,
            "broker_unavailable": any(f.kind == "prepare" and f.done for f in world.publish_faults),
        }
        return checks.get(reason, False)

    def check_policies(self) -> None:
        world = self.world
        # Paused: nothing published for a slot well inside a pause (while Redis kept its data).
        for name, intervals in world.pauses.items():
            for start, end in intervals:
                stop = end if end is not None else self.scenario.t_end
                for message in world.messages:
                    if message.entry != name or message.source == "trigger":
                        continue
                    s = datetime_to_us(message.slot)
                    if start + EARLY + 100_000 < s < stop and message.at < stop:
                        if self._pause_lost(start, s):
                            continue
                        self.fail(
                            "paused",
                            name,
                            f"{name} slot {message.slot.isoformat()} "
                            f"published at {self._t(message.at)} while paused since "
                            f"{self._t(start)}",
                            message.slot,
                        )
        # max_runs / one_off.
        for name in {m.entry for m in world.messages}:
            limits = [e.max_runs for e in self.all_definitions(name) if e.max_runs]
            if not limits:
                continue
            limit = max(limits)
            since = max([0, *world.removals.get(name, [])])  # a re-added entry starts afresh
            sent = sorted(
                (
                    m
                    for m in world.messages
                    if m.entry == name
                    and m.source not in ("trigger", "backfill")  # neither counts (documented)
                    and m.at > since
                    and m.task_id not in self.not_run
                ),
                key=lambda m: m.at,
            )
            if len(sent) > limit:
                extra = sent[limit]
                if any(w.start <= extra.at for w in self.loss):
                    continue  # the run counter went with the data (documented)
                if any(t <= extra.at for t, n in world.triggers if n == name):
                    continue  # a manual trigger counts as a run
                self.fail(
                    "finished",
                    name,
                    f"{name} published {len(sent)} runs, max_runs is "
                    f"{limit} (run {limit + 1}: slot {extra.slot.isoformat()})",
                    extra.slot,
                )
        # Singleton: no two runs of one entry at once.
        by_entry: dict[str, list[Any]] = defaultdict(list)
        for run in world.runs:
            if run.singleton:
                by_entry[run.entry].append(run)
        for name, runs in by_entry.items():
            runs.sort(key=lambda run: run.start)
            # cancel_other / terminate_other: a new run revokes (terminates) the one running
            # and starts only once it stopped, so their runs never overlap either.
            replacing = any(e.overlap in REPLACING for e in self.all_definitions(name))
            for before, after in itertools.pairwise(runs):
                if after.start < before.end:
                    if self._markers_lost(before.start, after.start):
                        continue
                    corrupted = world.corrupted.get(name)
                    if corrupted is not None and corrupted <= after.start:
                        # A broken state fails the marker script: the run starts unchecked,
                        # logged, as while Redis is unreachable (guarantees.md; seed 6381).
                        continue
                    self.fail(
                        "replaced" if replacing else "singleton",
                        name,
                        f"{name}: run of slot {after.slot.isoformat()} "
                        f"started at {self._t(after.start)} while the run of "
                        f"{before.slot.isoformat()} ran until {self._t(before.end)}",
                        after.slot,
                    )
        # The concurrency cap.
        cap = self.scenario.max_concurrent
        if cap > 0:
            points = []
            for run in world.runs:
                if run.capped and run.end > run.start:
                    points.append((run.start, 1, run))
                    points.append((run.end, -1, run))
            points.sort(key=lambda p: (p[0], p[1]))
            executing: list[Any] = []
            for at, delta, run in points:
                if delta > 0:
                    executing.append(run)
                else:
                    executing.remove(run)
                running = len(executing)
                if running > cap and not any(self._markers_lost(r.start, at) for r in executing):
                    self.fail(
                        "capped",
                        run.entry,
                        f"{running} capped runs at {self._t(at)}, "
                        f"fork_scheduler_max_concurrent is {cap}",
                        run.slot,
                    )
                    break

        self.check_cap_refusals()
        self.check_held()
        self.check_queued()
        self.check_removed()

    def _before_a_restart(self, slot: datetime) -> bool:
        """A slot due before Redis came back from a restart (plus the bound's slack): a
        starting replica leaves it to nobody (``unknown``) when the entry's mark predates the
        restart, as documented (Redis may have loaded a snapshot older than the publish)."""
        s = datetime_to_us(slot)
        return any(
            w.kind == "redis_down" and w.detail == "restart" and s <= w.end + LOSS_AFTER
            for w in self.world.windows
        )

    def _unmarked_after_restart(self, name: str, s: int) -> bool:
        """A slot just after Redis restarted (with its data too) of an entry that had no mark
        then: documented (docs/guarantees.md, "Redis loses data"), the claim cannot tell a
        restart from a loss and refuses slots up to Redis's start (by its uptime in whole
        seconds, plus one) plus the early tolerance."""
        for w in self.world.windows:
            if (
                w.kind != "redis_down"
                or w.detail != "restart"
                or not w.end < s <= w.end + LOSS_AFTER
            ):
                continue
            claimed_before = any(
                r.entry == name
                and r.at < w.start
                and r.kind.startswith("claim:")
                and r.kind != "claim:early"
                for r in self.world.reports
            )
            if not claimed_before:
                return True
        return False

    def _first_claim_after_promotion(self, name: str, slot: datetime) -> bool:
        """The entry's first slot claimed after a failover to a lagging replica, answered
        ``claimed``: documented (docs/guarantees.md, "Redis loses data"), a promoted replica's
        start bounds nothing it lost, so the first claim that finds the entry's mark missing
        writes back Redis's current time, and the slot it asked about is not won."""
        for w in self.loss:
            if w.detail != "failover":
                continue
            after = [
                r
                for r in self.world.reports
                if r.entry == name and r.at > w.end and r.kind.startswith("claim:")
            ]
            first_at = min((r.at for r in after), default=None)
            if any(
                r.at == first_at and r.slot == slot and r.kind == "claim:claimed" for r in after
            ):
                return True
        return False

    def _markers_lost(self, start: int, end: int) -> bool:
        """Whether markers and cap places may have gone between ``start`` and ``end``: Redis
        lost its data, or was down (no heartbeat: a marker may expire meanwhile, and a run that
        starts while Redis is unreachable runs unchecked, as documented)."""
        return any(
            w.kind in ("data_loss", "redis_down") and start - SECOND <= w.end and w.start <= end
            for w in self.world.windows
        )

    def check_cap_refusals(self) -> None:
        """The cap refuses a run only when other runs hold every place."""
        for at, name, slot, others, cap in self.world.cap_refusals:
            if others < cap and not self._markers_lost(at, at):
                self.fail(
                    "cap_refused",
                    name,
                    f"{name} slot {slot.isoformat()} refused by the cap at {self._t(at)} while "
                    f"other runs held {others} of {cap} places",
                    slot,
                )

    def check_held(self) -> None:
        """``buffer_one`` holds at most one run and never loses it.

        Per entry, in time order: a slot answered ``buffered`` is held; it stops being held when
        the worker publishes it, drops it as documented (paused, cap full, uncertain publish),
        or a claim wins anew and reports it ``superseded`` (no marker any more: the new run
        replaces it; a win that drops it without saying so is a silent loss), or the operator
        pauses, removes, re-adds or corrupts the entry, or Redis loses its data (a hold written
        inside a failover's lag window is lost with it). A second slot held while one is held
        means the first was lost. A run still held at the end, with nothing of its
        entry left in the queue or on a worker and its last run over for a lease and more, was
        lost too, unless its entry had no slot left to claim after it (past ``end_at``: nothing
        claims it again to supersede it, as documented for ``buffer_all``)."""
        world = self.world
        queues = self._buffer_all_names()
        events: list[tuple[int, int, str, str, Any]] = [
            (at, index, name, what, slot)
            for index, (at, name, what, slot) in enumerate(world.held)
            if name not in queues
        ]
        names = {event[2] for event in events}
        for name, intervals in world.pauses.items():
            for start, _ in intervals:
                events.append((start, -1, name, "operator", None))
        for name, moments in [*world.fresh_starts.items(), *world.disables.items()]:
            for moment in moments:  # (a removal, a fresh add or a disable deletes held runs)
                events.append((moment, -1, name, "operator", None))
        for name, moment in world.corrupted.items():
            # A state hash the operator broke fails every script of the entry, the release of
            # its held run included (reported as errors: seed 5473).
            events.append((moment, -1, name, "operator", None))
        for window in self.loss:
            # A failover to a lagging replica loses the holds written since the lag began too:
            # at its end, a hold made inside the window is gone with the data.
            for name in names:
                events.append((window.start, -1, name, "operator", None))
                events.append((window.end, -1, name, "operator", None))
        events.sort(key=lambda event: (event[0], event[1]))
        held: dict[str, tuple[int, datetime]] = {}
        released: dict[str, tuple[int, datetime]] = {}
        for at, _, name, what, slot in events:
            if what == "held":
                if name in held and held[name][1] != slot:
                    since, first = held[name]
                    self.fail(
                        "buffer_one",
                        name,
                        f"{name}: slot {slot.isoformat()} held back at {self._t(at)} while "
                        f"slot {first.isoformat()} (held since {self._t(since)}) was neither "
                        "published nor dropped: the first was lost",
                        first,
                    )
                held[name] = (at, slot)
            elif what == "released" and name in held:
                released[name] = held.pop(name)  # handed over to the worker's publish
            elif what == "given_back_failed" and name in released:
                held[name] = released.pop(name)  # not sent: held back again
            elif what == "won":
                continue  # superseding a held run is reported ("superseded"), never silent
            else:  # published, superseded, dropped as documented, operator, loss
                held.pop(name, None)
                released.pop(name, None)
        workers = world.workers
        for name, (since, slot) in held.items():
            last_end = max([r.end for r in world.runs if r.entry == name] + [since], default=since)
            if workers is not None and workers.pending(name):
                continue
            if last_end + self.lease + HORIZON > self.scenario.t_end:
                continue
            if not world.redis_up or self._paused_at(name, self.scenario.t_end):
                continue
            orphaned = max([last_end] + [at for at, n, _, _ in world.held if n == name])
            if not self._claimed_after(name, slot, orphaned):
                continue  # never claimed again (past end_at): nothing supersedes it (documented)
            self.fail(
                "buffer_one",
                name,
                f"{name}: slot {slot.isoformat()} held back at {self._t(since)} was never "
                f"published (its entry's last run ended at {self._t(last_end)})",
                slot,
            )

    def _claimed_after(self, name: str, slot: datetime, at: int) -> bool:
        """Whether Redis decided a slot of ``name`` later than ``slot`` after ``at`` (the last
        run ended, or the held run was given back): such a claim supersedes the held run. A
        slot first answered before ``at`` was decided then: replicas asking about it again
        later (``claimed``) decide nothing (seed 5403: the entry's last slot, decided before
        a refused hand-over was given back). A slot first answered ``busy`` found the marker
        still held and superseded nothing (seed 10283: the marker of a slot killed after its
        fence outlived the entry's last slots). Answers that record nothing decide nothing
        (seed 50700 with ``--disables``: ``unknown`` after a restart, then the chain ended at
        its ``end_at``)."""
        for (entry, later), reports in self.reports.items():
            if entry != name or later <= slot:
                continue
            answers = [
                (report.at, report.kind)
                for report in reports
                if report.kind.startswith("claim:") and report.kind not in _RECORDS_NOTHING
            ]
            if answers and min(answers)[0] > at and min(answers)[1] != "claim:busy":
                return True
        return False

    def _buffer_all_names(self) -> set[str]:
        """The entries that had overlap ``buffer_all`` in some definition."""
        names = {m.entry for m in self.world.messages} | {e for _, e, _, _ in self.world.held}
        return {
            name
            for name in names
            if any(e.overlap == "buffer_all" for e in self.all_definitions(name))
        }

    def check_queued(self) -> None:
        """``buffer_all`` runs its queued slots in slot order, each once: the runs of such an
        entry are published in increasing slot order (manual triggers aside), unless Redis lost
        the markers and the queue in between. (No two at once: the singleton rule above.)"""
        world = self.world
        for name in self._buffer_all_names():
            sent = sorted(
                (
                    m
                    for m in world.messages
                    if m.entry == name and m.source not in ("trigger", "backfill")
                ),
                key=lambda m: m.at,
            )
            for before, after in itertools.pairwise(sent):
                if after.slot > before.slot or self._markers_lost(before.at, after.at):
                    continue
                if any(
                    before.at <= moment <= after.at for moment in world.fresh_starts.get(name, [])
                ):
                    continue
                if self._fenced_before(after, before.at) and not self._ran_after_later(
                    name, after.slot
                ):
                    # Won and fenced before the later slot was published, then its publisher
                    # stalled: after the fence nobody else publishes it, so it arrives late
                    # (guarantees.md). It never queued, and it did not run after a later slot.
                    continue
                if self._won_lease_before(after) and not self._ran_after_later(name, after.slot):
                    # Won, then left unpublished for longer than the singleton lease (its
                    # claimant froze, another replica took it over): its marker expired, so a
                    # later slot could win and run first. It never queued, and it did not run
                    # after the later slot (singleton.md, "A run that waited": skipped busy).
                    continue
                self.fail(
                    "buffer_all",
                    name,
                    f"{name}: slot {after.slot.isoformat()} published at {self._t(after.at)} "
                    f"after slot {before.slot.isoformat()} (published at {self._t(before.at)}): "
                    "not in slot order, or twice",
                    after.slot,
                )

    def _fenced_before(self, message: Any, at: int) -> bool:
        """Whether the replica that published ``message`` fenced its slot before ``at``."""
        return message.source == "beat" and any(
            report.kind == "fenced" and report.replica == message.replica and report.at <= at
            for report in self.reports.get((message.entry, message.slot), [])
        )

    def _won_lease_before(self, message: Any) -> bool:
        """Whether ``message``'s slot was won a singleton lease or more before it was sent."""
        return any(
            report.kind == "claim:won" and message.at - report.at >= self.lease
            for report in self.reports.get((message.entry, message.slot), [])
        )

    def _ran_after_later(self, name: str, slot: datetime) -> bool:
        """Whether the run of ``slot`` started after a run of a later slot of ``name`` did."""
        mine = [run.start for run in self.world.runs if run.entry == name and run.slot == slot]
        return any(
            run.entry == name
            and run.slot > slot
            and run.start < start
            and not self._markers_lost(run.start, start)
            for start in mine
            for run in self.world.runs
        )

    def check_removed(self) -> None:
        """Paused, disabled and removed entries publish nothing; a re-added entry starts afresh."""
        world = self.world
        for message in world.messages:
            name = message.entry
            if message.source == "worker":
                # The held-back run: the release checks the pause, a removal deletes it.
                for start, end in world.pauses.get(name, []):
                    stop = end if end is not None else self.scenario.t_end
                    if start < message.at < stop and not self._markers_lost(start, message.at):
                        self.fail(
                            "paused",
                            name,
                            f"{name}: held-back slot {message.slot.isoformat()} published at "
                            f"{self._t(message.at)} while paused since {self._t(start)}",
                            message.slot,
                        )
                for moment in world.fresh_starts.get(name, []) + world.disables.get(name, []):
                    if datetime_to_us(message.slot) < moment < message.at and not (
                        self._markers_lost(moment, message.at)
                    ):
                        self.fail(
                            "stale",
                            name,
                            f"{name}: held-back slot {message.slot.isoformat()} published at "
                            f"{self._t(message.at)}, after its entry was removed, disabled or "
                            f"added anew at {self._t(moment)}",
                            message.slot,
                        )
            if name not in self.scenario.runtime_names or message.source == "trigger":
                continue
            epochs = self.runtime_epochs(name)
            for start, end, entry in epochs:
                if (entry is not None and entry.enabled) or not start <= message.at < end:
                    continue
                if message.source == "beat" and message.at < start + REFRESH:
                    continue  # a replica may not have seen the removal yet
                if message.source == "beat" and datetime_to_us(message.slot) < start:
                    # Due before the removal, so claimed before it (the claim script refuses a
                    # removed entry's slots): a change never drops a slot already due, however
                    # long its publish then takes.
                    continue
                if self._markers_lost(start, message.at):
                    continue
                self.fail(
                    "removed",
                    name,
                    f"{name}: slot {message.slot.isoformat()} published at "
                    f"{self._t(message.at)} ({message.source}) while the entry was "
                    f"{'removed' if entry is None else 'disabled'} (since {self._t(start)})",
                    message.slot,
                )

    def check_backfills(self) -> None:
        """``Manager.backfill`` publishes only what was never published, and says so.

        - ``backfill_republished``: a backfill never publishes a slot that reached the broker
          before (from any source but a manual trigger, whose slot is its own instant), unless
          Redis lost its data in between (the history and the backfill hash went with it).
          A later publish of a backfilled slot is the ``duplicate`` rule's.
        - ``backfill_undecided``: never a slot after Redis's clock, nor after the entry's
          high-water mark as Redis held it just before the publish (the scheduler has not
          decided it), unless Redis lost its data since the backfill began.
        - ``backfill_report``: the per-slot result agrees with the broker: ``sent`` has its
          message from this backfill, a ``failed`` one only if the broker took it although the
          publish raised, every other outcome none; every message of the backfill is in its
          result (when it returned one).
        - ``backfill_order``: one backfill publishes its slots in increasing slot order.
        """
        world = self.world
        for run in world.backfills:
            mine = [m for m in world.messages if m.replica == run.label]
            lost = any(
                w.start <= (run.ended or self.scenario.t_end) and w.end >= run.began
                for w in self.loss
            )
            for message in mine:
                slot_us = datetime_to_us(message.slot)
                earlier = [
                    m
                    for m in self.published.get((message.entry, message.slot), [])
                    if m is not message
                    and m.at <= message.at
                    and m.replica != run.label
                    and not any(m.at <= w.start <= message.at for w in self.loss)
                ]
                if earlier:
                    self.fail(
                        "backfill_republished",
                        message.entry,
                        f"{run.label} published {message.entry} slot {message.slot.isoformat()} "
                        f"at {self._t(message.at)}, already published by "
                        f"{earlier[0].replica} ({earlier[0].source}) at {self._t(earlier[0].at)}",
                        message.slot,
                    )
                hwm = next((h for s, _, h, _ in run.publishes if s == message.slot), None)
                if not lost and (slot_us > message.at or hwm is None or slot_us > hwm):
                    self.fail(
                        "backfill_undecided",
                        message.entry,
                        f"{run.label} published {message.entry} slot {message.slot.isoformat()} "
                        f"at {self._t(message.at)}, beyond Redis's clock or the entry's "
                        f"high-water mark ({self._t(hwm) if hwm is not None else 'none'})",
                        message.slot,
                    )
            for before, after in itertools.pairwise(mine):
                if after.slot <= before.slot:
                    self.fail(
                        "backfill_order",
                        run.entry,
                        f"{run.label} published slot {after.slot.isoformat()} after "
                        f"{before.slot.isoformat()}",
                        after.slot,
                    )
            if run.results is None:
                continue
            fates = {slot: what for slot, _, _, what in run.publishes}
            sent = Counter(m.slot for m in mine)
            reported = {slot for slot, _ in run.results}
            for slot, outcome in run.results:
                if outcome == "sent":
                    ok = sent[slot] == 1
                elif outcome == "failed" and fates.get(slot) is None and run.unconfirmed:
                    ok = sent[slot] == 0  # its claim unconfirmed by the lagging Redis replica
                elif outcome == "failed":
                    delivered = fates.get(slot) == "uncertain_delivered"
                    ok = sent[slot] == (1 if delivered else 0) and fates.get(slot) not in (
                        None,
                        "sent",
                    )
                else:
                    ok = sent[slot] == 0
                if not ok:
                    self.fail(
                        "backfill_report",
                        run.entry,
                        f"{run.label} reported {run.entry} slot {slot.isoformat()} {outcome!r}; "
                        f"the broker took {sent[slot]} message(s) of it from this backfill "
                        f"(publish: {fates.get(slot, 'none')})",
                        slot,
                    )
            for slot in sent:
                if slot not in reported:
                    self.fail(
                        "backfill_report",
                        run.entry,
                        f"{run.label} published {run.entry} slot {slot.isoformat()} but its "
                        "result does not list the slot",
                        slot,
                    )

    def check_bounded(self) -> None:
        world = self.world
        names = set(self.scenario.runtime_names)
        for config in self.static.values():
            names.update(config)
        if world.redis_up:
            client = world.redis.admin
            keys = client.dbsize()
            limit = KEYS_PER_ENTRY * len(names) + GLOBAL_KEYS
            if keys > limit:
                self.fail("bounded", "", f"{keys} Redis keys at the end, more than {limit}")
            kills = sum(1 for r in world.history if r.how_stopped in ("killed", "crashed"))
            pending = 0
            for name in names:
                pending += (
                    client.hlen(f"sim:{{{name}}}:pending")
                    if client.type(f"sim:{{{name}}}:pending") == b"hash"
                    else 0
                )
            limit = 3 * len(names) + kills * PUBLISH_BATCH + len(world.uncertain)
            if pending > limit:
                self.fail(
                    "bounded", "", f"{pending} pending claims left in Redis, more than {limit}"
                )
        limit = CONTAINER_PER_ENTRY * len(names) + CONTAINER_BASE
        if self.scenario.cold_restarts:
            limit += MAX_CATCH_UP  # a catch-up of catchup="all" queues up to 1000 slots
        for replica in world.replicas.values():
            if not replica.alive or replica.scheduler is None:
                continue
            for attr, value in vars(replica.scheduler).items():
                size = _size(value)
                if size is not None and size > limit:
                    self.fail(
                        "bounded",
                        "",
                        f"{replica.name}.{attr} holds {size} items at the end, more than {limit}",
                    )


def _size(value: Any) -> int | None:
    if isinstance(value, (set, frozenset, dict, list)):
        return len(value)
    if type(value).__name__ == "TimeQueue":
        return len(value)
    return None


def counts(world: World) -> Counter[str]:
    """What a run did, for the summary line."""
    result: Counter[str] = Counter()
    result["published"] = sum(1 for m in world.messages if m.source == "beat")
    result["replicas"] = len(world.history)
    return result
