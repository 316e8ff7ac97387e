"""Security properties against real Redis servers and a real ``celery beat``.

- Stored data is JSON (or plain text) only: never pickle, never unpickled.
- Passwords are masked in ``describe()``, in errors and in beat's log.
- Two apps with different ``fork_scheduler_key_prefix`` on one Redis never see each other.
- A Redis ACL user limited to the prefix and to :data:`ACL_COMMANDS` runs every part
  (claims, the Manager, the worker's release scripts) and is refused everything else.
- TLS (``rediss://``) configured through the settings reaches the Manager and the scheduler.

The servers come from :mod:`celery_fork_scheduler.testing` (TLS and helpers shared with
``test_redis_connections.py``, which covers the claim backend alone).
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import textwrap
import time as _time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
import replica_helpers
from celery import Celery

from celery_fork_scheduler import Manager, every
from celery_fork_scheduler.backends import Claim, ClaimOutcome, lua
from celery_fork_scheduler.backends.base import to_epoch_us
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.backends.redis_connection import client_from_url, mask_url
from celery_fork_scheduler.config import Settings
from celery_fork_scheduler.errors import BackendUnavailableError, ConfigError
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.testing import (
    CeleryProcess,
    FakeClock,
    RedisServer,
    free_port,
    wait_until,
)
from celery_fork_scheduler.testing.redis_topologies import TlsRedis
from celery_fork_scheduler.worker import Run, WorkerHooks

UTC = timezone.utc
START = "2026-03-02T10:00:00.300+00:00"
SECRET = "s3cretpass"
PACKAGE = Path(__file__).resolve().parents[1] / "celery_fork_scheduler"

#: The commands an ACL user needs for everything: beat (claims, runtime entries, replica
#: records), the Manager and the worker hooks. Found by running :func:`exercise_everything`
#: with each one removed (``test_each_acl_command_is_needed``). The Lua scripts run with the
#: caller's rights, so the commands they call count too.
ACL_COMMANDS = (
    # scripts: the backend and the store use EVALSHA (SCRIPT LOAD once, on NOSCRIPT); the
    # worker, run_now and record_outcome use EVAL
    "evalsha", "eval", "script|load",
    # called by the Lua scripts
    "time", "hget", "hset", "hdel", "hincrby", "hexists", "pexpire", "set", "get", "del",
    "exists", "incr", "lpush", "ltrim", "zadd", "zscore", "zcard", "zremrangebyscore",
    # the queue of overlap buffer_all (a list; a message held by buffer_one is a string)
    "type", "rpush", "lpop", "llen",
    # when Redis may have lost its data (its start time, unless flushed): asked by the first
    # claim of every entry without a mark, so without it claims fail closed
    "info",
    # called directly (hkeys: the unsent claims read at start-up; hscan: the runtime entries
    # read page by page; persist and pexpire: the keys of a removed runtime entry expire, and a
    # new put of its name keeps them again)
    "hmget", "hkeys", "hgetall", "hscan", "persist", "zrange", "zrangebyscore", "zrem",
    "lrange", "ping",
)  # fmt: skip
#: Commands that are called, but whose lack is not (yet) visible in what the exercise checks.
ACL_COMMANDS_NOT_PROVEN: tuple[str, ...] = ()


def acl_rule(commands: tuple[str, ...], prefix: str = "scheduler:") -> list[str]:
    return ["on", f">{SECRET}", "resetkeys", f"~{prefix}*", "resetchannels", "-@all"] + [
        f"+{command}" for command in commands
    ]


# -- helpers ---------------------------------------------------------------------------------------


def make_app(redis_url: str, beat_schedule: dict[str, Any] | None = None, **conf: Any) -> Celery:
    app = replica_helpers.make_app(redis_url, beat_schedule or {}, main="security", **conf)
    return app


class Replica(replica_helpers.SteppedReplica):
    """One Scheduler with a fake clock and a recording publisher."""

    def __init__(self, app: Celery, clock: FakeClock | None = None) -> None:
        super().__init__(app.conf.fork_scheduler_redis_url, app, clock)

    def fired(self, entry: str | None = None) -> list[str]:
        return self.publisher.fired(entry)


def clock_after_start(client: redis.Redis) -> FakeClock:
    """A fake clock 3 s behind Redis's own (at its current second + 0.3 s), once Redis has been
    up 5 s: as on a long-running Redis, its slots are after the start and, for a few seconds of
    ticks, not ahead of Redis's clock.

    A never-flushed server knows that it lost nothing after its start, so the claim of an
    entry without a mark restores one at its start time + the early tolerance and refuses
    every slot up to it (another replica may have won it just before a restart): slots at
    ``START`` would never fire. Redis counts its uptime from the second it started in, so the
    restored mark is less than 1.5 s after that second: the clock starts at least 2.3 s after
    it.
    """
    wait_until(
        lambda: int(client.info("server")["uptime_in_seconds"]) >= 5,
        timeout=30,
        what="Redis to be up for 5 s",
    )
    seconds, _ = client.time()
    return FakeClock(datetime.fromtimestamp(seconds, tz=UTC) - timedelta(seconds=2.7))


def every_value(client: redis.Redis) -> Iterator[tuple[bytes, bytes]]:
    """(key, raw item) for every stored byte string: values, hash fields, members, items."""
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"string":
            yield key, client.get(key) or b""
        elif kind == b"hash":
            for field, value in client.hgetall(key).items():
                yield key, field
                yield key, value
        elif kind == b"list":
            for item in client.lrange(key, 0, -1):
                yield key, item
        elif kind == b"zset":
            for member, _ in client.zrange(key, 0, -1, withscores=True):
                yield key, member
        elif kind == b"set":
            for member in client.smembers(key):
                yield key, member
        else:
            yield key, f"unexpected type {kind!r}".encode()


def assert_json_or_text(key: bytes, raw: bytes) -> None:
    assert not raw.startswith(b"\x80"), f"{key!r} holds a pickle: {raw[:40]!r}"
    text = raw.decode("utf-8")  # no binary blobs either
    if text[:1] in ("{", "[", '"'):
        json.loads(text)
    else:
        assert text.isprintable() or text == "", f"{key!r} holds {text[:60]!r}"


# -- stored data is JSON only ----------------------------------------------------------------------


def test_the_package_never_imports_a_code_deserializer() -> None:
    pattern = re.compile(r"^\s*(import|from)\s+(pickle|cPickle|_pickle|shelve|marshal|dill|yaml)\b")
    offenders = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in PACKAGE.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.match(line)
    ]
    assert offenders == []


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any unpickling in this process fail loudly."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("something tried to unpickle")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)


def test_every_key_the_scheduler_writes_holds_json_or_plain_text(
    redis_url: str, redis_client: redis.Redis, no_unpickling: None
) -> None:
    static = {
        "plain": {"task": "t", "schedule": every(1).seconds, "kwargs": {"ü": [1, 2.5, None]}},
        "single": {"task": "t", "schedule": every(1).seconds, "overlap": "skip"},
        "buffered": {"task": "t", "schedule": every(1).seconds, "overlap": "buffer_one"},
        "limited": {"task": "t", "schedule": every(1).seconds, "max_runs": 1},
    }
    app = make_app(redis_url, static, fork_scheduler_max_concurrent=50)
    manager = Manager(app, clock=FakeClock(START))
    manager.add("runtime", "t", "every 2 seconds", args=[1, "two"], tags=["ü"], description="d")
    manager.pause("plain", note="maintenance ✓")
    replica = Replica(app)
    try:
        replica.run(4)
        assert replica.fired("runtime") and replica.fired("single")
        claim = Claim("plain", datetime(2026, 1, 1, tzinfo=UTC), "id-1")
        replica.scheduler.backend.record_failure(claim, RuntimeError("boom \x00 ü"))
    finally:
        replica.close()
    hooks = WorkerHooks(app)
    hooks._mark_seen()
    task_id = redis_client.get(Keys("scheduler:").running("single"))
    assert task_id is not None
    hooks._finish(Run("single", "", task_id.decode(), 0.0, True, True, "w@h"))
    slot = replica.publisher.occurrences[0].slot.isoformat()
    hooks._record(
        Run("single", slot, task_id.decode(), 0.0, True, True, "w@h"), "error", "errors",
        duration=0.5, error="ValueError: ü",
    )  # fmt: skip
    manager.run_now("runtime")

    written = list(every_value(redis_client))
    assert {key.split(b"{")[0] for key, _ in written} == {b"scheduler:"}
    for key, raw in written:
        assert_json_or_text(key, raw)
    entries = redis_client.hgetall(Keys("scheduler:").runtime_entries)
    assert json.loads(entries[b"runtime"])["schema"] == 1


class _Tripwire:
    """Unpickling this touches ``path``: proof that someone unpickled stored data."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.touch, (self.path,))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_a_pickle_planted_in_redis_is_never_unpickled(
    redis_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    protocol: int,
) -> None:
    tripwire = tmp_path / "unpickled"
    payload = pickle.dumps(_Tripwire(tripwire), protocol=protocol)
    keys = Keys("scheduler:")
    version = redis_client.incr(keys.runtime_version)
    redis_client.hset(keys.runtime_entries, "planted", payload)
    redis_client.zadd(keys.runtime_changes, {"planted": version})
    redis_client.rpush(keys.history("fine"), payload)
    app = make_app(redis_url, {"fine": {"task": "t", "schedule": every(1).seconds}})
    with caplog.at_level(logging.ERROR, logger="celery_fork_scheduler"):
        replica = Replica(app)
        try:
            replica.run(2)
        finally:
            replica.close()
        manager = Manager(app, clock=FakeClock(START))
        assert [job.name for job in manager.jobs()] == ["fine"]
        with pytest.raises(ValueError):  # a history item that is not JSON is an error
            manager.history("fine")
    assert replica.fired("fine")
    assert not tripwire.exists()
    assert any("'planted'" in r.getMessage() for r in caplog.records)


