"""Quick start: one ``celery worker`` and one ``celery beat -S fork`` on Redis.

Waits until the worker has run a few scheduled tasks, prints them and stops everything.
Uses ``$REDIS_URL`` when set, otherwise a private, throwaway ``redis-server``.

    python examples/quickstart/run.py [--fires 4]
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

from celery_fork_scheduler.testing import redis_url_from_env, wait_until
from celery_fork_scheduler.testing.examples import parse_options, print_failure, worker_and_beat

HERE = Path(__file__).resolve().parent
#: What the ``proj.hello`` task writes to the worker log.
FIRE = re.compile(r"hello from (?P<entry>\S+) for slot (?P<slot>\S+), task id (?P<task_id>\S+)")


def main() -> int:
    options = parse_options(
        __doc__, fires=(4, "task runs to wait for"), timeout=(30.0, "give up after (seconds)")
    )

    workdir = Path(tempfile.mkdtemp(prefix="fork-scheduler-quickstart-"))
    with redis_url_from_env() as url:
        print(f"Redis {url}; logs in {workdir} (kept on failure)", flush=True)
        with worker_and_beat(HERE, workdir, {"QUICKSTART_REDIS_URL": url}) as (worker, beat):

            def fires() -> list[re.Match[str]]:
                return list(FIRE.finditer(worker.log()))

            try:
                wait_until(
                    lambda: len(fires()) >= options.fires or not (worker.alive() and beat.alive()),
                    timeout=options.timeout,
                    what=f"{options.fires} task runs",
                )
            except TimeoutError as exc:
                return print_failure(exc, [beat, worker])

        received = fires()
        if len(received) < options.fires:
            return print_failure("a process exited early", [beat])
        for match in received:
            print(f"  {match['entry']:15} slot {match['slot']}  task id {match['task_id']}")
        print(f"{len(received)} scheduled task runs received by the worker")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
