"""Adversary round 31: runtime entry shards (recorded layout, lost shards, long-lived
replicas) and the message capture's defence in depth (``CaptureEscaped``).

Each test's docstring names the promise it breaks and how. Tests named ``test_probe_...``
are things that were checked and held.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
import redis
from celery import Celery
from lane_helpers import Seen, one_step_beat
from publish_helpers import register_task_publishing_past_kombu
from replica_helpers import START, make_app, make_scheduler, run_for

import celery_fork_scheduler.publishing as publishing
from celery_fork_scheduler import ConfigError, Manager, every
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.store_shards import shard_number
from celery_fork_scheduler.testing import FakeClock

KEYS = Keys("scheduler:")
SHARDS = 4


# -- helpers -------------------------------------------------------------------------------


def manager(redis_url: str, shards: int = SHARDS, **conf: Any) -> Manager:
    return Manager(make_app(redis_url, fork_scheduler_runtime_shards=shards, **conf))


def name_in_shard(shard: int, count: int = SHARDS, prefix: str = "pick", avoid: Any = None) -> str:
    """A name stored in shard ``shard`` of ``count`` (and, with ``avoid=(k, n)``, not in
    shard k of n)."""
    for i in range(100_000):
        name = f"{prefix}-{i}"
        if shard_number(name, count) != shard:
            continue
        if avoid is not None and shard_number(name, avoid[1]) == avoid[0]:
            continue
        return name
    raise AssertionError("no such name")


def holders(client: Any, name: str, most: int = 16) -> list[int]:
    return [
        number
        for number in range(most)
        if client.hexists(KEYS.runtime_shard(number).runtime_entries, name)
    ]


def queued_ids(client: redis.Redis, queue: str = "celery") -> Counter[str]:
    return Counter(json.loads(raw)["headers"]["id"] for raw in client.lrange(queue, 0, -1))


def own_producer_app(app: Celery) -> None:
    """Register ``t.own``: a task that publishes past Kombu (stands for a publish path the
    capture does not know: capture_safe is switched off). Round 31 used a task publishing
    through Kombu on a producer of its own; since then the capture intercepts those (nothing
    leaves: tests/test_capture_escape.py), so the escape is made past Kombu."""
    register_task_publishing_past_kombu(app)


# -- B. capture escapes ------------------------------------------------------------------------


def _escape_beat(redis_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(publishing, "capture_safe", lambda task, options: True)
    schedule = {"own": {"task": "t.own", "schedule": every(10).seconds, "args": (1,)}}
    beat = one_step_beat(redis_url, clock, schedule)
    own_producer_app(beat.app)
    return beat


def test_a_slot_escaped_while_warming_is_sent_again_on_the_one_step_path(
    redis_url: str,
    redis_client: redis.Redis,
    clock: FakeClock,
    seen: Seen,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found failing by round 31, fixed.

    Promise (docs/guarantees.md, "Should a publish take such a path"): when the escape
    happens while a template is made ahead, "the replica's own publish of that slot is refused
    the same way"; each slot is published exactly once.

    How: the broker is the claims' Redis (the one-step path, the default when they share
    it). In idle time ``warm`` captures the first slot: the capture escapes (the message
    leaves) and the task id goes to ``_escaped``. At claim time ``PublishPipeline.sends_for``
    calls ``commands_for``: ``_refuse_escaped`` answers DeliveryUncertain *and forgets the
    task id*; sends_for turns any non-list answer into "claim only" and drops it. The won
    claim reaches ``_start_once``: commands_for now answers None (cached "no template"), so
    the slot takes the fence path and ``publish_many`` sends it through Celery: two messages
    with one task id, the slot reported dispatched (pipeline.py ``sends_for`` discards the
    refusal; publishing.py ``_refuse_escaped`` consumes it).
    """
    beat = _escape_beat(redis_url, clock, monkeypatch)
    try:
        beat.setup_schedule()
        run_for(beat, clock, 12)
    finally:
        beat.close()
    twice = {task_id: n for task_id, n in queued_ids(redis_client).items() if n > 1}
    assert twice == {}, f"sent more than once: {twice}; dispatched={seen.dispatched}"


