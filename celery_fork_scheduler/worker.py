"""Worker side: report the runs this scheduler published, and hold and free their markers.

Connected by :func:`celery_fork_scheduler.install`. For a task that carries the scheduler's
headers it

- keeps the singleton marker and the place under the concurrency cap alive while this worker
  holds the run: from the moment it receives the message (a countdown, an ETA or a prefetched
  backlog included) until the run's last attempt ends (a heartbeat every third of
  ``fork_scheduler_singleton_lease``);
- checks, as the run starts, that it still holds its marker and its place: one that expired
  while the run waited is taken again; when another run holds the marker (or the cap is full),
  the run is not executed (state ``IGNORED``; recorded as skipped ``busy`` / ``capped``);
- sends :data:`~.signals.job_started` once per run (not per attempt) and one final outcome:
  :data:`~.signals.job_completed` or :data:`~.signals.job_failed` (a hard time limit under the
  prefork pool included, reported by the pool's parent process);
- frees the marker and the place when the last attempt ends (never on a retry or a requeued
  rejection), fails or is revoked — a worker killed mid-task frees them when the lease runs out;
- pauses the entry for every replica when a run of an entry with ``pause_on_failure`` fails for
  good (in the same script that records the failure), and sends
  :data:`~.signals.entry_paused_on_failure`;
- publishes the run held back by overlap ``buffer_one`` as soon as the running one ends, with a
  place under the cap, unless its entry was paused meanwhile;
- marks Redis so that beat can tell that some worker does all this.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

import redis
from celery import signals as celery_signals
from celery.contrib.testing.worker import test_worker_stopped
from celery.exceptions import Ignore, WorkerLostError
from celery.worker import state as worker_state

from . import signals
from .backends import lua
from .backends.base import to_epoch_us
from .backends.factory import redis_client_for
from .backends.redis import record_outcome
from .backends.redis_connection import scrub_secrets
from .backfill import BACKFILL_HEADER
from .config import Settings, read_settings
from .entry import REPLACING
from .errors import ConfigError
from .held import HeldNotSent, HeldRuns, error_text
from .ids import (
    CAPPED_HEADER,
    ENTRY_HEADER,
    OVERLAP_HEADER,
    PAUSE_ON_FAILURE_HEADER,
    SLOT_HEADER,
)
from .keys import Keys
from .publishing import Occurrence, occurrence_from_json

logger = logging.getLogger("celery_fork_scheduler.worker")

#: Header of a run sent by :meth:`Manager.trigger`: it never counted towards ``max_runs``.
MANUAL_HEADER = "fork_scheduler_manual"

#: Why a run is not executed, as the worker logs it.
_NOT_RUN = {
    "busy": "another run holds its marker",
    "capped": "cap reached",
    "replaced": "a later run of its entry replaces it (overlap cancel_other/terminate_other)",
}

#: How often the new run of a ``cancel_other`` / ``terminate_other`` entry asks whether the
#: run it replaces stopped (seconds).
REPLACE_POLL_SECONDS = 0.1

#: Celery task states after which the run goes on with another attempt (same task id).
_NOT_FINAL = frozenset({"RETRY"})


@dataclass(slots=True)
class Run:
    """A scheduled run held by this process (received by its consumer, or executing)."""

    entry: str
    slot: str
    task_id: str
    started: float
    singleton: bool
    capped: bool
    worker: str
    manual: bool = False
    #: A backfill's run (``Manager.backfill``): like a manual one, it never counted towards
    #: ``max_runs``, so a skip of it gives no run back.
    backfilled: bool = False
    #: The entry's overlap policy (from the message), ``"allow"`` for a run under the cap only.
    overlap: str = "allow"
    #: Why the run must not execute ("busy", "capped"), decided when it starts.
    skipped: str | None = None
    #: The run's body was kept from executing (see :meth:`WorkerHooks.guard_tasks`).
    prevented: bool = False
    #: A later attempt (a retry): an earlier one ran the body and counted the run.
    retried: bool = False
    #: Which attempt this is (the request's ``retries``).
    attempt: int = 0
    #: Pause the entry when the run fails for good (the entry's ``pause_on_failure``).
    pause_on_failure: bool = False


def _header(request: Any, name: str) -> Any:
    """A message header from a task request (Context) or a worker Request."""
    if hasattr(request, "get"):
        value = request.get(name)
        if value is not None:
            return value
    request_dict = getattr(request, "request_dict", None) or {}
    return request_dict.get(name)


#: The error in a pause note is cut to this many characters.
PAUSE_ERROR_LIMIT = 200


def pause_note_for(task_id: str, error: BaseException | None) -> str:
    """The note of an entry paused by a failed run: the task id and the error, short."""
    shown = scrub_secrets(repr(error))
    if len(shown) > PAUSE_ERROR_LIMIT:
        shown = shown[: PAUSE_ERROR_LIMIT - 3] + "..."
    return f"paused on failure: task {task_id} raised {shown}"


#: While Redis cannot be reached, the worker says so at most once in this many seconds.
REDIS_WARNING_SECONDS = 60.0
#: Errors that mean "Redis cannot be reached" (not a bug): one line, no traceback.
REDIS_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError)

#: Errors after which the heartbeat asks Redis again: it could not be reached, or a replica
#: refused a write during a failover.
ASKED_AGAIN = (*REDIS_UNREACHABLE, redis.ReadOnlyError)

#: A received run the consumer does not hold is let go (no longer renewed) after this long
#: (seconds): Celery sends ``task_received`` before it files the request.
RECEIPT_SETTLE_SECONDS = 1.0

#: Runs let go (no longer renewed) kept for a late report of their end, at most.
LET_GO_KEPT = 10_000
#: How often the heartbeat asks again after Redis could not be reached (seconds, at most).
HEARTBEAT_RETRY_SECONDS = 0.2
#: How often a process holding a singleton or capped run looks whether Redis restarted
#: (seconds): well within the 1.5 s after a start in which no slot is won.
RESTART_CHECK_SECONDS = 0.5
#: Rejected runs remembered at most (a requeued one another worker took is never seen again).
REJECTED_KEPT = 10_000


class RetrySkipped(Exception):
    """A retry of a scheduled run was not started: another run held its marker or the cap
    was full when it came up (the attempt waited in the broker past the lease)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"retry not run: {reason}")


