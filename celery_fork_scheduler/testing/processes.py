"""Real ``celery beat`` and ``celery worker`` subprocesses, for demos and end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = ["CeleryProcess", "remove_stale_faketime_files", "wait_until"]

#: Where libfaketime keeps a semaphore and a shared-memory file per wrapped process.
SHARED_MEMORY = Path("/dev/shm")


def remove_stale_faketime_files(directory: Path = SHARED_MEMORY) -> int:
    """Delete the files libfaketime left for processes that are gone; return how many.

    A process killed under libfaketime leaves ``faketime_shm_<pid>`` and
    ``sem.faketime_sem_<pid>`` behind; when the pid comes round again, the ``faketime``
    wrapper refuses to start ("sem_open: File exists").
    """
    removed = 0
    with contextlib.suppress(OSError):
        for path in directory.glob("*faketime_s*_*"):
            pid = path.name.rsplit("_", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_until(
    predicate: Callable[[], bool], *, timeout: float, interval: float = 0.1, what: str = "condition"
) -> None:
    """Poll ``predicate`` until true; after ``timeout`` raise ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class CeleryProcess:
    """One ``celery -A <app> <command> ...`` child process, its output in a log file."""

    def __init__(
        self,
        app: str,
        command: Sequence[str],
        *,
        cwd: str | os.PathLike[str],
        log_path: str | os.PathLike[str],
        env: Mapping[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        self.args = [*prefix, sys.executable, "-m", "celery", "-A", app, *command]
        self.cwd = Path(cwd)
        self.log_path = Path(log_path)
        self.env = {**os.environ, **(env or {})}
        self.env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(self.cwd), self.env.get("PYTHONPATH", "")])
        )
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def beat(
        cls,
        app: str,
        *,
        cwd: str | os.PathLike[str],
        workdir: str | os.PathLike[str],
        name: str = "beat",
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        prefix: Sequence[str] = (),
        scheduler: str = "fork",
    ) -> CeleryProcess:
        """A ``celery beat -S fork`` replica; its state file and log go to ``workdir``."""
        state = Path(workdir) / f"{name}-schedule"
        command = ["beat", "-S", scheduler, "-l", "info", "-s", str(state), *extra_args]
        log = Path(workdir) / f"{name}.log"
        return cls(app, command, cwd=cwd, log_path=log, env=env, prefix=prefix)

    @classmethod
    def worker(
        cls,
        app: str,
        *,
        concurrency: int = 8,
        cwd: str | os.PathLike[str],
        workdir: str | os.PathLike[str],
        name: str = "worker",
        env: Mapping[str, str] | None = None,
    ) -> CeleryProcess:
        """A ``celery worker`` with a thread pool, named ``name``; its log goes to ``workdir``."""
        command = [
            "worker",
            "-l",
            "info",
            "-P",
            "threads",
            "-c",
            str(concurrency),
            "-n",
            f"{name}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        return cls(app, command, cwd=cwd, log_path=Path(workdir) / f"{name}.log", env=env)

    @property
    def pid(self) -> int:
        """The process id (the process must be started)."""
        assert self.process is not None, "not started"
        return self.process.pid

    def start(self) -> CeleryProcess:
        """Start the process, appending its output to the log file."""
        if self.args and Path(self.args[0]).name == "faketime":
            remove_stale_faketime_files()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.args,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        """True while the process runs."""
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process and its children (a wrapper such as ``faketime``
        runs the real process as a child): the whole process group it leads."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self.signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(30)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        if self.process is None:
            return
        if self.alive():
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # children that outlived the leader

    def log(self) -> str:
        """The process output so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> CeleryProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
