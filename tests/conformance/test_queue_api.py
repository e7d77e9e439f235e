"""The queue API's behaviour, run against every backend (see conftest.py here): the seed's
tests ported to the queue, and one test per failure mode.

A fake clock drives time (``open(..., clock=clock)``) and the reaper thread is off
(``reaper_interval=None``) unless a test is about the thread; no timed assertions.
Engine-internal tests of the local store stay in tests/test_queue.py.
"""

import itertools
import threading
from datetime import UTC, datetime, timedelta

import pytest
from backend_probe import parked

from aurora_log.errors import (
    ClosedError,
    InvalidStateError,
    JobNotFoundError,
    StaleLeaseError,
)
from aurora_log.job import Job, JobPriority, JobStatus, to_ms


def job(job_type="t", **kw):
    return Job(job_type, **kw)


def test_context_manager_closes_and_the_store_persists(opener):
    with opener() as q:
        q.enqueue(job())
    assert q.closed
    with opener() as q:
        assert q.stats()["pending"] == 1


# ------------------------------------------------------------------ seed parity on the queue

def test_persistence_across_reopen(opener, clock):
    q = opener()
    j = (Job.new("send_email").add_field("to", "a@b.c").add_field("n", [1, 2.5, None])
         .with_priority(JobPriority.HIGH).with_max_retries(5).with_timeout(600)
         .schedule_at(clock.now + timedelta(hours=1)).with_queue("mail").with_unique_key("u"))
    assert q.enqueue(j) == j.id
    before = q.get(j.id)
    q.close()
    q2 = opener()
    after = q2.get(j.id)
    assert after == before
    assert (after.payload, after.priority, after.max_retries, after.timeout_seconds,
            after.scheduled_at, after.queue, after.unique_key, after.created_at) == \
        (j.payload, j.priority, 5, 600, j.scheduled_at, "mail", "u", j.created_at)


def test_durable_sync_mode_persists_every_acknowledged_enqueue(opener):
    q = opener(durability="sync")
    ids = [q.enqueue(job(payload={"i": i})) for i in range(20)]
    ids += q.enqueue_many([job(payload={"i": i}) for i in range(20, 40)])
    q.close()
    q2 = opener(durability="sync")
    assert [q2.get(i).payload["i"] for i in ids] == list(range(40))


def test_priority_order_critical_high_normal_low(q):
    for p in (JobPriority.LOW, JobPriority.CRITICAL, JobPriority.NORMAL, JobPriority.HIGH):
        q.enqueue(job(priority=p))
    got = [q.claim("w").priority for _ in range(4)]
    assert got == [JobPriority.CRITICAL, JobPriority.HIGH, JobPriority.NORMAL, JobPriority.LOW]


def test_fifo_within_a_priority(q):
    ids = [q.enqueue(job()) for _ in range(5)]
    assert [q.claim("w").id for _ in range(5)] == ids


def test_claim_sets_running_token_and_lease(q, clock):
    jid = q.enqueue(job(lease_duration=30))
    j = q.claim("worker-7")
    assert j.id == jid and j.status is JobStatus.RUNNING and j.worker_id == "worker-7"
    assert len(j.token) == 16 and j.lease_deadline == clock.now + timedelta(seconds=30)
    assert j.started_at == clock.now and j.last_heartbeat == clock.now
    assert q.claim("w") is None


def test_claim_filters_by_job_type_and_queue(q):
    a = q.enqueue(job("a"))
    b = q.enqueue(job("b", queue="other", priority=JobPriority.CRITICAL))
    assert q.claim("w", job_types=["a"]).id == a
    assert q.claim("w", queues="default") is None
    assert q.claim("w", queues=["other"], job_types={"b"}).id == b


def test_heartbeat_expiry_returns_job_to_pending_with_an_attempt_counted(q, clock):
    jid = q.enqueue(job(lease_duration=10))
    q.claim("w")
    clock.advance(10.001)
    assert q.reap() == 1
    got = q.get(jid)
    assert got.status is JobStatus.PENDING and got.retry_count == 1
    assert got.error == "lease expired" and got.token is None
    assert got.scheduled_at == clock.now + timedelta(seconds=5)  # backoff 5 s * 2**0
    assert q.history(jid)[-1].error == "lease expired"


