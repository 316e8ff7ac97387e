"""A throwaway Sentinel group on loopback: a master, its replicas and the sentinels."""

from __future__ import annotations

import secrets
import subprocess
from typing import Any

from ..redis_server import RedisServer
from .common import _client, _command, _poll, _started, _text, _Topology


class _SentinelProcess(RedisServer):
    """``redis-server <generated config> --sentinel``: the config file must come first.

    The config is written at each spawn, so that it names the port the process starts on and
    the master's port as it is then (:attr:`master_port`, set by the group).
    """

    def __init__(self, master_name: str, quorum: int, binary: str | None) -> None:
        super().__init__(binary=binary)
        self.master_name = master_name
        self.master_port = 0
        self.quorum = quorum
        self.config_path = self.workdir / "sentinel.conf"

    def _spawn(self) -> subprocess.Popen[bytes]:
        name = self.master_name
        self.config_path.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    "bind 127.0.0.1",
                    "daemonize no",
                    f"dir {self.workdir}",
                    f"sentinel monitor {name} 127.0.0.1 {self.master_port} {self.quorum}",
                    f"sentinel down-after-milliseconds {name} 1000",
                    f"sentinel failover-timeout {name} 5000",
                    f"sentinel parallel-syncs {name} 1",
                    "",
                ]
            )
        )
        args = [self.binary, str(self.config_path), "--sentinel", *self.extra_args]
        with open(self.workdir / "redis.log", "wb") as log:
            return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)


