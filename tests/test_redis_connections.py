"""The Redis backend over every way of reaching Redis, each against real servers.

Unix socket, an ACL user with the minimal command list, TLS (``rediss://``), Redis Cluster and
Sentinel (with a forced failover). The servers come from
:mod:`celery_fork_scheduler.testing.redis_topologies`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import pytest
import redis
from celery import Celery

from celery_fork_scheduler import Scheduler
from celery_fork_scheduler.backends import Claim, ClaimOutcome
from celery_fork_scheduler.backends import redis as redis_backend
from celery_fork_scheduler.backends.base import to_epoch_us
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.config import Settings
from celery_fork_scheduler.errors import BackendUnavailableError
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.testing import RedisServer, free_port
from celery_fork_scheduler.testing.redis_topologies import (
    RedisClusterNodes,
    RedisSentinelGroup,
    TlsRedis,
    UnixSocketRedis,
)

PAST = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)

#: The least a Redis ACL user needs for claims (found by removing each in turn: see
#: ``test_each_command_of_the_minimal_acl_is_needed_and_its_lack_fails_closed``). The Lua
#: scripts run with the caller's permissions, so the commands they call count: time, hget,
#: hset, hdel, hgetall (stale claims pruned on every win), hincrby, pexpire, lpush + ltrim
#: (the capped run history) and info (the first claim of an entry without a mark asks when
#: Redis may have lost its data: its start time, unless it was flushed). ``hmget`` +
#: ``hgetall``: the high-water marks and unsent claims (with whose fence) every replica reads.
#: ``script|load``: scripts run by SHA are loaded again after a ``NOSCRIPT`` reply. ``ping``:
#: redis-py's connection health check. Not listed: ``select`` (only for db != 0), the cluster
#: discovery commands of a Redis Cluster client, and what only some features use (see
#: ``FEATURE_ACL_COMMANDS``).
MINIMAL_ACL_COMMANDS = (
    "evalsha",
    "script|load",
    "hmget",
    "hget",
    "hset",
    "hdel",
    "hgetall",
    "hincrby",
    "pexpire",
    "time",
    "ping",
    "lpush",
    "ltrim",
    "info",
)
#: Called by the scripts of singleton entries (running marker: exists/get/set/del), of
#: ``fork_scheduler_max_concurrent`` (zadd/zcard/zremrangebyscore) and by failure records
#: (eval). Grant them too unless those features are unused.
FEATURE_ACL_COMMANDS = (
    "exists",
    "get",
    "set",
    "del",
    "zadd",
    "zcard",
    "zremrangebyscore",
    "eval",
)
#: A password with every character that needs quoting in a URL.
PASSWORD = "s3cr3t/p@ss:w%rd?#"


def claim(entry: str, slot: datetime) -> Claim:
    return Claim(entry, slot, task_id_for(entry, slot))


def outcomes(backend: RedisBackend, claims: list[Claim]) -> list[ClaimOutcome]:
    return [result.outcome for result in backend.claim(claims)]


def assert_claims_work(backend: RedisBackend, entry: str = "a", slot: datetime = PAST) -> None:
    """Won once, pending for nobody else, refused after the send."""
    assert outcomes(backend, [claim(entry, slot)]) == [ClaimOutcome.WON]
    backend.mark_sent([claim(entry, slot)])
    assert outcomes(backend, [claim(entry, slot)]) == [ClaimOutcome.CLAIMED]
    assert backend.high_water_marks([entry])[entry].slot == slot


def poll(predicate: object, *, timeout: float, what: str) -> None:
    """Call ``predicate`` until it returns True; fail after ``timeout`` seconds."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


#: How long a never-flushed server must have been up before :func:`slot_after_start`: the
#: restored mark can lie up to 2.5 s after the second Redis started in (start second + 1 s +
#: the fraction of the current second + the 0.5 s tolerance), and the slot is one second
#: before Redis's current second (a CI run met a mark past a slot taken at 3 s).
UP_FOR_SECONDS = 5