def _run_of(request: Any, task_id: str) -> Run | None:
    """The scheduled run a task request carries, or ``None`` for any other task."""
    entry = _header(request, ENTRY_HEADER)
    if entry is None:
        return None
    overlap = _header(request, OVERLAP_HEADER)
    return Run(
        entry=entry,
        slot=_header(request, SLOT_HEADER),
        task_id=task_id,
        started=time.monotonic(),
        singleton=overlap is not None,
        capped=bool(_header(request, CAPPED_HEADER)),
        worker=getattr(request, "hostname", None) or socket.gethostname(),
        manual=bool(_header(request, MANUAL_HEADER)),
        backfilled=bool(_header(request, BACKFILL_HEADER)),
        pause_on_failure=bool(_header(request, PAUSE_ON_FAILURE_HEADER)),
        overlap=overlap or "allow",
    )


class WorkerHooks:
    """The worker-side signal handlers of one Celery app."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._settings: Settings | None = None
        self._client: Any = None
        #: Runs executing in this process (task_prerun to task_postrun).
        self._runs: dict[str, Run] = {}
        #: Runs whose attempt in this process ended in a rejection (``Reject``): one that
        #: requeued its message starts again here without a second ``job_started``. The
        #: oldest beyond :data:`REJECTED_KEPT` are forgotten (another worker took them).
        self._rejected: dict[str, None] = {}
        #: When the last "cannot reach Redis" warning was logged (monotonic), and how many
        #: failures were left unsaid since.
        self._redis_warned_at: float | None = None
        #: Redis's ``run_id`` when last looked (see :meth:`_redis_restarted`).
        self._redis_run_id: str | None = None
        self._redis_unsaid = 0
        #: The bad settings already logged by this process.
        self._said: set[str] = set()
        #: Runs this process's consumer received and has not seen end (heartbeat, and the
        #: outcome of a run whose pool process was killed: a hard time limit).
        self._received: dict[str, Run] = {}
        #: Since when (monotonic) the consumer does not hold a received run: let go
        #: :data:`RECEIPT_SETTLE_SECONDS` later; see :meth:`_forget_ended`.
        self._unheld_since: dict[str, float] = {}
        #: Runs no longer renewed, newest last: a late ``task_failure`` still finds them.
        self._let_go: OrderedDict[str, Run] = OrderedDict()
        #: The consumer that received the runs (Celery's ``task_received`` sender).
        self._consumer: Any = None
        #: Ended runs whose markers could not be freed (Redis unreachable), by task id: the
        #: heartbeat frees them once Redis answers, while their lease lasts (monotonic end).
        self._unfreed: dict[str, tuple[Run, float]] = {}
        #: Held runs handed over to this process that Redis kept it from sending (before the
        #: message could leave), with the end of their marker's lease: sent by the heartbeat.
        self._unsent: dict[str, float] = {}
        self._lock = threading.Lock()
        self._heartbeat_pid: int | None = None
        self._stopping = threading.Event()
        hooks = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _after_fork(hooks()))

    @property
    def settings(self) -> Settings:
        """The app's settings, read when first needed (after the app is configured)."""
        if self._settings is None:
            self._settings = read_settings(self.app.conf)
        return self._settings

    @property
    def keys(self) -> Keys:
        """The key names under the configured prefix."""
        return Keys(self.settings.key_prefix)

    @property
    def client(self) -> Any:
        """The Redis client, created on first use; ``None`` without Redis, or while one
        cannot be made (the runs go on without their markers)."""
        if self._client is None:
            self._client = self._new_client()
        return self._client

    def _new_client(self) -> Any:
        """A client for the configured Redis. Bad ``fork_scheduler_redis_options`` (that do
        not fit the URL) are logged once as an ERROR and the defaults used; a Redis that cannot
        be used is a warning (once per outage) and ``None``, never an exception."""
        settings = self.settings
        try:
            try:
                return redis_client_for(self.app, settings)
            except ConfigError as exc:
                if exc.field != "fork_scheduler_redis_options" or not settings.redis_options:
                    raise
                self._bad_setting(exc, "the default is used")
                return redis_client_for(self.app, replace(settings, redis_options={}))
        except ConfigError as exc:
            self._bad_setting(exc, "runs go on without Redis")
        except Exception as exc:
            self._redis_failed("connect", exc)
        return None

    def _bad_setting(self, error: ConfigError, what: str) -> None:
        """Log a bad setting once per process, as an ERROR line without a traceback."""
        message = f"fork scheduler: {error} ({what}; beat refuses to start until it is fixed)"
        if message not in self._said:
            self._said.add(message)
            logger.error(message)

    @property
    def _lease_ms(self) -> int:
        return int(self.settings.singleton_lease.total_seconds() * 1000)

    def connect(self) -> None:
        """Connect the handlers to Celery's worker signals."""
        celery_signals.worker_init.connect(self.guard_tasks, weak=False)
        celery_signals.task_received.connect(self.on_received, weak=False)
        celery_signals.task_prerun.connect(self.on_prerun, weak=False)
        celery_signals.task_postrun.connect(self.on_postrun, weak=False)
        celery_signals.task_failure.connect(self.on_failure, weak=False)
        celery_signals.task_revoked.connect(self.on_revoked, weak=False)
        celery_signals.worker_ready.connect(self.on_worker_ready, weak=False)
        celery_signals.worker_shutdown.connect(self.on_worker_shutdown, weak=False)
        # celery.contrib.testing's in-process worker stops without worker_shutdown.
        test_worker_stopped.connect(self.on_worker_shutdown, weak=False)

    # -- Celery signal handlers ---------------------------------------------------------------

    def guard_tasks(self, **_: Any) -> None:
        """Let a run that must not execute be stopped before its body: each task's
        ``before_start`` (called by Celery after ``task_prerun``) raises ``Ignore`` for it.

        Done when the worker starts, before Celery builds its tracers (and forks its pool).
        """
        for task in self.app.tasks.values():
            cls = type(task)
            if "_fork_scheduler_guard" not in cls.__dict__:
                cls.before_start = _guarded(self, cls.before_start)
                cls._fork_scheduler_guard = True

    def prevent(self, task_id: str) -> None:
        """Raise ``Ignore`` when the run ``task_id`` must not execute (from ``before_start``)."""
        with self._lock:
            run = self._runs.get(task_id)
        if run is not None and run.skipped:
            run.prevented = True
            raise Ignore(f"fork scheduler: not run ({run.skipped})")

    def on_worker_ready(self, sender: Any = None, **_: Any) -> None:
        """Tell beat that this worker releases markers; keep saying so."""
        if getattr(sender, "app", self.app) is not self.app:
            return
        # Settings as configured once the worker loaded everything (install() may come first).
        self._settings = None
        self._client = None
        self._ensure_heartbeat()

    def _ensure_heartbeat(self) -> None:
        """One heartbeat thread per process: prefork children run tasks in their own."""
        if self._heartbeat_pid == os.getpid():
            return
        self._heartbeat_pid = os.getpid()
        self._stopping = threading.Event()
        self._mark_seen()
        thread = threading.Thread(
            target=self._beat_hearts,
            args=(self._stopping,),
            name="fork-scheduler-heartbeat",
            daemon=True,
        )
        thread.start()

    def on_worker_shutdown(self, sender: Any = None, **_: Any) -> None:
        """This app's worker stopped: stop the heartbeat thread (a worker started again in
        this process starts a new one)."""
        if getattr(sender, "app", sender) not in (self.app, None):
            return
        self._stopping.set()
        self._heartbeat_pid = None

    def on_received(self, sender: Any = None, request: Any = None, **_: Any) -> None:
        """The consumer got a scheduled run (it may wait for its ETA or a free process): keep
        its marker and place alive from now on."""
        task_id = getattr(request, "id", None)
        if task_id is None or getattr(request, "app", self.app) is not self.app:
            return
        run = _run_of(request, task_id)
        if run is None:
            return
        if sender is not None:
            self._consumer = sender
        self._forget_ended()
        with self._lock:
            self._received[task_id] = run
        if run.singleton or run.capped:
            self._ensure_heartbeat()

    def on_prerun(self, task_id: str, task: Any, **_: Any) -> None:
        """A scheduled run starts: check its marker and place, send ``job_started`` once."""
        if task.app is not self.app:
            return
        run = _run_of(task.request, task_id)
        if run is None:
            return
        run.attempt = int(task.request.retries or 0)
        run.skipped = self._take_markers(run)
        run.retried = bool(task.request.retries)
        with self._lock:
            self._runs[task_id] = run
            again = task_id in self._rejected
            self._rejected.pop(task_id, None)
        if run.singleton or run.capped:
            self._ensure_heartbeat()
        if run.skipped:
            logger.warning(
                "fork scheduler: %s slot %s id %s not run: %s",
                run.entry,
                run.slot,
                task_id,
                _NOT_RUN.get(run.skipped, run.skipped),
            )
            return
        if not task.request.retries and not again:
            signals.job_started.send(sender=task, entry=run.entry, slot=run.slot, task_id=task_id)

    def on_postrun(
        self,
        task_id: str,
        task: Any,
        state: str | None = None,
        retval: Any = None,
        **_: Any,
    ) -> None:
        """An attempt ended. After the last one, free the run's markers and send
        ``job_completed`` on success; a retry or a requeued rejection keeps them."""
        with self._lock:
            run = self._runs.pop(task_id, None)
        if run is None:
            return
        if run.skipped and run.prevented:
            self._forget(task_id)
            # A retry that may not start still ran its first attempt: the run counts, and it
            # ends here (its one final outcome).
            self._record_skip(run, run.skipped, counted=not run.retried)
            if run.retried:
                signals.job_failed.send(
                    sender=task,
                    entry=run.entry,
                    slot=run.slot,
                    task_id=task_id,
                    exception=RetrySkipped(run.skipped),
                )
            self._finish(run)
            return
        if state == "RETRY" and run.singleton and run.overlap in REPLACING:
            self._note_retrying(run)
        if state == "REJECTED":
            # A requeued rejection runs again; one not requeued is a final failure, which the
            # worker's request reports next (task_failure, handled like the pool's parent's).
            with self._lock:
                self._rejected[task_id] = None
                if len(self._rejected) > REJECTED_KEPT:
                    del self._rejected[next(iter(self._rejected))]
            return
        if state in _NOT_FINAL:
            return
        self._forget(task_id)
        if state == "SUCCESS":
            duration = time.monotonic() - run.started
            self._record(run, "completed", "completed", duration=duration)
            signals.job_completed.send(
                sender=task, entry=run.entry, slot=run.slot, task_id=task_id, duration=duration
            )
        self._finish(run)

    def _note_retrying(self, run: Run) -> None:
        """A run of a replacing entry waits for a retry, holding its marker: a newer run may
        take the marker at once (see :data:`.lua.TAKE_OVER`) instead of waiting for it."""
        client = self.client
        if client is None:
            return
        try:
            state = self.keys.state(run.entry)
            client.eval(lua.NOTE_RETRYING, 1, state, run.task_id, run.attempt)
        except Exception as exc:
            self._redis_failed(f"note the retry of {run.entry} ({run.task_id})", exc)

    def on_failure(
        self,
        sender: Any = None,
        task_id: str = "",
        exception: BaseException | None = None,
        **_: Any,
    ) -> None:
        """A run failed for good: record it and send ``job_failed``. Sent by the process that
        ran it (postrun then frees the markers), or by the prefork pool's parent for a hard time
        limit or a lost process: then the markers are freed here."""
        if getattr(sender, "app", self.app) is not self.app:
            return
        with self._lock:
            run = self._runs.get(task_id)
            parent_side = run is None
            if parent_side:
                run = self._received.get(task_id) or self._let_go.pop(task_id, None)
        if run is None:
            return
        with self._lock:
            self._rejected.pop(task_id, None)  # (a rejection that did not requeue: its end)
        if parent_side:
            if isinstance(exception, WorkerLostError) and self._requeued_when_lost(sender):
                return
            self._forget(task_id)
            self._finish(run)
        note = pause_note_for(task_id, exception) if run.pause_on_failure else ""
        paused = self._record(
            run,
            "error",
            "errors",
            duration=time.monotonic() - run.started,
            error=error_text(exception),
            pause_note=note,
        )
        signals.job_failed.send(
            sender=sender, entry=run.entry, slot=run.slot, task_id=task_id, exception=exception
        )
        if paused:
            logger.warning("fork scheduler: %s paused for every replica: %s", run.entry, note)
            signals.entry_paused_on_failure.send(
                sender=sender,
                entry=run.entry,
                slot=run.slot,
                task_id=task_id,
                exception=exception,
                note=note,
            )

    def on_revoked(
        self,
        sender: Any = None,
        request: Any = None,
        terminated: bool = False,
        signum: Any = None,
        expired: bool = False,
        **_: Any,
    ) -> None:
        """A scheduled run was revoked, maybe before it started: record it (``revoked`` in the
        history, counter ``revoked``) and free its markers."""
        task_id = getattr(request, "id", None) or getattr(request, "task_id", None)
        if task_id is None or getattr(sender, "app", self.app) is not self.app:
            return
        run = _run_of(request, task_id)
        if run is None:
            return
        with self._lock:
            held = self._runs.pop(task_id, None) or self._received.get(task_id)
        self._forget(task_id)
        how = "expired" if expired else f"terminated ({signum})" if terminated else ""
        started = held.started if held is not None else run.started
        self._record(run, "revoked", "revoked", duration=time.monotonic() - started, error=how)
        self._finish(run)

    # -- markers ----------------------------------------------------------------------------

    def _forget(self, task_id: str) -> None:
        with self._lock:
            self._received.pop(task_id, None)
            self._unheld_since.pop(task_id, None)

    def _forget_ended(self) -> None:
        """Let go (stop renewing) the received runs the consumer has not held for
        :data:`RECEIPT_SETTLE_SECONDS`: they ended in a pool process, which freed their markers
        (or, with Redis unreachable, tries again or leaves them to the lease). Renewed, such a
        marker would live for ever, or one a failover brought back would. A run let go stays
        findable: Celery reports a hard time limit or a lost process (``task_failure``, handled
        here) after it stopped holding the request."""
        held = self._consumer_holds()
        if held is None:
            return
        now = time.monotonic()
        settle = RECEIPT_SETTLE_SECONDS
        with self._lock:
            unheld, let_go = self._unheld_since, self._let_go
            for task_id in list(self._received):
                if task_id in held or task_id in self._runs:
                    unheld.pop(task_id, None)
                elif now - unheld.setdefault(task_id, now) > settle:
                    let_go[task_id] = self._received.pop(task_id)
                    del unheld[task_id]
            while len(let_go) > LET_GO_KEPT:
                let_go.popitem(last=False)

    def _consumer_holds(self) -> set[str] | None:
        """The task ids the consumer holds: reserved or running, waiting for an ETA, or for a
        token of the task's rate limit (Celery files those in no state set); ``None`` when
        they cannot be read now (the consumer thread changed a set while it was read)."""
        for _ in range(3):
            try:
                held = {req.id for req in list(worker_state.scheduled_requests)}
                held.update(list(worker_state.requests))
                buckets = getattr(self._consumer, "task_buckets", None) or {}
                for bucket in list(buckets.values()):
                    for item in list(getattr(bucket, "contents", None) or ()):
                        request = item[0] if isinstance(item, tuple) else item
                        held.add(getattr(request, "id", None))
                return held
            except RuntimeError:  # "changed size during iteration"
                continue
        return None

    def _requeued_when_lost(self, task: Any) -> bool:
        """A run whose process died is requeued (and runs again) with these settings."""
        acks_late = getattr(task, "acks_late", False)
        reject = getattr(task, "reject_on_worker_lost", None)  # the task's own wins
        if reject is None:
            reject = self.app.conf.task_reject_on_worker_lost
        return bool(acks_late and reject)

    def _take_markers(self, run: Run) -> str | None:
        """At start: hold the marker and the place again; why the run must not execute."""
        client = self.client
        if client is None or not (run.singleton or run.capped):
            return None
        # buffer_all runs start in slot order (see lua.START_SINGLETON); manual ones have none
        in_order = run.singleton and run.overlap == "buffer_all" and not run.manual
        try:
            slot_us = to_epoch_us(datetime.fromisoformat(run.slot)) if in_order else 0
        except (TypeError, ValueError):  # a message whose slot header is not ours
            in_order, slot_us = False, 0
        try:
            if run.singleton and run.overlap in REPLACING:
                reason = self._take_over(client, run)
                if reason is not None:
                    return reason
            elif run.singleton:
                capped_too = run.capped and self.settings.max_concurrent > 0
                order = "0" if not in_order else "2" if capped_too else "1"
                held = client.eval(
                    lua.START_SINGLETON,
                    2,
                    self.keys.running(run.entry),
                    self.keys.state(run.entry),
                    run.task_id,
                    self._lease_ms,
                    slot_us,
                    order,
                )
                if int(held) == 0:
                    return "busy"
            cap = self.settings.max_concurrent
            if run.capped and cap > 0:
                held = client.eval(
                    lua.START_CAP, 1, self.keys.cap, run.task_id, cap, self._lease_ms * 1000
                )
                if int(held) == 0:
                    return "capped"
                if in_order:  # its slot is the latest started only now that it has a place
                    client.eval(lua.NOTE_START, 1, self.keys.state(run.entry), slot_us)
        except Exception as exc:
            self._redis_failed(f"check the markers of {run.entry} ({run.task_id}); running it", exc)
        return None

    def _take_over(self, client: Any, run: Run) -> str | None:
        """A ``cancel_other`` / ``terminate_other`` run starts: revoke the run holding the
        marker (terminating it for ``terminate_other``) and take the marker once it stopped;
        why the run must not execute (``"replaced"`` by a later run, ``"busy"`` after waiting
        ``fork_scheduler_replace_wait`` in vain)."""
        wait = self.settings.replace_wait
        if wait is None:
            wait = self.settings.singleton_lease
        deadline = time.monotonic() + wait.total_seconds()
        revoked: str | None = None
        while True:
            code, other = client.eval(
                lua.TAKE_OVER,
                2,
                self.keys.running(run.entry),
                self.keys.state(run.entry),
                run.task_id,
                self._lease_ms,
                "0" if run.manual else "1",
                run.attempt,
            )
            if int(code) == 0:
                return "replaced"
            if int(code) in (1, 2):
                return None
            holder = _text(other)
            if int(code) == 4:  # its holder waits for a retry: it never starts again
                self.app.control.revoke(holder)
                client.zrem(self.keys.cap, holder)  # nor holds its place under the cap
                return None
            if holder != revoked:
                terminate = run.overlap == "terminate_other"
                logger.info(
                    "fork scheduler: %s id %s replaces run %s: %s it",
                    run.entry,
                    run.task_id,
                    holder,
                    "terminating" if terminate else "revoking",
                )
                self.app.control.revoke(holder, terminate=terminate, signal="SIGTERM")
                revoked = holder
            if time.monotonic() >= deadline:
                return "busy"
            time.sleep(REPLACE_POLL_SECONDS)

    def _finish(self, run: Run, *, again: bool = False) -> None:
        """Free the markers of a run that ended (its place under the cap, its singleton
        marker), and publish the run it hands over. With Redis unreachable, the heartbeat
        tries again (``again``: the earlier request's reply may have been lost)."""
        client = self.client
        if client is None or not (run.singleton or run.capped):
            return
        entry, task_id = run.entry, run.task_id
        reply = None
        try:
            if run.capped:
                client.zrem(self.keys.cap, task_id)
            if run.singleton:
                reply = client.eval(
                    lua.RELEASE,
                    3,
                    self.keys.running(entry),
                    self.keys.buffered(entry),
                    self.keys.state(entry),
                    task_id,
                    self._lease_ms,
                    "1" if again else "0",
                    f"{socket.gethostname()}:{os.getpid()}:{id(self):x}",
                )
        except Exception as exc:
            if isinstance(exc, ASKED_AGAIN):
                with self._lock:
                    lease_end = time.monotonic() + self._lease_ms / 1000
                    self._unfreed.setdefault(task_id, (run, lease_end))
            self._redis_failed(f"free the markers of {entry} ({task_id})", exc)
            return
        with self._lock:
            self._unfreed.pop(task_id, None)
        if reply is None:
            return
        # The answer is in hand: whatever happens to the held run now, never ask again.
        try:
            what, held, *dropped = reply
            for stale in dropped:  # held for a slot before Redis restarted: maybe sent since
                self._record_skip(_held_run(occurrence_from_json(stale)), "unknown", counted=False)
            if _text(what) in ("paused", "removed", "finished", "unknown"):
                occurrence = occurrence_from_json(held)
                self._record_skip(_held_run(occurrence), _text(what), counted=False)
            else:
                self._hand_over(_text(held))
        except Exception as exc:
            self._redis_failed(f"hand over the held run of {entry} ({task_id})", exc)

    def _hand_over(self, held: str) -> None:
        """Send the held run this process was handed (it holds the marker); when Redis kept
        it from leaving, the heartbeat tries again while its marker's lease lasts."""
        try:
            self._publish_held(held)
        except HeldNotSent as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
            if isinstance(cause, ASKED_AGAIN):
                with self._lock:
                    self._unsent.setdefault(held, time.monotonic() + self._lease_ms / 1000)
            self._redis_failed(f"send the held-back run of {exc}", cause)
            return
        with self._lock:
            self._unsent.pop(held, None)

    def _free_unfreed(self) -> None:
        """Free the markers left by runs that ended while Redis could not be reached, and send
        the held runs it kept from leaving, while their lease lasts (after it, the markers
        expired: nothing is left to free, and a held run's next slot supersedes it)."""
        now = time.monotonic()
        with self._lock:
            for task_id in [i for i, (_, end) in self._unfreed.items() if end <= now]:
                del self._unfreed[task_id]
            runs = [run for run, _ in self._unfreed.values()]
            for held in [h for h, end in self._unsent.items() if end <= now]:
                del self._unsent[held]
            unsent = list(self._unsent)
        for run in runs:
            self._finish(run, again=True)
        for held in unsent:
            self._hand_over(held)

    def _record(
        self,
        run: Run,
        outcome: str,
        counter: str,
        *,
        duration: float,
        error: str = "",
        pause_note: str = "",
    ) -> bool:
        """Count the run's end and push it to the entry's history in Redis; with a
        ``pause_note``, pause the entry in the same script. Returns whether it paused it."""
        client = self.client
        if client is None:
            return False
        try:
            return record_outcome(
                client,
                self.keys,
                run.entry,
                slot_us=to_epoch_us(datetime.fromisoformat(run.slot)),
                task_id=run.task_id,
                who=run.worker,
                outcome=outcome,
                counter=counter,
                history_size=self.settings.history_size,
                duration=duration,
                error=error,
                pause_note=pause_note,
                paused_at=datetime.now(timezone.utc).isoformat() if pause_note else "",
            )
        except Exception as exc:
            self._redis_failed(f"record the end of {run.entry}", exc)
        return False

    def _redis_failed(self, doing: str, error: Exception) -> None:
        """Log a Redis call that failed: while Redis cannot be reached, one WARNING a minute
        (no traceback, the failures counted); any other error with its traceback."""
        if not isinstance(error, REDIS_UNREACHABLE):
            logger.warning("fork scheduler: could not %s", doing, exc_info=True)
            return
        now = time.monotonic()
        if (
            self._redis_warned_at is not None
            and now - self._redis_warned_at < REDIS_WARNING_SECONDS
        ):
            self._redis_unsaid += 1
            return
        unsaid, self._redis_unsaid = self._redis_unsaid, 0
        self._redis_warned_at = now
        more = f" ({unsaid} more since the last warning)" if unsaid else ""
        logger.warning(
            "fork scheduler: cannot reach Redis (%s), so could not %s; runs go on, markers expire"
            " with their lease%s",
            scrub_secrets(f"{type(error).__name__}: {error}"),
            doing,
            more,
        )

    def _record_skip(self, run: Run, reason: str, *, counted: bool = True) -> None:
        """Record a run that was not executed; a scheduled one is given back (``max_runs``)."""
        client = self.client
        if client is None:
            return
        try:
            client.eval(
                lua.RECORD_SKIP,
                5,
                *self.keys.entry_keys(run.entry),
                to_epoch_us(datetime.fromisoformat(run.slot)),
                run.task_id,
                run.worker,
                reason,
                self.settings.history_size,
                "1" if counted and not (run.manual or run.backfilled) else "0",
            )
        except Exception as exc:
            self._redis_failed(f"record the skip of {run.entry}", exc)

    def _publish_held(self, held: bytes | str) -> None:
        """Publish the run that overlap ``buffer_one`` held back, or the next one queued by
        ``buffer_all`` (it now holds the marker); see :meth:`.HeldRuns.publish`."""
        HeldRuns(app=self.app, client=self.client, keys=self.keys, settings=self.settings).publish(
            held
        )

    def _mark_seen(self) -> None:
        client = self.client
        if client is None:
            return
        ttl = max(int(self.settings.singleton_lease.total_seconds() * 3), 60)
        try:
            client.set(self.keys.workers_seen, "1", ex=ttl)
        except Exception as exc:
            self._redis_failed("announce this worker", exc)

    def _beat_hearts(self, stopping: threading.Event) -> None:
        """Renew the markers and cap places of the runs this process holds, every third of
        the lease, at once when Redis restarted (:meth:`_redis_restarted`), and every
        :data:`HEARTBEAT_RETRY_SECONDS` after Redis could not be reached.
        A run executing here that no longer has its marker or place while nobody else holds
        it (a Redis restart lost it) takes it back: it still runs, and a slot due after Redis
        came back must find it busy."""
        interval = max(self.settings.singleton_lease.total_seconds() / 3, 0.2)
        troubled = False
        renew_at = 0.0
        while not stopping.wait(
            min(interval, HEARTBEAT_RETRY_SECONDS if troubled else RESTART_CHECK_SECONDS)
        ):
            try:
                now = time.monotonic()
                restarted = self._redis_restarted()  # (each pass also sets the baseline)
                if not troubled and now < renew_at and not restarted:
                    continue
                renew_at = now + interval
                self._forget_ended()
                self._free_unfreed()
                with self._lock:
                    held = {**self._received, **self._runs}
                runs = [run for run in held.values() if run.singleton or run.capped]
                self._mark_seen()
                client = self.client
                if client is None:
                    continue
                for run in runs:
                    if run.singleton:
                        key = self.keys.running(run.entry)
                        self._renew(client, run, lua.HEARTBEAT, key, restarted=restarted)
                    if run.capped:
                        self._renew(client, run, lua.CAP_HEARTBEAT, self.keys.cap)
                troubled = False
            except Exception as exc:
                troubled = True
                self._redis_failed("renew the markers of the runs in progress (heartbeat)", exc)

    def _redis_restarted(self) -> bool:
        """Whether Redis restarted (or another server took over) since this process last
        looked, while it holds a run whose marker or place the restart may have lost: a quick
        restart between two heartbeats breaks no call, so its ``run_id`` is watched."""
        client = self.client
        with self._lock:
            holding = any(run.singleton or run.capped for run in self._runs.values())
        if not holding or not isinstance(client, redis.Redis):
            return False
        run_id = client.info("server").get("run_id")
        seen, self._redis_run_id = self._redis_run_id, run_id
        return seen is not None and run_id != seen

    def _renew(
        self, client: Any, run: Run, script: str, key: str, *, restarted: bool = False
    ) -> None:
        """Renew one marker or place of ``run``; take it back when it is gone and the run is
        executing in this process, and just after Redis restarted whoever holds it (a
        snapshot may have brought back an ended run's marker). Checked under the lock: a run
        that ended frees its marker only after it left ``_runs``, so a marker is never taken
        back after its free. A run found busy or capped at its start never held one: it takes
        nothing (it sits in ``_runs`` until its end, beside the run that holds the marker)."""
        if int(client.eval(script, 1, key, run.task_id, self._lease_ms, "0")) != 0:
            return
        with self._lock:
            if self._runs.get(run.task_id) is run and not run.skipped:
                how = "2" if restarted else "1"
                client.eval(script, 1, key, run.task_id, self._lease_ms, how)


def _after_fork(hooks: WorkerHooks | None) -> None:
    """In a process forked from one using ``hooks`` (a pool process of a worker's main
    process): the runs that process received and the markers it could not free are its own
    business, and a lock its heartbeat held at the fork would never be released here."""
    if hooks is None:
        return
    hooks._lock = threading.Lock()
    hooks._received.clear()
    hooks._unheld_since.clear()
    hooks._let_go.clear()
    hooks._unfreed.clear()
    hooks._unsent.clear()


def _guarded(hooks: WorkerHooks, before_start: Any) -> Any:
    """``before_start`` that first stops a run :class:`WorkerHooks` decided not to execute."""

    def guarded(task: Any, task_id: str, args: Any, kwargs: Any) -> Any:
        if task.app is hooks.app:
            hooks.prevent(task_id)
        return before_start(task, task_id, args, kwargs)

    return guarded


def _held_run(occurrence: Occurrence) -> Run:
    """The held-back run of ``occurrence``, as a :class:`Run` for the records."""
    return Run(
        entry=occurrence.entry,
        slot=occurrence.slot.isoformat(),
        task_id=occurrence.task_id,
        started=time.monotonic(),
        singleton=True,
        capped=False,
        worker=socket.gethostname(),
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
