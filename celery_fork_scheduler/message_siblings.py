"""One captured template serves every entry of the same shape.

Entries that send the same task with the same options and headers differ, in Celery's
message, only in their arguments (the body, ``argsrepr`` and ``kwargsrepr``) and their name
(our ``fork_scheduler_entry`` header). So the template of a *sibling* is made from the first
one's by encoding the body again with the same serializer, compression and body encoding
(Kombu's own functions) and writing those three headers, instead of sending one more message
through Celery per entry: a beat started just before a burst of 10 000 new entries captures
one message, not 10 000. A sibling keeps only those four values, as Kombu's JSON writes them
(:class:`Sibling`): its commands are its shape's encoding with them written in.

A registered task is shared only where ``Task.apply_async`` does nothing that depends on the
arguments beyond checking them (which is done here too, as Celery does): no override of
``apply_async`` or ``shadow_name``, no Pydantic arguments; only with the task object the shape
was captured with. Task protocol 2 only, and never a ``pickle`` body (a pickle writes a
repeated object as a reference: its bytes depend on which objects are the same).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from celery.app.task import Task
from celery.utils.saferepr import saferepr
from kombu import compression, serialization

from .ids import CAPPED_HEADER, ENTRY_HEADER, PUBLISH_AT_HEADER, SLOT_HEADER
from .message_encoding import EncodedCommands, Written, encode_shape, sibling_values, with_values
from .message_template import Template

#: Headers our scheduler sets per occurrence or per entry name: not part of a shape.
_OWN_HEADERS = frozenset({ENTRY_HEADER, SLOT_HEADER, PUBLISH_AT_HEADER, CAPPED_HEADER})


#: At most this many shapes are remembered (the most recently made).
SHAPES_KEPT = 1000


class Shapes:
    """Templates by shape: task, whether it was registered, options, and headers other than
    our per-occurrence ones. An entry matches a shape when all of these are equal."""

    def __init__(self) -> None:
        self._by_key: OrderedDict[Any, list[Known]] = OrderedDict()

    def add(self, occurrence: Any, registered: bool, template: Template, task: Any) -> None:
        """Remember ``template``, made from ``occurrence`` with ``task`` (the app's task
        object, ``None`` when not registered), for its shape."""
        key = _key(occurrence, registered)
        options, headers = _values(occurrence)
        candidates = [
            known
            for known in self._by_key.get(key, [])
            if not (_same(known.options, options) and _same(known.headers, headers))
        ]
        self._by_key[key] = [*candidates[-7:], Known(options, headers, template, task)]
        self._by_key.move_to_end(key)
        if len(self._by_key) > SHAPES_KEPT:
            self._by_key.popitem(last=False)

    def find(self, occurrence: Any, registered: bool) -> Known | None:
        """The known template of ``occurrence``'s shape, if one was made."""
        candidates = self._by_key.get(_key(occurrence, registered))
        if not candidates:
            return None
        options, headers = _values(occurrence)
        for known in candidates:
            if _same(known.options, options) and _same(known.headers, headers):
                return known
        return None


@dataclass(frozen=True, slots=True)
class Basis:
    """How the first template's body was made, read from it once for all its siblings."""

    embed: Any
    serializer: str
    body_encoding: str | None
    compression: str | None
    #: ``argsrepr`` / ``kwargsrepr`` set by the task's route (``task_routes``): every sibling
    #: keeps the shape's, as Celery's router gives every one of them the same.
    routed_reprs: frozenset[str] = frozenset()


class Known:
    """A shape's template, made with the task object ``task``, with its :class:`Basis` once a
    sibling asked for it (``False``: it may not serve siblings, or its body cannot be made
    again the way Kombu made it)."""

    __slots__ = ("basis", "encodings", "headers", "options", "task", "template")

    def __init__(
        self, options: dict[str, Any], headers: dict[str, Any], template: Template, task: Any
    ) -> None:
        self.options, self.headers, self.template, self.task = options, headers, template, task
        self.basis: Basis | Literal[False] | None = None
        #: Per variant, the template's commands with placeholders where siblings differ.
        self.encodings: dict[Any, EncodedCommands | None] = {}

    def shaped(
        self, channel: Any, variant: tuple[bool, bool, tuple[str, ...]]
    ) -> EncodedCommands | None:
        """This shape's commands for ``variant`` (capped, jittered, queues), with placeholders
        where its siblings differ (see :func:`.message_encoding.encode_shape`)."""
        if variant not in self.encodings:
            self.encodings[variant] = encode_shape(self.template, channel, *variant)
        return self.encodings[variant]


