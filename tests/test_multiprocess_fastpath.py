"""Shared mode's fast path (native/shm.c au_shm_append_try, SharedLog.try_append,
Queue._decide): one non-blocking C call appends, and a state-dependent record is written
only on top of the state it was decided on (docs/INTERNALS.md "The fast path", I7).

Each refusal (lock busy, tail moved, a dead holder's tail, a roll since our fd was opened)
must leave the log untouched and the locking path must then do the job."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import struct
import threading
import time

import aurora_log
from aurora_log import Job, JobStatus
from aurora_log.local.sharedlog import SharedLog
from aurora_log.local._binding import lib

CTX = mp.get_context("fork")
OPTS = dict(shared=True, reaper_interval=None, auto_compact=False)
REC = (7, b"x" * 40)          # any record type the log accepts (the log does not decode)
APPEND_WAITERS_OFF = 240      # FORMAT.md: the control page's append_waiters (u32)


def _page_u32(directory, off: int) -> int:
    with open(os.path.join(directory, "shm"), "rb") as f:
        f.seek(off)
        return struct.unpack("=I", f.read(4))[0]


def _records(log: SharedLog) -> list[tuple[int, int, bytes]]:
    return log.read_from((1, 32, 1))[0]


def _hold_lock(path, ready, release):
    log = SharedLog.open(path)
    with log.locked():
        ready.set()
        release.wait(30)
    log.close()


def _die_mid_write(path, ready):
    log = SharedLog.open(path)
    with log.locked():
        write = log.published
        seg, off = write >> 32, write & 0xFFFFFFFF
        fd = os.open(log.directory / "wal" / f"{seg:020d}.seg", os.O_RDWR)
        lib.au_shm_set_writing(log._shm, write + 4096)      # a batch being written ...
        os.pwrite(fd, b"\xab" * 1000, off)                  # ... and half of it landed
        ready.set()
        os.kill(os.getpid(), signal.SIGKILL)


def test_fast_append_writes_one_batch_readable_by_everyone(tmp_path):
    log = SharedLog.open(tmp_path)
    try:
        first = log.next_lsn
        got = log.try_append([REC, (8, b"yz")])
        assert got is not None and got[0] == first
        assert got[1] == log.published and log.next_lsn == first + 2
        assert [(r[1], r[2]) for r in _records(log)] == [REC, (8, b"yz")]
        assert log.stats()["fast_appends"] == 1
    finally:
        log.close()


def test_fast_append_refuses_a_held_lock_and_the_locking_path_waits(tmp_path):
    SharedLog.open(tmp_path).close()
    ready, release = CTX.Event(), CTX.Event()
    p = CTX.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    p.start()
    log = SharedLog.open(tmp_path)
    try:
        assert ready.wait(30)
        before = (log.next_lsn, log.published)
        assert log.try_append([REC]) is None                # AU_SHM_BUSY: nothing done
        assert (log.next_lsn, log.published) == before
        done = []
        t = threading.Thread(target=lambda: done.append(log.append_many([REC])))
        t.start()                                           # the locking path waits ...
        time.sleep(0.2)
        assert not done
        release.set()                                       # ... for the holder
        t.join(30)
        assert done == [before[0]]
        assert log.try_append([REC]) is not None            # free again: fast
    finally:
        release.set()
        p.join(30)
        log.close()
    assert p.exitcode == 0


def test_fast_append_refuses_a_lock_held_by_a_thread_of_this_process(tmp_path):
    log = SharedLog.open(tmp_path)
    try:
        inside, leave = threading.Event(), threading.Event()

        def holder():
            with log.locked():
                inside.set()
                leave.wait(30)

        t = threading.Thread(target=holder)
        t.start()
        assert inside.wait(30)
        n = log.next_lsn
        assert log.try_append([REC]) is None
        assert log.next_lsn == n
        leave.set()
        t.join(30)
        # reentrant: the holder's own thread never takes the fast path inside locked()
        with log.locked():
            assert log.try_append([REC]) is None
            first = log.reserve()
            log.write_locked(first, [REC])
        assert log.next_lsn == n + 1
    finally:
        log.close()


def test_conditional_fast_append_writes_only_on_the_expected_tail(tmp_path):
    log = SharedLog.open(tmp_path)
    try:
        log.append_many([REC])                  # expect_lsn 0 means "any tail"
        tail = log.next_lsn
        assert log.try_append([REC], expect_lsn=tail - 1) is None    # AU_SHM_MOVED
        assert log.try_append([REC], expect_lsn=tail + 1) is None
        assert log.next_lsn == tail
        assert log.try_append([REC], expect_lsn=tail)[0] == tail
        assert log.try_append([REC], expect_lsn=tail) is None        # it moved: ours
        assert log.next_lsn == tail + 1
    finally:
        log.close()


def test_fast_append_leaves_a_dead_holders_tail_to_the_locking_path(tmp_path):
    log = SharedLog.open(tmp_path)
    try:
        log.append_many([REC])
        ready = CTX.Event()
        p = CTX.Process(target=_die_mid_write, args=(str(tmp_path), ready))
        p.start()
        p.join(30)
        assert p.exitcode == -signal.SIGKILL
        write, writing, nxt, _ = log._position()
        assert writing != write                               # its unpublished tail
        assert log.try_append([REC]) is None                  # AU_SHM_SLOW: nothing done
        assert log._position()[:3] == (write, writing, nxt)
        assert log.append_many([(8, b"after")]) == nxt        # the locking path repairs
        assert [(r[1], r[2]) for r in _records(log)] == [REC, (8, b"after")]
        assert log.try_append([REC]) is not None              # and the fast path is back
    finally:
        log.close()


def test_fast_append_after_a_roll_elsewhere_goes_the_locking_way(tmp_path):
    other = SharedLog.open(tmp_path, segment_bytes=4096)
    log = SharedLog.open(tmp_path, segment_bytes=4096)
    try:
        seg = log._seg_first
        while other._seg_first == seg:                       # the other process rolls
            other.append_many([(7, b"r" * 500)])
        assert log.try_append([REC]) is None                 # our fd is stale: SLOW
        lsn = log.append_many([REC])                         # the locking path follows
        assert log._seg_first == other._seg_first
        assert log.try_append([REC]) is not None
        recs = log.read_from((1, 32, 1))[0]
        assert [r[0] for r in recs] == list(range(1, lsn + 2))
    finally:
        log.close()
        other.close()


def test_a_claim_decided_on_a_state_that_moved_is_not_written(tmp_path):
    """Two handles on one store; while the first decides its claim on its state (the tail
    equal to its cursor: the fast path), the second claims the same job. The first's
    compare-and-append must refuse, catch up and find nothing: one lease, never two."""
    a = aurora_log.open(tmp_path, **OPTS)
    b = aurora_log.open(tmp_path, **OPTS)
    try:
        jid = a.enqueue(Job("t", {}))
        a.get(jid)                                    # a's cursor is at the tail
        b.get(jid)
        real = a._state.plan_claim
        raced = []

        def plan_claim(*args, **kw):
            rec = real(*args, **kw)
            if not raced:
                raced.append(b.claim("b"))            # appended after a's decision
            return rec

        a._state.plan_claim = plan_claim
        assert a._log.tail_hint() == a._cursor[2]    # a takes the optimistic way
        assert a.claim("a") is None
        assert raced[0] is not None and raced[0].id == jid
        assert a.get(jid).status is JobStatus.RUNNING
        claims = [h for h in a.history(jid) if h.kind == "claim"]
        assert [c.worker for c in claims] == ["b"], claims
        b.complete(jid, raced[0].token)
        assert a.get(jid).status is JobStatus.COMPLETED
    finally:
        a.close()
        b.close()


def test_a_complete_on_a_stale_state_is_decided_again(tmp_path):
    """The tail moves between the decision and the append (another handle cancels... a
    heartbeat here): the complete is not lost, it is decided again on the newest state."""
    a = aurora_log.open(tmp_path, **OPTS)
    b = aurora_log.open(tmp_path, **OPTS)
    try:
        jid = a.enqueue(Job("t", {}))
        job = a.claim("a")
        b.get(jid)
        real = a._state.plan_complete
        moved = []

        def plan_complete(*args, **kw):
            rec = real(*args, **kw)
            if not moved:
                moved.append(b.enqueue(Job("t", {})))   # someone else appends meanwhile
            return rec

        a._state.plan_complete = plan_complete
        a.complete(jid, job.token)
        assert a._log.stats()["fast_appends"] >= 1
        assert a.get(jid).status is JobStatus.COMPLETED
        assert b.get(jid).status is JobStatus.COMPLETED
        assert b.get(moved[0]).status is JobStatus.PENDING
    finally:
        a.close()
        b.close()


def test_a_parked_claim_counts_itself_and_a_publish_wakes_it(tmp_path):
    """append_waiters: a publish wakes append_seq sleepers only when some are counted in,
    so a parked claim must be counted while it sleeps, and be woken by the publish (well
    before its own time-out)."""
    log = SharedLog.open(tmp_path)
    try:
        seen = log.append_seq()
        woke = []
        t = threading.Thread(target=lambda: (log.wait_append(seen, 30.0),
                                             woke.append(time.monotonic())))
        t.start()
        end = time.monotonic() + 10
        while _page_u32(tmp_path, APPEND_WAITERS_OFF) == 0 and time.monotonic() < end:
            time.sleep(0.01)
        assert _page_u32(tmp_path, APPEND_WAITERS_OFF) == 1
        t0 = time.monotonic()
        assert log.try_append([REC]) is not None
        t.join(20)
        assert woke and woke[0] - t0 < 10            # woken, not timed out (30 s)
        assert _page_u32(tmp_path, APPEND_WAITERS_OFF) == 0
    finally:
        log.close()


def test_a_producer_at_the_tail_folds_its_own_enqueue_at_once(tmp_path):
    """Alone (its cursor at the tail), a plain enqueue is folded from the record it just
    wrote, as exclusive mode does, instead of being read back at the next catch-up."""
    q = aurora_log.open(tmp_path, **OPTS)
    try:
        jid = q.enqueue(Job("t", {"n": 1}))
        assert jid in q._state.jobs                       # no catch-up ran
        assert q._cursor[2] == q._log.tail_hint()
        ids = q.enqueue_many([Job("t", {"n": i}) for i in range(3)])
        assert all(i in q._state.jobs for i in ids)
        assert q._cursor[2] == q._log.tail_hint()
        assert q.claim("w").id == jid                     # FIFO, as folded
    finally:
        q.close()


def test_a_bulk_enqueue_at_the_tail_is_folded_at_once_as_a_replay_folds_it(tmp_path):
    """The bulk form (job type + payload dicts) alone at the tail: folded from the request
    (State.apply_enqueue_run, as exclusive mode does) instead of read back at the next
    catch-up; the jobs are exactly what another process folds from the log."""
    q = aurora_log.open(tmp_path, **OPTS)
    try:
        ids = q.enqueue_many("t", [{"i": i} for i in range(50)], priority="high",
                             max_retries=7, timeout_seconds=9)
        assert all(i in q._state.jobs for i in ids)       # no catch-up ran
        assert q._cursor[2] == q._log.tail_hint()
        other = aurora_log.open(tmp_path, **OPTS)          # replays the log
        try:
            for i in ids:
                assert q._state.jobs[i] == other._state.jobs[i]    # the same blob
            later = other.enqueue_many("t", [{"late": 1}])  # someone else's tail
            mine = q.enqueue_many("t", [{"mine": 1}])
            assert mine[0] not in q._state.jobs            # behind: left to the catch-up
            assert q.get(mine[0]).payload == {"mine": 1}
            assert later[0] in q._state.jobs
        finally:
            other.close()
        assert [q.claim("w").id for _ in range(50)] == ids    # FIFO, as folded
    finally:
        q.close()


def test_a_producer_behind_the_tail_leaves_its_enqueue_to_the_catch_up(tmp_path):
    """Someone else appended after our cursor: our record is not folded out of order; the
    next catch-up folds both, in LSN order."""
    a = aurora_log.open(tmp_path, **OPTS)
    b = aurora_log.open(tmp_path, **OPTS)
    try:
        first = b.enqueue(Job("t", {"who": "b"}))
        mine = a.enqueue(Job("t", {"who": "a"}))
        assert mine not in a._state.jobs and first not in a._state.jobs
        assert a._cursor[2] < a._log.tail_hint()
        assert a.get(mine).status is JobStatus.PENDING     # a read catches up
        assert a.claim("w").id == first                    # b's came first
        assert a._cursor[2] == a._log.tail_hint()
    finally:
        a.close()
        b.close()


def test_the_gil_keeping_calls_and_their_cffi_fallbacks_agree(tmp_path, monkeypatch):
    """The one-record fast append and the tail hint are called through ctypes.PyDLL
    (keeping the GIL under the queue lock); without ctypes they go through cffi. Both
    ways write the same bytes and read the same tail."""
    from aurora_log.local import sharedlog
    assert sharedlog.shm_append_try1_keeping_gil is not None
    assert sharedlog.shm_next_lsn_keeping_gil is not None
    log = SharedLog.open(tmp_path)
    try:
        a = log.try_append([REC], expect_lsn=0)
        assert log.tail_hint() == a[0] + 1 == log.next_lsn
        monkeypatch.setattr(sharedlog, "shm_append_try1_keeping_gil", None)
        monkeypatch.setattr(sharedlog, "shm_next_lsn_keeping_gil", None)
        b = log.try_append([(8, b"cffi")], expect_lsn=a[0] + 1)
        assert b[0] == a[0] + 1 and log.tail_hint() == b[0] + 1
        assert log.try_append([REC], expect_lsn=a[0]) is None
        assert [(r[1], r[2]) for r in _records(log)] == [REC, (8, b"cffi")]
    finally:
        log.close()


def test_the_locking_path_uses_the_gil_keeping_calls_and_works_without_them(tmp_path,
                                                                             monkeypatch):
    """locked() takes append_mu, and write_locked() writes under it, through the
    GIL-keeping (ctypes.PyDLL) calls; the cffi fallbacks write the same log."""
    from aurora_log.local import sharedlog
    g = sharedlog.shm_gil_kept
    assert g is not None
    calls: dict[str, int] = {}
    for name in ("trylock", "unlock", "write_batch", "next_lsn", "roll_seq"):
        real = getattr(g, name)

        def counted(*a, _real=real, _name=name):
            calls[_name] = calls.get(_name, 0) + 1
            return _real(*a)
        monkeypatch.setattr(g, name, counted)
    log = SharedLog.open(tmp_path)
    try:
        last = log.append_many([REC, (8, b"two")])            # two records: locked()
        assert all(calls.get(k) for k in ("trylock", "unlock", "write_batch", "roll_seq"))
        monkeypatch.setattr(sharedlog, "shm_gil_kept", None)
        monkeypatch.setattr(sharedlog, "shm_next_lsn_keeping_gil", None)
        monkeypatch.setattr(sharedlog, "shm_append_try1_keeping_gil", None)
        assert log.append_many([(9, b"three"), (9, b"four")]) == last + 2
        with log.locked() as nxt:
            assert nxt == last + 3 == log.next_lsn
        assert [(r[1], r[2]) for r in _records(log)] == [
            REC, (8, b"two"), (9, b"three"), (9, b"four")]
    finally:
        log.close()


def test_a_probe_between_an_attachers_create_and_lock_leaves_its_file_alone(tmp_path,
                                                                            monkeypatch):
    """liveness.begin creates its file, then locks it. A probe by another process that
    ran in between used to find a .live.tmp unlocked, delete it as a dead creator's, and
    the attacher's rename failed (seen under the kill -9 soak's load). The file is now
    created under a name probes skip and renamed to .live.tmp once locked."""
    from aurora_log.local import liveness
    a = aurora_log.open(tmp_path, **OPTS)
    real_flock = liveness.fcntl.flock
    probed = []

    def flock(fd, op):
        if op == liveness.fcntl.LOCK_EX and not probed:
            probed.append(a._liveness.probe())      # a probe right before our lock
        return real_flock(fd, op)

    monkeypatch.setattr(liveness.fcntl, "flock", flock)
    b = aurora_log.open(tmp_path, **OPTS)           # raised FileNotFoundError before
    try:
        assert probed == [0]
        assert b.get(b.enqueue(Job("t", {}))).status is JobStatus.PENDING
        assert not [p for p in os.listdir(tmp_path / "procs") if p.endswith((".new", ".tmp"))]
    finally:
        b.close()
        a.close()


def test_a_leftover_of_a_creator_killed_before_its_rename_is_cleaned_when_old(tmp_path):
    from aurora_log.local import liveness
    a = aurora_log.open(tmp_path, **OPTS)
    try:
        procs = tmp_path / "procs"
        young, old = procs / "0123456789abcdef.live.new", procs / "fedcba9876543210.live.new"
        young.write_bytes(b"")
        old.write_bytes(b"")
        t = time.time() - liveness._NEW_STALE_SECONDS - 5
        os.utime(old, (t, t))
        a._liveness.probe()
        assert young.exists() and not old.exists()
    finally:
        a.close()
