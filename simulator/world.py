"""The simulated cluster: replicas, a faketime'd Redis, a broker log, a worker, an operator.

Everything runs in one thread on virtual time (whole microseconds since the epoch). An event
heap orders replica ticks, worker run ends, operator edits and faults; Redis's clock is the
virtual clock (see :mod:`.redis_proc`), and each replica's wall clock is the virtual clock plus
its own skew. A replica *frozen* at a named point of its tick (a backend or publisher call)
stays on the Python stack while the simulator runs the rest of the world forward; a replica
*killed* at a point gets a private ``BaseException`` that unwinds its stack, and its object is
thrown away (its memory is gone, as with SIGKILL).
"""

from __future__ import annotations

import contextlib
import heapq
import os
import random
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError

import celery_fork_scheduler.backfill as backfill_module
import celery_fork_scheduler.held as held_module
import celery_fork_scheduler.manager as manager_module
import celery_fork_scheduler.scheduler as scheduler_module
import celery_fork_scheduler.shutdown as shutdown_module
import celery_fork_scheduler.worker as worker_module
from celery_fork_scheduler import publishing, signals
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.backends.redis_connection import client_from_url
from celery_fork_scheduler.config import read_settings
from celery_fork_scheduler.errors import BackendUnavailableError
from celery_fork_scheduler.manager import Manager
from celery_fork_scheduler.scheduler import Scheduler

from .model import Message, PublishFault, ReplicaFault, Report, Run, Violation, Window, WorldEvent
from .redis_proc import FakeTimeRedis, us_to_datetime
from .workers import ObservedClient, Workers

SECOND = 1_000_000
#: A tick never takes less than this much virtual time before the next one (beat's loop).
MIN_TICK_US = 1_000
#: A call during CLIENT PAUSE that waits longer than this fails as a client timeout.
CLIENT_TIMEOUT_US = 5 * SECOND
#: A run that takes longer than this (wall seconds) is stopped and reported.
WALL_LIMIT = 120


class Killed(BaseException):
    """Raised inside a replica killed at a named point: unwinds it like SIGKILL would."""


@dataclass
class Replica:
    """One beat replica (one incarnation of a replica slot)."""

    slot: int
    generation: int
    name: str
    config: str
    skew: int  # us added to virtual time for this host's wall clock
    monotonic_base: int
    scheduler: Any = None
    alive: bool = True
    busy: bool = False
    started_at: int = 0
    stopped_at: int | None = None
    how_stopped: str = ""
    frozen: list[Window] = field(default_factory=list)
    #: This replica's own signal handlers (each replica is its own process in production):
    #: what ``signal.signal`` set inside its frames; absent: the process default (beat's).
    handlers: dict[int, Any] = field(default_factory=dict)


