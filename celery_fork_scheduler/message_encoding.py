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
written in (:meth:`EncodedCommands.for_sibling`), instead of Kombu encoding each new entry's
whole message.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

from kombu.utils import json as kombu_json

from .ids import ENTRY_HEADER, delivery_tag
from .message_template import Template, redis_commands, render


def dumps(value: Any) -> str:
    """Kombu's JSON, as its Redis transport writes messages."""
    return cast(str, kombu_json.dumps(value))  # type: ignore[no-untyped-call]


#: Placeholders: control characters around a random number drawn once per process, so that
#: no message data can hold one.
_NONCE = secrets.token_hex(16)
_TASK_ID, _SLOT, _PUBLISH_AT, _DELIVERY_TAG = (
    f"\x00{_NONCE}:{name}\x00" for name in ("task-id", "slot", "publish-at", "delivery-tag")
)
#: The places a sibling's message differs in: its body, then its headers.
_BODY = f"\x00{_NONCE}:body\x00"
_SIBLING_HEADERS = {
    name: f"\x00{_NONCE}:{name}\x00" for name in ("argsrepr", "kwargsrepr", ENTRY_HEADER)
}
#: How each placeholder reads once encoded as a JSON string (without the quotes).
_ENCODED = {
    name: dumps(name)[1:-1]
    for name in (_TASK_ID, _SLOT, _PUBLISH_AT, _DELIVERY_TAG, _BODY, *_SIBLING_HEADERS.values())
}


@dataclass(frozen=True, slots=True)
class EncodedCommands:
    """The Redis commands of one template variant, placeholders in their encoded text."""

    commands: tuple[tuple[str, tuple[Any, ...]], ...]

    def fill(
        self, task_id: str, slot_header: str, publish_at: str | None
    ) -> list[tuple[str, tuple[Any, ...]]]:
        """The commands of one occurrence. The values are ids and ISO-8601 instants, which
        JSON writes as they are."""
        values = [(_ENCODED[_TASK_ID], task_id), (_ENCODED[_SLOT], slot_header)]
        if publish_at is not None:
            values.append((_ENCODED[_PUBLISH_AT], publish_at))
        values.append((_ENCODED[_DELIVERY_TAG], delivery_tag()))
        return self._written(values)

    def for_sibling(self, message: dict[str, Any]) -> EncodedCommands:
        """These commands, of a shape (see :func:`encode_shape`), for a sibling's ``message``:
        its body, reprs and entry header written in, each encoded as Kombu's JSON encodes it."""
        headers = message["headers"]
        values = [(_ENCODED[_BODY], dumps(message["body"])[1:-1])]
        for header, placeholder in _SIBLING_HEADERS.items():
            if isinstance(headers.get(header), str):
                values.append((_ENCODED[placeholder], dumps(headers[header])[1:-1]))
        return EncodedCommands(tuple(self._written(values)))

    def _written(self, values: list[tuple[str, str]]) -> list[tuple[str, tuple[Any, ...]]]:
        """The commands with each ``(placeholder, value)`` written into their messages."""
        written = []
        for name, (key, *rest) in self.commands:
            if name == "lpush":
                text = rest[0]
                for placeholder, value in values:
                    text = text.replace(placeholder, value)
                rest = [text]
            written.append((name, (key, *rest)))
        return written

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
    return EncodedCommands(tuple(redis_commands(channel, rendered)))


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
