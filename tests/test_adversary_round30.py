"""Adversary round 30: runtime entries spread over shards (``fork_scheduler_runtime_shards``).

Each test's docstring names the promise (docs/guarantees.md, docs/settings.md
``fork_scheduler_runtime_shards``, docs/manager.md) it breaks and how. Tests named
``test_probe_...`` are things that were checked and held.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner, Result
from replica_helpers import START, fired, make_app, make_scheduler, run_for, tick_for

from celery_fork_scheduler import ConfigError, Manager
from celery_fork_scheduler.cli import schedule
from celery_fork_scheduler.config import read_settings
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.manager import BulkConflictError
from celery_fork_scheduler.store import StaleVersionError
from celery_fork_scheduler.store_shards import shard_number
from celery_fork_scheduler.testing import FakeClock, RecordingPublisher
from celery_fork_scheduler.testing.redis_topologies import RedisClusterNodes

KEYS = Keys("scheduler:")
SHARDS = 4


def definitions(count: int, prefix: str = "tenant", **extra: Any) -> list[dict[str, Any]]:
    return [
        {"name": f"{prefix}-{i}", "task": "tasks.report", "schedule": 1.0, **extra}
        for i in range(count)
    ]


def manager(
    redis_url: str, shards: int = SHARDS, clock: FakeClock | None = None, **conf: Any
) -> Manager:
    return Manager(make_app(redis_url, fork_scheduler_runtime_shards=shards, **conf), clock=clock)


def holders(client: Any, name: str, most: int = 16) -> list[int]:
    """The shards (of any layout up to ``most`` shards) whose entries hash holds ``name``."""
    return [
        number
        for number in range(most)
        if client.hexists(KEYS.runtime_shard(number).runtime_entries, name)
    ]


def name_in_shard(shard: int, count: int = SHARDS, prefix: str = "pick") -> str:
    """A name stored in shard ``shard`` of ``count``."""
    return next(
        f"{prefix}-{i}" for i in range(10_000) if shard_number(f"{prefix}-{i}", count) == shard
    )


def lose_shard(client: redis.Redis, number: int) -> list[bytes]:
    """Delete every key of runtime shard ``number`` (what a master losing its data does to the
    shard's slot): for shard 0 that includes ``{runtime}:shards``."""
    tag = "runtime" if number == 0 else f"runtime:{number}"
    keys = list(client.scan_iter(match=f"scheduler:{{{tag}}}:*"))
    if keys:
        client.delete(*keys)
    return keys


def cli(app: Celery, *args: str) -> Result:
    obj = CLIContext(app=app, no_color=True, workdir=None)
    return CliRunner().invoke(schedule, list(args), obj=obj)


def dump(client: redis.Redis) -> dict[bytes, Any]:
    """Every key with its value (to check that a refused call changed nothing)."""
    found: dict[bytes, Any] = {}
    for key in client.scan_iter():
        kind = client.type(key)
        if kind == b"hash":
            found[key] = client.hgetall(key)
        elif kind == b"zset":
            found[key] = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"string":
            found[key] = client.get(key)
        elif kind == b"list":
            found[key] = client.lrange(key, 0, -1)
        else:
            found[key] = kind
    return found


# -- the layout check ---------------------------------------------------------------------


def test_a_long_lived_unsharded_manager_writes_into_a_store_another_manager_sharded(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Found failing by round 30, fixed.

    Promise: a Manager with another number of shards is refused before it writes an entry,
    and an entry never ends up stored in two shards (docs/settings.md; store.py SHARD_LAYOUT:
    "a writer of the other layout cannot slip in between").

    How: a web process's Manager (default, 1 shard) does a first read on an empty Redis (the
    layout is checked once and nothing is recorded). Then a Manager with 4 shards adds ``x``
    (recording 4; ``x`` goes to shard 3). The first Manager, never asked again, adds ``x``:
    an unsharded write goes straight to ``{runtime}`` (shard 0 of the 4-shard layout), which
    checks nothing. ``x`` is now stored in shards 0 and 3.
    """
    web = manager(redis_url, 1)
    assert web.jobs() == []  # the layout is checked here: nothing stored, nothing recorded
    name = name_in_shard(3)
    manager(redis_url, SHARDS).add(name, "tasks.report", 60.0)
    assert redis_client.get(KEYS.runtime_shards) == b"4"
    refused = False
    try:
        web.add(name, "tasks.report", 30.0)
    except ConfigError:
        refused = True
    assert refused and holders(redis_client, name) == [3], (
        f"refused={refused}; {name!r} stored in shards {holders(redis_client, name)}"
    )


def test_a_one_shard_beat_started_on_an_empty_redis_never_sees_entries_of_other_shards(
    redis_url: str,
) -> None:
    """Found failing by round 30, fixed.

    Promise: a beat with another number of shards is refused with a ConfigError naming the
    setting; every runtime add is seen by every replica at its next refresh.

    How: a beat left at the default (1 shard) starts on an empty Redis: the layout is checked
    once (nothing stored, nothing recorded) and never again. A Manager with 4 shards then adds
    20 entries (recording 4). The beat follows ``{runtime}`` (shard 0) only: it runs the few
    entries that hash to shard 0 and silently never sees the others, with no error.
    """
    clock = FakeClock(START)
    beat = make_scheduler(redis_url, clock)
    try:
        beat.setup_schedule()
        run_for(beat, clock, 1)
        refused = False
        try:  # fixed: the beat recorded its one shard; the Manager's first write is refused
            manager(redis_url).add_many(definitions(20))
            run_for(beat, clock, 3)
        except ConfigError:
            refused = True
        seen = {name for name in beat.entries if name.startswith("tenant-")}
        missing = {f"tenant-{i}" for i in range(20)} - seen
        assert refused or not missing, f"neither refused nor following: {len(missing)} unseen"
    finally:
        beat.close()


def test_after_shard_0_lost_its_keys_a_one_shard_manager_stores_an_entry_a_second_time(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Found failing by round 30, fixed.

    Promise: "a replica whose Redis lost keys of ONE shard" keeps working; a Manager with
    another number of shards is refused, and an entry never ends up stored in two shards.

    How: 40 entries in 4 shards. The master holding the ``{runtime}`` slot loses its data
    (shard 0's keys, and with them ``{runtime}:shards``, the only record of the layout). A
    Manager left at the default (1 shard) now finds nothing recorded and no unsharded version
    key, so it is let in: it adds ``tenant-1`` (still stored in shard 1..3) to ``{runtime}``.
    The entry is now stored twice. check_shard_count looks only at keys of shard 0's slot.
    """
    manager(redis_url).add_many(definitions(40))
    name = next(d["name"] for d in definitions(40) if shard_number(d["name"], SHARDS) != 0)
    assert lose_shard(redis_client, 0)
    refused = False
    try:
        manager(redis_url, 1).add(name, "tasks.report", 5.0)
    except ConfigError:
        refused = True
    assert refused and len(holders(redis_client, name)) == 1, (
        f"refused={refused}; {name!r} stored in shards {holders(redis_client, name)}"
    )


def test_after_shard_0_lost_its_keys_a_two_shard_manager_records_two_and_locks_out_the_app(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Found failing by round 30, fixed.

    Promise: a Manager with another number is refused "and nothing stored changes"; the
    number recorded is the layout of the stored entries.

    How: entries in 4 shards; shard 0's keys are lost (``{runtime}:shards`` with them). A
    Manager with 2 shards is let in and its first write records 2 (SHARD_LAYOUT sees nothing
    in ``{runtime}``), writing an entry of 4-shard shard 3 into ``{runtime:1}``: now the app's
    own 4-shard Manager is refused ("stored in 2 shards") while 3 shards of its entries sit in
    Redis, and the entry is stored twice.
    """
    manager(redis_url).add_many(definitions(40))
    name = next(d["name"] for d in definitions(40) if shard_number(d["name"], SHARDS) == 3)
    lose_shard(redis_client, 0)
    refused = False
    try:
        manager(redis_url, 2).add(name, "tasks.report", 5.0)
    except ConfigError:
        refused = True
    recorded = redis_client.get(KEYS.runtime_shards)
    assert refused and recorded in (None, b"4") and holders(redis_client, name) == [3], (
        f"refused={refused}, recorded={recorded!r}, stored in {holders(redis_client, name)}"
    )


def test_the_refusal_of_a_sharded_manager_on_an_emptied_unsharded_store_gives_advice_that_fails(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Found failing by round 30, fixed.

    Promise: a clear ConfigError naming the setting; "it cannot change once entries are
    stored; with none stored, delete that key" (the message and docs/settings.md).

    How: an unsharded store whose every entry was removed (none stored). A 4-shard Manager is
    refused, and the message tells to delete ``{runtime}:shards``, a key that does not exist:
    the refusal comes from ``{runtime}:version`` (check_shard_count), which the message does
    not name. Following the advice, the Manager is refused again, with nothing stored.
    """
    one = manager(redis_url, 1)
    one.add("only", "tasks.report", 5.0)
    one.remove("only")
    assert one.jobs() == []
    with pytest.raises(ConfigError, match="runtime_shards") as caught:
        manager(redis_url).add("new", "tasks.report", 5.0)
    message = str(caught.value)
    named = KEYS.runtime_shards
    assert named in message
    redis_client.delete(named)  # the advice: "with none stored, delete that key"
    try:
        manager(redis_url).add("new", "tasks.report", 5.0)
    except ConfigError as exc:
        pytest.fail(f"the advice of the refusal did not work: refused again: {exc}")


# -- bulk writes and the connection pool ----------------------------------------------------


def test_add_many_with_shards_fails_on_a_pool_of_one_connection(redis_url: str) -> None:
    """Found failing by round 30, fixed.

    Promise: bulk writes keep working with shards (docs/manager.md); a documented redis
    option (``fork_scheduler_redis_options = {"max_connections": 1}``, see backends/redis.py
    concurrent_calls) combined with shards must not break ``add_many``.

    How: ShardedStore.versions_ahead enters every shard's RuntimeStore.versions_ahead at once,
    each holding a connection of its own from the pool while the definitions are checked: with
    4 shards it needs 4 (+1 for SCRIPT LOAD). With ``max_connections`` 1, ``add_many`` raises
    redis's MaxConnectionsError ("Too many connections") and stores nothing. The same call
    with 1 shard works.
    """
    options = {"max_connections": 1}
    unsharded = Manager(
        make_app(redis_url, fork_scheduler_redis_options=options, fork_scheduler_key_prefix="o:")
    )
    assert len(unsharded.add_many(definitions(20))) == 20
    sharded = manager(redis_url, fork_scheduler_redis_options=options)
    try:
        written = sharded.add_many(definitions(20))
    except redis.RedisError as exc:
        pytest.fail(f"add_many with {SHARDS} shards and max_connections 1: {exc!r}")
    assert len(written) == 20


# -- following shards -------------------------------------------------------------------------


def test_a_shard_whose_keys_were_lost_is_not_read_again_alone(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Found failing by round 30, fixed.

    Promise (docs/settings.md): "a shard whose keys were lost is read again on its own".

    How: a beat follows 4 shards; shard 2's keys are lost and written again. At its next poll
    the beat reads every entry of every shard (RuntimeEntries._everything calls all() on each
    cursor's store), not shard 2 alone: with a million entries over 12 shards, one master
    losing its data (or, the same path, the first write to a shard that was empty when the
    replica started: its epoch goes from none to set) re-reads them all on every replica.
    """
    clock = FakeClock(START)
    writer = manager(redis_url)
    writer.add_many(definitions(40))
    beat = make_scheduler(redis_url, clock, fork_scheduler_runtime_shards=SHARDS)
    try:
        beat.setup_schedule()
        run_for(beat, clock, 2)
        assert beat.runtime is not None
        reads: dict[int, int] = dict.fromkeys(range(SHARDS), 0)
        for number, cursor in enumerate(beat.runtime._cursors):
            original = cursor.store.all

            def counted(original: Any = original, number: int = number) -> Any:
                reads[number] += 1
                return original()

            cursor.store.all = counted  # type: ignore[method-assign]
        lose_shard(redis_client, 2)
        writer.add(name_in_shard(2), "tasks.report", 1.0)
        run_for(beat, clock, 2)
        assert reads[2] >= 1
        assert {n: c for n, c in reads.items() if n != 2 and c} == {}, reads
    finally:
        beat.close()


def test_a_manager_with_another_number_of_shards_is_told_the_stored_json_is_corrupt(
    redis_url: str,
) -> None:
    """Found failing by round 30, fixed.

    Promise: a Manager or CLI with another number of shards is refused with a ConfigError
    *naming fork_scheduler_runtime_shards* (docs/settings.md).

    How: entries stored in 4 shards; a Manager with 2 shards whose first call reads one entry
    (``get``, ``update``, ``next_runs``, ``stats``, ``history``, ``pause``; ``celery schedule
    show``/``pause``) gets StoredRecordError "stored JSON cannot be decoded" for a perfectly
    fine entry: Manager._get_stored turns every ConfigError raised under ``self.store()``
    into StoredRecordError, the layout refusal of Manager.store() included. The operator is
    sent to look for corrupt JSON instead of the setting.
    """
    manager(redis_url).add_many(definitions(8))
    calls = {
        "get": lambda m: m.get("tenant-1"),
        "update": lambda m: m.update("tenant-1", schedule=5.0),
        "next_runs": lambda m: m.next_runs("tenant-1"),
        "stats": lambda m: m.stats("tenant-1"),
        "history": lambda m: m.history("tenant-1"),
        "pause": lambda m: m.pause("tenant-1"),
    }
    wrong: dict[str, str] = {}
    for what, call in calls.items():
        try:
            call(manager(redis_url, 2))
            wrong[what] = "not refused"
        except ConfigError as exc:
            if exc.field != "fork_scheduler_runtime_shards":
                wrong[what] = f"{type(exc).__name__}: {exc}"
    app = make_app(redis_url, fork_scheduler_runtime_shards=2)
    for args in (("show", "tenant-1"), ("pause", "tenant-1")):
        result = cli(app, *args)
        if "fork_scheduler_runtime_shards" not in result.output:
            wrong[" ".join(args)] = f"exit {result.exit_code}: {result.output.strip()}"
    assert wrong == {}


# -- probes: things checked that held ---------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, True, "4", 1025, 4.0, None])
def test_probe_bad_shard_counts_are_a_config_error_naming_the_setting(
    redis_url: str, value: Any
) -> None:
    """Bad input: each is a ConfigError naming the setting; the CLI exits 2, one line, no
    traceback."""
    with pytest.raises(ConfigError, match="fork_scheduler_runtime_shards"):
        read_settings({"fork_scheduler_runtime_shards": value})
    result = cli(make_app(redis_url, fork_scheduler_runtime_shards=value), "list")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "fork_scheduler_runtime_shards" in result.output


def test_probe_the_cli_with_another_number_adds_nothing_from_a_file(
    redis_url: str, redis_client: redis.Redis, tmp_path: Any
) -> None:
    """``celery schedule add --file`` / ``list`` / ``remove --tag`` with another number: one
    line naming the setting, no traceback, nothing stored changes."""
    manager(redis_url).add_many(definitions(10, tags=["acme"]))
    before = dump(redis_client)
    path = tmp_path / "entries.json"
    path.write_text(json.dumps(definitions(5, prefix="file")))
    for shards in (1, 2, 8):
        app = make_app(redis_url, fork_scheduler_runtime_shards=shards)
        for args in (("add", "--file", str(path)), ("list",), ("remove", "--tag", "acme", "--yes")):
            result = cli(app, *args)
            assert result.exit_code != 0, result.output
            assert "Traceback" not in result.output and "runtime_shards" in result.output
    assert dump(redis_client) == before


def test_probe_cli_add_file_with_shards_and_a_taken_name_writes_nothing(
    redis_url: str, redis_client: redis.Redis, tmp_path: Any
) -> None:
    """Validation (and the existence check) happen before any shard is written."""
    writer = manager(redis_url)
    taken = next(d for d in definitions(40) if shard_number(d["name"], SHARDS) == 3)
    writer.add_many([taken])
    path = tmp_path / "entries.json"
    path.write_text(json.dumps([*definitions(40), {"name": "bad", "task": "t", "schedule": -1}]))
    before = dump(redis_client)
    result = cli(
        make_app(redis_url, fork_scheduler_runtime_shards=SHARDS), "add", "--file", str(path)
    )
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert dump(redis_client) == before


def test_probe_versions_are_per_entry_and_stale_writes_are_refused_in_every_shard(
    redis_url: str,
) -> None:
    writer = manager(redis_url)
    writer.add_many(definitions(16))
    for job in [writer.get(f"tenant-{i}") for i in range(16)]:
        writer.update(job.name, expected_version=job.version, schedule=2.0)
        with pytest.raises(StaleVersionError):
            writer.update(job.name, expected_version=job.version, schedule=3.0)
        with pytest.raises(StaleVersionError):
            writer.remove(job.name, expected_version=job.version)
    versions = {job.name: job.version for job in writer.jobs()}
    with pytest.raises(BulkConflictError):
        writer.remove_many(list(versions), expected_versions={**versions, "tenant-5": 1})
    assert len(writer.jobs()) == 16


@pytest.fixture
def one_page_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from startup_helpers import one_page_per_read

    one_page_per_read(monkeypatch)


def test_probe_writes_during_a_paged_load_over_shards_are_applied_and_fire_once(
    redis_url: str, one_page_at_a_time: None
) -> None:
    """Two replicas read 3 000 entries in 4 shards a page (a shard) per tick; meanwhile
    entries of shards read and not yet read are removed, updated and added, a removed name
    is re-added. Every slot fires once; no removed entry fires a slot after its removal."""
    clock = FakeClock("2026-03-02T10:00:59.800+00:00")
    writer = manager(redis_url, clock=clock)
    writer.add_many(
        {"name": f"rt{i:04}", "task": "tasks.report", "schedule": "* * * * *"} for i in range(3_000)
    )
    replicas = [
        make_scheduler(
            redis_url,
            clock,
            replica_id=rid,
            fork_scheduler_runtime_shards=SHARDS,
            fork_scheduler_owner_grace=1,
        )
        for rid in ("a", "b")
    ]
    try:
        for replica in replicas:
            replica.setup_schedule()
        assert all(r.runtime is not None and r.runtime.loading for r in replicas)
        removed = [f"rt{i:04}" for i in range(0, 3_000, 7)]
        writer.remove_many(removed)
        writer.update_many([{"name": f"rt{i:04}", "schedule": 3600.0} for i in range(1, 3_000, 7)])
        writer.add_many(
            {"name": f"new{i}", "task": "tasks.report", "schedule": "* * * * *"} for i in range(40)
        )
        writer.add("rt0000", "tasks.report", "* * * * *")
        tick_for(lambda: [r.tick() for r in replicas], clock, 4, step=0.1)
        published = fired(*[r.publisher for r in replicas])  # type: ignore[arg-type]
        slot = "2026-03-02T10:01:00+00:00"
        gone = set(removed) - {"rt0000"}
        hourly = {f"rt{i:04}" for i in range(1, 3_000, 7)}
        expected = {
            (name, slot): 1
            for name in [f"rt{i:04}" for i in range(3_000)] + [f"new{i}" for i in range(40)]
            if name not in gone and name not in hourly
        }
        assert {k: v for k, v in published.items() if k[0] not in hourly} == expected
        stored = {job.name for job in writer.jobs()}
        for replica in replicas:
            assert {n for n, e in replica.entries.items() if e.source == "runtime"} == stored
    finally:
        for replica in replicas:
            replica.close()


def test_probe_two_replicas_with_shards_publish_each_slot_once_and_honour_removals(
    redis_url: str,
) -> None:
    """Adds, updates, removals, a re-added name and tag operations spread over 4 shards; two
    racing replicas."""
    clock = FakeClock(START)
    writer = manager(redis_url, clock=clock)
    writer.add_many(definitions(24, tags=["acme"]) + definitions(8, prefix="other"))
    pubs = [RecordingPublisher(), RecordingPublisher()]
    replicas = [
        make_scheduler(
            redis_url, clock, publisher=p, replica_id=rid, fork_scheduler_runtime_shards=SHARDS
        )
        for p, rid in zip(pubs, ("a", "b"), strict=True)
    ]
    try:
        for replica in replicas:
            replica.setup_schedule()
        tick_for(lambda: [r.tick() for r in replicas], clock, 3)
        removed_at = clock()
        writer.remove_by_tag("acme")
        tick_for(lambda: [r.tick() for r in replicas], clock, 3)
        writer.add("tenant-3", "tasks.report", 1.0)
        tick_for(lambda: [r.tick() for r in replicas], clock, 3)
        published = fired(*pubs)
        assert set(published.values()) == {1}
        late = {
            (name, slot)
            for name, slot in published
            if name.startswith("tenant-") and name != "tenant-3" and slot > removed_at.isoformat()
        }
        assert late == set()
        assert any(name == "tenant-3" and slot > removed_at.isoformat() for name, slot in published)
    finally:
        for replica in replicas:
            replica.close()


def test_probe_replicas_report_and_ownership_work_with_shards(redis_url: str) -> None:
    """``celery schedule replicas``: each replica's runtime version equals the one in Redis
    (the sum of the shards'); replicas dividing the entries (owner_grace) publish each slot
    once."""
    clock = FakeClock(START)
    writer = manager(redis_url, clock=clock)
    writer.add_many(definitions(30))
    pubs = [RecordingPublisher(), RecordingPublisher()]
    replicas = [
        make_scheduler(
            redis_url,
            clock,
            publisher=p,
            replica_id=rid,
            fork_scheduler_runtime_shards=SHARDS,
            fork_scheduler_owner_grace=1,
        )
        for p, rid in zip(pubs, ("a", "b"), strict=True)
    ]
    try:
        for replica in replicas:
            replica.setup_schedule()
        tick_for(lambda: [r.tick() for r in replicas], clock, 8)
        published = fired(*pubs)
        assert set(published.values()) == {1}
        assert all(p.occurrences for p in pubs)  # divided
        result = cli(
            make_app(redis_url, fork_scheduler_runtime_shards=SHARDS),
            "replicas",
            "--json",
            "--within",
            "1000000000",
        )
        data = json.loads(result.output)
        assert data["runtime_version"] == writer.store().version() == 30
        assert {r["runtime_version"] for r in data["replicas"]} == {30}
    finally:
        for replica in replicas:
            replica.close()


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterNodes]:
    with RedisClusterNodes(masters=3) as nodes:
        yield nodes


def test_probe_on_a_redis_cluster_replicas_follow_shards_and_publish_once(
    cluster: RedisClusterNodes,
) -> None:
    """Redis Cluster, 6 shards: two replicas follow adds, a tag removal, an update (a stale
    version refused), a re-added name; a Manager with 3 shards is refused naming the setting
    and changes nothing. (Publishing is not checked here: on this test cluster with a fake
    clock no replica published anything, with 1 shard either, so that is no shard matter.)"""
    conf = {"fork_scheduler_redis_options": {"cluster": True}, "fork_scheduler_runtime_shards": 6}
    prefix = "r30cl:"
    clock = FakeClock(START)
    app = make_app(cluster.url, fork_scheduler_key_prefix=prefix, **conf)
    writer = Manager(app, clock=clock)
    writer.add_many(definitions(30, tags=["acme"]) + definitions(6, prefix="other"))
    pubs = [RecordingPublisher(), RecordingPublisher()]
    replicas = [
        make_scheduler(
            cluster.url,
            clock,
            publisher=p,
            replica_id=rid,
            fork_scheduler_key_prefix=prefix,
            **conf,
        )
        for p, rid in zip(pubs, ("a", "b"), strict=True)
    ]
    try:
        for replica in replicas:
            replica.setup_schedule()
        tick_for(lambda: [r.tick() for r in replicas], clock, 2)
        job = writer.get("other-1")
        writer.update("other-1", expected_version=job.version, schedule=2.0)
        with pytest.raises(StaleVersionError):
            writer.update("other-1", expected_version=job.version, schedule=3.0)
        assert len(writer.remove_by_tag("acme")) == 30
        tick_for(lambda: [r.tick() for r in replicas], clock, 2)
        writer.add("tenant-7", "tasks.report", 1.0)
        tick_for(lambda: [r.tick() for r in replicas], clock, 2)
        names = {f"other-{i}" for i in range(6)} | {"tenant-7"}
        for replica in replicas:
            assert {n for n, e in replica.entries.items() if e.source == "runtime"} == names
            assert replica.entries["other-1"].schedule == writer.get("other-1").schedule
        other = Manager(
            make_app(
                cluster.url,
                fork_scheduler_key_prefix=prefix,
                fork_scheduler_redis_options={"cluster": True},
                fork_scheduler_runtime_shards=3,
            )
        )
        with pytest.raises(ConfigError, match="fork_scheduler_runtime_shards"):
            other.add("x", "tasks.report", 1.0)
        names = {j.name for j in writer.jobs()}
        assert names == {f"other-{i}" for i in range(6)} | {"tenant-7"}
    finally:
        for replica in replicas:
            replica.close()


READ_ONLY_COMMANDS = "+hget +hgetall +hscan +hmget +lrange +zrange +zscore +get +exists +time +ping"


def test_probe_a_read_only_acl_user_reads_a_sharded_store_and_changes_nothing(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """docs/security.md's read-only user with 4 shards: list/show/history/replicas/validate
    work, add/pause/remove are refused without a traceback, nothing changes."""
    manager(redis_url).add_many(definitions(12))
    rule = ["on", ">ro-pw", "resetkeys", "~scheduler:*", "resetchannels", "-@all"]
    redis_client.execute_command("ACL", "SETUSER", "reader", *rule, *READ_ONLY_COMMANDS.split())
    try:
        port = redis_client.connection_pool.connection_kwargs["port"]
        reader = make_app(
            f"redis://reader:ro-pw@127.0.0.1:{port}/0", fork_scheduler_runtime_shards=SHARDS
        )
        before = dump(redis_client)
        for args in (("list",), ("show", "tenant-3"), ("history", "tenant-3"), ("replicas",)):
            result = cli(reader, *args)
            assert result.exit_code == 0, result.output
        assert "tenant-11" in cli(reader, "list").output
        for args in (
            ("add", "new", "tasks.t", "every 1 minutes"),
            ("pause", "tenant-3"),
            ("remove", "tenant-3", "--yes"),
        ):
            result = cli(reader, *args)
            assert result.exit_code != 0 and "Traceback" not in result.output, result.output
        assert dump(redis_client) == before
    finally:
        redis_client.execute_command("ACL", "DELUSER", "reader")
