"""Guarantee 6 (singleton across the cluster) and the cluster-wide cap, end to end.

Real ``redis-server``, real ``celery beat -S fork`` replicas and real ``celery worker``
processes. The project module calls ``celery_fork_scheduler.install(app)``, so the workers free
the markers. The slow task itself records when it started and ended (``time.time()``) and on
which worker, in a Redis list: overlap is judged from what the workers really did, skips from
what the beat replicas logged.
"""

from __future__ import annotations

import collections
import functools
import itertools
import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from celery_fork_scheduler.testing import CeleryProcess, wait_until

from .conftest import dump_logs
from .harness import beat_replicas, start_beats, write_project

pytestmark = pytest.mark.e2e

#: The slow task: it records its start and its end (with the worker's hostname) in a Redis list.
SLOW_TASK = """
import time as _time

from celery_fork_scheduler import install


@app.task(bind=True, name="slow")
def slow(self, seconds):
    def note(event):
        _recorder.rpush("test:runs", json.dumps({
            "event": event,
            "at": _time.time(),
            "entry": self.request.get("fork_scheduler_entry"),
            "slot": self.request.get("fork_scheduler_slot"),
            "task_id": self.request.id,
            "hostname": self.request.hostname,
        }))

    note("start")
    _time.sleep(seconds)
    note("end")
"""

SENT = re.compile(r"fork scheduler: sent (?P<entry>\S+) \(\S+\) slot (?P<slot>\S+) id")
SKIPPED = re.compile(r"fork scheduler: (?P<entry>\S+) slot (?P<slot>\S+) skipped: (?P<reason>\w+)")


@dataclass
class Run:
    """One execution of the slow task, as the worker recorded it."""

    entry: str
    slot: str
    task_id: str
    hostname: str
    start: float
    end: float | None = None

    @property
    def slot_time(self) -> float:
        return datetime.fromisoformat(self.slot).timestamp()


def project(body: str) -> str:
    """The project body: settings and entries first, then the task and ``install(app)``."""
    return body + SLOW_TASK + "\ninstall(app)\n"


def recorded_runs(client: redis.Redis) -> list[Run]:
    """The runs the workers recorded, by start time."""
    runs: dict[str, Run] = {}
    for raw in client.lrange("test:runs", 0, -1):
        note = json.loads(raw)
        if note["event"] == "start":
            runs[note["task_id"]] = Run(
                note["entry"], note["slot"], note["task_id"], note["hostname"], note["at"]
            )
        else:
            runs[note["task_id"]].end = note["at"]
    return sorted(runs.values(), key=lambda run: run.start)


def starts(client: redis.Redis) -> int:
    return sum(json.loads(raw)["event"] == "start" for raw in client.lrange("test:runs", 0, -1))


def max_concurrent(runs: Iterable[Run], until: float) -> int:
    """The largest number of runs executing at one instant (an open run lasts until ``until``)."""
    events = []
    for run in runs:
        events.append((run.start, 1))
        events.append((run.end if run.end is not None else until, -1))
    # At a tie an end comes first: a run that starts as another ends does not overlap it.
    events.sort(key=lambda event: (event[0], event[1]))
    current = highest = 0
    for _, step in events:
        current += step
        highest = max(highest, current)
    return highest


def beat_lines(beats: Iterable[CeleryProcess], pattern: re.Pattern[str]) -> list[re.Match[str]]:
    """Matching lines of the replicas' logs; ``skipped: claimed`` (another replica has the
    slot: the normal case of every replica but one) is left out."""
    return [
        match
        for beat in beats
        for match in pattern.finditer(beat.log())
        if match.groupdict().get("reason") != "claimed"
    ]


def start_cluster(
    module: str,
    workdir: Path,
    env: dict[str, str],
    processes: list[CeleryProcess],
    *,
    beats: int,
    workers: int,
    concurrency: int,
) -> tuple[list[CeleryProcess], list[CeleryProcess]]:
    """Workers first (ready before the first slot), then the beat replicas."""
    started_workers = [
        CeleryProcess.worker(
            module, cwd=workdir, workdir=workdir, name=f"w{i}", env=env, concurrency=concurrency
        )
        for i in range(workers)
    ]
    # At debug level: a replica logs each busy or buffered skip as a DEBUG line.
    started_beats = beat_replicas(module, workdir, env, beats, extra_args=["-l", "debug"])
    processes.extend(started_workers)
    for worker in started_workers:
        worker.start()
    for worker in started_workers:
        wait_for_worker(worker, processes)
    start_beats(started_beats, processes)
    return started_workers, started_beats


