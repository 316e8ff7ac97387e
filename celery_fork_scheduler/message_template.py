"""Build each entry's Celery message once; per occurrence patch only what differs.

Celery spends about 0.17 ms building one message (signature, routing, headers, encoding); an
entry's occurrences differ only in a few fields. The first occurrence of an entry is sent
through Celery and Kombu as usual up to the transport, where it is *captured* instead of sent
(the virtual transport's ``_put``: after routing, encoding and Kombu's own augmentation);
an entry of a shape already captured gets its template from that one instead
(:mod:`.message_siblings`). Later occurrences copy the template's message and patch:

- the task id (``headers.id``, ``properties.correlation_id``, and ``headers.root_id`` unless
  the entry's options set one);
- this scheduler's per-slot headers (``fork_scheduler_slot``, ``fork_scheduler_capped``,
  ``fork_scheduler_publish_at``);
- ``headers.expires`` / ``headers.eta`` when they come from numeric ``expires`` / ``countdown``
  options (recomputed from the app's clock at send time, the seconds added in UTC, as Celery
  does);
- Kombu's ``properties.delivery_tag`` (a new uuid);
- the queues: a message sent to a named exchange is routed again at every send, through the
  exchange's bindings, as Kombu does.

No template is made (the entry is published through Celery each time, as before) when the
message would differ in another way: lazy args, an ``eta``, a datetime ``expires``, a fanout
exchange, a transport that is not Kombu's virtual kind (py-amqp), a router function in
``task_routes`` (it may answer differently at each call), or receivers of Celery's
``before_task_publish`` / ``after_task_publish`` / ``task_sent`` signals (they may change every
message, and they are not sent for templated messages) or ``task_send_sent_event``, or a task
that overrides ``apply_async`` (it may publish with a producer of its own: see
:func:`capture_safe`). A task registered (or unregistered) since its template was made gets a
new template.
"""

from __future__ import annotations

import contextlib
import copy
import numbers
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from celery import Celery
from celery import signals as celery_signals
from celery.app.amqp import AMQP
from celery.app.routes import MapRoute
from celery.app.task import Task
from kombu.messaging import Producer

from .ids import CAPPED_HEADER, PUBLISH_AT_HEADER, SLOT_HEADER