class World:
    """One run of the simulated cluster."""

    def __init__(self, scenario: Any, redis_server: FakeTimeRedis, *, trace: bool = False):
        self.scenario = scenario
        self.redis = redis_server
        self.vt: int = scenario.t0
        self.rng = random.Random(scenario.seed * 7919 + 1)
        #: The workers draw from their own generator (the replicas' draws stay the same).
        self.worker_rng = random.Random(scenario.seed * 7919 + 2)
        self.keep_trace = trace
        self.trace: list[tuple[int, str, str]] = []  # (us, entry or "", text)
        self._heap: list[tuple[int, int, str, Any]] = []
        self._seq = 0
        self.replicas: dict[int, Replica] = {}
        self.history: list[Replica] = []
        self.stack: list[Replica] = []
        self.messages: list[Message] = []
        self.reports: list[Report] = []
        self.runs: list[Run] = []
        self.windows: list[Window] = []  # redis faults, data loss, edits...
        self.crashes: list[Violation] = []
        self.paused_until = 0  # CLIENT PAUSE
        self.slow: tuple[int, int, int] | None = None  # (start, end, latency us)
        self.lagging_since: int | None = None
        #: The next start of Redis is a lagging replica's promotion (see _ev_failover).
        self.promoting = False
        self.redis_up = True
        self.replica_faults: list[ReplicaFault] = list(scenario.replica_faults)
        self.publish_faults: list[PublishFault] = list(scenario.publish_faults)
        self.deferred_calls: list[tuple[int, Callable[[], Any]]] = []
        self.apps: dict[str, Celery] = {}
        self.schedulers: dict[int, Replica] = {}
        self.runtime_definitions: dict[str, list[tuple[int, dict[str, Any] | None]]] = {}
        self.pauses: dict[str, list[list[int | None]]] = {}
        self.corrupted: dict[str, int] = {}
        self.uncertain: set[tuple[str, datetime]] = set()
        #: Slots fenced by a replica that was then killed, with the instant of the kill.
        self.killed_fenced: dict[tuple[str, datetime], int] = {}
        self.fenced_by: dict[tuple[str, datetime], str] = {}
        self.won_unfenced: dict[tuple[str, datetime], int] = {}
        self.lost_unfenced: set[tuple[str, datetime]] = set()
        self.triggers: list[tuple[int, str]] = []
        #: When each runtime entry was removed or (re-)added: it starts afresh (runs, pause).
        self.removals: dict[str, list[int]] = {}
        #: When each runtime entry was removed, or added while absent (its held run must go).
        self.fresh_starts: dict[str, list[int]] = {}
        #: Per replica slot, the windows it cannot reach Redis (``--partitions``): (from, to,
        #: how its calls fail: ``refused``, ``timeout`` or ``reply_lost``).
        self.partitions: dict[int, list[tuple[int, int, str]]] = {}
        #: Whether a call in a ``timeout`` partition ran on Redis before its answer was lost.
        self.partition_rng = random.Random(scenario.seed * 7919 + 19)
        #: When each runtime entry was disabled (its held runs go with the write).
        self.disables: dict[str, list[int]] = {}
        self.worker_client: Any = None
        self.worker_app: Any = None
        self.workers: Workers | None = None
        #: What became of held-back runs (buffer_one): (us, entry, what, slot or None).
        self.held: list[tuple[int, str, str, datetime | None]] = []
        #: Runs a worker did not execute (given back: not counted): (us, entry, task id, reason).
        self.worker_skips: list[tuple[int, str, str, str]] = []
        #: Claims the cap refused: (us, entry, slot, places held by other runs, cap).
        self.cap_refusals: list[tuple[int, str, datetime, int, int]] = []
        #: Every Manager.backfill the operator ran (see :class:`Backfill`).
        self.backfills: list[Backfill] = []
        #: The backfills running now (innermost last: one may start inside another's sleep).
        self.backfilling: list[Backfill] = []
        #: The backfills' publishes fail from a generator of their own (the draws above stay).
        self.backfill_rng = random.Random(scenario.seed * 7919 + 6)
        #: The operator as an actor that can wait (a backfill's paced sleep) while the world
        #: runs on; never killed.
        self.operator = Replica(-1, 0, "operator", "", 0, 0)
        #: The workers as an actor that can wait (a replacing run polling TAKE_OVER).
        self.worker_actor = Replica(-2, 0, "workers", "", 0, 0)
        #: app.control.revoke calls of the workers: (us, task id, terminate).
        self.revokes: list[tuple[int, str, bool]] = []
        self._manager: Manager | None = None
        self._events = 0
        self._deadline = time.monotonic() + WALL_LIMIT

    # -- trace and time -----------------------------------------------------------------------

    def log(self, text: str, entry: str = "") -> None:
        """Add a line to the trace (kept always: the checker filters it per entry)."""
        self.trace.append((self.vt, entry, text))

    def now_dt(self) -> datetime:
        """Virtual time (Redis's clock) as an aware datetime."""
        return us_to_datetime(self.vt)

    def _set_time(self, us: int) -> None:
        if us > self.vt:
            self.vt = us
        self.redis.clock_file.set(self.vt)

    def schedule(self, at: int, kind: str, payload: Any = None) -> None:
        """Queue an event."""
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, payload))

    # -- the main loop ------------------------------------------------------------------------

    def run(self) -> None:
        """Run the whole scenario to its end."""
        self._set_time(self.vt)
        self._build_apps()
        self.worker_client = ObservedClient(self, client_from_url(self.redis.url))
        self._manager = Manager(self.apps["v1"], clock=self.now_dt)
        simulate_wait(self, self._manager._redis())
        self.workers = Workers(self)
        # app.control.revoke reaches the simulated workers (a cached property: set it).
        self.worker_app.control = _Control(self.workers)
        self.workers.start_all()
        for event in self.scenario.events:
            self.schedule(event.at, "event", event)
        for fault in self.replica_faults:
            if fault.point == "idle":
                self.schedule(fault.at, "idle_fault", fault)
        for slot, config in enumerate(self.scenario.initial_replicas):
            self.start_replica(slot, config)
        self.run_until(self.scenario.t_end)
        self.finish()

    def run_until(self, end: int) -> None:
        """Process every event due up to ``end`` (re-entrant: a freeze runs the world forward)."""
        while self._heap and self._heap[0][0] <= end:
            self._events += 1
            if self._events % 10_000 == 0 and time.monotonic() > self._deadline:
                raise RuntimeError(f"run took more than {WALL_LIMIT} s of wall time (runaway?)")
            at, _, kind, payload = heapq.heappop(self._heap)
            self._set_time(at)
            self._dispatch(kind, payload)
        self._set_time(end)

    def _dispatch(self, kind: str, payload: Any) -> None:
        if kind == "tick":
            replica = payload
            if replica.alive and not replica.busy:
                self._tick(replica)
        elif kind == "event":
            self._world_event(payload)
        elif kind == "idle_fault":
            self._idle_fault(payload)
        elif kind == "worker":
            self._worker_event(*payload)
        elif kind == "deferred":
            payload()
        elif kind == "start":
            slot, config = payload
            self.start_replica(slot, config)

    # -- replicas -------------------------------------------------------------------------------

    def _build_apps(self) -> None:
        for version, beat_schedule in [*self.scenario.configs.items(), ("worker", {})]:
            app = Celery(f"sim-{version}", set_as_current=False)
            app.conf.update(
                fork_scheduler_singleton_lease=self.scenario.workers.singleton_lease,
                task_reject_on_worker_lost=self.scenario.workers.reject_on_worker_lost,
                broker_url="memory://",
                result_backend=None,
                result_expires=None,
                timezone=self.scenario.timezone,
                beat_schedule=beat_schedule,
                beat_max_loop_interval=self.scenario.max_loop_interval,
                fork_scheduler_redis_url=self.redis.url,
                fork_scheduler_key_prefix="sim:",
                fork_scheduler_max_concurrent=self.scenario.max_concurrent,
                fork_scheduler_history_size=5,
                fork_scheduler_runtime_shards=RUNTIME_SHARDS,
                # A failover is drawn against fork_scheduler_wait_replicas=1 (the WAIT itself is
                # simulated: World.redis_call, SimBackend).
                fork_scheduler_wait_replicas=int(
                    any(event.kind == "lag_start" for event in self.scenario.events)
                ),
            )
            self.apps[version] = app
        self.worker_app = self.apps.pop("worker")

    def start_replica(self, slot: int, config: str) -> None:
        """Start a fresh replica in ``slot`` with config version ``config``."""
        old = self.replicas.get(slot)
        generation = old.generation + 1 if old is not None else 0
        if old is not None and old.alive:
            return
        skew = self.scenario.skews.get(slot, 0)
        replica = Replica(
            slot=slot,
            generation=generation,
            name=f"r{slot}.{generation}",
            config=config,
            skew=skew,
            monotonic_base=self.rng.randrange(10**9, 10**10),
            started_at=self.vt,
        )
        self.replicas[slot] = replica
        self.history.append(replica)
        self.log(f"start replica {replica.name} (config {config}, clock {skew / SECOND:+.3f} s)")
        app = self.apps[config]
        settings = read_settings(app.conf)
        client = client_from_url(self.redis.url)
        pool = client.connection_pool
        pool.connection_class = partitionable(pool.connection_class, self, replica)
        real = RedisBackend(client, settings, sleep=lambda seconds: self.freeze(replica, seconds))
        real.replica_id = replica.name
        real._wait = None  # the WAIT of fork_scheduler_wait_replicas: see World.redis_call
        backend = SimBackend(self, replica, real)
        publisher = (SharedBrokerPublisher if SHARED_BROKER else SimPublisher)(self, replica)

        def build() -> None:
            replica.scheduler = Scheduler(
                app,
                backend=backend,
                publisher=publisher,
                monotonic=lambda: (self.vt + replica.monotonic_base) / SECOND,
                exit_on_config_error=False,
            )
            self.schedulers[id(replica.scheduler)] = replica

        self._call(replica, build)
        if replica.alive:
            self.schedule(self.vt + self.rng.randrange(0, 3000), "tick", replica)

    def replica_clock(self) -> datetime:
        """The wall clock of the replica running now (patched in as ``utc_now``)."""
        replica = self.stack[-1] if self.stack else None
        skew = replica.skew if replica is not None else 0
        return us_to_datetime(self.vt + skew)

    def _tick(self, replica: Replica) -> None:
        result: list[float] = []
        self._call(replica, lambda: result.append(replica.scheduler.tick()))
        if replica.alive and result:
            delay = max(int(result[0] * SECOND), MIN_TICK_US)
            jitter = self.rng.randrange(0, 2000)
            self.schedule(self.vt + delay + jitter, "tick", replica)

    def _call(self, replica: Replica, action: Callable[[], Any]) -> None:
        """Run replica code, turning a kill, a SIGTERM or a crash into the replica's end."""
        self.stack.append(replica)
        replica.busy = True
        try:
            action()
        except Killed:
            self._stopped(replica, "killed")
        except SystemExit:
            self.log(f"{replica.name} stops on SIGTERM (SystemExit)")
            with contextlib.suppress(Exception, Killed):
                if replica.scheduler is not None:
                    replica.scheduler.sync()
                    replica.scheduler.close()
            self._stopped(replica, "sigterm")
        except Exception as exc:
            text = "".join(traceback.format_exception(exc)).strip().splitlines()
            self.crashes.append(
                Violation("crash", "", f"replica {replica.name} crashed: {' | '.join(text[-6:])}")
            )
            self._stopped(replica, "crashed")
        finally:
            self.stack.pop()
            replica.busy = False

    def _stopped(self, replica: Replica, how: str) -> None:
        if replica.stopped_at is None:
            replica.stopped_at = self.vt
            replica.how_stopped = how
        replica.alive = False
        self.log(f"replica {replica.name} {how}")
        # How it ended first: a SIGKILL that lands while a SIGTERM's exit is deferred is a kill.
        for key, owner in self.fenced_by.items():
            if owner == replica.name and replica.how_stopped in ("killed", "crashed"):
                self.killed_fenced.setdefault(key, self.vt)

    def kill(self, replica: Replica, where: str) -> None:
        """SIGKILL ``replica`` (at a named point inside its stack, or between ticks)."""
        self.log(f"kill {replica.name} at {where}")
        replica.alive = False
        if replica.stopped_at is None:
            replica.stopped_at = self.vt
            replica.how_stopped = "killed"

    def freeze(self, replica: Replica, seconds: float) -> None:
        """The replica waits (SIGSTOP, a slow call, a retry sleep): the world runs on."""
        if not replica.alive:
            raise Killed
        until = self.vt + int(seconds * SECOND)
        replica.frozen.append(Window(self.vt, until, "frozen"))
        self.run_until(until)
        replica.frozen[-1].end = self.vt
        if not replica.alive:
            raise Killed

    def hook(self, replica: Replica, point: str) -> None:
        """A named point of the tick: apply the faults drawn for it."""
        if not replica.alive:
            raise Killed
        for fault in self.replica_faults:
            if fault.done or fault.slot != replica.slot or self.vt < fault.at:
                continue
            if fault.point not in (point, "any"):
                continue
            fault.done = True
            self._apply(replica, fault, point)

    def _apply(self, replica: Replica, fault: ReplicaFault, point: str) -> None:
        if fault.restart_after is not None:
            self.schedule(self.vt + fault.restart_after, "start", (fault.slot, replica.config))
        if fault.action == "kill":
            self.kill(replica, point)
            raise Killed
        if fault.action == "freeze":
            self.log(f"freeze {replica.name} at {point} for {fault.duration / SECOND:.3f} s")
            self.freeze(replica, fault.duration / SECOND)
            self.log(f"{replica.name} resumes at {point}")
        elif fault.action == "sigterm":
            self.log(f"SIGTERM to {replica.name} at {point}")
            signal.raise_signal(signal.SIGTERM)

    def _idle_fault(self, fault: ReplicaFault) -> None:
        replica = self.replicas.get(fault.slot)
        if replica is None or not replica.alive:
            return
        if replica.busy:
            fault.point = "any"  # delivered at its next named point
            return
        fault.done = True
        if fault.restart_after is not None:
            self.schedule(self.vt + fault.restart_after, "start", (fault.slot, replica.config))
        if fault.action == "kill":
            self.kill(replica, "idle")
        elif fault.action == "sigterm":
            self.log(f"SIGTERM to {replica.name} between ticks")
            self._call(replica, lambda: signal.raise_signal(signal.SIGTERM))
        elif fault.action == "freeze":
            self.log(f"freeze {replica.name} between ticks for {fault.duration / SECOND:.3f} s")
            self._call(replica, lambda: self.freeze(replica, fault.duration / SECOND))

    # -- Redis ------------------------------------------------------------------------------------

    def redis_call(self, replica: Replica, name: str, call: Callable[[], Any]) -> Any:
        """A backend call as the network and Redis make it: slow, paused, lagging or down."""
        if self.slow is not None and self.slow[0] <= self.vt < self.slow[1]:
            self.freeze(replica, self.slow[2] / SECOND)
        if self.vt < self.paused_until:
            wait = self.paused_until - self.vt
            if wait > CLIENT_TIMEOUT_US:
                # The client gives up; Redis runs the command when the pause ends.
                self.schedule(self.paused_until, "deferred", lambda: _quietly(call))
                self.freeze(replica, CLIENT_TIMEOUT_US / SECOND)
                raise BackendUnavailableError(f"simulated client timeout in CLIENT PAUSE ({name})")
            self.freeze(replica, wait / SECOND)
        result = call()
        if self.lagging_since is not None and name in ("claim", "begin_publish", "publish_once"):
            # fork_scheduler_wait_replicas=1 against a replica that stopped following: the
            # write happened on the master but no replica confirmed it.
            raise BackendUnavailableError("writes confirmed by 0 of 1 Redis replicas (simulated)")
        return result

    def _world_event(self, event: WorldEvent) -> None:
        kind, args = event.kind, event.args
        handler = getattr(self, f"_ev_{kind}")
        handler(**args)

    def _ev_redis_restart(self, keep_data: bool, down: int) -> None:
        self.log(
            f"redis restart {'with its data' if keep_data else 'EMPTY'}, down {down / SECOND:.3f} s"
        )
        if not self.redis_up:
            return
        if keep_data:
            self.redis.save()
        else:
            self.redis.drop_data()
            self.windows.append(Window(self.vt, self.vt + down, "data_loss", "restart empty"))
        self.redis.kill()
        self.redis_up = False
        self.windows.append(Window(self.vt, self.vt + down, "redis_down", "restart"))
        self._note_unfenced_lost()
        self.schedule(self.vt + down, "event", WorldEvent(self.vt + down, "redis_up", {}))

    def _ev_redis_up(self) -> None:
        if self.redis_up:
            return
        self.redis.start()
        if self.promoting:
            # A promoted replica has run for long and was told REPLICAOF NO ONE: its start
            # bounds nothing it lost (the claims' restart rule does not apply), which the
            # command in INFO commandstats says, as on a real promotion.
            self.redis.admin.execute_command("REPLICAOF", "NO", "ONE")
            self.promoting = False
        self.redis_up = True
        self.log("redis is back")

    def _ev_lag_start(self, failover_after: int, down: int) -> None:
        if not self.redis_up:
            return
        self.log("redis replica stops following the master (lag starts)")
        self.redis.save("lag.rdb")
        self.lagging_since = self.vt
        self.schedule(self.vt + failover_after, "event", WorldEvent(0, "failover", {"down": down}))

    def _ev_failover(self, down: int) -> None:
        if self.lagging_since is None or not self.redis_up:
            self.lagging_since = None
            return
        self.log(
            "failover to the lagging replica (writes since lag start lost), "
            f"down {down / SECOND:.3f} s"
        )
        self.windows.append(Window(self.lagging_since, self.vt + down, "data_loss", "failover"))
        self.windows.append(Window(self.lagging_since, self.vt + down, "redis_down", "lagging"))
        self.lagging_since = None
        self.redis.kill()
        self.redis.use_snapshot("lag.rdb")
        self.promoting = True
        self.redis_up = False
        self._note_unfenced_lost()
        self.schedule(self.vt + down, "event", WorldEvent(0, "redis_up", {}))

    def _note_unfenced_lost(self) -> None:
        for key in self.won_unfenced:
            self.lost_unfenced.add(key)
        self.won_unfenced.clear()

    def _ev_client_pause(self, duration: int) -> None:
        self.log(f"CLIENT PAUSE {duration / SECOND:.3f} s")
        self.paused_until = max(self.paused_until, self.vt + duration)
        self.windows.append(Window(self.vt, self.vt + duration, "redis_paused"))

    def _ev_slow(self, duration: int, latency: int) -> None:
        self.log(f"redis slow for {duration / SECOND:.1f} s: {latency / 1000:.0f} ms per call")
        self.slow = (self.vt, self.vt + duration, latency)
        self.windows.append(Window(self.vt, self.vt + duration, "redis_slow"))

    def _ev_partition(self, slot: int, duration: int, how: str) -> None:
        self.log(f"r{slot} cut off from Redis for {duration / SECOND:.3f} s ({how})")
        self.partitions.setdefault(slot, []).append((self.vt, self.vt + duration, how))

    def partitioned(self, replica: Replica) -> str | None:
        """How ``replica``'s Redis calls fail now (``None``: they reach Redis)."""
        for start, end, how in self.partitions.get(replica.slot, []):
            if start <= self.vt < end:
                return how
        return None

    def _ev_clock_step(self, slot: int, step: int) -> None:
        replica = self.replicas.get(slot)
        if replica is None or not replica.alive:
            return
        replica.skew += step
        self.log(f"clock of {replica.name} steps {step / SECOND:+.3f} s")
        self.windows.append(Window(self.vt, self.vt + 2 * SECOND, "clock_step", replica.name))

    def _ev_corrupt(self, entry: str, how: str) -> None:
        if not self.redis_up:
            return
        key = f"sim:{{{entry}}}:state"
        client = self.redis.admin
        with contextlib.suppress(redis.RedisError):
            if how == "hwm":
                client.hset(key, "hwm", "not-a-number")
            else:
                client.delete(key)
                client.set(key, "wrong type")
        self.corrupted.setdefault(entry, self.vt)
        self.log(f"operator corrupts the state of {entry} ({how})", entry)

    def _ev_stop_replica(self, slot: int, how: str) -> None:
        replica = self.replicas.get(slot)
        if replica is None or not replica.alive:
            return
        fault = ReplicaFault(slot, self.vt, "idle", how)
        self._idle_fault(fault)

    def _ev_start_replica(self, slot: int, config: str) -> None:
        self.start_replica(slot, config)

    # -- the operator (Manager) ----------------------------------------------------------------

    def _ev_manage(self, op: str, name: str, definition: dict[str, Any] | None = None) -> None:
        manager = self._manager
        assert manager is not None
        try:
            if op == "add":
                assert definition is not None
                known = self.runtime_definitions.get(name)
                manager.add(name, replace_existing=True, **definition)
                self.removals.setdefault(name, []).append(self.vt)  # added anew: fresh counters
                if not known or known[-1][1] is None:
                    self.fresh_starts.setdefault(name, []).append(self.vt)
                self.runtime_definitions.setdefault(name, []).append((self.vt, definition))
            elif op == "update":
                assert definition is not None
                changes = {k: v for k, v in definition.items() if k not in ("task",)}
                job = manager.update(name, **changes)
                # (an update that does not name ``enabled`` keeps the stored one: a disable
                # lost in a failover is not the entry's any more, seed 341 with --disables)
                definition = {**definition, "enabled": job.enabled}
                self.runtime_definitions.setdefault(name, []).append((self.vt, definition))
            elif op in ("disable", "enable"):
                known = self.runtime_definitions.get(name)
                current = known[-1][1] if known else None
                if current is None:
                    self.log(f"operator {op} {name} skipped: no such entry", name)
                    return
                manager.update(name, enabled=op == "enable")
                definition = {**current, "enabled": op == "enable"}
                self.runtime_definitions.setdefault(name, []).append((self.vt, definition))
                if op == "disable":
                    self.disables.setdefault(name, []).append(self.vt)
            elif op == "remove":
                manager.remove(name)
                self.runtime_definitions.setdefault(name, []).append((self.vt, None))
                self.removals.setdefault(name, []).append(self.vt)
                self.fresh_starts.setdefault(name, []).append(self.vt)
                for interval in self.pauses.get(name, []):
                    if interval[1] is None:
                        interval[1] = self.vt  # a removed entry's state may be forgotten
            elif op == "pause":
                manager.pause(name)
                self.pauses.setdefault(name, []).append([self.vt, None])
            elif op == "resume":
                manager.resume(name)
                for interval in self.pauses.get(name, []):
                    if interval[1] is None:
                        interval[1] = self.vt
            elif op == "trigger":
                self.triggers.append((self.vt, name))
                manager.trigger(name)
        except Exception as exc:
            self.log(f"operator {op} {name} failed: {type(exc).__name__}: {exc}", name)
            return
        self.log(f"operator {op} {name}" + (f" {definition}" if definition else ""), name)

    def _ev_backfill(
        self, name: str, start: int, end: int, rate: float, label: str, overlap: str | None
    ) -> None:
        """The operator backfills ``[start, end]`` of ``name``, paced on virtual time."""
        manager = self._manager
        assert manager is not None
        run = Backfill(label, name, start, end, self.vt)
        self.backfills.append(run)
        self.backfilling.append(run)
        self.log(
            f"operator backfill {label} {name} [{us_to_datetime(start).isoformat()}, "
            f"{us_to_datetime(end).isoformat()}] rate {rate}"
            + (f" overlap={overlap}" if overlap else ""),
            name,
        )
        try:
            results = manager.backfill(
                name,
                us_to_datetime(start),
                us_to_datetime(end),
                rate=rate,
                overlap=overlap,  # type: ignore[arg-type]
                sleep=lambda seconds: self.freeze(self.operator, seconds),
                monotonic=lambda: self.vt / SECOND,
            )
        except Exception as exc:
            run.error = f"{type(exc).__name__}: {exc}"
            self.log(f"operator backfill {label} {name} failed: {run.error}", name)
        else:
            run.results = [(result.slot, result.outcome) for result in results]
            counts: dict[str, int] = {}
            for _, outcome in run.results:
                counts[outcome] = counts.get(outcome, 0) + 1
            self.log(f"operator backfill {label} {name} done: {counts}", name)
        finally:
            run.ended = self.vt
            self.backfilling.remove(run)

    # -- broker and worker ---------------------------------------------------------------------

    def accept(self, replica: str, occurrence: Any, source: str) -> None:
        """The broker takes a message; the worker starts running it."""
        headers = dict(occurrence.headers)
        message = Message(
            occurrence.entry,
            occurrence.slot,
            occurrence.task_id,
            replica,
            self.vt,
            source,
            headers,
        )
        self.messages.append(message)
        self.log(
            f"broker <- {occurrence.entry} slot {occurrence.slot.isoformat()} "
            f"from {replica} ({source})",
            occurrence.entry,
        )
        assert self.workers is not None
        self.workers.put(occurrence, self.vt, 0, "trigger" if source == "trigger" else "first")

    def _worker_event(self, op: str, arg: Any) -> None:
        workers = self.workers
        assert workers is not None
        if op == "dispatch":
            workers.dispatch()
        elif op == "end":
            workers.attempt_end(*arg)
        elif op == "start":
            workers.start(arg)
        elif op == "heartbeat":
            workers.heartbeat()
        elif op == "restart_all":
            workers.restart_all()

    def _ev_worker_stop(self, duration: int) -> None:
        assert self.workers is not None
        self.workers.stop_all(duration)

    def _ev_worker_kill(self, index: int, restart_after: int) -> None:
        assert self.workers is not None
        self.workers.kill(index, restart_after)

    def _ev_worker_child_lost(self, index: int) -> None:
        assert self.workers is not None
        self.workers.child_lost(index)

    def held_event(self, entry: str, what: str, slot: datetime | None = None) -> None:
        """Note what became of a held-back run of ``entry`` (buffer_one)."""
        self.held.append((self.vt, entry, what, slot))
        self.log(f"held-back run of {entry}: {what}", entry)

    def worker_crash(self, what: str, exc: BaseException) -> None:
        """A worker hook raised (Celery would log it and go on)."""
        text = "".join(traceback.format_exception(exc)).strip().splitlines()
        self.crashes.append(
            Violation("crash", "", f"worker hook {what} raised: {' | '.join(text[-6:])}")
        )

    # -- the end --------------------------------------------------------------------------------

    def finish(self) -> None:
        """Close whatever is open (the checker reads Redis afterwards)."""
        for replica in self.replicas.values():
            if replica.alive and replica.scheduler is not None:
                backend = replica.scheduler._backend
                with contextlib.suppress(Exception):
                    backend.real.client.close()
        if self.workers is not None:
            self.workers.finish()
        if self.worker_client is not None:
            with contextlib.suppress(Exception):
                self.worker_client.real.close()


