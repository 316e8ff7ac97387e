"""A template's Redis commands encoded once; per occurrence only the changing strings replaced.

Kombu's Redis transport encodes each message as JSON (``LPUSH queue <json>``). An occurrence
of a template differs from the next only in a few strings — the task id, the slot header, the
publish instant of a jittered run and Kombu's delivery tag — so the commands are made once per
template and variant (capped or not, jittered or not, its queues) by Kombu's own ``_put``,
with placeholder strings in those places, and each occurrence replaces the placeholders in the
encoded text. The result is the text Kombu would encode for the occurrence, byte for byte.

Templates whose messages carry a time read from the app's clock (``expires`` / ``countdown``
in seconds) are encoded per occurrence.

A sibling's template (see :mod:`.message_siblings`) differs from its shape's only in its body,
its ``argsrepr`` / ``kwargsrepr`` and its entry header: its commands are its shape's, encoded
once with placeholders in those four places too (:func:`encode_shape`), with its own values
written in at each occurrence (:func:`sibling_values`). A sibling keeps only those values,
not a message of its own, and Kombu never encodes a new entry's whole message.

The encoded text is cut at its placeholders once; an occurrence joins the pieces with its
values.
"""

from __future__ import annotations

import json
import re
import secrets
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

from kombu.utils import json as kombu_json

from .ids import ENTRY_HEADER, delivery_tag
from .message_template import Template, redis_commands, render


def dumps(value: Any) -> str:
    """Kombu's JSON, as its Redis transport writes messages."""
    return cast(str, kombu_json.dumps(value))  # type: ignore[no-untyped-call]


#: Placeholders, by the field they stand for: control characters around a random number
#: drawn once per process, so that no message data can hold one.
_NONCE = secrets.token_hex(16)
#: The fields a sibling fills (see :func:`encode_shape`), in the order of :data:`Written`:
#: its body, then its headers.
_SIBLING_FIELDS = ("body", "argsrepr", "kwargsrepr", ENTRY_HEADER)
_PLACEHOLDER = {
    field: f"\x00{_NONCE}:{field}\x00"
    for field in ("task_id", "slot", "publish_at", "delivery_tag", *_SIBLING_FIELDS)
}
_TASK_ID, _SLOT, _PUBLISH_AT, _DELIVERY_TAG, _BODY = (
    _PLACEHOLDER[field] for field in ("task_id", "slot", "publish_at", "delivery_tag", "body")
)
_SIBLING_HEADERS = {name: _PLACEHOLDER[name] for name in _SIBLING_FIELDS[1:]}
#: Each placeholder as it reads encoded as a JSON string (without the quotes), to its field.
_FIELDS = {dumps(placeholder)[1:-1]: field for field, placeholder in _PLACEHOLDER.items()}
#: Finds the placeholders in encoded text.
_PLACEHOLDERS = re.compile("(" + "|".join(re.escape(text) for text in _FIELDS) + ")")

#: A sibling's values as encoded: its body, then its ``argsrepr``, ``kwargsrepr`` and entry
#: header (``None`` for one that is not text).
Written = tuple[str | None, ...]


@dataclass(frozen=True, slots=True)
class EncodedCommands:
    """The Redis commands of one template variant, each LPUSH text cut at its placeholders
    (see :func:`_cut`)."""

    commands: tuple[tuple[str, tuple[Any, ...]], ...]

    def fill(
        self, task_id: str, slot_header: str, publish_at: str | None, written: Written = ()
    ) -> list[tuple[str, tuple[Any, ...]]]:
        """The commands of one occurrence, with a sibling's ``written`` values (see
        :func:`sibling_values`). The other values are ids and ISO-8601 instants, which JSON
        writes as they are."""
        values = {"task_id": task_id, "slot": slot_header, "delivery_tag": delivery_tag()}
        if publish_at is not None:
            values["publish_at"] = publish_at
        for field, value in zip(_SIBLING_FIELDS, written, strict=False):
            if value is not None:
                values[field] = value
        filled = []
        for name, args in self.commands:
            if name == "lpush":
                cut, last = args[1]
                parts = []
                for text, field in cut:
                    parts.append(text)
                    parts.append(values[field])
                parts.append(last)
                args = (args[0], "".join(parts), *args[2:])
            filled.append((name, args))
        return filled


