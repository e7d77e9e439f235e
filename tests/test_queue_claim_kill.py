"""A claim survives the death of its process: the attempt is counted on reopen.

Without this, a handler that kills its process (a segfault in a C extension, the OOM
killer) would run again and again uncounted, never reaching dead-letter.
"""

import signal
import subprocess
import sys
import textwrap

import aurora_log
from aurora_log import Job, JobStatus

CHILD = textwrap.dedent("""
    import os, signal, sys
    import aurora_log
    q = aurora_log.open(sys.argv[1], reaper_interval=None, segment_bytes=1 << 20, retry_base=0.0)
    job = q.claim("doomed-worker")
    assert job is not None
    os.kill(os.getpid(), signal.SIGKILL)   # no close, no flush: as a crashing handler would
""")


def _claim_and_die(path):
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path)], timeout=60)
    assert proc.returncode == -signal.SIGKILL


def test_killed_claimer_spends_an_attempt(store_dir):
    with aurora_log.open(store_dir, reaper_interval=None, segment_bytes=1 << 20) as q:
        job_id = q.enqueue(Job.new("explode").with_max_retries(1))
    _claim_and_die(store_dir)
    with aurora_log.open(store_dir, reaper_interval=None, segment_bytes=1 << 20) as q:
        job = q.get(job_id)
        assert job.retry_count == 1
        assert [(t.kind, t.error) for t in q.history(job_id)][-1] == ("reap", "process died")


def test_job_that_always_kills_its_process_ends_in_dead_letter(store_dir):
    with aurora_log.open(store_dir, reaper_interval=None, segment_bytes=1 << 20,
                         retry_base=0.0) as q:
        job_id = q.enqueue(Job.new("explode").with_max_retries(2))
    for _ in range(3):                       # the first attempt + 2 retries
        _claim_and_die(store_dir)
    with aurora_log.open(store_dir, reaper_interval=None, segment_bytes=1 << 20) as q:
        assert q.get(job_id).status is JobStatus.DEAD_LETTER
        assert q.claim("anyone") is None


def test_claims_are_written_but_not_fdatasynced_in_sync_mode(store_dir):
    """The claim's write-through is a write() only: a full fdatasync per claim would halve
    durable claim+complete throughput, and process death does not need it. (A long
    interval keeps the background timer, which fdatasyncs written records, out of it.)"""
    # exclusive=True: counts the exclusive C writer's writes and fdatasyncs (a default-mode
    # claim is written under the append lock and not synced either)
    with aurora_log.open(store_dir, reaper_interval=None, segment_bytes=1 << 20,
                         interval_ms=60_000, exclusive=True) as q:
        q.enqueue_many([Job.new("work") for _ in range(50)])
        before = q.log.stats()
        for _ in range(50):
            assert q.claim("w") is not None
        after = q.log.stats()
    assert after["writes"] - before["writes"] >= 50          # each claim reached the OS
    assert after["fdatasyncs"] - before["fdatasyncs"] <= 1   # ... without an fdatasync each
