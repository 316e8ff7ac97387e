"""Publishing one occurrence: the message, its deterministic task id and headers."""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from kombu.exceptions import OperationalError

from .backends.base import to_epoch_us
from .entry import Entry
from .ids import (
    CAPPED_HEADER,
    ENTRY_HEADER,
    OVERLAP_HEADER,
    PAUSE_ON_FAILURE_HEADER,
    PUBLISH_AT_HEADER,
    SLOT_HEADER,
    slot_isoformat,
)
from .message_encoding import EncodedCommands, encode
from .message_siblings import Shapes, Sibling, for_sibling
from .message_template import (
    CaptureEscaped,
    Rendered,
    Template,
    capturable,
    capture,
    capture_safe,
    collects_commands,
    make_template,
    queues_of,
    redis_commands,
    render,
    templates_allowed,
)


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
    #: The entry it was built from (``None`` when read back from JSON): the occurrences of one
    #: entry object share one message template.
    definition: Entry | None = field(default=None, compare=False, repr=False)


def build_occurrence(
    entry: Entry,
    slot: datetime,
    task_id: str,
    *,
    capped: bool = False,
    arguments: tuple[Sequence[Any], Mapping[str, Any]] | None = None,
) -> Occurrence:
    """The message for ``slot`` of ``entry``: lazy args evaluated (or ``arguments``, those
    of an occurrence built for its claim: they are called once), headers added.

    Runs that the worker must report the end of (singletons, runs under the concurrency cap)
    or act on (``pause_on_failure``) carry the headers that tell it so.
    """
    options = dict(entry.options)
    headers = dict(options.pop("headers", None) or {})
    headers.update(
        {ENTRY_HEADER: entry.name, SLOT_HEADER: slot_isoformat(slot), "celery_beat_task": True}
    )
    if entry.effective_jitter:
        headers[PUBLISH_AT_HEADER] = slot_isoformat(entry.publish_at(slot))
    if entry.overlap != "allow":
        headers[OVERLAP_HEADER] = entry.overlap
    if capped:
        headers[CAPPED_HEADER] = True
    if entry.pause_on_failure:
        headers[PAUSE_ON_FAILURE_HEADER] = True
    if arguments is not None:
        args, kwargs = arguments
    else:
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
        definition=None if entry.lazy else entry,
    )


