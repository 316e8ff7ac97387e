"""Backend calls that overlap this replica's Python work: one at a time, in the order asked.

A burst alternates Python (deciding slots, building messages) and Redis (claim and publish
scripts); one after the other, each waits for the other. The lane runs the claim and publish
calls of a tick in a thread of its own, so the next batch's messages are built while Redis
runs the previous batch's script. One thread keeps the calls in the order they were asked
for; the caller waits for every call before the tick ends.

A backend opts in with ``concurrent_calls = True`` (its methods may run beside another
thread's: the Redis backend, whose client hands each thread its own connection). Any other
backend's calls run in the caller's thread when asked for, in the same order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class Lane:
    """Runs backend calls one at a time, in order; in a thread when the backend allows it."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None

    def submit(self, call: Callable[[], T], *, threaded: bool) -> Future[T]:
        """Start ``call``: in the lane's thread when ``threaded`` (unless the interpreter is
        shutting down: no thread starts then), else at once (its error is kept for
        :meth:`Future.result`; a ``BaseException`` such as ``SystemExit`` is not an error of
        the call and goes up at once)."""
        if threaded:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="fork-scheduler-redis"
                )
            with contextlib.suppress(RuntimeError):  # the interpreter is shutting down
                return self._executor.submit(call)
        future: Future[T] = Future()
        try:
            future.set_result(call())
        except Exception as exc:
            future.set_exception(exc)
        return future

    def close(self) -> None:
        """Wait for the calls started, then stop the thread (a later call starts a new one)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