def _quietly(call: Callable[[], Any]) -> None:
    with contextlib.suppress(Exception):
        call()


class SimBackend:
    """The replica's RedisBackend, with named points and the network between."""

    def __init__(self, world: World, replica: Replica, real: RedisBackend) -> None:
        self.world = world
        self.replica = replica
        self.real = real
        self.replica_id = real.replica_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    @property
    def protects_replicas(self) -> bool:
        return True

    @property
    def concurrent_calls(self) -> bool:
        """No: the world freezes a replica inside its calls and runs the others meanwhile, so
        every call runs in the replica's own thread, in the order the lane would run it."""
        return False

    def _around(self, point: str, name: str, call: Callable[[], Any]) -> Any:
        world, replica = self.world, self.replica
        world.hook(replica, f"before_{point}")
        result = world.redis_call(replica, name, call)
        world.hook(replica, f"after_{point}")
        return result

    def high_water_marks(self, entries: Sequence[str]) -> Any:
        return self._around("marks", "marks", lambda: self.real.high_water_marks(entries))

    def claim(self, claims: Sequence[Any]) -> Any:
        return self._claim(claims, lambda: self.real.claim(claims))

    def claim_and_send(self, claims: Sequence[Any], sends: Sequence[Any]) -> Any:
        """The claim that sends its won slots (``--shared-broker``): what it pushed reaches
        the simulated broker as Redis runs it (see :func:`drained`)."""
        return self._claim(claims, drained(self, lambda: self.real.claim_and_send(claims, sends)))

    def publish_once(self, claims: Sequence[Any], commands: Sequence[Any]) -> Any:
        """Fence, publish and record in one script (``--shared-broker``)."""
        world = self.world
        world.hook(self.replica, "before_publish")
        call = drained(self, lambda: self.real.publish_once(claims, commands))
        replies = world.redis_call(self.replica, "publish_once", call)
        for claim in claims:
            world.won_unfenced.pop((claim.entry, claim.slot), None)
        world.hook(self.replica, "after_publish")
        return replies

    def _claim(self, claims: Sequence[Any], claim: Callable[[], Any]) -> Any:
        world = self.world
        world.hook(self.replica, "before_claim")

        def call() -> Any:
            # What became of held-back runs is noted as Redis decides it, also for a claim
            # that Redis runs after its client gave up (CLIENT PAUSE): its answer is lost.
            answers = claim()
            for result in answers:
                outcome = getattr(result.outcome, "value", str(result.outcome))
                if outcome == "buffered":
                    world.held_event(result.claim.entry, "held", result.claim.slot)
                elif outcome in ("won", "taken_over"):
                    world.held.append((world.vt, result.claim.entry, "won", result.claim.slot))
                if result.superseded:
                    slot = publishing.occurrence_from_json(result.superseded).slot
                    world.held_event(result.claim.entry, "superseded", slot)
            return answers

        results = world.redis_call(self.replica, "claim", call)
        for result in results:
            outcome = getattr(result.outcome, "value", str(result.outcome))
            claim = result.claim
            world.reports.append(
                Report(world.vt, self.replica.name, claim.entry, claim.slot, f"claim:{outcome}")
            )
            if outcome in ("won", "taken_over"):
                world.won_unfenced[(claim.entry, claim.slot)] = world.vt
            if outcome not in ("early",):
                world.log(
                    f"{self.replica.name} claim {claim.entry} {claim.slot.isoformat()}"
                    f"{' (takeover)' if claim.takeover else ''} -> {outcome}",
                    claim.entry,
                )
        world.hook(self.replica, "after_claim")
        return results

    def take_cap_places(self, claims: Sequence[Any], cap: int) -> Any:
        world = self.world
        world.hook(self.replica, "before_cap")
        places: set[bytes] = set()

        def call() -> Any:
            # The places held by other runs just before the script runs (same virtual instant).
            with contextlib.suppress(redis.RedisError):
                places.update(
                    world.redis.admin.zrangebyscore("sim:{cap}:running", f"({world.vt}", "+inf")
                )
            return self.real.take_cap_places(claims, cap)

        called_at = world.vt
        granted = world.redis_call(self.replica, "cap", call)
        ids = [claim.task_id.encode() for claim in claims]
        new = sum(
            1 for task_id, ok in zip(ids, granted, strict=True) if ok and task_id not in places
        )
        held_after = 0
        if world.vt != called_at:
            # The backend tried again meanwhile (seed 70033: a replica cut off from Redis, its
            # calls timing out): the script ran later than ``places`` was read, so count the
            # places other runs hold now too.
            with contextlib.suppress(redis.RedisError):
                now_held = world.redis.admin.zrangebyscore(
                    "sim:{cap}:running", f"({world.vt}", "+inf"
                )
                held_after = len(set(now_held) - set(ids)) + sum(1 for ok in granted if ok)
        for claim, task_id, ok in zip(claims, ids, granted, strict=True):
            if ok:
                continue
            others = max(len(places - {task_id}) + new, held_after)  # every place but its own
            world.cap_refusals.append((world.vt, claim.entry, claim.slot, others, cap))
        world.hook(self.replica, "after_cap")
        return granted

    def begin_publish(self, claims: Sequence[Any]) -> Any:
        world = self.world
        world.hook(self.replica, "before_fence")
        held = world.redis_call(
            self.replica, "begin_publish", lambda: self.real.begin_publish(claims)
        )
        for claim, ok in zip(claims, held, strict=False):
            key = (claim.entry, claim.slot)
            world.won_unfenced.pop(key, None)
            if ok:
                world.fenced_by[key] = self.replica.name
                world.reports.append(
                    Report(world.vt, self.replica.name, claim.entry, claim.slot, "fenced")
                )
            else:
                world.log(
                    f"{self.replica.name} fence refused {claim.entry} {claim.slot.isoformat()}: "
                    f"{self._fence_state(claim)}",
                    claim.entry,
                )
        world.hook(self.replica, "after_fence")
        return held

    def _fence_state(self, claim: Any) -> str:
        """What Redis holds for a claim whose fence was refused (for the trace)."""
        keys = self.real.keys
        admin = self.world.redis.admin
        try:
            pending = admin.hget(keys.pending(claim.entry), str(claim.slot_us))
            ttl = admin.pttl(keys.pending(claim.entry))
            state = admin.hgetall(keys.state(claim.entry))
            seconds, micros = admin.time()
        except (redis.RedisError, OSError) as exc:
            return f"Redis unreadable ({exc!r})"
        shown = {k.decode(): v.decode() for k, v in state.items() if k in (b"hwm", b"state")}
        return (
            f"pending={pending!r} pttl={ttl} state={shown} "
            f"redis_time={seconds * SECOND + micros - self.world.vt:+d}us"
        )

    def mark_sent(self, claims: Sequence[Any], *args: Any, **kwargs: Any) -> Any:
        return self._around(
            "record", "mark_sent", lambda: self.real.mark_sent(claims, *args, **kwargs)
        )

    def mark_skipped(self, claims: Sequence[Any], reason: str) -> Any:
        return self.world.redis_call(
            self.replica, "mark_skipped", lambda: self.real.mark_skipped(claims, reason)
        )

    def record_failure(self, claim: Any, error: BaseException) -> Any:
        return self.world.redis_call(
            self.replica, "record_failure", lambda: self.real.record_failure(claim, error)
        )

    def server_time(self) -> datetime:
        result: datetime = self.world.redis_call(self.replica, "server_time", self.real.server_time)
        return result


