"""The dashboard in a real browser (Debian's chromium, driven by Selenium through
chromium-driver), over a running cluster: a worker, a ``celery beat -S fork`` replica and
``celery schedule web``, each a real process.

With ``WRITE_SCREENSHOTS=1`` the screenshots of the main pages are written to ``docs/img/``
(the ones docs/web.md shows); otherwise into the test's directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.testing import CeleryProcess, wait_until

from .conftest import dump_logs
from .harness import start_worker_and_beat, write_project

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "chromium and chromedriver are not installed (apt-get install chromium chromium-driver; "
        "scripts/bootstrap.sh does it as root)",
        allow_module_level=True,
    )

from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

TOKEN = "browser-test-token-0123"
KEYS = Keys("scheduler:")
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"

SCHEDULE = """
import random
import time

import celery_fork_scheduler

celery_fork_scheduler.install(app)


@app.task(bind=True, name="billing.sync_invoices")
def sync_invoices(self):
    # Every fourth run fails, as an upstream API would; the runs take 0.05 to 0.4 s.
    slot = self.request.get("fork_scheduler_slot") or ""
    second = int(slot[17:19]) if len(slot) > 19 else 0
    time.sleep(0.05 + (second % 7) * 0.05)
    if second % 4 == 0:
        raise ValueError("the billing API answered 503 Service Unavailable")


@app.task(name="reports.nightly")
def nightly(day="today"):
    pass


app.conf.beat_schedule = {
    "sync-invoices": {
        "task": "billing.sync_invoices",
        "schedule": every(1).seconds,
        "tags": ["billing"],
        "description": "pull new invoices from the billing API",
    },
    "heartbeat": {"task": "record", "schedule": every(2).seconds, "tags": ["ops"]},
    "nightly-report": {
        "task": "reports.nightly",
        "schedule": "daily at 02:00",
        "timezone": "Europe/Berlin",
        "tags": ["reports"],
        "singleton": True,
        "description": "the nightly PDF for the finance team",
    },
    "weekly-digest": {
        "task": "reports.nightly",
        "schedule": "monday at 09:00",
        "kwargs": {"day": "week"},
        "tags": ["reports"],
    },
}
"""


@pytest.fixture
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


def history(client: redis.Redis, entry: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in client.lrange(KEYS.history(entry), 0, -1)]


def post(url: str, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, method="POST", headers=headers, data=b"")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


def shoot(driver: Any, name: str, workdir: Path) -> None:
    """Save a screenshot of the whole page as ``web-<name>.png``."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(600, min(int(height) + 40, 1800)))
    path = workdir / f"web-{name}.png"
    driver.save_screenshot(str(path))
    if os.environ.get("WRITE_SCREENSHOTS") == "1":
        shutil.copy(path, DOCS_IMG / path.name)
    driver.set_window_size(1280, 900)


