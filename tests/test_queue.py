"""Queue engine: the seed's tests ported to the queue, and one test per failure mode.

A fake clock drives time (``open(..., clock=clock)``) and the reaper thread is off
(``reaper_interval=None``) unless a test is about the thread; no timed assertions.
"""

import threading
from datetime import timedelta, UTC

import pytest

import aurora_log
from aurora_log.testing import faults
from aurora_log.errors import (DurabilityError, LockedError, ReadOnlyError)
from aurora_log.job import Job, JobStatus
from fakeclock import FakeClock as Clock

UTC = UTC
T0 = 1_800_000_000.0   # seconds




@pytest.fixture
def clock():
    return Clock(T0)


@pytest.fixture
def opener(open_store, clock):
    """open_store with the fake clock and os durability by default."""
    def _open(**kw):
        kw.setdefault("clock", clock)
        kw.setdefault("durability", "os")
        return open_store(**kw)
    return _open


@pytest.fixture
def q(opener):
    return opener()


def job(job_type="t", **kw):
    return Job(job_type, **kw)


# ------------------------------------------------------------------ seed parity on the queue

# ------------------------------------------------------------------ fencing

# ------------------------------------------------------------------ retries

# ------------------------------------------------------------------ crash recovery

@pytest.mark.parametrize("exclusive", [False, True])
def test_running_jobs_of_a_dead_process_return_on_one_reopen(opener, clock, exclusive):
    q = opener(exclusive=exclusive)
    jid = q.enqueue(job(max_retries=3))
    q.claim("w")
    q.close()                               # as if the process died with the job running
    q2 = opener(exclusive=exclusive)
    if exclusive:                           # the reopen recovers what the owner left
        assert q.returned_on_close == 0 and q2.recovered == 1
    else:                                   # shared: the closing process hands it back
        assert q.returned_on_close == 1 and q2.recovered == 0
    j = q2.get(jid)
    assert j.status is JobStatus.PENDING and j.retry_count == 1 and j.error == "process died"
    q2.close()
    q3 = opener(exclusive=exclusive)        # nothing left to recover
    assert q3.recovered == 0 and q3.get(jid).status is JobStatus.PENDING


def test_a_job_that_kills_its_process_ends_in_dead_letter(opener, clock):
    jid = None
    for _i in range(2):                      # max_retries=1: two attempts, both kill the process
        q = opener()
        if jid is None:
            jid = q.enqueue(job(max_retries=1))
        clock.advance(3600)
        assert q.claim("w").id == jid
        q.close()
    q = opener()
    assert q.get(jid).status is JobStatus.DEAD_LETTER
    assert [t.error for t in q.history(jid) if t.kind == "reap"] == ["process died"] * 2


# ------------------------------------------------------------------ unique jobs

# ------------------------------------------------------------------ cancel

# ------------------------------------------------------------------ bad input before writing

# ------------------------------------------------------------------ lifecycle

def test_context_manager_and_lock(opener, store_dir):
    # exclusive=True: the single-owner mode's lock (the default shares the store)
    with opener(exclusive=True) as q:
        q.enqueue(job())
        with pytest.raises(LockedError):
            aurora_log.open(store_dir)
        with pytest.raises(LockedError):
            aurora_log.open(store_dir, exclusive=True)
    with opener() as q:
        assert q.stats()["pending"] == 1
        with aurora_log.open(store_dir, reaper_interval=None) as other:   # the default
            assert other.stats()["pending"] == 1
    assert q.closed and other.closed


def test_mode_options_are_checked(store_dir):
    for bad in ({"exclusive": 1}, {"shared": "yes"}):
        with pytest.raises(TypeError):
            aurora_log.open(store_dir, **bad)
    for contradiction in ({"exclusive": True, "shared": True},
                          {"exclusive": False, "shared": False}):
        with pytest.raises(ValueError, match="contradict"):
            aurora_log.open(store_dir, **contradiction)
    assert not (store_dir / "wal").exists()          # refused before anything was created
    with aurora_log.open(store_dir, shared=False, reaper_interval=None) as q:   # = exclusive
        assert not q._shared
        with pytest.raises(LockedError, match="exclusive=True"):
            aurora_log.open(store_dir, shared=True)
    with aurora_log.open(store_dir, shared=True, reaper_interval=None) as q:    # the default
        assert q._shared


@pytest.mark.parametrize("exclusive", [False, True])
def test_read_only_refuses_writes(opener, exclusive):
    q = opener(exclusive=exclusive)
    jid = q.enqueue(job())
    q.claim("w")
    if exclusive:
        q.close()       # its RUNNING job stays for the next writable open to recover
    ro = opener(read_only=True)     # beside the shared writer, or after the exclusive one
    assert ro.get(jid).status is JobStatus.RUNNING     # no recovery in read-only mode
    with pytest.raises(ReadOnlyError):
        ro.enqueue(job())
    with pytest.raises(ReadOnlyError):
        ro.claim("w")


class _FailSyncsWhenArmed(faults.Hook):
    armed = False

    def before(self, op):
        import errno
        return errno.EIO if self.armed and op.name == "fdatasync" else None


def test_fsync_failure_raises_durability_error_and_refuses_writes(store_dir, clock):
    hook = _FailSyncsWhenArmed()
    with faults.installed(hook):
        q = aurora_log.open(store_dir, clock=clock, reaper_interval=None,
                            segment_bytes=1 << 20)
        try:
            hook.armed = True
            with pytest.raises(DurabilityError):
                q.enqueue(job())
            with pytest.raises(DurabilityError):
                q.enqueue(job())
        finally:
            try:
                q.close()
            except DurabilityError:
                pass


