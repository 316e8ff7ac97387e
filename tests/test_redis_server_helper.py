"""The throwaway ``RedisServer`` answers as itself: never through another process on its port.

Found by a CI flake (a Sentinel group timed out waiting for its sentinels while another pytest
process ran a Sentinel group beside it): a port picked as free could be bound by the other
process before the server started, and ``PING`` was then answered by that process.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import redis

from celery_fork_scheduler.testing.redis_server import PortTakenError, RedisServer
from celery_fork_scheduler.testing.redis_topologies import RedisSentinelGroup


@pytest.fixture
def squatter() -> Iterator[RedisServer]:
    """Another redis-server, holding a port that a new helper is then told it picked."""
    with RedisServer() as other:
        yield other


def own_pid(server: RedisServer) -> int:
    client = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        pid = client.info("server")["process_id"]
    finally:
        client.close()
    assert isinstance(pid, int)
    return pid


def test_a_picked_port_taken_by_another_server_moves_to_a_fresh_one(squatter: RedisServer) -> None:
    server = RedisServer()
    server.port = squatter.port  # as if the other process had bound it since it was picked
    with server:
        assert server.port != squatter.port
        assert server.process is not None
        assert own_pid(server) == server.process.pid


def test_a_picked_port_held_by_a_plain_listener_moves_to_a_fresh_one() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        server = RedisServer()
        server.port = taken
        with server:
            assert server.port != taken
            assert server.process is not None
            assert own_pid(server) == server.process.pid


def test_a_port_the_caller_gave_never_moves(squatter: RedisServer) -> None:
    server = RedisServer(port=squatter.port)
    try:
        with pytest.raises(PortTakenError, match=str(squatter.port)):
            server.start(timeout=10)
    finally:
        server.cleanup()
    assert squatter.process is not None
    assert own_pid(squatter) == squatter.process.pid  # the other server was left alone


def test_sentinel_groups_get_master_names_of_their_own() -> None:
    first, second = RedisSentinelGroup(), RedisSentinelGroup()
    try:
        assert first.master_name != second.master_name
    finally:
        first.cleanup()
        second.cleanup()


def test_a_cluster_node_whose_bus_port_was_taken_moves_to_a_fresh_one() -> None:
    """A bus port picked free, then bound by another process before the node started (three
    test lanes start servers side by side in CI): the node moves its bus port, not only its
    client port, and the cluster forms."""
    from celery_fork_scheduler.testing.redis_topologies import RedisClusterNodes

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        nodes = RedisClusterNodes(masters=1)
        nodes.bus_ports[0] = taken
        at = nodes.nodes[0].extra_args.index("--cluster-port") + 1
        nodes.nodes[0].extra_args[at] = str(taken)
        with nodes:
            assert nodes.bus_ports[0] != taken
            assert redis.Redis.from_url(nodes.url).cluster("info")["cluster_state"] == "ok"
