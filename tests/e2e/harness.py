"""Helpers of the end-to-end tests: a project module on disk, its processes, counting what the
broker got."""

from __future__ import annotations

import base64
import collections
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

from celery_fork_scheduler.ids import ENTRY_HEADER, SLOT_HEADER
from celery_fork_scheduler.testing import CeleryProcess, wait_until

from .conftest import dump_logs

PROJECT_TEMPLATE = """
import json
import os
from datetime import timedelta

import redis
from celery import Celery
from celery.schedules import crontab, schedule

from celery_fork_scheduler import cron, every

app = Celery("proj", broker=os.environ["TEST_BROKER_URL"])
app.conf.update(
    timezone="UTC",
    beat_max_loop_interval=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
_recorder = redis.Redis.from_url(os.environ["TEST_BROKER_URL"])


@app.task(bind=True, name="record")
def record(self, *args, **kwargs):
    _recorder.rpush("test:received", json.dumps({{
        "entry": self.request.get("fork_scheduler_entry"),
        "slot": self.request.get("fork_scheduler_slot"),
        "task_id": self.request.id,
        "args": list(args),
    }}))

{body}
"""


def write_project(directory: Path, body: str, name: str = "proj") -> str:
    """Write ``<name>.py``: an app with a ``record`` task, plus ``body``. Return the module."""
    (directory / f"{name}.py").write_text(PROJECT_TEMPLATE.format(body=textwrap.dedent(body)))
    return name


def run_python(
    workdir: Path, broker: str, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python <args>`` in ``workdir`` (its project importable, its broker ``broker``) to
    its end; the output is captured as text."""
    env = {**os.environ, "TEST_BROKER_URL": broker, "PYTHONPATH": str(workdir)}
    return subprocess.run(
        [sys.executable, *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_worker_and_beat(
    module: str, workdir: Path, broker: str, processes: list[CeleryProcess]
) -> tuple[CeleryProcess, CeleryProcess]:
    """Start a worker, then one ``celery beat -S fork`` of the project ``module``; both are added
    to ``processes`` (stopped at the end of the test)."""
    env = {"TEST_BROKER_URL": broker}
    worker = CeleryProcess.worker(module, cwd=workdir, workdir=workdir, env=env)
    beat = CeleryProcess.beat(module, cwd=workdir, workdir=workdir, env=env)
    processes.extend([worker, beat])
    worker.start()
    beat.start()
    return worker, beat


def beat_replicas(
    module: str, workdir: Path, env: dict[str, str], count: int, **options: Any
) -> list[CeleryProcess]:
    """``count`` replicas ``beat-<i>`` of ``module`` (``options``: of ``CeleryProcess.beat``)."""
    return [
        CeleryProcess.beat(
            module, cwd=workdir, workdir=workdir, env=env, name=f"beat-{i}", **options
        )
        for i in range(count)
    ]


def start_beats(
    beats: Sequence[CeleryProcess], processes: list[CeleryProcess], timeout: float = 60
) -> None:
    """Add ``beats`` to ``processes``, start them and wait until each has its backend."""
    processes.extend(beats)
    for beat in beats:
        beat.start()
    for beat in beats:
        wait_until(
            lambda b=beat: "fork scheduler: backend" in b.log(),
            timeout=timeout,
            what=f"{beat.log_path.name} to start\n" + dump_logs(processes),
        )


@dataclass
class Fires:
    """Occurrences seen, per entry and slot, with their task ids."""

    counts: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    task_ids: dict[tuple[str, str], set[str]] = field(
        default_factory=lambda: collections.defaultdict(set)
    )

    def add(self, entry: str, slot: str, task_id: str) -> None:
        self.counts[entry][slot] += 1
        self.task_ids[(entry, slot)].add(task_id)

    def duplicates(self) -> int:
        return sum(count - 1 for counter in self.counts.values() for count in counter.values())

    def slots(self, entry: str) -> set[str]:
        return set(self.counts[entry])

    def missed(self, expected: dict[str, Iterable[datetime]]) -> dict[str, list[str]]:
        """Expected slots that were never seen, per entry (only entries with misses)."""
        missing = {}
        for entry, slots in expected.items():
            lost = sorted({slot.isoformat() for slot in slots} - self.slots(entry))
            if lost:
                missing[entry] = lost
        return missing


def worker_fires(client: redis.Redis) -> Fires:
    """What the worker recorded (list ``test:received``)."""
    fires = Fires()
    for raw in client.lrange("test:received", 0, -1):
        record = json.loads(raw)
        fires.add(record["entry"], record["slot"], record["task_id"])
    return fires


def broker_fires(client: redis.Redis, queue: str = "celery") -> Fires:
    """What the broker holds in ``queue`` (no worker consumes it): every published message."""
    fires = Fires()
    for raw in client.lrange(queue, 0, -1):
        message = json.loads(raw)
        headers = message["headers"]
        fires.add(headers[ENTRY_HEADER], headers[SLOT_HEADER], headers["id"])
    return fires


def decode_body(message: dict[str, object]) -> object:
    """The decoded body of a Kombu Redis message."""
    return json.loads(base64.b64decode(str(message["body"])))