def _cut(commands: Iterable[tuple[str, tuple[Any, ...]]]) -> EncodedCommands:
    """Commands whose LPUSH texts hold placeholders, as :class:`EncodedCommands`: each text
    as ``((text before, placeholder's field), ...), text after the last``."""
    cut = []
    for name, args in commands:
        if name == "lpush":
            parts = _PLACEHOLDERS.split(args[1])
            pairs = tuple(zip(parts[:-1:2], (_FIELDS[place] for place in parts[1::2]), strict=True))
            args = (args[0], (pairs, parts[-1]), *args[2:])
        cut.append((name, args))
    return EncodedCommands(tuple(cut))


def sibling_values(body: str, headers: Iterable[tuple[str, Any]]) -> Written:
    """A sibling's ``body`` and text headers among ``headers`` (``argsrepr``, ``kwargsrepr``,
    the entry header; the last value given for a name), each as Kombu's JSON writes it, for
    the placeholders of :func:`encode_shape`."""
    texts = dict(headers)
    values = [texts.get(header) for header in _SIBLING_HEADERS]
    return (_encoded(body), *(_encoded(v) if isinstance(v, str) else None for v in values))


def with_values(message: dict[str, Any], written: Written) -> dict[str, Any]:
    """A shape's ``message`` with a sibling's ``written`` values (see :func:`sibling_values`)
    in the places they were written for."""
    body, *values = (None if v is None else json.loads(f'"{v}"') for v in written)
    headers = dict(message["headers"])
    for header, value in zip(_SIBLING_HEADERS, values, strict=True):
        if value is not None:
            headers[header] = value
    return {**message, "body": body, "headers": headers}


def _encoded(text: str) -> str:
    """``text`` inside a JSON string (the same object when JSON writes it as it is; a short
    one interned: many siblings share ``()`` or ``{}``)."""
    if type(text) is not str:
        text = str.__str__(text)  # a str subclass (a StrEnum member): its text, as JSON
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        encoded = text  # JSON escapes nothing else (a base64 body, most reprs and names)
    else:
        encoded = dumps(text)[1:-1]
        encoded = text if encoded == text else encoded
    return sys.intern(encoded) if len(encoded) <= _INTERNED else encoded


#: Encoded values up to this length are interned.
_INTERNED = 16


def encode(
    template: Template, channel: Any, capped: bool, jittered: bool, queues: Sequence[str]
) -> EncodedCommands | None:
    """The commands of ``template`` for occurrences of this variant, or ``None`` when each
    occurrence must be encoded on its own (see the module)."""
    if template.reads_clock:
        return None
    rendered = render(
        template,
        _TASK_ID,
        _SLOT,
        capped,
        _PUBLISH_AT if jittered else None,
        None,
        list(queues),
        delivery_tag=_DELIVERY_TAG,
    )
    return _cut(redis_commands(channel, rendered))


def encode_shape(
    template: Template, channel: Any, capped: bool, jittered: bool, queues: Sequence[str]
) -> EncodedCommands | None:
    """:func:`encode` of a shape's ``template`` with placeholders where its siblings differ:
    the body, and the ``argsrepr``, ``kwargsrepr`` and entry headers that are text (a sibling
    has the same headers, in the same order); ``None`` as for :func:`encode`, or when the body
    is not text."""
    message = template.message
    if not isinstance(message.get("body"), str):
        return None
    headers = dict(message["headers"])
    for header, placeholder in _SIBLING_HEADERS.items():
        if isinstance(headers.get(header), str):
            headers[header] = placeholder
    shaped = replace(template, message={**message, "body": _BODY, "headers": headers})
    return encode(shaped, channel, capped, jittered, queues)
