# ruff: noqa: RUF001, RUF002
"""Turning the runs' figures into Markdown tables (median and min–max) and one PNG plot."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness import PEERS

#: The jitter chart (``benchmarks/jitter_burst.py --markdown`` writes it), kept in the report.
JITTER_RESULTS = Path(__file__).resolve().parent / "results" / "jitter_burst.md"

Result = Mapping[str, Any]


def values(results: Iterable[Result], name: str) -> list[float]:
    found = [result.get(name) for result in results]
    return [float(v) for v in found if isinstance(v, (int, float)) and v == v]


def median(results: Iterable[Result], name: str) -> float | None:
    found = values(results, name)
    return statistics.median(found) if found else None


def cell(results: Sequence[Result], name: str, digits: int = 2, scale: float = 1.0) -> str:
    """``median (min–max)`` of a figure over runs; a reason when no run produced it."""
    found = [v * scale for v in values(results, name)]
    if not found:
        return _missing(results, name)
    mid, low, high = statistics.median(found), min(found), max(found)
    text = _number(mid, digits)
    if len(found) > 1 and _number(low, digits) != _number(high, digits):
        text += f" ({_number(low, digits)}–{_number(high, digits)})"
    if len(found) < len(results):
        text += f" [{len(found)}/{len(results)} runs]"
    return text


def _missing(results: Sequence[Result], name: str) -> str:
    for result in results:
        if result.get("error"):
            return "— " + _short_error(result)
        over = result.get(name.replace("_s", "_over")) if name.endswith("_s") else None
        if over:
            return f"> {over:.0f}"
    return "—"


def _short_error(result: Result) -> str:
    if result.get("startup_over"):
        return f"no publish in {result['startup_over']:.0f} s"
    return str(result["error"])[:60]


def _number(value: float, digits: int) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}".replace(",", " ")
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def group(results: Iterable[Result], scenario: str) -> dict[tuple[int, str], list[Result]]:
    grouped: dict[tuple[int, str], list[Result]] = {}
    for result in results:
        if result.get("scenario") == scenario:
            grouped.setdefault((result["n"], result["peer"]), []).append(result)
    order = list(PEERS)
    return dict(sorted(grouped.items(), key=lambda item: (item[0][0], order.index(item[0][1]))))


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def by_run(refs: Iterable[Result], name: str, scale: float = 1.0) -> dict[int, float]:
    """A reference figure of each run (``scale`` times it), for ratios taken inside one run."""
    return {
        int(r["run"]): float(r[name]) * scale
        for r in refs
        if isinstance(r.get(name), (int, float)) and r.get(name) and "run" in r
    }


def run_ratios(
    results: Iterable[Result], name: str, reference: Mapping[int, float]
) -> list[dict[str, float]]:
    """``name ÷ reference`` of each result, the reference from the same run."""
    return [
        {"r": float(r[name]) / reference[r["run"]]}
        for r in results
        if isinstance(r.get(name), (int, float)) and r.get("run") in reference
    ]


def _ratio(results: Sequence[Result], name: str, reference: Mapping[int, float]) -> str:
    ratios = run_ratios(results, name, reference)
    return cell(ratios, "r", 2) if ratios else "—"


def markdown(results: Sequence[Result], notes: Sequence[str]) -> str:
    """Every table of the report."""
    refs = [r for r in results if r.get("scenario") == "references"]
    plain = median(refs, "plain_loop_per_s")
    parts = ["### References\n", _references_table(refs, plain)]
    every = group(results, "every")
    if every:
        parts += ["\n### N entries every second\n", _every_table(every, refs)]
    bursts = group(results, "burst")
    if bursts:
        parts += ["\n### Burst: cron entries due on the same minute\n"]
        parts += [_burst_table(bursts, refs)]
    idle = group(results, "idle")
    if idle:
        parts += ["\n### Idle entries (due in about a day) and start-up\n", _idle_table(idle)]
    if any(r.get("memory_template_per_s") for r in refs):
        parts += ["\n### Message template on transports that are not Redis\n"]
        parts += [_template_table(refs)]
    storms = [r for r in results if r.get("scenario") == "kill_storm"]
    if storms:
        parts += ["\n### Kill storm: three replicas, one SIGKILLed every 2–3 s\n"]
        parts += [_kill_storm_table(storms)]
    goals = _goals_table(results)
    if goals:
        parts += ["\n### Against the goals of issue 19\n", goals]
    if JITTER_RESULTS.exists():  # written by jitter_burst.py, a run of its own
        parts += ["\n### Jitter: the same burst spread over 30 s (issue 22)\n"]
        parts += [JITTER_RESULTS.read_text().rstrip()]
    if notes:
        parts += ["\n### Not run\n", "\n".join(f"- {note}" for note in notes)]
    return "\n".join(parts) + "\n"


def _references_table(refs: Sequence[Result], plain: float | None) -> str:
    ceiling = median(refs, "ceiling_per_s")
    rows = [
        ("plain loop: `send_task`, one reused producer (messages/s)",
         cell(refs, "plain_loop_per_s")),
        ("plain loop: time for 10 000 messages (s)", cell(refs, "plain_loop_10k_s")),
        ("plain loop: CPU s per 1 000 messages", cell(refs, "plain_loop_cpu_per_1000", 3)),
        ("ceiling: pipelined `LPUSH` from Python, 1 000 per pipeline (messages/s)",
         cell(refs, "ceiling_per_s")),
        ("ceiling: `redis-benchmark -t lpush -P 1000 -c 1` (messages/s)",
         cell(refs, "redis_benchmark_per_s")),
        ("message size (bytes)", cell(refs, "message_bytes", 0)),
        ("Python ceiling ÷ plain loop", _number(ceiling / plain, 1) if ceiling and plain else "—"),
    ]  # fmt: skip
    return table(("reference", "median (min–max)"), rows)


def _every_table(grouped: Mapping[tuple[int, str], list[Result]], refs: Sequence[Result]) -> str:
    plain = by_run(refs, "plain_loop_per_s")
    header = (
        "N", "peer", "demanded/s", "published/s", "% of demanded", "× plain loop",
        "lag p50 (s)", "lag p99 (s)", "lag max (s)", "CPU s / 1 000", "peak RSS (MiB)",
        "start-up to 1st publish (s)", "1st publish to N-th (s)", "Redis cmds / publish",
        "of which script calls", "entries not served in the window", "duplicates",
    )  # fmt: skip
    rows = []
    for (n, peer), runs in grouped.items():
        percent = [
            {"p": 100 * r["published_per_s"] / r["demanded_per_s"]}
            for r in runs
            if r.get("published_per_s") is not None
        ]
        lag_note = "" if PEERS[peer].has_slot_header else "†"
        rows.append((
            f"{n:,}".replace(",", " "), PEERS[peer].label, f"{n / 1:,.0f}".replace(",", " "),
            cell(runs, "published_per_s", 1), cell(percent, "p", 1) if percent else "—",
            _ratio(runs, "published_per_s", plain),
            cell(runs, "lag_p50", 3) + lag_note, cell(runs, "lag_p99", 3) + lag_note,
            cell(runs, "lag_max", 3) + lag_note, cell(runs, "cpu_per_1000", 3),
            cell(runs, "peak_rss_mib", 1), cell(runs, "startup_s", 2),
            cell(runs, "first_round_s", 2), cell(runs, "commands_per_publish", 2),
            cell(runs, "scripts_per_publish", 2), cell(runs, "starved", 0),
            cell(runs, "duplicates", 0),
        ))  # fmt: skip
    return table(header, rows)


def _burst_table(grouped: Mapping[tuple[int, str], list[Result]], refs: Sequence[Result]) -> str:
    header = (
        "N", "peer", "published", "slot → first message (s)", "slot → last message (s)",
        "÷ plain loop's time for N",
        "messages/s", "lag p50 (s)", "lag p99 (s)", "CPU s / 1 000", "peak RSS (MiB)",
        "Redis cmds / publish", "of which script calls", "share per replica", "duplicates",
    )  # fmt: skip
    rows = []
    for (n, peer), runs in grouped.items():
        reference = by_run(refs, "plain_loop_10k_s", n / 10_000)
        shares = _shares(runs)
        rows.append((
            f"{n:,}".replace(",", " "), PEERS[peer].label, cell(runs, "published", 0),
            cell(runs, "slot_to_first_s", 3), cell(runs, "slot_to_last_s", 2),
            _ratio(runs, "slot_to_last_s", reference),
            cell(runs, "burst_rate", 0), cell(runs, "lag_p50", 3), cell(runs, "lag_p99", 3),
            cell(runs, "cpu_per_1000", 3), cell(runs, "peak_rss_mib", 1),
            cell(runs, "commands_per_publish", 2), cell(runs, "scripts_per_publish", 2), shares,
            cell(runs, "duplicates", 0),
        ))  # fmt: skip
    return table(header, rows)


def _shares(runs: Sequence[Result]) -> str:
    per_run = [r.get("shares") or {} for r in runs]
    if not any(len(shares) > 1 for shares in per_run):
        return "—"
    return "; ".join(
        "/".join(f"{share:.2f}" for share in sorted(shares.values(), reverse=True))
        for shares in per_run
    )


def _idle_table(grouped: Mapping[tuple[int, str], list[Result]]) -> str:
    header = (
        "N", "peer", "start-up to 1st publish (s)", "start-up work after it (s)",
        "idle CPU (% of a core)", "RSS (MiB)", "RSS per entry (KiB)", "peak RSS (MiB)",
    )  # fmt: skip
    rows = [
        (
            f"{n:,}".replace(",", " "),
            PEERS[peer].label,
            cell(runs, "startup_s", 2),
            cell(runs, "settled_s", 1),
            cell(runs, "cpu_percent", 2),
            cell(runs, "rss_mib", 1),
            cell(runs, "rss_kib_per_entry", 3),
            cell(runs, "peak_rss_mib", 1),
        )
        for (n, peer), runs in grouped.items()
    ]
    return table(header, rows)


def _per_run_ratio(runs: Sequence[Result], top: str, bottom: str) -> list[dict[str, float]]:
    """``top / bottom`` of each run that has both (a ratio taken inside one run)."""
    return [
        {"r": r[top] / r[bottom]}
        for r in runs
        if isinstance(r.get(top), (int, float)) and r.get(bottom)
    ]


def _template_table(refs: Sequence[Result]) -> str:
    header = (
        "transport", "plain `send_task` loop (messages/s)", "template path (messages/s)",
        "template ÷ plain loop", "publisher without templates (messages/s)",
    )  # fmt: skip
    rows = []
    for transport in ("memory", "filesystem"):
        runs = [r for r in refs if r.get(f"{transport}_template_per_s")]
        if not runs:
            continue
        ratios = _per_run_ratio(runs, f"{transport}_template_per_s", f"{transport}_plain_per_s")
        rows.append((
            f"`{transport}://`", cell(runs, f"{transport}_plain_per_s", 0),
            cell(runs, f"{transport}_template_per_s", 0), cell(ratios, "r", 2),
            cell(runs, f"{transport}_celery_per_s", 0),
        ))  # fmt: skip
    return table(header, rows)


def _kill_storm_table(storms: Sequence[Result]) -> str:
    header = (
        "entries (every second)", "replicas", "SIGKILLs", "seconds", "slots expected",
        "received", "duplicates", "missed", "test passed",
    )  # fmt: skip
    n = storms[0].get("n", 0)
    passed = sum(1 for r in storms if r.get("passed"))
    row = (
        f"{n:,}".replace(",", " "), "3", cell(storms, "kills", 0), cell(storms, "seconds", 0),
        cell(storms, "expected", 0), cell(storms, "received", 0), cell(storms, "duplicated", 0),
        cell(storms, "missed", 0), f"{passed}/{len(storms)} runs",
    )  # fmt: skip
    return table(header, [row])


def _goals_table(results: Sequence[Result]) -> str:
    """Each goal of issue 19 beside the median measured in this invocation: met or not."""
    refs = [r for r in results if r.get("scenario") == "references"]
    plain, plain_10k = by_run(refs, "plain_loop_per_s"), by_run(refs, "plain_loop_10k_s")
    bursts, every = group(results, "burst"), group(results, "every")
    rows: list[tuple[str, str, str, str]] = []

    def add(goal: str, measured: str, value: float | None, met: bool | None) -> None:
        verdict = "—" if value is None or met is None else ("met" if met else "**not met**")
        rows.append((goal, measured, "—" if value is None else _number(value, 3), verdict))

    one, three = bursts.get((10_000, "fork1"), []), bursts.get((10_000, "fork3"), [])
    if one:
        ratio = median(run_ratios(one, "slot_to_last_s", plain_10k), "r")
        add(
            "burst of 10 000, one replica: slot → last message ≤ 0.3× the plain loop's time",
            "slot → last ÷ the same run's plain loop time for 10 000",
            ratio,
            ratio is not None and ratio <= 0.3,
        )
        first = median(one, "slot_to_first_s")
        add(
            "burst of 10 000, one replica: first message ≤ 0.1 s after the slot",
            "slot → first message (s)",
            first,
            first is not None and first <= 0.1,
        )
    if one and three:
        value = median(run_ratios(three, "slot_to_last_s", by_run(one, "slot_to_last_s")), "r")
        add(
            "burst of 10 000: three replicas faster than one",
            "slot → last, three replicas ÷ one replica (same run)",
            value,
            value is not None and value < 1,
        )
    ten = every.get((10_000, "fork1"), [])
    if ten:
        share = [
            {"p": r["published_per_s"] / r["demanded_per_s"]}
            for r in ten
            if r.get("published_per_s") is not None
        ]
        value = median(share, "p")
        add(
            "10 000 entries every second, one replica: ≥ 95 % of demanded slots published",
            "published ÷ demanded",
            value,
            value is not None and value >= 0.95,
        )
        p99 = median(ten, "lag_p99")
        add(
            "10 000 entries every second, one replica: p99 lag < 1 s",
            "lag p99 (s)",
            p99,
            p99 is not None and p99 < 1,
        )
        top = every.get((100_000, "fork1"), [])
        ratio = median(run_ratios(top or ten, "published_per_s", plain), "r")
        where = "N = 100 000" if top else "N = 10 000 (capped by the 10 000/s demanded)"
        add(
            "every second, one replica, Redis broker: ≥ 10× the plain loop's rate",
            f"published/s ÷ plain loop, {where}",
            ratio,
            ratio is not None and ratio >= 10,
        )
    memory = _per_run_ratio(refs, "memory_template_per_s", "memory_plain_per_s")
    if memory:
        value = median(memory, "r")
        add(
            "`memory://`: template path ≥ 2× the plain loop",
            "template ÷ plain loop",
            value,
            value is not None and value >= 2,
        )
    storms = [r for r in results if r.get("scenario") == "kill_storm"]
    if storms:
        bad = sum(int(r.get("duplicated") or 0) + int(r.get("missed") or 0) for r in storms)
        complete = all(r.get("expected") for r in storms)
        kills = min(int(r.get("kills") or 0) for r in storms)
        add(
            "kill storm (3 replicas, 800+ entries/s, ≥ 15 SIGKILLs): 0 duplicates, 0 missed",
            f"duplicates + missed over {len(storms)} run(s) (fewest kills in a run: {kills})",
            float(bad) if complete else None,
            complete and bad == 0 and kills >= 15,
        )
    if not rows:
        return ""
    return table(("goal", "measured as", "median", "verdict"), rows)


# -- the plot ---------------------------------------------------------------------------------


def plot(results: Sequence[Result], path: Path, title: str) -> None:
    """Four panels: rate vs N, p99 lag vs N, burst time, idle start-up and RSS per entry."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    refs = [r for r in results if r.get("scenario") == "references"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    every = group(results, "every")
    _line_panel(axes[0][0], every, "published_per_s", "published per second", log=True)
    sizes = sorted({n for n, _ in every})
    if sizes:
        axes[0][0].plot(sizes, sizes, "k:", label="demanded")
        for name, style, label in (
            ("plain_loop_per_s", "--", "plain send_task loop"),
            ("ceiling_per_s", "-.", "pipelined LPUSH (Python)"),
        ):
            level = median(refs, name)
            if level:
                axes[0][0].axhline(level, color="grey", linestyle=style, label=label)
        axes[0][0].legend(fontsize=8)
    _line_panel(axes[0][1], every, "lag_p99", "dispatch lag p99 (s)", log=False)
    axes[0][1].legend(fontsize=8)
    _bar_panel(axes[1][0], group(results, "burst"), "slot_to_last_s", "slot → last message (s)")
    plain_10k = median(refs, "plain_loop_10k_s")
    if plain_10k:
        axes[1][0].axhline(plain_10k, color="grey", linestyle="--", label="plain loop, 10 000")
        axes[1][0].legend(fontsize=8)
    _bar_panel(
        axes[1][1], group(results, "idle"), "startup_s", "idle N: start-up to 1st publish (s)"
    )
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _spread(runs: Sequence[Result], name: str) -> tuple[float, float, float] | None:
    found = values(runs, name)
    if not found:
        return None
    mid = statistics.median(found)
    return mid, mid - min(found), max(found) - mid