def wait_for_worker(worker: CeleryProcess, processes: list[CeleryProcess]) -> None:
    wait_until(
        lambda: " ready." in worker.log(),
        timeout=60,
        what=f"{worker.log_path.name} to be ready\n" + dump_logs(processes),
    )


def shut_down(
    client: redis.Redis,
    beats: list[CeleryProcess],
    workers: list[CeleryProcess],
    processes: list[CeleryProcess],
) -> float:
    """Stop the replicas, let every run they sent start, then kill the workers (cutting the
    runs short, which is quicker than a warm shutdown); return when the replicas stopped."""
    for beat in beats:
        beat.stop()
    stopped = time.time()
    sent = len(beat_lines(beats, SENT))
    wait_until(
        lambda: starts(client) >= sent,
        timeout=15,
        what=f"the {sent} runs sent to start\n" + dump_logs(processes),
    )
    for worker in workers:
        worker.kill()
    return stopped


def run_cluster(
    redis_url: str,
    workdir: Path,
    processes: list[CeleryProcess],
    source: str,
    *,
    runs: int,
    timeout: float,
    beats: int,
    workers: int,
    concurrency: int,
) -> tuple[list[Run], list[CeleryProcess], float]:
    """Write ``source``, start the cluster, wait for ``runs`` runs to start, shut it down.

    Returns the recorded runs, the beat replicas and when they stopped.
    """
    module = write_project(workdir, source)
    client = redis.Redis.from_url(redis_url)
    started_workers, started_beats = start_cluster(
        module,
        workdir,
        {"TEST_BROKER_URL": redis_url},
        processes,
        beats=beats,
        workers=workers,
        concurrency=concurrency,
    )
    wait_until(
        lambda: starts(client) >= runs,
        timeout=timeout,
        what=f"{runs} runs\n" + dump_logs(processes),
    )
    stopped = shut_down(client, started_beats, started_workers, processes)
    return recorded_runs(client), started_beats, stopped


@dataclass
class KilledInside:
    """What :func:`kill_inside_singleton` saw."""

    first: Run
    #: The marker still named the first run, and no other run had started, just before the kill.
    held: bool
    killed: float
    freed: float
    runs: list[Run]
    beats: list[CeleryProcess]


def kill_inside_singleton(
    module: str,
    workdir: Path,
    env: dict[str, str],
    processes: list[CeleryProcess],
    *,
    markers: redis.Redis,
    runs: redis.Redis,
    first_within: float,
    hold: float,
    lease: float,
    second_within: float,
) -> KilledInside:
    """Two replicas, one worker; SIGKILL the worker ``hold`` s into the first run of
    ``long-singleton``, start a fresh worker ``w-fresh``, wait until the running marker (in
    ``markers``) no longer names the first run, then for a second run (recorded in ``runs``).
    """
    workers, beats = start_cluster(
        module, workdir, env, processes, beats=2, workers=1, concurrency=2
    )
    marker = "scheduler:{long-singleton}:running"
    wait_until(
        lambda: starts(runs) >= 1, timeout=first_within, what="a run\n" + dump_logs(processes)
    )
    first = recorded_runs(runs)[0]
    time.sleep(hold)  # the worker's heartbeat keeps the marker past the lease while it runs
    held = markers.get(marker) == first.task_id and starts(runs) == 1

    workers[0].kill()
    killed = time.time()
    fresh = CeleryProcess.worker(module, cwd=workdir, workdir=workdir, name="w-fresh", env=env)
    processes.append(fresh)
    fresh.start()
    wait_until(
        lambda: markers.get(marker) != first.task_id,
        timeout=lease + 3,
        what="the marker of the killed run to expire\n" + dump_logs(processes),
    )
    freed = time.time()
    wait_until(
        lambda: starts(runs) >= 2,
        timeout=second_within,
        what="a run on the fresh worker\n" + dump_logs(processes),
    )
    for beat in beats:
        beat.stop()
    fresh.kill()
    return KilledInside(first, held, killed, freed, recorded_runs(runs), beats)


