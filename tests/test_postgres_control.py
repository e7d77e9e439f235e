"""Queue control on PostgreSQL across processes: each queue object here has its own pool
of connections, as a separate process (or machine) would; the database alone decides.
The single-queue semantics are in tests/conformance/test_control_api.py."""

import threading

import pytest

import aurora_log
from aurora_log.job import Job, JobStatus
from aurora_log.tools import cli


@pytest.fixture
def queues(pg_server, pg_schema):
    opened = []

    def _open(**kw):
        kw.setdefault("reaper_interval", None)
        q = aurora_log.open(pg_server.dsn, schema=pg_schema, **kw)
        opened.append(q)
        return q
    yield _open
    for q in opened:
        q.close()


def _max_running(q, ids):
    """The most jobs of ``ids`` running at once, from their history in lsn order (a claim
    counted under the key's lock comes after the ends it counted)."""
    events = []
    for i in ids:
        for t in q.history(i):
            if t.kind == "claim":
                events.append((t.lsn, 1))
            elif t.kind in ("complete", "fail", "release", "reap"):
                events.append((t.lsn, -1))
    n = top = 0
    for _lsn, d in sorted(events):
        n += d
        top = max(top, n)
    return top


def test_concurrency_limit_holds_across_processes(queues):
    first = queues()
    ids = first.enqueue_many([Job("r", {}, queue="reports") for _ in range(60)])
    first.enqueue_many([Job("other", {}, queue="other") for _ in range(20)])
    first.set_limit(queue="reports", concurrency=3)
    seen_over = []
    done = []

    def work(q):
        while True:
            j = q.claim("w")
            if j is None:
                if first.stats()["pending"] == 0:
                    return
                continue
            running = first.stats()["queues"].get("reports", {}).get("running", 0)
            if running > 3:
                seen_over.append(running)
            q.complete(j.id, j.token)
            done.append(j.id)

    workers = [queues() for _ in range(6)]
    threads = [threading.Thread(target=work, args=(q,)) for q in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(done) == 80 and len(set(done)) == 80
    assert not seen_over
    assert _max_running(first, ids) <= 3


def test_rate_limit_holds_across_processes(queues):
    first = queues(clock=lambda: 2_000_000_000.0)        # one frozen moment
    first.enqueue_many([Job("api", {}) for _ in range(30)])
    first.set_limit(job_type="api", rate=(5, 60))
    got = []

    def work(q):
        while (j := q.claim("w")) is not None:
            got.append(j.id)

    workers = [queues(clock=lambda: 2_000_000_000.0) for _ in range(5)]
    threads = [threading.Thread(target=work, args=(q,)) for q in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == 5
    assert first.stats()["pending"] == 25


def test_a_due_time_fires_once_however_many_processes_run_it(queues):
    now = 1_800_000_000.0
    qs = [queues(clock=lambda: now) for _ in range(6)]
    for q in qs:
        q.schedule_periodic("tick", "*/5 * * * *", Job("tick", {}))
    fired = []
    barrier = threading.Barrier(len(qs))

    def fire(q):
        barrier.wait()
        fired.extend(q.run_periodic())

    threads = [threading.Thread(target=fire, args=(q,)) for q in qs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(fired) == 1
    assert qs[0].stats()["total"] == 1


def test_a_child_enqueued_while_its_parent_completes_is_never_stranded(queues):
    """The parent's end and the child's enqueue race in two processes: whichever commits
    first, the child ends up claimable (never waiting for a parent that already ended)."""
    a, b = queues(), queues()
    for _ in range(60):
        parent = a.enqueue(Job("p", {}))
        j = a.claim("w", job_types="p")
        child: list[str] = []
        t1 = threading.Thread(target=a.complete, args=(j.id, j.token))
        t2 = threading.Thread(target=lambda p=parent, out=child: out.append(
            b.enqueue(Job("c", {}).after(p))))
        t1.start()
        t2.start()
        t1.join(30)
        t2.join(30)
        got = a.claim("w", job_types="c")
        assert got is not None and got.id == child[0]
        a.complete(got.id, got.token)
    assert a.stats()["control"]["waiting_for_parents"] == 0


def test_a_parent_failing_in_another_process_cancels_the_child(queues):
    a, b = queues(), queues()
    parent = a.enqueue(Job("p", {}, max_retries=0))
    child = a.enqueue(Job("c", {}).after(parent))
    j = b.claim("w")
    assert b.fail(j.id, j.token, "boom") is JobStatus.DEAD_LETTER
    got = a.get(child)
    assert got.status is JobStatus.CANCELLED and parent in got.error


def test_cli_pause_resume_and_limit_on_a_dsn(queues, pg_server, pg_schema, capsys):
    q = queues()
    q.enqueue(Job("send", {}, queue="emails"))
    base = ["--schema", pg_schema]
    assert cli.main(["pause", pg_server.dsn, "emails", *base]) == 0
    assert cli.main(["limit", pg_server.dsn, "--queue", "emails", "--concurrency", "2",
                     "--rate", "10/60", *base]) == 0
    assert q.claim("w") is None
    assert q.stats()["control"]["limits"] == [
        {"scope": "queue", "name": "emails", "concurrency": 2, "running": 0, "rate": [10, 60.0]}]
    assert cli.main(["resume", pg_server.dsn, "emails", *base]) == 0
    assert q.claim("w") is not None
