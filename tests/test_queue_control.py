"""Queue control on the local store, engine-side: crash copies, compaction, the CLI on a
directory, verify, recovery. The API-level control tests run on every backend in
tests/conformance/test_control_api.py. A fake clock drives time, and the reaper thread
is off unless a test is about it."""


import pytest

import aurora_log
from aurora_log import chain
from aurora_log.job import Job, JobStatus
from aurora_log.tools import cli
from fakeclock import FakeClock

T0 = 1_800_000_000.0          # a multiple of 300 s: a "*/5" due time


@pytest.fixture
def clock():
    return FakeClock(T0)


@pytest.fixture
def opener(open_store, clock):
    """open_store with the fake clock and os durability by default."""
    def _open(**kw):
        kw.setdefault("clock", clock)
        kw.setdefault("durability", "os")
        return open_store(**kw)
    return _open


def _claim_all(q, **kw):
    out = []
    while (j := q.claim("w", **kw)) is not None:
        out.append(j)
    return out


# ---------------------------------------------------------------- concurrency limits

def test_limit_survives_restart_and_crash_recovery_stays_under_it(opener, store_dir):
    q = opener()
    for _ in range(6):
        q.enqueue(Job("r", {}, queue="reports"))
    q.set_limit(queue="reports", concurrency=3)
    assert len(_claim_all(q)) == 3
    q.flush()
    # kill -9: leave the files as they are, reopen a copy
    import shutil
    crash = store_dir.parent / "crash"
    shutil.copytree(store_dir, crash)
    q.close()
    q2 = aurora_log.open(crash, clock=q._clock, reaper_interval=None, durability="os")
    try:
        assert q2.recovered == 3
        assert q2.stats()["running"] == 0
        assert len(_claim_all(q2)) == 3                     # never more than 3
        assert q2.stats()["running"] == 3
    finally:
        q2.close()


# ---------------------------------------------------------------- dependencies

def test_chain_after_a_restart_with_the_child_running(opener, clock):
    """Local recovery reaps the running child on reopen; its own child still waits."""
    q = opener()
    a, b, c = Job("a", {}), Job("b", {}), Job("c", {})
    q.enqueue_many(chain(a, b, c))
    assert b.depends_on == (a.id,)
    first = q.claim("w")
    assert first.id == a.id and q.claim("w") is None
    q.complete(first.id, first.token)
    second = q.claim("w")
    assert second.id == b.id and q.claim("w") is None
    q.close()
    q = opener()         # b was running: reaped on reopen, retried after the backoff
    assert q.get(b.id).status is JobStatus.PENDING
    assert q.get(c.id).status is JobStatus.PENDING
    clock.advance(60)
    j = q.claim("w")
    assert j.id == b.id and q.claim("w") is None
    q.complete(j.id, j.token)
    assert q.claim("w").id == c.id


def test_dependencies_survive_compaction(opener):
    q = opener()
    a, b = Job("a", {}), Job("b", {})
    q.enqueue_many(chain(a, b))
    q.set_limit(queue="default", concurrency=5, rate=(10, 60))
    q.pause("elsewhere")
    q.compact()
    q.close()
    q = opener()
    assert q.claim("w").id == a.id and q.claim("w") is None
    c = q.stats()["control"]
    assert c["paused"] == ["elsewhere"] and c["limits"][0]["concurrency"] == 5


# ---------------------------------------------------------------- CLI

def test_cli_pause_resume_and_limit(store_dir, capsys):
    with aurora_log.open(store_dir, reaper_interval=None) as q:
        q.enqueue(Job("send", {}, queue="emails"))
    assert cli.main(["pause", str(store_dir), "emails"]) == 0
    assert cli.main(["limit", str(store_dir), "--queue", "emails", "--concurrency", "2",
                     "--rate", "10/60"]) == 0
    assert cli.main(["stats", str(store_dir), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"paused": ["emails"]' in out
    with aurora_log.open(store_dir, reaper_interval=None) as q:
        assert q.claim("w") is None
        assert q.stats()["control"]["limits"][0]["rate"] == [10, 60.0]
    assert cli.main(["resume", str(store_dir), "emails"]) == 0
    with aurora_log.open(store_dir, reaper_interval=None) as q:
        assert q.claim("w") is not None


# ---------------------------------------------------------------- verify

def test_verify_checks_the_control_promises(store_dir):
    """A log in which a job was claimed from a paused queue and a child before its
    parent completed (written by hand: the queue never writes one) fails verify."""
    from aurora_log.local import records as R
    from aurora_log.local.log import Log
    with aurora_log.open(store_dir, reaper_interval=None) as q:
        a = Job("a", {}, queue="p")
        b = Job("b", {}).after(a)
        q.enqueue_many([a, b])
        assert aurora_log.verify(store_dir).ok
        at = q.get(a.id).created_at
    ms = round(at.timestamp() * 1000)
    with Log.open(store_dir) as log:
        log.commit([R.encode(R.Pause("p", ms)),
                    R.encode(R.Claim(a.id, ms, b"12345678", ms + 30_000, "w")),
                    R.encode(R.Claim(b.id, ms, b"87654321", ms + 30_000, "w"))])
    rep = aurora_log.verify(store_dir)
    text = " ".join(str(p) for p in rep.problems)
    assert not rep.ok
    assert "paused queue or over a limit" in text
    assert "before its parents completed" in text


# ---------------------------------------------------------------- the other backend