#: ``scripts/simulate.py --shared-broker``: the broker is the claims' Redis, so claims send
#: their slots (and PUBLISH_ONCE publishes the others) by pushing to :data:`BROKER_LIST`.
SHARED_BROKER = os.environ.get("SIM_SHARED_BROKER") == "1"
#: ``scripts/simulate.py --runtime-shards N``: the runtime entries are stored in N shards.
RUNTIME_SHARDS = int(os.environ.get("SIM_RUNTIME_SHARDS", "1"))
BROKER_LIST = "sim:broker"


def drained(backend: SimBackend, call: Callable[[], Any]) -> Callable[[], Any]:
    """``call`` (a script that may push messages to :data:`BROKER_LIST`), then every message
    pushed handed to the simulated broker, at the instant Redis ran it (also when its answer
    is lost, or when Redis runs it after its client gave up)."""

    def run() -> Any:
        try:
            return call()
        finally:
            world = backend.world
            with contextlib.suppress(redis.RedisError):
                while (raw := world.redis.admin.rpop(BROKER_LIST)) is not None:
                    occurrence = publishing.occurrence_from_json(raw)
                    world.accept(backend.replica.name, occurrence, "beat")

    return run


class SimPublisher:
    """Records what reaches the broker; fails, hangs or dies as the scenario draws."""

    def __init__(self, world: World, replica: Replica) -> None:
        self.world = world
        self.replica = replica

    def _fault(self, kinds: tuple[str, ...]) -> PublishFault | None:
        for fault in self.world.publish_faults:
            if (
                not fault.done
                and fault.slot == self.replica.slot
                and self.world.vt >= fault.at
                and fault.kind in kinds
            ):
                fault.done = True
                return fault
        return None

    def prepare(self) -> None:
        self.world.hook(self.replica, "before_prepare")
        fault = self._fault(("prepare",))
        if fault is not None:
            self.world.log(f"{self.replica.name}: broker connection refused (prepare)")
            raise OperationalError("simulated: broker connection refused")

    def publish(self, occurrence: Any) -> None:
        error = self.publish_many([occurrence])[0]
        if error is not None:
            raise error

    def publish_many(self, occurrences: Sequence[Any]) -> list[Exception | None]:
        world, replica = self.world, self.replica
        world.hook(replica, "before_publish")
        fault = self._fault(("fail", "uncertain", "hang"))
        if fault is not None and fault.kind == "hang":
            world.log(f"{replica.name}: broker hangs {fault.duration / SECOND:.3f} s")
            world.freeze(replica, fault.duration / SECOND)
        if fault is not None and fault.kind == "fail":
            world.log(f"{replica.name}: publish of {len(occurrences)} fails before sending")
            for occurrence in occurrences:
                world.reports.append(
                    Report(world.vt, replica.name, occurrence.entry, occurrence.slot, "send_failed")
                )
            return [OperationalError("simulated: not sent") for _ in occurrences]
        if fault is not None and fault.kind == "uncertain":
            world.log(
                f"{replica.name}: publish of {len(occurrences)} raises with uncertain delivery "
                f"({'delivered' if fault.delivered else 'not delivered'})"
            )
            for occurrence in occurrences:
                world.uncertain.add((occurrence.entry, occurrence.slot))
                if fault.delivered:
                    world.accept(replica.name, occurrence, "beat")
            uncertain = getattr(publishing, "DeliveryUncertain", None)
            cause = OperationalError("simulated: connection lost during the flush")
            if uncertain is not None:
                return [uncertain(cause) for _ in occurrences]
            return [cause for _ in occurrences]
        half = len(occurrences) // 2
        for index, occurrence in enumerate(occurrences):
            if index == half:
                world.hook(replica, "mid_publish")
            world.accept(replica.name, occurrence, "beat")
        world.hook(replica, "after_publish")
        return [None for _ in occurrences]


