"""Replicas divide the entries instead of racing for them.

The live replicas (those whose progress record in Redis is fresher than :data:`OWNER_LEASE`)
own the entries by rendezvous hashing: each entry belongs to the replica with the highest
``crc32(replica id, entry name)``. A replica claims its own entries' slots at once and asks about
another's only ``fork_scheduler_owner_grace`` after the slot, and only when the owner has not
said it handled the slot. The claim script stays the only judge of who publishes: ownership
decides who asks first, so exactly-once never depends on it.

The owner says so through its **progress record**: "every slot after S and up to P of the
entries I own under view V has been asked about", where S is when the owner took view V (a
replica that just started, or just took over entries, asked about none of their earlier slots)
and V fingerprints what decides the slots and their owner
(the live replica set, the runtime entries version, the static entries). Another replica trusts
the record only under the very same view; during a membership change, a rolling deploy of a new
``beat_schedule`` or before a runtime change reached everyone, views differ and every replica
asks, as without ownership. A dead or slow owner costs a grace, never a slot.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis

from .backends.base import from_epoch_us, to_epoch_us

logger = logging.getLogger("celery_fork_scheduler")

#: A replica whose progress record is older than this is not live: its entries are re-divided.
OWNER_LEASE = timedelta(seconds=5)
#: The record of a replica gone this long is removed.
RECORD_RETENTION = timedelta(minutes=10)
#: Progress records are written at most this often (and at least every tick otherwise).
WRITE_INTERVAL = 0.2
#: Other replicas' records are read at most this often.
READ_INTERVAL = 0.2
#: Errors that mean "Redis cannot be asked right now": every replica then asks as before.
REDIS_ERRORS = (redis.RedisError, OSError)


@dataclass(frozen=True, slots=True)
class Progress:
    """One replica's record: its owned slots after ``since`` and up to ``until`` are handled
    under view ``view`` (taken at ``since``); ``config``: the digest of its ``beat_schedule``
    (``None`` in an older replica's record)."""

    until: datetime
    written: datetime
    view: int
    since: datetime
    config: int | None = None

    def covers(self, slot: datetime) -> bool:
        """Whether the record says ``slot`` (of an entry its replica owns) was asked about."""
        return self.since < slot <= self.until

    def encode(self) -> str:
        return json.dumps(
            {
                "until": to_epoch_us(self.until),
                "at": to_epoch_us(self.written),
                "view": self.view,
                "since": to_epoch_us(self.since),
                "config": self.config,
            }
        )

    @classmethod
    def decode(cls, raw: bytes | str) -> Progress | None:
        try:
            data = json.loads(raw)
            until, written = from_epoch_us(int(data["until"])), from_epoch_us(int(data["at"]))
            # A record without "since" (an older replica's) covers nothing: its slots are asked.
            since = from_epoch_us(int(data["since"])) if "since" in data else until
            config = data.get("config")
            config = None if config is None else int(config)
            return cls(until, written, int(data["view"]), since, config)
        except (ValueError, TypeError, KeyError, OverflowError, RecursionError):
            return None  # a record this code did not write


def owner_of(name: str, replicas: Iterable[str]) -> str:
    """The replica owning entry ``name`` among ``replicas`` (rendezvous hashing: the highest
    hash of the pair wins, so a replica that leaves moves only its own entries)."""
    encoded = name.encode()

    def weight(rid: str) -> tuple[bytes, str]:
        return hashlib.blake2b(encoded, digest_size=8, key=rid.encode()[:64]).digest(), rid

    return max(replicas, key=weight)


class Ownership:
    """One replica's view of who owns which entries, and its own progress record."""

    def __init__(
        self,
        client: Any,
        key: str,
        replica_id: str,
        grace: timedelta,
        monotonic: Callable[[], float],
    ) -> None:
        self.client = client
        self.key = key
        self.replica_id = replica_id
        self.grace = grace
        self.monotonic = monotonic
        self.live: tuple[str, ...] = (replica_id,)
        #: The owner of each entry asked about under the live set ``_owners_of``.
        self._owners: dict[str, str] = {}
        self._owners_of: tuple[str, ...] = ()
        #: What, besides the live set, decides the slots: runtime version, static entries.
        self.basis = 0
        self.view = self._fingerprint()
        self.records: dict[str, Progress] = {}
        #: The digest of this replica's ``beat_schedule`` (see :meth:`shares_config`).
        self.config = 0
        self._next_read = 0.0
        self._next_write = 0.0
        #: When this replica took its current view (its record covers only later slots).
        self._view_since: datetime | None = None

    def forget_entry(self, name: str) -> None:
        """Drop what is kept about entry ``name`` (removed): its owner, once hashed."""
        self._owners.pop(name, None)

    def other_owner(self, name: str) -> str | None:
        """The replica that owns entry ``name``, when it is not this one (``None`` when this
        replica owns it; always when it is alone)."""
        live = self.live
        if len(live) == 1:
            return None
        if self._owners_of != live:  # another live set: owners hashed again, once per entry
            self._owners_of, self._owners = live, {}
        owner = self._owners.get(name)
        if owner is None:
            owner = self._owners[name] = owner_of(name, live)
        return None if owner == self.replica_id else owner

    def shares_config(self, owner: str) -> bool:
        """Whether ``owner`` runs this replica's ``beat_schedule`` (as far as its record says):
        otherwise, during a rolling deploy of a changed schedule, the entry's slots are asked
        about at once, not left to an owner that may define the entry otherwise. A record
        without a digest (written by an earlier version, during a rolling upgrade) may run
        another schedule too."""
        record = self.records.get(owner)
        return record is None or record.config == self.config

    def handled_by(self, owner: str, slots: Iterable[datetime], now: datetime) -> bool:
        """True when ``owner`` said, under this replica's view, that it asked about every one
        of ``slots`` (so this replica need not)."""
        record = self.records.get(owner)
        if record is None or record.view != self.view or now - record.written > OWNER_LEASE:
            return False
        return all(record.covers(slot) for slot in slots)

    def keeps_up(self, owner: str, now: datetime, slot: datetime | None = None) -> datetime | None:
        """The ``until`` of ``owner``'s record when this replica trusts it (the same view, a
        live owner) and it is no further behind ``now`` than the grace: the owner's entries
        may stay parked (see :mod:`.parking`); with ``slot``, only when the owner held this
        view before that slot (it asks about the slot). ``None`` otherwise."""
        record = self.records.get(owner)
        if record is None or record.view != self.view or owner not in self.live:
            return None
        if slot is not None and slot <= record.since:
            return None
        return record.until if now - record.until <= self.grace else None

    def follow(self, now: datetime, basis: int, *, force: bool = False) -> bool:
        """Read the replicas' records (at most every :data:`READ_INTERVAL`, unless ``force``);
        return True when this replica's view changed (the live set or the ``basis`` of the
        slots)."""
        if not force and self.monotonic() < self._next_read and basis == self.basis:
            return False
        self._next_read = self.monotonic() + READ_INTERVAL
        try:
            raw = self.client.hgetall(self.key)
        except REDIS_ERRORS:
            raw = None
        if raw is not None:
            records = {_text(rid): Progress.decode(value) for rid, value in raw.items()}
            self.records = {rid: r for rid, r in records.items() if rid and r is not None}
            self._prune(now)
        live = {rid for rid, r in self.records.items() if now - r.written <= OWNER_LEASE}
        live.add(self.replica_id)
        before = self.view
        self.live, self.basis = tuple(sorted(live)), basis
        self.view = self._fingerprint()
        if self.view != before or self._view_since is None:
            self._view_since = now
        return self.view != before

    def report(self, until: datetime, now: datetime) -> None:
        """Write this replica's progress record (at most every :data:`WRITE_INTERVAL`)."""
        if self.monotonic() < self._next_write:
            return
        self._next_write = self.monotonic() + WRITE_INTERVAL
        record = Progress(until, now, self.view, self._view_since or now, self.config)
        try:
            self.client.hset(self.key, self.replica_id, record.encode())
        except REDIS_ERRORS:
            logger.debug("fork scheduler: progress record not written", exc_info=True)

    def forget(self) -> None:
        """Remove this replica's record (a clean stop: its entries are re-divided at once)."""
        try:
            self.client.hdel(self.key, self.replica_id)
        except REDIS_ERRORS:
            logger.debug("fork scheduler: progress record not removed", exc_info=True)

    def _prune(self, now: datetime) -> None:
        """Remove the records of replicas gone for :data:`RECORD_RETENTION` (each restart is a
        new replica id)."""
        gone = [rid for rid, r in self.records.items() if now - r.written > RECORD_RETENTION]
        if gone:
            try:
                self.client.hdel(self.key, *gone)
            except REDIS_ERRORS:
                return
            for rid in gone:
                del self.records[rid]

    def _fingerprint(self) -> int:
        text = f"{self.basis}|{'|'.join(self.live)}".encode()
        return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def _text(value: bytes | str) -> str:
    """A replica id as written; "" for one this code did not write (not UTF-8)."""
    try:
        return value.decode() if isinstance(value, bytes) else value
    except UnicodeDecodeError:
        return ""