@pytest.mark.parametrize("delta_ms, reaped", [(-1, 0), (0, 0), (1, 1)])
def test_lease_edge(q, clock, delta_ms, reaped):
    q.enqueue(job(lease_duration=10))
    j = q.claim("w")
    at = to_ms(j.lease_deadline) + delta_ms
    assert q.reap(now=at / 1000) == reaped


def test_heartbeat_extends_the_lease(q, clock):
    jid = q.enqueue(job(lease_duration=10))
    j = q.claim("w")
    clock.advance(9)
    assert q.heartbeat(jid, j.token) is False
    assert q.get(jid).lease_deadline == clock.now + timedelta(seconds=10)
    clock.advance(9)
    assert q.reap() == 0
    clock.advance(1.001)
    assert q.reap() == 1


def test_timeout_reaps_a_heartbeating_job_with_reason_timeout(q, clock):
    jid = q.enqueue(job(lease_duration=10, timeout_seconds=15))
    j = q.claim("w")
    for _ in range(3):
        clock.advance(5)
        q.heartbeat(jid, j.token)
    clock.advance(0.001)
    assert q.reap() == 1
    assert q.get(jid).error == "timeout" and q.get(jid).status is JobStatus.PENDING


def test_long_job_with_heartbeats_is_not_reaped(q, clock):
    jid = q.enqueue(job(lease_duration=10, timeout_seconds=None))
    j = q.claim("w")
    for _ in range(100):
        clock.advance(9)
        q.heartbeat(jid, j.token)
        assert q.reap() == 0
    q.complete(jid, j.token)
    assert q.get(jid).status is JobStatus.COMPLETED


# ------------------------------------------------------------------ fencing

def test_stale_token_after_reap_late_complete_is_rejected(q, clock):
    jid = q.enqueue(job(lease_duration=10))
    j = q.claim("w")
    clock.advance(11)
    q.reap()
    lsn = q.stats()["last_lsn"]
    for call in (lambda: q.complete(jid, j.token), lambda: q.fail(jid, j.token, "x"),
                 lambda: q.heartbeat(jid, j.token), lambda: q.progress(jid, j.token, 0.5)):
        with pytest.raises(StaleLeaseError):
            call()
    assert q.stats()["last_lsn"] == lsn and q.get(jid).status is JobStatus.PENDING


def test_stale_token_after_reclaim(q, clock):
    jid = q.enqueue(job(lease_duration=10))
    old = q.claim("w1")
    clock.advance(11)
    q.reap()
    clock.advance(5)
    new = q.claim("w2")
    assert new.id == jid and new.token != old.token and new.retry_count == 1
    with pytest.raises(StaleLeaseError):
        q.complete(jid, old.token)
    q.complete(jid, new.token, {"ok": True})
    assert q.get(jid).result == {"ok": True}


def test_complete_twice_is_stale(q):
    jid = q.enqueue(job())
    j = q.claim("w")
    q.complete(jid, j.token)
    with pytest.raises(StaleLeaseError):
        q.complete(jid, j.token)
    assert q.get(jid).status is JobStatus.COMPLETED


def test_unknown_job_id(q):
    with pytest.raises(JobNotFoundError):
        q.complete("nope", "00" * 8)
    with pytest.raises(JobNotFoundError):
        q.cancel("nope")
    with pytest.raises(JobNotFoundError):
        q.history("nope")
    assert q.get("nope") is None


# ------------------------------------------------------------------ retries

def test_last_retry_goes_to_dead_letter_exactly_once(q, clock):
    jid = q.enqueue(job(max_retries=2))
    outcomes = []
    for _ in range(3):
        clock.advance(3600)
        j = q.claim("w")
        outcomes.append(q.fail(jid, j.token, "boom"))
    assert outcomes == [JobStatus.FAILED, JobStatus.FAILED, JobStatus.DEAD_LETTER]
    clock.advance(10**6)
    assert q.claim("w") is None
    kinds = [(t.kind, t.status) for t in q.history(jid)]
    assert kinds.count(("fail", JobStatus.DEAD_LETTER)) == 1
    assert q.get(jid).retry_count == 2 and q.stats()["dead_letter"] == 1


def test_max_retries_zero_goes_straight_to_dead_letter(q):
    jid = q.enqueue(job(max_retries=0))
    j = q.claim("w")
    assert q.fail(jid, j.token, "x") is JobStatus.DEAD_LETTER


