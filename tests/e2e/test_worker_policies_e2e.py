"""Issue 14 on real ``celery worker`` processes (prefork ``-c 2`` and solo) and a real Redis:
singleton markers and places under the cap through retries, waits in the queue and held-back
runs; one ``job_started`` and one final outcome per run.

The runs are sent as beat sends them (the scheduler's headers, the marker and the place set as
the claim sets them), so each test sets up exactly the moment it checks. One worker per pool
serves every test of the module; each test uses entries of its own.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from celery_fork_scheduler.ids import CAPPED_HEADER, ENTRY_HEADER, OVERLAP_HEADER, SLOT_HEADER
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.publishing import Occurrence, occurrence_to_json
from celery_fork_scheduler.testing import CeleryProcess, RedisServer, wait_until

from .harness import write_project

pytestmark = pytest.mark.e2e

KEYS = Keys("scheduler:")
LEASE = 2.0

BODY = """
import time as _time

from celery_fork_scheduler import install, signals as fs_signals

app.conf.fork_scheduler_singleton_lease = 2
app.conf.fork_scheduler_max_concurrent = 1


def _note(event, request, **extra):
    entry = request.get("fork_scheduler_entry")
    _recorder.rpush("test:notes", json.dumps({
        "event": event, "at": _time.time(), "entry": entry, "task_id": request.id,
        "retries": request.retries,
        "marker": (_recorder.get("scheduler:{" + entry + "}:running") or b"").decode(),
        "place": _recorder.zscore("scheduler:{cap}:running", request.id) is not None,
        "capped": bool(request.get("fork_scheduler_capped")),
    }))


@app.task(bind=True, name="work")
def work(self, seconds):
    _note("start", self.request)
    _time.sleep(seconds)
    _note("end", self.request)


@app.task(bind=True, name="flaky", max_retries=2)
def flaky(self, countdown):
    _note("start", self.request)
    if self.request.retries < 2:
        raise self.retry(countdown=countdown)
    _note("end", self.request)


def _signal(name):
    def receiver(sender=None, task_id=None, **kwargs):
        _recorder.rpush("test:signals", json.dumps({"signal": name, "task_id": task_id}))
    return receiver


for _name in ("job_started", "job_completed", "job_failed"):
    getattr(fs_signals, _name).connect(_signal(_name), weak=False)

