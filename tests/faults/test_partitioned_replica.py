"""Scenario: Redis reachable from some replicas only (a network partition of one replica).

docs/guarantees.md, failure table: "Redis reachable from some replicas only | The cut-off
replicas publish nothing; the others publish everything. | Errors in the logs of the cut-off
replicas only." With promises 1 (once per slot) and 4 (a dead or stalled winner's claim is
taken over after the claim lease).

Set-up: three real ``celery beat -S fork`` replicas, one real ``celery worker``
(``install(app)``: singleton markers are freed), real ``redis-server``. Each replica reaches the
claims' Redis (``fork_scheduler_redis_url``) through a :class:`CutProxy` of its own, a TCP proxy
in this process, and the **broker** directly, so a cut takes only the claims' Redis away. One
replica at a time is cut (seeded choice), so two are always healthy. The worker reaches both
Redis directly. Two cases:

- ``shared``: the broker is the claims' Redis, same server and database (one step: the claim
  script pushes the message);
- ``separate``: the broker is another Redis server (the fence path: claim, fence, publish,
  ``sent`` record as separate round trips); client timeouts of 1 s.

Each run cuts five or six times, at seeded instants, in one of these ways:

- ``blackhole`` (3-10 s): packets are lost both ways. Bytes on connections opened before the
  cut are held and delivered when the cut heals (TCP's retransmission: a request the client gave
  up on may still run, late); a connection opened during the cut is accepted and then hears
  nothing (reads hang until the client's timeout), and is reset at the heal.
- ``reset`` (3-10 s): every open connection is reset (RST), and so is every new one.
- ``drop_reply`` (3-10 s): requests reach Redis and run; every reply is dropped.
- ``lost:<step>``: ``drop_reply`` sprung by the first request that runs the script of one step
  (the proxy knows the scripts' SHA1s): ``claim`` (the claim won, unheard; on the shared broker
  the claim that also publishes), ``fence`` (the claim is ``publishing``, the replica never
  hears), ``sent`` (the message left, its record's answer is lost). On the shared broker every
  entry here is claimed and published by the claim script itself (overlap ``allow``/``skip``,
  a template), so ``PUBLISH_ONCE`` is not on the wire and ``claim`` is the step. These last
  past the claim lease (11-14 s; the lost fence 25-30 s), so the healthy replicas' takeover
  (or refusal to take over) is exercised.

Entries (every 1 or 2 s): plain ones, an ``overlap="skip"`` one, a ``singleton`` one and a
jittered one.

My reading of "the others publish everything": at every instant two replicas are healthy and
Redis is up, so promise 1 applies without the outage exceptions: every slot due from shortly
after the replicas are up (``MARGIN``) until the end is published exactly once, and the
worker receives it once. Slots owned by the cut
replica come up to ``fork_scheduler_owner_grace`` (1 s) late, or, for a claim the cut replica
won and never heard of, up to ``fork_scheduler_claim_lease`` (10 s) late (taken over with the
same task id), or, for a slot it fenced and never heard of, when it heals (nobody else may
publish a fenced slot; the others report it ``in_flight`` at the lease's end); so the run keeps
going for more than a lease after the last heal before it is judged, and no slot is allowed to
be missing for lateness. The only documented misses are the
singleton ones: a slot of the ``skip``/``singleton`` entries may be skipped ``busy`` while an
earlier run holds the marker (a slot taken over after the lease holds it from its claim until
its worker ends it); such a miss is allowed only when the entry's history in Redis records that
very slot ``skipped`` with reason ``busy``. Anything else missing, and any slot received twice
by the worker, fails the test. An ERROR line in a replica's log must fall inside one of its own
cuts (or the client timeouts of the attempts that straddle its heal), and some cut must have
logged one. A cut shorter than ``(fork_scheduler_max_retries + 1)`` client timeouts (20 s by
default) may log nothing: each attempt waits for its timeout, and one after the heal succeeds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import selectors
import socket
import struct
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis
from e2e.harness import worker_fires

from celery_fork_scheduler.backends import lua
from celery_fork_scheduler.testing import CeleryProcess, RedisServer, wait_until

from .conftest import MARGIN, expected_every, now, start_beat, wait_started

pytestmark = pytest.mark.e2e

#: ``fork_scheduler_claim_lease`` (default) and ``fork_scheduler_owner_grace`` (default).
LEASE = 10.0
OWNER_GRACE = 1.0

MODES = ("blackhole", "reset", "drop_reply")
#: ``struct linger {on, 0 s}``: close() sends a RST.
LINGER_ZERO = struct.pack("ii", 1, 0)


def _sha(*sources: str) -> frozenset[bytes]:
    return frozenset(hashlib.sha1(source.encode()).hexdigest().encode() for source in sources)


#: The lost-reply cuts sprung at one step of a publish: the request runs in Redis, its reply and
#: every later one are dropped (``drop_reply`` from that request on).
STEPS = {
    # The claim (on the shared broker also the claim that publishes in the same script).
    "lost:claim": _sha(lua.CLAIM, lua.CLAIM_MANY),
    # The fence of the fence path (separate broker): the claim is ``publishing``.
    "lost:fence": _sha(lua.BEGIN_PUBLISH),
    # The ``sent`` record of the fence path: the message left, the record's answer is lost.
    "lost:sent": _sha(lua.MARK_SENT),
}
#: How long a lost-reply cut lasts (default: one to four seconds past the claim lease). A lost
#: fence reply: long past the lease and twice the catch-up grace (the fenced slot is its
#: replica's alone; the others report it ``in_flight`` when the lease ends).
LOST_LENGTH = {"lost:fence": (25.0, 30.0)}

PROJECT = """
import os
from celery_fork_scheduler import install