def _line_panel(
    axis: Any, grouped: Mapping[tuple[int, str], list[Result]], name: str, label: str, log: bool
) -> None:
    for peer in PEERS:
        points = [
            (n, spread)
            for (n, key), runs in grouped.items()
            if key == peer and (spread := _spread(runs, name)) is not None
        ]
        if points:
            xs = [n for n, _ in points]
            ys = [s[0] for _, s in points]
            errors = [[s[1] for _, s in points], [s[2] for _, s in points]]
            axis.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=PEERS[peer].label)
    axis.set_xscale("log")
    if log:
        axis.set_yscale("log")
    axis.set_xlabel("entries (each due every second)")
    axis.set_ylabel(label)
    axis.grid(True, which="both", alpha=0.3)


def _bar_panel(
    axis: Any, grouped: Mapping[tuple[int, str], list[Result]], name: str, label: str
) -> None:
    labels, heights, errors, notes = [], [], [[], []], []
    for (n, peer), runs in grouped.items():
        spread = _spread(runs, name)
        labels.append(f"{PEERS[peer].label}\nN={n:,}")
        if spread is None:
            heights.append(0.0)
            errors[0].append(0.0)
            errors[1].append(0.0)
            notes.append(_missing(runs, name))
        else:
            heights.append(spread[0])
            errors[0].append(spread[1])
            errors[1].append(spread[2])
            notes.append(f"{spread[0]:.2f}")
    if not labels:
        axis.set_visible(False)
        return
    bars = axis.bar(range(len(labels)), heights, yerr=errors, capsize=4, color="tab:blue")
    for bar, note in zip(bars, notes, strict=True):
        axis.annotate(note, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                      va="bottom", fontsize=8)  # fmt: skip
    axis.set_xticks(range(len(labels)), labels, fontsize=8)
    axis.set_ylabel(label)
    axis.grid(True, axis="y", alpha=0.3)
