"""The ``validate`` command: every problem of the settings and the schedule, and an exit code."""

from __future__ import annotations

from typing import Any

import click
from celery.bin.base import CeleryCommand

from ..backends.redis_connection import scrub_secrets
from ..validation import Problem
from .output import plural, safe
from .session import EXIT_FAILED, json_option, session_for


@click.command("validate", cls=CeleryCommand)
@click.option("--strict", is_flag=True, help="Fail on warnings too.")
@json_option
@click.pass_context
def validate(ctx: click.Context, strict: bool, as_json: bool) -> None:
    """Check settings, config, @periodic and Redis entries; exit 1 when anything is wrong."""
    session = session_for(ctx, as_json)
    report = session.manager().check_report()
    errors, warnings = report.errors, report.warnings
    ok = not errors and not (strict and warnings)
    data = {
        "ok": ok,
        "entries": len(report.valid),
        "errors": [_problem_data(p) for p in errors],
        "warnings": [_problem_data(p) for p in warnings],
    }

    def render() -> str:
        lines = [
            click.style(
                f"{p.severity}: ", fg="red" if p.severity == "error" else "yellow", bold=True
            )
            + safe(scrub_secrets(p.message))
            for p in report.problems
        ]
        summary = (
            f"{plural(len(report.valid), 'valid entry')}, {plural(len(errors), 'error')}, "
            f"{plural(len(warnings), 'warning')}"
        )
        lines.append(click.style(summary, fg="green" if ok else "red"))
        return "\n".join(lines)

    session.emit(data, render)
    if not ok:
        ctx.exit(EXIT_FAILED)


def _problem_data(problem: Problem) -> dict[str, Any]:
    return {
        "level": problem.severity,
        "message": scrub_secrets(problem.message),
        "entry": problem.entry,
        "field": problem.field,
        "source": problem.source,
    }