install(app)
"""


@pytest.fixture(scope="module", params=["prefork", "solo"])
def worker(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """A worker of the given pool on the session's Redis; yields the Redis URL."""
    workdir = tmp_path_factory.mktemp(f"worker-{request.param}")
    module = write_project(workdir, BODY)
    concurrency = ["-c", "2"] if request.param == "prefork" else []
    process = CeleryProcess(
        module,
        ["worker", "-l", "info", "-P", request.param, *concurrency, "-n", "w@%h",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=workdir,
        log_path=workdir / "worker.log",
        env={"TEST_BROKER_URL": redis_server.url},
    )  # fmt: skip
    process.start()
    try:
        ready = lambda: " ready." in process.log()  # noqa: E731
        wait_until(ready, timeout=60, what="the worker\n" + _log(workdir))
        yield redis_server.url
    finally:
        process.stop()


def _log(workdir: Path) -> str:
    log = workdir / "worker.log"
    return log.read_text(errors="replace")[-6000:] if log.exists() else ""


@pytest.fixture
def client(worker: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(worker, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def sender(worker: str) -> Iterator[Celery]:
    app = Celery("sender", broker=worker)
    yield app
    app.close()


def fresh(name: str) -> str:
    """An entry name of this test alone (the worker and Redis serve the whole module)."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def slot_text(offset: float = 0) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=offset)).isoformat()


def send(
    app: Celery,
    entry: str,
    task: str,
    args: list[Any],
    *,
    task_id: str | None = None,
    overlap: str | None = "skip",
    capped: bool = False,
    **options: Any,
) -> str:
    """Publish a run as beat does; returns its task id."""
    task_id = task_id or str(uuid.uuid4())
    headers: dict[str, Any] = {ENTRY_HEADER: entry, SLOT_HEADER: slot_text()}
    if overlap:
        headers[OVERLAP_HEADER] = overlap
    if capped:
        headers[CAPPED_HEADER] = True
    app.send_task(task, args, task_id=task_id, headers=headers, **options)
    return task_id


def notes(client: redis.Redis, entry: str) -> list[dict[str, Any]]:
    return [n for n in map(json.loads, client.lrange("test:notes", 0, -1)) if n["entry"] == entry]


def signals_of(client: redis.Redis, task_id: str) -> list[str]:
    raw = client.lrange("test:signals", 0, -1)
    return [s["signal"] for s in map(json.loads, raw) if s["task_id"] == task_id]


def history(client: redis.Redis, entry: str) -> list[dict[str, Any]]:
    return [json.loads(item) for item in client.lrange(KEYS.history(entry), 0, -1)]


def take_place(client: redis.Redis, task_id: str, seconds: float = LEASE) -> None:
    client.zadd(KEYS.cap, {task_id: (time.time() + seconds) * 1_000_000})


# -- 1 and 10: a retried run keeps its marker and place; one job_started, one outcome ----------


def test_a_retried_run_keeps_its_marker_and_place_until_its_last_attempt(
    client: redis.Redis, sender: Celery
) -> None:
    entry = fresh("retried")
    task_id = str(uuid.uuid4())
    client.set(KEYS.running(entry), task_id, px=int(LEASE * 1000))
    take_place(client, task_id)
    # Each retry waits 3 s, longer than the 2 s lease: only the worker keeps them alive.
    send(sender, entry, "flaky", [3], task_id=task_id, capped=True)
    wait_until(lambda: notes(client, entry), timeout=30, what="the first attempt")
    while len(notes(client, entry)) < 4:  # 3 starts and the end
        assert client.get(KEYS.running(entry)) == task_id, notes(client, entry)
        assert client.zscore(KEYS.cap, task_id) is not None
        time.sleep(0.1)
    assert [n["retries"] for n in notes(client, entry) if n["event"] == "start"] == [0, 1, 2]
    wait_until(lambda: client.get(KEYS.running(entry)) is None, timeout=10, what="release")
    assert client.zscore(KEYS.cap, task_id) is None
    wait_until(lambda: len(signals_of(client, task_id)) >= 2, timeout=10, what="signals")
    assert signals_of(client, task_id) == ["job_started", "job_completed"]
    assert [h["outcome"] for h in history(client, entry)] == ["completed"]


# -- 2: a run that waited longer than its lease ---------------------------------------------------


def test_a_run_whose_expired_marker_another_run_took_is_not_run(
    client: redis.Redis, sender: Celery
) -> None:
    """Three runs queued while their markers expired one after the other: the run holding the
    marker executes; the two others are not run, and are given back."""
    entry = fresh("queued")
    ids = [str(uuid.uuid4()) for _ in range(3)]
    client.hset(KEYS.state(entry), "runs", 3)
    client.set(KEYS.running(entry), ids[2], px=30_000)  # the latest claim holds it
    for task_id in ids:
        send(sender, entry, "work", [0.5], task_id=task_id)
    wait_until(lambda: len(history(client, entry)) >= 3, timeout=30, what="three outcomes")
    started = [n["task_id"] for n in notes(client, entry) if n["event"] == "start"]
    assert started == [ids[2]]
    outcomes = {h["task_id"]: h["outcome"] for h in history(client, entry)}
    assert outcomes == {ids[0]: "skipped:busy", ids[1]: "skipped:busy", ids[2]: "completed"}
    state = client.hgetall(KEYS.state(entry))
    assert (state["runs"], state["skips:busy"]) == ("1", "2")
    for task_id in ids[:2]:
        assert signals_of(client, task_id) == []


def test_a_run_waiting_for_its_countdown_keeps_its_marker(
    client: redis.Redis, sender: Celery
) -> None:
    entry = fresh("countdown")
    task_id = str(uuid.uuid4())
    client.set(KEYS.running(entry), task_id, px=int(LEASE * 1000))
    send(sender, entry, "work", [0], task_id=task_id, countdown=2 * LEASE)
    while not notes(client, entry):
        assert client.get(KEYS.running(entry)) == task_id
        time.sleep(0.1)
    assert notes(client, entry)[0]["marker"] == task_id


def test_a_run_whose_marker_expired_unclaimed_takes_it_again(
    client: redis.Redis, sender: Celery
) -> None:
    entry = fresh("retaken")
    task_id = send(sender, entry, "work", [1])  # no marker: it expired while queued
    wait_until(lambda: len(notes(client, entry)) >= 1, timeout=30, what="the run")
    assert notes(client, entry)[0]["marker"] == task_id


# -- 3: the held run takes a place under the cap -------------------------------------------------


def held_message(entry: str, task: str, args: list[Any], **options: Any) -> tuple[str, str]:
    """The JSON held back for ``buffer_one`` (as the scheduler builds it: without a place)."""
    task_id = str(uuid.uuid4())
    occurrence = Occurrence(
        entry=entry,
        slot=datetime.now(timezone.utc),
        task=task,
        task_id=task_id,
        args=tuple(args),
        kwargs={},
        options=options,
        headers={ENTRY_HEADER: entry, SLOT_HEADER: slot_text(), OVERLAP_HEADER: "buffer_one"},
    )
    return task_id, occurrence_to_json(occurrence)


def test_the_held_run_takes_a_place_under_the_cap(client: redis.Redis, sender: Celery) -> None:
    entry = fresh("held-cap")
    running = str(uuid.uuid4())
    held_id, held = held_message(entry, "work", [0.5])
    client.set(KEYS.running(entry), running, px=int(LEASE * 1000))
    client.set(KEYS.buffered(entry), held)
    take_place(client, running)
    send(sender, entry, "work", [0.2], task_id=running, overlap="buffer_one", capped=True)
    wait_until(lambda: len(notes(client, entry)) >= 3, timeout=30, what="the held run")
    start = notes(client, entry)[2]
    assert (start["task_id"], start["capped"], start["place"]) == (held_id, True, True)


def test_a_held_run_over_the_cap_is_skipped_as_capped(client: redis.Redis, sender: Celery) -> None:
    entry = fresh("held-full")
    running = str(uuid.uuid4())
    held_id, held = held_message(entry, "work", [0])
    client.set(KEYS.running(entry), running, px=int(LEASE * 1000))
    client.set(KEYS.buffered(entry), held)
    client.hset(KEYS.state(entry), "runs", 1)
    other = f"other-{uuid.uuid4()}"
    take_place(client, other, seconds=60)  # the cap of 1 is full once the running one ends
    try:
        send(sender, entry, "work", [0.2], task_id=running, overlap="buffer_one")
        wait_until(lambda: len(history(client, entry)) >= 2, timeout=30, what="outcomes")
    finally:
        client.zrem(KEYS.cap, other)
    assert [h["outcome"] for h in history(client, entry)] == ["skipped:capped", "completed"]
    assert history(client, entry)[0]["task_id"] == held_id
    assert client.get(KEYS.running(entry)) is None
    assert client.hget(KEYS.state(entry), "runs") == "1"


# -- 6 and 7: a held run of a paused entry is dropped; one whose publish fails is kept ------------


def test_the_held_run_of_a_paused_entry_is_not_sent(client: redis.Redis, sender: Celery) -> None:
    entry = fresh("held-paused")
    running = str(uuid.uuid4())
    held_id, held = held_message(entry, "work", [0])
    client.set(KEYS.running(entry), running, px=int(LEASE * 1000))
    client.set(KEYS.buffered(entry), held)
    client.hset(KEYS.state(entry), "paused", "1")
    send(sender, entry, "work", [0.2], task_id=running, overlap="buffer_one")
    wait_until(lambda: len(history(client, entry)) >= 2, timeout=30, what="outcomes")
    assert [(h["task_id"], h["outcome"]) for h in history(client, entry)] == [
        (held_id, "skipped:paused"),
        (running, "completed"),
    ]
    assert client.get(KEYS.running(entry)) is None and client.get(KEYS.buffered(entry)) is None
    time.sleep(0.5)  # nothing else is on its way: the held run never starts
    assert [n["task_id"] for n in notes(client, entry)] == [running, running]


def test_a_held_run_whose_publish_fails_is_kept_and_frees_the_marker(
    client: redis.Redis, sender: Celery
) -> None:
    entry = fresh("held-fails")
    running = str(uuid.uuid4())
    held_id, held = held_message(entry, "work", [0], serializer="no-such-serializer")
    client.set(KEYS.running(entry), running, px=int(LEASE * 1000))
    client.set(KEYS.buffered(entry), held)
    client.hset(KEYS.state(entry), "runs", 1)
    send(sender, entry, "work", [0.2], task_id=running, overlap="buffer_one")
    wait_until(lambda: len(history(client, entry)) >= 2, timeout=30, what="outcomes")
    failed = history(client, entry)[0]
    assert (failed["task_id"], failed["outcome"]) == (held_id, "failed"), failed
    assert "serializer" in failed["error"].lower() or "no-such" in failed["error"]
    assert client.get(KEYS.running(entry)) is None  # not blocked for a lease
    assert client.get(KEYS.buffered(entry)) == held  # held back again, not lost
    state = client.hgetall(KEYS.state(entry))
    assert (state["runs"], state["failures"]) == ("1", "1")


# -- 10: the hard time limit under prefork ---------------------------------------------------------


def test_a_hard_time_limit_is_one_final_failure_and_frees_the_marker(
    client: redis.Redis, sender: Celery, request: pytest.FixtureRequest
) -> None:
    if "solo" in request.node.callspec.id:
        pytest.skip("the solo pool has no time limits")
    entry = fresh("time-limit")
    task_id = str(uuid.uuid4())
    client.set(KEYS.running(entry), task_id, px=int(LEASE * 1000))
    send(sender, entry, "work", [30], task_id=task_id, time_limit=1)
    wait_until(lambda: "job_failed" in signals_of(client, task_id), timeout=30, what="job_failed")
    assert signals_of(client, task_id) == ["job_started", "job_failed"]
    [item] = history(client, entry)
    assert item["outcome"] == "error" and "TimeLimitExceeded" in item["error"]
    assert client.hget(KEYS.state(entry), "errors") == "1"
    assert client.get(KEYS.running(entry)) is None