def test_the_dashboard_in_a_browser_over_a_running_cluster(
    redis_url: str, workdir: Path, processes: list[CeleryProcess], browser: Any
) -> None:
    module = write_project(workdir, SCHEDULE)
    client = redis.Redis.from_url(redis_url)
    start_worker_and_beat(module, workdir, redis_url, processes)
    env = {"TEST_BROKER_URL": redis_url}
    command = ["schedule", "web", "--port", "0", "--token", TOKEN]
    web = CeleryProcess(module, command, cwd=workdir, log_path=workdir / "web.log", env=env)
    processes.append(web)
    web.start()
    wait_until(
        lambda: "serving the schedule dashboard" in web.log(),
        timeout=30,
        what="the dashboard to start\n" + dump_logs(processes),
    )
    found = re.search(r"serving the schedule dashboard on (http://\S+/)", web.log())
    assert found, web.log()
    base = found.group(1)

    def outcomes() -> list[str]:
        return [item["outcome"] for item in history(client, "sync-invoices")]

    wait_until(
        lambda: "error" in outcomes() and outcomes().count("completed") >= 3,
        timeout=40,
        what="a failed and three completed runs of sync-invoices\n" + dump_logs(processes),
    )

    # The entries, as anyone sees them: no write offered before logging in.
    browser.get(base + "entries")
    rows = browser.find_elements(By.CSS_SELECTOR, "#entries tbody tr")
    shown = {row.get_attribute("data-entry") for row in rows}
    assert shown == {"sync-invoices", "heartbeat", "nightly-report", "weekly-digest"}
    assert not browser.find_elements(By.CSS_SELECTOR, "#entries form")
    shoot(browser, "entries", workdir)

    # A write without the token is refused, and changes nothing.
    assert post(base + "api/entries/heartbeat/pause", {}) == 401
    assert post(base + "api/entries/heartbeat/pause", {"Authorization": "Bearer nope"}) == 401
    assert not client.hget(KEYS.state("heartbeat"), "paused")

    # The failed run's mark on the timeline of its entry.
    browser.get(base + "entries/sync-invoices")
    failed = browser.find_elements(By.CSS_SELECTOR, "#timeline li.mark.failed")
    assert failed, browser.page_source[:3000]
    assert "503" in (failed[0].get_attribute("title") or "")
    assert browser.find_elements(By.CSS_SELECTOR, "#timeline li.mark.completed")
    assert browser.find_elements(By.CSS_SELECTOR, "#durations rect.bar")
    shoot(browser, "entry", workdir)

    # Log in with the token, then pause an entry through its page, with a note.
    browser.find_element(By.ID, "login-link").click()
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "login-submit").click()
    wait_until(
        lambda: bool(browser.find_elements(By.CSS_SELECTOR, "form[action='/logout']")),
        timeout=30,
        what="the login to land (its redirect must not replace the next page)",
    )
    browser.get(base + "entries/nightly-report")
    wait_until(
        lambda: "nightly-report" in browser.find_element(By.TAG_NAME, "h1").text,
        timeout=30,
        what="the page of nightly-report",
    )
    browser.find_element(By.CSS_SELECTOR, "#entry-actions input[name=note]").send_keys(
        "finance migration"
    )
    browser.find_element(By.ID, "pause").click()

    def paused() -> bool:
        state = client.hgetall(KEYS.state("nightly-report"))
        return state.get(b"paused") == b"1" and state.get(b"pause_note") == b"finance migration"

    wait_until(paused, timeout=30, what="the pause made through the page to reach Redis")
    def shows_the_note() -> bool:
        try:
            return "finance migration" in browser.find_element(By.ID, "pause-note").text
        except WebDriverException:  # the page is still loading
            return False

    wait_until(shows_the_note, timeout=30, what="the entry's page to show the pause note")

    # The form says what is wrong beside the field, with the validator's words.
    browser.get(base + "new")
    for field, value in (
        ("name", "cleanup-tmp"),
        ("task", "reports.nightly"),
        ("schedule", "every 5 fortnights"),
        ("tags", "ops"),
    ):
        browser.find_element(By.ID, f"field-{field}").send_keys(value)
    browser.find_element(By.ID, "save").click()
    assert "cannot parse schedule" in browser.find_element(By.ID, "error-schedule").text
    shoot(browser, "form", workdir)
    schedule = browser.find_element(By.ID, "field-schedule")
    schedule.clear()
    schedule.send_keys("every 10 minutes")
    browser.find_element(By.ID, "save").click()
    wait_until(
        lambda: bool(client.hexists(KEYS.runtime_entries, "cleanup-tmp")),
        timeout=10,
        what="the new entry in Redis",
    )
    assert browser.find_element(By.ID, "entry-state")  # its page, once saved

    browser.get(base + "entries")
    shoot(browser, "entries-logged-in", workdir)
    browser.get(base + "replicas")
    assert browser.find_elements(By.CSS_SELECTOR, "#replicas tbody tr")
    shoot(browser, "replicas", workdir)
    browser.get(base + "missed")
    shoot(browser, "missed", workdir)
