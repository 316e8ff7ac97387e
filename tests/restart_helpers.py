"""Helpers of the Redis-restart adversary rounds (49-53): the app of a round (its name and the
task of every entry), private redis-servers a test crashes and starts again on the same port
(empty, or from a snapshot or append-only file copied earlier), a beat replica on the real
clock, and the fixtures ``servers``, ``beats`` and ``workers`` that stop what a test made.

A test module uses the fixtures by importing their functions (``servers_fixture``, ...): pytest
finds them there under their fixture names."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest
from celery import Celery
from hand_driven_helpers import HandDrivenWorker, RecordingBeat

from celery_fork_scheduler import Scheduler, signals
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.config import read_settings
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.testing import RecordingPublisher, RedisServer

T = TypeVar("T")
#: The claim keys of the rounds' apps (their default prefix).
KEYS = Keys("scheduler:")
#: 10:00:00 of the rounds' timelines.
BASE = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)


def t(seconds: float) -> datetime:
    """The instant ``seconds`` after :data:`BASE`."""
    return BASE + timedelta(seconds=seconds)


def make_app(
    name: str,
    task: str,
    url: str,
    beat_schedule: dict[str, Any],
    *,
    broker: str = "memory://",
    **conf: Any,
) -> Celery:
    """Beat and worker of one app ``name``, whose every entry runs ``task``; claims on ``url``;
    every replica asks at once unless ``fork_scheduler_owner_grace`` is given."""
    app = Celery(name, broker=broker, set_as_current=False)
    app.conf.update(
        {
            "timezone": "UTC",
            "beat_schedule": beat_schedule,
            "fork_scheduler_redis_url": url,
            "fork_scheduler_owner_grace": 0,
            "result_expires": None,
            "broker_connection_retry_on_startup": False,
            **conf,
        }
    )

    @app.task(name=task, shared=False)
    def job(*args: Any, **kwargs: Any) -> None:
        """The task of every entry."""

    return app


class Killed(BaseException):
    """The replica's process dies here (SIGKILL): nothing after it runs."""


def _stopped_after(stop: Callable[[T], object], *errors: type[BaseException]) -> Iterator[list[T]]:
    """For a fixture: the list the test puts what it makes in, then ``stop`` of each (what
    ``stop`` raises, an ``Exception`` or one of ``errors``, ignored). ``yield from`` it."""
    made: list[T] = []
    yield made
    for each in made:
        with contextlib.suppress(Exception, *errors):
            stop(each)


@pytest.fixture(name="servers")
def servers_fixture() -> Iterator[list[RedisServer]]:
    """Private redis-servers the test may crash and start again."""
    yield from _stopped_after(RedisServer.stop)


@pytest.fixture(name="beats")
def beats_fixture() -> Iterator[list[Any]]:
    """Beat replicas: their schedulers are closed at the end (a replica ``Killed`` on the way)."""
    yield from _stopped_after(lambda beat: beat.scheduler.close(), Killed)


def buffer_all_app(name: str, task: str, url: str, **conf: Any) -> Celery:
    """An app whose entry ``e`` runs ``task`` every 2 s, ``overlap="buffer_all"``; singleton
    lease 5 s, no retries (``conf`` overrides), broker = the claims' Redis ``url``."""
    schedule = {"e": {"task": task, "schedule": timedelta(seconds=2), "overlap": "buffer_all"}}
    settings = {"fork_scheduler_singleton_lease": 5, "fork_scheduler_max_retries": 0, **conf}
    return make_app(name, task, url, schedule, broker=url, **settings)


@pytest.fixture(name="skips")
def skips_fixture() -> Iterator[list[tuple[str, datetime, str]]]:
    """Every ``entry_skipped`` sent during the test: (entry, slot, reason)."""
    seen: list[tuple[str, datetime, str]] = []

    def receive(sender: Any = None, **kwargs: Any) -> None:
        seen.append((kwargs["entry"], kwargs["slot"], kwargs["reason"]))

    signals.entry_skipped.connect(receive, weak=False)
    yield seen
    signals.entry_skipped.disconnect(receive)


def slots_of(beat: Any, name: str = "e") -> list[datetime]:
    """The slots of ``name`` that a :class:`RecordingBeat` published, in order."""
    return [o.slot for o in beat.publisher.occurrences if o.entry == name]


@pytest.fixture(name="workers")
def workers_fixture() -> Iterator[list[HandDrivenWorker]]:
    """Hand-driven workers: their heartbeat threads are stopped at the end."""
    yield from _stopped_after(lambda worker: worker.hooks._stopping.set())


def beat_with_worker(
    app: Celery, clock: Any, task: str, beats: list[Any], workers: list[HandDrivenWorker]
) -> tuple[Any, HandDrivenWorker]:
    """One beat replica (``replica-a``, on ``clock``, set up) and one hand-driven worker of
    ``app`` whose heartbeat passes the test drives (no heartbeat thread)."""
    beat = RecordingBeat(app, clock, "replica-a")
    beats.append(beat)
    beat.scheduler.setup_schedule()
    worker = HandDrivenWorker(app, task)
    worker.hooks._stopping.set()
    workers.append(worker)
    return beat, worker


def start_server(
    servers: list[RedisServer],
    *,
    port: int | None = None,
    kept: Path | None = None,
    extra_args: Sequence[str] = (),
) -> RedisServer:
    """A private redis-server started (on ``port``: where a crashed one ran) and listed in
    ``servers``; with ``kept``, from that copy of a snapshot (``dump.rdb``) or of an append-only
    directory, put in its directory under the same name; else empty."""
    server = RedisServer(port=port, extra_args=extra_args)
    servers.append(server)
    if kept is not None and kept.is_dir():
        shutil.copytree(kept, server.workdir / kept.name)
    elif kept is not None:
        shutil.copy(kept, server.workdir / kept.name)
    return server.start()


def crash(server: RedisServer) -> None:
    """The Redis process dies at once (SIGKILL: nothing is saved)."""
    assert server.process is not None
    server.process.kill()
    server.process.wait()


def _real_now() -> datetime:
    return datetime.now(timezone.utc)


class RealClockBeat:
    """One beat replica on the real clock (this host's clock is Redis's: one machine)."""

    def __init__(self, app: Celery) -> None:
        self.publisher = RecordingPublisher()
        backend = RedisBackend.from_url(app.conf.fork_scheduler_redis_url, read_settings(app.conf))
        self.scheduler = Scheduler(
            app,
            clock=_real_now,
            backend=backend,
            publisher=self.publisher,
            exit_on_config_error=False,
        )

    def run_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.scheduler.tick()
            time.sleep(0.05)

    def run_until_published(self, count: int, within: float) -> None:
        end = time.monotonic() + within
        while time.monotonic() < end and len(self.publisher.occurrences) < count:
            self.run_for(0.1)


def run_beat_until(beat: RealClockBeat, monotonic_deadline: float) -> None:
    beat.run_for(max(monotonic_deadline - time.monotonic(), 0.0))
