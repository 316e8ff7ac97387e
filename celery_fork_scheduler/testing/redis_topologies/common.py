"""Plumbing shared by the Redis topologies: polling, raw commands, clients, start and exit."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import redis

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


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Startable(Protocol):
    def start(self, timeout: float = ...) -> object: ...

    def cleanup(self) -> None: ...


_S = TypeVar("_S", bound=_Startable)


def _started(helper: _S) -> _S:
    """``helper.start()``; if that fails, ``helper.cleanup()`` (stop, delete) and re-raise."""
    try:
        helper.start()
    except BaseException:
        helper.cleanup()
        raise
    return helper


class _Topology:
    """Exit plumbing shared by the multi-process helpers."""

    def cleanup(self) -> None:
        raise NotImplementedError

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()
