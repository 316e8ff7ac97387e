"""Several threads share a counter in Redis; a RedisLock makes its read-modify-write safe.

Run with ``python examples/locking_critical_section.py``. It uses ``$REDIS_URL`` when set and
otherwise starts a private, throwaway ``redis-server`` for the duration of the run.
"""

from __future__ import annotations

import sys
import threading
from datetime import timedelta

from celery_fork_scheduler.locking import RedisLocker, RedisLockerOptions
from celery_fork_scheduler.testing import redis_url_from_env

THREADS = 4
INCREMENTS = 50
COUNTER_KEY = "example:locking:counter"


def worker(locker: RedisLocker) -> None:
    for _ in range(INCREMENTS):
        with locker.lock("example-counter"):
            # Not atomic on purpose: without the lock, concurrent updates would be lost.
            value = int(locker.client.get(COUNTER_KEY) or 0)
            locker.client.set(COUNTER_KEY, value + 1)


def main() -> int:
    options = RedisLockerOptions(
        lock_duration=timedelta(seconds=5),
        max_retries=10_000,
        retry_delay=timedelta(milliseconds=1),
    )
    with redis_url_from_env() as url, RedisLocker(url, options) as locker:
        locker.client.delete(COUNTER_KEY)
        threads = [threading.Thread(target=worker, args=(locker,)) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        final = int(locker.client.get(COUNTER_KEY) or 0)
        locker.client.delete(COUNTER_KEY)
    expected = THREADS * INCREMENTS
    print(f"{THREADS} threads x {INCREMENTS} increments: counter = {final} (expected {expected})")
    return 0 if final == expected else 1


if __name__ == "__main__":
    sys.exit(main())
