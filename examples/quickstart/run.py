"""Quick start: one ``celery worker`` and one ``celery beat -S fork`` on Redis.

Waits until the worker has run a few scheduled tasks, prints them and stops everything.
Uses ``$REDIS_URL`` when set, otherwise a private, throwaway ``redis-server``.

    python examples/quickstart/run.py [--fires 4]
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

from celery_fork_scheduler.testing import CeleryProcess, redis_url_from_env, wait_until

HERE = Path(__file__).resolve().parent
#: What the ``proj.hello`` task writes to the worker log.
FIRE = re.compile(r"hello from (?P<entry>\S+) for slot (?P<slot>\S+), task id (?P<task_id>\S+)")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fires", type=int, default=4, help="task runs to wait for")
    parser.add_argument("--timeout", type=float, default=30.0, help="give up after (seconds)")
    options = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="fork-scheduler-quickstart-"))
    with redis_url_from_env() as url:
        env = {"QUICKSTART_REDIS_URL": url}
        print(f"Redis {url}; logs in {workdir} (kept on failure)", flush=True)
        worker = CeleryProcess.worker("proj", cwd=HERE, workdir=workdir, env=env)
        beat = CeleryProcess.beat("proj", cwd=HERE, workdir=workdir, env=env)

        def fires() -> list[re.Match[str]]:
            return list(FIRE.finditer(worker.log()))

        try:
            worker.start()
            beat.start()
            print("worker and `celery -A proj beat -S fork` started", flush=True)
            wait_until(
                lambda: len(fires()) >= options.fires or not (worker.alive() and beat.alive()),
                timeout=options.timeout,
                what=f"{options.fires} task runs",
            )
        except TimeoutError as exc:
            print(f"FAILED: {exc}\n--- beat log\n{beat.log()}\n--- worker log\n{worker.log()}")
            return 1
        finally:
            beat.stop()
            worker.stop()

        received = fires()
        if len(received) < options.fires:
            print(f"FAILED: a process exited early\n--- beat log\n{beat.log()}")
            return 1
        for match in received:
            print(f"  {match['entry']:15} slot {match['slot']}  task id {match['task_id']}")
        print(f"{len(received)} scheduled task runs received by the worker")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