# -- passwords are masked --------------------------------------------------------------------------

MASKED_URLS = [
    f"redis://:{SECRET}@127.0.0.1:{{port}}/0",
    f"redis://fork:{SECRET}@127.0.0.1:{{port}}/3",
    f"rediss://fork:{SECRET}@127.0.0.1:{{port}}/0",
    f"redis://fork:{quote(SECRET + '/@:%?#', safe='')}@127.0.0.1:{{port}}/0",
    f"unix://:{SECRET}@/nonexistent/redis.sock?db=0",
]


@pytest.mark.parametrize("template", MASKED_URLS)
def test_describe_and_backend_errors_never_show_the_password(template: str) -> None:
    url = template.format(port=free_port())
    assert SECRET not in mask_url(url)
    settings = Settings(max_retries=1, redis_options={"socket_connect_timeout": 1})
    backend = RedisBackend.from_url(url, settings)
    try:
        described = backend.describe()
        assert SECRET not in described and "**" in described
        with pytest.raises(BackendUnavailableError) as unreachable:
            backend.claim([Claim("a", datetime(2026, 1, 1, tzinfo=UTC), "id")])
    finally:
        backend.close()
    assert SECRET not in str(unreachable.value)
    assert "unreachable" in str(unreachable.value)


@pytest.fixture(scope="module")
def password_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        admin = redis.Redis(port=server.port)
        admin.config_set("requirepass", "the-right-one")
        admin.close()
        yield server


