"""The plain loop reference: ``app.send_task`` in a tight loop with one reused producer.

Run as ``python plain_loop.py <broker url> <count>``; prints one JSON line with the elapsed
wall time and the CPU time of this process. Each message carries the same headers as a message
of ``celery beat -S fork`` (entry, slot, ``celery_beat_task``), so the messages are the same
size; the task id is the one ``send_task`` makes itself.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from datetime import datetime, timezone

from celery import Celery

TASK = "bench.noop"


def main(url: str, count: int) -> None:
    app = Celery("plainloop", broker=url)
    app.conf.broker_connection_retry_on_startup = True
    connection = app.connection_for_write()
    connection.ensure_connection()
    producer = app.amqp.Producer(connection, auto_declare=False)
    slot = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    app.send_task(TASK, (0,), producer=producer)  # warm-up: the connection and the route
    connection.default_channel.client.delete("celery")
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    for i in range(count):
        app.send_task(
            TASK,
            (i,),
            producer=producer,
            headers={
                "fork_scheduler_entry": f"e{i:06d}",
                "fork_scheduler_slot": slot,
                "celery_beat_task": True,
            },
        )
    elapsed = time.perf_counter() - started
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
    connection.release()
    print(json.dumps({"count": count, "seconds": elapsed, "cpu": cpu}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
