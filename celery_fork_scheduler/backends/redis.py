"""The Redis claim backend: any number of replicas, each slot published exactly once.

Key layout and scripts: :mod:`.lua`. Claims for a burst of due entries go in one pipeline of
``EVALSHA`` calls (one round trip per batch). Connection errors are retried
``fork_scheduler_max_retries`` times ``fork_scheduler_retry_delay`` apart, then raised as
:class:`~celery_fork_scheduler.errors.BackendUnavailableError` so the tick publishes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import redis
from redis.client import Pipeline
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoPermissionError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.sentinel import SentinelConnectionPool

from ..config import Settings
from ..errors import BackendUnavailableError
from ..keys import Keys
from ..outages import KEPT_OUTAGES, Outage
from ..store import RuntimeStore
from ..store_shards import ShardedStore, runtime_store
from . import lua
from .base import (
    Claim,
    ClaimOutcome,
    ClaimResult,
    HighWaterMark,
    Restart,
    from_epoch_us,
    replica_identity,
    to_epoch_us,
)
from .redis_connection import client_from_url, mask_url

T = TypeVar("T")

logger = logging.getLogger("celery_fork_scheduler")

#: A slot may be claimed this early by Redis TIME (clocks of replicas and Redis differ a little).
EARLY_TOLERANCE = timedelta(microseconds=lua.EARLY_TOLERANCE_US)
#: Pending-claim records expire after this long without a new claim of the entry.
PENDING_TTL = timedelta(days=7)
#: A pending claim this old is dropped when a later slot of its entry is won: its owner died
#: (even mid-publish) long ago, and no catch-up publishes a slot that old.
PENDING_CLAIM_MAX_AGE = timedelta(days=1)
#: How often a Sentinel-backed replica checks where the master is.
MASTER_CHECK_SECONDS = 1.0
#: Errors that mean "Redis cannot be reached right now".
CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError)
#: Errors that mean "the cluster layout changed": refresh it and try again.
CLUSTER_REDIRECTS = (AskError, ClusterDownError, MovedError, TryAgainError)
#: Codes of plain error replies that refuse every command, not one claim: the whole call fails.
#: Also looked for in the error of a command a script called (6.2 wraps it in the script's
#: location, which :data:`SCRIPT_LOCATION` takes off).
SERVER_WIDE_ERRORS = frozenset(
    {"MISCONF", "BUSY", "NOREPLICAS", "MASTERDOWN", "OOM", "READONLY", "NOPERM"}
)
#: Where Redis 6.2 says a script's error came from (redis-py has taken the ``ERR`` code off).
SCRIPT_LOCATION = re.compile(
    r"(?:ERR )?(?:Error running script \(call to f_[0-9a-f]+\): )?(?:@user_\w+: ?\d+: )*"
)
#: How Redis words an ACL refusal of a command that a script called, after the location: 6.2
#: and 7.0 "The user executing the script can't run this command or subcommand" (or "can't
#: access at least one of the keys"), 7.2 and later "ACL failure in script: ...". Matched at
#: the start only, so that a value quoted in the error of one entry (a corrupted hwm) never is.
SCRIPT_ACL_REFUSALS = ("The user executing the script can't ", "ACL failure in script:")


class RedisBackend:
    """Claims, high-water marks and send records in Redis."""

    protects_replicas = True

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        settings: Settings,
        *,
        display_url: str = "redis",
        sleep: Callable[[float], None] = time.sleep,
        owns_client: bool = False,
    ) -> None:
        self.client = client
        self.settings = settings
        self.prefix = settings.key_prefix
        self.keys = Keys(settings.key_prefix)
        self.replica_id = replica_identity()
        self.display_url = display_url
        self._sleep = sleep
        self._owns_client = owns_client
        self._claim_script = client.register_script(lua.CLAIM)
        self._begin_publish_script = client.register_script(lua.BEGIN_PUBLISH)
        self._end_fence_script = client.register_script(lua.END_FENCE)
        self._mark_sent_script = client.register_script(lua.MARK_SENT)
        self._mark_skipped_script = client.register_script(lua.MARK_SKIPPED)
        self._record_failure_script = client.register_script(lua.RECORD_FAILURE)
        self._take_cap_script = client.register_script(lua.TAKE_CAP_PLACES)
        self._publish_once_script = client.register_script(lua.PUBLISH_ONCE)
        self._claim_many_script = client.register_script(lua.CLAIM_MANY)
        self._publish_once_many_script = client.register_script(lua.PUBLISH_ONCE_MANY)
        self._singleton_lease_ms = _us(settings.singleton_lease) // 1000
        self._lease_us = _us(settings.claim_lease)
        # a replica reads a change within a refresh: one that refreshes rarely is fenced longer
        self._change_fence_us = 2 * _us(settings.refresh_interval)
        self._tolerance_us = _us(EARLY_TOLERANCE)
        self._pending_ttl_ms = _us(PENDING_TTL) // 1000
        self._pending_max_age_us = _us(PENDING_CLAIM_MAX_AGE)
        self._next_master_check = 0.0
        self._wait: tuple[int, int] | None = None
        if settings.wait_replicas > 0:
            self._wait = (settings.wait_replicas, int(settings.wait_timeout.total_seconds() * 1000))

    @classmethod
    def from_url(
        cls, url: str, settings: Settings, transport_options: Mapping[str, Any] | None = None
    ) -> RedisBackend:
        """A backend with its own client for ``url`` (closed by :meth:`close`)."""
        client = client_from_url(url, settings.redis_options, transport_options)
        return cls(client, settings, display_url=mask_url(url), owns_client=True)

    def describe(self) -> str:
        """The startup banner line (password masked)."""
        return f"redis {self.display_url} (prefix {self.prefix!r}, replica {self.replica_id})"

    # -- keys -------------------------------------------------------------------------------

    def state_key(self, entry: str) -> str:
        """The state hash of ``entry``."""
        return self.keys.state(entry)

    def pending_key(self, entry: str) -> str:
        """The hash of claimed, not yet published slots of ``entry``."""
        return self.keys.pending(entry)

    # -- operations -------------------------------------------------------------------------

    def last_restart(self) -> Restart | None:
        """Redis's start, from its uptime in whole seconds (the latest it can have been, as
        the claim script counts it); ``None`` on Redis Cluster (each node started on its
        own)."""
        if isinstance(self.client, RedisCluster):
            return None

        def read() -> Restart:
            server = self.client.info("server")
            now_us = int(server.get("server_time_usec") or 0) or to_epoch_us(self.server_time())
            second = now_us // 1_000_000 * 1_000_000
            start = min(now_us, second - int(server["uptime_in_seconds"]) * 1_000_000 + 1_000_000)
            return Restart(from_epoch_us(start))

        return self._retrying(read)

    def high_water_marks(self, entries: Sequence[str]) -> dict[str, HighWaterMark]:
        """The latest claimed slot of each entry that has one, whether it was sent, every
        unsent claim and whether the entry finished (one pipeline); an entry whose stored
        state cannot be read is skipped with an error naming it."""
        commands: list[Command] = []
        for entry in entries:
            state, pending = self.state_key(entry), self.pending_key(entry)
            commands.append((state, partial(_hmget, key=state, fields=_MARK_FIELDS)))
            commands.append((pending, partial(_hgetall, key=pending)))
        values = self._retrying(partial(self._pipelined, commands))
        own = f"{self.replica_id}|"
        marks = {}
        for index, entry in enumerate(entries):
            fields, pending = values[2 * index], values[2 * index + 1]
            try:
                for reply in (fields, pending):
                    if isinstance(reply, Exception):
                        raise reply
                slot, state, finished = fields
                if slot is None:
                    continue
                marks[entry] = HighWaterMark(
                    from_epoch_us(int(slot)),
                    sent=_text(state) != "claimed",
                    unsent=tuple(sorted(from_epoch_us(int(field)) for field in pending)),
                    finished=finished is not None,
                    own_fenced=tuple(
                        sorted(
                            from_epoch_us(int(field))
                            for field, claim in pending.items()
                            if _text(claim).startswith(own) and _text(claim).endswith(lua.FENCED)
                        )
                    ),
                )
            except (ValueError, OverflowError, ResponseError) as exc:
                logger.error(
                    "fork scheduler: state of entry %r cannot be read, skipped: %s", entry, exc
                )
        return marks

    @property
    def concurrent_calls(self) -> bool:
        """Whether its calls may run in two threads at once (see :mod:`..lane`): each holds
        its own connection from the client's pool while it runs, so the pool must allow two
        (``fork_scheduler_redis_options = {"max_connections": 1}`` keeps every call in beat's
        own thread)."""
        limit = _pool_limit(self.client)
        return limit is None or limit >= 2

    def claim(self, claims: Sequence[Claim]) -> list[ClaimResult]:
        """Claim every slot in one script call (one pipeline per node on Redis Cluster); see
        :data:`.lua.CLAIM`."""
        return self.claim_and_send(claims, [None] * len(claims))

    def claim_and_send(
        self,
        claims: Sequence[Claim],
        sends: Sequence[Sequence[tuple[str, tuple[Any, ...]]] | None],
    ) -> list[ClaimResult]:
        """Claim every slot in one script call; a slot with broker commands in ``sends``
        (overlap ``allow`` or ``skip``) that is won anew is published and recorded in the same
        step: outcome ``sent``, with no instant at which it is claimed but not sent. Only when
        the broker shares this Redis (:meth:`shares_redis_with`). See :data:`.lua.CLAIM`."""
        self._follow_sentinel_master()
        items = [self._claim_item(claim, send) for claim, send in zip(claims, sends, strict=True)]
        replies = self._each_item(
            self._claim_script, self._claim_many_script, items, asked_again=ASKED_AGAIN_ARG
        )
        return [
            ClaimResult(claim, ClaimOutcome.ERROR, error=str(reply))
            if isinstance(reply, Exception)
            else _claim_result(claim, reply)
            for claim, reply in zip(claims, replies, strict=True)
        ]

    def _claim_item(
        self, claim: Claim, send: Sequence[tuple[str, tuple[Any, ...]]] | None
    ) -> tuple[list[str], list[Any]]:
        keys = self.keys.entry_keys(claim.entry)
        args: list[Any] = [
            claim.slot_us,
            claim.task_id,
            self.replica_id,
            self._tolerance_us,
            self._lease_us,
            self._pending_ttl_ms,
            claim.overlap,
            claim.max_runs,
            self._singleton_lease_ms,
            claim.held_message,
            self.settings.history_size,
            "1" if claim.takeover else "0",
            claim.known_mark_us,
            self._pending_max_age_us,
            _runtime_arg(claim, self._change_fence_us),
            "1" if claim.excluded else "0",
            self.settings.buffer_limit,
            "0",  # ASKED_AGAIN_ARG: "1" once the request is sent again (see _each_item)
            claim.offset_us,
        ]
        if send:
            args.append(len(send))
            _add_commands(keys, args, send)
        return keys, args

    def begin_publish(self, claims: Sequence[Claim]) -> list[bool]:
        """Fence won claims before publishing; see :data:`.lua.BEGIN_PUBLISH`."""
        commands = [
            self._script_command(
                self._begin_publish_script, claim.entry, claim.slot_us, self.replica_id
            )
            for claim in claims
        ]
        replies = self._retrying(partial(self._pipelined, commands, acknowledged=True))
        _log_errors("fenced", claims, replies)
        return [not isinstance(reply, Exception) and int(reply) == 1 for reply in replies]

    def shares_redis_with(self, broker_client: Any) -> bool:
        """True when ``broker_client`` (a Kombu Redis channel's client) reaches this backend's
        Redis server and database: a key written here is read there. Then each slot can be
        fenced, published and recorded in one script (:meth:`publish_once`). Never with Redis
        Cluster (a message's queue and an entry's keys live on different nodes)."""
        if isinstance(self.client, RedisCluster):
            return False
        token = secrets.token_hex(8)
        key = f"{self.prefix}{{probe}}:{token}"
        try:
            self.client.set(key, token, ex=60)
            return _text(broker_client.get(key)) == token
        except (redis.RedisError, OSError):
            return False
        finally:
            with contextlib.suppress(redis.RedisError, OSError):
                self.client.delete(key)

    def publish_once(
        self, claims: Sequence[Claim], commands: Sequence[Sequence[tuple[str, tuple[Any, ...]]]]
    ) -> list[Any]:
        """Fence, publish and record each won claim with its broker commands, one script per
        claim in one round trip; see :data:`.lua.PUBLISH_ONCE`. For each claim its reply (1
        published, 2 published before, 0 not this replica's) or the error it raised.

        Safe to repeat after a lost reply: a slot this replica published is never published
        again, and one it did not is still its claim.
        """
        replies = self._each_item(
            self._publish_once_script,
            self._publish_once_many_script,
            [self._publish_once_item(c, cs) for c, cs in zip(claims, commands, strict=True)],
        )
        _log_errors("published", claims, replies)
        return [reply if isinstance(reply, Exception) else int(reply) for reply in replies]

    def _publish_once_item(
        self, claim: Claim, commands: Sequence[tuple[str, tuple[Any, ...]]]
    ) -> tuple[list[str], list[Any]]:
        keys = self.keys.entry_keys(claim.entry)
        args: list[Any] = [
            claim.slot_us,
            self.replica_id,
            claim.task_id,
            self.settings.history_size,
            len(commands),
        ]
        _add_commands(keys, args, commands)
        return keys, args

    def _each_item(
        self,
        single: Script,
        many: Script,
        items: Sequence[tuple[list[str], list[Any]]],
        *,
        asked_again: int | None = None,
    ) -> list[Any]:
        """Run a script for each item (its keys, its arguments), acknowledged: one call of its
        batch form (see :func:`.lua._many`) on one Redis, one call per item in a pipeline per
        node on Redis Cluster. The replies in order, an error reply in its item's place.
        ``asked_again``: the index in each item's arguments set to "1" when the request is sent
        again after an attempt whose reply was lost (the script may have run)."""
        if not items:
            return []
        attempts = 0

        def asked_again_now() -> bool:
            """Count an attempt; True at the second (the flags set then stay set)."""
            nonlocal attempts
            attempts += 1
            return attempts == 2 and asked_again is not None

        if isinstance(self.client, RedisCluster) or len(items) == 1:
            commands: list[Command] = [
                (keys[0], partial(_run_script, script=single, keys=keys, args=args))
                for keys, args in items
            ]

            def run_each() -> list[Any]:
                if asked_again_now():
                    for _, args in items:
                        args[asked_again] = "1"  # type: ignore[index]
                return self._pipelined(commands, acknowledged=True)

            return self._retrying(run_each)
        all_keys = [key for keys, _ in items for key in keys]
        all_args: list[Any] = [len(items)]
        all_args += [len(keys) for keys, _ in items]
        all_args += [len(args) for _, args in items]
        for _, args in items:
            all_args += args
        command = (all_keys[0], partial(_run_script, script=many, keys=all_keys, args=all_args))

        def run() -> list[Any]:
            if asked_again_now():
                start = 1 + 2 * len(items)  # each item's arguments follow the counts
                for _, args in items:
                    all_args[start + asked_again] = "1"  # type: ignore[operator]
                    start += len(args)
            [reply] = self._pipelined([command], acknowledged=True)
            if isinstance(reply, Exception):
                return [reply] * len(items)
            pool = getattr(self.client, "connection_pool", None)
            sentinel = isinstance(pool, SentinelConnectionPool)
            return [_item_reply(answer, sentinel=sentinel) for answer in reply]

        return self._retrying(run)

    def end_fence(self, claims: Sequence[Claim]) -> None:
        """Lift the fence of claims whose messages were refused; see :data:`.lua.END_FENCE`."""
        commands = [
            self._script_command(
                self._end_fence_script, claim.entry, claim.slot_us, self.replica_id
            )
            for claim in claims
        ]
        replies = self._retrying(partial(self._pipelined, commands, acknowledged=True))
        _log_errors("unfenced", claims, replies)

    def mark_sent(self, claims: Sequence[Claim], outcome: str = "sent") -> None:
        """Move published slots from ``claimed`` to ``sent`` (one round trip); ``outcome``
        ``"uncertain"``: the publish raised after it may have reached the broker."""
        commands = [
            self._script_command(
                self._mark_sent_script,
                claim.entry,
                claim.slot_us,
                claim.task_id,
                self.replica_id,
                self.settings.history_size,
                outcome,
            )
            for claim in claims
        ]
        _log_errors("recorded as sent", claims, self._retrying(partial(self._pipelined, commands)))

    def mark_skipped(self, claims: Sequence[Claim], reason: str) -> None:
        """Give back won claims that will not be published; see :data:`.lua.MARK_SKIPPED`."""
        commands = [
            self._script_command(
                self._mark_skipped_script,
                claim.entry,
                claim.slot_us,
                claim.task_id,
                reason,
                self.replica_id,
                self.settings.history_size,
            )
            for claim in claims
        ]
        replies = self._retrying(partial(self._pipelined, [*commands, *self._free_places(claims)]))
        _log_errors("given back", claims, replies[: len(claims)])

    def record_failure(self, claim: Claim, error: BaseException) -> None:
        """Count a publish that raised and drop its claim; see :data:`.lua.RECORD_FAILURE`."""
        command = self._script_command(
            self._record_failure_script,
            claim.entry,
            claim.slot_us,
            claim.task_id,
            self.replica_id,
            self.settings.history_size,
            f"{type(error).__name__}: {error}"[:500],
        )
        replies = self._retrying(partial(self._pipelined, [command, *self._free_places([claim])]))
        _log_errors("recorded as failed", [claim], replies[:1])

    def _free_places(self, claims: Sequence[Claim]) -> list[Command]:
        """Free the places under the cap that claims given back or failed took (none if the
        cap refused them): no run of theirs will ever end and free them."""
        if self.settings.max_concurrent <= 0 or not claims:
            return []
        cap = self.keys.cap
        ids = [claim.task_id for claim in claims]
        return [(cap, lambda pipe: pipe.zrem(cap, *ids))]

    def take_cap_places(self, claims: Sequence[Claim], cap: int) -> list[bool]:
        """Reserve places under the cluster-wide cap; see :data:`.lua.TAKE_CAP_PLACES`."""
        if not claims:
            return []
        lease_us = _us(self.settings.singleton_lease)
        ids = [claim.task_id for claim in claims]

        def take() -> list[bool]:
            granted = self._take_cap_script(keys=[self.keys.cap], args=[cap, lease_us, *ids])
            return [bool(int(flag)) for flag in granted]

        return self._retrying(take)

    def _follow_sentinel_master(self) -> None:
        """With Sentinel, ask at most every second where the master is.

        redis-py asks only when it opens a connection, and a demoted master stays writable for
        a while after a failover: claims written there would be lost. Asking before a batch
        moves this replica to the new master within a second.
        """
        pool = getattr(self.client, "connection_pool", None)
        if not isinstance(pool, SentinelConnectionPool):
            return
        now = time.monotonic()
        if now < self._next_master_check:
            return
        self._next_master_check = now + MASTER_CHECK_SECONDS
        with contextlib.suppress(redis.RedisError, OSError):
            pool.get_master_address()  # type: ignore[no-untyped-call]

    # -- pipelines --------------------------------------------------------------------------

    def _script_command(self, script: Script, entry: str, *args: object) -> Command:
        keys = self.keys.entry_keys(entry)
        return keys[0], partial(_run_script, script=script, keys=keys, args=list(args))

    def _pipelined(self, commands: Sequence[Command], *, acknowledged: bool = False) -> list[Any]:
        """Run ``commands`` in one pipeline per Redis node; the replies in their order.

        Redis Cluster refuses scripts in its own pipelines, so commands are grouped by the node
        that owns their key (every key of one entry shares a hash tag) and each group goes in a
        plain pipeline on that node. With ``acknowledged`` and ``fork_scheduler_wait_replicas``
        set, each pipeline ends with ``WAIT``: writes that too few Redis replicas confirmed
        count as failed (a demoted master after a failover confirms none).
        """
        if not commands:
            return []
        wait = self._wait if acknowledged else None
        if not isinstance(self.client, RedisCluster):
            return _execute(self.client, commands, wait)
        groups: dict[str, list[int]] = {}
        nodes: dict[str, Any] = {}
        for index, (key, _) in enumerate(commands):
            node = self.client.get_node_from_key(key)  # type: ignore[no-untyped-call]
            groups.setdefault(node.name, []).append(index)
            nodes[node.name] = node
        replies: list[Any] = [None] * len(commands)
        for name, indexes in groups.items():
            connection = self.client.get_redis_connection(nodes[name])
            for index, reply in zip(
                indexes, _execute(connection, [commands[i] for i in indexes], wait), strict=True
            ):
                replies[index] = reply
        return replies

    def record_outage(self, outage: Outage) -> None:
        """Push the summary onto the capped list of outages (:data:`.outages.KEPT_OUTAGES`)."""

        def push() -> None:
            pipe = self.client.pipeline(transaction=False)
            pipe.lpush(self.keys.outages, outage.encode())
            pipe.ltrim(self.keys.outages, 0, KEPT_OUTAGES - 1)
            pipe.execute()

        self._retrying(push)

    def server_time(self) -> datetime:
        """Redis ``TIME``."""

        def read() -> datetime:
            seconds, micros = self.client.time()
            return from_epoch_us(int(seconds) * 1_000_000 + int(micros))

        return self._retrying(read)

    def runtime_store(self) -> RuntimeStore | ShardedStore:
        """Runtime entries and pause state, on this backend's client."""
        return runtime_store(self.client, self.keys, self.settings.runtime_shards)

    def sync(self) -> None:
        """Nothing is kept in memory: every write goes to Redis at once."""

    def close(self) -> None:
        """Close the client if this backend created it."""
        if self._owns_client:
            self.client.close()

    # -- retries ----------------------------------------------------------------------------

    def _retrying(self, operation: Callable[[], T]) -> T:
        """Run ``operation``, retrying connection trouble; any Redis failure ends as
        :class:`BackendUnavailableError`, so a tick fails closed and beat keeps running."""
        attempts = self.settings.max_retries + 1
        delay = self.settings.retry_delay.total_seconds()
        for attempt in range(1, attempts + 1):
            try:
                return operation()
            except (*CONNECTION_ERRORS, *CLUSTER_REDIRECTS) as exc:
                failure: Exception = exc
            except redis.RedisError as exc:
                raise BackendUnavailableError(
                    f"Redis {self.display_url} refused the command: {type(exc).__name__}: {exc}"
                ) from None
            if attempt < attempts:
                self._sleep(delay)
                self._refresh_cluster_layout()
        raise BackendUnavailableError(
            f"Redis {self.display_url} unreachable after {attempts} attempts: "
            f"{type(failure).__name__}"
        )

    def _refresh_cluster_layout(self) -> None:
        if isinstance(self.client, RedisCluster):
            with contextlib.suppress(redis.RedisError, OSError):
                self.client.nodes_manager.initialize()


Command = tuple[str, Callable[[Pipeline], object]]


def _execute(
    client: redis.Redis, commands: Sequence[Command], wait: tuple[int, int] | None = None
) -> list[Any]:
    """One pipeline of ``EVALSHA``/plain commands; scripts are loaded once on ``NOSCRIPT``.

    Calling ``EVALSHA`` directly spares the ``SCRIPT EXISTS`` round trip redis-py makes before
    every pipeline holding scripts. A restarted (or failed-over) Redis answers ``NOSCRIPT``:
    the scripts are loaded and the commands that got it run again, which is safe because they
    did not run (the others keep their replies). An error reply of one command (a script that
    raised on a corrupted value, a ``WRONGTYPE``) is returned in its place; an error that
    refuses every command (read-only, out of memory, no permission, a cluster redirect) is
    raised, and so is a script's command refused by the ACL: the user lacks it for every entry.
    """
    replies: list[Any] = [None] * len(commands)
    todo = list(range(len(commands)))
    for attempt in (1, 2):
        pipe = client.pipeline(transaction=False)
        for index in todo:
            commands[index][1](pipe)
        if wait is not None:
            pipe.execute_command("WAIT", *wait)  # type: ignore[no-untyped-call]
        answers: list[Any] = pipe.execute(raise_on_error=False)
        if wait is not None:
            acknowledged = answers.pop()
            if isinstance(acknowledged, Exception):
                raise acknowledged
            if int(acknowledged) < wait[0]:
                raise redis.ConnectionError(
                    f"writes confirmed by {acknowledged} of {wait[0]} Redis replicas"
                )
        unloaded = []
        for index, answer in zip(todo, answers, strict=True):
            if isinstance(answer, NoScriptError):
                unloaded.append(index)
            elif isinstance(answer, Exception) and _refuses_everything(answer):
                if _is_script_acl_refusal(answer):
                    # A permission the deployment lacks, not one entry's data: fail closed.
                    raise NoPermissionError(str(answer))
                raise answer
            else:
                replies[index] = answer
        if not unloaded:
            return replies
        if attempt == 2:
            raise NoScriptError("scripts missing right after SCRIPT LOAD")
        for source in lua.ALL_SCRIPTS:
            client.script_load(source)
        todo = unloaded
    raise AssertionError("unreachable")


def _item_reply(answer: Any, *, sentinel: bool = False) -> Any:
    """One item's reply from a batch script: its ``{"__error__", message}`` as the error reply
    a script call of its own would have given, ``ERR`` code taken off as redis-py does (raised
    when it refuses every command: ``READONLY`` as redis-py raises it, a connection error
    behind Sentinel, so that the new master is asked)."""
    if not (isinstance(answer, list) and answer and _text(answer[0]) == "__error__"):
        return answer
    text = _text(answer[1])
    error = ResponseError(text[4:] if text.startswith("ERR ") else text)
    if not _refuses_everything(error):
        return error
    if _is_script_acl_refusal(error):
        raise NoPermissionError(str(error))
    if _reply_code(error) == "READONLY":
        if sentinel:
            raise redis.ConnectionError("the Sentinel master became a replica (READONLY)")
        raise ReadOnlyError(_after_location(error)[len("READONLY ") :])
    raise error


def _refuses_everything(error: Exception) -> bool:
    """True for an error reply that is about the server or the user's permissions (a command
    refused by the ACL, even inside a script), not about one command's keys (``WRONGTYPE``,
    a corrupted value)."""
    if type(error) is not ResponseError:
        return True
    return _reply_code(error) in SERVER_WIDE_ERRORS or _is_script_acl_refusal(error)


def _is_script_acl_refusal(error: Exception) -> bool:
    """True for a command a script called that the ACL refused (any Redis 6.2 to 7.x)."""
    if type(error) is not ResponseError:
        return False
    return _reply_code(error) == "NOPERM" or _after_location(error).startswith(SCRIPT_ACL_REFUSALS)


def _after_location(error: Exception) -> str:
    text = str(error)
    location = SCRIPT_LOCATION.match(text)
    return text[location.end() :] if location else text


def _reply_code(error: Exception) -> str:
    return _after_location(error).split(" ", 1)[0]


def _log_errors(what: str, claims: Sequence[Claim], replies: Sequence[Any]) -> None:
    """Log each claim whose script raised (the others of the batch went through)."""
    for claim, reply in zip(claims, replies, strict=True):
        if isinstance(reply, Exception):
            logger.error(
                "fork scheduler: %s slot %s could not be %s: %s",
                claim.entry,
                claim.slot.isoformat(),
                what,
                reply,
            )


_MARK_FIELDS = ("hwm", "state", "finished")


def _hmget(pipe: Pipeline, *, key: str, fields: Sequence[str]) -> object:
    return pipe.hmget(key, fields)


def _hgetall(pipe: Pipeline, *, key: str) -> object:
    return pipe.hgetall(key)


def _pool_limit(client: redis.Redis | RedisCluster) -> int | None:
    """The most connections the client's pool opens (a Redis Cluster node's pool for a
    cluster client), or None when unknown."""
    pool = getattr(client, "connection_pool", None)
    if pool is None and isinstance(client, RedisCluster):
        node = client.get_default_node()  # type: ignore[no-untyped-call]
        pool = getattr(getattr(node, "redis_connection", None), "connection_pool", None)
    limit = getattr(pool, "max_connections", None)
    return limit if isinstance(limit, int) else None


#: The index, in a claim's script arguments, of the flag that says the request is sent again
#: after a lost reply (ARGV[18] of :data:`.lua.CLAIM`).
ASKED_AGAIN_ARG = 17


def _add_commands(
    keys: list[str], args: list[Any], commands: Sequence[tuple[str, tuple[Any, ...]]]
) -> None:
    """Append broker commands to a script's keys and arguments: per command its name, the
    index of its key in ``keys`` (added if new) and its argument."""
    for name, (key, value) in commands:
        if key not in keys:
            keys.append(key)
        args.extend((name, keys.index(key) + 1, value))


def _run_script(pipe: Pipeline, *, script: Script, keys: list[str], args: list[Any]) -> object:
    return pipe.evalsha(script.sha, len(keys), *keys, *args)


def _us(delta: timedelta) -> int:
    return int(delta.total_seconds() * 1_000_000)


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def record_outcome(
    client: Any,
    keys: Keys,
    entry: str,
    *,
    slot_us: int,
    task_id: str,
    who: str,
    outcome: str,
    counter: str,
    history_size: int,
    duration: float | None = None,
    error: str = "",
    pause_note: str = "",
    paused_at: str = "",
) -> bool:
    """Count a run's outcome and push it to the entry's history (one script call).

    With a ``pause_note``, the same call pauses the entry for every replica (unless it is
    paused already, or was removed); returns whether it did.
    """
    paused = client.eval(
        lua.RECORD_OUTCOME,
        5,
        *keys.entry_keys(entry),
        slot_us,
        task_id,
        who,
        outcome,
        counter,
        history_size,
        "" if duration is None else f"{duration:.6f}",
        error[:500],
        pause_note,
        paused_at,
    )
    return bool(int(paused))


#: Each claim outcome by its reply (bytes): a burst reads 10 000 of them.
_OUTCOMES = {outcome.value.encode(): outcome for outcome in ClaimOutcome}


def _claim_result(claim: Claim, reply: Sequence[Any]) -> ClaimResult:
    """The :class:`ClaimResult` of one CLAIM reply (see :data:`.lua.CLAIM`)."""
    outcome = _OUTCOMES.get(reply[0]) or ClaimOutcome(_text(reply[0]))
    if outcome is ClaimOutcome.RELEASED:
        dropped = tuple(_text(message) for message in reply[4:])
        return ClaimResult(
            claim, outcome, held=_text(reply[2]), reason=_text(reply[3]), dropped=dropped
        )
    if outcome is ClaimOutcome.WON and len(reply) > 2:
        return ClaimResult(claim, outcome, superseded=_text(reply[2]))
    if outcome is ClaimOutcome.SENT and len(reply) > 3:  # a stranded held run it superseded
        return ClaimResult(claim, outcome, superseded=_text(reply[3]))
    if outcome is ClaimOutcome.UNCERTAIN:
        return ClaimResult(claim, outcome, error=_text(reply[2]))
    return ClaimResult(claim, outcome, int(reply[1]) / 1_000_000)


def _runtime_arg(claim: Claim, fence_us: int) -> str:
    """The claim script's ARGV[15]: "0" for a static entry; "1" for a runtime one, followed by
    ":" and the version of its definition this replica read, when known, and by ":" and how
    long after a change it is fenced when that is longer than :data:`.lua.CHANGE_FENCE_US`."""
    if not claim.runtime:
        return "0"
    if not claim.definition:
        return "1"
    if fence_us > lua.CHANGE_FENCE_US:
        return f"1:{claim.definition}:{fence_us}"
    return f"1:{claim.definition}"
