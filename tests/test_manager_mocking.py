"""The "Mocking the Manager" guide of docs/testing.md works as written.

The application code and the tests below are those of the guide; the extra tests show that
``create_autospec(Manager, instance=True)`` catches what the guide says it catches.
"""

from __future__ import annotations

import ast
import re
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest.mock import create_autospec, patch

import pytest
from celery import Celery

from celery_fork_scheduler import ConfigError, Manager
from celery_fork_scheduler.testing import ScheduleHarness

DOCS = Path(__file__).resolve().parent.parent / "docs" / "testing.md"

app = Celery("shop", set_as_current=False)


@app.task(name="shop.cleanup")
def cleanup() -> None: ...


# -- the code under test (shop/scheduling.py in the guide) --


def schedule_region_report(manager: Manager, region: str) -> None:
    manager.add(
        f"report-{region}",
        "shop.tasks.report",
        "every 5 minutes",
        args=[region],
        tags=["reports", region],
        singleton=True,
        replace_existing=True,
    )


def close_region(manager: Manager, region: str) -> list[str]:
    return manager.pause(tag=region, note=f"region {region} closed")


def schedule_cleanup(manager: Manager, task: Any) -> None:
    manager.every(5).minutes.tag("x").do(task)


# -- the guide's tests --


def test_schedules_one_report_per_region() -> None:
    manager = create_autospec(Manager, instance=True)

    schedule_region_report(manager, "eu")

    manager.add.assert_called_once_with(
        "report-eu",
        "shop.tasks.report",
        "every 5 minutes",
        args=["eu"],
        tags=["reports", "eu"],
        singleton=True,
        replace_existing=True,
    )


def test_closing_a_region_pauses_its_entries() -> None:
    manager = create_autospec(Manager, instance=True)
    manager.pause.return_value = ["report-eu"]

    assert close_region(manager, "eu") == ["report-eu"]
    manager.pause.assert_called_once_with(tag="eu", note="region eu closed")


def test_the_scheduled_report_is_valid_and_fires_every_5_minutes() -> None:
    manager = create_autospec(Manager, instance=True)
    schedule_region_report(manager, "eu")

    name, task, schedule = manager.add.call_args.args
    keys = dict(manager.add.call_args.kwargs)
    keys.pop("replace_existing", None)
    harness = ScheduleHarness(
        Celery("shop", set_as_current=False), start="2026-01-05T09:00:00+00:00"
    )
    harness.add(name, {"task": task, "schedule": schedule, **keys})
    harness.advance(timedelta(minutes=15))
    assert harness.fired("report-eu") == [
        "2026-01-05T09:05:00+00:00",
        "2026-01-05T09:10:00+00:00",
        "2026-01-05T09:15:00+00:00",
    ]
    harness.close()


def test_schedule_cleanup_with_a_mock_chain() -> None:
    manager = create_autospec(Manager, instance=True)

    schedule_cleanup(manager, cleanup)

    manager.every.assert_called_once_with(5)
    builder = manager.every.return_value.minutes
    builder.tag.assert_called_once_with("x")
    builder.tag.return_value.do.assert_called_once_with(cleanup)


def test_schedule_cleanup_with_the_real_builder() -> None:
    with patch.object(Manager, "add", autospec=True) as add:
        schedule_cleanup(Manager(app), cleanup)

    (_manager, name, task, schedule), keys = add.call_args.args, add.call_args.kwargs
    assert name == "shop.cleanup@every 5 minutes"
    assert task is cleanup
    assert schedule.describe() == "every 5 minutes"
    assert keys == {"args": (), "kwargs": {}, "tags": ["x"]}


# -- what autospec catches, as the guide's table says --


def test_autospec_refuses_a_method_the_manager_does_not_have() -> None:
    manager = create_autospec(Manager, instance=True)
    with pytest.raises(AttributeError, match="pasue"):
        manager.pasue("report-eu")


def test_autospec_refuses_a_missing_argument() -> None:
    manager = create_autospec(Manager, instance=True)
    with pytest.raises(TypeError, match="missing a required argument: 'task'"):
        manager.add("report-eu")


def test_autospec_refuses_an_unknown_keyword() -> None:
    manager = create_autospec(Manager, instance=True)
    with pytest.raises(TypeError, match="unexpected keyword argument 'tagg'"):
        manager.pause("report-eu", tagg="eu")


def test_autospec_refuses_too_many_arguments() -> None:
    manager = create_autospec(Manager, instance=True)
    with pytest.raises(TypeError, match="too many positional arguments"):
        manager.every(5, 10)


def test_a_bare_mock_would_have_accepted_all_of_it() -> None:
    """Why autospec: the same mistakes pass silently with a plain MagicMock."""
    from unittest.mock import MagicMock

    manager = MagicMock()
    manager.pasue("report-eu")
    manager.add("report-eu")
    manager.pause("report-eu", tagg="eu")


def test_autospec_does_not_know_instance_attributes() -> None:
    manager = create_autospec(Manager, instance=True)
    with pytest.raises(AttributeError):
        _ = manager.app


def test_the_chain_after_the_first_call_is_not_checked() -> None:
    manager = create_autospec(Manager, instance=True)
    manager.every(5).minuets.tga("x").do(cleanup)  # wrong, and not noticed


def test_the_real_builder_catches_a_misspelt_unit_and_a_missing_one() -> None:
    with patch.object(Manager, "add", autospec=True) as add:
        with pytest.raises(AttributeError, match="minuets"):
            Manager(app).every(5).minuets.do(cleanup)
        with pytest.raises(ConfigError, match="incomplete schedule"):
            Manager(app).every(5).do(cleanup)
    add.assert_not_called()


def test_replaying_into_the_harness_catches_a_misspelt_entry_key() -> None:
    manager = create_autospec(Manager, instance=True)
    manager.add("report-eu", "shop.tasks.report", "every 5 minutes", tag=["reports"])

    name, task, schedule = manager.add.call_args.args
    harness = ScheduleHarness(
        Celery("shop", set_as_current=False), start="2026-01-05T09:00:00+00:00"
    )
    try:
        with pytest.raises(ConfigError) as raised:
            harness.add(name, {"task": task, "schedule": schedule, **manager.add.call_args.kwargs})
        assert raised.value.field == "tag"
    finally:
        harness.close()


# -- the guide itself --


def _guide() -> str:
    text = DOCS.read_text()
    return text[text.index("## Mocking the Manager") :]


def test_the_guide_code_blocks_are_python() -> None:
    blocks = re.findall(r"```python\n(.*?)```", _guide(), flags=re.DOTALL)
    assert len(blocks) >= 5
    for block in blocks:
        ast.parse(block)


def test_the_guide_shows_the_code_tested_here() -> None:
    guide = _guide()
    for line in (
        "manager = create_autospec(Manager, instance=True)",
        'manager.every(5).minutes.tag("x").do(task)',
        "builder = manager.every.return_value.minutes",
        "builder.tag.return_value.do.assert_called_once_with(cleanup)",
        'with patch.object(Manager, "add", autospec=True) as add:',
        'manager.pause.assert_called_once_with(tag="eu", note="region eu closed")',
        'harness.add(name, {"task": task, "schedule": schedule, **keys})',
        'assert keys == {"args": (), "kwargs": {}, "tags": ["x"]}',
    ):
        assert line in guide, line