def slot_after_start(*clients: redis.Redis) -> datetime:
    """A slot on Redis's own clock (whole seconds) after every server's start, as on a
    long-running Redis; it and the next second are due (not early).

    A never-flushed server knows that it lost nothing after its start, so the claim of an
    entry without a mark restores one at its start time + the early tolerance and refuses
    every slot up to it (another replica may have won it just before a restart): a slot such
    as ``PAST`` would be answered "claimed". Redis counts its uptime from the second it started
    in, so the restored mark is less than 2.5 s after that second: once the uptime reaches
    5 s, one second before Redis's current second is at least 4 s after it.
    """

    def up() -> bool:
        return all(
            int(client.info("server")["uptime_in_seconds"]) >= UP_FOR_SECONDS for client in clients
        )

    poll(up, timeout=UP_FOR_SECONDS + 30, what=f"Redis to be up for {UP_FOR_SECONDS} s")
    seconds, _ = clients[0].time()
    return datetime.fromtimestamp(seconds - 1, tz=timezone.utc)


# -- unix socket --------------------------------------------------------------------------------


def test_claims_over_a_unix_socket() -> None:
    with UnixSocketRedis() as server:
        direct = redis.Redis(unix_socket_path=str(server.socket_path))
        slot = slot_after_start(direct)
        backend = RedisBackend.from_url(server.unix_url, Settings())
        try:
            assert_claims_work(backend, slot=slot)
            assert str(server.socket_path) in backend.describe()
        finally:
            backend.close()
        assert direct.hget(backend.state_key("a"), "state") == b"sent"
        direct.close()


# -- ACL user with a password -------------------------------------------------------------------


@pytest.fixture(scope="module")
def acl_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def set_user(server: RedisServer, commands: tuple[str, ...], password: str = PASSWORD) -> str:
    """(Re)create user ``scheduler`` limited to ``scheduler:*`` and ``commands``; its URL."""
    admin = redis.Redis(port=server.port)
    admin.acl_setuser(
        "scheduler",
        enabled=True,
        reset=True,
        passwords=[f"+{password}"],
        keys=["scheduler:*"],
        commands=["-@all", *(f"+{command}" for command in commands)],
    )
    admin.flushall()
    admin.script_flush()  # so that loading the scripts is part of what is tried
    admin.close()
    return f"redis://scheduler:{quote(password, safe='')}@127.0.0.1:{server.port}/0"


def exercise(url: str) -> None:
    """Every backend operation, with a connection health check (PING) on the way."""
    backend = RedisBackend.from_url(
        url, Settings(max_retries=0, redis_options={"health_check_interval": 0.01})
    )
    try:
        assert_claims_work(backend)
        time.sleep(0.05)  # the next command runs a health check first
        assert outcomes(backend, [claim("b", PAST), claim("a", PAST)]) == [
            ClaimOutcome.WON,
            ClaimOutcome.CLAIMED,
        ]
        # A skip counts itself (HINCRBY): a slot on an exclusion date.
        excluded = Claim("c", PAST, task_id_for("c", PAST), excluded=True)
        assert outcomes(backend, [excluded]) == [ClaimOutcome.EXCLUDED]
    finally:
        backend.close()


def test_an_acl_user_with_the_minimal_commands_can_claim(acl_server: RedisServer) -> None:
    exercise(set_user(acl_server, MINIMAL_ACL_COMMANDS))


@pytest.mark.parametrize("missing", MINIMAL_ACL_COMMANDS)
def test_each_command_of_the_minimal_acl_is_needed_and_its_lack_fails_closed(
    acl_server: RedisServer, missing: str
) -> None:
    commands = tuple(command for command in MINIMAL_ACL_COMMANDS if command != missing)
    with pytest.raises(BackendUnavailableError) as raised:
        exercise(set_user(acl_server, commands))
    assert PASSWORD not in str(raised.value)


def test_an_acl_user_cannot_touch_keys_outside_the_prefix(acl_server: RedisServer) -> None:
    url = set_user(acl_server, MINIMAL_ACL_COMMANDS)
    backend = RedisBackend.from_url(url, Settings(key_prefix="other:", max_retries=0))
    try:
        with pytest.raises(BackendUnavailableError, match=r"NoPermission|permission"):
            backend.claim([claim("a", PAST)])
    finally:
        backend.close()