class SharedBrokerPublisher(SimPublisher):
    """The broker is the claims' Redis (``--shared-broker``): each message is one ``LPUSH`` of
    its occurrence's JSON to :data:`BROKER_LIST`, run by the claim or publish script."""

    def broker_client(self) -> Any:
        return self.world.redis.admin

    def commands_for(self, occurrences: Sequence[Any]) -> list[Any]:
        return [[("lpush", (BROKER_LIST, publishing.occurrence_to_json(o)))] for o in occurrences]

    def known_commands_for(self, slots: Sequence[Any]) -> list[Any]:
        return self.commands_for(
            [publishing.build_occurrence(entry, slot, task_id) for entry, slot, task_id in slots]
        )


@dataclass
class Backfill:
    """One ``Manager.backfill`` of the operator, and what became of it."""

    label: str  # the "replica" of its messages: backfill#<n>
    entry: str
    start: int
    end: int
    began: int
    ended: int | None = None
    #: (slot, outcome) per slot, as ``Manager.backfill`` returned them (None: it raised).
    results: list[tuple[datetime, str]] | None = None
    error: str = ""
    #: Per publish: (slot, us, the entry's hwm in Redis just before it (None: unreadable),
    #: what the simulated broker did: "sent" | "refused" | "uncertain_delivered" |
    #: "uncertain_lost").
    publishes: list[tuple[datetime, int, int | None, str]] = field(default_factory=list)
    #: When its claims were not confirmed by the lagging Redis replica (``WAIT`` answered 0).
    unconfirmed: list[int] = field(default_factory=list)


