"""The dashboard's pages through Starlette's TestClient: every page, escaping, CSRF,
read-only refusal, paging, and a store locked by another process."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")
import warnings

warnings.filterwarnings("ignore", message="Using `httpx`")

from dashboard_store import XSS, fill  # noqa: E402 - after the warnings filter it needs
from starlette.testclient import TestClient  # noqa: E402 - after the warnings filter it needs

import aurora_log  # noqa: E402 - after the warnings filter it needs
from aurora_log import Job, JobStatus  # noqa: E402 - after the warnings filter it needs
from aurora_log.dashboard import app, directory_app  # noqa: E402 - after the warnings filter it needs
from aurora_log.tools.dashboard import reads  # noqa: E402 - after the warnings filter it needs

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx`:DeprecationWarning")

PAGES = ["/", "/queues", "/jobs", "/dead", "/workers", "/storage", "/dead/purge"]


@pytest.fixture
def store(store_dir):
    q = aurora_log.open(store_dir, reaper_interval=None)
    ids = fill(q)
    yield q, ids
    q.close()


def client(q, **kw) -> TestClient:
    return TestClient(app(q, **kw), base_url="http://127.0.0.1")


def csrf_of(c: TestClient, page: str = "/storage") -> str:
    html = c.get(page).text
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "the page carries no CSRF field"
    return m.group(1)


def test_every_page_renders(store):
    q, ids = store
    with client(q) as c:
        for page in PAGES + [f"/jobs/{ids['done']}", f"/jobs/{ids['running']}"]:
            r = c.get(page)
            assert r.status_code == 200, (page, r.text[:500])
            assert "text/html" in r.headers["content-type"]
            assert "script-src 'self'" in r.headers["content-security-policy"]


def test_overview_counts_and_activity(store):
    q, _ = store
    with client(q) as c:
        html = c.get("/").text
    stats = q.stats()
    for s in ("pending", "running", "completed", "failed", "dead_letter", "cancelled"):
        assert re.search(rf'id="count-{s}">{stats[s]}<', html), s
    assert 'id="hour-enqueued">10<' in html          # read from the log's records
    assert 'id="hour-completed">1<' in html
    assert 'id="hour-failed">2<' in html
    assert ">mail<" in html and ">reports<" in html


def test_queues_page(store):
    q, _ = store
    with client(q) as c:
        html = c.get("/queues").text
    row = re.search(r'>mail</a></td><td class="num">(\d+)</td><td class="num">(\d+)<', html)
    assert row and row.groups() == ("5", "0")
    row = re.search(r'>reports</a></td><td class="num">(\d+)</td><td class="num">(\d+)<', html)
    assert row and row.groups() == ("0", "1")


def test_job_page_shows_payload_result_error_progress_and_timeline(store):
    q, ids = store
    with client(q) as c:
        html = c.get(f"/jobs/{ids['dead']}").text
        running = c.get(f"/jobs/{ids['running']}").text
    assert "dead_letter" in html and "ValueError: bad image" in html
    kinds = re.findall(r"<strong>(\w+)</strong>", html.split('id="timeline"')[1])
    assert kinds == [t.kind for t in q.history(ids["dead"])] == ["enqueue", "claim", "fail"]
    assert "40.0%" in running and "page 4 of 10" in running and "worker-b" in running


def test_every_value_is_escaped(store):
    """A payload, result and error holding <script> show as text, never as markup."""
    q, ids = store
    with client(q) as c:
        pages = [c.get(f"/jobs/{ids['dead']}").text, c.get(f"/jobs/{ids['done']}").text,
                 c.get("/dead").text]
    for html in pages:
        assert XSS not in html
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in pages[0]   # the payload
    assert "&lt;script&gt;" in pages[1]                                     # the result
    assert "bad image &lt;script&gt;" in pages[2]                           # the error


def test_escaping_in_names_and_query_parameters(store_dir):
    with aurora_log.open(store_dir, reaper_interval=None) as q:
        job_id = q.enqueue(Job("t<b>x&y", {}, queue="q<i>"))
        with client(q) as c:
            job = c.get(f"/jobs/{job_id}").text
            listing = c.get("/jobs", params={"type": '"><script>alert(1)</script>'}).text
            missing = c.get("/jobs", params={"id": "<img src=x onerror=alert(1)>"}).text
    assert "t<b>x" not in job and "t&lt;b&gt;x&amp;y" in job and "q&lt;i&gt;" in job
    assert "<script>alert(1)" not in listing and "&lt;script&gt;alert(1)" in listing
    assert "<img src=x" not in missing and "&lt;img src=x" in missing


def test_job_list_filters(store):
    q, ids = store
    with client(q) as c:
        by_status = c.get("/jobs", params={"status": "pending"}).text
        by_queue = c.get("/jobs", params={"queue": "mail"}).text
        by_type = c.get("/jobs", params={"type": "flaky"}).text
        bad = c.get("/jobs", params={"status": "nope"})

    def listed(html):
        return set(re.findall(r'class="job-link">([^<]+)<', html))

    assert listed(by_status) == {ids[f"pending{n}"] for n in range(5)}
    assert listed(by_queue) == {ids[f"pending{n}"] for n in range(5)}
    assert listed(by_type) == {ids["retry"]}
    assert bad.status_code == 400 and "unknown status" in bad.text


def test_find_by_id(store):
    q, ids = store
    with client(q) as c:
        r = c.get("/jobs", params={"id": ids["done"]}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].endswith(f"/jobs/{ids['done']}")
        assert c.get("/jobs", params={"id": "no-such-job"}).status_code == 404
        assert c.get("/jobs/no-such-job").status_code == 404


def test_paging_walks_every_job_once_in_enqueue_order(store_dir):
    with aurora_log.open(store_dir, reaper_interval=None, durability="os") as q:
        want = q.enqueue_many([Job("t", {"n": n}) for n in range(237)])
        seen: list[str] = []
        with client(q) as c:
            url = "/jobs?limit=50"
            while url:
                html = c.get(url).text
                seen += re.findall(r'class="job-link">([^<]+)<', html)
                m = re.search(r'href="([^"]+)" id="next-page"', html)
                url = "/jobs" + m.group(1).replace("&amp;", "&") if m else None
    assert seen == want


def test_paging_survives_a_purge_before_the_cursor(store_dir):
    with aurora_log.open(store_dir, reaper_interval=None, durability="os") as q:
        ids = q.enqueue_many([Job("t", {"n": n}) for n in range(30)])
        first = reads.job_page(q, limit=10)
        for job_id in ids[:3]:                    # finish and purge three earlier jobs
            q.cancel(job_id)
        assert q.purge(status="cancelled") == 3
        rest = reads.job_page(q, cursor=reads.parse_cursor(first.next_cursor), limit=100)
    assert [j.id for j in first.jobs] == ids[:10]
    assert [j.id for j in rest.jobs] == ids[10:]


def test_a_filter_matching_little_stops_at_its_scan_budget_and_goes_on(store_dir):
    with aurora_log.open(store_dir, reaper_interval=None, durability="os") as q:
        ids = q.enqueue_many([Job("common", {}) for _ in range(500)] + [Job("rare", {})]
                             + [Job("common", {}) for _ in range(100)])
        flt = reads.JobFilter(job_type="rare")
        page = reads.job_page(q, flt, limit=10, scan_budget=200)
        assert page.jobs == [] and page.budget_hit and page.examined == 200
        page = reads.job_page(q, flt, cursor=reads.parse_cursor(page.next_cursor),
                              limit=10, scan_budget=200)
        assert page.jobs == [] and page.position == 400
        page = reads.job_page(q, flt, cursor=reads.parse_cursor(page.next_cursor),
                              limit=10, scan_budget=200)
        assert [j.id for j in page.jobs] == [ids[500]]
        with pytest.raises(ValueError):
            reads.parse_cursor("12")


def test_pages_and_workers_see_what_another_process_wrote(store_dir):
    # the dashboard's direct reads catch up with the shared log like every other read:
    # a job another opener enqueued and claimed shows on the next page and worker list
    with aurora_log.open(store_dir, shared=True, reaper_interval=None) as dash, \
            aurora_log.open(store_dir, shared=True, reaper_interval=None) as other:
        assert reads.job_page(dash).jobs == []
        job_id = other.enqueue(Job("t", {}))
        assert other.claim("w-other") is not None
        assert [j.id for j in reads.job_page(dash).jobs] == [job_id]
        assert [w.worker_id for w in reads.workers(dash)] == ["w-other"]


def test_dead_letter_page_lists_only_dead_jobs(store):
    q, ids = store
    with client(q) as c:
        html = c.get("/dead").text
    assert set(re.findall(r'class="job-link">([^<]+)<', html)) == {ids["dead"]}


def test_workers_page(store):
    q, ids = store
    with client(q) as c:
        html = c.get("/workers").text
    assert "worker-b" in html and ids["running"] in html
    assert "worker-a" not in html            # it holds nothing now


def test_storage_page_and_verify(store):
    q, _ = store
    with client(q) as c:
        html = c.get("/storage").text
        seg = re.search(r"<td>(\d{20}\.seg)</td>", html)
        assert seg, "no segment listed"
        token = csrf_of(c, "/storage")
        r = c.post("/storage/verify", data={"csrf": token}, follow_redirects=False)
        assert r.status_code == 303
        c.app.state.dashboard.wait_verify()
        html = c.get("/storage").text
    assert 'id="verify-verdict">OK<' in html
    assert 'id="wal-bytes">' in html


def test_actions_are_refused_on_a_read_only_dashboard(store):
    q, ids = store
    with client(q) as c:                         # allow_actions defaults to False
        token = csrf_of(c)
        for url in (f"/jobs/{ids['dead']}/retry", f"/jobs/{ids['retry']}/cancel"):
            r = c.post(url, data={"csrf": token})
            assert r.status_code == 403 and "read-only" in r.text
        r = c.post("/dead/purge", data={"csrf": token, "confirm": "yes"})
        assert r.status_code == 403
        assert "Retry</button>" not in c.get(f"/jobs/{ids['dead']}").text
    assert q.get(ids["dead"]).status is JobStatus.DEAD_LETTER
    assert q.get(ids["retry"]).status is JobStatus.FAILED


def test_actions_need_the_csrf_token(store):
    q, ids = store
    with client(q, allow_actions=True) as c:
        token = csrf_of(c)
        url = f"/jobs/{ids['dead']}/retry"
        assert c.post(url).status_code == 403                                   # none
        assert c.post(url, data={"csrf": "x" * 43}).status_code == 403          # wrong
        c.cookies.clear()                                                       # no cookie
        assert c.post(url, data={"csrf": token}).status_code == 403
        token = csrf_of(c)
        r = c.post(url, data={"csrf": token}, headers={"origin": "http://evil.example"})
        assert r.status_code == 403 and "another origin" in r.text
        assert q.get(ids["dead"]).status is JobStatus.DEAD_LETTER
        r = c.post(url, data={"csrf": token}, follow_redirects=False)
        assert r.status_code == 303
    assert q.get(ids["dead"]).status is JobStatus.PENDING


def test_retry_cancel_and_purge_with_confirmation(store):
    q, ids = store
    with client(q, allow_actions=True) as c:
        token = csrf_of(c)
        r = c.post(f"/jobs/{ids['retry']}/cancel", data={"csrf": token})
        assert r.status_code == 200 and q.get(ids["retry"]).status is JobStatus.CANCELLED
        r = c.post(f"/jobs/{ids['done']}/cancel", data={"csrf": token})
        assert r.status_code == 409                # a finished job: a typed error, shown
        r = c.post(f"/jobs/{ids['pending0']}/retry", data={"csrf": token})
        assert r.status_code == 409                # not dead-lettered
        assert "Yes, purge 1 job(s)" in c.get("/dead/purge").text
        r = c.post("/dead/purge", data={"csrf": token})
        assert r.status_code == 400 and q.get(ids["dead"]) is not None   # no confirmation
        r = c.post("/dead/purge", data={"csrf": token, "confirm": "yes"})
        assert r.status_code == 200
    assert q.get(ids["dead"]) is None


def test_live_partial_is_the_page_body_only(store):
    q, _ = store
    with client(q) as c:
        part = c.get("/", headers={"X-Live": "1"}).text
    assert "<html" not in part and 'id="status-cards"' in part


HOLDER = textwrap.dedent("""
    import sys, aurora_log
    q = aurora_log.open(sys.argv[1], exclusive=sys.argv[2] == "exclusive")
    print("locked", flush=True)
    sys.stdin.read()
    q.close()
