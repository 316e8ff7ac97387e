"""The simulated broker queue and Celery workers, driving the real worker hooks.

Every message the broker accepts waits in a FIFO queue until a worker receives it (workers can
be down, busy or stopped: the queue delay can outlast the singleton lease). A worker is one
consumer process (the hooks that see ``task_received``, and, under prefork, the pool's parent
that reports a hard time limit or a lost child) and ``concurrency`` pool processes (each with
its own hooks: ``task_prerun``, ``task_postrun``, ``task_failure`` run where the task runs; the
solo pool runs tasks in the consumer process). The hooks are the real
:class:`celery_fork_scheduler.worker.WorkerHooks`, called the way Celery calls them, so the
real scripts (START_SINGLETON, START_CAP, RELEASE, GIVE_BACK_HELD, RECORD_SKIP,
TAKE_CAP_PLACES, HEARTBEAT, CAP_HEARTBEAT) hold and free the markers. The heartbeat thread is
replaced by one pass of the real ``_beat_hearts`` every third of the lease, on virtual time.

An attempt ends in success, a retry (``task.retry()``: the same task id is sent again with a
countdown), a failure, a hard time limit (prefork: the pool kills the process, the parent
reports), or not at all: a lost pool process (redelivered with ``acks_late`` and
``task_reject_on_worker_lost``) or a killed worker (its reserved messages are redelivered, and
with ``acks_late`` the executing ones too).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from billiard.exceptions import TimeLimitExceeded
from celery.exceptions import Ignore, WorkerLostError
from celery.worker import state as worker_state

import celery_fork_scheduler.worker as worker_module
from celery_fork_scheduler.backends import lua
from celery_fork_scheduler.backfill import BACKFILL_HEADER
from celery_fork_scheduler.ids import CAPPED_HEADER, ENTRY_HEADER, OVERLAP_HEADER

from .model import Run

if TYPE_CHECKING:
    from .world import World

SECOND = 1_000_000
#: Messages a worker reserves beyond its pool processes (Celery's prefetch).
PREFETCH_EXTRA = 2


class FakeRequest:
    """What the hooks read of a Celery request / task context."""

    def __init__(self, task_id: str, headers: dict[str, Any], hostname: str, retries: int):
        self.id = task_id
        self.hostname = hostname
        self.retries = retries
        self.request_dict = dict(headers)

    def get(self, name: str, default: Any = None) -> Any:
        return self.request_dict.get(name, default)


class FakeTask:
    """What the hooks read of a task: its app, its request, ``acks_late``."""

    def __init__(self, app: Any, request: FakeRequest, acks_late: bool) -> None:
        self.app = app
        self.request = request
        self.acks_late = acks_late
        self.name = "sim.task"


class _OnePass:
    """Stands in for the heartbeat thread's stop event: ``_beat_hearts`` runs one pass."""

    def __init__(self) -> None:
        self.calls = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.calls += 1
        return self.calls > 1

    def set(self) -> None:
        """Nothing to stop."""


@dataclass
class Delivery:
    """One message in the broker's queue (a first delivery, a retry or a redelivery)."""

    occurrence: Any
    available: int
    retries: int
    source: str
    seq: int = 0


@dataclass
class Attempt:
    """One delivery being handled by a worker."""

    delivery: Delivery
    worker: Worker
    request: FakeRequest
    task: FakeTask
    proc: Proc | None = None
    run: Run | None = None
    ended: bool = False


@dataclass
class Proc:
    """A pool process (prefork) or the worker itself (solo)."""

    hooks: Any
    attempt: Attempt | None = None


@dataclass
class Worker:
    """One worker process (one incarnation)."""

    index: int
    name: str
    pool: str
    parent: Any
    procs: list[Proc]
    reserved: list[Attempt] = field(default_factory=list)
    alive: bool = True
    consuming: bool = True
    #: Task ids revoked while this incarnation was up, or known to a live worker when it
    #: started (Celery keeps them in memory and shares them at start: mingle).
    revoked: set[str] = field(default_factory=set)


