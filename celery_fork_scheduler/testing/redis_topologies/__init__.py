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

from __future__ import annotations

import importlib
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import redis

from ..redis_server import RedisServer, free_port

__all__ = [
    "CLUSTER_SLOTS",
    "RedisClusterNodes",
    "RedisSentinelGroup",
    "TlsRedis",
    "UnixSocketRedis",
    "make_test_certificates",
]

#: Hash slots of a Redis Cluster.
CLUSTER_SLOTS = 16384

_T = TypeVar("_T")


def _poll(
    probe: Callable[[], _T | None], *, timeout: float, what: str, interval: float = 0.1
) -> _T:
    """Call ``probe`` until it returns something other than ``None`` (errors count as None)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = probe()
        except (redis.RedisError, OSError) as exc:
            last_error, value = exc, None
        if value is not None:
            return value
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(interval)


def _command(client: redis.Redis, *args: Any) -> Any:
    """``client.execute_command(*args)``, typed."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _client(port: int, **options: Any) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1", port=port, socket_timeout=5, socket_connect_timeout=5, **options
    )


class _Topology:
    """Exit plumbing shared by the multi-process helpers."""

    def cleanup(self) -> None:
        raise NotImplementedError

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


# -- Redis Cluster ------------------------------------------------------------------------------


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
        """Start every node, form the cluster and wait until it is healthy."""
        for node in self.nodes:
            node.start(timeout)
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
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

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


# -- Sentinel -----------------------------------------------------------------------------------


class _SentinelProcess(RedisServer):
    """``redis-server <generated config> --sentinel``: the config file must come first."""

    def __init__(self, master_name: str, master_port: int, quorum: int, binary: str | None) -> None:
        super().__init__(binary=binary)
        self.config_path = self.workdir / "sentinel.conf"
        self.config_path.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    "bind 127.0.0.1",
                    "daemonize no",
                    f"dir {self.workdir}",
                    f"sentinel monitor {master_name} 127.0.0.1 {master_port} {quorum}",
                    f"sentinel down-after-milliseconds {master_name} 1000",
                    f"sentinel failover-timeout {master_name} 5000",
                    f"sentinel parallel-syncs {master_name} 1",
                    "",
                ]
            )
        )

    def start(self, timeout: float = 20.0) -> _SentinelProcess:
        args = [self.binary, str(self.config_path), "--sentinel", *self.extra_args]
        with open(self.workdir / "redis.log", "wb") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.wait_ready(timeout)
        return self


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
        master_name: str = "mymaster",
        *,
        binary: str | None = None,
    ) -> None:
        if replicas < 1:
            raise ValueError("a failover needs at least one replica")
        if sentinels < 1:
            raise ValueError("at least one sentinel is needed")
        self.master_name = master_name
        self.master = RedisServer(binary=binary)
        self.replicas = [
            RedisServer(
                binary=binary, extra_args=["--replicaof", "127.0.0.1", str(self.master.port)]
            )
            for _ in range(replicas)
        ]
        quorum = sentinels // 2 + 1
        self.sentinels = [
            _SentinelProcess(master_name, self.master.port, quorum, binary)
            for _ in range(sentinels)
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
            replica.start(timeout)
        for replica in self.replicas:
            self._wait_replica_linked(replica.port, timeout)
        for sentinel in self.sentinels:
            sentinel.start(timeout)
        for sentinel in self.sentinels:
            self._wait_sentinel_ready(sentinel.port, timeout)
        return self

    def __enter__(self) -> RedisSentinelGroup:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

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


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- TLS ----------------------------------------------------------------------------------------


CertificateMaker = Literal["auto", "cryptography", "openssl"]


def make_test_certificates(
    directory: Path, *, maker: CertificateMaker = "auto", hosts: Sequence[str] = ("127.0.0.1",)
) -> tuple[Path, Path, Path]:
    """Write a throwaway CA and a server certificate for ``hosts`` into ``directory``.

    Returns ``(ca_path, cert_path, key_path)``. ``maker="auto"`` uses the ``cryptography``
    package when it is installed, else the ``openssl`` command. The certificates are valid for
    one day and carry the extensions strict verifiers ask for (SAN, key identifiers, usages).
    """
    directory.mkdir(parents=True, exist_ok=True)
    if maker == "cryptography" or (maker == "auto" and _has_cryptography()):
        return _certificates_with_cryptography(directory, hosts)
    if shutil.which("openssl") is None:
        raise FileNotFoundError(
            "TLS test certificates need the Python package 'cryptography' or the 'openssl' command"
        )
    return _certificates_with_openssl(directory, hosts)


def _has_cryptography() -> bool:
    try:
        importlib.import_module("cryptography.x509")
    except ImportError:
        return False
    return True


def _san_entries(hosts: Sequence[str]) -> list[str]:
    import ipaddress

    entries = []
    for host in hosts:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            entries.append(f"DNS:{host}")
        else:
            entries.append(f"IP:{host}")
    return entries


def _certificates_with_openssl(directory: Path, hosts: Sequence[str]) -> tuple[Path, Path, Path]:
    ca_key, ca_path = directory / "ca.key", directory / "ca.crt"
    key_path, csr_path, cert_path = (
        directory / "server.key",
        directory / "server.csr",
        (directory / "server.crt"),
    )
    extensions = directory / "server.ext"
    extensions.write_text(
        "\n".join(
            [
                "basicConstraints=critical,CA:FALSE",
                "keyUsage=critical,digitalSignature,keyEncipherment",
                "extendedKeyUsage=serverAuth",
                "subjectKeyIdentifier=hash",
                "authorityKeyIdentifier=keyid:always",
                "subjectAltName=" + ",".join(_san_entries(hosts)),
                "",
            ]
        )
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    commands = [
        [
            "openssl", "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca_path),
            "-days", "1", "-subj", "/CN=celery-fork-scheduler test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-addext", "subjectKeyIdentifier=hash",
        ],
        [
            "openssl", "req", "-new", *ec, "-keyout", str(key_path), "-out", str(csr_path),
            "-subj", f"/CN={hosts[0]}",
        ],
        [
            "openssl", "x509", "-req", "-in", str(csr_path), "-CA", str(ca_path),
            "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(cert_path), "-days", "1",
            "-sha256", "-extfile", str(extensions),
        ],
    ]  # fmt: skip
    for command in commands:
        done = subprocess.run(command, capture_output=True, check=False, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command[:3])} failed: {done.stderr.decode(errors='replace')}"
            )
    return ca_path, cert_path, key_path