class LoggingCeleryPublisher:
    """Stands in for CeleryPublisher where the worker (buffer_one) or the Manager publish."""

    world: World | None = None
    source = "worker"

    def __init__(self, app: Any, producer: Any, **kwargs: Any) -> None:
        self.app = app

    def prepare(self) -> None:
        """Nothing to connect."""

    def publish(self, occurrence: Any) -> None:
        world = LoggingCeleryPublisher.world
        assert world is not None
        fail = world.scenario.workers.held_publish_fail
        if fail and world.worker_rng.random() < fail:
            if world.worker_rng.random() < 0.7:
                world.log(f"worker: publish of the held-back {occurrence.entry} refused")
                raise ValueError("simulated: the broker refused the message (not sent)")
            world.log(f"worker: publish of the held-back {occurrence.entry} uncertain")
            world.uncertain.add((occurrence.entry, occurrence.slot))
            raise OperationalError("simulated: connection lost during the publish")
        world.accept("worker", occurrence, "worker")
        world.held.append((world.vt, occurrence.entry, "published", occurrence.slot))

    def publish_many(self, occurrences: Sequence[Any]) -> list[Exception | None]:
        for occurrence in occurrences:
            self.publish(occurrence)
        return [None for _ in occurrences]


_RECEIVERS: dict[str, Any] = {}


