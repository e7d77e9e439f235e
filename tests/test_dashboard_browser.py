"""The dashboard in a real browser: Playwright driving Debian's chromium (headless, launched
by its executable path; no browser download) against ``aurora-log dashboard DIR
--allow-actions`` serving a store with real jobs. It clicks through every page, sees a
page update without a reload, retries a dead-lettered job from the UI and checks the store.
A second pass does the same over a PostgreSQL store (``aurora-log dashboard DSN --schema S``,
the server from tests/pgserver.py).

Screenshots go to $AURORA_SCREENSHOTS (``AURORA_SCREENSHOTS=docs`` refreshes the README's
docs/dashboard-*.png), else to the test's temporary directory.

Outside CI the test skips (with the reason) when chromium or playwright is missing; with
CI=true a missing browser fails it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from dashboard_store import fill

import aurora_log
from aurora_log import Job, JobStatus

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
IN_CI = os.environ.get("CI", "").lower() == "true"


def _missing(reason: str):
    if IN_CI:
        pytest.fail(f"CI=true and {reason}: .ci/run installs chromium with apt-get")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium_path() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    _missing("no chromium on PATH (apt-get install -y chromium)")
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def playwright_api():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[test]')")
    return sync_playwright


def build_store(path: Path) -> dict[str, str]:
    """An hour of activity (a clock walked minute by minute), then one job per status."""
    now = time.time()
    t = [now - 3600]
    # exclusive=True: its close leaves the running job RUNNING, as a worker that died
    # would (a default-mode close hands its RUNNING jobs back)
    with aurora_log.open(path, reaper_interval=None, durability="os",
                         clock=lambda: t[0], exclusive=True) as q:
        for minute in range(60):
            t[0] = now - 3600 + minute * 60
            batch = q.enqueue_many([Job("resize", {"img": f"{minute}-{n}.png"}, queue="images")
                                    for n in range(5 + minute % 7)])
            for n, _ in enumerate(batch[: 4 + minute % 5]):
                job = q.claim("worker-images-1", queues=["images"])
                t[0] += 0.2 + n * 0.15
                if n == 3 and minute % 4 == 0:
                    q.fail(job.id, job.token, "OSError: disk busy")
                else:
                    q.complete(job.id, job.token, {"bytes": 1000 + n})
        t[0] = now
        q.compact()                       # a snapshot for the storage page
        return fill(q)


@pytest.fixture
def server(tmp_path, chromium_path, playwright_api):
    store = tmp_path / "store"
    ids = build_store(store)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "aurora_log", "dashboard", str(store),
                             "--port", str(port), "--allow-actions"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(base + "/queues", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"dashboard did not start: {proc.stdout.read()}") from None
            time.sleep(0.1)
    try:
        yield base, store, ids
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture
def shots(tmp_path) -> Path:
    where = Path(os.environ.get("AURORA_SCREENSHOTS") or tmp_path / "shots")
    where.mkdir(parents=True, exist_ok=True)
    return where


def test_click_through_every_page_and_retry_a_dead_letter(server, shots, chromium_path,
                                                          playwright_api):
    from playwright.sync_api import expect
    base, store, ids = server
    with playwright_api() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        # overview: counts from the store, an hour of activity from the log
        page.goto(base + "/")
        expect(page.locator("#count-dead_letter")).to_have_text("1")
        expect(page.locator("#count-running")).to_have_text("1")
        assert int(page.locator("#hour-enqueued").inner_text()) > 300
        page.screenshot(path=str(shots / "dashboard-overview.png"), full_page=True)

        # workers: who holds which job (before anything opens the store writable: that
        # returns the job of the worker, long gone, to pending)
        page.click("#nav-workers")
        expect(page.locator("#workers")).to_contain_text("worker-b")
        expect(page.locator("#workers")).to_contain_text(ids["running"])

        page.click("#nav-queues")
        expect(page.locator("#queues")).to_contain_text("images")
        expect(page.locator("#queues")).to_contain_text("mail")

        # jobs: filter by status, open one, find one by id
        page.click("#nav-jobs")
        page.select_option("#filter-status", "pending")
        page.click("#apply-filters")
        expect(page.locator("#job-table tbody tr")).to_have_count(50)
        expect(page.locator("#next-page")).to_be_visible()
        page.click("#next-page")
        expect(page.locator("#first-page")).to_be_visible()
        page.screenshot(path=str(shots / "dashboard-jobs.png"), full_page=True)
        page.fill("#find-id", ids["done"])
        page.click("#find-button")
        expect(page.locator("#job-status")).to_have_text("completed")
        expect(page.locator("#timeline li")).to_have_count(3)

        # live: a job enqueued by another process shows up without a reload
        page.click("#nav-overview")
        expect(page.locator("#count-dead_letter")).to_have_text("1")
        with aurora_log.open(store, reaper_interval=None) as q:
            q.enqueue(Job("late", {}))
            pending = q.stats()["pending"]     # + the dead worker's job, back to pending
        expect(page.locator("#count-pending")).to_have_text(f"{pending:,}", timeout=15_000)

        # dead letter -> the job (its <script> payload is text) -> retry
        page.click("#nav-dead")
        expect(page.locator("#job-table tbody tr")).to_have_count(1)
        page.screenshot(path=str(shots / "dashboard-dead-letter.png"), full_page=True)
        page.click(f"text={ids['dead']}")
        expect(page.locator("#payload")).to_contain_text("<script>window.__pwned = 1</script>")
        assert page.evaluate("window.__pwned") is None
        page.screenshot(path=str(shots / "dashboard-job.png"), full_page=True)
        page.click("#retry-button")
        expect(page.locator("#job-status")).to_have_text("pending", timeout=15_000)
        with aurora_log.open(store, read_only=True, reaper_interval=None) as q:
            job = q.get(ids["dead"])
            assert job.status is JobStatus.PENDING and job.retry_count == 0
            assert [t.kind for t in q.history(ids["dead"])][-1] == "retry_dead"

        # storage: files, and a verify run whose result arrives by the live update
        page.click("#nav-storage")
        expect(page.locator("#segments")).to_contain_text(".seg")
        expect(page.locator("#snapshots")).to_contain_text(".snap")
        page.click("#verify-button")
        expect(page.locator("#verify-verdict")).to_have_text("OK", timeout=30_000)
        page.screenshot(path=str(shots / "dashboard-storage.png"), full_page=True)

        # purge asks first
        page.click("#nav-dead")
        expect(page.locator("#job-table tbody tr")).to_have_count(1)  # "No jobs" row
        page.click("#purge-link")
        expect(page.locator("#purge-confirm")).to_have_text("Yes, purge 0 job(s)")

        assert errors == [], errors
        browser.close()


@pytest.fixture
def pg_dashboard(pg_server, pg_schema, chromium_path, playwright_api):
    """``aurora-log dashboard DSN --schema S --allow-actions`` over a PostgreSQL store with
    one job per status."""
    from aurora_log.postgres import PostgresQueue
    with PostgresQueue(pg_server.dsn, schema=pg_schema, reaper_interval=None) as q:
        q.enqueue_many([Job("resize", {"img": f"{n}.png"}, queue="images") for n in range(60)])
        ids = fill(q)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "aurora_log", "dashboard", pg_server.dsn,
                             "--schema", pg_schema, "--port", str(port), "--allow-actions"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(base + "/queues", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"dashboard did not start: {proc.stdout.read()}") from None
            time.sleep(0.1)
    try:
        yield base, pg_server.dsn, pg_schema, ids
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_postgres_store_click_through_and_retry_a_dead_letter(pg_dashboard, shots,
                                                              chromium_path, playwright_api):
    from playwright.sync_api import expect

    from aurora_log.postgres import PostgresQueue
    base, dsn, schema, ids = pg_dashboard
    with playwright_api() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        page.goto(base + "/")
        expect(page.locator("#count-dead_letter")).to_have_text("1")
        expect(page.locator("#count-pending")).to_have_text("65")
        expect(page.locator("#hour-enqueued")).to_have_text("70")     # from the history table

        page.click("#nav-workers")
        expect(page.locator("#workers")).to_contain_text("worker-b")
        page.click("#nav-queues")
        expect(page.locator("#queues")).to_contain_text("images")

        page.click("#nav-jobs")
        page.select_option("#filter-status", "pending")
        page.click("#apply-filters")
        expect(page.locator("#job-table tbody tr")).to_have_count(50)
        page.click("#next-page")
        expect(page.locator("#job-table tbody tr")).to_have_count(15)
        expect(page.locator("#first-page")).to_be_visible()

        page.click("#nav-storage")
        expect(page.locator("#pg-tables")).to_contain_text("history")
        expect(page.locator("#schema-version")).to_contain_text("of")
        page.screenshot(path=str(shots / "dashboard-postgres-storage.png"), full_page=True)

        # live: a job enqueued by another client shows up without a reload
        page.click("#nav-overview")
        with PostgresQueue(dsn, schema=schema, reaper_interval=None) as q:
            q.enqueue(Job("late", {}))
        expect(page.locator("#count-pending")).to_have_text("66", timeout=15_000)

        # dead letter -> the job (its <script> payload is text) -> retry
        page.click("#nav-dead")
        expect(page.locator("#job-table tbody tr")).to_have_count(1)
        page.click(f"text={ids['dead']}")
        expect(page.locator("#payload")).to_contain_text("<script>window.__pwned = 1</script>")
        assert page.evaluate("window.__pwned") is None
        page.click("#retry-button")
        expect(page.locator("#job-status")).to_have_text("pending", timeout=15_000)
        expect(page.locator("#timeline li").last).to_contain_text("retry_dead")
        with PostgresQueue(dsn, schema=schema, reaper_interval=None) as q:
            job = q.get(ids["dead"])
            assert job.status is JobStatus.PENDING and job.retry_count == 0
            assert [t.kind for t in q.history(ids["dead"])][-1] == "retry_dead"
            assert q.stats()["dead_letter"] == 0

        page.click("#nav-dead")
        page.click("#purge-link")
        expect(page.locator("#purge-confirm")).to_have_text("Yes, purge 0 job(s)")

        assert errors == [], errors
        browser.close()
