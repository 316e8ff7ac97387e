"""Helpers shared by the tests of the start-up path (paged read of runtime entries, start-up
catch-up): one page per read, slot names, entries that never fall due, a dead replica's
unsent claims, and a read that fails after its first page. Real Redis throughout."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import redis
from replica_helpers import make_app

from celery_fork_scheduler import Scheduler, static_build
from celery_fork_scheduler import scheduler as scheduler_module
from celery_fork_scheduler.backends import Claim
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.config import read_settings
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.store import RuntimeStore


def one_page_per_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each start-up and each tick reads exactly one page (HSCAN's ~1 000 names) of the
    runtime entries; the static entries are built whole at start-up (one page)."""
    monkeypatch.setattr(scheduler_module, "SETUP_LOAD_SECONDS", 0.0)
    monkeypatch.setattr(scheduler_module, "TICK_LOAD_SECONDS", 0.0)
    monkeypatch.setattr(static_build, "PAGE_SIZE", 10**9)


def one_static_page_per_tick(monkeypatch: pytest.MonkeyPatch, page: int) -> None:
    """Each start-up and each tick builds exactly one page of ``page`` static entries."""
    monkeypatch.setattr(scheduler_module, "SETUP_LOAD_SECONDS", 0.0)
    monkeypatch.setattr(scheduler_module, "TICK_BUILD_SECONDS", 0.0)
    monkeypatch.setattr(static_build, "PAGE_SIZE", page)


def runtime_names(scheduler: Scheduler) -> set[str]:
    """The runtime entries a replica has read."""
    return {name for name, entry in scheduler.entries.items() if entry.source == "runtime"}


def at(text: str) -> str:
    """The ISO form `fired` uses for a slot on 2026-03-02 (``"10:01"`` -> 10:01:00 UTC)."""
    return f"2026-03-02T{text}:00+00:00"


def slot_at(text: str) -> datetime:
    return datetime.fromisoformat(at(text))


def padding(count: int) -> dict[str, Any]:
    """``count`` static entries that never fall due during a test: with a small
    ``MARKS_BATCH`` they put the entries under test behind their batches of marks."""
    return {f"pad{i:05}": {"task": "reports.yearly", "schedule": "0 0 1 1 *"} for i in range(count)}


def dead_replica_claims(redis_url: str, names: list[str], slot: datetime, **claim: Any) -> float:
    """A replica ("dead") wins ``slot`` of each of ``names`` and dies before publishing any;
    returns Redis's TIME once every claim is made (epoch seconds)."""
    backend = RedisBackend.from_url(redis_url, read_settings(make_app(redis_url).conf))
    backend.replica_id = "dead"
    try:
        for start in range(0, len(names), 500):
            claims = [
                Claim(n, slot, task_id_for(n, slot), **claim) for n in names[start : start + 500]
            ]
            assert all(result.outcome.publish for result in backend.claim(claims))
    finally:
        backend.close()
    return redis_time(redis_url)


def redis_time(redis_url: str) -> float:
    """Redis's TIME (epoch seconds)."""
    with redis.Redis.from_url(redis_url) as client:
        seconds, micros = client.time()
    return seconds + micros / 1e6


def wait_for_redis_time(redis_url: str, instant: float, timeout: float = 30.0) -> None:
    """Wait until Redis's TIME passes ``instant`` (a claim lease, judged on it, ran out)."""
    deadline = time.monotonic() + timeout
    while redis_time(redis_url) <= instant:
        assert time.monotonic() < deadline, "Redis TIME did not pass the instant"
        time.sleep(0.05)


def fail_after_first_page(monkeypatch: pytest.MonkeyPatch) -> Any:
    """RuntimeStore.pages answers one page, then ConnectionError; returns the real method."""
    real_pages = RuntimeStore.pages

    def failing_after_one_page(self: RuntimeStore, *args: Any, **kwargs: Any) -> Any:
        version, pages = real_pages(self, *args, **kwargs)

        def pages_then_error() -> Iterator[Any]:
            yield next(pages)
            raise redis.ConnectionError("connection lost mid-read")

        return version, pages_then_error()

    monkeypatch.setattr(RuntimeStore, "pages", failing_after_one_page)
    return real_pages
