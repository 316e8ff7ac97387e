"""Shared fixtures: one real, throwaway redis-server per test session."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import redis
from lane_helpers import Seen
from replica_helpers import START

import celery_fork_scheduler.store as store_module
from celery_fork_scheduler import signals
from celery_fork_scheduler.testing import FakeClock, RedisServer
from celery_fork_scheduler.worker import WorkerHooks


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private real redis-server for the whole session."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The URL of the session's redis-server, emptied before each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the session's (emptied) redis-server."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock at ``replica_helpers.START`` (a module may define its own)."""
    return FakeClock(START)


@pytest.fixture(autouse=True)
def _root_logger_level() -> Iterator[None]:
    """An in-process Celery worker sets the root logger's level (``start_worker``'s
    ``loglevel``) and leaves it: each test gets back the level it started with, so that a later
    test's ``caplog`` sees warnings."""
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


@pytest.fixture(autouse=True)
def _worker_heartbeats_stop(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Worker hooks a test drives by hand (``on_prerun`` of a singleton run) start the
    heartbeat thread as a worker would; no worker stops it. It stops with the test, so that it
    renews no later test's markers and announces no worker to them."""
    created: list[WorkerHooks] = []
    original = WorkerHooks.__init__

    def recording(self: WorkerHooks, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        created.append(self)

    monkeypatch.setattr(WorkerHooks, "__init__", recording)
    yield
    for hooks in created:
        hooks.on_worker_shutdown()


@pytest.fixture
def seen() -> Iterator[Seen]:
    """Every entry_dispatched, entry_skipped and entry_failed signal sent during the test."""
    record = Seen()
    signals.entry_dispatched.connect(record.on_dispatched)
    signals.entry_skipped.connect(record.on_skipped)
    signals.entry_failed.connect(record.on_failed)
    try:
        yield record
    finally:
        signals.entry_dispatched.disconnect(record.on_dispatched)
        signals.entry_skipped.disconnect(record.on_skipped)
        signals.entry_failed.disconnect(record.on_failed)


@pytest.fixture
def skipped() -> Iterator[list[tuple[str, datetime, str]]]:
    """Every ``entry_skipped`` signal: (entry, slot, reason)."""
    seen: list[tuple[str, datetime, str]] = []

    def receiver(sender: Any = None, entry: str = "", slot: Any = None, reason: str = "", **_: Any):
        seen.append((entry, slot, reason))

    signals.entry_skipped.connect(receiver, weak=False)
    yield seen
    signals.entry_skipped.disconnect(receiver)


@pytest.fixture(params=["one Redis", "cluster path"])
def layout(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways the runtime store writes: with the entries' own keys in its scripts (one
    Redis), and with pipelines around them (Redis Cluster; forced here on a plain Redis)."""
    if request.param == "cluster path":
        monkeypatch.setattr(store_module, "RedisCluster", redis.Redis)
    return str(request.param)
