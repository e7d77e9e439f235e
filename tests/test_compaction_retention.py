"""Retention: completed/cancelled jobs past their time or count limit are purged (a logged
PURGE) by compaction; dead letters stay until purge(); purge() by status and age."""

import pytest

import aurora_log
from aurora_log import Job, JobStatus
from aurora_log.local import records as R
from aurora_log.local.log import Log
from fakeclock import FakeClock as Clock

T0 = 1_700_000_000.0




def _open(d, clock, **kw):
    kw.setdefault("auto_compact", False)
    return aurora_log.open(d, clock=clock, reaper_interval=None, durability="os",
                           segment_bytes=1 << 20, **kw)


def _finish(q, clock, kind, n, step=10.0):
    """n jobs finished as `kind`, one every `step` seconds; returns [(id, finished_at)]."""
    out = []
    for _ in range(n):
        jid = q.enqueue(Job(job_type=kind, payload={}, max_retries=0))
        clock.t += step
        if kind == "cancel":
            q.cancel(jid)
        else:
            j = q.claim("w", job_types=kind)
            assert j.id == jid
            if kind == "complete":
                q.complete(jid, j.token)
            else:
                assert q.fail(jid, j.token, "x") is JobStatus.DEAD_LETTER
        out.append((jid, clock.t))
    return out


def _purge_records(d):
    with Log.open(d, read_only=True) as lg:
        return [R.decode(rt, p) for _, rt, p in lg.scan(1) if rt == R.PURGE]


def test_time_and_count_limits_exactly(store_dir):
    # exclusive=True: compares fingerprints (with the last LSN) across a reopen, which the
    # default mode's ATTACH/DETACH records move (and its close hands RUNNING jobs back)
    clock = Clock()
    q = _open(store_dir, clock, retain_seconds=120, retain_count=5, exclusive=True)
    done = _finish(q, clock, "complete", 8) + _finish(q, clock, "cancel", 4)
    dead = _finish(q, clock, "dead", 3)
    pending = q.enqueue(Job(job_type="p", payload={}))
    clock.t += 35                      # now = last finish + 35 (+ the pending's 0)
    now = clock.t
    by_age = sorted(done, key=lambda x: x[1])
    expired = {jid for jid, t in done if round(t * 1000) < round(now * 1000) - 120_000}
    young = [x for x in by_age if x[0] not in expired]
    over = {jid for jid, _ in young[:max(0, len(young) - 5)]}
    expect_gone = expired | over
    assert expired and over           # both limits bite in this scenario
    res = q.compact()
    assert res.purged == len(expect_gone)
    for jid, _ in done:
        assert (q.get(jid) is None) == (jid in expect_gone), jid
    for jid, _ in dead:
        assert q.get(jid).status is JobStatus.DEAD_LETTER
    assert q.get(pending).status is JobStatus.PENDING
    fp = q._state.fingerprint()
    q.close()
    (p,) = _purge_records(store_dir)
    assert set(p.ids) == expect_gone and p.at_ms == round(now * 1000)
    q = _open(store_dir, clock, exclusive=True)
    assert q._state.fingerprint() == fp
    q.close()


def test_boundary_is_kept(store_dir):
    clock = Clock()
    q = _open(store_dir, clock, retain_seconds=50, retain_count=None)
    (a, ta), = _finish(q, clock, "complete", 1)
    clock.t = ta + 50                 # exactly at the limit: kept
    assert q.compact().purged == 0 and q.get(a)
    clock.t += 0.001
    assert q.compact().purged == 1 and q.get(a) is None
    q.close()


def test_unlimited_retention(store_dir):
    clock = Clock()
    q = _open(store_dir, clock, retain_seconds=None, retain_count=None)
    _finish(q, clock, "complete", 5)
    clock.t += 10**6
    assert q.compact().purged == 0 and len(q.list(status="completed")) == 5
    q.close()


def test_defaults_24h_and_100k(store_dir):
    clock = Clock()
    q = _open(store_dir, clock)
    comp = q._compactor
    assert comp.retain_ms == 24 * 3600 * 1000 and comp.retain_count == 100_000
    (a, ta), (b, tb) = _finish(q, clock, "complete", 2, step=3600)
    clock.t = ta + 24 * 3600 + 1
    q.compact()
    assert q.get(a) is None and q.get(b) is not None
    q.close()


def test_purge_by_status_and_age_then_compaction(store_dir):
    # exclusive=True: compares fingerprints (with the last LSN) across a reopen, which the
    # default mode's ATTACH/DETACH records move (and its close hands RUNNING jobs back)
    clock = Clock()
    q = _open(store_dir, clock, retain_seconds=None, retain_count=None, exclusive=True)
    dead = _finish(q, clock, "dead", 3, step=100)
    comp = _finish(q, clock, "complete", 2, step=100)
    clock.t += 50
    # dead letters older than 120 s: the first two (finished 200 s and 300 s... ago)
    n = q.purge(status="dead_letter", older_than=260)
    assert n == 2
    assert q.get(dead[0][0]) is None and q.get(dead[1][0]) is None and q.get(dead[2][0])
    assert all(q.get(j) for j, _ in comp)
    assert q.purge(status=JobStatus.COMPLETED) == 2
    with pytest.raises(ValueError):
        q.purge(status="pending")
    q.compact()
    fp = q._state.fingerprint()
    q.close()
    assert len(_purge_records(store_dir)) == 2
    q = _open(store_dir, clock, exclusive=True)
    assert q._state.fingerprint() == fp and len(q._state.jobs) == 1
    q.close()
