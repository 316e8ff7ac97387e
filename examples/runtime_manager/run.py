"""Runtime Manager: add, pause, resume, trigger and remove jobs while a beat replica runs.

Starts one ``celery worker`` and one ``celery beat -S fork`` (no static schedule), then steers
them from this process through ``app.fork_scheduler`` (a :class:`~celery_fork_scheduler.Manager`)
and prints what the worker received. Uses ``$REDIS_URL`` when set, otherwise a private,
throwaway ``redis-server``. Takes about 25 seconds.

    python examples/runtime_manager/run.py
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

from celery_fork_scheduler.testing import redis_url_from_env, wait_until
from celery_fork_scheduler.testing.examples import parse_options, print_failure, worker_and_beat

HERE = Path(__file__).resolve().parent


def slot_time(run: dict[str, Any]) -> float:
    return datetime.fromisoformat(run["slot"]).timestamp()


def main() -> int:
    options = parse_options(__doc__, timeout=(20.0, "longest wait for one step"))

    workdir = Path(tempfile.mkdtemp(prefix="fork-scheduler-runtime-manager-"))
    with redis_url_from_env() as url:
        os.environ["RUNTIME_MANAGER_REDIS_URL"] = url
        sys.path.insert(0, str(HERE))
        import proj  # the example app, configured for this Redis

        client = redis.Redis.from_url(url, decode_responses=True)
        client.delete(proj.RECEIVED)
        manager = proj.app.fork_scheduler
        manager.clear()
        print(f"Redis {url}; logs in {workdir} (kept on failure)", flush=True)
        env = {"RUNTIME_MANAGER_REDIS_URL": url}
        with worker_and_beat(HERE, workdir, env) as (worker, beat):

            def runs(label: str | None = None) -> list[dict[str, Any]]:
                received = [json.loads(raw) for raw in client.lrange(proj.RECEIVED, 0, -1)]
                return [run for run in received if label is None or run["label"] == label]

            def wait(predicate: Any, what: str) -> None:
                wait_until(
                    lambda: predicate() or not (worker.alive() and beat.alive()),
                    timeout=options.timeout,
                    what=what,
                )
                if not (worker.alive() and beat.alive()):
                    raise TimeoutError(f"a process exited while waiting for {what}")

            try:
                wait(lambda: client.hlen("scheduler:{replicas}") > 0, "the beat replica to tick")
                print("worker and one beat replica running\n", flush=True)

                report = manager.every(2).seconds.name("report").tag("demo").do(proj.work, "report")
                cleanup = (
                    manager.cron("*/3 * * * * *")
                    .name("cleanup")
                    .tag("demo")
                    .singleton()
                    .do("proj.work", "cleanup")
                )
                print(f"added   {report.name!r} ({report.schedule_text}), version {report.version}")
                print(f"added   {cleanup.name!r} ({cleanup.schedule_text}, singleton)")
                wait(lambda: len(runs("report")) >= 2, "two runs of 'report'")
                wait(lambda: len(runs("cleanup")) >= 1, "a run of 'cleanup'")

                manager.pause("report", note="paused by run.py")
                paused_at = time.time()
                state = manager.is_paused("report")
                print(f"paused  'report' (note {state.note!r})")
                time.sleep(4.5)
                during_pause = [r for r in runs("report") if slot_time(r) > paused_at + 0.5]
                print(f"        runs of 'report' with a slot during the pause: {len(during_pause)}")

                manager.resume("report")
                resumed_at = time.time()
                print("resumed 'report'")
                wait(
                    lambda: any(slot_time(r) > resumed_at for r in runs("report")),
                    "a run of 'report' after resume",
                )

                task_id = manager.run_now("report")
                print(f"run_now 'report' -> task id {task_id}")
                wait(lambda: any(r["task_id"] == task_id for r in runs()), "the triggered run")

                print(
                    "jobs:   " + ", ".join(f"{j.name} (runs {j.run_count})" for j in manager.jobs())
                )
                removed = manager.remove_by_tag("demo")
                removed_at = time.time()
                print(f"removed {sorted(removed)} by tag 'demo'")
                time.sleep(3)
                after_removal = [r for r in runs() if slot_time(r) > removed_at + 2.0]
                print(f"        runs with a slot after the removal: {len(after_removal)}")
            except TimeoutError as exc:
                return print_failure(exc, [beat, worker])

        print("\nwhat the worker received:")
        for run in runs():
            print(f"  {run['entry']:8} slot {run['slot']}  task id {run['task_id']}")
        if during_pause or after_removal or manager.jobs():
            print("FAILED: a paused or removed job kept running")
            return 1
        print(f"OK: {len(runs())} runs received; pause, resume, run_now and removal held")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
