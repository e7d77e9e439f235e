"""Small deterministic cases the many-processes model test found (issue 19), each through
the public API in real helper processes (tests/mp_queue_server.py)."""

from __future__ import annotations

import time

import pytest
from mp_support import Helper, SharedClock

T0 = 1_800_000_000_000
OPTIONS = dict(durability="os", reaper_interval=None, auto_compact=False,
               retain_seconds=None, retain_count=None)
JOB = dict(job_type="a", queue="q1", priority=4, max_retries=3, lease_ms=300_000,
           timeout_ms=None, unique_key=None, payload={"n": 1}, id="job-1", sched_ms=None)


@pytest.mark.parametrize("watcher", ["opened_before_the_snapshot",
                                     "opened_after_the_snapshot"])
def test_a_dead_process_jobs_come_back_whoever_notices(shared_store, tmp_path, watcher):
    """A claims a job; B writes a snapshot; A is killed; W notices and must return A's job.
    W opened after the snapshot loads its state from it: the snapshot must carry which
    process claimed each RUNNING job (else W finds nothing to return and the job waits for
    its 300 s lease)."""
    clock = SharedClock(tmp_path / "clock", T0)
    store = str(tmp_path / "store")
    a, b, w = Helper(), Helper(), Helper()
    try:
        for h in (a, b):
            h.call("open", path=store, clock=str(clock.path), options=OPTIONS)
        a.call("enqueue", jobs=[JOB])
        assert a.call("claim", worker="a", types=None, queues=None)["id"] == "job-1"
        watch = dict(OPTIONS, reaper_interval=0.05)
        if watcher == "opened_before_the_snapshot":
            w.call("open", path=store, clock=str(clock.path), options=watch)
            b.call("compact")
        else:
            b.call("compact")
            w.call("open", path=store, clock=str(clock.path), options=watch)
        a.proc.kill()
        a.proc.wait()
        end = time.monotonic() + 10
        while True:
            got = w.call("view", ids=["job-1"])["jobs"]["job-1"]
            if got["status"] != "running" or time.monotonic() > end:
                break
            time.sleep(0.05)
        assert (got["status"], got["history"], got["error"]) == \
            ("pending", ["enqueue", "claim", "reap"], "process died")
        assert b.call("view", ids=["job-1"])["jobs"]["job-1"]["history"] == got["history"]
    finally:
        for h in (a, b, w):
            h.stop()
        clock.close()


def test_a_flush_after_another_process_rolled_syncs_the_newest_segment(tmp_path):
    """Found by the two-writer power-loss simulator (tests/test_powerloss_two_writers.py,
    interval mode): B has not appended since A rolled, so B's fd is still the old segment's.
    B's flush() (also its interval thread and close()) waits for the page's write position,
    which is in A's new segment; leading that group commit, B fdatasynced its old segment
    and published the new position as synced, so A's unsynced record counted as durable
    (and any committer covered by it was acknowledged without an fdatasync). Two handles
    in one process, each attached like a process of its own."""
    from aurora_log import Job, open as open_store
    from aurora_log.testing import faults

    opts = dict(shared=True, durability="os", segment_bytes=4096, reaper_interval=None,
                auto_compact=False, retain_seconds=None, retain_count=None)
    rec = faults.Recorder()
    with faults.installed(rec):
        a = open_store(tmp_path / "s", **opts)
        b = open_store(tmp_path / "s", **opts)
        try:
            while a.log.stats()["rolls"] < 1:
                a.enqueue(Job("t", {"pad": "x" * 900}))
            a.enqueue(Job("t", {"last": True}))       # unsynced, in the new segment
            newest = [op.path for op in rec.ops if op.name == "pwrite"][-1]
            assert newest.endswith(".seg") and b.log._seg_first < a.log._seg_first
            mark = len(rec.ops)
            b.flush()
            synced = [op.path for op in rec.ops[mark:]
                      if op.name in ("fdatasync", "fsync") and op.errno == 0]
            assert newest in synced, f"b's flush synced {synced}, not {newest}"
        finally:
            b.close()
            a.close()


def test_a_probe_while_a_process_creates_its_liveness_file_never_deletes_it(tmp_path,
                                                                            monkeypatch):
    """Seen in tests/test_multiprocess_kill9.py (a process died before it was ready:
    FileNotFoundError renaming procs/<random>.live.tmp): the file was created, then
    locked; a reaper probing between the two found it unlocked, took it for a creator that
    died, and deleted it. Here A probes exactly there, while B attaches."""
    import fcntl

    from aurora_log import open as open_store
    from aurora_log.local import liveness

    opts = dict(shared=True, reaper_interval=None, auto_compact=False)
    a = open_store(tmp_path / "s", **opts)
    real = fcntl.flock
    probed = []

    def flock(fd, op):
        if op == fcntl.LOCK_EX and not probed:      # B locking its new liveness file
            probed.append(a._liveness.probe())
        return real(fd, op)
    monkeypatch.setattr(liveness.fcntl, "flock", flock)
    try:
        b = open_store(tmp_path / "s", **opts)
        b.close()
    finally:
        a.close()
    assert probed == [0]


def test_the_rebuilder_removes_only_old_unlocked_liveness_files_being_created(tmp_path):
    """A creator killed between the creation and the lock of its liveness file leaves
    procs/<random>.live.new; the next process that is alone removes it once it is old
    (a fresh one may be another process's, unlocked for an instant)."""
    import os

    from aurora_log import open as open_store

    opts = dict(shared=True, reaper_interval=None, auto_compact=False)
    open_store(tmp_path / "s", **opts).close()
    procs = tmp_path / "s" / "procs"
    old, fresh = procs / "aaaaaaaaaaaaaaaa.live.new", procs / "bbbbbbbbbbbbbbbb.live.new"
    for p in (old, fresh):
        p.write_bytes(b"")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    with open_store(tmp_path / "s", **opts) as q:
        assert q.log.rebuilt
    assert not old.exists() and fresh.exists()