def occurrence_to_json(occurrence: Occurrence) -> str:
    """The JSON form of an occurrence, held in Redis for overlap ``buffer_one``."""
    return json.dumps(
        {
            "entry": occurrence.entry,
            "slot": slot_isoformat(occurrence.slot),
            "slot_us": to_epoch_us(occurrence.slot),  # read by the claim script (superseded)
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


T = TypeVar("T")

#: :meth:`CeleryPublisher._sibling_made` was not given the task object.
_UNREAD: Any = object()

#: Message templates kept per publisher (least recently used dropped): about 3.4 KiB each with
#: their encodings, so a million entries do not hold a million messages; a burst larger than
#: this rebuilds some. A sibling's template (see :mod:`.message_siblings`), about 0.4 KiB,
#: counts as 1 / :data:`SIBLINGS_PER_TEMPLATE` of one.
TEMPLATES_KEPT = 50_000
SIBLINGS_PER_TEMPLATE = 8

logger = logging.getLogger("celery_fork_scheduler")

#: Errors that say the broker could not be reached: worth trying again if nothing was sent.
TRANSIENT_ERRORS = (OperationalError, ConnectionError, TimeoutError, OSError)


#: How many task ids of messages that escaped a capture are kept, to refuse their slots'
#: publishes (see ``CeleryPublisher._refuse_escaped``).
ESCAPED_KEPT = 10_000


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
    an unknown task name through ``app.send_task``. On Kombu's virtual transports (Redis,
    memory, filesystem, ...) each entry's message is built by Celery once and copied for its
    later occurrences (:mod:`.message_template`); ``templates=False`` turns that off.
    """

    def __init__(self, app: Any, producer: Callable[[], Any], *, templates: bool = True) -> None:
        self.app = app
        self._producer = producer
        self.templates = templates
        #: Per entry name: the entry object a template was made from, the app's task object
        #: of its task then (None: not registered), and the template (None: this entry goes
        #: through Celery). The most recently used of them, up to :data:`TEMPLATES_KEPT`
        #: (:meth:`_keep`).
        self._cache: OrderedDict[str, tuple[Entry, Any, Template | Sibling | None]] = OrderedDict()
        #: The cache's weight: :data:`SIBLINGS_PER_TEMPLATE` per template, 1 per sibling.
        self._weight = 0
        #: Templates by shape: a new entry of a known shape gets its template without a send.
        self._shapes = Shapes()
        #: Per entry name: its template and that template's encoded commands per variant.
        self._encodings: dict[str, tuple[Template, dict[Any, EncodedCommands]]] = {}
        #: Task ids whose message left while their entry's template was captured
        #: (CaptureEscaped), ahead of the slot or at it: each later publish of them is
        #: refused as uncertain rather than sent again (the latest :data:`ESCAPED_KEPT`).
        self._escaped: OrderedDict[str, None] = OrderedDict()

    def prepare(self) -> None:
        """Create (or reuse) the producer: this connects to the broker."""
        self._producer()

    def publish(self, occurrence: Occurrence) -> None:
        """Send one occurrence with its task id and headers, through Celery."""
        self._send(occurrence, self._producer())

    def publish_many(self, occurrences: Sequence[Occurrence]) -> list[Exception | None]:
        """Send a batch; for each, ``None`` when sent, else the error.

        Templated messages go to the transport in one round trip (Redis: one pipeline of
        ``LPUSH``); the others through Kombu's ``Producer.batch`` where the transport supports
        it, built exactly as one by one. A message refused while it is built or added to the
        batch was not sent. When the final flush fails, nobody can say which messages reached
        the broker: each of them gets a :class:`DeliveryUncertain`. Without batches, a broker
        error during a publish is uncertain too; an encoding or routing error is not.
        """
        producer = self._producer()
        channel = self._templating_channel(producer)
        if channel is None:
            return self._publish_through_celery(occurrences, producer)
        errors: list[Exception | None] = [None] * len(occurrences)
        rendered: list[tuple[int, Rendered]] = []
        plain: list[int] = []
        for index, occurrence in enumerate(occurrences):
            try:
                done = self.render(occurrence, producer, channel)
            except Exception as exc:  # Celery refused to build it: nothing was sent
                errors[index] = exc
                continue
            if done is None:
                plain.append(index)
            else:
                rendered.append((index, done))
        for (index, _), error in zip(
            rendered, self._put_rendered(channel, [r for _, r in rendered]), strict=True
        ):
            errors[index] = error
        through_celery = self._publish_through_celery([occurrences[i] for i in plain], producer)
        for index, error in zip(plain, through_celery, strict=True):
            errors[index] = error
        return errors

    def commands_for(self, occurrences: Sequence[Occurrence]) -> list[Any] | None:
        """The Redis commands of each occurrence (``[(name, args), ...]``); for one that cannot
        be rendered the error Celery raised building it, for one without a template ``None``;
        ``None`` for the whole batch when the broker is not a Kombu Redis transport whose
        commands can be collected. Nothing is sent."""
        producer = self._producer()
        channel = self._templating_channel(producer)
        if channel is None or not collects_commands(channel):
            return None
        prefix = getattr(channel, "global_keyprefix", "") or ""
        result: list[Any] = []
        for occurrence in occurrences:
            try:
                self._refuse_escaped(occurrence)
                commands = self._encoded_commands(occurrence, channel)
                if commands is None and self._sibling_made(occurrence, channel):
                    commands = self._encoded_commands(occurrence, channel)  # shape's encoding
                if commands is None:
                    done = self.render(occurrence, producer, channel)
                    if done is None:
                        result.append(None)  # no template: this one takes the fence path
                        continue
                    commands = redis_commands(channel, done)
            except Exception as exc:
                result.append(exc)
                continue
            result.append([(name, (prefix + key, *rest)) for name, (key, *rest) in commands])
        return result

    def known_commands_for(
        self, slots: Sequence[tuple[Entry, datetime, str]]
    ) -> list[list[tuple[str, tuple[Any, ...]]] | None] | None:
        """The Redis commands of each ``(entry, slot, task id)`` from its entry's encoded
        template, without building the occurrence (no lazy arguments, not capped: the slots a
        claim can send); ``None`` for one whose template is not made yet (see
        :meth:`commands_for`), and for them all when the broker's commands cannot be
        collected. Nothing is sent."""
        channel = self._templating_channel(self._producer())
        if channel is None or not collects_commands(channel):
            return None
        prefix = getattr(channel, "global_keyprefix", "") or ""
        tasks = self.app.tasks  # read once for the batch (a property of the app)
        result: list[list[tuple[str, tuple[Any, ...]]] | None] = []
        for entry, slot, task_id in slots:
            headers = (
                {PUBLISH_AT_HEADER: slot_isoformat(entry.publish_at(slot))}
                if entry.effective_jitter
                else {}
            )
            bare = Occurrence(entry.name, slot, entry.task, task_id, (), {}, {}, headers, entry)
            try:
                commands = self._encoded_commands(bare, channel, tasks)
            except Exception:  # the full path builds it again and reports what it raises
                commands = None
            result.append(
                None
                if commands is None
                else [(name, (prefix + key, *rest)) for name, (key, *rest) in commands]
            )
        return result

    def _encoded_commands(
        self, occurrence: Occurrence, channel: Any, tasks: Mapping[str, Any] | None = None
    ) -> list[tuple[str, tuple[Any, ...]]] | None:
        """The Redis commands of ``occurrence`` from its template's encoded text (see
        :mod:`.message_encoding`), or ``None`` when it has none yet or needs its own encoding."""
        cached = self._cached(occurrence, tasks)
        template = cached[0] if cached is not None else None
        if template is None:
            return None
        publish_at = occurrence.headers.get(PUBLISH_AT_HEADER)
        capped = bool(occurrence.headers.get(CAPPED_HEADER))
        slot_header = slot_isoformat(occurrence.slot)
        if isinstance(template, Sibling):
            queues = tuple(queues_of(template.known.template, channel))
            variant = (capped, publish_at is not None, queues)
            return template.commands(channel, variant, occurrence.task_id, slot_header, publish_at)
        queues = tuple(queues_of(template, channel))
        variant = (capped, publish_at is not None, queues)
        known = self._encodings.get(occurrence.entry)
        if known is None or known[0] is not template:
            known = self._encodings[occurrence.entry] = (template, {})
        encoded = known[1].get(variant)
        if encoded is None:
            encoded = encode(template, channel, *variant)
            if encoded is None:
                return None
            known[1][variant] = encoded
        return encoded.fill(occurrence.task_id, slot_header, publish_at)

    def warm(self, occurrence: Occurrence) -> None:
        """Make the template of ``occurrence``'s entry now, in idle time, so that its first
        slot is sent as fast as the later ones. Sends nothing; a failure is the first
        publish's to report."""
        if occurrence.definition is None:
            return
        try:
            producer = self._producer()
            channel = self._templating_channel(producer)
            if channel is not None:
                self.render(occurrence, producer, channel)
                if collects_commands(channel):
                    self._encoded_commands(occurrence, channel)
        except Exception:
            logger.debug("fork scheduler: no template for %s yet", occurrence.entry, exc_info=True)

    def broker_client(self) -> Any | None:
        """The redis-py client of a Kombu Redis broker channel (``None`` for other brokers)."""
        channel = self._templating_channel(self._producer())
        if channel is None or not collects_commands(channel):
            return None
        return channel.client

    def render(self, occurrence: Occurrence, producer: Any, channel: Any) -> Rendered | None:
        """The messages of ``occurrence`` from its entry's template, capturing one when there
        is none yet; ``None`` when it must go through Celery. Raises what Celery raises when
        it cannot build the message. Sends nothing. ``channel`` comes from
        :meth:`_templating_channel`, which checks once per batch that templates are allowed."""
        self._refuse_escaped(occurrence)
        definition = occurrence.definition
        task = self.app.tasks.get(occurrence.task)
        cached = self._cached(occurrence)
        if cached is not None:
            template = cached[0]
            if template is None:
                return None
            if isinstance(template, Sibling):
                template = template.template()
            return render(
                template,
                occurrence.task_id,
                slot_isoformat(occurrence.slot),
                bool(occurrence.headers.get(CAPPED_HEADER)),
                occurrence.headers.get(PUBLISH_AT_HEADER),
                self.app.now() if template.reads_clock else None,
                queues_of(template, channel),
            )
        if not capture_safe(task, occurrence.options):  # it may publish past this channel
            if definition is not None:
                self._keep(occurrence.entry, (definition, task, None))
            return None
        if self._sibling_made(occurrence, channel, task):
            return self.render(occurrence, producer, channel)
        # No retry: Kombu would publish again on a new channel, past the capture.
        try:
            captured = capture(channel, lambda: self._send(occurrence, producer, retry=False))
        except CaptureEscaped as exc:
            self._escaped[occurrence.task_id] = None
            while len(self._escaped) > ESCAPED_KEPT:
                self._escaped.popitem(last=False)
            if definition is not None:
                self._keep(occurrence.entry, (definition, task, None))
            logger.error(
                "fork scheduler: entry %s: its message left through a path the message "
                "capture does not know (another producer or connection); its slot %s is "
                "reported uncertain and not sent again, and its later slots go through Celery",
                occurrence.entry,
                occurrence.slot.isoformat(),
            )
            raise DeliveryUncertain(exc) from None
        template = None
        if captured is not None and definition is not None:
            template = make_template(captured, dict(occurrence.options), occurrence.task_id)
        if definition is not None:
            self._keep(occurrence.entry, (definition, task, template))
            if template is not None:
                self._shapes.add(occurrence, task is not None, template, task)
        return None if captured is None else Rendered(tuple(captured))

    def _refuse_escaped(self, occurrence: Occurrence) -> None:
        """:class:`DeliveryUncertain` for an occurrence whose message left while its entry's
        template was captured (see :meth:`render`): sending it again could be a duplicate.
        Asked as often as it is published: each answer is the same."""
        if occurrence.task_id in self._escaped:
            raise DeliveryUncertain(CaptureEscaped("sent while its template was captured"))

    def _sibling_made(self, occurrence: Occurrence, channel: Any, task: Any = _UNREAD) -> bool:
        """Make the entry's template from a known shape's (see :mod:`.message_siblings`);
        whether one was made. ``task``: the app's task object of its task (``None``: not
        registered), read now when not given. Raises what Celery raises for arguments the
        task refuses."""
        definition = occurrence.definition
        if definition is None:
            return False
        if task is _UNREAD:
            task = self.app.tasks.get(occurrence.task)
        if not capture_safe(task, occurrence.options):
            return False  # patched since its shape was captured: through Celery (render)
        made = self._sibling_template(occurrence, task is not None, channel)
        if made is None:
            return False
        kept = made
        if isinstance(made, Sibling) and (
            made.known.template.reads_clock or not collects_commands(channel)
        ):
            kept = made.template()  # rendered whole at each occurrence: made once
        self._keep(occurrence.entry, (definition, task, kept))
        return True

    def _cached(
        self, occurrence: Occurrence, tasks: Mapping[str, Any] | None = None
    ) -> tuple[Template | Sibling | None] | None:
        """The entry's cached template (``(None,)``: it goes through Celery), when it was made
        from this very definition with the task object registered now (in ``tasks``, the
        app's registry read once by the caller, or now; none, as then); else ``None``."""
        definition = occurrence.definition
        cached = self._cache.get(occurrence.entry)
        task = (self.app.tasks if tasks is None else tasks).get(occurrence.task)
        if definition is None or cached is None or cached[:2] != (definition, task):
            return None
        self._cache.move_to_end(occurrence.entry)
        return (cached[2],)

    def _keep(self, name: str, cached: tuple[Entry, Any, Template | Sibling | None]) -> None:
        """Cache ``cached`` for entry ``name`` (its encodings of another template dropped),
        dropping the least recently used beyond :data:`TEMPLATES_KEPT` templates' worth."""
        previous = self._cache.pop(name, None)
        if previous is not None:
            self._weight -= _weight(previous[2])
        encodings = self._encodings.get(name)
        if encodings is not None and encodings[0] is not cached[2]:
            del self._encodings[name]
        self._cache[name] = cached
        self._weight += _weight(cached[2])
        while self._weight > TEMPLATES_KEPT * SIBLINGS_PER_TEMPLATE and len(self._cache) > 1:
            dropped, (_, _, template) = self._cache.popitem(last=False)
            self._weight -= _weight(template)
            self._encodings.pop(dropped, None)

    def _sibling_template(
        self, occurrence: Occurrence, registered: bool, channel: Any
    ) -> Sibling | Template | None:
        """The template of an entry of the same shape made this occurrence's, with that
        shape, or ``None``. Raises what Celery raises for arguments the task refuses."""
        known = self._shapes.find(occurrence, registered)
        if known is None:
            return None
        return for_sibling(
            known,
            self.app,
            channel,
            entry=occurrence.entry,
            task_name=occurrence.task,
            args=list(occurrence.args),  # a list, as Celery beat sends (round 61)
            kwargs=occurrence.kwargs,
            options=occurrence.options,
        )

    def _templating_channel(self, producer: Any) -> Any | None:
        """The producer's channel when messages may be captured and copied, else ``None``."""
        channel = getattr(producer, "channel", None)
        if not self.templates or channel is None or not capturable(channel):
            return None
        if getattr(channel, "closed", False) or getattr(channel, "connection", None) is None:
            return None  # closed by a reconnection: Celery's path revives the producer
        return channel if templates_allowed(self.app) else None

    def _put_rendered(self, channel: Any, rendered: Sequence[Rendered]) -> list[Exception | None]:
        """Hand rendered messages to the transport: Redis in one pipeline, others one by one."""
        if not rendered:
            return []
        if collects_commands(channel):
            try:
                commands = [redis_commands(channel, done) for done in rendered]
                with channel.conn_or_acquire() as client:
                    pipe = client.pipeline(transaction=False)
                    for name, args in (command for each in commands for command in each):
                        getattr(pipe, name)(*args)
                    try:
                        pipe.execute()
                    except Exception as exc:  # some of the commands may have run
                        return [DeliveryUncertain(exc) for _ in rendered]
            except Exception as exc:  # before anything was sent: the broker is out of reach
                error = exc if is_transient(exc) else OperationalError(f"broker unusable: {exc!r}")
                return [error for _ in rendered]
            return [None for _ in rendered]

        def put(done: Rendered) -> None:
            for queue, message in done.messages:
                channel._put(queue, message)

        return _one_by_one(rendered, put)

    def _publish_through_celery(
        self, occurrences: Sequence[Occurrence], producer: Any
    ) -> list[Exception | None]:
        """Each occurrence built and sent by Celery, in one Kombu batch where supported."""
        if not occurrences:
            return []
        if producer is None or not hasattr(producer, "batch"):
            return _one_by_one(occurrences, lambda occurrence: self._send(occurrence, producer))
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

    def _send(self, occurrence: Occurrence, producer: Any, **overrides: Any) -> None:
        task = self.app.tasks.get(occurrence.task)
        common = {
            "task_id": occurrence.task_id,
            "headers": dict(occurrence.headers),
            "producer": producer,
            **occurrence.options,
            **overrides,
        }
        args = list(occurrence.args)  # as Celery beat sends them: argsrepr "[...]" (round 61)
        if task is not None:
            task.apply_async(args, occurrence.kwargs, **common)
        else:
            self.app.send_task(occurrence.task, args, occurrence.kwargs, **common)


def _weight(template: Template | Sibling | None) -> int:
    """A cached template's share of the cache (see :data:`TEMPLATES_KEPT`)."""
    return SIBLINGS_PER_TEMPLATE if isinstance(template, Template) else 1


def _one_by_one(items: Sequence[T], send: Callable[[T], None]) -> list[Exception | None]:
    """Send each item alone: ``None`` when sent, else the error. A broker error during a send
    is a :class:`DeliveryUncertain` (the message may have left); any other was not sent."""
    errors: list[Exception | None] = []
    for item in items:
        try:
            send(item)
        except Exception as exc:
            errors.append(DeliveryUncertain(exc) if is_transient(exc) else exc)
        else:
            errors.append(None)
    return errors
