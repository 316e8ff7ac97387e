"""One captured template serves every entry of the same shape.

Entries that send the same task with the same options and headers differ, in Celery's
message, only in their arguments (the body, ``argsrepr`` and ``kwargsrepr``) and their name
(our ``fork_scheduler_entry`` header). So the template of a *sibling* is made from the first
one's by encoding the body again with the same serializer, compression and body encoding
(Kombu's own functions) and writing those three headers, instead of sending one more message
through Celery per entry: a beat started just before a burst of 10 000 new entries captures
one message, not 10 000.

A registered task is shared only where ``Task.apply_async`` does nothing that depends on the
arguments beyond checking them (which is done here too, as Celery does): no override of
``apply_async`` or ``shadow_name``, no Pydantic arguments. Task protocol 2 only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from celery.app.task import Task
from celery.utils.saferepr import saferepr
from kombu import compression, serialization

from .ids import CAPPED_HEADER, ENTRY_HEADER, PUBLISH_AT_HEADER, SLOT_HEADER
from .message_template import Template

#: Headers our scheduler sets per occurrence or per entry name: not part of a shape.
_OWN_HEADERS = frozenset({ENTRY_HEADER, SLOT_HEADER, PUBLISH_AT_HEADER, CAPPED_HEADER})


#: At most this many shapes are remembered (the most recently made).
SHAPES_KEPT = 1000


class Shapes:
    """Templates by shape: task, whether it was registered, options, and headers other than
    our per-occurrence ones. An entry matches a shape when all of these are equal."""

    def __init__(self) -> None:
        self._by_key: OrderedDict[Any, list[tuple[dict[str, Any], dict[str, Any], Template]]]
        self._by_key = OrderedDict()

    def add(self, occurrence: Any, registered: bool, template: Template) -> None:
        """Remember ``template``, made from ``occurrence``, for its shape."""
        key = _key(occurrence, registered)
        options, headers = _values(occurrence)
        candidates = [
            known for known in self._by_key.get(key, []) if known[:2] != (options, headers)
        ]
        self._by_key[key] = [*candidates[-7:], (options, headers, template)]
        self._by_key.move_to_end(key)
        if len(self._by_key) > SHAPES_KEPT:
            self._by_key.popitem(last=False)

    def find(self, occurrence: Any, registered: bool) -> Template | None:
        """The template of ``occurrence``'s shape, if one was made."""
        candidates = self._by_key.get(_key(occurrence, registered))
        if not candidates:
            return None
        options, headers = _values(occurrence)
        for known_options, known_headers, template in candidates:
            if known_options == options and known_headers == headers:
                return template
        return None


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
    template: Template,
    app: Any,
    channel: Any,
    *,
    entry: str,
    task_name: str,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    options: Mapping[str, Any],
) -> Template:
    """The template of entry ``entry`` with ``args`` / ``kwargs``, from ``template`` of an
    entry of the same shape. Raises what Celery raises for arguments the task refuses."""
    task = app.tasks.get(task_name)
    if task is not None and task.typing:
        task.__header__(*args, **kwargs)  # Celery's own check of the arguments
    message = template.message
    headers = dict(message["headers"])
    properties = message["properties"]
    content_type, content_encoding = message["content-type"], message["content-encoding"]
    body_encoding = properties.get("body_encoding")
    packed = channel.decode_body(message["body"], body_encoding)
    if headers.get("compression"):
        packed = compression.decompress(packed, headers["compression"])  # type: ignore[no-untyped-call]
    _, _, embed = serialization.loads(packed, content_type, content_encoding, accept=[content_type])  # type: ignore[no-untyped-call]
    serializer = serialization.registry.type_to_name[content_type]
    _, _, payload = serialization.dumps((args, dict(kwargs), embed), serializer=serializer)  # type: ignore[no-untyped-call]
    if headers.get("compression"):
        payload, _ = compression.compress(payload, headers["compression"])  # type: ignore[no-untyped-call]
    body, _ = channel.encode_body(payload, body_encoding)
    maxlevels = app.conf.task_repr_maxlevels
    if "argsrepr" not in options:
        headers["argsrepr"] = saferepr(args, app.amqp.argsrepr_maxsize, maxlevels=maxlevels)
    if "kwargsrepr" not in options:
        headers["kwargsrepr"] = saferepr(kwargs, app.amqp.kwargsrepr_maxsize, maxlevels=maxlevels)
    headers[ENTRY_HEADER] = entry
    return replace(template, message={**message, "body": body, "headers": headers})
