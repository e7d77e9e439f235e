"""``copy_jobs`` into a local store rebuilds each job's state and history from the source's
history (the PostgreSQL directions are in test_cli_postgres.py, which needs a server)."""

from __future__ import annotations

import pytest

import aurora_log
from aurora_log import Job, JobStatus
from aurora_log.tools.transfer import copy_jobs


@pytest.fixture
def stores(tmp_path):
    src = aurora_log.open(tmp_path / "src", reaper_interval=None)
    dst = aurora_log.open(tmp_path / "dst", reaper_interval=None)
    yield src, dst
    src.close()
    dst.close()


def _same(src, dst, job_id):
    a, b = src.get(job_id), dst.get(job_id)
    assert b is not None
    assert (b.status, b.retry_count, b.payload) == (a.status, a.retry_count, a.payload)
    assert [(t.kind, t.at, t.status, t.worker, t.attempt) for t in dst.history(job_id)] == \
        [(t.kind, t.at, t.status, t.worker, t.attempt) for t in src.history(job_id)]


def test_a_released_job_arrives_pending_with_its_release(stores):
    src, dst = stores
    jid = src.enqueue(Job(job_type="mail", payload={"to": "a"}))
    job = src.claim("w1")
    assert src.release(jid, job.token) is JobStatus.PENDING
    report = copy_jobs(src, dst)
    assert report.copied == 1
    _same(src, dst, jid)
    assert dst.claim("w2").id == jid              # claimable again, not stuck running


def test_a_job_released_with_a_cancel_requested_arrives_cancelled(stores):
    src, dst = stores
    jid = src.enqueue(Job(job_type="mail"))
    job = src.claim("w1")
    assert src.cancel(jid) is JobStatus.RUNNING
    assert src.release(jid, job.token) is JobStatus.CANCELLED
    assert copy_jobs(src, dst, include_finished=True).copied == 1
    _same(src, dst, jid)


def test_completed_failed_and_pending_jobs_and_a_rerun_skips_them(stores):
    src, dst = stores
    done = src.enqueue(Job(job_type="mail", payload={"n": 1}))
    retry = src.enqueue(Job(job_type="mail", payload={"n": 2}))
    waiting = src.enqueue(Job(job_type="mail", payload={"n": 3}))
    j = src.claim("w1")
    src.complete(j.id, j.token, {"ok": True})
    j = src.claim("w1")
    assert src.fail(j.id, j.token, "boom") is JobStatus.FAILED
    assert copy_jobs(src, dst, include_finished=True).copied == 3
    for jid in (done, retry, waiting):
        _same(src, dst, jid)
    assert dst.get(done).result == {"ok": True}
    again = copy_jobs(src, dst, include_finished=True)
    assert (again.copied, again.skipped_existing) == (0, 3)