# ------------------------------------------------------------------ reads

# ------------------------------------------------------------------ threads

@pytest.mark.parametrize("durability", ["sync", "os"])
def test_concurrent_producers_and_workers_replay_to_the_same_state(opener, store_dir,
                                                                    durability):
    # records are appended after the state lock is released (LSNs reserved under it), so
    # they can reach the writer out of order: the log must still replay, in LSN order, to
    # exactly the state the live queue reached
    q = opener(durability=durability)
    stop = threading.Event()
    errors = []

    def producer(t):
        try:
            for i in range(60):
                if i % 10 == 9:
                    q.enqueue_many([job(payload={"t": t, "i": i, "k": k}) for k in range(3)],
                                   durable=i % 2 == 0)
                else:
                    q.enqueue(job(payload={"t": t, "i": i}).with_priority(1 + i % 4),
                              durable=i % 3 != 0)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def worker(name):
        try:
            while not stop.is_set():
                j = q.claim(name)
                if j is None:
                    continue
                q.heartbeat(j.id, j.token)
                if int(j.payload["i"]) % 7 == 0:
                    q.fail(j.id, j.token, "boom", durable=False)
                else:
                    q.complete(j.id, j.token, {"ok": name}, durable=int(j.payload["i"]) % 2 == 0)
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    producers = [threading.Thread(target=producer, args=(t,)) for t in range(6)]
    workers = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in producers + workers:
        t.start()
    for t in producers:
        t.join(60)
    stop.set()
    for t in workers:
        t.join(60)
    assert not errors
    live = {j.id: (j.status, j.retry_count, j.token, j.result) for j in q.list(limit=10**6)}
    q.close()
    q2 = opener(durability=durability)
    again = {j.id: (j.status, j.retry_count, j.token, j.result) for j in q2.list(limit=10**6)}
    assert len(live) == 6 * (54 + 6 * 3)
    assert again == live


def test_replay_twice_gives_the_same_state_and_claim_order(opener, store_dir, clock, tmp_path):
    import shutil
    q = opener()
    for i in range(40):
        j = job(priority=1 + i % 4, payload={"i": i})
        if i % 5 == 0:
            j.schedule_at(clock.now + timedelta(seconds=i))
        q.enqueue(j)
    for _ in range(6):
        c = q.claim("w")
        q.fail(c.id, c.token, "x")
    q.claim("w")                                   # left running: recovered on open
    q.close()
    orders, states = [], []
    for name in ("a", "b"):
        d = tmp_path / name
        shutil.copytree(store_dir, d)
        qq = aurora_log.open(d, clock=clock, reaper_interval=None, durability="os")
        try:
            states.append(qq._state.fingerprint())
            later = Clock(clock.t + 10**6)
            qq._clock = later
            order = []
            while (c := qq.claim("w")) is not None:
                order.append(c.id)
            orders.append(order)
        finally:
            qq.close()
    assert states[0] == states[1]
    assert orders[0] == orders[1] and len(orders[0]) == 40


@pytest.mark.parametrize("durability", ["interval", "sync"])
def test_a_compaction_capture_sees_every_job_the_one_record_paths_touch(opener, durability):
    """claim, heartbeat, progress, complete, fail and release write one record each
    (Queue._reserve_apply1): a compaction capturing meanwhile must hear of every job they
    touch, or its snapshot would miss their changes."""
    from aurora_log.local.queue import _CompactionLink
    q = opener(durability=durability, auto_compact=False)
    ids = q.enqueue_many([Job("t", {"i": i}) for i in range(4)])
    link = _CompactionLink(q)
    link.track_touched()
    a, b, c = q.claim("w"), q.claim("w"), q.claim("w")
    q.heartbeat(a.id, a.token)
    q.progress(a.id, a.token, 0.5)
    q.complete(a.id, a.token)
    q.fail(b.id, b.token, "boom")
    q.release(c.id, c.token)
    assert set(link.untrack_touched()) == {a.id, b.id, c.id}
    assert ids[3] not in (a.id, b.id, c.id)
    assert [q.get(j).status for j in (a.id, b.id, c.id)] == \
        [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.PENDING]


@pytest.mark.parametrize("exclusive", [False, True])
def test_one_fresh_job_object_enqueued_twice_is_a_duplicate(opener, exclusive):
    """A Job's drawn id lets the default mode skip the catch-up on enqueue; enqueuing the
    same object (or a copy) again must still be refused, as the exclusive mode does."""
    import copy
    q = opener(exclusive=exclusive)
    j = job()
    q.enqueue(j)
    lsn = q.stats()["last_lsn"]
    for again in (j, copy.copy(j), copy.deepcopy(j), j.copy()):
        with pytest.raises(ValueError, match="already exists"):
            q.enqueue(again)
    k = job()
    with pytest.raises(ValueError, match="already exists"):
        q.enqueue_many([k, k])
    fresh = job()
    twin = copy.copy(fresh)                  # neither enqueued yet: only one may be
    q.enqueue(fresh)
    with pytest.raises(ValueError, match="already exists"):
        q.enqueue(twin)
    assert q.stats()["last_lsn"] == lsn + 1 and q.stats()["total"] == 2
