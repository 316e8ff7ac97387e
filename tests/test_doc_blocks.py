"""Every Python and shell block of ``docs/`` and ``README.md`` is checked, so that a doc that
drifts from the code fails the build (issue 17).

- A ``python`` block runs. The blocks of one page run in order, in one namespace, in a fresh
  interpreter (as a reader follows the page), after a prelude giving them what the pages
  assume: ``app`` (a Celery app on the test's redis-server with ``install(app)`` done),
  ``manager`` (``app.fork_scheduler``) and the usual imports. ``redis://localhost:6379`` in a
  block means the test's redis-server.
- A block preceded by ``<!-- illustration: REASON -->`` is only compiled (Python) or parsed
  (shell): it shows a fragment, another project's code or a command needing a cluster. The
  reason is required.
- ``bash``/``sh`` blocks must pass ``bash -n``. In ``console`` blocks each ``$ celery ...
  schedule SUB ...`` command must name a real subcommand with options it accepts.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from celery_fork_scheduler.cli import schedule

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w+)")
ILLUSTRATION = re.compile(r"^<!-- illustration: (.+\S) -->$")
SHELL = {"bash", "sh", "shell"}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    code: str
    illustration: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page`` that have a language."""
    lines = page.read_text().splitlines()
    found, index = [], 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        end = index + 1
        while not lines[end].startswith("```"):
            end += 1
        previous = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        reason = ILLUSTRATION.match(previous.strip())
        code = textwrap.dedent("\n".join(lines[index + 1 : end]))
        found.append(Block(page, index + 1, match.group(1), code, reason and reason.group(1)))
        index = end + 1
    return found


ALL = [block for page in PAGES for block in blocks(page)]

PRELUDE = """
import os, json, sys
from datetime import datetime, timedelta, timezone
from celery import Celery
from celery.schedules import crontab, schedule
import celery_fork_scheduler
from celery_fork_scheduler import *  # noqa: F403
app = Celery("proj", broker=os.environ["DOC_REDIS_URL"], set_as_current=True)
app.conf.update(timezone="UTC", worker_hijack_root_logger=False)
manager = install(app)
"""

RUNNER = """
import json, os, sys, traceback
blocks = json.loads(sys.stdin.read())
namespace = {"__name__": "__doc__"}
exec(compile(blocks.pop(0)["code"], "<prelude>", "exec"), namespace)
for block in blocks:
    try:
        exec(compile(block["code"], block["where"], "exec"), namespace)
    except BaseException as exc:
        if block.get("raises") and type(exc).__name__ in block["raises"]:
            continue
        print(json.dumps({"where": block["where"], "error": traceback.format_exc(limit=3)}))
        sys.exit(1)
"""


def test_every_illustration_gives_a_reason_and_every_block_a_known_language() -> None:
    for page in PAGES:
        text = page.read_text()
        for line in text.splitlines():
            if line.startswith("<!-- illustration"):
                assert ILLUSTRATION.match(line.strip()), f"{page}: {line} (a reason is required)"
    langs = {block.lang for block in ALL}
    assert langs <= {"python", "console", "text", "ini", "yaml", *SHELL}, langs


@pytest.mark.parametrize(
    "block",
    [b for b in ALL if b.lang == "python" and b.illustration],
    ids=lambda b: b.where,
)
def test_an_illustration_compiles(block: Block) -> None:
    compile(block.code, block.where, "exec")


