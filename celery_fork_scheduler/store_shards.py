"""Runtime entries spread over several hash tags, so that Redis Cluster spreads them too.

With ``fork_scheduler_runtime_shards`` = N > 1, each runtime entry lives in shard
``crc32(name) % N``: a complete :class:`.store.RuntimeStore` of its own (entries, change log,
version, epoch, floor, tag index) under the hash tag ``{runtime:k}`` (shard 0 keeps
``{runtime}``). On Redis Cluster the shards land on different masters, and with them the
definitions' memory and the writes. Every guarantee of the store holds per shard: a replica
follows each shard's change log on its own (:mod:`.runtime`), and a bulk write is all or none
within each shard; across shards, the first shard that refuses stops the rest
(:class:`.store.BulkConflictError` names what earlier shards wrote).

The number of shards is recorded in each shard (:attr:`.keys.Keys.runtime_shards`) by its
first write and by a starting beat, one with one shard included. Every write checks it in its
own script (see ``store._SHARDS``), so a writer configured with another number is refused
however long ago it looked; a Manager, CLI call or beat is also refused at its first use,
before it reads an entry. An entry written to the wrong shard would be stored twice.
"""

from __future__ import annotations

import contextlib
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import redis

from .keys import Keys
from .store import (
    DELETED_RETENTION,
    BulkConflictError,
    BulkItem,
    PauseState,
    RuntimeStore,
    StoredEntry,
    check_shard_count,
)

_T = TypeVar("_T")


def _first(item: tuple[Any, ...]) -> str:
    """The name of a bulk item (its first field)."""
    name: str = item[0]
    return name


def shard_number(name: str, count: int) -> int:
    """The shard of the runtime entry ``name`` among ``count`` shards."""
    return zlib.crc32(name.encode("utf-8", "surrogatepass")) % count


def runtime_store(
    client: Any, keys: Keys, shards: int = 1, *, retention: timedelta = DELETED_RETENTION
) -> RuntimeStore | ShardedStore:
    """The store of the runtime entries: one :class:`.store.RuntimeStore` for one shard (the
    layout of every earlier version), else a :class:`ShardedStore`."""
    if shards == 1:
        return RuntimeStore(client, keys, retention=retention)
    return ShardedStore(client, keys, shards, retention=retention)