def test_retry_waits_for_the_backoff(q, clock):
    jid = q.enqueue(job())
    j = q.claim("w")
    assert q.fail(jid, j.token, "boom") is JobStatus.FAILED
    clock.advance(4.999)
    assert q.claim("w") is None
    clock.advance(0.001)
    assert q.claim("w").id == jid
    j = q.get(jid)
    assert j.retry_count == 1 and j.error == "boom"


def test_backoff_doubles(q, clock):
    jid = q.enqueue(job(max_retries=4))
    delays = []
    for _ in range(4):
        j = q.claim("w")
        q.fail(jid, j.token, "x")
        due = q.get(jid).scheduled_at
        delays.append((due - clock.now).total_seconds())
        clock.t = to_ms(due) / 1000
    assert delays == [5, 10, 20, 40]


def test_reaper_dead_letters_when_retries_are_spent(q, clock):
    jid = q.enqueue(job(max_retries=0, lease_duration=1))
    q.claim("w")
    clock.advance(2)
    assert q.reap() == 1
    assert q.get(jid).status is JobStatus.DEAD_LETTER


def test_reaper_never_touches_a_finished_job(q, clock):
    jid = q.enqueue(job(lease_duration=1))
    j = q.claim("w")
    q.complete(jid, j.token)
    clock.advance(100)
    lsn = q.stats()["last_lsn"]
    assert q.reap() == 0 and q.stats()["last_lsn"] == lsn
    assert q.get(jid).status is JobStatus.COMPLETED


def test_retry_dead_redrives(q, clock):
    jid = q.enqueue(job(max_retries=0))
    j = q.claim("w")
    q.fail(jid, j.token, "x")
    q.retry_dead(jid)
    j = q.get(jid)
    assert j.status is JobStatus.PENDING and j.retry_count == 0
    assert q.claim("w").id == jid
    with pytest.raises(InvalidStateError):
        q.retry_dead(jid)


# ------------------------------------------------------------------ crash recovery

def test_scheduled_job_runs_when_due_and_not_before(q, clock):
    jid = q.enqueue(job().schedule_at(clock.now + timedelta(seconds=60)))
    assert q.get(jid).should_run(clock.now) is False
    clock.advance(59.999)
    assert q.claim("w") is None
    clock.advance(0.001)
    assert q.claim("w").id == jid


def test_scheduled_job_survives_reopen(opener, clock):
    q = opener()
    jid = q.enqueue(job().schedule_at(clock.now + timedelta(seconds=60)))
    q.close()
    q = opener()
    assert q.claim("w") is None
    clock.advance(60)
    assert q.claim("w").id == jid


# ------------------------------------------------------------------ unique jobs

def test_unique_key_returns_the_live_job(q):
    a = q.enqueue(job(unique_key="report-1"))
    assert q.enqueue(job(unique_key="report-1")) == a
    assert q.enqueue_many([job(unique_key="report-2"), job(unique_key="report-2")]) == \
        [q.list()[1].id] * 2
    assert q.stats()["total"] == 2
    j = q.claim("w")
    assert q.enqueue(job(unique_key="report-1")) == a     # running is live
    q.complete(a, j.token)
    b = q.enqueue(job(unique_key="report-1"))             # finished: a new job
    assert b != a


def test_duplicate_job_id_is_rejected(q):
    j = job()
    q.enqueue(j)
    lsn = q.stats()["last_lsn"]
    with pytest.raises(ValueError, match="already exists"):
        q.enqueue(j)
    with pytest.raises(ValueError):
        q.enqueue_many([job(id="x"), job(id="x")])
    assert q.stats()["last_lsn"] == lsn


# ------------------------------------------------------------------ cancel

def test_cancel_pending_scheduled_and_failed(q, clock):
    a = q.enqueue(job())
    b = q.enqueue(job().schedule_at(clock.now + timedelta(hours=1)))
    c = q.enqueue(job(priority=JobPriority.CRITICAL))
    jc = q.claim("w")
    q.fail(c, jc.token, "x")
    assert [q.cancel(i) for i in (a, b, c)] == [JobStatus.CANCELLED] * 3
    clock.advance(10**5)
    assert q.claim("w") is None
    with pytest.raises(InvalidStateError):
        q.cancel(a)


