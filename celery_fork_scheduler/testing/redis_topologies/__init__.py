"""Throwaway Redis topologies for integration tests: Cluster, Sentinel, TLS, unix socket.

Each helper is a context manager built on :class:`~.redis_server.RedisServer`: real
``redis-server`` processes on loopback, in temporary directories, stopped and removed on exit.
Nothing here needs ``redis-cli`` or Docker; TLS certificates come from the ``cryptography``
package when it is installed, else from the ``openssl`` command::

    with RedisClusterNodes(masters=3) as cluster:
        app.conf.fork_scheduler_redis_url = cluster.url
        app.conf.fork_scheduler_redis_options = {"cluster": True}

    with RedisSentinelGroup() as group:
        app.conf.fork_scheduler_redis_url = group.url  # sentinel://...;sentinel://...
        app.conf.fork_scheduler_redis_options = {"master_name": group.master_name}
        group.failover()

    with TlsRedis() as server:
        app.conf.fork_scheduler_redis_url = server.url  # rediss://...
        app.conf.fork_scheduler_redis_options = {"ssl_ca_certs": server.ca_path}
"""

from .cluster import CLUSTER_SLOTS, RedisClusterNodes
from .sentinel import RedisSentinelGroup
from .standalone import TlsRedis, UnixSocketRedis, make_test_certificates

__all__ = [
    "CLUSTER_SLOTS",
    "RedisClusterNodes",
    "RedisSentinelGroup",
    "TlsRedis",
    "UnixSocketRedis",
    "make_test_certificates",
]
