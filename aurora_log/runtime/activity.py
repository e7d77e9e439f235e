"""What happened lately, read from the log itself: enqueued / completed / failed per
minute over the last hour, wait and run time percentiles, and the running totals and
run-time histogram that /metrics exports.

``ActivityTracker.catch_up(q)`` reads the records appended since its last call
(``q.log.scan``) and folds them in; the first call reads every record the WAL still holds
(compaction retires older segments, so a window older than the WAL shows no activity).
Times come from the records (``at_ms``), not from the clock of the reader.

Definitions: *failed* counts failed attempts (FAIL records and reaped leases/timeouts);
*run time* is from an attempt's claim to its complete/fail/reap; *wait time* is from the
moment a job became due (enqueue or scheduled time, a retry's due time, a re-drive, a
release) to its claim. Due times are remembered for at most ``MAX_DUE_REMEMBERED`` jobs;
a claim of an older one falls back to the job's created/scheduled time from the state.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from aurora_log.local import records as R

__all__ = ["RUN_BUCKETS", "ActivitySnapshot", "ActivityTracker"]

WINDOW_MINUTES = 60
SAMPLES = 10_000                      # newest wait/run samples kept for percentiles
MAX_DUE_REMEMBERED = 200_000
MAX_OPEN_ATTEMPTS = 200_000
# upper bounds (seconds) of the run-time histogram (Prometheus' defaults plus long jobs)
RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
               300.0, 900.0, 3600.0)

# the ENQUEUE header (records.py): read the id and times without decoding the payload; the
# log checked the record's checksum and the queue replayed it already
_ENQ = R.ENQUEUE_HEAD
_ENQ_SIZE = _ENQ.size
_HAS_SCHEDULED = 1


@dataclass
class ActivitySnapshot:
    minutes: list[tuple[int, int, int, int]]   # (minute start epoch s, enq, done, failed)
    wait_p50: float | None
    wait_p95: float | None
    run_p50: float | None
    run_p95: float | None
    samples: int
    scanned_to_lsn: int
    source: str = "the log"                    # where it was read (shown on the overview)


def _percentile(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(p * (len(sorted_values) - 1))))
    return sorted_values[k]


class ActivityTracker:
    """Folds the log's records into per-minute counts, samples and totals."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.next_lsn = 1
        self._minutes: dict[int, list[int]] = {}      # minute -> [enq, done, failed]
        # id -> due ms, and id -> claim ms of the open attempt; bounded, oldest dropped
        # first (OrderedDict: dropping a plain dict's first key again and again is
        # quadratic, the dict has to skip its deleted slots each time)
        self._due: OrderedDict[str, int] = OrderedDict()
        self._claimed: OrderedDict[str, int] = OrderedDict()
        self._waits: deque = deque(maxlen=SAMPLES)    # (at ms, seconds)
        self._runs: deque = deque(maxlen=SAMPLES)
        # running totals since the tracker started reading (Prometheus counters)
        self.enqueued_total = 0
        self.completed_total = 0
        self.failed_total = 0
        self.run_bucket_counts = [0] * (len(RUN_BUCKETS) + 1)   # last: +Inf
        self.run_seconds_sum = 0.0
        self.run_count = 0

    # ---------------------------------------------------------------- reading the log

    def catch_up(self, q: Any, max_records: int | None = None, *, wait: bool = True) -> bool:
        """Fold in the records since the last call (at most ``max_records``). Returns
        False if another thread is reading and ``wait`` is False (nothing done)."""
        if not self._lock.acquire(blocking=wait):
            return False
        try:
            log = q.log
            start = max(self.next_lsn, log.first_lsn)
            if start >= log.next_lsn:
                return True
            for n, (lsn, rtype, payload) in enumerate(log.scan(start), 1):
                self._fold(q, rtype, payload)
                self.next_lsn = lsn + 1
                if max_records is not None and n >= max_records:
                    break
            self._prune()
            return True
        finally:
            self._lock.release()

    def _bump(self, at_ms: int, column: int) -> None:
        minute = at_ms // 60_000
        row = self._minutes.get(minute)
        if row is None:
            row = self._minutes[minute] = [0, 0, 0]
        row[column] += 1

    def _remember_due(self, job_id: str, due_ms: int) -> None:
        due = self._due
        due[job_id] = due_ms
        if len(due) > MAX_DUE_REMEMBERED:
            due.popitem(last=False)

    def _end_attempt(self, job_id: str, at_ms: int) -> None:
        started = self._claimed.pop(job_id, None)
        if started is None:
            return
        secs = max(0, at_ms - started) / 1000.0
        self._runs.append((at_ms, secs))
        self.run_bucket_counts[bisect.bisect_left(RUN_BUCKETS, secs)] += 1
        self.run_seconds_sum += secs
        self.run_count += 1

    def _fold(self, q: Any, rtype: int, payload: bytes) -> None:
        if rtype == R.HEARTBEAT or rtype == R.PROGRESS:
            return                                   # the bulk of a busy log: skip fast
        if rtype == R.ENQUEUE:              # the other bulk: the fixed header only
            head = _ENQ.unpack_from(payload)
            at, sched, id_len = head[5], head[6], head[9]
            self.enqueued_total += 1
            self._bump(at, 0)
            job_id = payload[_ENQ_SIZE:_ENQ_SIZE + id_len].decode()
            self._remember_due(job_id, max(at, sched) if head[1] & _HAS_SCHEDULED else at)
            return
        at = R.at_ms(rtype, payload)
        if rtype == R.CLAIM:
            c = cast(R.Claim, R.decode(rtype, payload))
            due = self._due.pop(c.id, None)
            if due is None:
                due = self._due_from_state(q, c.id)
            if due is not None:
                self._waits.append((at, max(0, at - due) / 1000.0))
            self._claimed[c.id] = at
            if len(self._claimed) > MAX_OPEN_ATTEMPTS:     # lost attempts never end here
                self._claimed.popitem(last=False)
        elif rtype == R.COMPLETE:
            self.completed_total += 1
            self._bump(at, 1)
            self._end_attempt(cast(R.Complete, R.decode(rtype, payload)).id, at)
        elif rtype == R.FAIL or rtype == R.REAP:
            rec = cast("R.Fail | R.Reap", R.decode(rtype, payload))
            self.failed_total += 1
            self._bump(at, 2)
            self._end_attempt(rec.id, at)
            if rec.outcome == R.OUTCOME_RETRY:
                self._remember_due(rec.id, rec.next_due_ms)
        elif rtype == R.RETRY_DEAD:
            self._remember_due(cast(R.RetryDead, R.decode(rtype, payload)).id, at)
        elif rtype == R.RELEASE:
            # handed back unrun (a worker shutting down): not a run; due again from now
            rel = cast(R.Release, R.decode(rtype, payload))
            self._claimed.pop(rel.id, None)
            if rel.outcome == R.OUTCOME_RETRY:
                self._remember_due(rel.id, at)

    @staticmethod
    def _due_from_state(q: Any, job_id: str) -> int | None:
        job = q.get(job_id)
        if job is None or job.retry_count:
            return None
        when = job.scheduled_at or job.created_at
        return round(when.timestamp() * 1000) if when is not None else None

    def _prune(self) -> None:
        now_min = int(self._clock() // 60)
        for minute in [m for m in self._minutes if m <= now_min - WINDOW_MINUTES]:
            del self._minutes[minute]

    # ---------------------------------------------------------------- reading the results

    def snapshot(self) -> ActivitySnapshot:
        """The last hour, minute by minute (oldest first), and the percentiles."""
        now = self._clock()
        now_min = int(now // 60)
        cut_ms = (now - WINDOW_MINUTES * 60) * 1000
        with self._lock:
            minutes = [(m * 60, *self._minutes.get(m, (0, 0, 0)))
                       for m in range(now_min - WINDOW_MINUTES + 1, now_min + 1)]
            waits = sorted(s for at, s in self._waits if at >= cut_ms)
            runs = sorted(s for at, s in self._runs if at >= cut_ms)
            scanned = self.next_lsn - 1
        return ActivitySnapshot(minutes, _percentile(waits, 0.5), _percentile(waits, 0.95),
                                _percentile(runs, 0.5), _percentile(runs, 0.95),
                                len(runs), scanned)