class ShardedStore:
    """The runtime store's API over :attr:`shards` (see the module): each call goes to the
    shards of the names it takes, and the answers are put back in the caller's order."""

    def __init__(
        self, client: Any, keys: Keys, count: int, *, retention: timedelta = DELETED_RETENTION
    ) -> None:
        self.client = client
        self.keys = keys
        self.shards = [
            RuntimeStore(client, keys.runtime_shard(number), retention=retention, shard_count=count)
            for number in range(count)
        ]
        self.one_node = self.shards[0].one_node
        self._recorded = False

    def check_layout(self, *, record: bool = True) -> None:
        """:func:`.store.check_shard_count` for this store's number of shards (with
        ``record``, recorded where nothing is recorded yet; every write checks and records
        it too)."""
        check_shard_count(self.client, self.keys, len(self.shards), record=record)
        self._recorded = self._recorded or record

    def _record(self) -> None:
        """Before the first write: record the number of shards in shard 0 (which a writer
        of another layout writes to, and then is refused), and refuse another layout."""
        if not self._recorded:
            self.check_layout()

    def shard(self, name: str) -> RuntimeStore:
        """The shard that stores ``name``."""
        return self.shards[shard_number(name, len(self.shards))]

    def _grouped(self, items: Iterable[_T], name: Callable[[_T], str]) -> dict[int, list[_T]]:
        """``items`` by the number of the shard of each one's ``name``, in their order."""
        groups: dict[int, list[_T]] = defaultdict(list)
        for item in items:
            groups[shard_number(name(item), len(self.shards))].append(item)
        return groups

    # -- reads ----------------------------------------------------------------------------

    def version(self) -> int:
        """The sum of the shards' versions: it changes whenever any runtime entry does."""
        return sum(shard.version() for shard in self.shards)

    def names(self) -> list[str]:
        """The name of every runtime entry."""
        return [name for shard in self.shards for name in shard.names()]

    def get(self, name: str) -> StoredEntry | None:
        """One runtime entry, or ``None``."""
        return self.shard(name).get(name)

    def all(self) -> tuple[int, dict[str, StoredEntry | bytes]]:
        """The summed version and every runtime entry of every shard."""
        version, entries = 0, {}
        for shard in self.shards:
            shard_version, stored = shard.all()
            version += shard_version
            entries.update(stored)
        return version, entries

    def versions(self, names: Sequence[str]) -> dict[str, int | None]:
        """The version of each name's runtime entry (in its shard), ``None`` for no entry."""
        found: dict[str, int | None] = {}
        for number, group in self._grouped(names, str).items():
            found.update(self.shards[number].versions(group))
        return {name: found[name] for name in names}

    @contextlib.contextmanager
    def versions_ahead(self, names: Sequence[str]) -> Iterator[Callable[[], dict[str, int | None]]]:
        """:meth:`versions`, asked when the function given is called: one shard after
        another, one connection at a time (a pool of one connection is enough)."""
        yield lambda: self.versions(names)

    def get_many(self, names: Sequence[str]) -> dict[str, StoredEntry | bytes]:
        """The runtime entries of ``names`` that exist (each shard read at one instant)."""
        found: dict[str, StoredEntry | bytes] = {}
        for number, group in self._grouped(names, str).items():
            found.update(self.shards[number].get_many(group))
        return found

    def names_with_tag(self, tag: str) -> list[str]:
        """The names of the runtime entries tagged ``tag``, from each shard's tag index."""
        return [name for shard in self.shards for name in shard.names_with_tag(tag)]

    # -- writes ---------------------------------------------------------------------------

    def put(
        self,
        name: str,
        data: Any,
        expected_version: int | None = None,
        *,
        since: datetime | None = None,
    ) -> int:
        """:meth:`.store.RuntimeStore.put` in the shard of ``name``."""
        self._record()
        return self.shard(name).put(name, data, expected_version, since=since)

    def delete(
        self, name: str, expected_version: int | None = None, *, removed_at: datetime | None = None
    ) -> bool:
        """:meth:`.store.RuntimeStore.delete` in the shard of ``name``."""
        self._record()
        return self.shard(name).delete(name, expected_version, removed_at=removed_at)

    def put_many(self, items: Sequence[BulkItem], *, since: datetime | None = None) -> list[int]:
        """:meth:`.store.RuntimeStore.put_many` per shard (all or none within each shard; a
        refusal stops the shards after it, and names what the ones before wrote)."""
        return self.put_batches([(items, since)])

    def put_batches(
        self, batches: Iterable[tuple[Sequence[BulkItem], datetime | None]]
    ) -> list[int]:
        """:meth:`.store.RuntimeStore.put_batches`: each batch split by shard, in order."""
        self._record()
        versions: list[int] = []
        written: list[str] = []
        for items, since in batches:
            found: dict[str, int] = {}
            for number, group in self._grouped(items, _first).items():
                try:
                    shard_versions = self.shards[number].put_many(group, since=since)
                except BulkConflictError as exc:
                    raise exc.after(written) from None
                found.update(zip((item[0] for item in group), shard_versions, strict=True))
                written += [item[0] for item in group]
            versions += [found[item[0]] for item in items]
        return versions

    def delete_many(
        self, items: Sequence[tuple[str, int | None]], *, removed_at: datetime | None = None
    ) -> list[int | None]:
        """:meth:`.store.RuntimeStore.delete_many` per shard (all or none within each shard;
        a refusal stops the shards after it)."""
        self._record()
        found: dict[str, int | None] = {}
        done: list[str] = []
        for number, group in self._grouped(items, _first).items():
            try:
                removed = self.shards[number].delete_many(group, removed_at=removed_at)
            except BulkConflictError as exc:
                raise exc.after(done) from None
            found.update(zip((name for name, _ in group), removed, strict=True))
            done += [name for (name, _), version in zip(group, removed, strict=True) if version]
        return [found[name] for name, _ in items]

    # -- per-entry controls (each entry's own keys: the same for every shard) -----------------

    def pause(self, names: Sequence[str], note: str = "", *, at: datetime | None = None) -> None:
        """:meth:`.store.RuntimeStore.pause`."""
        self.shards[0].pause(names, note, at=at)

    def resume(self, names: Sequence[str]) -> None:
        """:meth:`.store.RuntimeStore.resume`."""
        self.shards[0].resume(names)

    def states(self, names: Sequence[str]) -> dict[str, dict[str, str]]:
        """:meth:`.store.RuntimeStore.states`."""
        return self.shards[0].states(names)

    def read_states(
        self, names: Sequence[str]
    ) -> tuple[dict[str, dict[str, str]], dict[str, redis.ResponseError]]:
        """:meth:`.store.RuntimeStore.read_states`."""
        return self.shards[0].read_states(names)

    def pause_states(self, names: Sequence[str]) -> dict[str, PauseState]:
        """:meth:`.store.RuntimeStore.pause_states`."""
        return self.shards[0].pause_states(names)


__all__ = [
    "ShardedStore",
    "runtime_store",
    "shard_number",
]