@pytest.fixture
def cluster_run(
    redis_url: str, workdir: Path, processes: list[CeleryProcess]
) -> Callable[..., tuple[list[Run], list[CeleryProcess], float]]:
    """:func:`run_cluster` on the test's Redis, directory and processes."""
    return functools.partial(run_cluster, redis_url, workdir, processes)


# -- 1. singleton: skip ------------------------------------------------------------------------

SINGLETON = """
app.conf.beat_schedule = {
    "slow-singleton": {
        "task": "slow",
        "schedule": every(2).seconds,
        "args": [6],
        "singleton": True,
    },
}
"""


def test_singleton_never_overlaps_across_workers_and_reports_its_skips(
    cluster_run: Callable[..., Any], processes: list[CeleryProcess]
) -> None:
    """Every 2 s, runs 6 s: 3 replicas, 2 workers with 2 slots each, default 60 s lease."""
    runs, beats, stopped = cluster_run(
        project(SINGLETON), runs=4, timeout=50, beats=3, workers=2, concurrency=2
    )
    logs = dump_logs(processes)
    finished = [run for run in runs if run.end is not None]
    assert len(finished) >= 3, logs
    # Never two at once, on any worker: each run starts after the previous one ended.
    for before, after in itertools.pairwise(runs):
        assert before.end is not None and after.start >= before.end, (before, after, logs)
    assert max_concurrent(runs, stopped) == 1
    # Not stuck until the 60 s lease: the next run starts within one slot interval (+ slack)
    # of the end of the previous one.
    gaps = [
        after.start - before.end
        for before, after in itertools.pairwise(runs)
        if before.end is not None
    ]
    assert max(gaps) < 2 + 1.5, (gaps, logs)
    # Each slot of the entry was either sent or reported as skipped (busy), by one replica
    # only, and everything sent ran exactly once.
    sent = [m["slot"] for m in beat_lines(beats, SENT)]
    skipped = [(m["slot"], m["reason"]) for m in beat_lines(beats, SKIPPED)]
    busy = [slot for slot, reason in skipped if reason == "busy"]
    assert {reason for _, reason in skipped} == {"busy"}, logs
    assert len(sent) == len(set(sent)) and len(busy) == len(set(busy)), logs
    assert not set(sent) & set(busy), logs
    assert len(busy) >= 2 * (len(sent) - 1), (sent, busy, logs)
    assert sorted(sent) == sorted(run.slot for run in runs), logs
    accounted = sorted(datetime.fromisoformat(slot).timestamp() for slot in sent + busy)
    # No slot between the first and the last one is unaccounted for.
    assert accounted == [accounted[0] + 2 * i for i in range(len(accounted))], (sent, busy)


# -- 2. buffer_one ---------------------------------------------------------------------------

BUFFER_ONE = """
app.conf.beat_schedule = {
    "slow-buffered": {
        "task": "slow",
        "schedule": every(2).seconds,
        "args": [6],
        "overlap": "buffer_one",
    },
}
"""


def test_buffer_one_starts_exactly_one_held_back_run_as_soon_as_the_last_ends(
    cluster_run: Callable[..., Any], processes: list[CeleryProcess]
) -> None:
    runs, beats, stopped = cluster_run(
        project(BUFFER_ONE), runs=4, timeout=50, beats=3, workers=2, concurrency=2
    )
    logs = dump_logs(processes)
    assert len(runs) >= 4, logs
    assert max_concurrent(runs, stopped) == 1, (runs, logs)
    for before, after in itertools.pairwise(runs):
        assert before.end is not None and after.start >= before.end, (before, after, logs)
        # The held-back run: its slot came while the previous run was executing ...
        assert before.slot_time < after.slot_time < before.end, (before, after, logs)
        # ... and it starts as soon as that run ends, not at the next slot (2 s later at most).
        assert after.start - before.end < 1.0, (before, after, logs)
    # One slot held back per run, the others skipped as busy; each run ran once.
    skipped = [(m["slot"], m["reason"]) for m in beat_lines(beats, SKIPPED)]
    buffered = sorted(slot for slot, reason in skipped if reason == "buffered")
    assert {reason for _, reason in skipped} <= {"buffered", "busy"}, logs
    assert len(buffered) == len(set(buffered)), logs
    assert [run.slot for run in runs[1:]] == buffered[: len(runs) - 1], (runs, buffered, logs)
    assert len(buffered) <= len(runs), (runs, buffered, logs)
    assert any(reason == "busy" for _, reason in skipped), logs
    assert len({run.task_id for run in runs}) == len(runs)


