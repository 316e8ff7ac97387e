"""Fixtures and helpers of the fault suite: real replicas, a claims Redis of their own, counts.

Reuses the end-to-end helpers (``tests/e2e``): the project module on disk, the broker count, the
process fixtures. Every scenario runs its replicas against two Redis servers: the session's
server is the **broker** (counted, never restarted), a fresh server per test holds the
**claims** (``fork_scheduler_redis_url``), so a scenario can stop, empty or pause the claims
Redis while the broker keeps every message published.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from e2e.conftest import dump_logs, processes, workdir  # noqa: F401 - fixtures reused
from e2e.harness import Fires, broker_fires, write_project

from celery_fork_scheduler import every
from celery_fork_scheduler.ids import ENTRY_HEADER, SLOT_HEADER
from celery_fork_scheduler.testing import CeleryProcess, RedisServer, wait_until

from .report import ScenarioReport, build, save, table

__all__ = [
    "CLAIM_LEASE",
    "GRACE",
    "MARGIN",
    "BrokerWatch",
    "Fires",
    "Scenario",
    "broker_fires",
    "dump_logs",
    "duplicated",
    "every_entries",
    "every_second",
    "expected_every",
    "now",
    "project",
    "sleep_to_a_random_moment",
    "start_beat",
    "start_beats",
    "stop_all",
    "write_project",
]

#: ``fork_scheduler_catchup_grace`` (default): a slot this old still fires when a replica is late.
GRACE = timedelta(seconds=5)
#: ``fork_scheduler_claim_lease`` (default): an orphaned claim is taken over this long after it.
CLAIM_LEASE = timedelta(seconds=10)
#: Slots this close to the first replica being up, or to the end of a run, are not expected.
MARGIN = timedelta(seconds=2)

#: The head of every fault project: claims on their own Redis, the broker is the session's.
PROJECT_HEAD = """
app.conf.fork_scheduler_redis_url = os.environ["TEST_CLAIMS_URL"]
"""

_REPORTS = pytest.StashKey[list[ScenarioReport]]()


def now() -> datetime:
    return datetime.now(timezone.utc)


def every_entries(count: int, *, seconds: int = 1, name: str = "entry") -> str:
    """Source of ``count`` beat_schedule items ``<name>-NN``, each every ``seconds``."""
    return (
        f'**{{f"{name}-{{i:02}}": {{"task": "record", "schedule": every({seconds}).seconds}} '
        f"for i in range({count})}}"
    )


def project(*items: str, settings: str = "") -> str:
    """A project body: the claims Redis, ``settings``, and a beat_schedule of ``items``.

    Each item is Python source of dict items (``every_entries(...)`` or ``'"x": {...}'``).
    """
    schedule = ",\n    ".join(items)
    return f"{PROJECT_HEAD}{settings}\napp.conf.beat_schedule = {{\n    {schedule}\n}}\n"


def expected_every(seconds: int, start: datetime, end: datetime) -> list[datetime]:
    """The slots of ``every(seconds)`` in ``[start, end]``."""
    return list(every(seconds).seconds.slots(start - timedelta(microseconds=1), end))


def start_beat(
    module: str,
    workdir: Path,  # noqa: F811 - a path, not the fixture
    env: dict[str, str],
    processes: list[CeleryProcess],  # noqa: F811
    name: str,
    *,
    prefix: Sequence[str] = (),
    wait: bool = True,
    scheduler: str = "fork",
) -> CeleryProcess:
    """Start one replica (a log of its own named ``name``); wait until it scheduled its entries."""
    beat = CeleryProcess.beat(
        module, cwd=workdir, workdir=workdir, name=name, env=env, prefix=prefix, scheduler=scheduler
    )
    processes.append(beat)
    beat.start()
    if wait:
        wait_started(beat, processes)
    return beat


def wait_started(beat: CeleryProcess, processes: list[CeleryProcess]) -> None:  # noqa: F811
    def started() -> bool:
        return "fork scheduler: backend" in beat.log() or not beat.alive()

    wait_until(started, timeout=60, what=f"{beat.log_path.name} to start")
    assert beat.alive(), dump_logs(processes)


def start_beats(
    module: str,
    workdir: Path,  # noqa: F811
    env: dict[str, str],
    processes: list[CeleryProcess],  # noqa: F811
    names: Iterable[str],
    *,
    prefixes: Sequence[Sequence[str]] | None = None,
) -> list[CeleryProcess]:
    """Start replicas together, then wait for each."""
    beats = [
        start_beat(
            module,
            workdir,
            env,
            processes,
            name,
            prefix=prefixes[i] if prefixes else (),
            wait=False,
        )
        for i, name in enumerate(names)
    ]
    for beat in beats:
        wait_started(beat, processes)
    return beats


def duplicated(fires: Fires) -> dict[str, list[str]]:
    """Slots published more than once, per entry."""
    return {
        entry: sorted(slot for slot, count in counter.items() if count > 1)
        for entry, counter in fires.counts.items()
        if any(count > 1 for count in counter.values())
    }


def every_second(entries: int, first: datetime, last: datetime) -> dict[str, list[datetime]]:
    """The slots expected of ``every_entries(entries)`` in ``[first, last]``."""
    slots = expected_every(1, first, last)
    return {f"entry-{i:02}": slots for i in range(entries)}


class Scenario:
    """One scenario's project, replicas and verdict, over the fixtures every scenario takes."""

    def __init__(
        self,
        env: dict[str, str],
        workdir: Path,  # noqa: F811
        processes: list[CeleryProcess],  # noqa: F811
        broker: redis.Redis,
        report: Callable[[ScenarioReport], None],
    ) -> None:
        self.env = env
        self.workdir = workdir
        self.processes = processes
        self.broker = broker
        self.report = report
        self.began = time.monotonic()
        #: What the scenario did to its replicas, for the report.
        self.events: list[str] = []
        self._restarts: Counter[int] = Counter()

    def kill_and_restart(
        self, beats: list[CeleryProcess], target: int, module: str, down: float = 0.0
    ) -> None:
        """SIGKILL ``beat-<target>``; after ``down`` seconds start it again (a new log)."""
        beats[target].kill()
        self.events.append(f"{now():%T.%f} kill beat-{target}")
        time.sleep(down)
        self._restarts[target] += 1
        name = f"beat-{target}.{self._restarts[target]}"
        beats[target] = self.start_beat(module, name, wait=False)

    def write(self, body: str, name: str = "proj") -> str:
        """Write the project module; the scenario's time counts from the last one written."""
        module = write_project(self.workdir, body, name=name)
        self.began = time.monotonic()
        return module

    def start_beat(self, module: str, name: str, **options: Any) -> CeleryProcess:
        return start_beat(module, self.workdir, self.env, self.processes, name, **options)

    def start_beats(
        self, module: str, count: int = 3, *, name: str = "beat", **options: Any
    ) -> list[CeleryProcess]:
        """Start ``count`` replicas ``<name>-0``, ``<name>-1``, ... together; wait for each."""
        names = [f"{name}-{i}" for i in range(count)]
        return start_beats(module, self.workdir, self.env, self.processes, names, **options)

    def logs(self) -> str:
        return dump_logs(self.processes)

    def fires(self) -> Fires:
        return broker_fires(self.broker)

    def judge(
        self,
        title: str,
        expected: dict[str, list[datetime]],
        *,
        fires: Fires | None = None,
        counts: dict[str, Counter[str]] | None = None,
        windows: Sequence[tuple[datetime, datetime]] = (),
        note: str = "",
    ) -> tuple[Fires, ScenarioReport]:
        """Count ``fires`` (default: the broker's) or ``counts`` against ``expected``, report it.

        Returns the fires and the report.
        """
        fires = self.fires() if fires is None else fires
        result = build(
            title,
            fires.counts if counts is None else counts,
            expected,
            windows=windows,
            seconds=time.monotonic() - self.began,
            note=note,
        )
        self.report(result)
        return fires, result

    def assert_clean(
        self, fires: Fires, result: ScenarioReport, expected: dict[str, Any], context: str = ""
    ) -> None:
        """No slot published twice, none missed outside the windows the docs allow."""
        prefix = f"{context}: " if context else ""
        assert fires.duplicates() == 0, f"{prefix}{duplicated(fires)}\n{self.logs()}"
        assert result.missed_outside == 0, f"{prefix}{fires.missed(expected)}\n{self.logs()}"


