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
