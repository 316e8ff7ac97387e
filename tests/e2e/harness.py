"""Helpers of the end-to-end tests: a project module on disk, counting what the broker got."""

from __future__ import annotations

import base64
import collections
import json
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import redis

from celery_fork_scheduler.ids import ENTRY_HEADER, SLOT_HEADER

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
