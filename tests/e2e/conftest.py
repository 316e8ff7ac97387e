"""Fixtures of the end-to-end tests: real processes in a scratch directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from celery_fork_scheduler.testing import CeleryProcess


@pytest.fixture
def processes() -> Iterator[list[CeleryProcess]]:
    """Processes a test starts; every one is stopped at the end, logs shown on failure."""
    started: list[CeleryProcess] = []
    yield started
    for process in started:
        process.stop()


def dump_logs(processes: list[CeleryProcess], tail: int = 60) -> str:
    """The last lines of each process log, for a failure message."""
    parts = []
    for process in processes:
        lines = process.log().splitlines()[-tail:]
        parts.append(f"--- {process.log_path.name}\n" + "\n".join(lines))
    return "\n".join(parts)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Where the project module, state files and logs of one test live."""
    return tmp_path
