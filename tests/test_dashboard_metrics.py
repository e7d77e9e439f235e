"""/metrics: parsed with prometheus_client's own parser and checked against the store;
served by the dashboard and by a worker (metrics_port)."""

from __future__ import annotations

import time
import urllib.request
import warnings

import pytest

pytest.importorskip("prometheus_client")
pytest.importorskip("starlette")
warnings.filterwarnings("ignore", message="Using `httpx`")

from dashboard_store import fill  # noqa: E402 - after the warnings filter it needs
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402 - after the warnings filter it needs
from starlette.testclient import TestClient  # noqa: E402 - after the warnings filter it needs

import aurora_log  # noqa: E402 - after the warnings filter it needs
from aurora_log import Job, Worker  # noqa: E402 - after the warnings filter it needs
from aurora_log.dashboard import app  # noqa: E402 - after the warnings filter it needs


def samples(text: str) -> dict:
    """{(sample name, frozenset(labels)): value} from the exposition text."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(found: dict, name: str, **labels) -> float:
    return found[(name, frozenset(labels.items()))]


@pytest.mark.parametrize("exclusive", [False, True])
def test_metrics_match_the_store(store_dir, exclusive):
    with aurora_log.open(store_dir, reaper_interval=None, exclusive=exclusive) as q:
        fill(q)
        with TestClient(app(q), base_url="http://127.0.0.1") as c:
            r = c.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        found = samples(r.text)
        stats = q.stats()
        for queue, counts in stats["queues"].items():
            for status in ("pending", "running", "completed", "failed", "dead_letter",
                           "cancelled"):
                assert value(found, "aurora_jobs", status=status, queue=queue) == counts[status]
        assert value(found, "aurora_jobs_enqueued_total") == stats["total"] == 10
        assert value(found, "aurora_jobs_completed_total") == stats["completed"] == 1
        assert value(found, "aurora_jobs_failed_total") == 2       # the dead one, the retry
        # three attempts ended (complete, fail, fail): all quick
        assert value(found, "aurora_job_duration_seconds_count") == 3
        assert value(found, "aurora_job_duration_seconds_bucket", le="+Inf") == 3
        assert 0 <= value(found, "aurora_job_duration_seconds_sum") < 60
        wal = sum(p.stat().st_size for p in (store_dir / "wal").glob("*.seg"))
        assert value(found, "aurora_wal_bytes") == wal > 0
        assert value(found, "aurora_log_next_lsn") == q.log.next_lsn
        syncs = value(found, "aurora_fdatasyncs_total")
        assert syncs >= 1
        if exclusive:
            # the fdatasync histogram comes from the exclusive C writer's own timing
            assert value(found, "aurora_fdatasync_duration_seconds_count") == syncs
            assert value(found, "aurora_fdatasync_duration_seconds_sum") > 0
        else:       # the shared group commit counts syncs on its page, times none
            assert not any(name.startswith("aurora_fdatasync_duration") for name, _ in found)


def test_counters_follow_new_records(store_dir):
    with aurora_log.open(store_dir, reaper_interval=None, durability="os") as q, \
            TestClient(app(q), base_url="http://127.0.0.1") as c:
        before = samples(c.get("/metrics").text)
        q.enqueue_many([Job("t", {}) for _ in range(7)])
        job = q.claim("w")
        q.complete(job.id, job.token)
        after = samples(c.get("/metrics").text)
    assert value(before, "aurora_jobs_enqueued_total") == 0
    assert value(after, "aurora_jobs_enqueued_total") == 7
    assert value(after, "aurora_jobs_completed_total") == 1
    assert value(after, "aurora_jobs", status="pending", queue="default") == 6


def test_a_read_only_store_has_no_writer_metrics(store_dir):
    with aurora_log.open(store_dir, reaper_interval=None) as q:
        fill(q)
    with aurora_log.open(store_dir, read_only=True, reaper_interval=None) as ro, \
            TestClient(app(ro), base_url="http://127.0.0.1") as c:
        found = samples(c.get("/metrics").text)
    assert value(found, "aurora_jobs_enqueued_total") == 10
    assert not any(name.startswith("aurora_fdatasync") for name, _ in found)


def test_worker_serves_metrics_on_its_port(store_dir):
    with aurora_log.open(store_dir) as q:
        @q.task("double")
        def double(x):
            return 2 * x

        for n in range(4):
            double.enqueue(n)
        worker = Worker(q, concurrency=1, metrics_port=0).start()
        try:
            deadline = time.monotonic() + 20
            while q.stats()["completed"] < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            host, port = worker.metrics_address
            assert host == "127.0.0.1"
            text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read()
        finally:
            worker.stop(timeout=10)
        found = samples(text.decode())
        assert value(found, "aurora_jobs", status="completed", queue="default") == 4
        assert value(found, "aurora_jobs_completed_total") == 4
        assert value(found, "aurora_job_duration_seconds_count") == 4
        with pytest.raises(OSError):            # stopped with the worker
            urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2)


def test_worker_rejects_a_bad_metrics_port(store_dir):
    with aurora_log.open(store_dir) as q:
        with pytest.raises(ValueError):
            Worker(q, metrics_port=70000)
        with pytest.raises(ValueError):
            Worker(q, metrics_port="9100")


class _StatsOnlyQueue:
    """What a worker's metrics see of a queue without a local log (PostgresQueue): stats()."""

    def stats(self) -> dict:
        counts = {"pending": 2, "running": 1, "completed": 0, "failed": 0, "dead_letter": 0,
                  "cancelled": 0, "total": 3}
        return {**counts, "queues": {"mail": counts}}


def test_a_queue_without_a_log_gets_the_job_gauges_only():
    from aurora_log.runtime.activity import ActivityTracker
    from aurora_log.runtime.metrics import make_registry, render
    q = _StatsOnlyQueue()
    found = samples(render(make_registry(lambda: q, ActivityTracker())).decode())
    assert value(found, "aurora_jobs", status="pending", queue="mail") == 2
    assert value(found, "aurora_jobs", status="running", queue="mail") == 1
    assert not any(name.startswith(("aurora_wal", "aurora_log_", "aurora_fdatasync",
                                    "aurora_jobs_enqueued", "aurora_job_duration"))
                   for name, _ in found)