def test_cancel_running_requests_and_fail_ends_cancelled(q):
    jid = q.enqueue(job())
    j = q.claim("w")
    assert q.cancel(jid) is JobStatus.RUNNING
    assert q.cancel(jid) is JobStatus.RUNNING            # idempotent, no second record
    assert q.heartbeat(jid, j.token) is True
    assert q.get(jid).cancel_requested
    assert q.fail(jid, j.token, "cancelled by request") is JobStatus.CANCELLED


def test_cancel_requested_job_whose_lease_expires_ends_cancelled(q, clock):
    jid = q.enqueue(job(lease_duration=1))
    q.claim("w")
    q.cancel(jid)
    clock.advance(2)
    q.reap()
    assert q.get(jid).status is JobStatus.CANCELLED


# ------------------------------------------------------------------ bad input before writing

def _bad_cases(q, clock):
    q.enqueue(job(id="known"))
    r = q.claim("w")
    tok = r.token
    mutated = job()
    mutated.payload = {"a": {1: 2}}
    nan = job()
    nan.payload = {"a": float("nan")}
    naive = job()
    naive.scheduled_at = datetime(2030, 1, 1)
    running = job()
    running.status = JobStatus.RUNNING
    return [
        (ValueError, lambda: q.enqueue(job(payload={"x": "y" * 2000}))),   # over the limit
        (TypeError, lambda: q.enqueue(mutated)),
        (ValueError, lambda: q.enqueue(nan)),
        (ValueError, lambda: q.enqueue(naive)),
        (ValueError, lambda: q.enqueue(running)),
        (TypeError, lambda: q.enqueue({"job_type": "t"})),
        (TypeError, lambda: q.enqueue_many(job())),
        (ValueError, lambda: q.enqueue_many([job(), nan])),                  # all or none
        (ValueError, lambda: q.claim("")),
        (ValueError, lambda: q.claim("w\x00")),
        (ValueError, lambda: q.claim("w", queues=["../x"])),
        (ValueError, lambda: q.claim("w", wait=-1)),
        (ValueError, lambda: q.heartbeat("known", "zz")),
        (TypeError, lambda: q.heartbeat("known", 123)),
        (ValueError, lambda: q.progress("known", tok, 1.5)),
        (TypeError, lambda: q.progress("known", tok, "half")),
        (TypeError, lambda: q.fail("known", tok, ValueError("x"))),
        (TypeError, lambda: q.complete("known", tok, result={1, 2})),
        (ValueError, lambda: q.complete("known", tok, result="r" * 5000)),
        (TypeError, lambda: q.get(5)),
        (ValueError, lambda: q.purge(status="pending")),
    ]


def test_each_bad_input_raises_before_writing(opener, clock):
    q = opener(max_payload_bytes=1024)
    cases = _bad_cases(q, clock)
    for exc, call in cases:
        lsn, stats = q.stats()["last_lsn"], q.stats()
        with pytest.raises(exc):
            call()
        assert (q.stats()["last_lsn"], q.stats()) == (lsn, stats)
    assert len(cases) >= 20


@pytest.mark.parametrize("option, value, exc", [
    ("max_payload_bytes", 0, ValueError), ("max_payload_bytes", True, ValueError),
    ("max_payload_bytes", 1.5, ValueError), ("reaper_interval", -1, ValueError),
    ("reaper_interval", "1", TypeError), ("retry_base", -1.0, ValueError),
    ("retry_jitter", 2.0, ValueError), ("clock", 1_800_000_000.0, TypeError),
])
def test_each_bad_open_option_raises_before_opening(opener, option, value, exc):
    q = opener()                        # the store exists, with a job in it
    jid = q.enqueue(job())
    q.close()
    with pytest.raises(exc):
        opener(**{option: value})
    again = opener()
    assert again.get(jid) is not None and again.stats()["total"] == 1


def test_untrusted_payload_bytes_are_inert(q):
    bomb = "cos\nsystem\n(S'echo pwned'\ntR."
    jid = q.enqueue(job(payload={"data": bomb, "raw": "\x80\x04\x95"}))
    assert q.get(jid).payload == {"data": bomb, "raw": "\x80\x04\x95"}


# ------------------------------------------------------------------ lifecycle

