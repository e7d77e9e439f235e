"""Many processes, one store (issue 19 phase 2; docs/INTERNALS.md "Shared mode").

Real processes (multiprocessing, fork start method: every child opens the store itself
after the fork, as a gunicorn worker or a second program would; the test process has no
store open while it forks, except in the fork test). Processes are killed with SIGKILL at
chosen points: holding the append lock mid-write, mid-roll, mid-compaction, between
operations with jobs RUNNING."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections import Counter

import pytest

import aurora_log
from aurora_log import Job, JobStatus
from aurora_log.errors import ForkedError, LockedError
from aurora_log.local import sharedlog
from aurora_log.local._binding import lib

CTX = mp.get_context("fork")
FAST = dict(reaper_interval=0.1, auto_compact=False)     # the default mode: shared


def _run(target, *args) -> mp.Process:
    p = CTX.Process(target=target, args=args)
    p.start()
    return p


def _join_ok(*procs: mp.Process, timeout: float = 60) -> None:
    for p in procs:
        p.join(timeout)
        assert p.exitcode == 0, f"child exited with {p.exitcode}"


def _wait_for(cond, timeout: float = 10.0, every: float = 0.02):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(every)
    raise AssertionError("timed out waiting")


# ------------------------------------------------------------------ children

def _producer(path, tag, n, out, opts=FAST):
    q = aurora_log.open(path, **opts)
    ids = []
    for i in range(n):
        if i % 10 == 9:
            ids += q.enqueue_many([Job("t", {"tag": tag, "i": i, "k": k}) for k in range(3)])
        else:
            ids.append(q.enqueue(Job("t", {"tag": tag, "i": i})))
    q.close()
    out.put(("produced", tag, ids))


def _worker(path, tag, stop_after_idle, out):
    q = aurora_log.open(path, **FAST)
    done = []
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < stop_after_idle:
        job = q.claim(f"w{tag}", wait=0.05)
        if job is None:
            continue
        idle_since = time.monotonic()
        q.complete(job.id, job.token, {"by": tag})
        done.append(job.id)
    q.close()
    out.put(("done", tag, done))


def _racer(path, barrier, out):
    q = aurora_log.open(path, reaper_interval=None, auto_compact=False)
    barrier.wait()
    job = q.claim("racer", wait=20)
    out.put((os.getpid(), None if job is None else job.id))
    if job is not None:
        q.complete(job.id, job.token)
    q.close()


def _claim_and_hang(path, out):
    q = aurora_log.open(path, **FAST)
    job = q.claim("doomed")
    out.put(job.id)
    time.sleep(60)


def _die_holding_lock_mid_write(path, out):
    q = aurora_log.open(path, **FAST)
    log = q.log
    with log.locked():
        write = log.published
        seg, off = write >> 32, write & 0xFFFFFFFF
        fd = os.open(log.directory / "wal" / f"{seg:020d}.seg", os.O_RDWR)
        lib.au_shm_set_writing(log._shm, write + 4096)      # a batch being written ...
        os.pwrite(fd, b"\xab" * 1000, off)                  # ... and half of it landed
        out.put("holding")
        time.sleep(0.2)                                     # the queue's feeder thread
        os.kill(os.getpid(), signal.SIGKILL)


def _die_mid_roll(path, where, out):
    q = aurora_log.open(path, reaper_interval=None, auto_compact=False,
                        segment_bytes=8192)
    real_open, real_is_file = sharedlog.SharedLog._open_segment, sharedlog.is_file

    def die():
        out.put("rolling")
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGKILL)

    if where == "after_seal":      # new segment durable, SEAL|NEXT written, not published
        def patched_open(self, lsn, p):
            if self._fd >= 0 and lsn != self._seg_first:
                die()
            return real_open(self, lsn, p)
        sharedlog.SharedLog._open_segment = patched_open
    else:                          # the roll marked in progress, sync lock held, no file yet
        def patched_is_file(p):
            die()
            return real_is_file(p)
        sharedlog.is_file = patched_is_file
    while True:
        q.enqueue(Job("t", {"pad": "x" * 200}))


def _die_mid_compaction(path, out):
    q = aurora_log.open(path, reaper_interval=None, auto_compact=False)
    q.compact(on_progress=lambda done, total: (out.put("compacting"), time.sleep(0.3),
                                               os.kill(os.getpid(), signal.SIGKILL)))


def _forked_child_uses_parent_queue(q, parent_attach, out):
    """In a child forked with the parent's queue open: use it (it re-attaches on first
    use) and report what it is attached as."""
    try:
        seen = sorted(j.id for j in q.list(limit=100))          # the first use: a read
        child_job = q.enqueue(Job("t", {"from": "child"}))
        job = q.claim("child", job_types=["c"])
        q.complete(job.id, job.token, {"by": os.getpid()})
        import threading
        threads = sorted(t.name for t in threading.enumerate() if t.name.startswith("aurora"))
        out.put(("ok", seen, child_job, job.id, q._liveness.attach_lsn, q._pid == os.getpid(),
                 threads))
        q.close()
    except BaseException as e:  # noqa: BLE001 - reported to the test
        out.put(("error", repr(e)))


# ------------------------------------------------------------------ tests

def test_processes_enqueue_claim_complete_concurrently(tmp_path):
    path = str(tmp_path / "s")
    aurora_log.open(path).close()
    out = CTX.Queue()
    procs = [_run(_producer, path, t, 60, out) for t in range(3)]
    procs += [_run(_worker, path, t, 1.5, out) for t in range(3)]
    results = [out.get(timeout=120) for _ in procs]
    _join_ok(*procs)
    produced = [i for r in results if r[0] == "produced" for i in r[2]]
    completed = [i for r in results if r[0] == "done" for i in r[2]]
    assert len(produced) == 3 * (54 + 6 * 3) and len(set(produced)) == len(produced)
    assert Counter(completed) == Counter(produced)       # every job done once, by someone
    with aurora_log.open(path, **FAST) as q:
        assert q.stats()["completed"] == len(produced)
        for job_id in produced[::17]:
            kinds = [t.kind for t in q.history(job_id)]
            assert kinds.count("complete") == 1 and kinds.count("claim") == 1, kinds
    # the log replays to the same state in exclusive mode (every record whole, in order)
    with aurora_log.open(path, reaper_interval=None) as q:
        assert q.stats()["completed"] == len(produced)


def test_sixteen_workers_race_for_one_job(tmp_path):
    path = str(tmp_path / "s")
    with aurora_log.open(path) as q:
        first = q.enqueue(Job("t", {"n": 1}))
    out = CTX.Queue()
    barrier = CTX.Barrier(17)
    procs = [_run(_racer, path, barrier, out) for _ in range(16)]
    barrier.wait()
    winner = out.get(timeout=60)
    assert winner[1] == first
    time.sleep(0.3)
    assert out.empty()                     # nobody else got it
    with aurora_log.open(path, **FAST) as q:
        second = q.enqueue(Job("t", {"n": 2}))
        runner_up = out.get(timeout=60)
        assert runner_up[1] == second and runner_up[0] != winner[0]
        time.sleep(0.3)
        assert out.empty()
        q.enqueue_many([Job("t", {"n": k}) for k in range(14)])
        rest = [out.get(timeout=60) for _ in range(14)]
        assert None not in [r[1] for r in rest]
        _join_ok(*procs)
        assert q.stats()["completed"] == 16
        for j in q.list(status="completed", limit=100):
            assert [t.kind for t in q.history(j.id)].count("claim") == 1


def test_dead_process_running_jobs_return_to_pending(tmp_path):
    path = str(tmp_path / "s")
    with aurora_log.open(path, retry_base=0.0, **FAST) as q:   # the noticer decides the retry
        jid = q.enqueue(Job("t", {}, max_retries=3))
        out = CTX.Queue()
        p = _run(_claim_and_hang, path, out)
        assert out.get(timeout=30) == jid
        assert q.get(jid).status is JobStatus.RUNNING
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        t0 = time.monotonic()
        _wait_for(lambda: q.get(jid).status is JobStatus.PENDING, timeout=5)
        assert time.monotonic() - t0 < 2.0       # a reaper tick (0.1 s) + a commit, not a lease
        hist = q.history(jid)
        assert hist[-1].kind == "reap" and "died" in (hist[-1].error or "")
        assert q.get(jid).retry_count == 1
        job = q.claim("me")
        assert job.id == jid
        q.complete(job.id, job.token)
    assert not [n for n in os.listdir(tmp_path / "s" / "procs") if n.endswith(".live")]


def test_clean_close_returns_own_running_jobs(tmp_path):
    path = str(tmp_path / "s")
    with aurora_log.open(path, **FAST) as a:
        jid = a.enqueue(Job("t", {}))
        b = aurora_log.open(path, **FAST)
        assert b.claim("b").id == jid
        b.close()
        assert a.get(jid).status is JobStatus.PENDING
        assert a.history(jid)[-1].kind == "reap"


def test_killed_holding_the_append_lock_mid_write(tmp_path):
    path = str(tmp_path / "s")
    with aurora_log.open(path, **FAST) as q:
        acked = [q.enqueue(Job("t", {"i": i})) for i in range(5)]
        out = CTX.Queue()
        p = _run(_die_holding_lock_mid_write, path, out)
        assert out.get(timeout=30) == "holding"
        p.join()
        assert p.exitcode == -signal.SIGKILL
        t0 = time.monotonic()
        acked.append(q.enqueue(Job("t", {"after": True})))
        assert time.monotonic() - t0 < 1.0      # the next locker repairs and goes on
        assert q.log.stats()["repairs"] == 1
        acked += [q.enqueue(Job("t", {"i": i})) for i in range(5)]
    with aurora_log.open(path, **FAST) as q:   # every byte checked again
        assert q.log.report.cuts == []
        assert sorted(j.id for j in q.list(limit=1000)) == sorted(acked)


@pytest.mark.parametrize("where", ["before_create", "after_seal"])
def test_killed_mid_roll(tmp_path, where):
    path = str(tmp_path / "s")
    opts = dict(reaper_interval=None, auto_compact=False, segment_bytes=8192)
    aurora_log.open(path, **opts).close()
    out = CTX.Queue()
    p = _run(_die_mid_roll, path, where, out)
    assert out.get(timeout=30) == "rolling"
    with aurora_log.open(path, **opts) as q:    # attaches while the roller is stuck
        p.join()
        assert p.exitcode == -signal.SIGKILL
        t0 = time.monotonic()
        acked = [q.enqueue(Job("t", {"i": i, "pad": "y" * 200})) for i in range(80)]
        assert time.monotonic() - t0 < 30
        assert q.log.stats()["repairs"] >= 1
        total = q.stats()["total"]
    with aurora_log.open(path, **opts) as q:
        assert q.log.report.cuts == []
        ids = {j.id for j in q.list(limit=100_000)}
        assert set(acked) <= ids and len(ids) == total


def test_killed_mid_compaction(tmp_path):
    path = str(tmp_path / "s")
    with aurora_log.open(path, **FAST) as q:
        q.enqueue_many([Job("t", {"i": i}) for i in range(200)])
        out = CTX.Queue()
        p = _run(_die_mid_compaction, path, out)
        assert out.get(timeout=30) == "compacting"
        # the others go on while it compacts (and after it died)
        q.enqueue(Job("t", {"during": True}))
        with pytest.raises(LockedError):     # one compactor at a time: the background
            q._compactor.compact(wait=False)  # trigger skips its turn
        res = q.compact()           # an explicit one waits: the lock dies with the other
        p.join()
        assert p.exitcode == -signal.SIGKILL and res.jobs == 201
        q.enqueue(Job("t", {"after": True}))
    with aurora_log.open(path, **FAST) as q:
        assert q.stats()["total"] == 202


def test_stale_or_damaged_page_is_rebuilt_when_nobody_is_attached(tmp_path):
    path = tmp_path / "s"
    with aurora_log.open(path) as q:
        acked = q.enqueue(Job("t", {}))
    (path / "shm").write_bytes(os.urandom(8192))
    with aurora_log.open(path, **FAST) as q:
        assert q.log.rebuilt
        assert q.get(acked) is not None
        q.enqueue(Job("t", {}))
    # a holder killed with the lock held and nobody else attached: the next open rebuilds
    out = CTX.Queue()
    p = _run(_die_holding_lock_mid_write, str(path), out)
    assert out.get(timeout=30) == "holding"
    p.join()
    with aurora_log.open(path, **FAST) as q:
        assert q.log.rebuilt and q.log.stats()["generation"] >= 3
        assert q.stats()["total"] == 2
        assert q.log.report.cuts and q.log.report.cuts[0].reason   # the torn batch was cut


def test_a_damaged_page_beside_a_live_process_is_refused(tmp_path):
    path = tmp_path / "s"
    with aurora_log.open(path, **FAST):
        with open(path / "shm", "r+b") as f:
            f.write(b"garbage!")
        with pytest.raises(aurora_log.errors.CorruptionError, match="damaged"):
            aurora_log.open(path, **FAST)


def test_exclusive_and_shared_refuse_each_other(tmp_path):
    path = tmp_path / "s"
    with aurora_log.open(path, exclusive=True):            # this process alone
        with pytest.raises(LockedError, match="exclusive=True") as e:
            aurora_log.open(path)
        # the message names the holder and what to do
        assert f"this process ({os.getpid()})" in str(e.value)
        assert "without exclusive=True" in str(e.value) and "read_only=True" in str(e.value)
        with aurora_log.open(path, read_only=True) as ro:   # readers work beside it
            assert ro.stats()["total"] == 0
    with aurora_log.open(path):                            # the default: shared
        with pytest.raises(LockedError, match="shared mode") as e:
            aurora_log.open(path, exclusive=True)
        assert f"this process ({os.getpid()})" in str(e.value)
        assert "without exclusive=True" in str(e.value)
        with aurora_log.open(path, shared=True) as other:   # the default spelled out
            other.enqueue(Job("t", {}))
        with aurora_log.open(path, read_only=True) as ro:
            assert ro.stats()["total"] == 1


HOLDER = """
import sys, aurora_log
q = aurora_log.open(sys.argv[1], exclusive=sys.argv[2] == "exclusive", reaper_interval=None)
print("open", flush=True)
sys.stdin.read()
q.close()
"""


@pytest.mark.parametrize("holder_mode", ["exclusive", "default"])
def test_refusal_names_the_other_process(tmp_path, holder_mode):
    import subprocess
    import sys
    path = tmp_path / "s"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), holder_mode],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(LockedError) as e:
            aurora_log.open(path, exclusive=holder_mode == "default")
        msg = str(e.value)
        assert f"process {holder.pid} (" in msg, msg
        if holder_mode == "exclusive":
            assert "which opened it with exclusive=True" in msg
        else:
            assert "default shared mode" in msg and "exclusive=True needs the store alone" in msg
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0
    with aurora_log.open(path, exclusive=holder_mode == "default", reaper_interval=None):
        pass                                               # free again once it closed


def _check_forked_use(q, tmp_path, start_child) -> None:
    jid = q.enqueue(Job("t", {}))
    cjob = q.enqueue(Job("c", {}))
    q.stats()                                   # folded here before the fork
    out = CTX.Queue()
    wait_child = start_child(q, out)
    reply = out.get(timeout=60)
    assert reply[0] == "ok", reply
    _, seen, child_job, claimed, child_attach, own_pid, threads = reply
    wait_child()
    assert seen == sorted([jid, cjob])          # the child saw the parent's jobs
    assert claimed == cjob and own_pid
    assert child_attach != q._liveness.attach_lsn            # a liveness file of its own
    assert "aurora-log-reaper" in threads                   # threads of its own
    # the child never touched the parent's locks: the parent's liveness lock stands, its
    # queue keeps working and sees the child's writes
    from aurora_log.local.liveness import Liveness
    own = tmp_path / "s" / "procs" / f"{q._liveness.attach_lsn:020d}.live"
    assert own.exists() and not Liveness._unlocked(own)
    assert q.get(child_job) is not None
    assert q.get(cjob).status is JobStatus.COMPLETED
    kinds = [t.kind for t in q.history(cjob)]
    assert kinds == ["enqueue", "claim", "complete"]
    job = q.claim("parent")
    assert job.id == jid
    q.complete(job.id, job.token)
    q.close()


def test_fork_after_open_reattaches_through_os_fork(tmp_path):
    q = aurora_log.open(str(tmp_path / "s"), **FAST)

    def start(q, out):
        pid = os.fork()
        if pid == 0:                            # the child: use the inherited queue
            code = 1
            try:
                _forked_child_uses_parent_queue(q, None, out)
                out.close()
                out.join_thread()
                code = 0
            finally:
                os._exit(code)

        def wait():
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
        return wait

    _check_forked_use(q, tmp_path, start)


def test_fork_after_open_reattaches_in_multiprocessing(tmp_path):
    q = aurora_log.open(str(tmp_path / "s"), **FAST)

    def start(q, out):
        p = _run(_forked_child_uses_parent_queue, q, None, out)    # fork context
        return lambda: _join_ok(p)

    _check_forked_use(q, tmp_path, start)


def _child_uses_exclusive_queue(q, out):
    try:
        q.stats()
        out.put("no error")
    except ForkedError as e:
        out.put(f"forked: {e}")


def test_fork_of_an_exclusive_queue_says_what_to_do(tmp_path):
    q = aurora_log.open(str(tmp_path / "s"), exclusive=True, reaper_interval=None)
    q.enqueue(Job("t", {}))
    out = CTX.Queue()
    p = _run(_child_uses_exclusive_queue, q, out)
    msg = out.get(timeout=30)
    _join_ok(p)
    assert msg.startswith("forked: ") and "aurora_log.open(path) after the fork" in msg, msg
    assert "exclusive=True" in msg
    assert q.stats()["total"] == 1              # the parent's queue keeps working
    q.close()


def test_reads_see_other_processes_writes(tmp_path):
    path = str(tmp_path / "s")
    with aurora_log.open(path, **FAST) as a, aurora_log.open(path, **FAST) as b:
        jid = a.enqueue(Job("t", {"x": 1}))
        assert b.get(jid).payload == {"x": 1}
        assert b.stats()["pending"] == 1
        job = b.claim("b")
        assert a.get(jid).status is JobStatus.RUNNING
        assert a.cancel(jid) is JobStatus.RUNNING        # a request, seen by b's heartbeat
        assert b.heartbeat(jid, job.token) is True
        assert b.fail(jid, job.token, "stop") is JobStatus.CANCELLED
        assert [t.kind for t in a.history(jid)][-1] == "fail"


def test_roll_across_processes_with_small_segments(tmp_path):
    path = str(tmp_path / "s")
    opts = dict(FAST, segment_bytes=4096)
    out = CTX.Queue()
    aurora_log.open(path, **opts).close()
    procs = [_run(_producer, path, t, 40, out, opts) for t in range(3)]
    results = [out.get(timeout=120) for _ in procs]
    _join_ok(*procs)
    produced = [i for r in results for i in r[2]]
    with aurora_log.open(path, **opts) as q:
        assert len(q.log.segments()) > 3
        assert sorted(j.id for j in q.list(limit=10_000)) == sorted(produced)


def test_retirement_never_passes_a_live_process_fold(tmp_path):
    path = str(tmp_path / "s")
    opts = dict(reaper_interval=None, auto_compact=False, segment_bytes=4096,
                retain_seconds=None, retain_count=None)
    a = aurora_log.open(path, **opts)
    b = aurora_log.open(path, **opts)          # folds nothing until it reads
    b_pin = b._cursor[2]
    for round_ in range(3):
        a.enqueue_many([Job("t", {"r": round_, "i": i, "pad": "z" * 100}) for i in range(20)])
        a.compact()
    assert a.log.first_lsn <= b_pin            # b's segments are all still there
    assert min(s.first_lsn for s in a.log.segments()) <= b_pin
    assert b.stats()["total"] == 60             # b catches up through them
    b._liveness.publish(b._cursor[2])           # its reaper tick would publish this
    a._liveness.publish(a._cursor[2])
    a.enqueue(Job("t", {}))
    first = a.compact()
    a.enqueue(Job("t", {}))
    second = a.compact()
    assert first.retired_segments + second.retired_segments     # now the old ones go
    assert b.stats()["total"] == 62
    b.close()
    a.close()


def test_a_batch_bigger_than_a_segment_gets_its_own(tmp_path):
    path = str(tmp_path / "s")
    opts = dict(reaper_interval=None, auto_compact=False, segment_bytes=4096)
    with aurora_log.open(path, **opts) as a, aurora_log.open(path, **opts) as b:
        a.enqueue(Job("t", {}))
        ids = b.enqueue_many([Job("t", {"i": i, "pad": "q" * 200}) for i in range(40)])
        a.enqueue(Job("t", {"after": True}))     # a reopens the segment b's roll made
        assert a.get(ids[-1]) is not None and a.stats()["total"] == 42
    with aurora_log.open(path, segment_bytes=4096) as q:
        assert q.stats()["total"] == 42 and q.log.report.cuts == []


def test_plain_enqueues_skip_the_catch_up_and_chosen_ids_do_not(tmp_path):
    path = str(tmp_path / "s")
    opts = dict(reaper_interval=None, auto_compact=False)
    with aurora_log.open(path, **opts) as a, aurora_log.open(path, **opts) as b:
        a.enqueue_many([Job("t", {"i": i}) for i in range(5)])
        before = b._cursor
        ids = [b.enqueue(Job("t", {})) for _ in range(3)]
        assert b._cursor == before                  # nothing folded on the producer's path
        assert b.get(ids[-1]) is not None           # a read catches up (a's and its own)
        assert b.stats()["total"] == 8 and b._cursor[2] > before[2]
        # a caller-chosen id (or a unique key) depends on the state: decided caught up
        a.enqueue(Job("t", {}, id="chosen"))
        with pytest.raises(ValueError, match="already exists"):
            b.enqueue(Job("t", {}, id="chosen"))
        first = a.enqueue(Job("t", {}, unique_key="k"))
        assert b.enqueue(Job("t", {}, unique_key="k")) == first


def test_interval_mode_syncs_in_the_background(tmp_path):
    path = str(tmp_path / "s")
    opts = dict(reaper_interval=None, auto_compact=False,
                durability="interval", interval_ms=20)
    with aurora_log.open(path, **opts) as q:
        s0 = q.log.stats()["fdatasyncs"]
        jid = q.enqueue(Job("t", {}))            # returns without waiting for a sync
        _wait_for(lambda: q.log.stats()["fdatasyncs"] > s0, timeout=5)
        write = q.log._position()[0]
        _wait_for(lambda: q.log._position()[3] >= write, timeout=5)
    with aurora_log.open(path) as q:
        assert q.get(jid) is not None