@pytest.mark.parametrize(
    "page",
    [p for p in PAGES if any(b.lang == "python" and not b.illustration for b in blocks(p))],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_the_python_blocks_of_a_page_run(page: Path, redis_url: str, tmp_path: Path) -> None:
    runnable = [
        {"where": b.where, "code": b.code.replace("redis://localhost:6379", redis_url[:-2])}
        for b in blocks(page)
        if b.lang == "python" and not b.illustration
    ]
    result = subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps([{"where": "<prelude>", "code": PRELUDE}, *runnable]),
        cwd=tmp_path,
        env={"DOC_REDIS_URL": redis_url, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]


@pytest.mark.parametrize("block", [b for b in ALL if b.lang in SHELL], ids=lambda b: b.where)
def test_a_shell_block_parses(block: Block) -> None:
    checked = subprocess.run(["bash", "-n"], input=block.code, capture_output=True, text=True)
    assert checked.returncode == 0, f"{block.where}: {checked.stderr}"


def schedule_commands(block: Block) -> list[list[str]]:
    """The ``celery ... schedule SUB ...`` commands typed in a console block (after ``$ ``)."""
    commands = []
    for line in block.code.splitlines():
        if not line.startswith("$ "):
            continue
        words = shlex.split(line[2:].split(" | ")[0].split(" && ")[0], comments=True)
        if "schedule" in words and words[0] in ("celery", "python"):
            rest = words[words.index("schedule") + 1 :]
            if rest and not rest[0].startswith("-"):
                commands.append(rest)
    return commands


@pytest.mark.parametrize(
    "block", [b for b in ALL if b.lang == "console" and schedule_commands(b)], ids=lambda b: b.where
)
def test_a_documented_schedule_command_exists_with_its_options(block: Block) -> None:
    for words in schedule_commands(block):
        name, *args = words
        command = schedule.get_command(click.Context(schedule), name)
        assert command is not None, f"{block.where}: no command 'schedule {name}'"
        try:
            command.make_context(name, list(args), parent=click.Context(schedule))
        except click.UsageError as exc:
            pytest.fail(f"{block.where}: 'schedule {' '.join(words)}': {exc}")


@dataclass
class Typed:
    """One ``$ celery ...`` command of a console block, with what the page says it prints."""

    where: str
    words: list[str]
    output: list[str]
    exit_code: int | None = None


def typed_commands(block: Block) -> list[Typed]:
    typed: list[Typed] = []
    lines = block.code.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("$ echo $?") and typed:
            typed[-1].exit_code = int(lines[index + 1])
        elif line.startswith("$ celery "):
            words = shlex.split(line[2:], comments=True)
            typed.append(Typed(f"{block.where}+{index}", words, []))
        elif typed and not line.startswith("$") and typed[-1].exit_code is None:
            typed[-1].output.append(line)
    return typed


CLI_PAGE = ROOT / "docs" / "cli.md"


def test_the_commands_of_the_cli_page_run_against_its_project(
    redis_url: str, tmp_path: Path
) -> None:
    """``docs/cli.md``'s ``proj.py`` on the test redis-server; each ``$ celery -A proj
    schedule ...`` command of the page runs, in order, and ends as the page says (success or
    ``Error:``, the exit code of ``echo $?``, the table's header, an ``Error:`` line word for
    word), never with a traceback."""
    page = blocks(CLI_PAGE)
    project = next(b for b in page if b.lang == "python").code
    (tmp_path / "proj.py").write_text(
        project.replace("redis://:s3cret@127.0.0.1:6379/0", redis_url)
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{tmp_path}:{ROOT}", "NO_COLOR": "1"}
    commands = [
        typed
        for block in page
        if block.lang == "console" and not block.illustration
        for typed in typed_commands(block)
        if typed.words[1:3] == ["-A", "proj"]  # the page's project (others are sketched)
    ]
    assert len(commands) >= 10
    for typed in commands:
        result = subprocess.run(
            [sys.executable, "-m", "celery", *typed.words[1:]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        said = f"{typed.where}: {' '.join(typed.words)}\n{result.stdout}{result.stderr}"
        assert "Traceback" not in result.stdout + result.stderr, said
        errors = [line for line in typed.output if line.startswith("Error:")]
        if typed.exit_code is not None:
            assert result.returncode == typed.exit_code, said
        assert (result.returncode != 0) == bool(errors), said
        if errors:
            assert result.stderr.strip().splitlines()[0] == errors[0], said
        shown = [line for line in typed.output if line.strip()]
        header = shown[0].split() if shown else []
        got = result.stdout.splitlines()[0].split() if result.stdout.strip() else []
        # A table the page shows has these columns (history and replicas need a running
        # beat to have rows: without one they say so instead).
        if header[:1] in (["NAME"], ["SLOT"], ["REPLICA"]) and got[:1] == header[:1]:
            assert got == header, said


#: Commands CI runs as they are: the test suite, and the demo (examples/demo/run.py, run by
#: tests/test_examples.py).
CI_COMMANDS = ("bash scripts/test.sh", "bash scripts/demo.sh", ".venv/bin/python -m pytest ")


def _covered(block: Block) -> str | None:
    """How CI runs a shell block that is not an illustration, or ``None``."""
    if block.page == CLI_PAGE and block.lang == "console":
        return "test_the_commands_of_the_cli_page_run_against_its_project"
    examples = (ROOT / "tests" / "test_examples.py").read_text()
    commands = [
        line.removeprefix("$ ").split("#")[0].strip()
        for line in block.code.splitlines()
        if line.strip()
        and not line.lstrip().startswith("#")
        and (block.lang != "console" or line.startswith("$ "))
    ]
    if commands and all(c.startswith(CI_COMMANDS) for c in commands):
        return "CI itself (scripts/test.sh; scripts/demo.sh runs examples/demo/run.py)"
    scripts = [c.split()[1] for c in commands if c.startswith("python examples/")]
    if commands and len(scripts) == len(commands):
        from test_examples import PROCESS_EXAMPLES

        run = {f"{example}/run.py" for example, *_ in PROCESS_EXAMPLES}
        names = [script.removeprefix("examples/") for script in scripts]
        ran = all(
            (ROOT / "examples" / name).exists() and (name in examples or name in run)
            for name in names
        )
        return "tests/test_examples.py" if ran else None
    return None


@pytest.mark.parametrize(
    "block",
    [b for b in ALL if (b.lang in SHELL or b.lang == "console") and not b.illustration],
    ids=lambda b: b.where,
)
def test_a_shell_block_runs_in_ci_or_says_why_not(block: Block) -> None:
    assert _covered(block), (
        f"{block.where}: no test runs this block; run it, or mark it "
        "'<!-- illustration: REASON -->'"
    )