def test_closed_queue_raises(opener):
    q = opener()
    q.close()
    q.close()   # idempotent
    with pytest.raises(ClosedError):
        q.enqueue(job())
    with pytest.raises(ClosedError):
        q.get("x")
    with pytest.raises(ClosedError):
        q.claim("w", wait=1)


# ------------------------------------------------------------------ reads

def test_list_pages_and_filters(q):
    ids = [q.enqueue(job("a" if i % 2 else "b", queue="q1" if i < 6 else "q2")) for i in range(10)]
    assert [j.id for j in q.list(limit=4)] == ids[:4]
    assert [j.id for j in q.list(limit=4, after=ids[3])] == ids[4:8]
    assert [j.id for j in q.list(job_type="a", queue="q1")] == [ids[1], ids[3], ids[5]]
    q.claim("w")
    assert [j.id for j in q.list(status="running")] == [ids[0]]
    assert q.list(status=JobStatus.PENDING, limit=0) == []


def test_stats_per_status_and_queue(q):
    q.enqueue(job(queue="a"))
    q.enqueue(job(queue="b"))
    q.enqueue(job(queue="b"))
    j = q.claim("w", queues=["a"])
    q.complete(j.id, j.token)
    s = q.stats()
    assert (s["pending"], s["completed"], s["total"]) == (2, 1, 3)
    assert s["queues"]["a"]["completed"] == 1 and s["queues"]["b"]["pending"] == 2


def test_history_records_every_transition(q, clock):
    jid = q.enqueue(job())
    j = q.claim("w1")
    q.progress(jid, j.token, 0.5, "half")
    assert q.get(jid).progress == 0.5 and q.get(jid).progress_message == "half"
    q.fail(jid, j.token, "boom")
    clock.advance(5)
    j = q.claim("w2")
    q.complete(jid, j.token, 42)
    h = q.history(jid)
    assert [(t.kind, t.worker, t.attempt, t.error) for t in h] == [
        ("enqueue", None, 1, None), ("claim", "w1", 1, None), ("progress", "w1", 1, "50% half"),
        ("fail", "w1", 1, "boom"), ("claim", "w2", 2, None), ("complete", "w2", 2, None)]
    assert all(a.lsn < b.lsn for a, b in itertools.pairwise(h))


def test_history_keeps_the_latest_progress_of_an_attempt(opener, clock):
    q = opener()
    jid = q.enqueue(job())
    j = q.claim("w1")
    for i in range(1, 101):                       # a chatty handler: 100 reports
        q.progress(jid, j.token, i / 100, f"step {i}")
    assert [(t.kind, t.error) for t in q.history(jid)] == [
        ("enqueue", None), ("claim", None), ("progress", "100% step 100")]
    q.heartbeat(jid, j.token)                     # heartbeats are not history entries
    q.progress(jid, j.token, 1.0)
    assert [(t.kind, t.error) for t in q.history(jid)] == [
        ("enqueue", None), ("claim", None), ("progress", "100%")]
    q.complete(jid, j.token)
    q.close()
    q = opener()                                  # replayed from the log: the same history
    assert [(t.kind, t.error) for t in q.history(jid)] == [
        ("enqueue", None), ("claim", None), ("progress", "100%"), ("complete", None)]


def test_purge_finished(q, clock):
    jid = q.enqueue(job())
    other = q.enqueue(job())
    j = q.claim("w")
    q.complete(jid, j.token)
    clock.advance(10)
    assert q.purge(older_than=60) == 0
    assert q.purge() == 1
    assert q.get(jid) is None and q.get(other) is not None


# ------------------------------------------------------------------ threads

def test_blocked_claim_is_woken_by_an_enqueue(opener):
    q = opener(clock=__import__("time").time)
    got = []
    t = threading.Thread(target=lambda: got.append(q.claim("w", wait=30)))
    t.start()
    jid = q.enqueue(job())
    t.join()
    assert got[0] is not None and got[0].id == jid


def test_blocked_claim_is_woken_by_a_scheduled_time(opener):
    import time
    q = opener(clock=time.time)
    jid = q.enqueue(job().schedule_at(datetime.now(UTC) + timedelta(milliseconds=200)))
    j = q.claim("w", wait=30)
    assert j is not None and j.id == jid


