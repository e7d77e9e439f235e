"""The activity tracker (dashboard and /metrics) folds every record type the log holds."""

from __future__ import annotations

import aurora_log
from aurora_log import Job
from aurora_log.local import records as R
from aurora_log.runtime.activity import ActivityTracker


class _Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_a_released_attempt_is_folded_and_its_job_waits_again_from_the_release(tmp_path):
    clock = _Clock(1_700_000_000.0)
    q = aurora_log.open(tmp_path / "q", clock=clock, reaper_interval=None)
    try:
        jid = q.enqueue(Job(job_type="mail"))
        job = q.claim("w1")
        assert job is not None and job.id == jid
        clock.t += 5.0
        q.release(jid, job.token)                # a worker shutting down hands it back
        clock.t += 2.0
        again = q.claim("w2")
        assert again is not None and again.id == jid
        clock.t += 1.0
        q.complete(jid, again.token)

        tracker = ActivityTracker(clock=clock)
        assert tracker.catch_up(q)
        assert tracker.next_lsn == q.log.next_lsn          # read to the end, RELEASE included
        assert (tracker.enqueued_total, tracker.completed_total, tracker.failed_total) == \
            (1, 1, 0)
        # one run (claim 2 -> complete, 1 s); the released attempt is not a run
        assert tracker.run_count == 1 and tracker.run_seconds_sum == 1.0
        snap = tracker.snapshot()
        # waits: enqueue -> first claim (0 s), release -> second claim (2 s)
        assert (snap.wait_p50, snap.wait_p95) == (0.0, 2.0)
    finally:
        q.close()


def test_every_record_type_says_where_it_keeps_its_time():
    # the activity tracker reads at_ms at fixed offsets (records.AT_OFFSET): a record type
    # added to records.py without its offset would stop catch_up at its first record
    assert set(R.AT_OFFSET) == set(R.RECORD_NAMES)


def test_at_ms_reads_what_decode_reads():
    recs = [R.Claim("j", 1_000, b"t" * 8, 2_000, "w"), R.Release("j", 3_000, b"t" * 8, 1),
            R.Pause("q", 4_000), R.Cancel("j", 5_000), R.Reap("j", 6_000, b"t" * 8, 1, 1, 7_000)]
    for rec in recs:
        rtype, payload = R.encode(rec)
        assert R.at_ms(rtype, payload) == R.decode(rtype, payload).at_ms
