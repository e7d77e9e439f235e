"""Faults on the PostgreSQL backend.

* kill -9 of worker processes: several children (tests/test_kill9_child.py, the local
  kill -9 test's child) produce and work on one schema at once and are SIGKILLed at random
  moments; the parent's Knowledge/Tally (tests/test_kill9.py) counts lost, phantom,
  resurrected and duplicated jobs from what the children acknowledged -> all 0, and no job
  has two complete transitions in its history.
* a connection cut (pg_terminate_backend from another connection) in the middle of a claim,
  complete, fail and enqueue_many: the operation's transaction is open on the server and
  waits for a lock on the history table (fail has already locked the job row with its
  first statement); a ConnectionLostError, nothing of the
  operation applied, and the next call reconnects and goes on.
* PostgreSQL restarted under load: Worker threads and a producer keep going through a fast
  restart; every acknowledged enqueue is there and ends completed, none completed twice.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import aurora_log
from aurora_log import Job, JobStatus, Worker
from aurora_log.errors import ConnectionLostError

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from test_kill9 import CHILD, Knowledge, Tally, _read_until_dead  # noqa: E402
from test_kill9_child import payload  # noqa: E402


def _psql(dsn: str):
    import psycopg
    return psycopg.connect(dsn, autocommit=True)


def _complete_transitions(dsn: str, schema: str) -> dict[str, int]:
    with _psql(dsn) as conn:
        rows = conn.execute(f"SELECT job_id, count(*) FROM {schema}.history "
                            "WHERE kind = 'complete' GROUP BY job_id").fetchall()
    return dict(rows)


def _transitions_after_complete(dsn: str, schema: str) -> list:
    """(job id, kind) of every history entry that follows a complete (a resurrection)."""
    with _psql(dsn) as conn:
        return conn.execute(
            f"SELECT h.job_id, h.kind FROM {schema}.history h JOIN {schema}.history c "
            "ON c.job_id = h.job_id AND c.kind = 'complete' AND h.lsn > c.lsn").fetchall()


# ------------------------------------------------------------------ kill -9

def test_kill9_of_worker_processes(pg_server, pg_schema):
    dsn = pg_server.dsn
    aurora_log.open(dsn, schema=pg_schema, reaper_interval=None).close()   # migrate once
    env = dict(os.environ, AURORA_KILL9_SCHEMA=pg_schema, PYTHONPATH=os.pathsep.join(
        [str(HERE.parent)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    rng = random.Random(16)
    t, k = Tally(), Knowledge()
    start = time.monotonic()
    for c in range(6):
        procs = [subprocess.Popen([sys.executable, str(CHILD), dsn, f"{c}{n}",
                                   str(rng.randrange(1 << 30)), "sync"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
                 for n in range(3)]
        outputs: list[list[str]] = [[] for _ in procs]

        def reader(i: int, p: subprocess.Popen, outputs: list = outputs,
                   kill_after: float = 0.0) -> None:
            outputs[i] = _read_until_dead(p, 30.0, kill_after)

        readers = [threading.Thread(target=reader, args=(i, p, outputs, rng.uniform(0.2, 1.0)))
                   for i, p in enumerate(procs)]
        for r in readers:
            r.start()
        for r in readers:
            r.join()
        done_before = set(k.completed)
        for p, lines in zip(procs, outputs, strict=True):
            err = p.stderr.read().decode(errors="replace")
            p.stderr.close()
            p.stdout.close()
            if "READY" not in lines or "Traceback" in err:
                t.child_errors.append(f"cycle {c}: {err[-2000:]}")
            # the children ran at once, so a delivery in one and a complete in another have
            # no order here: deliveries are checked against earlier cycles' completes, and
            # within the cycle by the history (nothing follows a complete, below)
            for line in lines:
                if line.startswith("D ") and line.split()[1] in done_before:
                    t.resurrected.append(("delivered after complete", line.split()[1]))
            k.feed([line for line in lines if not line.startswith("D ")], t)
        _check_and_drain(dsn, pg_schema, k, t)
        t.cycles += 1
    t.seconds = time.monotonic() - start
    twice = {i: n for i, n in _complete_transitions(dsn, pg_schema).items() if n > 1}
    after = _transitions_after_complete(dsn, pg_schema)
    print(f"\n[pg kill9] {t.line()}; completed twice {len(twice)}, transitions after a "
          f"complete {len(after)}")
    assert t.ok and not twice and not after, (
        t.lost[:5], t.phantom[:5], t.resurrected[:5], t.duplicated[:5], t.child_errors[:2],
        list(twice)[:5], after[:5])
    assert t.acked_enqueues > 200 and t.acked_completes > 100


def _check_and_drain(dsn: str, schema: str, k: Knowledge, t: Tally) -> None:
    """Every child is dead: the attempts they held are reaped (as the reaper of a live
    machine would once their leases expire: this queue's clock runs an hour ahead), then
    the checks, then a drain. A killed child's backend may still be finishing its last
    statement (a claim commits without its client): wait until those backends are gone."""
    end = time.monotonic() + 30.0
    with _psql(dsn) as conn:
        while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                           "AND query LIKE %s AND pid <> pg_backend_pid()",
                           (f"%{schema}%",)).fetchone()[0]:
            assert time.monotonic() < end, "the killed children's backends did not exit"
            time.sleep(0.02)
    with aurora_log.open(dsn, schema=schema, reaper_interval=None, retry_base=0.0,
                         retry_cap=0.0, clock=lambda: time.time() + 3600) as q:
        t.recovered_running += q.reap()
        jobs = {j.id: j for j in q.list(limit=1 << 30)}
        for jid in k.enqueued:
            if jid not in jobs:
                t.lost.append(jid)
        for jid in k.completed:
            j = jobs.get(jid)
            if j is not None and j.status is not JobStatus.COMPLETED:
                t.resurrected.append((j.status.value, jid))
        for jid, j in jobs.items():
            if jid not in k.intents:
                t.phantom.append(("never issued", jid))
            elif j.payload != payload(jid):
                t.phantom.append(("payload differs", jid))
        while (j := q.claim("drain")) is not None:
            if j.id in k.completed:
                t.resurrected.append(("drained after complete", j.id))
            q.complete(j.id, j.token, {"drained": True})
            k.completed.add(j.id)
            t.drained += 1
        st = q.stats()
        assert st["pending"] == st["running"] == st["failed"] == 0, st


# ------------------------------------------------------------------ connection cut

def _blocked_backend(dsn: str, schema: str, timeout: float = 20.0) -> int:
    """The pid of the backend waiting for the lock on the history table."""
    end = time.monotonic() + timeout
    with _psql(dsn) as conn:
        while time.monotonic() < end:
            row = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE %s AND pid <> pg_backend_pid()",
                (f"%{schema}%",)).fetchone()
            if row is not None:
                return row[0]
            time.sleep(0.01)
    raise AssertionError("the operation never blocked on the history lock")


def _cut_mid(dsn: str, schema: str, operation):
    """Run ``operation`` while another transaction holds the history table locked (so the
    operation's transaction waits on the server, open), then terminate its backend.
    Returns what the operation returned or raised."""
    holder = _psql(dsn)
    try:
        holder.execute("BEGIN")
        holder.execute(f"LOCK TABLE {schema}.history IN EXCLUSIVE MODE")
        got: list[BaseException | object] = []

        def run():
            try:
                got.append(operation())
            except BaseException as e:      # noqa: BLE001 - handed to the test
                got.append(e)

        th = threading.Thread(target=run)
        th.start()
        pid = _blocked_backend(dsn, schema)
        with _psql(dsn) as killer:
            assert killer.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
        th.join(30)
        assert not th.is_alive()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    return got[0]


@pytest.fixture
def pgq(pg_server, pg_schema):
    q = aurora_log.open(pg_server.dsn, schema=pg_schema, reaper_interval=None, pool_size=2)
    yield q
    q.close()


def test_cut_mid_claim_leaves_the_job_pending_then_reconnects(pgq, pg_server, pg_schema):
    jid = pgq.enqueue(Job("t"))
    before = (pgq.get(jid), pgq.history(jid), pgq.stats())
    err = _cut_mid(pg_server.dsn, pg_schema, lambda: pgq.claim("w"))
    assert isinstance(err, ConnectionLostError), err
    assert (pgq.get(jid), pgq.history(jid), pgq.stats()) == before      # nothing half done
    j = pgq.claim("w")                                                  # reconnects
    assert j.id == jid and [t.kind for t in pgq.history(jid)] == ["enqueue", "claim"]


def test_cut_mid_complete_keeps_the_attempt_then_completes(pgq, pg_server, pg_schema):
    jid = pgq.enqueue(Job("t"))
    j = pgq.claim("w")
    before = (pgq.get(jid), pgq.history(jid), pgq.stats())
    err = _cut_mid(pg_server.dsn, pg_schema, lambda: pgq.complete(jid, j.token, {"r": 1}))
    assert isinstance(err, ConnectionLostError), err
    assert (pgq.get(jid), pgq.history(jid), pgq.stats()) == before
    assert pgq.get(jid).status is JobStatus.RUNNING and pgq.get(jid).token == j.token
    pgq.complete(jid, j.token, {"r": 1})                                # the same token holds
    assert pgq.get(jid).result == {"r": 1}
    assert [t.kind for t in pgq.history(jid)] == ["enqueue", "claim", "complete"]


def test_cut_mid_fail_keeps_the_attempt(pgq, pg_server, pg_schema):
    jid = pgq.enqueue(Job("t"))
    j = pgq.claim("w")
    before = (pgq.get(jid), pgq.history(jid), pgq.stats())
    err = _cut_mid(pg_server.dsn, pg_schema, lambda: pgq.fail(jid, j.token, "boom"))
    assert isinstance(err, ConnectionLostError), err
    assert (pgq.get(jid), pgq.history(jid), pgq.stats()) == before
    assert pgq.fail(jid, j.token, "boom") is JobStatus.FAILED


def test_cut_mid_enqueue_many_adds_none(pgq, pg_server, pg_schema):
    pgq.enqueue(Job("t"))
    before = pgq.stats()
    jobs = [Job("t", {"i": i}) for i in range(50)]
    err = _cut_mid(pg_server.dsn, pg_schema, lambda: pgq.enqueue_many(jobs))
    assert isinstance(err, ConnectionLostError), err
    assert pgq.stats() == before and all(pgq.get(j.id) is None for j in jobs)
    assert pgq.enqueue_many(jobs) == [j.id for j in jobs]


# ------------------------------------------------------------------ server restart

def test_postgres_restarted_under_load(pg_server, pg_schema):
    dsn = pg_server.dsn
    q = aurora_log.open(dsn, schema=pg_schema, reaper_interval=0.2, pool_size=8)
    runs: dict[str, int] = {}
    runs_lock = threading.Lock()

    def handler(job):
        with runs_lock:
            runs[job.id] = runs.get(job.id, 0) + 1

    q.register_handler("load", handler)
    acked: list[str] = []
    stop = threading.Event()
    producer_errors: list[str] = []

    def producer():
        n = 0
        while not stop.is_set():
            job = Job("load", {"n": n}, lease_duration=2, id=f"load-{n}")
            while True:          # retry the same id until it is acknowledged
                try:
                    q.enqueue(job)
                    break
                except ConnectionLostError:
                    time.sleep(0.05)
                except ValueError as e:     # the lost reply's commit did happen
                    if "already exists" not in str(e):
                        producer_errors.append(str(e))
                    break
            acked.append(job.id)
            n += 1
            time.sleep(0.002)

    worker = Worker(q, concurrency=4, poll_interval=0.2).start()
    pt = threading.Thread(target=producer)
    pt.start()
    time.sleep(1.0)
    before_restart = len(acked)
    pg_server.restart(pause=0.5)
    time.sleep(1.5)
    stop.set()
    pt.join(60)
    after_restart = len(acked) - before_restart
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                st = q.stats()
            except ConnectionLostError:
                continue
            if st["completed"] >= len(acked) and st["pending"] == st["running"] == 0:
                break
            time.sleep(0.1)
        jobs = {j.id: j for j in q.list(limit=1 << 30)}
    finally:
        worker.stop(timeout=10)
        q.close()
    lost = [i for i in acked if i not in jobs]
    unfinished = [i for i in acked if i in jobs and jobs[i].status is not JobStatus.COMPLETED]
    twice = {i: n for i, n in _complete_transitions(dsn, pg_schema).items() if n > 1}
    print(f"\n[pg restart] {len(acked)} acknowledged enqueues ({after_restart} after the "
          f"restart), lost {len(lost)}, unfinished {len(unfinished)}, completed twice "
          f"{len(twice)}, handler re-runs {sum(n - 1 for n in runs.values())}")
    assert not producer_errors, producer_errors[:3]
    assert after_restart > 0, "the producer did not go on after the restart"
    assert not lost and not unfinished and not twice, (lost[:5], unfinished[:5], list(twice)[:5])


def test_an_operation_that_meets_the_closed_pool_raises_closed_error(pgq):
    """close() closes the pool under operations still running in other threads: they end
    with ClosedError (what the Worker stops on), not the pool's own exception."""
    from aurora_log.errors import ClosedError
    pgq._pool.close()                      # as close() does, while this call is on its way
    with pytest.raises(ClosedError):
        pgq.get("x")
    with pytest.raises(ClosedError):
        pgq.claim("w")


# ------------------------------------------------------------------ the pool's check

def test_sessions_ended_while_idle_are_replaced_before_use(pgq, pg_server, pg_schema):
    """The server ends every idle pooled session (as a restart or an admin does): the next
    operations see nothing of it, the pool's check swaps the dead connections out."""
    pgq.enqueue(Job("t"))
    with _psql(pg_server.dsn) as admin:
        pids = [r[0] for r in admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = '' AND "
            "pid <> pg_backend_pid() AND datname = current_database() AND state = 'idle'"
        ).fetchall()]
        assert pids
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
    for i in range(4):                   # more than the pool holds: every connection used
        pgq.enqueue(Job("t", {"i": i}))
    assert pgq.stats()["pending"] == 5


def test_the_check_of_a_quiet_connection_costs_no_round_trip(pgq):
    """Handing out a live idle connection sends nothing to the server."""
    from aurora_log.postgres.connection import check_quiet
    with pgq._pool.connection() as conn:
        sent = []
        real = conn.execute
        conn.execute = lambda *a, **k: sent.append(a) or real(*a, **k)   # type: ignore
        check_quiet(conn)
        assert sent == []
        conn.close()
        import psycopg
        with pytest.raises(psycopg.OperationalError):
            check_quiet(conn)
