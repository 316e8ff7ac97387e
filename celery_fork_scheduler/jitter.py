"""Deterministic jitter: the offset after its slot at which an occurrence is published.

The offset of slot ``S`` of entry ``E`` is a pure function of ``(E, S, jitter)``: a BLAKE2b
hash of the entry name and the slot's canonical ISO form, mapped onto ``[0, jitter)`` with
microsecond resolution. Every replica computes the same offset, before and after a restart,
on any Python (no ``hash()`` randomisation).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from .ids import slot_isoformat

_NO_OFFSET = timedelta(0)


def jitter_offset(entry: str, slot: datetime, jitter: timedelta) -> timedelta:
    """The offset of ``slot`` of ``entry``, uniform over ``[0, jitter)`` (whole microseconds)."""
    span = jitter // timedelta(microseconds=1)
    if span <= 0:
        return _NO_OFFSET
    digest = hashlib.blake2b(
        f"{entry}@{slot_isoformat(slot)}".encode(), digest_size=8, person=b"fork-jitter"
    ).digest()
    # 64 bits onto span < 2**63: the modulo bias is below span / 2**64, far under a microsecond.
    return timedelta(microseconds=int.from_bytes(digest, "big") % span)