#: A captured message: the queue it went to and Kombu's message dict.
Captured = tuple[str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Template:
    """The message one occurrence of an entry became, and where it is routed."""

    message: dict[str, Any]
    #: Kombu's exchange and routing key ("" exchange: the routing key names the queue).
    exchange: str
    routing_key: str
    #: Seconds after send time, from numeric ``expires`` / ``countdown`` options.
    expires: float | None
    countdown: float | None
    #: ``headers.root_id`` follows the task id (Celery's default), rather than an option.
    root_is_task: bool

    @property
    def reads_clock(self) -> bool:
        """Whether a render needs the app's clock (an ``expires`` or ``eta`` from seconds)."""
        return self.expires is not None or self.countdown is not None


@dataclass(frozen=True, slots=True)
class Rendered:
    """One occurrence as Kombu would hand it to the transport: ``(queue, message)`` pairs."""

    messages: tuple[Captured, ...]


#: Celery's signals sent at each publish: their receivers turn templates off.
PUBLISH_SIGNALS = (
    celery_signals.before_task_publish,
    celery_signals.after_task_publish,
    celery_signals.task_sent,
)


def templates_allowed(app: Any) -> bool:
    """False when per-message hooks or routers would make a copied message wrong, when tasks
    run eagerly (a capture would run the task instead of sending it), or when the app's
    ``send_task``, ``producer_or_acquire`` or ``amqp`` are not Celery's own (they may publish
    with a producer of their own, past a capture)."""
    if app.conf.task_send_sent_event or app.conf.task_always_eager:
        return False
    for method in ("send_task", "producer_or_acquire"):
        if getattr(type(app), method) is not getattr(Celery, method) or method in vars(app):
            return False
    if type(app.amqp) is not AMQP:
        return False
    if any(signal.receivers for signal in PUBLISH_SIGNALS):
        return False
    return all(isinstance(route, MapRoute) for route in app.amqp.routes)


def capturable(channel: Any) -> bool:
    """True for Kombu's virtual channels (Redis, memory, filesystem, SQS...): their publish
    path ends in ``_put`` / ``_put_fanout``, where a message can be captured."""
    from kombu.transport import virtual

    return isinstance(channel, virtual.Channel)


def capture_safe(task: Any, options: Mapping[str, Any]) -> bool:
    """Whether a publish of ``task`` (the app's task object; ``None`` for a name sent with
    ``send_task``) with ``options`` goes through the publisher's channel, where a capture
    holds it: the task's ``apply_async`` is Celery's (its class's, none set on the object
    itself) and the options name no ``connection`` or ``producer`` of their own. Otherwise it
    may publish past the capture, so such an entry never gets a template: every message of
    it goes through Celery. (The app's own ``send_task`` and ``amqp``: see
    :func:`templates_allowed`.)"""
    if "connection" in options or "producer" in options:
        return False
    if task is None:
        return True
    own = getattr(task, "__dict__", {})
    return type(task).apply_async is Task.apply_async and "apply_async" not in own


class CaptureEscaped(RuntimeError):
    """A publish run under :func:`capture` reached neither the channel's ``_put``, nor its
    fanout, nor Kombu's publish on another channel: it took a path the capture does not know
    (not Kombu), and its message may have been sent."""


#: The captures under way in this thread, innermost last: (channel, publishes elsewhere).
_captures = threading.local()


class _PublishGuard:
    """The class attribute ``Producer._publish`` while captures run in any thread: how many
    run, and Kombu's own method they replaced (under ``lock``)."""

    lock = threading.Lock()
    captures = 0
    original: Callable[..., Any] | None = None


def _guarded_publish(producer: Any, *args: Any, **kwargs: Any) -> Any:
    """``Producer._publish`` while captures run: in a thread capturing, a publish on another
    channel than the capture's is kept from the broker (and noted); everything else, other
    threads' publishes included (a worker running beat sends events beside it), goes on."""
    stack = getattr(_captures, "stack", None)
    if stack:
        channel, elsewhere = stack[-1]
        if producer.channel is not channel:
            elsewhere.append(True)
            return None
    original = _PublishGuard.original
    assert original is not None  # installed only while a capture runs
    return original(producer, *args, **kwargs)


@contextlib.contextmanager
def _publishes_guarded(channel: Any, elsewhere: list[bool]) -> Iterator[None]:
    """Within: this thread's publishes on channels other than ``channel`` are kept back."""
    with _PublishGuard.lock:
        if _PublishGuard.captures == 0:
            _PublishGuard.original = Producer._publish
            Producer._publish = _guarded_publish  # type: ignore[method-assign,assignment]
        _PublishGuard.captures += 1
    stack = getattr(_captures, "stack", None)
    if stack is None:
        stack = _captures.stack = []
    stack.append((channel, elsewhere))
    try:
        yield
    finally:
        stack.pop()
        with _PublishGuard.lock:
            _PublishGuard.captures -= 1
            if _PublishGuard.captures == 0:
                Producer._publish = _PublishGuard.original  # type: ignore[method-assign,assignment]
                _PublishGuard.original = None


@contextlib.contextmanager
def _puts_recorded(
    channel: Any, put: Callable[..., None], fanout: Callable[..., None]
) -> Iterator[None]:
    """Within: the channel's ``_put`` and ``_put_fanout`` are ``put`` and ``fanout``; what
    was set on the channel before (an outer capture's) comes back after."""
    names = ("_put", "_put_fanout")
    saved = {name: channel.__dict__[name] for name in names if name in vars(channel)}
    channel._put, channel._put_fanout = put, fanout
    try:
        yield
    finally:
        for name in names:
            if name in saved:
                setattr(channel, name, saved[name])
            else:
                delattr(channel, name)


def capture(channel: Any, send: Callable[[], None]) -> list[Captured] | None:
    """Run ``send`` (one publish through Celery) with the channel's ``_put`` recording instead
    of sending. ``None`` when the publish went to a fanout exchange, or through Kombu on
    another channel (a producer or connection of its own): intercepted, nothing was sent.
    :class:`CaptureEscaped` when it reached none of them (the publishes known to leave past
    the channel are refused before, by :func:`capture_safe`). Captures may overlap (threads)
    and nest (a send that captures again)."""
    recorded: list[Captured] = []
    elsewhere: list[bool] = []

    def put(queue: str, message: dict[str, Any], **_: Any) -> None:
        recorded.append((queue, copy.deepcopy(message)))

    def put_fanout(*_: Any, **__: Any) -> None:
        elsewhere.append(True)

    with _puts_recorded(channel, put, put_fanout), _publishes_guarded(channel, elsewhere):
        send()
    if elsewhere:
        return None
    if not recorded:
        raise CaptureEscaped("the message left past the channel it was captured on")
    return recorded


def make_template(
    captured: list[Captured], options: dict[str, Any], task_id: str
) -> Template | None:
    """A template from the capture of one occurrence, or ``None`` when later occurrences could
    not be made from it by the patches this module knows."""
    # Celery turns a countdown into an eta only when it is truthy: 0 sends none.
    expires, countdown = options.get("expires"), options.get("countdown") or None
    if options.get("eta") is not None:
        return None
    if expires is not None and not _seconds(expires):
        return None
    if countdown is not None and not _seconds(countdown):
        return None
    messages = [message for _, message in captured]
    if any(message != messages[0] for message in messages):
        return None  # not one message delivered to several queues
    message = messages[0]
    headers = message.get("headers") or {}
    properties = message.get("properties") or {}
    delivery = properties.get("delivery_info") or {}
    if headers.get("id") != task_id or properties.get("correlation_id") != task_id:
        return None  # a router or hook renamed the task: not ours to patch
    if headers.get("eta") is not None and countdown is None:
        return None
    if headers.get("expires") is not None and expires is None:
        return None
    exchange, routing_key = delivery.get("exchange"), delivery.get("routing_key")
    if not isinstance(exchange, str) or not isinstance(routing_key, str):
        return None
    if not exchange and [queue for queue, _ in captured] != [routing_key]:
        return None
    return Template(
        message,
        exchange,
        routing_key,
        float(expires) if expires is not None else None,
        float(countdown) if countdown is not None else None,
        headers.get("root_id") == task_id,
    )


def render(
    template: Template,
    task_id: str,
    slot_header: str,
    capped: bool,
    publish_at: str | None,
    now: datetime | None,
    queues: list[str],
    *,
    delivery_tag: str | None = None,
) -> Rendered:
    """The messages of one occurrence: the template with its per-occurrence fields patched,
    for each of ``queues`` (see :func:`queues_of`).

    ``now`` is the app's clock (``app.now()``), read once per render, as Celery reads it once
    per publish; ``None`` when the template does not read it (see :attr:`Template.reads_clock`).
    ``delivery_tag``: Kombu's delivery tag (a new uuid when not given).
    """
    original = template.message
    headers = dict(original["headers"])
    headers["id"] = task_id
    if template.root_is_task:
        headers["root_id"] = task_id
    headers[SLOT_HEADER] = slot_header
    if capped:
        headers[CAPPED_HEADER] = True
    else:
        headers.pop(CAPPED_HEADER, None)
    if publish_at is not None:
        headers[PUBLISH_AT_HEADER] = publish_at
    else:
        headers.pop(PUBLISH_AT_HEADER, None)
    if now is not None and template.expires is not None:
        headers["expires"] = _seconds_after(now, template.expires).isoformat()
    if now is not None and template.countdown is not None:
        headers["eta"] = _seconds_after(now, template.countdown).isoformat()
    properties = dict(original["properties"])
    properties["correlation_id"] = task_id
    properties["delivery_tag"] = delivery_tag or str(uuid.uuid4())
    message = dict(original)
    message["headers"], message["properties"] = headers, properties
    return Rendered(tuple((queue, message) for queue in queues))


def queues_of(template: Template, channel: Any) -> list[str]:
    """Where Kombu would deliver the template's message now: the routing key's queue for the
    default exchange, else the exchange's current bindings (read from the broker, as Kombu
    reads them at every publish)."""
    if not template.exchange:
        return [template.routing_key]
    return list(channel._lookup(template.exchange, template.routing_key))


def _seconds_after(now: datetime, seconds: float) -> datetime:
    """``now`` plus elapsed seconds, added in UTC (across a DST change the wall clock moves by
    more or less), as Celery adds them."""
    if now.tzinfo is None:
        return now + timedelta(seconds=seconds)
    return (now.astimezone(timezone.utc) + timedelta(seconds=seconds)).astimezone(now.tzinfo)


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