def test_a_refused_password_is_not_shown(password_server: RedisServer) -> None:
    url = f"redis://:{SECRET}@127.0.0.1:{password_server.port}/0"
    backend = RedisBackend.from_url(url, Settings(max_retries=0))
    try:
        with pytest.raises(BackendUnavailableError) as refused:
            backend.claim([Claim("a", datetime(2026, 1, 1, tzinfo=UTC), "id")])
    finally:
        backend.close()
    assert SECRET not in str(refused.value)
    manager = Manager(make_app(url))
    with pytest.raises(redis.RedisError) as direct:
        manager.jobs()
    assert SECRET not in str(direct.value)


@pytest.mark.parametrize(
    "url", [f"redis://:{SECRET}@127.0.0.1:notaport/0", f"redis://:{SECRET}@127.0.0.1:99999/0"]
)
def test_a_malformed_url_is_a_config_error_without_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        client_from_url(url)
    assert refused.value.field == "fork_scheduler_redis_url"
    assert SECRET not in str(refused.value)


def test_beat_never_logs_the_password(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    (tmp_path / "secapp.py").write_text(
        textwrap.dedent(
            f"""
            from celery import Celery

            app = Celery("secapp", broker="memory://")
            app.conf.update(
                timezone="UTC",
                beat_schedule={{"tick": {{"task": "t", "schedule": 1.0}}}},
                fork_scheduler_redis_url="redis://:{SECRET}@127.0.0.1:{port}/0",
                fork_scheduler_max_retries=1,
                fork_scheduler_retry_delay=0.05,
                fork_scheduler_redis_options={{"socket_connect_timeout": 1}},
            )
            """
        )
    )
    beat = CeleryProcess.beat(
        "secapp:app", cwd=tmp_path, workdir=tmp_path, extra_args=["-l", "debug"]
    )
    with beat:
        wait_until(
            lambda: "unreachable" in beat.log(), timeout=60, what="beat to report Redis down"
        )
        _time.sleep(1.5)  # a few more ticks, retries and warnings
    log = beat.log()
    assert f"127.0.0.1:{port}" in log  # the URL is shown, masked
    assert SECRET not in log
    assert quote(SECRET) not in log


# -- key prefix isolation --------------------------------------------------------------------------


def test_two_prefixes_on_one_redis_never_see_each_other(
    redis_url: str, redis_client: redis.Redis
) -> None:
    static = {"shared": {"task": "t", "schedule": every(1).seconds}}
    app_a = make_app(redis_url, static, fork_scheduler_key_prefix="alpha:")
    app_b = make_app(redis_url, static, fork_scheduler_key_prefix="beta:")
    clock = FakeClock(START)
    manager_a, manager_b = Manager(app_a, clock=clock), Manager(app_b, clock=clock)
    manager_a.add("runtime", "t", every(1).seconds, tags=["a"])
    manager_a.add("only-a", "t", every(1).seconds)
    manager_b.add("runtime", "t", every(2).seconds, tags=["b"])
    manager_b.pause("shared", note="b only")
    manager_b.pause("runtime")

    assert [job.name for job in manager_a.jobs()] == ["only-a", "runtime", "shared"]
    assert [job.name for job in manager_b.jobs()] == ["runtime", "shared"]
    assert manager_a.get("runtime").tags == {"a"}
    assert not manager_a.is_paused("shared").paused and manager_b.is_paused("shared").paused

    replica_a, replica_b = Replica(app_a, clock), Replica(app_b, clock)
    try:
        for _ in range(12):
            clock.advance(0.25)
            for replica in (replica_a, replica_b):
                replica.monotonic += 0.25
                replica.scheduler.tick()
    finally:
        replica_a.close()
        replica_b.close()
    # Claims are per prefix: both apps publish "shared" at each slot, A only once per slot.
    assert len(replica_a.fired("shared")) == len(set(replica_a.fired("shared"))) >= 2
    assert replica_a.fired("runtime") and replica_a.fired("only-a")
    assert replica_b.fired("shared") == [] and replica_b.fired("runtime") == []
    assert replica_b.fired("only-a") == []

    assert manager_b.remove("runtime")
    assert [job.name for job in manager_a.jobs()] == ["only-a", "runtime", "shared"]
    assert manager_a.clear() == 2 and [job.name for job in manager_b.jobs()] == ["shared"]
    # (The workers' heartbeat key of an earlier test's in-process worker may still be written.)
    written = [key for key in redis_client.scan_iter() if not key.endswith(b"{workers}:seen")]
    assert {key.split(b"{")[0] for key in written} == {b"alpha:", b"beta:"}


# -- ACL user --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def acl_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def set_acl(server: RedisServer, rule: list[str]) -> str:
    """(Re)create user ``fork`` with ``rule``; flush the data and the script cache."""
    admin = redis.Redis(port=server.port)
    admin.execute_command("ACL", "DELUSER", "fork")
    admin.execute_command("ACL", "SETUSER", "fork", *rule)
    admin.flushall()
    admin.script_flush()
    admin.close()
    return f"redis://fork:{SECRET}@127.0.0.1:{server.port}/0"


def exercise_everything(url: str, admin: redis.Redis) -> None:
    """Every Redis operation of beat, the Manager and the worker hooks, checked by effect
    (several of them log and carry on when Redis refuses, by design)."""
    keys = Keys("scheduler:")
    static = {
        "static": {"task": "t", "schedule": every(1).seconds},
        "single": {"task": "t", "schedule": every(1).seconds, "overlap": "buffer_one"},
    }
    app = make_app(
        url,
        static,
        fork_scheduler_max_concurrent=100,
        fork_scheduler_max_retries=0,
        fork_scheduler_redis_options={"health_check_interval": 0.01},
    )
    clock = FakeClock(START)
    manager = Manager(app, clock=clock)
    manager.add("rt", "t", every(1).seconds, tags=["x"])
    manager.add("gone", "t", every(1).minutes)
    manager.update("rt", description="changed")
    assert manager.get("rt").description == "changed"
    assert {job.name for job in manager.jobs()} == {"gone", "rt", "single", "static"}
    manager.pause("gone", note="n")
    assert manager.is_paused("gone").paused
    manager.resume("gone")
    assert manager.tagged("x").runtime == ["rt"]  # the tag index (ZRANGE BYLEX)
    assert manager.remove("gone")
    manager.add("gone", "t", every(1).minutes)  # added again: its kept keys lose their expiry
    assert manager.remove("gone")
    assert manager.next_runs("rt", 2)

    replica = Replica(app, clock)
    try:
        replica.run(1)
        manager.add("late", "t", every(1).seconds)  # seen by polling the change log
        replica.run(2)
        _time.sleep(0.05)  # the next command runs a connection health check (PING) first
        replica.run(1)
        fired = {o.entry for o in replica.publisher.occurrences}
        assert {"static", "single", "rt", "late"} <= fired
        assert admin.hlen(keys.replicas) == 1
        backend = replica.scheduler.backend
        # what a restarting replica reads first (beat only warns when it cannot)
        assert backend.high_water_marks(["static"])["static"].sent
        slot = datetime(2020, 1, 1, tzinfo=UTC)
        won = Claim("manual", slot, task_id_for("manual", slot))
        assert [r.outcome for r in backend.claim([won])] == [ClaimOutcome.WON]
        backend.mark_skipped([won], "capped")
        assert admin.hget(keys.state("manual"), "state") == b"skipped"
        backend.record_failure(won, RuntimeError("x"))
        assert admin.hget(keys.state("manual"), "failures") == b"1"
        # a mark Redis lost (restarted empty) is written back from the one a replica knew
        lost = Claim("lost", slot, task_id_for("lost", slot), known_mark_us=to_epoch_us(slot))
        assert [r.outcome for r in backend.claim([lost])] == [ClaimOutcome.CLAIMED]
        assert admin.hget(keys.state("lost"), "reason") == b"restored"
        # buffer_all: a slot queued behind the run in progress, in a list
        queued = Claim(
            "queued",
            slot,
            task_id_for("queued", slot),
            overlap="buffer_all",
            held_message=json.dumps({"task_id": "next"}),
        )
        admin.set(keys.running("queued"), "runner")
        assert [r.outcome for r in backend.claim([queued])] == [ClaimOutcome.BUFFERED]
    finally:
        replica.close()
    assert manager.history("rt") and manager.stats("rt").runs >= 1
    assert manager.run_now("rt") is not None

    hooks = WorkerHooks(app)
    hooks._mark_seen()
    assert admin.exists(keys.workers_seen)
    running = admin.get(keys.running("single"))
    assert running is not None
    task_id = running.decode()
    assert hooks.client.eval(lua.HEARTBEAT, 1, keys.running("single"), task_id, 60_000) == 1
    admin.zadd(keys.cap, {task_id: 1})
    assert hooks.client.eval(lua.CAP_HEARTBEAT, 1, keys.cap, task_id, 60_000) == 1
    admin.set(keys.buffered("single"), json.dumps({"task_id": "held"}))
    hooks._finish(Run("single", "", task_id, 0.0, False, True, "w@h"))
    assert admin.zscore(keys.cap, task_id) is None
    published: list[Any] = []
    hooks._publish_held = published.append  # type: ignore[method-assign]
    hooks._finish(Run("single", "", task_id, 0.0, True, False, "w@h"))
    assert admin.get(keys.running("single")) == b"held" and len(published) == 1
    hooks._finish(Run("queued", "", "runner", 0.0, True, False, "w@h"))
    assert admin.get(keys.running("queued")) == b"next" and len(published) == 2
    run = Run("single", "2026-03-02T10:00:01+00:00", task_id, 0.0, True, False, "w@h")
    hooks._record(run, "completed", "completed", duration=0.1)
    assert admin.hget(keys.state("single"), "completed") == b"1"
    assert manager.clear() == 2


def test_an_acl_user_with_only_the_listed_commands_runs_everything(
    acl_server: RedisServer,
) -> None:
    url = set_acl(acl_server, acl_rule(ACL_COMMANDS))
    admin = redis.Redis(port=acl_server.port)
    try:
        exercise_everything(url, admin)
    finally:
        admin.close()


@pytest.mark.parametrize("missing", [c for c in ACL_COMMANDS if c not in ACL_COMMANDS_NOT_PROVEN])
def test_each_acl_command_is_needed(acl_server: RedisServer, missing: str) -> None:
    url = set_acl(acl_server, acl_rule(tuple(c for c in ACL_COMMANDS if c != missing)))
    admin = redis.Redis(port=acl_server.port)
    try:
        with pytest.raises((AssertionError, redis.RedisError, BackendUnavailableError)):
            exercise_everything(url, admin)
    finally:
        admin.close()


def test_the_acl_user_is_refused_outside_the_prefix_and_dangerous_commands(
    acl_server: RedisServer,
) -> None:
    url = set_acl(acl_server, acl_rule(ACL_COMMANDS))
    admin = redis.Redis(port=acl_server.port)
    admin.set("other:secret", "x")
    user = redis.Redis.from_url(url)
    try:
        for command in (
            ("GET", "other:secret"),
            ("SET", "other:secret", "y"),
            ("DEL", "other:secret"),
            ("HSET", "other:{runtime}:entries", "a", "{}"),
            ("EVAL", "return redis.call('GET', KEYS[1])", 1, "other:secret"),
            ("EVAL", "return redis.call('GET', 'other:secret')", 0),
            ("FLUSHDB",),
            ("FLUSHALL",),
            ("KEYS", "*"),
            ("SCAN", 0),
            ("CONFIG", "GET", "*"),
            ("SCRIPT", "FLUSH"),
            ("ACL", "LIST"),
            ("PUBLISH", "channel", "x"),
        ):
            with pytest.raises(redis.ResponseError) as refused:
                user.execute_command(*command)
            message = str(refused.value).lower()
            assert "permission" in message or "can't access" in message, message
        assert admin.get("other:secret") == b"x"
        # The Manager of an app whose prefix the user may not touch fails, and stores nothing.
        other = Manager(make_app(url, fork_scheduler_key_prefix="other:"))
        with pytest.raises(redis.exceptions.NoPermissionError):
            other.add("rt", "t", every(1).seconds)
        assert admin.keys("other:*") == [b"other:secret"]
    finally:
        user.close()
        admin.close()


def test_the_broad_acl_line_would_let_the_user_flush_the_server(acl_server: RedisServer) -> None:
    """Why the documented ACL lists commands: ``+@write`` includes FLUSHALL, which has no key
    to check against the pattern, and ``+script`` includes SCRIPT FLUSH."""
    broad = ["on", f">{SECRET}", "~scheduler:*", "+@read", "+@write", "+evalsha", "+eval"]
    url = set_acl(acl_server, [*broad, "+script", "+time", "+ping", "+info"])
    admin = redis.Redis(port=acl_server.port)
    admin.set("other:precious", "x")
    user = redis.Redis.from_url(url)
    try:
        user.execute_command("FLUSHALL")
        assert admin.get("other:precious") is None
    finally:
        user.close()
        admin.close()


# -- TLS through the settings ----------------------------------------------------------------------


def test_beat_and_the_manager_work_over_tls_configured_in_the_settings() -> None:
    with TlsRedis() as server:
        direct = redis.Redis.from_url(server.url, ssl_ca_certs=str(server.ca_path))
        clock = clock_after_start(direct)
        direct.close()
        app = make_app(
            server.url,
            {"static": {"task": "t", "schedule": every(1).seconds}},
            fork_scheduler_redis_options={"ssl_ca_certs": str(server.ca_path)},
        )
        manager = Manager(app, clock=clock)
        manager.add("rt", "t", every(1).seconds)
        replica = Replica(app, clock)
        try:
            replica.run(2)
        finally:
            replica.close()
        assert replica.fired("static") and replica.fired("rt")
        assert manager.stats("rt").runs >= 1
        untrusted = Manager(make_app(server.url))
        with pytest.raises(redis.ConnectionError):
            untrusted.jobs()