def test_a_capture_that_escapes_at_claim_time_is_sent_again_on_the_one_step_path(
    redis_url: str,
    redis_client: redis.Redis,
    clock: FakeClock,
    seen: Seen,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found failing by round 31, fixed.

    Promise (docs/guarantees.md): an escaped capture's slot is "reported uncertain and not
    sent again"; each slot is published exactly once.

    How: as above, without the warm-ahead (no idle time before the slot: a burst, a busy
    replica). The first capture of the entry happens in ``sends_for`` at claim time, through
    ``commands_for`` -> ``render``: it escapes (the message leaves, *before the claim*),
    render raises DeliveryUncertain, which sends_for drops (``commands if isinstance(commands,
    list) else None``) and nothing remembers the task id (only ``warm`` fills ``_escaped``).
    The claim is won, ``_start_once`` finds "no template" cached and the fence path sends
    the slot through Celery a second time.
    """
    beat = _escape_beat(redis_url, clock, monkeypatch)
    beat.pipeline.warm = lambda *args, **kwargs: False  # type: ignore[method-assign]
    try:
        beat.setup_schedule()
        run_for(beat, clock, 12)
    finally:
        beat.close()
    twice = {task_id: n for task_id, n in queued_ids(redis_client).items() if n > 1}
    assert twice == {}, f"sent more than once: {twice}; dispatched={seen.dispatched}"


def test_under_the_cap_an_escape_on_the_one_step_path_is_recorded_failed_and_frees_its_place(
    redis_url: str,
    redis_client: redis.Redis,
    clock: FakeClock,
    seen: Seen,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found failing by round 31, fixed.

    Promise (docs/guarantees.md, "Should a publish take such a path"): the escaped slot "is
    then reported uncertain (DeliveryUncertain ...)"; a run that may be executing keeps its
    place under ``fork_scheduler_max_concurrent`` (the fence path records such a slot
    ``uncertain``, reports it ``in_flight`` and keeps the place).

    How: the broker is the claims' Redis and a cap is set (``max_concurrent`` 5: sends_for
    steps aside, the claim-then-publish script ``_start_once`` builds the messages). The
    entry's first capture escapes (the capped message is sent, with the cap header). In
    ``_start_once`` the DeliveryUncertain from ``commands_for`` is taken for "Celery refused
    to build it: nothing was sent" (``isinstance(each, Exception)`` -> ``_not_sent``):
    ``record_failure`` records the slot ``failed``, counts a failure, and frees its place under
    the cap (``_free_places``) while the escaped run may be executing: the cap can be
    exceeded, and the history/report say it failed rather than uncertain.
    """
    monkeypatch.setattr(publishing, "capture_safe", lambda task, options: True)
    schedule = {"own": {"task": "t.own", "schedule": every(10).seconds, "args": (1,)}}
    beat = one_step_beat(redis_url, clock, schedule, fork_scheduler_max_concurrent=5)
    own_producer_app(beat.app)
    beat.pipeline.warm = lambda *args, **kwargs: False  # type: ignore[method-assign]
    try:
        beat.setup_schedule()
        run_for(beat, clock, 12)
    finally:
        beat.close()
    assert sum(queued_ids(redis_client).values()) == 1  # the escaped message
    history = redis_client.lrange(KEYS.history("own"), 0, -1)
    outcomes = [json.loads(raw)["outcome"] for raw in history]
    places = redis_client.zcard(KEYS.cap)
    assert (outcomes, places) == (["uncertain"], 1), (
        f"history {outcomes}, places held under the cap {places}, skipped {seen.skipped}"
    )


# -- A. runtime shards -------------------------------------------------------------------------


def definitions(count: int, prefix: str = "tenant", **extra: Any) -> list[dict[str, Any]]:
    return [
        {"name": f"{prefix}-{i}", "task": "tasks.report", "schedule": 1.0, **extra}
        for i in range(count)
    ]


def test_a_running_beat_never_rechecks_the_layout_after_redis_lost_its_keys(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Found failing by round 31, fixed.

    Promise (docs/guarantees.md, row "Runtime entries are stored in shards"; docs/settings.md
    ``fork_scheduler_runtime_shards``): a Manager or beat with another number is refused (a
    ConfigError naming the setting); every runtime add is seen by every replica at its next
    refresh; after Redis loses keys, replicas re-read.

    How: a beat configured with 2 shards runs (it recorded 2 at start). Redis loses its data
    (FLUSHDB: a restart without persistence). The beat notices at its next refresh (new
    epoch: it re-reads shards 0 and 1) but never checks the layout again
    (``RuntimeEntries._check_layout`` runs once) and records nothing. An operator's Manager
    configured with 4 shards now finds nothing recorded and is let in: it records 4 and
    stores 20 entries in 4 shards. The running beat follows shards 0 and 1 only: the entries
    of shards 2 and 3 never fire on it, and nobody is refused or told.
    """
    clock = FakeClock(START)
    beat = make_scheduler(redis_url, clock, fork_scheduler_runtime_shards=2)
    try:
        beat.setup_schedule()
        run_for(beat, clock, 2)
        assert redis_client.get(KEYS.runtime_shards) == b"2"
        redis_client.flushdb()
        run_for(beat, clock, 2)  # the beat sees the loss (new epochs) and re-reads
        refused = False
        try:
            manager(redis_url, 4).add_many(definitions(20))
            run_for(beat, clock, 3)
        except ConfigError:
            refused = True
        seen = {name for name in beat.entries if name.startswith("tenant-")}
        missing = sorted({f"tenant-{i}" for i in range(20)} - seen)
    finally:
        beat.close()
    assert refused or not missing, (
        f"neither refused nor followed: {len(missing)} of 20 unseen by the 2-shard beat "
        f"(shards {sorted({shard_number(n, 4) for n in missing})} of 4)"
    )


def shard_keys(client: redis.Redis, number: int) -> list[bytes]:
    tag = "runtime" if number == 0 else f"runtime:{number}"
    return sorted(client.scan_iter(match=f"scheduler:{{{tag}}}:*"))


def snapshot_shard(client: redis.Redis, number: int) -> dict[bytes, bytes]:
    """The keys of runtime shard ``number`` as an RDB would hold them (DUMP)."""
    return {key: client.dump(key) for key in shard_keys(client, number)}


def restore_shard(client: redis.Redis, number: int, snapshot: dict[bytes, bytes]) -> None:
    """The master holding shard ``number`` comes back from the older snapshot: its keys are
    exactly those of the snapshot again."""
    for key in shard_keys(client, number):
        if key not in snapshot:
            client.delete(key)
    for key, value in snapshot.items():
        client.restore(key, 0, value, replace=True)


def test_a_shard_back_from_an_older_snapshot_is_missed_when_its_latest_name_is_written_again(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Found failing by round 31, fixed.

    Promise (docs/guarantees.md, rows "Redis loses data" and "Runtime entries are stored in
    shards"): a replica notices a shard back "from an older snapshot, and written to since" (the
    latest change it saw gone from the change log) and re-reads it: gone entries are dropped
    (no phantom fires) and every add is seen at the next refresh.

    How: 4 shards; in shard 2: ``a`` (snapshot taken here, version 1), then ``gone`` (2) and
    ``b`` (3). A replica reads them all (its anchor: ``b`` at 3). The master of shard 2 comes
    back from the snapshot (``a`` only, version 1, same epoch). The operator's provisioning
    script runs again: it adds ``fresh`` (version 2) and ``b`` (version 3). The replica's
    checks all pass: same epoch, version 3 is not below its 3, and its anchor ``b`` is in the
    log at 3 >= 3 (store.py ``changes_since``: ``anchor_kept`` only asks that the name be
    logged at that version or later, and the name was simply written again). Nothing is
    re-read: ``gone`` keeps firing on the replica though no longer stored, ``fresh`` never
    fires there.
    """
    clock = FakeClock(START)
    writer = manager(redis_url)
    a, gone, b, fresh = (name_in_shard(2, prefix=p) for p in ("a", "gone", "b", "fresh"))
    writer.add(a, "tasks.report", every(1).seconds)
    snapshot = snapshot_shard(redis_client, 2)
    writer.add(gone, "tasks.report", every(1).seconds)
    writer.add(b, "tasks.report", every(1).seconds)
    beat = make_scheduler(
        redis_url, clock, fork_scheduler_runtime_shards=SHARDS, fork_scheduler_refresh_interval=1.0
    )
    try:
        beat.setup_schedule()
        run_for(beat, clock, 2)
        assert {a, gone, b} <= set(beat.entries)
        restore_shard(redis_client, 2, snapshot)
        writer.add(fresh, "tasks.report", every(1).seconds)
        writer.add(b, "tasks.report", every(1).seconds)
        run_for(beat, clock, 3)
        runtime = {name for name, e in beat.entries.items() if e.source == "runtime"}
    finally:
        beat.close()
    stored = {n.decode() for n in redis_client.hkeys(KEYS.runtime_shard(2).runtime_entries)}
    assert runtime == stored, f"replica runs {sorted(runtime)}, shard 2 stores {sorted(stored)}"


@pytest.fixture(scope="module")
def cluster() -> Any:
    from celery_fork_scheduler.testing.redis_topologies import RedisClusterNodes

    with RedisClusterNodes(masters=3) as nodes:
        yield nodes


@pytest.mark.parametrize("other", [1, 2])
def test_on_a_3_master_cluster_one_master_losing_its_data_lets_another_layout_in(
    cluster: Any, other: int
) -> None:
    """Found failing by round 31, fixed.

    Promise (docs/settings.md ``fork_scheduler_runtime_shards``: "one made after the loss
    is [refused] (it also reads shard 1's record)"; docs/guarantees.md: a Manager with another
    number is refused "so no entry is stored in two shards").

    How: the documented deployment: a 3-master Redis Cluster (even slot split, as redis-cli
    and RedisClusterNodes make it) with 12 shards ("12 for 3 masters"). ``{runtime}``
    (slot 14432) and ``{runtime:1}`` (slot 15074) hash to the *same* master: check_shard_count's
    second record is no second witness. That master restarts without persistence (its data
    is lost; shards 0, 1, 5, 8, 9 with it). A Manager made after the loss with 1 (or 2)
    shards reads shards 0 and 1: nothing recorded, no unsharded entries: it is let in,
    records its number in ``{runtime}`` and adds ``x`` (stored in 12-shard shard 2, on
    another master) to shard 0: ``x`` is now stored twice, and the app's own 12-shard beat and
    Manager are refused from then on (shard 0 says {other}).
    """
    prefix = f"r31cl{other}:"
    conf: dict[str, Any] = {
        "fork_scheduler_redis_options": {"cluster": True},
        "fork_scheduler_key_prefix": prefix,
    }
    keys = Keys(prefix)
    writer = Manager(make_app(cluster.url, fork_scheduler_runtime_shards=12, **conf))
    writer.add_many(definitions(60))
    x = next(d["name"] for d in definitions(60) if shard_number(d["name"], 12) == 2)
    lost = cluster.node_of_key(keys.runtime_shards)
    assert lost is cluster.node_of_key(keys.runtime_shard(1).runtime_shards)
    assert lost is not cluster.node_of_key(keys.runtime_shard(2).runtime_shards)
    node = redis.Redis(port=lost.port)
    try:
        for key in node.scan_iter(match=f"{prefix}*"):
            node.delete(key)  # that master's keys of this app are gone (a restart, no AOF)
    finally:
        node.close()
    refused = False
    try:
        Manager(make_app(cluster.url, fork_scheduler_runtime_shards=other, **conf)).add(
            x, "tasks.report", 5.0
        )
    except ConfigError:
        refused = True
    client = redis.RedisCluster.from_url(cluster.url)
    try:
        where = [k for k in range(12) if client.hexists(keys.runtime_shard(k).runtime_entries, x)]
    finally:
        client.close()
    assert refused and where == [2], f"refused={refused}; {x!r} stored in shards {where}"


# -- probes: things checked that held ------------------------------------------------------------


def lose_shard(client: redis.Redis, number: int) -> None:
    keys = shard_keys(client, number)
    if keys:
        client.delete(*keys)


def test_probe_a_shard_lost_and_rewritten_during_a_paged_load_is_followed(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica reads 2 000 entries of 4 shards a page per tick; mid-load shard 1's master
    loses its data, then new entries are written there and an entry of shard 2 (maybe not read
    yet) is removed. The replica ends with exactly what is stored (no gone entry left)."""
    from startup_helpers import one_page_per_read

    one_page_per_read(monkeypatch)
    clock = FakeClock(START)
    writer = manager(redis_url)
    writer.add_many(definitions(2_000))
    beat = make_scheduler(redis_url, clock, fork_scheduler_runtime_shards=SHARDS)
    try:
        beat.setup_schedule()
        assert beat.runtime is not None and beat.runtime.loading
        beat.tick()
        lose_shard(redis_client, 1)
        writer.add_many(definitions(30, prefix="late"))
        writer.remove(name_in_shard(2, prefix="tenant"))
        run_for(beat, clock, 4, step=0.1)
        assert not beat.runtime.loading
        runtime = {n for n, e in beat.entries.items() if e.source == "runtime"}
    finally:
        beat.close()
    stored = {job.name for job in writer.jobs()}
    assert runtime == stored, (sorted(runtime - stored)[:5], sorted(stored - runtime)[:5])


def test_probe_two_beats_with_different_numbers_started_at_once_one_is_refused(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """On an empty Redis, a 2-shard and a 4-shard beat start one after the other: the second
    is refused at start naming the setting, and a Manager of its number is refused too;
    nothing recorded by it."""
    clock = FakeClock(START)
    first = make_scheduler(redis_url, clock, fork_scheduler_runtime_shards=2, replica_id="a")
    try:
        with pytest.raises(ConfigError, match="fork_scheduler_runtime_shards"):
            make_scheduler(redis_url, clock, fork_scheduler_runtime_shards=4, replica_id="b")
    finally:
        first.close()
    with pytest.raises(ConfigError, match="fork_scheduler_runtime_shards"):
        manager(redis_url, 4).add("x", "tasks.report", 5.0)
    assert [redis_client.get(KEYS.runtime_shard(k).runtime_shards) for k in range(4)] == [
        b"2",
        b"2",
        None,
        None,
    ]


def test_probe_two_key_prefixes_keep_their_own_shard_numbers(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Two apps on one Redis with different ``fork_scheduler_key_prefix`` and shard numbers
    (4 and 1) write, tag-remove and list without refusing each other."""
    four = manager(redis_url, 4, fork_scheduler_key_prefix="four:")
    one = manager(redis_url, 1, fork_scheduler_key_prefix="one:")
    four.add_many(definitions(20, tags=["t"]))
    one.add_many(definitions(20, tags=["t"]))
    assert len(four.remove_by_tag("t")) == 20
    assert len(one.jobs()) == 20 and four.jobs() == []
    assert redis_client.get("four:{runtime}:shards") == b"4"
    assert redis_client.get("one:{runtime}:shards") == b"1"


def test_probe_a_warmed_escape_on_the_fence_path_is_sent_once_and_reported_uncertain(
    redis_url: str,
    redis_client: redis.Redis,
    clock: FakeClock,
    seen: Seen,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The broker is another Redis database than the claims' (the fence path): the escape
    while warming is remembered, the slot is recorded ``uncertain`` and reported
    ``in_flight``, sent once; the next slot goes through Celery once."""
    monkeypatch.setattr(publishing, "capture_safe", lambda task, options: True)
    schedule = {"own": {"task": "t.own", "schedule": every(10).seconds, "args": (1,)}}
    app = make_app(redis_url, schedule)
    broker = redis_url.rsplit("/", 1)[0] + "/1"
    app.conf.broker_url = broker
    own_producer_app(app)
    beat = make_scheduler(redis_url, clock, {}, app=app)
    beat.publisher = publishing.CeleryPublisher(app, lambda: beat.producer)
    broker_client = redis.Redis.from_url(broker)
    try:
        broker_client.flushdb()
        beat.setup_schedule()
        run_for(beat, clock, 22)
        ids = queued_ids(broker_client)
    finally:
        beat.close()
        broker_client.flushdb()
        broker_client.close()
    outcomes = [json.loads(r)["outcome"] for r in redis_client.lrange(KEYS.history("own"), 0, -1)]
    assert sorted(ids.values()) == [1, 1]
    assert outcomes == ["sent", "uncertain"]
    assert [reason for *_, reason in seen.skipped] == ["in_flight"]
