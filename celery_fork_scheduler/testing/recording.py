"""A publisher that records occurrences instead of sending them."""

from __future__ import annotations

from collections.abc import Sequence

from ..publishing import Occurrence, publish_each

__all__ = ["RecordingPublisher"]


class RecordingPublisher:
    """Keeps every occurrence the scheduler publishes, in order, in :attr:`occurrences`."""

    def __init__(self) -> None:
        self.occurrences: list[Occurrence] = []

    def prepare(self) -> None:
        """Nothing to connect to."""

    def publish(self, occurrence: Occurrence) -> None:
        """Record the occurrence."""
        self.occurrences.append(occurrence)

    def publish_many(self, occurrences: Sequence[Occurrence]) -> list[Exception | None]:
        """Publish each, in order."""
        return publish_each(self, occurrences)

    def fired(self, entry: str | None = None) -> list[str]:
        """The slots published (ISO-8601 UTC), of one entry or of all."""
        return [
            occurrence.slot.isoformat()
            for occurrence in self.occurrences
            if entry is None or occurrence.entry == entry
        ]

    def clear(self) -> None:
        """Forget what was recorded."""
        self.occurrences.clear()