def _certificates_with_cryptography(
    directory: Path, hosts: Sequence[str]
) -> tuple[Path, Path, Path]:
    import ipaddress

    # Imported by name: the package is optional, and typed as Any when it is missing.
    x509: Any = importlib.import_module("cryptography.x509")
    oid: Any = importlib.import_module("cryptography.x509.oid")
    hashes: Any = importlib.import_module("cryptography.hazmat.primitives.hashes")
    ec: Any = importlib.import_module("cryptography.hazmat.primitives.asymmetric.ec")
    serialization: Any = importlib.import_module("cryptography.hazmat.primitives.serialization")

    now = datetime.now(timezone.utc)

    def name(common_name: str) -> Any:
        return x509.Name([x509.NameAttribute(oid.NameOID.COMMON_NAME, common_name)])

    def usage(*, sign_certs: bool) -> Any:
        return x509.KeyUsage(
            digital_signature=not sign_certs,
            content_commitment=False,
            key_encipherment=not sign_certs,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=sign_certs,
            crl_sign=sign_certs,
            encipher_only=False,
            decipher_only=False,
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("celery-fork-scheduler test CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage(sign_certs=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    alt_names = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(name(hosts[0]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(sign_certs=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([oid.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_path, cert_path, key_path = (
        directory / "ca.crt",
        directory / "server.crt",
        directory / "server.key",
    )
    ca_path.write_bytes(ca_cert.public_bytes(pem))
    cert_path.write_bytes(server_cert.public_bytes(pem))
    key_path.write_bytes(
        server_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_path, cert_path, key_path


class TlsRedis(RedisServer):
    """A ``redis-server`` that speaks only TLS (``--port 0 --tls-port P``), with its own CA.

    :attr:`url` is ``rediss://127.0.0.1:P/0``; clients verify the server with
    ``ssl_ca_certs=server.ca_path``. Client certificates are not asked for.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        maker: CertificateMaker = "auto",
        extra_args: Sequence[str] = (),
        binary: str | None = None,
    ) -> None:
        super().__init__(port, extra_args=extra_args, binary=binary)
        self.maker: CertificateMaker = maker
        self.ca_path = self.workdir / "tls" / "ca.crt"
        self.cert_path = self.workdir / "tls" / "server.crt"
        self.key_path = self.workdir / "tls" / "server.key"

    @property
    def url(self) -> str:
        """The ``rediss://`` URL of database 0 of this server."""
        return f"rediss://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> TlsRedis:
        """Make the certificates, then start the server with TLS only."""
        self.ca_path, self.cert_path, self.key_path = make_test_certificates(
            self.workdir / "tls", maker=self.maker
        )
        tls_args = [
            "--port", "0",
            "--tls-port", str(self.port),
            "--tls-cert-file", str(self.cert_path),
            "--tls-key-file", str(self.key_path),
            "--tls-ca-cert-file", str(self.ca_path),
            "--tls-auth-clients", "no",
        ]  # fmt: skip
        if tls_args[0] not in self.extra_args:
            self.extra_args = [*self.extra_args, *tls_args]
        super().start(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Poll ``PING`` over TLS until the server answers, or raise ``TimeoutError``."""
        client = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            ssl=True,
            ssl_ca_certs=str(self.ca_path),
            socket_timeout=1,
        )

        def answered() -> bool | None:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.read_log()}")
            return True if client.ping() else None

        try:
            _poll(answered, timeout=timeout, what=f"TLS redis-server on port {self.port}")
        finally:
            client.close()

    def __enter__(self) -> TlsRedis:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise


# -- unix socket --------------------------------------------------------------------------------


class UnixSocketRedis(RedisServer):
    """A ``redis-server`` that also listens on a unix socket in its directory.

    :attr:`unix_url` is ``unix:///.../redis.sock?db=0``; :attr:`url` (TCP) keeps working.
    """

    def __init__(
        self, port: int | None = None, *, extra_args: Sequence[str] = (), binary: str | None = None
    ) -> None:
        super().__init__(port, extra_args=extra_args, binary=binary)
        self.socket_path = self.workdir / "redis.sock"
        self.extra_args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]

    @property
    def unix_url(self) -> str:
        """The ``unix://`` URL of database 0 of this server."""
        return f"unix://{self.socket_path}?db=0"

    def __enter__(self) -> UnixSocketRedis:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self