def sleep_to_a_random_moment(
    rng: random.Random, low: float, high: float, inside_burst: float
) -> None:
    """Sleep ``low`` to ``high`` seconds, to a random moment: half the time just after a whole
    second (inside the burst, when claims and publishes are in flight: at most ``inside_burst``
    seconds after it), else anywhere in the second."""
    fraction = rng.uniform(0.0, inside_burst) if rng.random() < 0.5 else rng.random()
    time.sleep(rng.uniform(low, high) + (1 - time.time() % 1) + fraction)


def stop_all(beats: Iterable[CeleryProcess]) -> bool:
    """Stop every beat; return whether they were all alive before."""
    beats = list(beats)
    alive = all([beat.alive() for beat in beats])
    for beat in beats:
        beat.stop()
    return alive


class BrokerWatch:
    """Follows the broker queue from a thread: when each (entry, slot) was first seen.

    Nothing consumes the queue, so it only grows, at its head (Kombu LPUSHes): counted from the
    tail, a message keeps its index, so each poll reads the messages before the oldest
    ``cursor`` ones. The time is this process's (unfaked) clock, taken when the poll returns: a
    message is seen at or after its publish, never before.
    """

    def __init__(self, url: str, queue: str = "celery", interval: float = 0.02) -> None:
        self.client = redis.Redis.from_url(url)
        self.queue = queue
        self.interval = interval
        self.first_seen: dict[tuple[str, str], float] = {}
        self.counts: dict[str, Counter[str]] = defaultdict(Counter)
        self._cursor = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> BrokerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.poll()
        self.client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval)

    def poll(self) -> None:
        raws = self.client.lrange(self.queue, 0, -(self._cursor + 1))
        seen = time.time()
        self._cursor += len(raws)
        for raw in reversed(raws):
            headers = json.loads(raw)["headers"]
            key = (headers[ENTRY_HEADER], headers[SLOT_HEADER])
            self.first_seen.setdefault(key, seen)
            self.counts[key[0]][key[1]] += 1

    def early(self, tolerance: float) -> dict[tuple[str, str], float]:
        """Slots seen more than ``tolerance`` seconds before their time: how early."""
        return {
            key: datetime.fromisoformat(key[1]).timestamp() - seen
            for key, seen in self.first_seen.items()
            if seen < datetime.fromisoformat(key[1]).timestamp() - tolerance
        }


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def claims_server() -> Iterator[RedisServer]:
    """A Redis of the test's own for the claims (no persistence: a restart empties it)."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def env(redis_url: str, claims_server: RedisServer) -> dict[str, str]:
    """Environment of the replicas: the session's Redis as broker, the test's for claims."""
    return {"TEST_BROKER_URL": redis_url, "TEST_CLAIMS_URL": claims_server.url}


@pytest.fixture
def broker(redis_client: redis.Redis) -> redis.Redis:
    """A client of the broker: the session's Redis (``redis_client`` by the scenarios' name)."""
    return redis_client


@pytest.fixture
def scenario(request: pytest.FixtureRequest) -> Scenario:
    """A :class:`Scenario` over the fixtures ``env``, ``workdir``, ``processes``, ``broker``
    and ``report``."""
    names = ("env", "workdir", "processes", "broker", "report")
    return Scenario(*(request.getfixturevalue(name) for name in names))


@pytest.fixture
def report(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """``report(r)``: print a scenario's line, keep it for the summary, save it if asked."""

    def record(scenario_report: ScenarioReport) -> None:
        print("\n" + scenario_report.line())
        request.config.stash.setdefault(_REPORTS, []).append(scenario_report)
        save(scenario_report)

    return record


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    reports = config.stash.get(_REPORTS, [])
    if not reports:
        return
    terminalreporter.section("fault scenarios")
    for scenario_report in reports:
        terminalreporter.write_line(scenario_report.line())
    terminalreporter.write_line("")
    terminalreporter.write_line(table(reports))
    terminalreporter.write_line(
        "Sentinel failover: tests/e2e/test_topologies.py::"
        "test_replicas_claiming_through_sentinel_survive_a_failover (not repeated here)"
    )
