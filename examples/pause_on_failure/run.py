"""Pause on failure: an entry pauses itself when a run fails, and is resumed.

Starts one ``celery worker`` and one ``celery beat -S fork`` of ``proj.py``, whose entry
``sync-invoices`` (every 2 s, ``pause_on_failure: True``) fails on its first run. Waits until
the worker paused the entry, shows the pause and its note as ``Manager.get`` and the history
have them, checks that no slot ran while paused, resumes the entry and waits for a successful
run. Uses ``$REDIS_URL`` when set, otherwise a private, throwaway ``redis-server``. Takes about
10 seconds.

    python examples/pause_on_failure/run.py
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import redis

from celery_fork_scheduler.testing import redis_url_from_env, wait_until
from celery_fork_scheduler.testing.examples import parse_options, print_failure, worker_and_beat

HERE = Path(__file__).resolve().parent
NAME = "sync-invoices"


def main() -> int:
    options = parse_options(__doc__, timeout=(20.0, "longest wait for one step"))

    workdir = Path(tempfile.mkdtemp(prefix="fork-scheduler-pause-on-failure-"))
    with redis_url_from_env() as url:
        os.environ["PAUSE_ON_FAILURE_REDIS_URL"] = url
        sys.path.insert(0, str(HERE))
        import proj  # the example app, configured for this Redis

        client = redis.Redis.from_url(url, decode_responses=True)
        client.delete(proj.CALLS)
        manager = proj.app.fork_scheduler
        manager.resume(NAME)  # a pause left by an earlier run on this Redis
        print(f"Redis {url}; logs in {workdir} (kept on failure)", flush=True)
        env = {"PAUSE_ON_FAILURE_REDIS_URL": url}
        with worker_and_beat(HERE, workdir, env) as (worker, beat):

            def calls() -> int:
                return int(client.get(proj.CALLS) or 0)

            try:
                wait_until(
                    lambda: manager.get(NAME).paused, timeout=options.timeout, what="the pause"
                )
                job = manager.get(NAME)
                print(f"{NAME}: paused={job.paused} since {job.paused_at}")
                print(f"  note: {job.pause_note}")
                failure = next(r for r in manager.history(NAME) if r.outcome == "error")
                print(f"  history: {failure.outcome} of task {failure.task_id}: {failure.error}")
                ran_before = calls()
                time.sleep(4.5)  # two slots come due while paused
                skipped = manager.stats(NAME).skips.get("paused", 0)
                print(f"  while paused: {calls() - ran_before} runs, {skipped} slots skipped")
                if calls() != ran_before or skipped < 1:
                    print("FAILED: the paused entry kept running")
                    return 1

                manager.resume(NAME)
                print(f"resumed {NAME!r}: paused={manager.get(NAME).paused}")
                wait_until(
                    lambda: manager.stats(NAME).completed >= 1,
                    timeout=options.timeout,
                    what="a successful run after the resume",
                )
            except TimeoutError as exc:
                return print_failure(exc, [beat, worker])
        stats = manager.stats(NAME)
        print(f"OK: failed once, paused, resumed, ran again (completed {stats.completed})")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
