"""The dashboard and /metrics on a PostgreSQL store, against the real server the suite
starts (tests/pgserver.py; with CI=true a missing server fails): every page, escaping, CSRF
refusal, paging, the actions, metrics parsed with prometheus_client's parser, the CLI."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.request
import warnings

import pytest

pytest.importorskip("starlette")
pytest.importorskip("prometheus_client")
warnings.filterwarnings("ignore", message="Using `httpx`")

from dashboard_store import XSS, fill  # noqa: E402 - after the warnings filter it needs
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402 - after the warnings filter it needs
from starlette.testclient import TestClient  # noqa: E402 - after the warnings filter it needs

from aurora_log import Job, JobStatus  # noqa: E402 - after the warnings filter it needs
from aurora_log.dashboard import app, postgres_app  # noqa: E402 - after the warnings filter it needs

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx`:DeprecationWarning")

PAGES = ["/", "/queues", "/jobs", "/dead", "/workers", "/storage", "/dead/purge"]


def open_pg(pg_server, schema, **kw):
    from aurora_log.postgres import PostgresQueue
    kw.setdefault("reaper_interval", None)
    return PostgresQueue(pg_server.dsn, schema=schema, **kw)


@pytest.fixture
def store(pg_server, pg_schema):
    q = open_pg(pg_server, pg_schema)
    ids = fill(q)
    yield q, ids
    q.close()


def client(q, **kw) -> TestClient:
    return TestClient(app(q, **kw), base_url="http://127.0.0.1")


def csrf_of(c: TestClient, page: str = "/dead/purge") -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', c.get(page).text)
    assert m, "the page carries no CSRF field"
    return m.group(1)


def listed(html: str) -> list[str]:
    return re.findall(r'class="job-link">([^<]+)<', html)


def samples(text: str) -> dict:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(found: dict, name: str, **labels) -> float:
    return found[(name, frozenset(labels.items()))]


# ---------------------------------------------------------------------- pages

def test_every_page_renders_on_a_postgres_store(store):
    q, ids = store
    with client(q) as c:
        for page in PAGES + [f"/jobs/{ids['done']}", f"/jobs/{ids['running']}"]:
            r = c.get(page)
            assert r.status_code == 200, (page, r.text[:500])
            assert "script-src 'self'" in r.headers["content-security-policy"]
            assert q.schema in r.text                         # the store named in the header
            assert "Traceback" not in r.text


def test_overview_counts_activity_and_percentiles(pg_server, pg_schema):
    """Times from the queue's clock: wait (due -> claim) and run (claim -> outcome) are
    exact, and only the last hour counts."""
    now = time.time()
    t = [now - 2 * 3600]
    with open_pg(pg_server, pg_schema, clock=lambda: t[0]) as q:
        q.enqueue(Job("old", {}))                            # two hours ago: not shown
        t[0] = now - 600
        ids = q.enqueue_many([Job("t", {}) for _ in range(4)])
        for n, job_id in enumerate(ids[:3]):
            t[0] = now - 600 + 2 + n * 10                    # waits 2, 12, 22 s
            job = q.claim("w", job_types=["t"])
            assert job.id == job_id
            t[0] += 4                                        # runs 4 s
            if n < 2:
                q.complete(job.id, job.token)
            else:
                q.fail(job.id, job.token, "boom")
        t[0] = now
        with client(q) as c:
            html = c.get("/").text
    assert 'id="hour-enqueued">4<' in html
    assert 'id="hour-completed">2<' in html
    assert 'id="hour-failed">1<' in html
    latency = html.split('id="latency"')[1].split("</table>")[0]
    cells = re.findall(r'<td class="num">([^<]+)</td>', latency)
    # waits: 2 and 12 s (the failed job's claim is followed by a new wait for its retry,
    # so its due time is gone: not sampled), percentile_cont p50 7 s, p95 11.5 s; runs 4 s
    assert cells == ["7.0 s", "11.5 s", "4.0 s", "4.0 s"], cells
    assert 'id="count-pending">2<' in html and "the history table" in html


def test_the_activity_query_can_use_the_time_index(store):
    """Migration 2's history_at index serves the per-minute query (with seqscan off, as
    on a big table, the plan must use it, not a full scan)."""
    q, _ = store
    from aurora_log.runtime.pg_activity import _window_sql
    per_minute = _window_sql(q.schema)[0]
    with q._conn() as cur:
        cur.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in cur.execute("EXPLAIN " + per_minute, (0,)))
        cur.execute("RESET enable_seqscan")
    assert "history_at" in plan, plan


def test_queues_workers_and_dead_letter_pages(store):
    q, ids = store
    with client(q) as c:
        queues = c.get("/queues").text
        workers = c.get("/workers").text
        dead = c.get("/dead").text
    row = re.search(r'>mail</a></td><td class="num">(\d+)</td><td class="num">(\d+)<', queues)
    assert row and row.groups() == ("5", "0")
    row = re.search(r'>reports</a></td><td class="num">(\d+)</td><td class="num">(\d+)<', queues)
    assert row and row.groups() == ("0", "1")
    assert "worker-b" in workers and ids["running"] in workers
    assert "worker-a" not in workers                  # it holds nothing now
    assert listed(dead) == [ids["dead"]]


def test_job_page_shows_fields_and_the_timeline_from_history(store):
    q, ids = store
    with client(q) as c:
        html = c.get(f"/jobs/{ids['dead']}").text
        running = c.get(f"/jobs/{ids['running']}").text
    assert "dead_letter" in html and "ValueError: bad image" in html
    kinds = re.findall(r"<strong>(\w+)</strong>", html.split('id="timeline"')[1])
    assert kinds == [t.kind for t in q.history(ids["dead"])] == ["enqueue", "claim", "fail"]
    assert "40.0%" in running and "page 4 of 10" in running and "worker-b" in running


def test_storage_page_shows_tables_and_schema_version(store):
    from aurora_log.postgres import LATEST_VERSION
    q, _ = store
    with client(q) as c:
        html = c.get("/storage").text
        token = csrf_of(c)
        r = c.post("/storage/verify", data={"csrf": token})
    assert f'id="schema-version">{LATEST_VERSION} of {LATEST_VERSION}<' in html
    tables = html.split('id="pg-tables"')[1].split("</table>")[0]
    assert "<td>history</td>" in tables and "<td>jobs</td>" in tables
    assert "history_at" in html and "jobs_seq" in html
    assert ".seg" not in html and "verify-button" not in html
    assert r.status_code == 404 and "no verify" in r.text


def test_every_value_is_escaped(pg_server, pg_schema):
    with open_pg(pg_server, pg_schema) as q:
        ids = fill(q)
        odd = q.enqueue(Job("t<b>x&y", {}, queue="q<i>"))
        with client(q) as c:
            pages = [c.get(f"/jobs/{ids['dead']}").text, c.get(f"/jobs/{ids['done']}").text,
                     c.get("/dead").text]
            job = c.get(f"/jobs/{odd}").text
            listing = c.get("/jobs", params={"type": '"><script>alert(1)</script>'}).text
            missing = c.get("/jobs", params={"id": "<img src=x onerror=alert(1)>"}).text
            overview = c.get("/").text
    for html in pages:
        assert XSS not in html
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in pages[0]   # the payload
    assert "&lt;script&gt;" in pages[1]                                     # the result
    assert "bad image &lt;script&gt;" in pages[2]                           # the error
    assert "t<b>x" not in job and "t&lt;b&gt;x&amp;y" in job and "q&lt;i&gt;" in job
    assert "<script>alert(1)" not in listing and "&lt;script&gt;alert(1)" in listing
    assert "<img src=x" not in missing and "&lt;img src=x" in missing
    assert "q<i>" not in overview and "q&lt;i&gt;" in overview


def test_job_list_filters_and_find_by_id(store):
    q, ids = store
    with client(q) as c:
        by_status = c.get("/jobs", params={"status": "pending"}).text
        by_queue = c.get("/jobs", params={"queue": "mail"}).text
        by_type = c.get("/jobs", params={"type": "flaky"}).text
        assert c.get("/jobs", params={"status": "nope"}).status_code == 400
        r = c.get("/jobs", params={"id": ids["done"]}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].endswith(f"/jobs/{ids['done']}")
        assert c.get("/jobs", params={"id": "no-such-job"}).status_code == 404
        assert c.get("/jobs/no-such-job").status_code == 404
        assert c.get("/jobs", params={"cursor": "12:abc"}).status_code == 400
    pending = [ids[f"pending{n}"] for n in range(5)]
    assert listed(by_status) == pending                   # enqueue order
    assert listed(by_queue) == pending
    assert listed(by_type) == [ids["retry"]]


def test_paging_walks_every_job_once_in_enqueue_order(pg_server, pg_schema):
    with open_pg(pg_server, pg_schema) as q:
        want = q.enqueue_many([Job("t", {"n": n}) for n in range(237)])
        seen: list[str] = []
        pages = 0
        with client(q) as c:
            url = "/jobs?limit=50"
            while url:
                html = c.get(url).text
                seen += listed(html)
                pages += 1
                m = re.search(r'href="([^"]+)" id="next-page"', html)
                url = "/jobs" + m.group(1).replace("&amp;", "&") if m else None
    assert seen == want and pages == 5


def test_a_filter_matching_little_stops_at_its_scan_budget_and_goes_on(pg_server, pg_schema):
    from aurora_log.tools.dashboard.pg_reads import PostgresReads
    from aurora_log.tools.dashboard.readers import JobFilter
    with open_pg(pg_server, pg_schema) as q:
        ids = q.enqueue_many([Job("common", {}) for _ in range(500)] + [Job("rare", {})]
                             + [Job("common", {}) for _ in range(100)])
        reads = PostgresReads(lambda: q, scan_budget=200)
        flt = JobFilter(job_type="rare")
        page = reads.job_page(flt, None, 10)
        assert page.jobs == [] and page.budget_hit and page.examined == 200
        page = reads.job_page(flt, page.next_cursor, 10)
        assert page.jobs == [] and page.budget_hit
        page = reads.job_page(flt, page.next_cursor, 10)
        assert [j.id for j in page.jobs] == [ids[500]]
        page = reads.job_page(flt, page.next_cursor, 10)
        assert page.jobs == [] and page.next_cursor is None and not page.budget_hit
        with pytest.raises(ValueError):
            reads.job_page(flt, "12:abc", 10)


# ---------------------------------------------------------------------- actions

def test_actions_are_refused_on_a_read_only_dashboard(store):
    q, ids = store
    with client(q) as c:
        token = csrf_of(c)
        for url in (f"/jobs/{ids['dead']}/retry", f"/jobs/{ids['retry']}/cancel"):
            r = c.post(url, data={"csrf": token})
            assert r.status_code == 403 and "read-only" in r.text
        assert c.post("/dead/purge", data={"csrf": token, "confirm": "yes"}).status_code == 403
    assert q.get(ids["dead"]).status is JobStatus.DEAD_LETTER
    assert q.get(ids["retry"]).status is JobStatus.FAILED


def test_actions_need_the_csrf_token(store):
    q, ids = store
    with client(q, allow_actions=True) as c:
        token = csrf_of(c)
        url = f"/jobs/{ids['dead']}/retry"
        assert c.post(url).status_code == 403                                   # none
        assert c.post(url, data={"csrf": "x" * 43}).status_code == 403          # wrong
        r = c.post(url, data={"csrf": token}, headers={"origin": "http://evil.example"})
        assert r.status_code == 403 and "another origin" in r.text
        c.cookies.clear()                                                       # no cookie
        assert c.post(url, data={"csrf": token}).status_code == 403
        assert q.get(ids["dead"]).status is JobStatus.DEAD_LETTER
        token = csrf_of(c)
        r = c.post(url, data={"csrf": token}, follow_redirects=False)
        assert r.status_code == 303
    job = q.get(ids["dead"])
    assert job.status is JobStatus.PENDING and job.retry_count == 0
    assert q.history(ids["dead"])[-1].kind == "retry_dead"


def test_retry_cancel_and_purge_with_confirmation(store):
    q, ids = store
    with client(q, allow_actions=True) as c:
        token = csrf_of(c)
        r = c.post(f"/jobs/{ids['retry']}/cancel", data={"csrf": token})
        assert r.status_code == 200 and q.get(ids["retry"]).status is JobStatus.CANCELLED
        assert c.post(f"/jobs/{ids['done']}/cancel", data={"csrf": token}).status_code == 409
        assert c.post(f"/jobs/{ids['pending0']}/retry", data={"csrf": token}).status_code == 409
        assert c.post("/jobs/nope/retry", data={"csrf": token}).status_code == 404
        assert "Yes, purge 1 job(s)" in c.get("/dead/purge").text
        r = c.post("/dead/purge", data={"csrf": token})
        assert r.status_code == 400 and q.get(ids["dead"]) is not None   # no confirmation
        r = c.post("/dead/purge", data={"csrf": token, "confirm": "yes"})
        assert r.status_code == 200 and listed(r.text) == []
        # an action re-counts at once (the counts are otherwise cached for a few seconds)
        assert 'id="count-dead_letter">0<' in c.get("/").text
    assert q.get(ids["dead"]) is None
    assert q.get(ids["cancelled"]) is not None           # only the dead letter was purged


def test_counts_are_cached_briefly_and_the_poller_recounts(store):
    from aurora_log.tools.dashboard.pg_reads import PostgresReads
    q, _ = store
    reads = PostgresReads(lambda: q)
    assert reads.stats()["pending"] == 5
    q.enqueue(Job("t", {}))
    assert reads.stats()["pending"] == 5              # a count at most seconds old
    time.sleep(4 * reads._stats[1] + 0.01)            # the poller waits 4x a count's time
    reads.refresh()
    assert reads.stats()["pending"] == 6


# ---------------------------------------------------------------------- metrics

def test_metrics_on_a_postgres_store(store):
    q, _ = store
    with client(q) as c:
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    found = samples(r.text)
    stats = q.stats()
    for queue, counts in stats["queues"].items():
        for status in ("pending", "running", "completed", "failed", "dead_letter",
                       "cancelled"):
            assert value(found, "aurora_jobs", status=status, queue=queue) == counts[status]
    assert value(found, "aurora_jobs_enqueued_total") == stats["total"] == 10
    assert value(found, "aurora_jobs_completed_total") == 1
    assert value(found, "aurora_jobs_failed_total") == 2
    assert value(found, "aurora_job_duration_seconds_count") == 3
    assert value(found, "aurora_job_duration_seconds_bucket", le="+Inf") == 3
    assert 0 <= value(found, "aurora_job_duration_seconds_sum") < 60
    # no log file on PostgreSQL: the WAL and fdatasync metrics are omitted
    assert not any(name.startswith(("aurora_wal", "aurora_log_next_lsn", "aurora_fdatasync"))
                   for name, _ in found)


def test_counters_follow_new_rows_and_survive_a_purge(store):
    q, _ = store
    with client(q) as c:
        before = samples(c.get("/metrics").text)
        q.enqueue_many([Job("t", {}) for _ in range(7)])
        job = q.claim("w", job_types=["t"])
        q.complete(job.id, job.token)
        recount = c.app.state.dashboard.reads.refresh        # the gauge: the pages' count,
        recount(force=True)                                  # re-counted by the poller
        after = samples(c.get("/metrics").text)
        assert q.purge(status="completed") == 2              # history rows go with them
        recount(force=True)
        purged = samples(c.get("/metrics").text)
    assert value(before, "aurora_jobs_enqueued_total") == 10
    assert value(after, "aurora_jobs_enqueued_total") == 17
    assert value(after, "aurora_jobs_completed_total") == 2
    assert value(after, "aurora_job_duration_seconds_count") == 4
    assert value(after, "aurora_jobs", status="pending", queue="default") == 6
    # the purge deleted counted rows: counters never go down
    assert value(purged, "aurora_jobs_enqueued_total") == 17
    assert value(purged, "aurora_jobs_completed_total") == 2
    assert value(purged, "aurora_jobs", status="completed", queue="default") == 0


def test_a_row_committed_late_with_a_smaller_lsn_is_still_counted(pg_server, pg_schema):
    """History lsns are drawn before commit: a transaction that drew a smaller lsn can
    commit after a bigger one was read. The tracker must not skip it."""
    import psycopg

    from aurora_log.runtime.pg_activity import HistoryTracker
    with open_pg(pg_server, pg_schema) as q:
        tracker = HistoryTracker()
        slow = psycopg.connect(pg_server.dsn)               # a transaction left open
        with slow.cursor() as cur:
            cur.execute(f"INSERT INTO {pg_schema}.history (lsn, job_id, kind, at_ms, status, "
                        f"attempt) VALUES (nextval('{pg_schema}.lsn'), 'slow', 'enqueue', "
                        "%s, 1, 1)", (round(time.time() * 1000),))
        q.enqueue(Job("t", {}))                             # a bigger lsn, committed first
        tracker.catch_up(q)
        assert tracker.enqueued_total == 1
        slow.commit()
        slow.close()
        tracker.catch_up(q)
        assert tracker.enqueued_total == 2
        tracker.catch_up(q)                                 # re-read rows: not twice
        assert tracker.enqueued_total == 2


def test_worker_serves_postgres_metrics_on_its_port(pg_server, pg_schema):
    from aurora_log.runtime.metrics import serve_metrics
    with open_pg(pg_server, pg_schema) as q:
        fill(q)
        server, thread = serve_metrics(q, 0)
        try:
            host, port = server.server_address[:2]
            text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read()
        finally:
            server.shutdown()
            thread.join(timeout=10)
    found = samples(text.decode())
    assert value(found, "aurora_jobs_completed_total") == 1
    assert value(found, "aurora_jobs", status="running", queue="reports") == 1


# ---------------------------------------------------------------------- serving

def test_postgres_app_opens_and_closes_its_own_queue(pg_server, pg_schema, store):
    q, ids = store
    web = postgres_app(pg_server.dsn, schema=pg_schema)
    own = web.state.dashboard.source.queue()
    with TestClient(web, base_url="http://127.0.0.1") as c:
        assert 'id="count-dead_letter">1<' in c.get("/").text
        assert c.get(f"/jobs/{ids['done']}").status_code == 200
    assert own is not q and own.closed


def test_cli_refuses_an_unmigrated_schema(pg_server, pg_schema, capsys):
    from aurora_log.tools.cli import main
    assert main(["dashboard", pg_server.dsn, "--schema", pg_schema]) == 1
    assert "aurora-log migrate" in capsys.readouterr().err


def test_cli_dashboard_serves_a_postgres_store_on_loopback(store, pg_server, pg_schema):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "aurora_log", "dashboard", pg_server.dsn,
                             "--schema", pg_schema, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = proc.stdout.readline()
        assert "read-only" in first and f"schema {pg_schema}" in first, first
        body = None
        for _ in range(100):
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                              timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.1)
        assert body is not None
        assert 'aurora_jobs{queue="mail",status="pending"} 5.0' in body
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/storage", timeout=5).read()
        assert b'id="pg-tables"' in page
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_the_purge_confirmation_counts_afresh(store):
    q, _ = store
    with client(q, allow_actions=True) as c:
        assert "Yes, purge 1 job(s)" in c.get("/dead/purge").text
        q.enqueue(Job("doomed", {}, max_retries=0))
        job = q.claim("w", job_types=["doomed"])
        q.fail(job.id, job.token, "boom")
        assert "Yes, purge 2 job(s)" in c.get("/dead/purge").text
