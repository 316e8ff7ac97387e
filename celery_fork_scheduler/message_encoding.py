"""A template's Redis commands encoded once; per occurrence only the changing strings replaced.

Kombu's Redis transport encodes each message as JSON (``LPUSH queue <json>``). An occurrence
of a template differs from the next only in a few strings — the task id, the slot header, the
publish instant of a jittered run and Kombu's delivery tag — so the commands are made once per
template and variant (capped or not, jittered or not, its queues) by Kombu's own ``_put``,
with placeholder strings in those places, and each occurrence replaces the placeholders in the
encoded text. The result is the text Kombu would encode for the occurrence, byte for byte.

Templates whose messages carry a time read from the app's clock (``expires`` / ``countdown``
in seconds) are encoded per occurrence.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from kombu.utils import json as kombu_json

from .ids import delivery_tag
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
#: How each placeholder reads once encoded as a JSON string (without the quotes).
_ENCODED = {name: dumps(name)[1:-1] for name in (_TASK_ID, _SLOT, _PUBLISH_AT, _DELIVERY_TAG)}


@dataclass(frozen=True, slots=True)
class EncodedCommands:
    """The Redis commands of one template variant, placeholders in their encoded text."""

    commands: tuple[tuple[str, tuple[Any, ...]], ...]

    def fill(
        self, task_id: str, slot_header: str, publish_at: str | None
    ) -> list[tuple[str, tuple[Any, ...]]]:
        """The commands of one occurrence. The values are ids and ISO-8601 instants, which
        JSON writes as they are."""
        tag = delivery_tag()
        filled = []
        for name, (key, *rest) in self.commands:
            if name == "lpush":
                text = rest[0].replace(_ENCODED[_TASK_ID], task_id)
                text = text.replace(_ENCODED[_SLOT], slot_header)
                if publish_at is not None:
                    text = text.replace(_ENCODED[_PUBLISH_AT], publish_at)
                rest = [text.replace(_ENCODED[_DELIVERY_TAG], tag)]
            filled.append((name, (key, *rest)))
        return filled


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