# -- 3. a killed worker frees the singleton within its lease --------------------------------

KILLED = """
app.conf.fork_scheduler_singleton_lease = 4
app.conf.beat_schedule = {
    "long-singleton": {
        "task": "slow",
        "schedule": every(2).seconds,
        "args": [60],
        "singleton": True,
    },
}
"""
LEASE = 4.0
INTERVAL = 2.0


def test_a_killed_worker_frees_the_singleton_within_its_lease(
    redis_url: str, workdir: Path, processes: list[CeleryProcess]
) -> None:
    module = write_project(workdir, project(KILLED))
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    seen = kill_inside_singleton(
        module,
        workdir,
        {"TEST_BROKER_URL": redis_url},
        processes,
        markers=client,
        runs=client,
        first_within=30,
        hold=2 * LEASE + 1,  # beyond the 4 s lease
        lease=LEASE,
        second_within=45,
    )
    assert seen.held, dump_logs(processes)
    first, second, killed = seen.first, seen.runs[1], seen.killed
    assert seen.freed - killed <= LEASE + 1, seen.freed - killed
    # The first slot after the lease ran out was published (not one lease + much later) ...
    assert second.slot_time - killed <= LEASE + INTERVAL + 1, (second, killed)
    # ... and it ran on the fresh worker, the killed run never finished.
    assert second.hostname.startswith("w-fresh@"), second
    assert first.end is None
    busy = [m for m in beat_lines(seen.beats, SKIPPED) if m["reason"] == "busy"]
    assert len(busy) >= (2 * LEASE) / INTERVAL, dump_logs(processes)


# -- 4. cluster-wide cap -------------------------------------------------------------------

CAPPED = """
app.conf.fork_scheduler_max_concurrent = 2
app.conf.beat_schedule = {
    f"capped-{i}": {"task": "slow", "schedule": every(3).seconds, "args": [5]}
    for i in range(4)
}
"""


def test_the_cap_holds_across_workers_and_replicas(
    cluster_run: Callable[..., Any], processes: list[CeleryProcess]
) -> None:
    runs, beats, stopped = cluster_run(
        project(CAPPED), runs=6, timeout=50, beats=2, workers=2, concurrency=4
    )
    logs = dump_logs(processes)
    # 4 entries due together every 3 s, each run 5 s, 8 worker slots: only the cap limits them.
    assert max_concurrent(runs, stopped) == 2, (runs, logs)
    # Reported: a WARNING (rate-limited to one a minute per replica) names the capped slot.
    capped = [m for m in beat_lines(beats, SKIPPED) if m["reason"] == "capped"]
    assert capped, logs
    sent = {(m["entry"], m["slot"]) for m in beat_lines(beats, SENT)}
    assert not sent & {(m["entry"], m["slot"]) for m in capped}, logs
    assert {(run.entry, run.slot) for run in runs} == sent, logs
    # 4 entries due at every slot, at most 2 sent per slot: the rest were skipped.
    per_slot = collections.Counter(slot for _, slot in sent)
    assert max(per_slot.values()) == 2, (per_slot, logs)


# -- 5. install(app) called before the fork_scheduler_* settings ------------------------------

INSTALL_FIRST = """
from celery_fork_scheduler import install

install(app)  # as with `install(app)` followed by `app.config_from_object(...)`
app.conf.fork_scheduler_singleton_lease = 3
app.conf.beat_schedule = {
    "slow-singleton": {
        "task": "slow",
        "schedule": every(2).seconds,
        "args": [8],
        "singleton": True,
    },
}
"""


def test_settings_made_after_install_are_used_by_the_worker(
    cluster_run: Callable[..., Any], processes: list[CeleryProcess]
) -> None:
    runs, _, stopped = cluster_run(
        INSTALL_FIRST + SLOW_TASK, runs=2, timeout=40, beats=1, workers=1, concurrency=2
    )
    assert max_concurrent(runs, stopped) == 1, (runs, dump_logs(processes))