""")


@pytest.mark.parametrize("mode", ["exclusive", "default"])
def test_directory_dashboard_beside_a_process_that_holds_the_store(store_dir, mode):
    with aurora_log.open(store_dir, reaper_interval=None) as q:
        ids = fill(q)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store_dir), mode],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        web = directory_app(store_dir, allow_actions=True, refresh_seconds=0)
        with TestClient(web, base_url="http://127.0.0.1") as c:
            html = c.get("/").text
            assert 'id="count-dead_letter">1<' in html and "read-only here" in html
            token = csrf_of(c)
            r = c.post(f"/jobs/{ids['dead']}/retry", data={"csrf": token})
            if mode == "exclusive":     # only the single-owner mode refuses the action
                assert r.status_code == 409 and "opened it with exclusive=True" in r.text
                assert f"process {holder.pid}" in r.text
            else:                       # beside a default-mode process: it just works
                assert r.status_code in (200, 303), r.text
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    want = JobStatus.DEAD_LETTER if mode == "exclusive" else JobStatus.PENDING
    with aurora_log.open(store_dir, read_only=True) as q:
        assert q.get(ids["dead"]).status is want


def test_directory_dashboard_acts_when_the_store_is_free_and_sees_other_writers(store_dir):
    with aurora_log.open(store_dir, reaper_interval=None) as q:
        ids = fill(q)
    web = directory_app(store_dir, allow_actions=True, refresh_seconds=0)
    with TestClient(web, base_url="http://127.0.0.1") as c:
        token = csrf_of(c)
        r = c.post(f"/jobs/{ids['dead']}/retry", data={"csrf": token})
        assert r.status_code == 200
        assert "pending" in c.get(f"/jobs/{ids['dead']}").text
        # another process writes; the dashboard re-reads the store
        with aurora_log.open(store_dir, reaper_interval=None) as other:
            new_id = other.enqueue(Job("late", {}))
        deadline = time.monotonic() + 20       # the poller re-reads the store
        while c.get(f"/jobs/{new_id}").status_code != 200:
            assert time.monotonic() < deadline, "the dashboard never saw the new job"
            web.state.dashboard.poll_once()
            time.sleep(0.05)
    with aurora_log.open(store_dir, read_only=True) as q:
        assert q.get(ids["dead"]).status is JobStatus.PENDING


def test_mounted_in_another_app_with_links_under_its_prefix(store):
    from starlette.applications import Starlette
    from starlette.routing import Mount
    q, ids = store
    outer = Starlette(routes=[Mount("/admin/jobs", app=app(q))])
    with TestClient(outer, base_url="http://127.0.0.1") as c:
        html = c.get("/admin/jobs/").text
        assert 'href="/admin/jobs/queues"' in html
        assert c.get(f"/admin/jobs/jobs/{ids['done']}").status_code == 200
        assert c.get("/admin/jobs/static/dashboard.js").status_code == 200


def test_app_refuses_what_is_not_a_queue():
    with pytest.raises(TypeError):
        app(object())


def test_a_local_store_never_imports_the_web_dependencies():
    code = ("import sys, tempfile, aurora_log; q = aurora_log.open(tempfile.mkdtemp()); "
            "q.enqueue(aurora_log.Job('t', {})); q.close(); "
            "bad = [m for m in ('starlette', 'uvicorn', 'prometheus_client', 'jinja2') "
            "if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_dashboard_serves_on_loopback_read_only(store_dir):
    with aurora_log.open(store_dir, reaper_interval=None) as q:
        fill(q)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "aurora_log", "dashboard", str(store_dir),
                             "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert "read-only" in proc.stdout.readline()
        body = None
        for _ in range(100):
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                              timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.1)
        assert body is not None and 'aurora_jobs{queue="mail",status="pending"} 5.0' in body
        # bound to 127.0.0.1 only: another local address of this host is refused
        addrs = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
        for addr in addrs - {"127.0.0.1"}:
            if addr.startswith("127."):
                continue
            with pytest.raises(OSError):
                urllib.request.urlopen(f"http://{addr}:{port}/metrics", timeout=2)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_cli_dashboard_and_worker_flags(tmp_path):
    from aurora_log.tools.cli import build_parser, main
    args = build_parser().parse_args(["worker", "m:q", "--metrics-port", "9108"])
    assert args.metrics_port == 9108
    args = build_parser().parse_args(["dashboard", "DIR"])
    assert (args.host, args.port, args.allow_actions) == ("127.0.0.1", 8600, False)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["dashboard", "DIR", "--port", "70000"])
    assert main(["dashboard", str(tmp_path / "nope")]) == 1


def test_a_slow_reopen_spaces_the_next_one(store_dir):
    from aurora_log.tools.dashboard.source import DirectorySource
    with aurora_log.open(store_dir, reaper_interval=None) as q:
        q.enqueue(Job("t", {}))
    opens = []

    def slow_open(path, **kw):
        opens.append(kw)
        time.sleep(0.3)
        return aurora_log.open(path, **kw)

    source = DirectorySource(store_dir, refresh_seconds=0, opener=slow_open)
    try:
        assert source.open_seconds >= 0.3
        with aurora_log.open(store_dir, reaper_interval=None) as q:
            q.enqueue(Job("t", {}))
        assert source.refresh() is False            # changed, but too soon after a 0.3 s open
        time.sleep(4 * source.open_seconds)
        assert source.refresh() is True
        assert source.queue().stats()["pending"] == 2
        assert all(kw.get("read_only") for kw in opens)
    finally:
        source.close()
