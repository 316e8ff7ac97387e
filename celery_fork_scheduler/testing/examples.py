"""The common part of the runnable examples (``examples/*/run.py`` in the source repository):
their command line, a worker and a beat replica of their app, the report of a failed run."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from .processes import CeleryProcess

__all__ = ["parse_options", "print_failure", "worker_and_beat"]


def parse_options(doc: str | None, **options: tuple[float, str]) -> argparse.Namespace:
    """Parse the command line of an example described by ``doc``: ``--<name> VALUE`` for each
    ``name=(default, help)`` of ``options``, of the default's type (``int`` or ``float``)."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for name, (default, help_text) in options.items():
        parser.add_argument(f"--{name}", type=type(default), default=default, help=help_text)
    return parser.parse_args()


@contextlib.contextmanager
def worker_and_beat(
    cwd: Path, workdir: Path, env: Mapping[str, str], app: str = "proj"
) -> Iterator[tuple[CeleryProcess, CeleryProcess]]:
    """A ``celery worker`` and a ``celery beat -S fork`` of ``app`` (in ``cwd``, logs in
    ``workdir``), started in that order; both are stopped on exit, beat first."""
    worker = CeleryProcess.worker(app, cwd=cwd, workdir=workdir, env=env)
    beat = CeleryProcess.beat(app, cwd=cwd, workdir=workdir, env=env)
    try:
        worker.start()
        beat.start()
        print(f"worker and `celery -A {app} beat -S fork` started", flush=True)
        yield worker, beat
    finally:
        beat.stop()
        worker.stop()


def print_failure(why: object, processes: Sequence[CeleryProcess], tail: int = 4000) -> int:
    """Print ``FAILED: <why>`` and the end of each process's log; return 1 (the exit status)."""
    logs = "".join(f"\n--- {p.log_path.name} (tail)\n{p.log()[-tail:]}" for p in processes)
    print(f"FAILED: {why}{logs}")
    return 1