app.conf.fork_scheduler_redis_url = os.environ["TEST_CLAIMS_URL"]
app.conf.fork_scheduler_history_size = 5000
if os.environ.get("TEST_SOCKET_TIMEOUT"):
    _timeout = float(os.environ["TEST_SOCKET_TIMEOUT"])
    app.conf.fork_scheduler_redis_options = {
        "socket_timeout": _timeout,
        "socket_connect_timeout": _timeout,
    }
app.conf.beat_schedule = {
    "plain-1s-a": {"task": "record", "schedule": every(1).seconds},
    "plain-1s-b": {"task": "record", "schedule": every(1).seconds},
    "plain-1s-c": {"task": "record", "schedule": every(1).seconds},
    "plain-2s": {"task": "record", "schedule": every(2).seconds},
    "skip-1s": {"task": "record", "schedule": every(1).seconds, "overlap": "skip"},
    "single-2s": {"task": "record", "schedule": every(2).seconds, "singleton": True},
    "jitter-2s": {"task": "record", "schedule": every(2).seconds, "jitter": 1.5},
}
install(app)
"""

#: entry -> period in seconds (as in ``PROJECT``).
ENTRIES = {
    "plain-1s-a": 1,
    "plain-1s-b": 1,
    "plain-1s-c": 1,
    "plain-2s": 2,
    "skip-1s": 1,
    "single-2s": 2,
    "jitter-2s": 2,
}
SINGLETONS = {"skip-1s", "single-2s"}


class CutProxy:
    """A TCP proxy to one Redis that can cut the client off in three ways (see the module).

    One selector thread; the mode changes under a lock. Local sockets, small payloads: a
    ``sendall`` to a live peer does not block for long.
    """

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.mode = "ok"
        self.lock = threading.Lock()
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        #: pair id -> dict(client, upstream, held_up, held_down, closing, born_cut)
        self.pairs: dict[int, dict] = {}
        self.stats: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="cut-proxy")
        self._next = 0
        #: (script SHAs as bytes, mode): on the first request naming one of them, switch to the
        #: mode before forwarding it (so its reply is the first one lost).
        self.trap: tuple[frozenset[bytes], str] | None = None
        self.sprung = threading.Event()
        self.sprung_at = now()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> CutProxy:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for pair in list(self.pairs.values()):
            self._drop(pair)
        self.listener.close()

    # -- control ---------------------------------------------------------------------------

    def cut(self, mode: str) -> None:
        assert mode in MODES
        with self.lock:
            self.mode = mode
            self.stats[f"cut:{mode}"] += 1
            if mode == "reset":
                for pair in list(self.pairs.values()):
                    self._drop(pair, reset=True)

    def arm(self, shas: frozenset[bytes], mode: str) -> None:
        """Cut in ``mode`` at the first request that runs one of the scripts ``shas``."""
        with self.lock:
            self.sprung.clear()
            self.trap = (shas, mode)

    def disarm(self) -> None:
        with self.lock:
            self.trap = None

    def heal(self) -> None:
        with self.lock:
            self.trap = None
            mode, self.mode = self.mode, "ok"
            for pair in list(self.pairs.values()):
                if pair["born_cut"]:
                    # Never established through a real network: it goes.
                    self._drop(pair, reset=True)
                    continue
                try:
                    if pair["held_up"] and pair["upstream"] is not None:
                        pair["upstream"].sendall(bytes(pair["held_up"]))
                        self.stats["flushed_requests_bytes"] += len(pair["held_up"])
                    if pair["held_down"]:
                        pair["client"].sendall(bytes(pair["held_down"]))
                except OSError:
                    self._drop(pair)
                    continue
                pair["held_up"].clear()
                pair["held_down"].clear()
                if pair["closing"]:
                    self._drop(pair)
            self.stats[f"heal:{mode}"] += 1

    # -- plumbing --------------------------------------------------------------------------

    def _drop(self, pair: dict, reset: bool = False) -> None:
        self.pairs.pop(pair["id"], None)
        for sock in (pair["client"], pair["upstream"]):
            if sock is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(sock)
            if reset:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except BlockingIOError:
            return
        self.stats["accepted"] += 1
        if self.mode == "reset":
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
            client.close()
            self.stats["reset_new"] += 1
            return
        upstream = None
        if self.mode != "blackhole":
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.setblocking(True)
        self._next += 1
        pair = {
            "id": self._next,
            "client": client,
            "upstream": upstream,
            "held_up": bytearray(),
            "held_down": bytearray(),
            "closing": False,
            "born_cut": self.mode == "blackhole",
        }
        self.pairs[pair["id"]] = pair
        client.setblocking(True)
        self.selector.register(client, selectors.EVENT_READ, (pair["id"], "up"))
        if upstream is not None:
            self.selector.register(upstream, selectors.EVENT_READ, (pair["id"], "down"))

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self.selector.select(0.05):
                with self.lock:
                    if key.data is None:
                        self._accept()
                        continue
                    pair_id, direction = key.data
                    pair = self.pairs.get(pair_id)
                    if pair is None:
                        continue
                    try:
                        data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    except OSError:
                        data = b""
                    self._pass(pair, direction, data)

    def _pass(self, pair: dict, direction: str, data: bytes) -> None:
        mode = self.mode
        if not data:
            if mode == "blackhole" and not pair["born_cut"]:
                # The FIN is a packet too: it arrives at the heal, after the held bytes.
                pair["closing"] = True
                self.selector.unregister(pair["client"] if direction == "up" else pair["upstream"])
                return
            self._drop(pair)
            return
        if direction == "up" and self.trap is not None and mode == "ok":
            shas, trap_mode = self.trap
            if any(sha in data for sha in shas):
                self.trap = None
                self.mode = mode = trap_mode
                self.stats[f"cut:{trap_mode}@script"] += 1
                self.sprung_at = now()
                self.sprung.set()
        if direction == "up":
            if mode == "blackhole":
                pair["held_up"] += data
                self.stats["held_request_bytes"] += len(data)
                return
            if pair["upstream"] is None:
                return
            self.stats["requests"] += 1 if mode == "ok" else 0
            self.stats["requests_reply_dropped"] += 1 if mode == "drop_reply" else 0
            try:
                pair["upstream"].sendall(data)
            except OSError:
                self._drop(pair)
        else:
            if mode == "blackhole":
                pair["held_down"] += data
                return
            if mode == "drop_reply":
                self.stats["replies_dropped"] += 1
                return
            try:
                pair["client"].sendall(data)
            except OSError:
                self._drop(pair)


def history_busy(claims: redis.Redis, entry: str) -> set[str]:
    """Slots (isoformat) the entry's history records skipped ``busy`` (the project keeps
    every item: ``fork_scheduler_history_size`` is large)."""
    busy = set()
    for raw in claims.lrange(f"scheduler:{{{entry}}}:history", 0, -1):
        item = json.loads(raw)
        if "busy" in str(item.get("outcome")):
            slot = datetime.fromtimestamp(item["slot"] / 1e6, timezone.utc)
            busy.add(slot.isoformat())
    return busy


ERROR_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}): ERROR/", re.M)


def error_times(log: str) -> list[datetime]:
    """When each ERROR line of a beat log was written (the host's local time, as UTC)."""
    return [
        datetime.strptime(f"{stamp}.{millis}", "%Y-%m-%d %H:%M:%S.%f").astimezone(timezone.utc)
        for stamp, millis in ERROR_LINE.findall(log)
    ]


def run_partition(
    case: str,
    seed: int,
    *,
    claims_server: RedisServer,
    broker_url: str,
    workdir: Path,
    processes: list[CeleryProcess],
    modes: list[str],
    socket_timeout: float | None = None,
) -> dict:
    """Run the cluster, cut one replica at a time off the claims' Redis, count what ran."""
    rng = random.Random(seed)
    began = time.monotonic()
    proxies = [CutProxy(claims_server.port).start() for _ in range(3)]
    try:
        (workdir / "proj.py").write_text(_project_source())
        env = {"TEST_BROKER_URL": broker_url, "TEST_CLAIMS_URL": claims_server.url}
        if socket_timeout is not None:
            env["TEST_SOCKET_TIMEOUT"] = str(socket_timeout)
        broker = redis.Redis.from_url(broker_url)
        claims = redis.Redis.from_url(claims_server.url)
        # The worker reaches the claims' Redis directly (it frees the singleton markers).
        worker = CeleryProcess.worker("proj", cwd=workdir, workdir=workdir, env=env, concurrency=4)
        processes.append(worker)
        worker.start()
        wait_until(lambda: " ready." in worker.log(), timeout=60, what="the worker")
        beats = [
            start_beat(
                "proj",
                workdir,
                {**env, "TEST_CLAIMS_URL": proxy.url},
                processes,
                f"beat-{i}",
                wait=False,
            )
            for i, proxy in enumerate(proxies)
        ]
        for beat in beats:
            wait_started(beat, processes)
        start = now()
        #: (replica, mode, cut at, healed at)
        cuts: list[tuple[int, str, datetime, datetime]] = []
        rng.shuffle(modes)
        previous = -1
        time.sleep(rng.uniform(2.0, 4.0))
        for mode in modes:
            target = rng.choice([i for i in range(3) if i != previous])
            previous = target
            proxy = proxies[target]
            if mode in STEPS:
                # Outlasts the claim lease: the others may take the claim over meanwhile.
                length = rng.uniform(*LOST_LENGTH.get(mode, (LEASE + 1.0, LEASE + 4.0)))
                # The step may be another replica's (a jittered entry's one-step publish):
                # try each replica in turn, the drawn one first.
                order = [target] + [i for i in range(3) if i != target]
                for target in order:
                    proxy = proxies[target]
                    proxy.arm(STEPS[mode], "drop_reply")
                    if proxy.sprung.wait(6.0):
                        break
                    proxy.disarm()
                    if proxy.sprung.is_set():
                        break
                else:
                    cuts.append((target, mode + " (never sprung)", now(), now()))
                    continue
                previous = target
                cut_at = proxy.sprung_at
            else:
                length = rng.uniform(3.0, 10.0)
                # Half the time just after a whole second (claims in flight), else anywhere.
                if rng.random() < 0.5:
                    time.sleep((1 - time.time() % 1) + rng.uniform(0.0, 0.08))
                cut_at = now()
                proxy.cut(mode)
            time.sleep(length)
            proxy.heal()
            cuts.append((target, mode, cut_at, now()))
            time.sleep(rng.uniform(1.5, 3.5))
        # A late claim is owed within a lease after the heal; wait it out, plus a margin.
        time.sleep(LEASE + 4.0)
        end = now()
        alive = [beat.alive() for beat in beats]
        for beat in beats:
            beat.stop()
        # Let the worker run what was published.
        wait_until(lambda: broker.llen("celery") == 0, timeout=60, what="the queue to drain")
        # ... and record it: until the worker's record stops growing between two polls
        counts: list[int] = []

        def settled() -> bool:  # (the first poll only takes the count: a second apart)
            counts.append(broker.llen("test:received"))
            return len(counts) > 1 and counts[-1] == counts[-2]

        wait_until(settled, timeout=60, interval=1.0, what="the worker's records to settle")
        fires = worker_fires(broker)
        logs = "\n".join(
            f"--- {p.log_path.name}\n" + "\n".join(p.log().splitlines()[-80:]) for p in processes
        )
        first = start + MARGIN
        last = end - timedelta(seconds=2)
        expected = {e: expected_every(period, first, last) for e, period in ENTRIES.items()}
        missing: dict[str, list[str]] = {}
        excused: dict[str, list[str]] = {}
        total = 0
        for entry, slots in expected.items():
            busy = history_busy(claims, entry) if entry in SINGLETONS else set()
            for slot in slots:
                total += 1
                key = slot.isoformat()
                if fires.counts[entry][key] > 0:
                    continue
                if key in busy:
                    excused.setdefault(entry, []).append(key)
                else:
                    missing.setdefault(entry, []).append(key)
        duplicates = {
            entry: {slot: n for slot, n in counter.items() if n > 1}
            for entry, counter in fires.counts.items()
            if any(n > 1 for n in counter.values())
        }
        # An ERROR line is the cut replica's only: within its cut (plus the attempts that
        # straddle the heal: (max_retries + 1) client timeouts).
        straddle = timedelta(seconds=4 * (socket_timeout or 5.0) + 2)
        stray_errors: dict[str, list[str]] = {}
        cut_errors = 0
        for i, beat in enumerate(beats):
            windows = [(a - timedelta(seconds=0.5), b + straddle) for t, _, a, b in cuts if t == i]
            for at in error_times(beat.log()):
                if any(low <= at <= high for low, high in windows):
                    cut_errors += 1
                else:
                    stray_errors.setdefault(beat.log_path.name, []).append(f"{at:%T.%f}")
        result = {
            "case": case,
            "seed": seed,
            "expected": total,
            "received": sum(len(c) for c in fires.counts.values()),
            "duplicates": duplicates,
            "missing": missing,
            "excused_busy": {e: len(s) for e, s in excused.items()},
            "cuts": [
                (f"beat-{t}", m, f"{a:%T.%f}"[:-3], round((b - a).total_seconds(), 1))
                for t, m, a, b in cuts
            ],
            "proxy": [dict(p.stats) for p in proxies],
            "alive": alive,
            "stray_errors": stray_errors,
            "cut_errors": cut_errors,
            "seconds": round(time.monotonic() - began, 1),
            "logs": logs,
        }
        print(
            f"\nPARTITION {case} seed={seed}: expected={total} "
            f"received={result['received']} dup={sum(len(d) for d in duplicates.values())} "
            f"missing={sum(len(m) for m in missing.values())} "
            f"excused_busy={result['excused_busy']} cuts={result['cuts']} "
            f"cut_errors={cut_errors} stray_errors={stray_errors} "
            f"seconds={result['seconds']}\nproxies={result['proxy']}"
        )
        broker.close()
        claims.close()
        return result
    finally:
        for proxy in proxies:
            proxy.close()


def _project_source() -> str:
    from e2e.harness import PROJECT_TEMPLATE

    return PROJECT_TEMPLATE.format(body=PROJECT)


def check(result: dict) -> None:
    summary = {k: v for k, v in result.items() if k != "logs"}
    assert all(result["alive"]), f"a replica died: {summary}\n{result['logs']}"
    assert not result["duplicates"], f"slots received twice: {summary}\n{result['logs']}"
    assert not result["missing"], f"slots never published: {summary}\n{result['logs']}"
    assert not result["stray_errors"], f"errors outside the replica's own cuts: {summary}"
    assert result["cut_errors"] > 0, f"no cut replica logged an error: {summary}"


@pytest.fixture
def processes():
    started: list[CeleryProcess] = []
    yield started
    for process in started:
        process.stop()


@pytest.mark.skipif(
    os.environ.get("FORK_SCHEDULER_LONG_FAULTS") != "1",
    reason="90 s; FORK_SCHEDULER_LONG_FAULTS=1 runs it (CI runs the fence path's case below)",
)
def test_partitioned_replica_shared_broker(claims_server, workdir, processes) -> None:
    """Broker = the claims' Redis (same server, same database): the one-step path."""
    result = run_partition(
        "shared",
        20260611,
        claims_server=claims_server,
        broker_url=claims_server.url,
        workdir=workdir,
        processes=processes,
        modes=[*MODES, "lost:claim", "lost:claim"],
    )
    check(result)


def test_partitioned_replica_separate_broker(claims_server, redis_url, workdir, processes) -> None:
    """Broker = another Redis server, reachable by the cut replica: the fence path; client
    timeouts of 1 s (more attempts per cut, errors logged within a cut)."""
    result = run_partition(
        "separate",
        20260612,
        claims_server=claims_server,
        broker_url=redis_url,
        workdir=workdir,
        processes=processes,
        modes=[*MODES, "lost:claim", "lost:fence", "lost:sent"],
        socket_timeout=1.0,
    )
    check(result)
