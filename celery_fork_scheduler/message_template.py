"""Build each entry's Celery message once; per occurrence patch only what differs.

Celery spends about 0.17 ms building one message (signature, routing, headers, encoding); an
entry's occurrences differ only in a few fields. The first occurrence of an entry is sent
through Celery and Kombu as usual up to the transport, where it is *captured* instead of sent
(the virtual transport's ``_put``: after routing, encoding and Kombu's own augmentation).
Later occurrences copy the captured message and patch:

- the task id (``headers.id``, ``headers.root_id``, ``properties.correlation_id``);
- this scheduler's per-slot headers (``fork_scheduler_slot``, ``fork_scheduler_capped``);
- ``headers.expires`` / ``headers.eta`` when they come from numeric ``expires`` / ``countdown``
  options (recomputed from the app's clock at send time, as Celery does);
- Kombu's ``properties.delivery_tag`` (a new uuid).

No template is made (the entry is published through Celery each time, as before) when the
message would differ in another way: lazy args, an ``eta``, a datetime ``expires``, a fanout
exchange, a transport that is not Kombu's virtual kind (py-amqp), or receivers of Celery's
``before_task_publish`` / ``after_task_publish`` signals (they may change every message, and
they are not sent for templated messages) or ``task_send_sent_event``.
"""

from __future__ import annotations

import copy
import numbers
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from celery import signals as celery_signals

from .ids import CAPPED_HEADER, SLOT_HEADER

#: A captured message: the queue it went to and Kombu's message dict.
Captured = tuple[str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Template:
    """The messages one occurrence of an entry became (one per bound queue)."""

    messages: tuple[Captured, ...]
    #: Seconds after send time, from numeric ``expires`` / ``countdown`` options.
    expires: float | None
    countdown: float | None


@dataclass(frozen=True, slots=True)
class Rendered:
    """One occurrence as Kombu would hand it to the transport: ``(queue, message)`` pairs."""

    messages: tuple[Captured, ...]


def templates_allowed(app: Any) -> bool:
    """False when per-message hooks would make a copied message wrong."""
    if app.conf.task_send_sent_event:
        return False
    return not any(
        signal.receivers
        for signal in (celery_signals.before_task_publish, celery_signals.after_task_publish)
    )


def capturable(channel: Any) -> bool:
    """True for Kombu's virtual channels (Redis, memory, filesystem, SQS...): their publish
    path ends in ``_put`` / ``_put_fanout``, where a message can be captured."""
    from kombu.transport import virtual

    return isinstance(channel, virtual.Channel)


def capture(channel: Any, send: Callable[[], None]) -> list[Captured] | None:
    """Run ``send`` (one publish through Celery) with the channel's ``_put`` recording instead
    of sending. ``None`` when the publish took another path (fanout): nothing was sent either
    way."""
    recorded: list[Captured] = []
    fanout: list[bool] = []

    def put(queue: str, message: dict[str, Any], **_: Any) -> None:
        recorded.append((queue, copy.deepcopy(message)))

    def put_fanout(*_: Any, **__: Any) -> None:
        fanout.append(True)

    channel._put, channel._put_fanout = put, put_fanout
    try:
        send()
    finally:
        del channel._put, channel._put_fanout
    if fanout or not recorded:
        return None
    return recorded


def make_template(
    captured: list[Captured], options: dict[str, Any], task_id: str
) -> Template | None:
    """A template from the capture of one occurrence, or ``None`` when later occurrences could
    not be made from it by the patches this module knows."""
    expires, countdown = options.get("expires"), options.get("countdown")
    if options.get("eta") is not None:
        return None
    if expires is not None and not _seconds(expires):
        return None
    if countdown is not None and not _seconds(countdown):
        return None
    for _, message in captured:
        headers = message.get("headers") or {}
        properties = message.get("properties") or {}
        if headers.get("id") != task_id or properties.get("correlation_id") != task_id:
            return None  # a router or hook renamed the task: not ours to patch
        if headers.get("eta") is not None and countdown is None:
            return None
        if headers.get("expires") is not None and expires is None:
            return None
    return Template(
        tuple(captured),
        float(expires) if expires is not None else None,
        float(countdown) if countdown is not None else None,
    )


def render(template: Template, task_id: str, slot_header: str, capped: bool, now: Any) -> Rendered:
    """The messages of one occurrence: the template with its per-occurrence fields patched.

    ``now`` is the app's clock (``app.now()``), read once per render, as Celery reads it once
    per publish.
    """
    expires = (now + timedelta(seconds=template.expires)).isoformat() if template.expires else None
    eta = (now + timedelta(seconds=template.countdown)).isoformat() if template.countdown else None
    messages = []
    for queue, original in template.messages:
        headers = dict(original["headers"])
        headers["id"] = task_id
        if headers.get("root_id") is not None:
            headers["root_id"] = task_id
        headers[SLOT_HEADER] = slot_header
        if capped:
            headers[CAPPED_HEADER] = True
        else:
            headers.pop(CAPPED_HEADER, None)
        if template.expires is not None:
            headers["expires"] = expires
        if template.countdown is not None:
            headers["eta"] = eta
        properties = dict(original["properties"])
        properties["correlation_id"] = task_id
        properties["delivery_tag"] = str(uuid.uuid4())
        message = dict(original)
        message["headers"], message["properties"] = headers, properties
        messages.append((queue, message))
    return Rendered(tuple(messages))


def _seconds(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class CommandCollector:
    """Stands in for Kombu's Redis publish batch: collects the final Redis commands of one
    ``Channel._put`` (``LPUSH`` to the routed, priority-stepped queue; ``PEXPIRE`` for queues
    with ``x-expires``) instead of sending them."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...]]] = []

    def add(self, name: str, *args: Any) -> None:
        """Kombu's hook: one command of the message being routed."""
        self.commands.append((name, args))


def redis_commands(channel: Any, rendered: Rendered) -> list[tuple[str, tuple[Any, ...]]]:
    """The Redis commands Kombu's Redis transport would run for these messages."""
    collector = CommandCollector()
    for queue, message in rendered.messages:
        channel._put(queue, message, _publish_batch=collector)
    return collector.commands


def collects_commands(channel: Any) -> bool:
    """True for a Kombu Redis channel whose ``_put`` hands its commands to a publish batch
    (Kombu 5.7+), so that they can be collected without being sent."""
    try:
        from kombu.transport.redis import Channel as RedisChannel
    except ImportError:  # pragma: no cover - redis is a dependency
        return False
    return isinstance(channel, RedisChannel) and hasattr(channel, "create_publish_batch")
