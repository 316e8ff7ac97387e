"""The message template on a transport that is not Redis, beside the plain loop on it.

Run as ``python template_path.py <broker url> <count>`` (``memory://``, or ``filesystem://``
with a folder: the script makes the folder options itself); prints one JSON line.

In one process, on one transport, with one reused producer, three ways to send ``count``
occurrences of one entry (``bench.noop``, args ``(0,)``, the scheduler's headers):

* ``plain``: ``app.send_task`` in a loop (the plain loop reference, same headers);
* ``template``: :class:`CeleryPublisher` ``publish_many`` in batches of
  ``PUBLISH_BATCH`` (the first occurrence is built by Celery and captured, the others copied
  and patched), building each occurrence (``build_occurrence``) inside the timing;
* ``celery``: the same publisher with ``templates=False`` (every message built by Celery).

Each way is timed twice, alternately, and its faster pass kept; every pass's messages are
counted on the transport and then purged.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from celery import Celery

from celery_fork_scheduler.entry import entry_from_config
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.pipeline import PUBLISH_BATCH
from celery_fork_scheduler.publishing import CeleryPublisher, build_occurrence

TASK = "bench.noop"
QUEUE = "celery"


def make_app(url: str, folder: Path) -> Celery:
    app = Celery("templatepath", broker=url)
    app.conf.broker_connection_retry_on_startup = True
    if url.startswith("filesystem://"):
        for name in ("in", "out", "control"):
            (folder / name).mkdir(exist_ok=True)
        app.conf.broker_transport_options = {
            "data_folder_in": str(folder / "in"),
            "data_folder_out": str(folder / "in"),
            "processed_folder": str(folder / "out"),
            "control_folder": str(folder / "control"),  # Kombu's default: ./control
        }
    return app


def main(url: str, count: int) -> None:
    with tempfile.TemporaryDirectory(prefix="template-path-") as folder:
        app = make_app(url, Path(folder))
        connection = app.connection_for_write()
        connection.ensure_connection()
        producer = app.amqp.Producer(connection, auto_declare=False)
        channel = producer.channel
        channel.queue_declare(QUEUE)
        entry = entry_from_config(
            "e000000",
            {"task": TASK, "schedule": timedelta(seconds=1), "args": (0,)},
            default_timezone=timezone.utc,
        )
        first = datetime.now(timezone.utc).replace(microsecond=0)
        slots = [first + timedelta(seconds=i) for i in range(count)]
        slot_header = slots[0].isoformat()

        def plain() -> None:
            for _ in range(count):
                app.send_task(
                    TASK,
                    (0,),
                    producer=producer,
                    headers={
                        "fork_scheduler_entry": entry.name,
                        "fork_scheduler_slot": slot_header,
                        "celery_beat_task": True,
                    },
                )

        def through(publisher: CeleryPublisher) -> None:
            for start in range(0, count, PUBLISH_BATCH):
                batch = [
                    build_occurrence(entry, slot, task_id_for(entry.name, slot))
                    for slot in slots[start : start + PUBLISH_BATCH]
                ]
                errors = publisher.publish_many(batch)
                failed = [error for error in errors if error is not None]
                if failed:
                    raise RuntimeError(f"{len(failed)} occurrences failed: {failed[0]!r}")

        ways: dict[str, Callable[[], None]] = {
            "plain": plain,
            "template": lambda: through(CeleryPublisher(app, lambda: producer)),
            "celery": lambda: through(CeleryPublisher(app, lambda: producer, templates=False)),
        }
        # Warm-up: the connection, the route, the task's signature machinery.
        app.send_task(TASK, (0,), producer=producer)
        channel.queue_purge(QUEUE)
        best: dict[str, float] = {}
        for _ in range(2):
            for name, way in ways.items():
                started = time.perf_counter()
                way()
                elapsed = time.perf_counter() - started
                queued = channel._size(QUEUE)
                if queued != count:
                    raise RuntimeError(f"{name}: {queued} messages queued, {count} sent")
                channel.queue_purge(QUEUE)
                best[name] = min(best.get(name, elapsed), elapsed)
        connection.release()
    transport = url.split("://", 1)[0]
    print(
        json.dumps(
            {
                "transport": transport,
                "count": count,
                **{f"{name}_per_s": count / seconds for name, seconds in best.items()},
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
