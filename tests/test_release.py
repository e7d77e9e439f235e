"""Queue.release(job_id, token): a claimed job handed back to pending without spending an
attempt, fenced by its token, recorded as its own transition ("release", record type 12),
replayed and snapshotted like any other; and the worker's use of it on shutdown."""

import threading
import time

import pytest

import aurora_log
from aurora_log import Job, JobStatus, Worker
from aurora_log.runtime import tasks
from aurora_log.errors import StaleLeaseError


def _open(path, **kw):
    kw.setdefault("reaper_interval", None)
    kw.setdefault("auto_compact", False)
    return aurora_log.open(path, segment_bytes=1 << 20, **kw)


def test_release_returns_the_job_without_spending_an_attempt(store_dir):
    with _open(store_dir) as q:
        jid = q.enqueue(Job.new("t").with_max_retries(0))
        first = q.claim("w1")
        assert q.release(jid, first.token) == JobStatus.PENDING
        job = q.get(jid)
        assert job.status == JobStatus.PENDING and job.retry_count == 0
        second = q.claim("w2")                     # claimable again at once
        assert second.id == jid
        # max_retries=0: the only attempt is still there, so this failure dead-letters
        # only now, and history shows attempt 1 twice (the first was handed back)
        assert q.fail(jid, second.token, "boom") == JobStatus.DEAD_LETTER
        hist = q.history(jid)
        assert [t.kind for t in hist] == ["enqueue", "claim", "release", "claim", "fail"]
        rel = hist[2]
        assert rel.status == JobStatus.PENDING and rel.worker == "w1" and rel.attempt == 1
        assert hist[3].attempt == 1


def test_release_is_fenced_by_the_token(store_dir):
    with _open(store_dir) as q:
        jid = q.enqueue(Job.new("t"))
        claimed = q.claim("w1")
        with pytest.raises(StaleLeaseError):
            q.release(jid, "0" * 16)
        assert q.get(jid).status == JobStatus.RUNNING
        q.release(jid, claimed.token)
        with pytest.raises(StaleLeaseError):        # the old token is spent
            q.release(jid, claimed.token)
        with pytest.raises(StaleLeaseError):
            q.complete(jid, claimed.token)
        again = q.claim("w2")
        with pytest.raises(StaleLeaseError):        # the old attempt cannot undo the new
            q.release(jid, claimed.token)
        q.complete(jid, again.token)
        with pytest.raises(StaleLeaseError):
            q.release(jid, again.token)


def test_release_of_a_job_with_a_cancel_requested_cancels_it(store_dir):
    with _open(store_dir) as q:
        jid = q.enqueue(Job.new("t"))
        claimed = q.claim("w1")
        assert q.cancel(jid) == JobStatus.RUNNING
        assert q.release(jid, claimed.token) == JobStatus.CANCELLED
        assert q.get(jid).status == JobStatus.CANCELLED


@pytest.mark.parametrize("compact", [False, True])
def test_replay_after_reopen_equals_the_live_state(store_dir, compact):
    # exclusive=True: the fingerprints compared across the reopen hold the last LSN,
    # which the default mode's ATTACH/DETACH records move
    with _open(store_dir, exclusive=True) as q:
        ids = [q.enqueue(Job.new("t").add_field("i", i)) for i in range(6)]
        tokens = {}
        for _ in range(4):
            j = q.claim("w")
            tokens[j.id] = j.token
        released = list(tokens)[:3]
        for jid in released:
            q.release(jid, tokens[jid])
        q.cancel(list(tokens)[3])                     # a cancel request on a running job
        q.release(list(tokens)[3], tokens[list(tokens)[3]])
        j = q.claim("w")
        q.complete(j.id, j.token)
        if compact:
            q.compact()
        live = q._state.fingerprint()
        assert ids
    with _open(store_dir, read_only=True) as q:
        assert q._state.fingerprint() == live
    with _open(store_dir, exclusive=True) as q:
        assert q.recovered == 0                       # nothing was left running
        assert q._state.fingerprint() == live


# ------------------------------------------------------------------ the worker

class _StopAfterClaim:
    """A queue whose claim() asks the worker to stop right after it claimed a job, so the
    worker holds a job whose handler has not started while it is stopping."""

    def __init__(self, q):
        self._q = q
        self.worker = None

    def claim(self, *a, **kw):
        job = self._q.claim(*a, **kw)
        if job is not None:
            self.worker.request_stop()
        return job

    def __getattr__(self, name):
        return getattr(self._q, name)


def test_a_worker_hands_back_a_job_it_claimed_but_did_not_start(store_dir):
    started = []
    with _open(store_dir) as q:
        jid = q.enqueue(Job.new("never"))
        proxy = _StopAfterClaim(q)
        tasks.register_handler(q, "never", lambda job: started.append(job.id))
        w = Worker(proxy, concurrency=1, poll_interval=0.05, registry=tasks.registry(q))
        proxy.worker = w
        w.start()
        deadline = time.monotonic() + 10
        while q.get(jid).status != JobStatus.PENDING or len(q.history(jid)) < 3:
            assert time.monotonic() < deadline, q.history(jid)
            time.sleep(0.02)
        assert w.stop(timeout=3) == 0
        assert started == []
        job = q.get(jid)
        assert job.status == JobStatus.PENDING and job.retry_count == 0
        assert [t.kind for t in q.history(jid)] == ["enqueue", "claim", "release"]


def test_a_cold_stop_releases_the_jobs_it_cut_off(store_dir):
    gate = threading.Event()
    running = threading.Event()

    def slow(job):
        running.set()
        gate.wait(10)

    with _open(store_dir) as q:
        jid = q.enqueue(Job.new("slow").with_max_retries(0))
        tasks.register_handler(q, "slow", slow)
        w = Worker(q, concurrency=1, poll_interval=0.05, shutdown_timeout=0.2)
        w.start()
        assert running.wait(10)
        assert w.stop(timeout=0.2) == 1              # forced: the handler was cut off
        gate.set()
        job = q.get(jid)
        assert job.status == JobStatus.PENDING and job.retry_count == 0
        assert [t.kind for t in q.history(jid)][-1] == "release"
    with _open(store_dir) as q:                     # nothing for recovery to charge
        assert q.recovered == 0
        assert q.get(jid).status == JobStatus.PENDING
