"""Worker side: report the runs this scheduler published, and free their markers.

Connected by :func:`celery_fork_scheduler.install`. For a task that carries the scheduler's
headers it

- sends :data:`~.signals.job_started`, :data:`~.signals.job_completed` (with the duration) and
  :data:`~.signals.job_failed`;
- keeps the singleton marker and the place under the concurrency cap alive while the task runs
  (a heartbeat every third of ``fork_scheduler_singleton_lease``), and frees both when the task
  ends, fails or is revoked — a worker killed mid-task frees them when the lease runs out;
- publishes the run held back by overlap ``buffer_one`` as soon as the running one ends;
- marks Redis so that beat can tell that some worker does all this.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import signals as celery_signals

from . import signals
from .backends import lua
from .backends.base import to_epoch_us
from .backends.factory import redis_client_for
from .backends.redis import record_outcome
from .config import Settings, read_settings
from .ids import CAPPED_HEADER, ENTRY_HEADER, OVERLAP_HEADER, SLOT_HEADER
from .keys import Keys
from .publishing import CeleryPublisher, occurrence_from_json

logger = logging.getLogger("celery_fork_scheduler.worker")


@dataclass(slots=True)
class Run:
    """A scheduled run executing on this worker."""

    entry: str
    slot: str
    task_id: str
    started: float
    singleton: bool
    capped: bool
    worker: str


def _header(request: Any, name: str) -> Any:
    """A message header from a task request (Context) or a worker Request."""
    if hasattr(request, "get"):
        value = request.get(name)
        if value is not None:
            return value
    request_dict = getattr(request, "request_dict", None) or {}
    return request_dict.get(name)


class WorkerHooks:
    """The worker-side signal handlers of one Celery app."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._settings: Settings | None = None
        self._client: Any = None
        self._runs: dict[str, Run] = {}
        self._lock = threading.Lock()
        self._heartbeat_pid: int | None = None
        self._stopping = threading.Event()

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
        """The Redis client, created on first use (``None`` without Redis)."""
        if self._client is None:
            self._client = redis_client_for(self.app, self.settings)
        return self._client

    def connect(self) -> None:
        """Connect the handlers to Celery's worker signals."""
        celery_signals.task_prerun.connect(self.on_prerun, weak=False)
        celery_signals.task_postrun.connect(self.on_postrun, weak=False)
        celery_signals.task_failure.connect(self.on_failure, weak=False)
        celery_signals.task_revoked.connect(self.on_revoked, weak=False)
        celery_signals.worker_ready.connect(self.on_worker_ready, weak=False)
        celery_signals.worker_shutdown.connect(self.on_worker_shutdown, weak=False)

    # -- Celery signal handlers ---------------------------------------------------------------

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
        self._mark_seen()
        thread = threading.Thread(
            target=self._beat_hearts, name="fork-scheduler-heartbeat", daemon=True
        )
        thread.start()

    def on_worker_shutdown(self, **_: Any) -> None:
        """Stop the heartbeat thread."""
        self._stopping.set()

    def on_prerun(self, task_id: str, task: Any, **_: Any) -> None:
        """A scheduled run starts: remember it, send ``job_started``."""
        entry = _header(task.request, ENTRY_HEADER)
        if entry is None or task.app is not self.app:
            return
        run = Run(
            entry=entry,
            slot=_header(task.request, SLOT_HEADER),
            task_id=task_id,
            started=time.monotonic(),
            singleton=_header(task.request, OVERLAP_HEADER) is not None,
            capped=bool(_header(task.request, CAPPED_HEADER)),
            worker=getattr(task.request, "hostname", None) or socket.gethostname(),
        )
        with self._lock:
            self._runs[task_id] = run
        if run.singleton or run.capped:
            self._ensure_heartbeat()
        signals.job_started.send(sender=task, entry=entry, slot=run.slot, task_id=task_id)

    def on_postrun(self, task_id: str, task: Any, state: str | None = None, **_: Any) -> None:
        """A scheduled run ended: free its markers, send ``job_completed`` on success."""
        with self._lock:
            run = self._runs.pop(task_id, None)
        if run is None:
            return
        self._finish(run.entry, task_id, singleton=run.singleton, capped=run.capped)
        if state == "SUCCESS":
            duration = time.monotonic() - run.started
            self._record(run, "completed", "completed", duration=duration)
            signals.job_completed.send(
                sender=task, entry=run.entry, slot=run.slot, task_id=task_id, duration=duration
            )

    def on_failure(
        self,
        sender: Any = None,
        task_id: str = "",
        exception: BaseException | None = None,
        **_: Any,
    ) -> None:
        """A scheduled run raised: send ``job_failed`` (postrun frees the markers)."""
        with self._lock:
            run = self._runs.get(task_id)
        if run is not None:
            self._record(
                run,
                "error",
                "errors",
                duration=time.monotonic() - run.started,
                error=f"{type(exception).__name__}: {exception}",
            )
            signals.job_failed.send(
                sender=sender, entry=run.entry, slot=run.slot, task_id=task_id, exception=exception
            )

    def on_revoked(self, request: Any = None, **_: Any) -> None:
        """A scheduled run was revoked, maybe before it started: free its markers."""
        entry = _header(request, ENTRY_HEADER)
        task_id = getattr(request, "id", None) or getattr(request, "task_id", None)
        if entry is None or task_id is None:
            return
        with self._lock:
            self._runs.pop(task_id, None)
        self._finish(
            entry,
            task_id,
            singleton=_header(request, OVERLAP_HEADER) is not None,
            capped=bool(_header(request, CAPPED_HEADER)),
        )

    # -- markers ----------------------------------------------------------------------------

    def _finish(self, entry: str, task_id: str, *, singleton: bool, capped: bool) -> None:
        client = self.client
        if client is None or not (singleton or capped):
            return
        lease_ms = int(self.settings.singleton_lease.total_seconds() * 1000)
        try:
            if capped:
                client.zrem(self.keys.cap, task_id)
            if singleton:
                held = client.eval(
                    lua.RELEASE,
                    3,
                    self.keys.running(entry),
                    self.keys.buffered(entry),
                    self.keys.state(entry),
                    task_id,
                    lease_ms,
                )
                if held is not None:
                    self._publish_held(held)
        except Exception:
            logger.exception(
                "fork scheduler: could not free the markers of %s (%s)", entry, task_id
            )

    def _record(
        self, run: Run, outcome: str, counter: str, *, duration: float, error: str = ""
    ) -> None:
        """Count the run's end and push it to the entry's history in Redis."""
        client = self.client
        if client is None:
            return
        try:
            record_outcome(
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
            )
        except Exception:
            logger.warning(
                "fork scheduler: could not record the end of %s", run.entry, exc_info=True
            )

    def _publish_held(self, held: bytes | str) -> None:
        """Publish the run that overlap ``buffer_one`` held back."""
        occurrence = occurrence_from_json(held)
        CeleryPublisher(self.app, lambda: None).publish(occurrence)
        logger.info(
            "fork scheduler: sent held-back run of %s slot %s id %s",
            occurrence.entry,
            occurrence.slot.isoformat(),
            occurrence.task_id,
        )

    def _mark_seen(self) -> None:
        client = self.client
        if client is None:
            return
        ttl = max(int(self.settings.singleton_lease.total_seconds() * 3), 60)
        try:
            client.set(self.keys.workers_seen, "1", ex=ttl)
        except Exception:
            logger.warning("fork scheduler: could not reach Redis to announce this worker")

    def _beat_hearts(self) -> None:
        interval = max(self.settings.singleton_lease.total_seconds() / 3, 0.2)
        lease_ms = int(self.settings.singleton_lease.total_seconds() * 1000)
        while not self._stopping.wait(interval):
            with self._lock:
                runs = [run for run in self._runs.values() if run.singleton or run.capped]
            try:
                self._mark_seen()
                for run in runs:
                    if run.singleton:
                        self.client.eval(
                            lua.HEARTBEAT, 1, self.keys.running(run.entry), run.task_id, lease_ms
                        )
                    if run.capped:
                        self.client.eval(lua.CAP_HEARTBEAT, 1, self.keys.cap, run.task_id, lease_ms)
            except Exception:
                logger.warning("fork scheduler: heartbeat failed; retrying", exc_info=True)
