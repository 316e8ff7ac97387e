"""Publishing one occurrence: the message, its deterministic task id and headers."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from kombu.exceptions import OperationalError

from .entry import Entry
from .ids import CAPPED_HEADER, ENTRY_HEADER, OVERLAP_HEADER, SLOT_HEADER, slot_isoformat


@dataclass(frozen=True, slots=True)
class Occurrence:
    """What is sent for one slot of one entry."""

    entry: str
    slot: datetime
    task: str
    task_id: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    options: Mapping[str, Any]
    headers: Mapping[str, Any]


def build_occurrence(
    entry: Entry, slot: datetime, task_id: str, *, capped: bool = False
) -> Occurrence:
    """The message for ``slot`` of ``entry``: lazy args evaluated, headers added.

    Runs that the worker must report the end of (singletons, runs under the concurrency cap)
    carry the headers that tell it so.
    """
    options = dict(entry.options)
    headers = dict(options.pop("headers", None) or {})
    headers.update(
        {ENTRY_HEADER: entry.name, SLOT_HEADER: slot_isoformat(slot), "celery_beat_task": True}
    )
    if entry.overlap != "allow":
        headers[OVERLAP_HEADER] = entry.overlap
    if capped:
        headers[CAPPED_HEADER] = True
    args = entry.args() if callable(entry.args) else entry.args
    kwargs = entry.kwargs() if callable(entry.kwargs) else entry.kwargs
    return Occurrence(
        entry=entry.name,
        slot=slot,
        task=entry.task,
        task_id=task_id,
        args=tuple(args),
        kwargs=dict(kwargs),
        options=options,
        headers=headers,
    )


def occurrence_to_json(occurrence: Occurrence) -> str:
    """The JSON form of an occurrence, held in Redis for overlap ``buffer_one``."""
    return json.dumps(
        {
            "entry": occurrence.entry,
            "slot": slot_isoformat(occurrence.slot),
            "task": occurrence.task,
            "task_id": occurrence.task_id,
            "args": list(occurrence.args),
            "kwargs": dict(occurrence.kwargs),
            "options": dict(occurrence.options),
            "headers": dict(occurrence.headers),
        }
    )


def occurrence_from_json(text: str | bytes) -> Occurrence:
    """Inverse of :func:`occurrence_to_json`."""
    data = json.loads(text)
    return Occurrence(
        entry=data["entry"],
        slot=datetime.fromisoformat(data["slot"]),
        task=data["task"],
        task_id=data["task_id"],
        args=tuple(data["args"]),
        kwargs=data["kwargs"],
        options=data["options"],
        headers=data["headers"],
    )


#: Errors that say the broker could not be reached: worth trying again if nothing was sent.
TRANSIENT_ERRORS = (OperationalError, ConnectionError, TimeoutError, OSError)


class DeliveryUncertain(Exception):
    """A publish raised after its message may have reached the broker.

    Such a slot is never sent again: a second publish could be a duplicate. Any other
    exception a publisher reports means the message was not sent.
    """

    def __init__(self, cause: BaseException) -> None:
        self.cause = cause
        super().__init__(f"delivery uncertain: {type(cause).__name__}: {cause}")


def is_transient(error: BaseException) -> bool:
    """True for an error that says the broker was out of reach (not a bad message)."""
    return isinstance(error, TRANSIENT_ERRORS)


class Publisher(Protocol):
    """Sends occurrences somewhere."""

    def prepare(self) -> None:
        """Make sure a publish can start (a broker connection); raise when it cannot.

        Called before a batch is fenced, so a broker that cannot be reached costs a retry,
        never a slot.
        """

    def publish(self, occurrence: Occurrence) -> None:
        """Send one occurrence; raise on failure."""

    def publish_many(self, occurrences: Sequence[Occurrence]) -> list[Exception | None]:
        """Send several; for each, ``None`` when sent, else the error: a
        :class:`DeliveryUncertain` when the message may have reached the broker, any other
        exception when it certainly did not."""


def publish_each(publisher: Publisher, occurrences: Sequence[Occurrence]) -> list[Exception | None]:
    """``publish_many`` by calling ``publish`` once per occurrence."""
    errors: list[Exception | None] = []
    for occurrence in occurrences:
        try:
            publisher.publish(occurrence)
        except Exception as exc:
            errors.append(exc)
        else:
            errors.append(None)
    return errors


class CeleryPublisher:
    """Publishes through the Celery app, as Celery's own beat does, reusing one producer.

    A registered task goes through ``Task.apply_async`` (so its own routing and options apply);
    an unknown task name through ``app.send_task``.
    """

    def __init__(self, app: Any, producer: Callable[[], Any]) -> None:
        self.app = app
        self._producer = producer

    def prepare(self) -> None:
        """Create (or reuse) the producer: this connects to the broker."""
        self._producer()

    def publish(self, occurrence: Occurrence) -> None:
        """Send one occurrence with its task id and headers."""
        self._send(occurrence, self._producer())

    def publish_many(self, occurrences: Sequence[Occurrence]) -> list[Exception | None]:
        """Send a batch through Kombu's ``Producer.batch`` where the transport supports it
        (Redis: one pipeline of ``LPUSH``); messages are built exactly as one by one.

        A message refused while it is added to the batch was not sent. When the final flush
        fails, Kombu cannot say which messages reached the broker: each of them gets a
        :class:`DeliveryUncertain`. Without batches, a broker error during a publish is
        uncertain too; an encoding or routing error is not.
        """
        producer = self._producer()
        if producer is None or not hasattr(producer, "batch"):
            return [
                DeliveryUncertain(error) if error is not None and is_transient(error) else error
                for error in publish_each(self, occurrences)
            ]
        errors: list[Exception | None] = [None] * len(occurrences)
        try:
            # One more than the batch holds: Kombu never flushes before the block ends.
            with producer.batch(max_size=len(occurrences) + 1):
                for index, occurrence in enumerate(occurrences):
                    try:
                        self._send(occurrence, producer)
                    except Exception as exc:
                        errors[index] = exc
        except Exception as exc:
            return [error or DeliveryUncertain(exc) for error in errors]
        return errors

    def _send(self, occurrence: Occurrence, producer: Any) -> None:
        task = self.app.tasks.get(occurrence.task)
        common = {
            "task_id": occurrence.task_id,
            "headers": dict(occurrence.headers),
            "producer": producer,
            **occurrence.options,
        }
        if task is not None:
            task.apply_async(occurrence.args, occurrence.kwargs, **common)
        else:
            self.app.send_task(occurrence.task, occurrence.args, occurrence.kwargs, **common)
