"""Known bugs re-introduced on purpose, to prove the simulator finds them.

Each mutation puts one finding of the review back into the *current* code, in this process
only (the Lua source the backend registers, or one method of the scheduler or backend), for
the duration of a run. ``python scripts/simulate.py --mutation NAME --seeds 1-200`` then
lists the seeds that catch it; ``scripts/mutations.sh`` runs the whole table.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import celery_fork_scheduler.backfill as backfill_module
import celery_fork_scheduler.manager as manager_module
import celery_fork_scheduler.pipeline as pipeline_module
import celery_fork_scheduler.scheduler as scheduler_module
import celery_fork_scheduler.worker as worker_module
from celery_fork_scheduler.backends import lua
from celery_fork_scheduler.backends.base import ClaimOutcome
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.entry import Entry
from celery_fork_scheduler.errors import BackendUnavailableError
from celery_fork_scheduler.scheduler import Scheduler
from celery_fork_scheduler.store import RuntimeStore

DESCRIPTIONS: dict[str, str] = {
    "always_won": "a broken claim backend: a slot claimed by another replica answers 'won' and "
    "the fence lets every claim through (sanity check of the checker, not a finding)",
    "finding1": "the claim restores a lost mark only when the whole state hash is gone "
    "(a worker's outcome record made it again without hwm)",
    "finding2": "a publish that raised with uncertain delivery is tried again a second later",
    "finding4": "the restored mark is max(known, Redis now + 0.5 s): it covers the next slot",
    "finding5": "a burst is cut into claim chunks by slot, started at a replica-specific "
    "chunk: an entry's later slots can be claimed before its earlier ones",
    "finding6": "queue items are matched to their entry by identity: an edit drops the slot "
    "due in its tick and the pending/takeover retries of that entry",
    "finding13": "one failing script in a claim pipeline fails the whole chunk "
    "(backend unavailable): no entry of the chunk fires",
    "retry_frees": "a retry frees the singleton marker and the cap place (on_postrun treats "
    "RETRY as the last attempt; issue 14 item 1)",
    "no_retake": "a run does not check its marker and place as it starts (START_SINGLETON and "
    "START_CAP always answer 'held'; issue 14 item 2)",
    "held_no_place": "the held buffer_one run is published without a place under the cap "
    "(issue 14 item 3)",
    "cap_counts_own": "TAKE_CAP_PLACES counts a run's own place against it (issue 14 item 5)",
    "held_ignores_pause": "RELEASE publishes the held run of a paused entry (issue 14 item 6)",
    "held_superseded_silently": "a won buffer_one claim drops the run held back while no run "
    "held the marker without recording or reporting it (seeds 457, 517, 5108 of sim-fixes-2)",
    "cap_prefix": "TAKE_CAP_PLACES refuses every run behind the first one refused, a run "
    "asked about again that holds its own place included (seeds 552, 5070 of sim-fixes-2)",
    "shard_unfollowed": "a replica follows only the first shard of the runtime entries: changes "
    "of the others are never applied (run with --runtime-shards 4; a no-op with one shard)",
    "readd_keeps_state": "a runtime entry added anew keeps the removed one's state: run count, "
    "pause, held run (issue 14 item 8)",
    "queue_lifo": "RELEASE hands the marker to the newest queued run of buffer_all, not the "
    "oldest (issue 22 item 5)",
    "sigterm": "a normal stop is not deferred from the claim request to the record "
    "(stop_signals_deferred is a no-op): SIGTERM leaves fenced slots unsent",
    "jitter_ignored": "a jittered slot is queued and decided at its nominal time, and the claim "
    "script judges it there: its offset is ignored (issue 22)",
    "backfill_ignores_history": "BACKFILL_CLAIM ignores the entry's history and state: a slot "
    "the scheduler published is backfilled again (issue 22)",
    "backfill_undecided": "BACKFILL_CLAIM checks neither Redis's clock nor the high-water mark: "
    "a slot the scheduler has not decided yet, or a future one, is backfilled (issue 22)",
    "backfill_failed_as_sent": "a backfill publish that raised is reported and recorded 'sent' "
    "(issue 22)",
    "backfill_newest_first": "a backfill publishes its range newest slot first (issue 22)",
    "take_over_no_wait": "TAKE_OVER takes the marker of a cancel_other / terminate_other entry "
    "from the run holding it without revoking it or waiting for it to stop (issue 22 item 5)",
}


def _script(name: str, *edits: tuple[str, str]) -> Callable[[], Callable[[], None]]:
    """Edit one of the worker's scripts (``lua.<name>``, read at each call)."""

    def apply() -> Callable[[], None]:
        original = getattr(lua, name)
        mutated = original
        for old, new in edits:
            if old not in mutated:
                raise RuntimeError(f"mutation no longer applies: {old!r} not in lua.{name}")
            mutated = mutated.replace(old, new)
        setattr(lua, name, mutated)

        def undo() -> None:
            setattr(lua, name, original)

        return undo

    return apply