@dataclass(frozen=True, slots=True)
class Sibling:
    """An entry's template made from a shape's, kept as what differs: its body and text
    headers (``argsrepr``, ``kwargsrepr``, the entry header) as Kombu's JSON writes them, a few
    hundred bytes where a whole message and its encoding take a few KiB."""

    known: Known
    written: Written

    def template(self) -> Template:
        """The whole template, as Celery would have built it."""
        message = with_values(self.known.template.message, self.written)
        return replace(self.known.template, message=message)

    def commands(
        self,
        channel: Any,
        variant: tuple[bool, bool, tuple[str, ...]],
        task_id: str,
        slot_header: str,
        publish_at: str | None,
    ) -> list[tuple[str, tuple[Any, ...]]] | None:
        """The Redis commands of one occurrence from the shape's encoding, or ``None`` when
        the shape has none for ``variant`` (see :func:`.message_encoding.encode_shape`).
        ``written`` holds every text header the shape's encoding leaves a place for: the
        sibling sets text where the shape has text, and keeps the shape's other values."""
        shaped = self.known.shaped(channel, variant)
        if shaped is None:
            return None
        return shaped.fill(task_id, slot_header, publish_at, self.written)


def _key(occurrence: Any, registered: bool) -> Any:
    headers = occurrence.headers
    return (
        occurrence.task,
        registered,
        tuple(sorted(occurrence.options)),
        tuple(sorted(name for name in headers if name not in _OWN_HEADERS)),
    )


