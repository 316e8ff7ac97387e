"""Deterministic identifiers: the task id and header values of one occurrence (entry, slot)."""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import uuid
from datetime import datetime, timezone

#: Namespace of every task id this package makes; fixed forever, so ids stay stable across versions.
TASK_ID_NAMESPACE = uuid.UUID("6f1c2a4e-4b7d-5c1e-9a52-3d0f5b8e7c21")

#: Message header carrying the entry name.
ENTRY_HEADER = "fork_scheduler_entry"
#: Message header carrying the nominal fire time (ISO-8601, UTC).
SLOT_HEADER = "fork_scheduler_slot"
#: Message header of jittered runs: the instant the slot was due to be published (the slot
#: plus its jitter offset; ISO-8601, UTC).
PUBLISH_AT_HEADER = "fork_scheduler_publish_at"
#: Message header of singleton runs: the entry's overlap policy ("skip" or "buffer_one").
OVERLAP_HEADER = "fork_scheduler_overlap"
#: Message header of runs holding a place under ``fork_scheduler_max_concurrent``.
CAPPED_HEADER = "fork_scheduler_capped"
#: Message header of runs whose entry is paused when the run fails for good.
PAUSE_ON_FAILURE_HEADER = "fork_scheduler_pause_on_failure"


def slot_isoformat(slot: datetime) -> str:
    """Return the canonical ISO-8601 UTC form of a slot, e.g. ``2026-11-27T14:00:00+00:00``."""
    if slot.tzinfo is timezone.utc:
        return _utc_isoformat(slot)
    # Not cached: two wall times that differ only in ``fold`` compare (and hash) equal.
    return slot.astimezone(timezone.utc).isoformat()


@functools.lru_cache(maxsize=1024)
def _utc_isoformat(slot: datetime) -> str:
    """The ISO-8601 form of a UTC slot, shared by the entries of a burst."""
    return slot.isoformat()


def task_id_for(entry: str, slot: datetime) -> str:
    """Return the task id of occurrence ``slot`` of ``entry``: the same on every replica."""
    return _uuid5_text(f"{entry}@{slot_isoformat(slot)}")


def manual_task_id(entry: str, moment: datetime) -> str:
    """Return a new task id for a run of ``entry`` triggered by hand at ``moment``: never a
    scheduled occurrence's, even at a slot's very microsecond, nor another trigger's at the
    same instant (a singleton's marker, backfill and the worker tell runs apart by their ids)."""
    return _uuid5_text(f"{entry}@{slot_isoformat(moment)}#manual#{secrets.token_hex(8)}")


_NAMESPACE_BYTES = TASK_ID_NAMESPACE.bytes


def _uuid5_text(name: str) -> str:
    """``str(uuid.uuid5(TASK_ID_NAMESPACE, name))`` without building a UUID object (a burst
    makes one per occurrence)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


#: Random tags made per read of the operating system's random source.
TAGS_PER_READ = 256
_tags: list[str] = []


def delivery_tag() -> str:
    """A random version-4 UUID text, as Kombu makes each message's delivery tag: the same
    source as ``uuid.uuid4()``, read :data:`TAGS_PER_READ` tags at a time (a burst needs one
    per occurrence). A forked child never reuses its parent's unread tags."""
    if not _tags:
        raw = os.urandom(16 * TAGS_PER_READ)
        _tags.extend(_uuid4_text(raw[i : i + 16]) for i in range(0, len(raw), 16))
    return _tags.pop()


def _uuid4_text(random_bytes: bytes) -> str:
    digest = bytearray(random_bytes)
    digest[6] = (digest[6] & 0x0F) | 0x40  # version 4
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


os.register_at_fork(after_in_child=_tags.clear)