class Workers:
    """The broker queue and the workers of one run."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.setup = world.scenario.workers
        self.app = world.worker_app
        self.queue: list[Delivery] = []
        self.workers: dict[int, Worker] = {}
        #: Every incarnation: one replaced by a fresh process may still finish its runs.
        self.every: list[Worker] = []
        self.generation: dict[int, int] = {}
        self._seq = 0
        self.lease = self.setup.singleton_lease * SECOND

    # -- hooks --------------------------------------------------------------------------------

    def _hooks(self) -> Any:
        hooks = worker_module.WorkerHooks(self.app)
        hooks._client = self.world.worker_client
        hooks._heartbeat_pid = os.getpid()  # no thread: the simulator beats its hearts
        return hooks

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        """Call a hook as Celery would: an exception in a signal handler is logged, not raised
        (Celery's signal dispatch catches it); here it is also reported as a crash."""
        try:
            return call()
        except Ignore:
            raise
        except Exception as exc:
            self.world.worker_crash(what, exc)
            return None

    # -- workers ----------------------------------------------------------------------------

    def start_all(self) -> None:
        for index in range(len(self.setup.pools)):
            self.start(index)
        self.world.schedule(self.world.vt + self.lease // 3, "worker", ("heartbeat", None))

    def start(self, index: int) -> None:
        pool, concurrency = self.setup.pools[index]
        generation = self.generation.get(index, -1) + 1
        self.generation[index] = generation
        parent = self._hooks()
        procs = [Proc(self._hooks()) for _ in range(concurrency)] if pool == "prefork" else []
        if pool == "solo":
            procs = [Proc(parent)]
        worker = Worker(index, f"w{index}.{generation}", pool, parent, procs)
        # Celery's mingle: a worker that starts asks the live ones for the ids they revoked.
        for other in self.every:
            if other.alive:
                worker.revoked |= other.revoked
        self.workers[index] = worker
        self.every.append(worker)
        self._call("worker_ready", parent._mark_seen)
        self.world.log(f"worker {worker.name} up ({pool}, {len(procs)} process(es))")
        self.dispatch()

    def heartbeat(self) -> None:
        """One pass of every live hooks object's real heartbeat loop."""
        if self.world.redis_up:
            for worker in self.every:
                if worker.alive and self.workers.get(worker.index) is not worker:
                    worker.alive = any(p.attempt is not None for p in worker.procs)
                if not worker.alive:
                    continue
                every = [worker.parent, *(p.hooks for p in worker.procs)]
                for hooks in {id(h): h for h in every}.values():
                    self._call("heartbeat", partial(hooks._beat_hearts, _OnePass()))
        self.world.schedule(self.world.vt + self.lease // 3, "worker", ("heartbeat", None))

    # -- the broker -------------------------------------------------------------------------

    def put(self, occurrence: Any, available: int, retries: int, source: str) -> None:
        self._seq += 1
        self.queue.append(Delivery(occurrence, available, retries, source, self._seq))
        self.world.schedule(available, "worker", ("dispatch", None))

    def dispatch(self) -> None:
        """Workers with room receive the messages that are due, oldest first, each to the
        worker with the most room."""
        world = self.world
        live = [w for w in self.workers.values() if w.alive and w.consuming]
        while True:
            due = [d for d in self.queue if d.available <= world.vt]
            rooms = [(self._room(w), -w.index, w) for w in live]
            rooms = [r for r in rooms if r[0] > 0]
            if not due or not rooms:
                break
            worker = max(rooms, key=lambda r: r[:2])[2]
            delivery = min(due, key=lambda d: (d.available, d.seq))
            self.queue.remove(delivery)
            self._receive(worker, delivery)
            self._start_ready(worker)
        for worker in live:
            self._start_ready(worker)

    @staticmethod
    def _room(worker: Worker) -> int:
        free = sum(1 for p in worker.procs if p.attempt is None)
        return PREFETCH_EXTRA + free - len(worker.reserved)

    def _receive(self, worker: Worker, delivery: Delivery) -> None:
        occurrence = delivery.occurrence
        headers = dict(occurrence.headers)
        request = FakeRequest(occurrence.task_id, headers, worker.name, delivery.retries)
        task = FakeTask(self.app, request, self.setup.acks_late)
        attempt = Attempt(delivery, worker, request, task)
        if occurrence.task_id in worker.revoked:
            self._announce_revoked(attempt, "on receipt")
            return
        worker_state.requests[occurrence.task_id] = request
        self._call("task_received", lambda: worker.parent.on_received(request=request))
        worker.reserved.append(attempt)
        wait = (self.world.vt - delivery.available) / SECOND
        self.world.log(
            f"{worker.name} receives {occurrence.entry} slot {occurrence.slot.isoformat()}"
            f"{f' (retry {delivery.retries})' if delivery.retries else ''}"
            f"{f' ({delivery.source})' if delivery.source != 'first' else ''}"
            f"{f', waited {wait:.1f} s' if wait >= 1 else ''}",
            occurrence.entry,
        )

    def _start_ready(self, worker: Worker) -> None:
        for proc in worker.procs:
            if proc.attempt is None and worker.reserved and worker.alive:
                attempt = worker.reserved.pop(0)
                self._start(proc, attempt)

    def _start(self, proc: Proc, attempt: Attempt) -> None:
        world, setup = self.world, self.setup
        occurrence = attempt.delivery.occurrence
        entry, task_id = occurrence.entry, occurrence.task_id
        attempt.proc = proc
        proc.attempt = attempt
        if task_id in attempt.worker.revoked:
            self._announce_revoked(attempt, "before it starts")
            self._end(attempt)
            return
        hooks = proc.hooks
        # The run of a cancel_other / terminate_other entry may wait here (TAKE_OVER polls on
        # virtual time, the world runs on): its worker may die meanwhile.
        self._call("task_prerun", lambda: hooks.on_prerun(task_id=task_id, task=attempt.task))
        if attempt.ended or not attempt.worker.alive or proc.attempt is not attempt:
            return
        held = hooks._runs.get(task_id)
        if held is not None and held.skipped:
            with contextlib.suppress(Ignore):
                hooks.prevent(task_id)  # the guarded before_start
            self._call(
                "task_postrun",
                lambda: hooks.on_postrun(task_id=task_id, task=attempt.task, state="IGNORED"),
            )
            world.log(
                f"{attempt.worker.name}: {entry} slot {occurrence.slot.isoformat()} not run "
                f"({held.skipped})",
                entry,
            )
            if not attempt.delivery.retries:  # a skipped retry: its first attempt ran, it counts
                world.worker_skips.append((world.vt, entry, task_id, held.skipped))
            self._end(attempt)
            return
        headers = dict(occurrence.headers)
        if ENTRY_HEADER not in headers:
            return
        rng = world.worker_rng
        base = world.scenario.run_durations.get(entry, 0)
        if base > 0:
            duration = rng.randrange(base // 2, base + 1)
        else:
            duration = rng.randrange(50_000, 2 * SECOND)
        retry = setup.retries.get(entry)
        fate = "success"
        roll = rng.random()
        if retry is not None and attempt.delivery.retries < retry[0] and roll < retry[1]:
            fate = "retry"
        elif roll > 1 - setup.fail_rate:
            fate = "failure"
        limit = setup.time_limit
        if attempt.worker.pool == "prefork" and limit is not None and duration > limit:
            fate, duration = "time_limit", limit
        # Manual triggers and backfilled runs take no place under the cap (documented).
        capped = bool(headers.get(CAPPED_HEADER)) or (
            world.scenario.max_concurrent > 0
            and attempt.delivery.source != "trigger"
            and not headers.get(BACKFILL_HEADER)
        )
        run = Run(
            entry,
            occurrence.slot,
            task_id,
            world.vt,
            world.vt + duration,
            OVERLAP_HEADER in headers,
            capped,
            worker=attempt.worker.name,
            attempt=attempt.delivery.retries,
        )
        attempt.run = run
        world.runs.append(run)
        world.log(
            f"{attempt.worker.name}: {entry} slot {occurrence.slot.isoformat()} starts"
            f"{f' (attempt {attempt.delivery.retries + 1})' if attempt.delivery.retries else ''}"
            f", {fate} after {duration / SECOND:.2f} s",
            entry,
        )
        world.schedule(world.vt + duration, "worker", ("end", (attempt, fate)))

    def attempt_end(self, attempt: Attempt, fate: str) -> None:
        if attempt.ended:
            return
        world = self.world
        occurrence = attempt.delivery.occurrence
        task_id, task = occurrence.task_id, attempt.task
        proc = attempt.proc
        assert proc is not None
        hooks = proc.hooks
        if attempt.run is not None:
            attempt.run.end = world.vt
            attempt.run.fate = fate
        world.log(
            f"{attempt.worker.name}: {occurrence.entry} slot {occurrence.slot.isoformat()} "
            f"ends: {fate}",
            occurrence.entry,
        )
        if fate == "success":
            self._call("task_postrun", lambda: hooks.on_postrun(task_id, task, state="SUCCESS"))
        elif fate == "retry":
            countdown = self.setup.retries[occurrence.entry][2]
            self.put(occurrence, world.vt + countdown, attempt.delivery.retries + 1, "retry")
            self._call("task_postrun", lambda: hooks.on_postrun(task_id, task, state="RETRY"))
        elif fate == "failure":
            error = RuntimeError("simulated: the task failed")
            self._call(
                "task_failure",
                lambda: hooks.on_failure(sender=task, task_id=task_id, exception=error),
            )
            self._call("task_postrun", lambda: hooks.on_postrun(task_id, task, state="FAILURE"))
        elif fate == "time_limit":
            # The pool kills the process (its hooks die with it); the parent reports.
            proc.hooks = self._hooks()
            error = TimeLimitExceeded(self.setup.time_limit / SECOND)
            self._call(
                "task_failure",
                lambda: attempt.worker.parent.on_failure(
                    sender=task, task_id=task_id, exception=error
                ),
            )
        self._end(attempt)

    def _end(self, attempt: Attempt) -> None:
        attempt.ended = True
        task_id = attempt.delivery.occurrence.task_id
        worker_state.requests.pop(task_id, None)
        if attempt.proc is not None and attempt.proc.attempt is attempt:
            attempt.proc.attempt = None
        self.world.schedule(self.world.vt, "worker", ("dispatch", None))

    # -- faults -----------------------------------------------------------------------------

    def child_lost(self, index: int) -> None:
        """A pool process dies mid-task (OOM, a segfault): the parent reports it."""
        world = self.world
        worker = self.workers.get(index)
        if worker is None or not worker.alive or worker.pool != "prefork":
            return
        busy = [p for p in worker.procs if p.attempt is not None and p.attempt.run is not None]
        if not busy:
            return
        proc = busy[world.worker_rng.randrange(len(busy))]
        attempt = proc.attempt
        assert attempt is not None and attempt.run is not None
        attempt.run.end = world.vt
        attempt.run.fate = "lost"
        attempt.ended = True
        proc.hooks = self._hooks()
        proc.attempt = None
        occurrence = attempt.delivery.occurrence
        requeued = self.setup.acks_late and self.setup.reject_on_worker_lost
        world.log(
            f"{worker.name}: pool process running {occurrence.entry} slot "
            f"{occurrence.slot.isoformat()} dies{' (requeued)' if requeued else ''}",
            occurrence.entry,
        )
        error = WorkerLostError("simulated: worker exited prematurely: signal 9 (SIGKILL)")
        self._call(
            "task_failure",
            lambda: worker.parent.on_failure(
                sender=attempt.task, task_id=occurrence.task_id, exception=error
            ),
        )
        if requeued:
            self.put(occurrence, world.vt, attempt.delivery.retries, "redelivered")
        self._end(attempt)

    def kill(self, index: int, restart_after: int) -> None:
        """SIGKILL a whole worker: no hook runs; the broker redelivers what it had not acked."""
        world = self.world
        worker = self.workers.get(index)
        if worker is None or not worker.alive:
            return
        worker.alive = False
        world.log(f"worker {worker.name} killed (restarts in {restart_after / SECOND:.1f} s)")
        for attempt in list(worker.reserved):
            self._requeue(attempt, "redelivered")
        worker.reserved.clear()
        for proc in worker.procs:
            attempt = proc.attempt
            if attempt is None or attempt.ended:
                continue
            if attempt.run is not None:
                attempt.run.end = world.vt
                attempt.run.fate = "killed"
            # (run None: still in task_prerun, waiting to take over its entry's marker)
            attempt.ended = True
            worker_state.requests.pop(attempt.delivery.occurrence.task_id, None)
            if self.setup.acks_late:
                self._requeue(attempt, "redelivered")
        world.schedule(world.vt + restart_after, "worker", ("start", index))

    def stop_all(self, duration: int) -> None:
        """Every worker stops consuming for ``duration`` (a deploy, an outage): reserved
        messages go back to the broker, runs in progress finish; then fresh workers start."""
        self.world.log(f"workers stop consuming for {duration / SECOND:.1f} s")
        for worker in self.workers.values():
            if not worker.alive:
                continue
            worker.consuming = False
            for attempt in list(worker.reserved):
                self._requeue(attempt, "requeued")
            worker.reserved.clear()
        self.world.schedule(self.world.vt + duration, "worker", ("restart_all", None))

    def restart_all(self) -> None:
        for index in list(self.workers):
            old = self.workers[index]
            if old.alive and not old.consuming:
                self.start(index)  # a new process; the old one finishes its runs

    # -- revoke (cancel_other / terminate_other) ----------------------------------------------

    def revoke(self, task_id: str, terminate: bool = False, signal: Any = None, **_: Any) -> None:
        """``app.control.revoke``: every live worker remembers the id (a message of it is
        discarded when received or about to start, with ``task_revoked``); with ``terminate``
        a prefork worker kills the pool process executing it (``task_revoked`` in the parent,
        ``terminated=True``). A solo worker is busy executing: it reads the broadcast only
        after the run ended, so terminating does nothing there."""
        world = self.world
        world.log(f"control: revoke {task_id}{' (terminate)' if terminate else ''}")
        world.revokes.append((world.vt, task_id, terminate))
        for worker in self.every:
            if not worker.alive:
                continue
            worker.revoked.add(task_id)
            if not terminate or worker.pool != "prefork":
                continue
            for proc in worker.procs:
                attempt = proc.attempt
                if (
                    attempt is None
                    or attempt.run is None
                    or attempt.ended
                    or attempt.delivery.occurrence.task_id != task_id
                ):
                    continue
                attempt.run.end = world.vt
                attempt.run.fate = "revoked"
                proc.hooks = self._hooks()  # the pool process is killed (SIGTERM)
                self._announce_revoked(attempt, "terminated", terminated=True, signum=signal)
                self._end(attempt)

    def _announce_revoked(
        self, attempt: Attempt, how: str, *, terminated: bool = False, signum: Any = None
    ) -> None:
        occurrence = attempt.delivery.occurrence
        attempt.ended = True
        self.world.log(
            f"{attempt.worker.name}: {occurrence.entry} slot {occurrence.slot.isoformat()} "
            f"revoked ({how})",
            occurrence.entry,
        )
        self._call(
            "task_revoked",
            lambda: attempt.worker.parent.on_revoked(
                sender=attempt.task, request=attempt.request, terminated=terminated, signum=signum
            ),
        )

    def _requeue(self, attempt: Attempt, source: str) -> None:
        occurrence = attempt.delivery.occurrence
        worker_state.requests.pop(occurrence.task_id, None)
        self.put(occurrence, self.world.vt, attempt.delivery.retries, source)

    def finish(self) -> None:
        worker_state.requests.clear()

    def pending(self, entry: str) -> bool:
        """Whether a run of ``entry`` is still in the queue or held by a worker."""
        if any(d.occurrence.entry == entry for d in self.queue):
            return True
        for worker in self.every:
            if any(a.delivery.occurrence.entry == entry for a in worker.reserved):
                return True
            for proc in worker.procs:
                if proc.attempt is not None and proc.attempt.delivery.occurrence.entry == entry:
                    return True
        return False


class ObservedClient:
    """The workers' Redis client: every call goes through; the simulator notes what the
    worker decided about held-back runs (handed over, dropped as paused, given back)."""

    def __init__(self, world: World, real: Any) -> None:
        self.world = world
        self.real = real
        from .world import simulate_wait  # (the world imports this module)

        simulate_wait(world, real)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def eval(self, script: str, numkeys: int, *args: Any) -> Any:
        reply = self.real.eval(script, numkeys, *args)
        world = self.world
        if script == lua.RELEASE and reply is not None:
            what = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
            world.held_event(_entry_of(args[0]), "released" if what == "send" else "dropped_paused")
        elif script == lua.GIVE_BACK_HELD:
            world.held_event(_entry_of(args[0]), f"given_back_{args[9]}")
        return reply


def _entry_of(key: Any) -> str:
    text = key.decode() if isinstance(key, bytes) else str(key)
    return text[text.find("{") + 1 : text.rfind("}")]