def _values(occurrence: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    headers = occurrence.headers
    return dict(occurrence.options), {
        name: value for name, value in headers.items() if name not in _OWN_HEADERS
    }


def _same(first: Any, second: Any) -> bool:
    """Equal, and of the same types all the way down (``True == 1 == 1.0`` in Python, not in
    a message); dicts in the same key order."""
    if type(first) is not type(second):
        return False
    if isinstance(first, dict):
        return len(first) == len(second) and all(
            _same(key, other_key) and _same(value, second[other_key])
            for (key, value), other_key in zip(first.items(), second, strict=True)
        )
    if isinstance(first, list | tuple):
        return len(first) == len(second) and all(
            _same(item, other) for item, other in zip(first, second, strict=True)
        )
    return bool(first == second)


def shareable(app: Any, task_name: str) -> bool:
    """Whether a template of ``task_name`` may serve other arguments (see the module)."""
    if app.conf.task_protocol != 2:
        return False
    task = app.tasks.get(task_name)
    if task is None:
        return True  # ``send_task``: nothing depends on the arguments but the body
    kind = type(task)
    return (
        kind.apply_async is Task.apply_async
        and kind.shadow_name is Task.shadow_name
        and getattr(task, "_dump_pydantic_arguments", None) is None
    )


def for_sibling(
    known: Known,
    app: Any,
    channel: Any,
    *,
    entry: str,
    task_name: str,
    args: list[Any],
    kwargs: Mapping[str, Any],
    options: Mapping[str, Any],
) -> Sibling | Template | None:
    """The template of entry ``entry`` with ``args`` / ``kwargs``, from ``known``, the
    template of an entry of the same shape (a whole :class:`Template` when its body is bytes);
    ``None`` when its body cannot be made the way Kombu made the first one. Raises what Celery
    raises for arguments the task refuses."""
    task = app.tasks.get(task_name)
    if task is not known.task:
        return None  # the task was registered again since the shape was captured
    args_sent: list[Any] | tuple[()] = args or ()  # as Celery's amqp: no arguments are ()
    if known.basis is None:
        shared = shareable(app, task_name)
        basis = shared and _basis(known.template, app, task, task_name, channel, options)
        known.basis = basis or False
    basis = known.basis
    if not isinstance(basis, Basis):
        return None
    check = getattr(task, "__header__", None) if task is not None and task.typing else None
    if check is not None:  # Celery's own check of the arguments (a class-based task has none)
        check(*args_sent, **kwargs)
    # as Kombu's producer: the serializer's own text or bytes, compressed as bytes
    _, _, payload = serialization.dumps(  # type: ignore[no-untyped-call]
        (args_sent, dict(kwargs), basis.embed), serializer=basis.serializer
    )
    if basis.compression:
        packed = payload if isinstance(payload, bytes) else str(payload).encode()
        payload, _ = compression.compress(packed, basis.compression)  # type: ignore[no-untyped-call]
    body, _ = channel.encode_body(payload, basis.body_encoding)
    maxlevels = app.conf.task_repr_maxlevels
    headers: list[tuple[str, Any]] = []
    # as Celery: a given None is made from the arguments, unless the task's route sets it
    if options.get("argsrepr") is None and "argsrepr" not in basis.routed_reprs:
        headers.append(("argsrepr", _saferepr(args_sent, app.amqp.argsrepr_maxsize, maxlevels)))
    if options.get("kwargsrepr") is None and "kwargsrepr" not in basis.routed_reprs:
        headers.append(("kwargsrepr", _saferepr(kwargs, app.amqp.kwargsrepr_maxsize, maxlevels)))
    headers.append((ENTRY_HEADER, entry))
    message = known.template.message
    if not isinstance(body, str):
        written = {**message["headers"], **dict(headers)}
        return replace(known.template, message={**message, "body": body, "headers": written})
    return Sibling(known, sibling_values(body, [*message["headers"].items(), *headers]))


def _basis(
    template: Template,
    app: Any,
    task: Any,
    task_name: str,
    channel: Any,
    options: Mapping[str, Any],
) -> Basis | None:
    """Read how ``template``'s body was made, checking that the serializer Celery chose makes
    it again byte for byte; ``None`` when it does not."""
    message = template.message
    headers = message["headers"]
    content_type, content_encoding = message["content-type"], message["content-encoding"]
    body_encoding = message["properties"].get("body_encoding")
    packed = channel.decode_body(message["body"], body_encoding)
    if headers.get("compression"):
        packed = compression.decompress(packed, headers["compression"])  # type: ignore[no-untyped-call]
    packed = packed if isinstance(packed, bytes) else str(packed).encode()
    original_args, original_kwargs, embed = serialization.loads(  # type: ignore[no-untyped-call]
        packed, content_type, content_encoding, accept=[content_type]
    )
    serializer = _serializer_name(app, task, options, content_type)
    if serializer == "pickle":
        return None  # pickle writes repeated objects as references: bodies differ by identity
    if _dumps((original_args, original_kwargs, embed), serializer) != packed:
        return None  # the serializer of that content type is not the one Celery used
    routed = app.amqp.router.route({}, task_name, (), {})
    return Basis(
        embed=embed,
        serializer=serializer,
        body_encoding=body_encoding,
        compression=headers.get("compression") or None,
        routed_reprs=frozenset(k for k in ("argsrepr", "kwargsrepr") if routed.get(k) is not None),
    )


#: The shortcut of :func:`_saferepr` applies with at least this size (``saferepr`` cuts a
#: text at its size, and writes ``, ...`` for what does not fit at all).
_SHORTCUT_MIN_SIZE = 64


def _saferepr(value: Any, maxsize: int | None, maxlevels: int) -> str:
    """Celery's ``saferepr``; for empty arguments or a short list of integers, within sizes
    and levels that leave them whole, the ``repr`` it then equals (property-tested against
    ``saferepr``), made without its token stream."""
    if (
        type(maxsize) is int
        and maxsize >= _SHORTCUT_MIN_SIZE
        and type(maxlevels) is int
        and maxlevels >= 0
        and type(value) in (list, tuple, dict)
    ):
        if not value:
            return repr(value)
        if type(value) in (list, tuple) and len(value) <= 16 and all(type(i) is int for i in value):
            text = repr(value)
            if len(text) * 2 < maxsize:
                return text
    return str(saferepr(value, maxsize, maxlevels=maxlevels))


def _dumps(body: Any, serializer: str) -> bytes:
    """``body`` serialized by Kombu's ``serializer``, as bytes."""
    _, _, payload = serialization.dumps(body, serializer=serializer)  # type: ignore[no-untyped-call]
    return payload if isinstance(payload, bytes) else str(payload).encode()


def _serializer_name(app: Any, task: Any, options: Mapping[str, Any], content_type: str) -> str:
    """The serializer Celery names for this message, as it chooses (the entry's option, the
    task's, the app's), among those that write ``content_type``; else the one Kombu reads it
    with."""
    encoders = serialization.registry._encoders
    chosen = (
        options.get("serializer"),
        getattr(task, "serializer", None),
        app.conf.task_serializer,
    )
    for name in chosen:
        if isinstance(name, str) and name in encoders and encoders[name][0] == content_type:
            return name
    return str(serialization.registry.type_to_name[content_type])
