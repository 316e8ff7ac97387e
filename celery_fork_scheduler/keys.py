"""Names of the Redis keys, in one place (the layout is described in :mod:`.backends.lua`)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

#: The keys of one entry the claim scripts touch, in their KEYS order (see :meth:`Keys.entry_keys`).
_ENTRY_KEY_NAMES = ("state", "pending", "running", "buffered", "history")
#: Longest entry name that is its keys' hash tag as it is (see :func:`entry_tag`).
MAX_TAG_LENGTH = 200
#: The form of the digest tag :func:`entry_tag` gives a name that cannot be a tag: no entry
#: may be named so.
DIGEST_TAG = re.compile(r"#[0-9a-f]{32}")


def entry_tag(entry: str) -> str:
    """The Redis Cluster hash tag of ``entry``'s keys: the name itself, or, for a name that
    cannot be one (a brace in it, or longer than :data:`MAX_TAG_LENGTH`: only static entries
    may have such names, as Celery's ``add_periodic_task`` without ``name=`` makes them), ``#``
    and a digest of it."""
    if len(entry) <= MAX_TAG_LENGTH and "{" not in entry and "}" not in entry:
        return entry
    return "#" + hashlib.blake2b(entry.encode(), digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Keys:
    """The keys under one ``fork_scheduler_key_prefix``.

    Every key of one entry carries the entry name as a Redis Cluster hash tag; the global keys
    have hash tags of their own. The runtime entries' keys carry :attr:`runtime_tag`: one shard
    of them (see :meth:`runtime_shard`).
    """

    prefix: str
    runtime_tag: str = "runtime"

    def runtime_shard(self, number: int) -> Keys:
        """The keys of runtime shard ``number``: shard 0 keeps the ``{runtime}`` tag of an
        unsharded store, shard k > 0 has ``{runtime:k}`` (its own Redis Cluster slot)."""
        return Keys(self.prefix, "runtime" if number == 0 else f"runtime:{number}")

    @property
    def runtime_shards(self) -> str:
        """String: how many shards the runtime entries are stored in, recorded in each shard
        by its first write (absent in an unsharded store written before it was recorded)."""
        return f"{self.prefix}{{{self.runtime_tag}}}:shards"

    def state(self, entry: str) -> str:
        """Hash: high-water mark, claim state, owner, counters and pause state of ``entry``."""
        return f"{self.prefix}{{{entry_tag(entry)}}}:state"

    def pending(self, entry: str) -> str:
        """Hash: claimed, not yet published slots of ``entry``."""
        return f"{self.prefix}{{{entry_tag(entry)}}}:pending"

    def running(self, entry: str) -> str:
        """String with a lease: the task id of the singleton run of ``entry`` in progress."""
        return f"{self.prefix}{{{entry_tag(entry)}}}:running"

    def buffered(self, entry: str) -> str:
        """String: the message of the one run of ``entry`` held back (``buffer_one``)."""
        return f"{self.prefix}{{{entry_tag(entry)}}}:buffered"

    def history(self, entry: str) -> str:
        """Capped list: the latest runs of ``entry``, newest first (JSON)."""
        return f"{self.prefix}{{{entry_tag(entry)}}}:history"

    def backfill(self, entry: str) -> str:
        """Hash: the slots of ``entry`` claimed by a backfill, and how each ended."""
        return f"{self.prefix}{{{entry_tag(entry)}}}:backfill"

    def entry_keys(self, entry: str) -> list[str]:
        """The keys the claim scripts of ``entry`` touch, in their KEYS order."""
        base = f"{self.prefix}{{{entry_tag(entry)}}}:"
        return [base + name for name in _ENTRY_KEY_NAMES]

    def retained_keys(self, entry: str) -> list[str]:
        """The keys of a removed runtime ``entry`` kept for the removal's retention (state,
        pending claims, history). Not the running marker: its lease is its run's, and a
        retention (or a re-add's ``PERSIST``) would outlive the run and block the name."""
        return [self.state(entry), self.pending(entry), self.history(entry)]

    @property
    def cap(self) -> str:
        """Zset: task ids of scheduled runs executing now, scored by lease end."""
        return f"{self.prefix}{{cap}}:running"

    @property
    def runtime_entries(self) -> str:
        """Hash: name -> JSON of each runtime entry."""
        return f"{self.prefix}{{{self.runtime_tag}}}:entries"

    @property
    def runtime_changes(self) -> str:
        """Zset: name -> version of its latest change (deletions included)."""
        return f"{self.prefix}{{{self.runtime_tag}}}:changes"

    @property
    def runtime_version(self) -> str:
        """String: the version counter of runtime entries."""
        return f"{self.prefix}{{{self.runtime_tag}}}:version"

    @property
    def runtime_since(self) -> str:
        """Hash: name -> instant (us) each runtime entry's promised next run was computed from."""
        return f"{self.prefix}{{{self.runtime_tag}}}:since"

    @property
    def runtime_removed(self) -> str:
        """Zset: name -> Redis TIME (ms) of its removal, until trimmed from the change log."""
        return f"{self.prefix}{{{self.runtime_tag}}}:removed"

    @property
    def runtime_epoch(self) -> str:
        """String: set by the first write after the runtime keys were created (or lost): a
        replica that sees it change knows Redis lost its runtime entries, and reads them all."""
        return f"{self.prefix}{{{self.runtime_tag}}}:epoch"

    @property
    def runtime_floor(self) -> str:
        """String: the highest version of a removal trimmed from the change log."""
        return f"{self.prefix}{{{self.runtime_tag}}}:floor"

    @property
    def replicas(self) -> str:
        """Hash: replica id -> JSON of its last tick."""
        return f"{self.prefix}{{replicas}}"

    @property
    def progress(self) -> str:
        """Hash: replica id -> JSON of its progress record (see :mod:`.ownership`)."""
        return f"{self.prefix}{{replicas}}:progress"

    @property
    def outages(self) -> str:
        """Capped list: the latest outage summaries of every replica, newest first (JSON)."""
        return f"{self.prefix}{{outages}}"

    @property
    def workers_seen(self) -> str:
        """String with a TTL, set by workers that release singleton markers."""
        return f"{self.prefix}{{workers}}:seen"