def test_blocked_claim_returns_none_on_close(opener):
    q = opener(clock=__import__("time").time)
    got = []
    t = threading.Thread(target=lambda: got.append(q.claim("w", wait=30)))
    t.start()
    while not parked(q):               # the claim is parked, waiting
        threading.Event().wait(0.001)
    q.close()
    t.join()
    assert got == [None]


def test_claim_wait_zero_and_timeout_return_none(q):
    assert q.claim("w", wait=0) is None
    assert q.claim("w", wait=0.01) is None


def test_many_threads_each_job_completed_exactly_once(opener):
    q = opener(durability="sync")
    n = 300
    q.enqueue_many([job(payload={"i": i}) for i in range(n)])
    done = []
    lock = threading.Lock()

    def worker(name):
        while True:
            j = q.claim(name)
            if j is None:
                return
            q.complete(j.id, j.token)
            with lock:
                done.append(j.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(done) == n == len(set(done))
    assert q.stats()["completed"] == n


def test_reaper_thread_reaps_in_the_background(opener, clock):
    q = opener(reaper_interval=0.01)
    jid = q.enqueue(job(lease_duration=1))
    q.claim("w")
    clock.advance(2)
    for _ in range(5000):                  # bounded wait for the thread, not a timing check
        if q.get(jid).status is JobStatus.PENDING:
            break
        threading.Event().wait(0.002)
    assert q.get(jid).status is JobStatus.PENDING and q.get(jid).error == "lease expired"




def test_durable_false_calls_are_applied(q):
    jid = q.enqueue(job(), durable=False)
    ids = q.enqueue_many([job(), job(unique_key="k")], durable=False)
    j = q.claim("w")
    q.complete(j.id, j.token, {"r": 1}, durable=False)
    j2 = q.claim("w")
    assert q.fail(j2.id, j2.token, "x", durable=False) is JobStatus.FAILED
    q.flush()
    assert q.get(jid).status is JobStatus.COMPLETED and q.get(ids[0]).status is JobStatus.FAILED
    assert q.get(ids[1]).unique_key == "k"


def test_concurrent_enqueues_of_one_unique_key_make_one_live_job(opener, backend):
    q = opener()
    # PostgreSQL: two queue objects, as two machines; a local store is one process's: share it
    qs = [q, opener()] if backend == "postgres" else [q, q]
    got, errors = [], []
    barrier = threading.Barrier(8)

    def enqueue(i):
        try:
            barrier.wait()
            got.append(qs[i % 2].enqueue_many([job(unique_key="report"), job()])[0]
                       if i % 3 == 0 else qs[i % 2].enqueue(job(unique_key="report")))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=enqueue, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(got)) == 1
    assert [j.id for j in qs[0].list() if j.unique_key == "report"] == got[:1]


# ------------------------------------------------------------------ release

def test_release_hands_the_job_back_without_spending_an_attempt(q, clock):
    jid = q.enqueue(job(max_retries=1))
    j = q.claim("w1")
    clock.advance(5)
    assert q.release(jid, j.token) is JobStatus.PENDING
    got = q.get(jid)
    assert (got.status, got.retry_count) == (JobStatus.PENDING, 0)
    assert got.scheduled_at == datetime.fromtimestamp(clock(), UTC)     # due again now
    assert [t.kind for t in q.history(jid)] == ["enqueue", "claim", "release"]
    with pytest.raises(StaleLeaseError):
        q.complete(jid, j.token)             # the released attempt's token holds nothing
    j2 = q.claim("w2")
    assert j2.id == jid and j2.token != j.token
    q.complete(jid, j2.token)
    assert q.get(jid).status is JobStatus.COMPLETED


def test_release_with_a_stale_token_or_unknown_id_is_refused(q):
    jid = q.enqueue(job())
    j = q.claim("w1")
    q.release(jid, j.token)
    with pytest.raises(StaleLeaseError):
        q.release(jid, j.token)
    with pytest.raises(JobNotFoundError):
        q.release("no-such-job", j.token)
    assert [t.kind for t in q.history(jid)] == ["enqueue", "claim", "release"]


def test_release_of_a_job_whose_cancel_was_requested_cancels_it(q):
    jid = q.enqueue(job())
    j = q.claim("w1")
    assert q.cancel(jid) is JobStatus.RUNNING
    assert q.release(jid, j.token) is JobStatus.CANCELLED
    assert q.get(jid).status is JobStatus.CANCELLED
    assert q.claim("w2") is None
