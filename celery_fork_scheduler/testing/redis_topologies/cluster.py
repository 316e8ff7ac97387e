"""A throwaway Redis Cluster of N masters on loopback, formed from Python."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import redis

from ..redis_server import PORT_ATTEMPTS, PortTakenError, RedisServer, free_port
from .common import _client, _command, _poll, _started, _text, _Topology

#: Hash slots of a Redis Cluster.
CLUSTER_SLOTS = 16384


class RedisClusterNodes(_Topology):
    """A Redis Cluster of ``masters`` master nodes (no replicas) on loopback.

    The cluster is formed from Python: each node takes an even share of the hash slots
    (``CLUSTER ADDSLOTSRANGE``), gets its own config epoch, and meets the first node
    (``CLUSTER MEET`` with an explicit bus port). :meth:`start` returns once every node reports
    ``cluster_state:ok`` and knows every other node.
    """

    def __init__(
        self, masters: int = 3, *, node_timeout_ms: int = 5000, binary: str | None = None
    ) -> None:
        if masters < 1:
            raise ValueError(f"a cluster needs at least one master, not {masters}")
        self.masters = masters
        self.nodes: list[RedisServer] = []
        self.bus_ports: list[int] = []
        for _ in range(masters):
            bus_port = free_port()
            self.bus_ports.append(bus_port)
            self.nodes.append(
                RedisServer(
                    binary=binary,
                    extra_args=[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-port",
                        str(bus_port),
                        "--cluster-node-timeout",
                        str(node_timeout_ms),
                        "--cluster-require-full-coverage",
                        "yes",
                    ],
                )
            )

    @property
    def url(self) -> str:
        """The URL of one node: enough for a cluster client, which discovers the others."""
        return self.nodes[0].url

    @property
    def urls(self) -> list[str]:
        """The URL of every node."""
        return [node.url for node in self.nodes]

    def start(self, timeout: float = 60.0) -> RedisClusterNodes:
        """Start every node, form the cluster and wait until it is healthy. A node whose bus
        port another process took since it was picked moves to a fresh one (its client port
        moves by itself: see :meth:`RedisServer.start`)."""
        for index, node in enumerate(self.nodes):
            for attempt in range(1, PORT_ATTEMPTS + 1):
                try:
                    node.start(timeout)
                    break
                except PortTakenError:
                    if attempt == PORT_ATTEMPTS:
                        raise
                    self.bus_ports[index] = free_port()
                    at = node.extra_args.index("--cluster-port") + 1
                    node.extra_args[at] = str(self.bus_ports[index])
        clients = [_client(node.port) for node in self.nodes]
        try:
            self._assign_slots(clients)
            first = clients[0]
            for node, bus_port in zip(self.nodes[1:], self.bus_ports[1:], strict=True):
                _command(first, "CLUSTER MEET", "127.0.0.1", node.port, bus_port)
            for port, client in zip((n.port for n in self.nodes), clients, strict=True):
                _poll(
                    _healthy_probe(client, self.masters),
                    timeout=timeout,
                    what=f"cluster_state:ok on node 127.0.0.1:{port}",
                )
        finally:
            for client in clients:
                client.close()
        return self

    def __enter__(self) -> RedisClusterNodes:
        return _started(self)

    def _assign_slots(self, clients: Sequence[redis.Redis]) -> None:
        for index, client in enumerate(clients):
            first, last = _slot_range(index, len(clients))
            try:
                _command(client, "CLUSTER ADDSLOTSRANGE", first, last)
            except redis.ResponseError:  # Redis < 7.0: no ADDSLOTSRANGE
                _command(client, "CLUSTER ADDSLOTS", *range(first, last + 1))
            # Distinct epochs up front, as redis-cli does: no epoch collision to resolve.
            _command(client, "CLUSTER SET-CONFIG-EPOCH", index + 1)

    def node_of_key(self, key: str) -> RedisServer:
        """The node that serves ``key`` (its hash slot, in the layout :meth:`start` made)."""
        client = _client(self.nodes[0].port)
        try:
            slot = int(_command(client, "CLUSTER KEYSLOT", key))
        finally:
            client.close()
        for index, node in enumerate(self.nodes):
            first, last = _slot_range(index, self.masters)
            if first <= slot <= last:
                return node
        raise LookupError(f"no node serves slot {slot}")

    def stop(self) -> None:
        """Stop every node (their directories stay until :meth:`cleanup`)."""
        for node in self.nodes:
            node.stop()

    def cleanup(self) -> None:
        """Stop every node and delete its directory."""
        for node in self.nodes:
            node.cleanup()


def _slot_range(index: int, count: int) -> tuple[int, int]:
    """The first and last hash slot of node ``index`` of ``count``."""
    return index * CLUSTER_SLOTS // count, (index + 1) * CLUSTER_SLOTS // count - 1


def _healthy_probe(client: redis.Redis, masters: int) -> Callable[[], bool | None]:
    """A probe: True once ``client``'s node sees a healthy cluster of ``masters`` nodes."""

    def probe() -> bool | None:
        info = _parse_info(_command(client, "CLUSTER INFO"))
        healthy = (
            info.get("cluster_state") == "ok"
            and info.get("cluster_slots_ok") == str(CLUSTER_SLOTS)
            and info.get("cluster_known_nodes") == str(masters)
            and info.get("cluster_size") == str(masters)
        )
        return True if healthy else None

    return probe


def _parse_info(raw: object) -> dict[str, str]:
    """``CLUSTER INFO`` as text pairs, whether redis-py parsed it already or not."""
    if isinstance(raw, dict):
        return {_text(key): _text(value) for key, value in raw.items()}
    pairs = (line.split(":", 1) for line in _text(raw).splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}