def install(world: World) -> None:
    """Point the process-wide patches (clock, signals, publishers) at ``world``."""
    LoggingCeleryPublisher.world = world
    scheduler_module.utc_now = world.replica_clock  # type: ignore[assignment]
    held_module.CeleryPublisher = LoggingCeleryPublisher  # type: ignore[misc,assignment]
    # fork_scheduler_wait_replicas=1, as for the claims (see World.redis_call): a hand-over
    # made while the replica does not follow is not confirmed.
    held_module.HeldRuns.confirmed = lambda self: world.lagging_since is None  # type: ignore[method-assign]
    manager_module.CeleryPublisher = _ManagerPublisher  # type: ignore[misc,assignment]
    backfill_module.CeleryPublisher = _BackfillPublisher  # type: ignore[misc,assignment]
    signal.signal(signal.SIGTERM, _dispatch_signal)
    shutdown_module.signal = _ReplicaSignals()  # type: ignore[assignment]
    worker_module.time = _WorkerTime(world)  # type: ignore[assignment]
    if not _RECEIVERS:
        _connect_signals()
    _RECEIVERS["world"] = world


class _ManagerPublisher(LoggingCeleryPublisher):
    def publish(self, occurrence: Any) -> None:
        world = LoggingCeleryPublisher.world
        assert world is not None
        world.accept("operator", occurrence, "trigger")


class _BackfillPublisher(LoggingCeleryPublisher):
    """Celery's producer as ``Manager.backfill`` uses it: into the broker log, source
    ``backfill``; 1 publish in 12 is refused (not sent) and 1 in 12 raises with uncertain
    delivery (delivered or not), from the world's backfill generator."""

    def publish(self, occurrence: Any) -> None:
        world = LoggingCeleryPublisher.world
        assert world is not None and world.backfilling
        run = world.backfilling[-1]
        hwm: int | None = None
        with contextlib.suppress(Exception):
            raw = world.redis.admin.hget(f"sim:{{{occurrence.entry}}}:state", "hwm")
            hwm = int(float(raw)) if raw is not None else None
        draw = world.backfill_rng.random()
        if draw < 1 / 12:
            run.publishes.append((occurrence.slot, world.vt, hwm, "refused"))
            world.log(f"{run.label}: publish of {occurrence.entry} refused", occurrence.entry)
            raise ValueError("simulated: the broker refused the message (not sent)")
        if draw < 2 / 12:
            delivered = world.backfill_rng.random() < 0.5
            what = "uncertain_delivered" if delivered else "uncertain_lost"
            run.publishes.append((occurrence.slot, world.vt, hwm, what))
            world.log(f"{run.label}: publish of {occurrence.entry} {what}", occurrence.entry)
            if delivered:
                world.accept(run.label, occurrence, "backfill")
            raise OperationalError("simulated: connection lost during the publish")
        run.publishes.append((occurrence.slot, world.vt, hwm, "sent"))
        world.accept(run.label, occurrence, "backfill")


