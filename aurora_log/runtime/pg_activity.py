"""What happened lately on a PostgreSQL queue, read from its history table: the dashboard's
activity view and the /metrics counters (the local store reads its log instead, see
aurora_log/runtime/activity.py; the definitions are the same).

* :func:`activity` -- the last hour: enqueued / completed / failed per minute in ONE query
  on the ``history_at`` index (migration 2), and wait / run time p50 and p95 with
  ``percentile_cont`` over the last hour's newest SAMPLES claims and outcomes.
* :class:`HistoryTracker` -- running totals since it started reading (Prometheus counters)
  and the run-time histogram, folded incrementally from the rows past its cursor (the
  primary key ``lsn``), so a scrape reads only what is new.

Definitions: *failed* counts failed attempts ("fail" and "reap" rows); *run time* is from an
attempt's claim to its complete/fail/reap; *wait time* is from the moment the job became
due to its claim. The jobs table keeps only the due time of a job's newest waiting period,
so wait samples come from claims that are still their job's newest and were not followed by
a new wait (a retry, a release, a re-drive); older claims are not sampled.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable
from typing import Any

from psycopg import sql

from .activity import RUN_BUCKETS, WINDOW_MINUTES, ActivitySnapshot

__all__ = ["HistoryTracker", "activity"]

# A history row's lsn is drawn from a sequence before its transaction commits, so a row
# with a smaller lsn can become visible after a bigger one was read. The tracker re-reads
# the rows of the last SETTLE_MS (by their at_ms) and skips those it already folded; a
# transaction open longer than this may have its rows missed by the counters.
SETTLE_MS = 10_000
# the newest claims / outcomes of the last hour the percentiles are taken over: each
# outcome is paired with its claim by an index lookup, so this bounds the query's cost
# on a busy queue (the local store keeps its newest 10,000 samples)
SAMPLES = 5_000
BATCH = 50_000                       # rows one catch_up call folds at most


def _tables(schema: str) -> tuple[str, str]:
    s = sql.Identifier(schema).as_string(None)
    return f"{s}.jobs", f"{s}.history"


def _window_sql(schema: str) -> tuple[str, str, str]:
    jobs, hist = _tables(schema)
    per_minute = f"""
        SELECT at_ms / 60000 AS minute,
               count(*) FILTER (WHERE kind = 'enqueue'),
               count(*) FILTER (WHERE kind = 'complete'),
               count(*) FILTER (WHERE kind IN ('fail', 'reap'))
        FROM {hist} WHERE at_ms >= %s GROUP BY minute"""
    # the newest claim of a job (started_ms = its at_ms) whose due time is still the one
    # it waited for (due_ms <= the claim)
    waits = f"""
        SELECT percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY h.at_ms - j.due_ms)
        FROM (SELECT job_id, at_ms FROM {hist} WHERE at_ms >= %s AND kind = 'claim'
              ORDER BY at_ms DESC LIMIT {SAMPLES}) h
        JOIN {jobs} j ON j.id = h.job_id
        WHERE j.started_ms = h.at_ms AND j.due_ms <= h.at_ms"""
    # each outcome row with the claim that began its attempt (history_job index)
    runs = f"""
        SELECT percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY e.at_ms - c.at_ms),
               count(*)
        FROM (SELECT job_id, lsn, at_ms FROM {hist}
              WHERE at_ms >= %s AND kind IN ('complete', 'fail', 'reap')
              ORDER BY at_ms DESC LIMIT {SAMPLES}) e
        CROSS JOIN LATERAL (
            SELECT at_ms FROM {hist} c
            WHERE c.job_id = e.job_id AND c.lsn < e.lsn AND c.kind = 'claim'
            ORDER BY c.lsn DESC LIMIT 1) c"""
    return per_minute, waits, runs


def activity(q: Any, clock: Callable[[], float] = time.time) -> ActivitySnapshot:
    """The last hour of ``q`` (a PostgresQueue), minute by minute, and the percentiles."""
    now = clock()
    now_min = int(now // 60)
    first_min = now_min - WINDOW_MINUTES + 1
    cut_ms = first_min * 60_000
    per_minute, waits, runs = _window_sql(q.schema)
    with q._conn() as cur:
        rows = {int(m): (e, d, f) for m, e, d, f in cur.execute(per_minute, (cut_ms,))}
        wait = cur.execute(waits, (cut_ms,)).fetchone()
        run = cur.execute(runs, (cut_ms,)).fetchone()
        last = cur.execute(q._sql.last_lsn).fetchone()
    minutes = [(m * 60, *rows.get(m, (0, 0, 0))) for m in range(first_min, now_min + 1)]

    def secs(pair: Any, i: int) -> float | None:
        return None if pair is None or pair[i] is None else pair[i] / 1000.0

    wait_p = wait[0] if wait else None
    run_p = run[0] if run else None
    return ActivitySnapshot(minutes, secs(wait_p, 0), secs(wait_p, 1), secs(run_p, 0),
                            secs(run_p, 1), int(run[1]) if run else 0,
                            int(last[0]) if last else 0, source="the history table")


class HistoryTracker:
    """Counters and the run-time histogram, folded from the history rows past a cursor.
    Duck-types runtime.activity.ActivityTracker's totals for runtime/metrics.py."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cursor = 0                    # every row with lsn <= cursor is folded
        self._recent: dict[int, int] = {}   # lsn -> at_ms of folded rows above the cursor
        self.enqueued_total = 0
        self.completed_total = 0
        self.failed_total = 0
        self.run_bucket_counts = [0] * (len(RUN_BUCKETS) + 1)   # last: +Inf
        self.run_seconds_sum = 0.0
        self.run_count = 0
        self._sql: tuple[str, str] | None = None

    def _statements(self, schema: str) -> tuple[str, str]:
        if self._sql is None:
            _jobs, hist = _tables(schema)
            rows = f"""
                SELECT e.lsn, e.kind, e.at_ms,
                       CASE WHEN e.kind IN ('complete', 'fail', 'reap') THEN (
                           SELECT e.at_ms - c.at_ms FROM {hist} c
                           WHERE c.job_id = e.job_id AND c.lsn < e.lsn AND c.kind = 'claim'
                           ORDER BY c.lsn DESC LIMIT 1) END
                FROM {hist} e
                WHERE e.lsn > %s AND e.kind IN ('enqueue', 'complete', 'fail', 'reap')
                ORDER BY e.lsn LIMIT %s"""
            self._sql = (rows, f"SELECT max(lsn) FROM {hist}")
        return self._sql

    def catch_up(self, q: Any, max_rows: int | None = None, *, wait: bool = True) -> bool:
        """Fold in the rows written since the last call (all of them, or about
        ``max_rows``). False if another thread is reading and ``wait`` is False."""
        if not self._lock.acquire(blocking=wait):
            return False
        try:
            rows_sql, _ = self._statements(q.schema)
            left = max_rows
            while True:
                limit = BATCH if left is None else max(1, min(BATCH, left))
                n = self._catch_up_once(q, rows_sql, limit)
                if left is not None:
                    left -= n
                if n < limit or (left is not None and left <= 0):
                    return True
        finally:
            self._lock.release()

    def _catch_up_once(self, q: Any, rows_sql: str, limit: int) -> int:
        settled = round(q._clock() * 1000) - SETTLE_MS
        with q._conn() as cur:
            rows = cur.execute(rows_sql, (self._cursor, limit)).fetchall()
        for lsn, kind, at_ms, run_ms in rows:
            if lsn not in self._recent:
                self._recent[lsn] = at_ms
                self._fold(kind, run_ms)
        # the cursor passes a row only once it is SETTLE_MS old: a smaller lsn still
        # invisible now would belong to a transaction open that long. Newer rows stay in
        # _recent, to be skipped when they are read again.
        cursor = max([lsn for lsn, _k, at_ms, _r in rows if at_ms <= settled],
                     default=self._cursor)
        if len(rows) == limit and cursor == self._cursor:
            cursor = rows[-1][0]              # a full batch of fresh rows: never stall
        self._cursor = max(self._cursor, cursor)
        self._recent = {lsn: at for lsn, at in self._recent.items() if lsn > self._cursor}
        return len(rows)

    def _fold(self, kind: str, run_ms: int | None) -> None:
        if kind == "enqueue":
            self.enqueued_total += 1
            return
        if kind == "complete":
            self.completed_total += 1
        else:
            self.failed_total += 1
        if run_ms is not None:
            secs = max(0, run_ms) / 1000.0
            self.run_bucket_counts[bisect.bisect_left(RUN_BUCKETS, secs)] += 1
            self.run_seconds_sum += secs
            self.run_count += 1
