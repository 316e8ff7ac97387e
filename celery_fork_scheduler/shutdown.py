"""A normal stop (SIGTERM, SIGINT) waits until the claimed batch in hand is sent and recorded.

Celery's beat handler raises ``SystemExit`` wherever beat happens to be. Between the fence and
the ``sent`` record, that would leave slots that no replica may publish again (their delivery
is unknown): a rolling deploy would lose them. Between the claim and the fence, it would leave
won claims to the other replicas' lease: late, or lost if every replica is stopping. Only
SIGKILL may lose or delay anything.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

#: The signals a normal stop sends to beat.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_signals_deferred() -> Iterator[None]:
    """Hold back SIGTERM and SIGINT inside the block; deliver the first one at its end.

    Signal handlers can only be changed in the main thread; elsewhere (beat embedded in a
    worker with ``-B``) the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[tuple[signal.Signals, FrameType | None]] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append((signal.Signals(signum), frame))

    previous = {number: signal.signal(number, hold) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if received:
            _deliver(*received[0], previous[received[0][0]])


def _deliver(signum: int, frame: FrameType | None, handler: object) -> None:
    """Run the handler that was in place, as if the signal had just arrived."""
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        os.kill(os.getpid(), signum)