class _Control:
    """The worker app's ``control``: a revoke broadcast reaches the simulated workers."""

    def __init__(self, workers: Workers) -> None:
        self.workers = workers

    def revoke(self, task_id: str, **kwargs: Any) -> None:
        self.workers.revoke(task_id, **kwargs)


class _WorkerTime:
    """``time`` inside ``celery_fork_scheduler.worker``: the monotonic clock is virtual time
    and ``sleep`` (a replacing run polling for the marker) lets the world run on."""

    def __init__(self, world: World) -> None:
        self.world = world

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def monotonic(self) -> float:
        return self.world.vt / SECOND

    def sleep(self, seconds: float) -> None:
        self.world.freeze(self.world.worker_actor, seconds)


def _sigterm(signum: int, frame: Any) -> None:
    """Celery beat's handler: a normal stop raises ``SystemExit`` wherever beat is."""
    raise SystemExit(143)


def _current() -> Replica | None:
    world: World | None = _RECEIVERS.get("world")
    if world is None or not world.stack:
        return None
    return world.stack[-1]


def _dispatch_signal(signum: int, frame: Any) -> None:
    """The process's handler: a stop signal goes to the replica it was sent to (the one
    running now, on top of the stack) and runs *that replica's* handler.

    Replicas nest (a frozen replica runs the world forward inside its frozen call), but in
    production each is its own process: a signal sent to one must never reach the handler that
    another replica installed (its deferral would then stop the wrong replica)."""
    replica = _current()
    handler = replica.handlers.get(signum, _default(signum)) if replica else _default(signum)
    if callable(handler):  # (SIG_IGN, or SIG_DFL of a signal beat does not handle: ignored)
        handler(signum, frame)


class _ReplicaSignals:
    """Stands in for the ``signal`` module inside ``celery_fork_scheduler.shutdown``:
    ``signal.signal`` sets and returns the handler *of the replica running now*, so that the
    real ``stop_signals_deferred`` defers, restores and re-delivers per replica, as it does in
    its own process. Everything else is the real module."""

    def __getattr__(self, name: str) -> Any:
        return getattr(signal, name)

    def signal(self, signum: int, handler: Any) -> Any:
        replica = _current()
        if replica is None:
            return signal.signal(signum, handler)
        previous = replica.handlers.get(signum, _default(signum))
        replica.handlers[signum] = handler
        return previous

    def getsignal(self, signum: int) -> Any:
        replica = _current()
        if replica is None:
            return signal.getsignal(signum)
        return replica.handlers.get(signum, _default(signum))


def _default(signum: int) -> Any:
    return _sigterm if signum == signal.SIGTERM else signal.getsignal(signum)


def _connect_signals() -> None:
    def receiver(kind: str) -> Callable[..., None]:
        def receive(sender: Any = None, **kwargs: Any) -> None:
            world: World | None = _RECEIVERS.get("world")
            if world is None:
                return
            replica = world.schedulers.get(id(sender))
            if replica is None:
                return
            entry, slot = kwargs.get("entry", ""), kwargs.get("slot")
            if not isinstance(slot, datetime):
                return
            reason = str(kwargs.get("reason", ""))
            if kind == "failed":
                exception = kwargs.get("exception")
                reason = type(exception).__name__ if exception is not None else ""
            world.reports.append(Report(world.vt, replica.name, entry, slot, kind, reason))
            if kind != "dispatched":
                world.log(
                    f"{replica.name} {kind} {entry} {slot.isoformat()} {reason}".rstrip(), entry
                )

        return receive

    for kind, sig in (
        ("skipped", signals.entry_skipped),
        ("failed", signals.entry_failed),
        ("dispatched", signals.entry_dispatched),
    ):
        function = receiver(kind)
        _RECEIVERS[kind] = function
        sig.connect(function, weak=False)


def utc(us: int) -> datetime:
    """Alias for readability in scenarios."""
    return us_to_datetime(us)


__all__ = ["SECOND", "Killed", "Replica", "World", "install", "timedelta", "timezone", "utc"]


def partitionable(base: type[Any], world: World, replica: Replica) -> type[Any]:
    """``base`` (a redis-py connection class) whose commands fail while ``replica`` is cut off
    from Redis (``--partitions``): refused before they are sent, sent and then waiting for the
    client timeout (Redis ran them or not), or run by Redis with the answer lost on the way."""

    class PartitionedConnection(base):  # type: ignore[misc, valid-type]
        def send_packed_command(self, command: Any, *args: Any, **kwargs: Any) -> None:
            how = world.partitioned(replica)
            if how == "refused" or (how == "timeout" and world.partition_rng.random() < 0.5):
                if how == "timeout":
                    world.freeze(replica, CLIENT_TIMEOUT_US / SECOND)
                self.disconnect()
                world.log(f"{replica.name}: a Redis call {how} (cut off, not run)")
                raise redis.ConnectionError(f"simulated partition of {replica.name} ({how})")
            super().send_packed_command(command, *args, **kwargs)

        def read_response(self, *args: Any, **kwargs: Any) -> Any:
            how = world.partitioned(replica)
            response = super().read_response(*args, **kwargs)
            if how in ("timeout", "reply_lost"):
                if how == "timeout":
                    world.freeze(replica, CLIENT_TIMEOUT_US / SECOND)
                self.disconnect()
                world.log(f"{replica.name}: a Redis call run, its answer lost (cut off, {how})")
                raise redis.TimeoutError(f"simulated partition of {replica.name} ({how})")
            return response

    return PartitionedConnection


def simulate_wait(world: World, client: Any) -> None:
    """``client``'s ``WAIT`` (``fork_scheduler_wait_replicas``) as the simulated Redis replica
    answers it: every write confirmed, none while it lags (the real ``WAIT`` would block on the
    virtual clock)."""
    execute = client.execute_command

    def execute_command(*args: Any, **options: Any) -> Any:
        if args and str(args[0]).upper() == "WAIT":
            if world.lagging_since is None:
                return int(args[1])
            for run in world.backfilling:
                run.unconfirmed.append(world.vt)
            return 0
        return execute(*args, **options)

    client.execute_command = execute_command