def test_a_script_refused_by_the_acl_fails_the_whole_batch_closed(
    acl_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A command a script may not run is the deployment's fault, not one entry's: the call
    fails (as a refused EVALSHA would), while a WRONGTYPE entry stays that entry's error."""
    url = set_user(acl_server, tuple(c for c in MINIMAL_ACL_COMMANDS if c != "hgetall"))
    admin = redis.Redis(port=acl_server.port)
    backend = RedisBackend.from_url(url, Settings(max_retries=0))
    try:
        admin.set(backend.state_key("wrong-type"), "a string, not a hash")
        with (
            caplog.at_level(logging.ERROR, logger="celery_fork_scheduler"),
            pytest.raises(BackendUnavailableError, match="NoPermissionError") as raised,
        ):
            backend.claim([claim("wrong-type", PAST), claim("a", PAST)])
        assert "can't run this command" in str(raised.value)
        assert not caplog.records  # no per-entry error: the scheduler reports the outage
        set_user(acl_server, MINIMAL_ACL_COMMANDS)
        admin.set(backend.state_key("wrong-type"), "a string, not a hash")
        results = backend.claim([claim("wrong-type", PAST), claim("a", PAST)])
        assert [r.outcome for r in results] == [ClaimOutcome.ERROR, ClaimOutcome.WON]
        assert "WRONGTYPE" in results[0].error
    finally:
        backend.close()
        admin.close()


def test_a_restore_without_info_fails_closed(acl_server: RedisServer) -> None:
    """``info`` tells when Redis lost its data, for the write-back of a mark it lost: without
    it that claim fails the call, and with it the mark is restored and the old slot refused."""
    known = Claim("a", PAST, task_id_for("a", PAST), known_mark_us=to_epoch_us(PAST))
    without_info = tuple(command for command in MINIMAL_ACL_COMMANDS if command != "info")
    backend = RedisBackend.from_url(set_user(acl_server, without_info), Settings())
    try:
        with pytest.raises(BackendUnavailableError, match="NoPermissionError"):
            backend.claim([known])
    finally:
        backend.close()
    url = set_user(acl_server, MINIMAL_ACL_COMMANDS)
    backend = RedisBackend.from_url(url, Settings())
    try:
        assert outcomes(backend, [known]) == [ClaimOutcome.CLAIMED]
    finally:
        backend.close()


@pytest.mark.parametrize(
    ("reply", "whole_call"),
    [
        # Redis 6.2 (redis-py has taken the ERR code off)
        (
            "Error running script (call to f_2248ea7f): @user_script:1: @user_script: 1: "
            "The user executing the script can't run this command or subcommand",
            True,
        ),
        ("@user_script: 1: The user executing the script can't run this command", True),
        # Redis 7.0
        (
            "The user executing the script can't access at least one of the keys mentioned "
            "in the command arguments script: 1111e7f8, on @user_script:1.",
            True,
        ),
        # Redis 7.2 and later
        (
            "ACL failure in script: User scheduler has no permissions to run the 'hgetall' "
            "command script: 8a2f, on @user_script:4.",
            True,
        ),
        ("NOPERM this user has no permissions to run the 'hkeys' command", True),
        ("Error running script (call to f_ab): @user_script:1: MISCONF cannot persist", True),
        # one entry's data
        ("WRONGTYPE Operation against a key holding the wrong kind of value", False),
        (
            "Error running script (call to f_fd1f): @user_script:1: WRONGTYPE Operation "
            "against a key holding the wrong kind of value",
            False,
        ),
        ("corrupted hwm The user executing the script can't run this", False),
        ("corrupted hwm NOPERM ACL failure in script:", False),
    ],
)
def test_which_script_errors_fail_the_whole_call(reply: str, whole_call: bool) -> None:
    assert redis_backend._refuses_everything(redis.ResponseError(reply)) is whole_call


def claim_refusal(url: str, settings: Settings) -> str:
    """The message of the BackendUnavailableError a claim on ``url`` raises."""
    backend = RedisBackend.from_url(url, settings)
    try:
        with pytest.raises(BackendUnavailableError) as refused:
            backend.claim([claim("a", PAST)])
    finally:
        backend.close()
    return str(refused.value)


def test_the_password_is_never_shown(acl_server: RedisServer) -> None:
    url = set_user(acl_server, MINIMAL_ACL_COMMANDS)
    secrets = (PASSWORD, quote(PASSWORD, safe=""))
    settings = Settings(max_retries=1, retry_delay=timedelta(seconds=0.01))

    backend = RedisBackend.from_url(url, settings)
    try:
        assert_claims_work(backend)
        described = backend.describe()
        assert "scheduler" in described
        assert not any(secret in described for secret in secrets), described
    finally:
        backend.close()

    wrong = set_user(acl_server, MINIMAL_ACL_COMMANDS, password="another-" + PASSWORD)
    refused = claim_refusal(url, settings)
    assert not any(secret in refused for secret in secrets), refused
    assert wrong != url

    down = f"redis://scheduler:{quote(PASSWORD, safe='')}@127.0.0.1:{free_port()}/0"
    message = claim_refusal(down, settings)
    assert "unreachable" in message
    assert not any(secret in message for secret in secrets), message


def test_a_sentinel_url_with_passwords_is_masked_in_every_part() -> None:
    """Kombu's form joins several URLs with ``;``: each part has its password masked."""
    port_a, port_b = free_port(), free_port()
    secret = quote(PASSWORD, safe="")
    url = f"sentinel://:{secret}@127.0.0.1:{port_a};sentinel://:{secret}@127.0.0.1:{port_b}"
    settings = Settings(max_retries=0, redis_options={"master_name": "mymaster"})
    backend = RedisBackend.from_url(url, settings)
    try:
        described = backend.describe()
        assert str(port_a) in described and str(port_b) in described
        assert secret not in described and PASSWORD not in described
        with pytest.raises(BackendUnavailableError) as unreachable:
            backend.claim([claim("a", PAST)])
        assert secret not in str(unreachable.value) and PASSWORD not in str(unreachable.value)
    finally:
        backend.close()


# -- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server() -> Iterator[TlsRedis]:
    with TlsRedis() as server:
        yield server


def test_claims_over_tls(tls_server: TlsRedis) -> None:
    assert tls_server.url.startswith("rediss://")
    direct = redis.Redis.from_url(tls_server.url, ssl_ca_certs=str(tls_server.ca_path))
    slot = slot_after_start(direct)
    direct.close()
    settings = Settings(redis_options={"ssl_ca_certs": str(tls_server.ca_path)})
    backend = RedisBackend.from_url(tls_server.url, settings)
    try:
        assert_claims_work(backend, entry="tls", slot=slot)
    finally:
        backend.close()


def test_a_server_certificate_that_cannot_be_verified_fails_closed(tls_server: TlsRedis) -> None:
    # Without the test CA the server is unknown: nothing may be claimed, beat must not crash.
    backend = RedisBackend.from_url(tls_server.url, Settings(max_retries=0))
    try:
        with pytest.raises(BackendUnavailableError):
            backend.claim([claim("untrusted", PAST)])
    finally:
        backend.close()
    ssl = redis.Redis.from_url(tls_server.url, ssl_ca_certs=str(tls_server.ca_path))
    assert not ssl.exists("scheduler:{untrusted}:state")
    ssl.close()


# -- Redis Cluster ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterNodes]:
    with RedisClusterNodes(masters=3) as nodes:
        yield nodes


def test_claims_on_a_cluster_spread_over_the_nodes_and_are_won_once(
    cluster: RedisClusterNodes,
) -> None:
    settings = Settings(redis_options={"cluster": True}, key_prefix="spread:")
    first = RedisBackend.from_url(cluster.url, settings)
    second = RedisBackend.from_url(cluster.url, settings)
    first.replica_id, second.replica_id = "host:1", "host:2"
    entries = [f"entry-{i:02}" for i in range(50)]
    nodes = [redis.Redis(port=node.port) for node in cluster.nodes]
    slot = slot_after_start(*nodes)
    for client in nodes:
        client.close()
    try:
        batch = [claim(entry, slot) for entry in entries]
        assert outcomes(first, batch) == [ClaimOutcome.WON] * 50
        # Claimed, not yet sent: the other replica must wait (its lease), never win.
        assert outcomes(second, batch) == [ClaimOutcome.PENDING] * 50
        first.mark_sent(batch)
        assert outcomes(first, batch) == [ClaimOutcome.CLAIMED] * 50
        assert outcomes(second, batch) == [ClaimOutcome.CLAIMED] * 50
        marks = second.high_water_marks(entries)
        assert {entry: (mark.slot, mark.sent) for entry, mark in marks.items()} == {
            entry: (slot, True) for entry in entries
        }
        later = [claim(entry, slot + timedelta(seconds=1)) for entry in entries]
        assert outcomes(second, later) == [ClaimOutcome.WON] * 50
        assert outcomes(first, later) == [ClaimOutcome.PENDING] * 50
    finally:
        first.close()
        second.close()
    per_node = []
    for node in cluster.nodes:
        client = redis.Redis(port=node.port)
        per_node.append(len(list(client.scan_iter("spread:*:state"))))
        client.close()
    assert sum(per_node) == 50
    assert all(count > 0 for count in per_node), per_node


def test_both_keys_of_an_entry_live_on_one_cluster_node(cluster: RedisClusterNodes) -> None:
    backend = RedisBackend.from_url(cluster.url, Settings(redis_options={"cluster": True}))
    try:
        for entry in ("a", "b", "some:entry", "{odd}"):
            state = cluster.node_of_key(backend.state_key(entry))
            assert cluster.node_of_key(backend.pending_key(entry)) is state
    finally:
        backend.close()


# -- Sentinel -----------------------------------------------------------------------------------

#: How long the backend may be unavailable or keep using the old master after a failover.
#: The sentinels turn the old master into a replica (closing its clients' connections) about
#: 10-16 s after the switch; clients that stay connected follow only then.
SENTINEL_SWITCH_TIMEOUT = 60.0


@pytest.fixture
def sentinel_group() -> Iterator[RedisSentinelGroup]:
    with RedisSentinelGroup(replicas=1, sentinels=3) as group:
        yield group


def sentinel_backend(group: RedisSentinelGroup, replica: str = "host:1") -> RedisBackend:
    settings = Settings(
        redis_options={
            "master_name": group.master_name,
            "socket_timeout": 2.0,
            "socket_connect_timeout": 2.0,
        }
    )
    backend = RedisBackend.from_url(group.url, settings)
    backend.replica_id = replica
    return backend


def hwm_at(address: tuple[str, int], backend: RedisBackend, entry: str) -> bytes | None:
    client = redis.Redis(host=address[0], port=address[1], socket_timeout=2)
    try:
        value = client.hget(backend.state_key(entry), "hwm")
        return value if isinstance(value, bytes) else None
    finally:
        client.close()


def master_slot_after_start(group: RedisSentinelGroup) -> datetime:
    """:func:`slot_after_start` on the group's current master."""
    host, port = group.master_address()
    master = redis.Redis(host=host, port=port)
    try:
        return slot_after_start(master)
    finally:
        master.close()


def test_claims_through_sentinel_survive_a_failover(sentinel_group: RedisSentinelGroup) -> None:
    first = master_slot_after_start(sentinel_group)
    backend = sentinel_backend(sentinel_group)
    try:
        assert_claims_work(backend, entry="s", slot=first)
        old = sentinel_group.master_address()
        assert hwm_at(old, backend, "s") is not None
        # Let the replica have the claim before the switch (replication is asynchronous).
        master = redis.Redis(host=old[0], port=old[1])
        assert master.wait(1, 5000) == 1
        master.close()

        new = sentinel_group.failover()
        assert new != old
        # The first claim was replicated before the switch: the new master has it.
        assert hwm_at(new, backend, "s") == str(claim("s", first).slot_us).encode()
        # Later slots, never ahead of Redis's clock (at most one per poll: 300 ms in 60 s).
        slots = iter(first + timedelta(milliseconds=i) for i in range(1, 100_000))

        def a_new_claim_lands_on_the_new_master() -> bool:
            slot = next(slots)
            try:
                won = outcomes(backend, [claim("s", slot)]) == [ClaimOutcome.WON]
                backend.mark_sent([claim("s", slot)])
            except BackendUnavailableError:
                return False  # allowed while the switch is under way
            return won and hwm_at(new, backend, "s") == str(claim("s", slot).slot_us).encode()

        poll(
            a_new_claim_lands_on_the_new_master,
            timeout=SENTINEL_SWITCH_TIMEOUT,
            what="claims through Sentinel to reach the new master",
        )
        # The claim of the first slot was replicated: still refused on the new master.
        assert outcomes(backend, [claim("s", first)]) == [ClaimOutcome.CLAIMED]
        # A replica that connects now goes to the new master as well.
        fresh = sentinel_backend(sentinel_group, replica="host:2")
        try:
            assert outcomes(fresh, [claim("s", first)]) == [ClaimOutcome.CLAIMED]
            assert outcomes(fresh, [claim("fresh", first)]) == [ClaimOutcome.WON]
            assert hwm_at(new, fresh, "fresh") is not None
        finally:
            fresh.close()
    finally:
        backend.close()


def test_no_slot_is_won_twice_across_a_sentinel_failover(
    sentinel_group: RedisSentinelGroup,
) -> None:
    first = master_slot_after_start(sentinel_group)
    connected = sentinel_backend(sentinel_group, replica="host:1")
    try:
        # holds a connection to the master
        assert_claims_work(connected, entry="split", slot=first)
        sentinel_group.failover()
        fresh = sentinel_backend(sentinel_group, replica="host:2")
        try:
            slot = first + timedelta(seconds=1)
            winners = []
            for backend in (connected, fresh):
                try:
                    if outcomes(backend, [claim("split", slot)])[0].publish:
                        winners.append(backend.replica_id)
                except BackendUnavailableError:
                    pass  # failing closed is fine; winning twice is not
            assert len(winners) <= 1, f"slot won by {winners}"
        finally:
            fresh.close()
    finally:
        connected.close()


def test_unreachable_sentinels_fail_fast() -> None:
    """The sentinel connections get the backend's timeouts and no retries of redis-py's own.

    Without them redis-py retries each sentinel with back-off (about 4 s per sentinel, and
    without any connect timeout for a host that drops packets), and a tick blocks that long
    for every one of the backend's own retries.
    """
    url = ";".join(f"sentinel://127.0.0.1:{free_port()}" for _ in range(3))
    backend = RedisBackend.from_url(
        url, Settings(max_retries=0, redis_options={"master_name": "mymaster"})
    )
    try:
        began = time.monotonic()
        with pytest.raises(BackendUnavailableError):
            backend.claim([claim("a", PAST)])
        assert time.monotonic() - began < 3.0
    finally:
        backend.close()


def test_a_scheduler_on_a_cluster_closed_twice_as_celery_does_on_a_stop_closes_quietly(
    cluster: RedisClusterNodes,
) -> None:
    """Celery closes beat's scheduler from its sync handler and again when the service ends;
    the second close used the closed cluster client (``AttributeError``: beat logged a
    CRITICAL line and exited 1 on every stop). Found by benchmarks/scaling.py."""
    app = Celery("twice", broker="memory://", set_as_current=False)
    app.conf.update(
        fork_scheduler_redis_url=cluster.url,
        fork_scheduler_redis_options={"cluster": True},
        beat_schedule={"e": {"task": "t", "schedule": 60.0}},
    )
    scheduler = Scheduler(app=app)
    scheduler.tick()
    scheduler.close()
    scheduler.close()