def _backfill_script(*edits: tuple[str, str]) -> Callable[[], Callable[[], None]]:
    """Edit ``BACKFILL_CLAIM`` as the backfill module registers it (at each backfill)."""

    def apply() -> Callable[[], None]:
        original = backfill_module.BACKFILL_CLAIM
        mutated = original
        for old, new in edits:
            if old not in mutated:
                raise RuntimeError(f"mutation no longer applies: {old!r} not in BACKFILL_CLAIM")
            mutated = mutated.replace(old, new)
        backfill_module.BACKFILL_CLAIM = mutated

        def undo() -> None:
            backfill_module.BACKFILL_CLAIM = original

        return undo

    return apply


def _failed_as_sent(original: Any) -> Any:
    def publish(self: Any, publisher: Any, slot: Any, task_id: str) -> Any:
        result = original(self, publisher, slot, task_id)
        if result.outcome == "failed":
            self.record(slot, task_id, "sent", "")
            return replace(result, outcome="sent", detail="")
        return result

    return publish


def _newest_first(original: Any) -> Any:
    def run_backfill(
        app: Any,
        client: Any,
        keys: Any,
        settings: Any,
        entry: Any,
        slots: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        return original(app, client, keys, settings, entry, list(reversed(slots)), *args, **kwargs)

    return run_backfill


def _set(owner: Any, name: str, value: Any) -> Callable[[], Callable[[], None]]:
    return _patch(owner, name, lambda original: value)


def _held_without_place(original: Any) -> Any:
    def publish_held(self: Any, held: Any) -> Any:
        settings = self.settings
        self._settings = replace(settings, max_concurrent=0)
        try:
            return original(self, held)
        finally:
            self._settings = settings

    return publish_held


def _lua(*edits: tuple[str, str]) -> Callable[[], Callable[[], None]]:
    """Edit the claim script (and the scripts loaded on NOSCRIPT): each ``(old, new)`` once."""

    def apply() -> Callable[[], None]:
        original, scripts = lua.CLAIM, lua.ALL_SCRIPTS
        mutated = original
        for old, new in edits:
            if old not in mutated:
                raise RuntimeError(f"mutation no longer applies: {old!r} not in the claim script")
            mutated = mutated.replace(old, new)
        lua.CLAIM = mutated
        lua.ALL_SCRIPTS = tuple(mutated if s is original else s for s in scripts)

        def undo() -> None:
            lua.CLAIM, lua.ALL_SCRIPTS = original, scripts

        return undo

    return apply


def _claim_scripts(*edits: tuple[str, str]) -> Callable[[], Callable[[], None]]:
    """Edit both claim scripts (one slot, and a batch: ``CLAIM`` and ``CLAIM_MANY``, and the
    scripts loaded on NOSCRIPT): each ``(old, new)`` once in each."""

    def apply() -> Callable[[], None]:
        originals, scripts = (lua.CLAIM, lua.CLAIM_MANY), lua.ALL_SCRIPTS
        mutated = []
        for original in originals:
            text = original
            for old, new in edits:
                if old not in text:
                    raise RuntimeError(f"mutation no longer applies: {old!r} not in a claim script")
                text = text.replace(old, new)
            mutated.append(text)
        lua.CLAIM, lua.CLAIM_MANY = mutated
        swap = dict(zip(originals, mutated, strict=True))
        lua.ALL_SCRIPTS = tuple(swap.get(s, s) for s in scripts)

        def undo() -> None:
            (lua.CLAIM, lua.CLAIM_MANY), lua.ALL_SCRIPTS = originals, scripts

        return undo

    return apply


def _patch(owner: Any, name: str, make: Callable[[Any], Any]) -> Callable[[], Callable[[], None]]:
    def apply() -> Callable[[], None]:
        original = getattr(owner, name)
        setattr(owner, name, make(original))

        def undo() -> None:
            setattr(owner, name, original)

        return undo

    return apply


def _finding2() -> Callable[[], None]:
    """Uncertain delivery is not recognised: the failure counts as 'not sent' and is retried."""

    class NeverRaised(Exception):
        pass

    undo = []
    for name, value in (
        ("DeliveryUncertain", NeverRaised),
        ("is_transient", lambda error: True),
    ):
        if hasattr(pipeline_module, name):
            original = getattr(pipeline_module, name)
            setattr(pipeline_module, name, value)
            undo.append((name, original))

    def restore() -> None:
        for name, original in undo:
            setattr(pipeline_module, name, original)

    return restore


def _old_chunks(original: Any) -> Any:
    def chunks(self: Any, items: list[Any]) -> list[list[Any]]:
        items = sorted(items, key=lambda item: (item.slot, item.entry.name))
        result: list[list[Any]] = [[]]
        for item in items:
            if len(result[-1]) >= scheduler_module.CLAIM_BATCH:
                result.append([])
            result[-1].append(item)
        start = zlib.crc32(self.backend.replica_id.encode()) % len(result)
        return result[start:] + result[:start]

    return chunks


def _by_identity(original: Any) -> Any:
    def work_for(self: Any, item: Any, *args: Any, **kwargs: Any) -> Any:
        if self.entries.get(item.entry.name) is not item.entry:
            return None
        return original(self, item, *args, **kwargs)

    return work_for


def _whole_pipeline_fails(original: Any) -> Any:
    def claim(self: Any, claims: Any) -> Any:
        results = original(self, claims)
        for result in results:
            if result.outcome is getattr(ClaimOutcome, "ERROR", None):
                raise BackendUnavailableError(f"Redis refused the command: {result.error}")
        return results

    return claim


def _always_won(original: Any) -> Any:
    def claim(self: Any, claims: Any) -> Any:
        results = original(self, claims)
        return [
            replace(result, outcome=ClaimOutcome.WON)
            if result.outcome is ClaimOutcome.CLAIMED
            else result
            for result in results
        ]

    return claim


def _always_fenced(original: Any) -> Any:
    def begin_publish(self: Any, claims: Any) -> Any:
        original(self, claims)
        return [True for _ in claims]

    return begin_publish


def _both(*undos: Callable[[], None]) -> Callable[[], None]:
    def undo() -> None:
        for step in reversed(undos):
            step()

    return undo


def _first_shard_only(original: Callable[..., Any]) -> Callable[..., Any]:
    """``RuntimeStore.changes_since`` that reports no change in any shard but shard 0."""

    def changes_since(self: RuntimeStore, version: int, anchor: Any = None) -> Any:
        changes = original(self, version, anchor)
        if self.keys.runtime_tag == "runtime":
            return changes
        return replace(changes, version=version, changed={}, removed=[])

    return changes_since


MUTATIONS: dict[str, Callable[[], Callable[[], None]]] = {
    "always_won": lambda: _both(
        _patch(RedisBackend, "claim", _always_won)(),
        _patch(RedisBackend, "begin_publish", _always_fenced)(),
    ),
    "finding1": _lua(
        ("if not hwm_text then", "if redis.call('EXISTS', KEYS[1]) == 0 then"),
        ("elseif known > hwm then", "elseif false then"),
    ),
    "finding2": _finding2,
    "finding4": _lua(
        (
            "restored = math.max(known, lost_at + tonumber(ARGV[4]))",
            "restored = math.max(known, now + tonumber(ARGV[4]))",
        ),
    ),
    "finding5": _patch(Scheduler, "_chunks", _old_chunks),
    "finding6": _patch(Scheduler, "_work_for", _by_identity),
    "finding13": _patch(RedisBackend, "claim", _whole_pipeline_fails),
    "retry_frees": _set(worker_module, "_NOT_FINAL", frozenset()),
    "no_retake": lambda: _both(
        _script("START_SINGLETON", ("  if holder then\n    return 0\n  end\n", ""))(),
        _script(
            "START_CAP",
            ("if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then\n  return 0\nend\n", ""),
        )(),
    ),
    "held_no_place": _patch(worker_module.WorkerHooks, "_publish_held", _held_without_place),
    "cap_counts_own": _script(
        "TAKE_CAP_PLACES",
        ("(mine or free > 0)", "free > 0"),
        ("    if not mine then\n      free = free - 1\n    end\n", "    free = free - 1\n"),
    ),
    "held_superseded_silently": _lua(
        ("    redis.call('HINCRBY', KEYS[1], 'skips:superseded', 1)\n", ""),
        ("    if held_slot then\n", "    if false then\n"),
        ("    return {'won', 0, held}\n", "    return {'won', 0}\n"),
    ),
    "cap_prefix": _script(
        "TAKE_CAP_PLACES",
        ("local granted = {}\n", "local granted = {}\nlocal refused = false\n"),
        ("  if (mine or free > 0) then\n", "  if not refused and (mine or free > 0) then\n"),
        ("    granted[#granted + 1] = 0\n", "    refused = true\n    granted[#granted + 1] = 0\n"),
    ),
    "queue_lifo": _script(
        "RELEASE", ("held = redis.call('LPOP', KEYS[2])", "held = redis.call('RPOP', KEYS[2])")
    ),
    "held_ignores_pause": _script(
        "RELEASE", ("if redis.call('HGET', KEYS[3], 'paused') then", "if false then")
    ),
    "shard_unfollowed": _patch(
        RuntimeStore, "changes_since", lambda original: _first_shard_only(original)
    ),
    "readd_keeps_state": _patch(
        RuntimeStore, "_start_afresh", lambda original: lambda self, pipe, name: pipe
    ),
    "sigterm": _patch(
        scheduler_module, "stop_signals_deferred", lambda original: contextlib.nullcontext
    ),
    "jitter_ignored": lambda: _both(
        _patch(Entry, "due_edge", lambda original: lambda self, at: at)(),
        _patch(
            Scheduler,
            "_push_chain",
            lambda original: (
                lambda self, entry, slot: self.queue.push(slot.timestamp(), entry, slot)
            ),
        )(),
        # (the claim script judges a jittered slot at slot + offset too, since 7b887da)
        _claim_scripts(
            ("local due_at = slot + (tonumber(ARGV[19] or '0') or 0)", "local due_at = slot")
        )(),
    ),
    "backfill_ignores_history": _backfill_script(
        ("if slot == hwm and redis.call('HGET', KEYS[1], 'state') == 'sent' then", "if false then"),
        (
            "elseif outcome ~= 'failed' and string.sub(outcome, 1, 8) ~= 'skipped:' then",
            "elseif false then",
        ),
    ),
    "backfill_undecided": _backfill_script(
        ("if slot > now then", "if false then"),
        ("if not hwm or slot > hwm then", "if false then"),
    ),
    "backfill_failed_as_sent": _patch(backfill_module._Run, "publish", _failed_as_sent),
    "backfill_newest_first": _patch(manager_module, "run_backfill", _newest_first),
    "take_over_no_wait": _script("TAKE_OVER", ("if holder then\n  return {3, holder}\nend\n", "")),
}


@contextlib.contextmanager
def applied(name: str | None) -> Iterator[None]:
    """Apply mutation ``name`` for the duration of the block (none: do nothing)."""
    if name is None:
        yield
        return
    if name not in MUTATIONS:
        raise SystemExit(f"unknown mutation {name!r}; known: {', '.join(MUTATIONS)}")
    undo = MUTATIONS[name]()
    try:
        yield
    finally:
        undo()
