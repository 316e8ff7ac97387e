"""Driving a worker's heartbeat by hand in tests."""

from __future__ import annotations


class OnePass:
    """Stands in for the heartbeat thread's stop event: ``WorkerHooks._beat_hearts`` runs one
    pass, then stops."""

    def __init__(self) -> None:
        self.calls = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.calls += 1
        return self.calls > 1