class RedisSentinelGroup(_Topology):
    """A master, ``replicas`` replicas and ``sentinels`` sentinels watching ``master_name``.

    :attr:`url` is the Kombu form of the sentinel addresses
    (``sentinel://127.0.0.1:p1;sentinel://127.0.0.1:p2;...``); pass :attr:`master_name` as the
    ``master_name`` option. :meth:`start` returns once every sentinel knows the master, every
    replica and the other sentinels. Failure detection is fast (1 s down-after, 5 s
    failover-timeout), so that tests of failovers stay short.
    """

    def __init__(
        self,
        replicas: int = 1,
        sentinels: int = 3,
        master_name: str | None = None,
        *,
        binary: str | None = None,
    ) -> None:
        if replicas < 1:
            raise ValueError("a failover needs at least one replica")
        if sentinels < 1:
            raise ValueError("at least one sentinel is needed")
        # A name of its own: sentinels that outlive another group (or watch one in another
        # process) take hello messages only for the master names they monitor.
        self.master_name = master_name or f"fork-scheduler-{secrets.token_hex(4)}"
        self.master = RedisServer(binary=binary)
        self.replicas = [RedisServer(binary=binary) for _ in range(replicas)]
        quorum = sentinels // 2 + 1
        self.sentinels = [
            _SentinelProcess(self.master_name, quorum, binary) for _ in range(sentinels)
        ]

    @property
    def servers(self) -> list[RedisServer]:
        """Every data node (the first master and the replicas, whatever their role now)."""
        return [self.master, *self.replicas]

    @property
    def url(self) -> str:
        """``sentinel://127.0.0.1:p1;sentinel://127.0.0.1:p2;...`` (Kombu's form)."""
        return ";".join(f"sentinel://127.0.0.1:{s.port}" for s in self.sentinels)

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every sentinel, as redis-py's ``Sentinel`` takes them."""
        return [("127.0.0.1", s.port) for s in self.sentinels]

    def start(self, timeout: float = 60.0) -> RedisSentinelGroup:
        """Start the data nodes, then the sentinels; wait until the sentinels see them all."""
        self.master.start(timeout)
        for replica in self.replicas:
            replica.extra_args = ["--replicaof", "127.0.0.1", str(self.master.port)]
            replica.start(timeout)
        for replica in self.replicas:
            self._wait_replica_linked(replica.port, timeout)
        for sentinel in self.sentinels:
            sentinel.master_port = self.master.port
            sentinel.start(timeout)
        for sentinel in self.sentinels:
            self._wait_sentinel_ready(sentinel.port, timeout)
        return self

    def __enter__(self) -> RedisSentinelGroup:
        return _started(self)

    def _wait_replica_linked(self, port: int, timeout: float) -> None:
        client = _client(port)

        def linked() -> bool | None:
            info = client.info("replication")
            return True if info.get("master_link_status") == "up" else None

        try:
            _poll(linked, timeout=timeout, what=f"replica 127.0.0.1:{port} to sync")
        finally:
            client.close()

    def _wait_sentinel_ready(self, port: int, timeout: float) -> None:
        client = _client(port)

        def ready() -> bool | None:
            master = _command(client, "SENTINEL MASTER", self.master_name)
            fields = _pairs(master)
            usable = [
                replica
                for replica in _command(client, "SENTINEL REPLICAS", self.master_name)
                if _is_usable(_pairs(replica))
            ]
            return (
                True
                if fields.get("flags") == "master"
                and len(usable) == len(self.replicas)
                and int(fields.get("num-other-sentinels", "0")) == len(self.sentinels) - 1
                else None
            )

        try:
            _poll(ready, timeout=timeout, what=f"sentinel 127.0.0.1:{port} to see the group")
        finally:
            client.close()

    def master_address(self, sentinel: int = 0) -> tuple[str, int]:
        """The master address that sentinel number ``sentinel`` reports now."""
        client = _client(self.sentinels[sentinel].port)
        try:
            host, port = _command(client, "SENTINEL GET-MASTER-ADDR-BY-NAME", self.master_name)
        finally:
            client.close()
        return (_text(host), int(port))

    def server_at(self, address: tuple[str, int]) -> RedisServer:
        """The data node listening at ``address``."""
        for server in self.servers:
            if server.port == address[1]:
                return server
        raise LookupError(address)

    def failover(self, timeout: float = 60.0) -> tuple[str, int]:
        """Force a failover (``SENTINEL FAILOVER``); return the new master's address.

        Returns once every sentinel reports the new address and that node answers ``ROLE``
        as a master. The old master is turned into a replica by the sentinels some seconds
        later (up to ~10 s: they wait to be sure it is not a newer master); until then it still
        accepts writes from clients that stay connected to it. Use
        :meth:`wait_old_master_demoted` to wait for that too.
        """
        old = self.master_address()
        client = _client(self.sentinels[0].port)
        try:
            _poll(
                lambda: _command(client, "SENTINEL FAILOVER", self.master_name),
                timeout=timeout,
                what="the sentinels to accept SENTINEL FAILOVER",
                interval=0.5,
            )
        finally:
            client.close()

        def switched() -> tuple[str, int] | None:
            addresses = {self.master_address(i) for i in range(len(self.sentinels))}
            if len(addresses) != 1 or old in addresses:
                return None
            (new,) = addresses
            role = _client(new[1])
            try:
                return new if _text(_command(role, "ROLE")[0]) == "master" else None
            finally:
                role.close()

        return _poll(switched, timeout=timeout, what="the sentinels to report a new master")

    def wait_old_master_demoted(self, old: tuple[str, int], timeout: float = 60.0) -> None:
        """Wait until the node at ``old`` is a replica whose link to the new master is up."""
        client = _client(old[1])

        def demoted() -> bool | None:
            info = client.info("replication")
            return (
                True
                if info.get("role") == "slave" and info.get("master_link_status") == "up"
                else None
            )

        try:
            _poll(demoted, timeout=timeout, what=f"old master {old[0]}:{old[1]} to be a replica")
        finally:
            client.close()

    def cleanup(self) -> None:
        """Stop the sentinels first (no failover on the way down), then the data nodes."""
        for sentinel in self.sentinels:
            sentinel.cleanup()
        for server in self.servers:
            server.cleanup()


def _pairs(flat: Any) -> dict[str, str]:
    """A Redis reply ``[k1, v1, k2, v2, ...]`` (or a dict, as redis-py may give) as text."""
    if isinstance(flat, dict):
        return {_text(k): _text(v) for k, v in flat.items()}
    items = [_text(item) for item in flat]
    return dict(zip(items[::2], items[1::2], strict=True))


def _is_usable(replica: dict[str, str]) -> bool:
    flags = set(replica.get("flags", "").split(","))
    return "slave" in flags and not flags & {"s_down", "o_down", "disconnected"}
