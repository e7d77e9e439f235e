"""The reads of a PostgreSQL queue (PostgresReads, see readers.py): SQL on the schema's
tables, each page a few indexed queries however many jobs there are.

* the job list pages with a keyset cursor on the enqueue-order index ``jobs_seq``: a cursor
  is the ``seq`` of the last job shown, the next page is ``WHERE seq > cursor ORDER BY seq
  LIMIT n``. With a filter, one request looks at most ``scan_budget`` enqueue positions
  (``seq <= cursor + budget``) and hands back a cursor to go on from, so a filter that
  matches few jobs does not scan a million rows in one request;
* the last hour's activity comes from the history table by time (aurora_log.postgres.
  activity: one query on the ``history_at`` index, percentiles with percentile_cont);
* the workers page reads the running jobs (the partial index ``jobs_running``);
* the storage page: the schema's migration version and the tables' sizes
  (pg_total_relation_size) instead of segments and snapshots.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from psycopg import sql

from aurora_log.runtime import pg_activity
from aurora_log.postgres import schema as pg_schema
from aurora_log.runtime.pg_activity import HistoryTracker
from aurora_log.postgres.queue import _job_from_row
from aurora_log.postgres.statements import COLS

from ...runtime.activity import ActivitySnapshot
from .readers import (
    DEFAULT_SCAN_BUDGET,
    JobFilter,
    JobPage,
    StorageTable,
    StorageView,
    StoreReads,
    WorkerInfo,
    group_by_worker,
)

__all__ = ["PostgresReads"]

_MAX_SEQ = (1 << 63) - 1
QUEUE_NAMES_SECONDS = 30.0
# counting a big jobs table (stats(): a scan of every row) is the dearest read: the pages
# show a count at most this old, and the poller re-counts no sooner than 4x the last
# count took, so a slow count does not keep the database busy
STATS_MAX_AGE = 5.0
_TABLES = ("jobs", "history", "aurora_migrations")


def parse_cursor(text: str | None) -> int:
    """A cursor is the enqueue position (seq) to go on after; ValueError otherwise."""
    if not text:
        return 0
    if not text.isdigit() or len(text) > 19:
        raise ValueError(f"malformed cursor {text!r}")
    return int(text)


class PostgresReads(StoreReads):
    """The reads of a PostgresQueue (``get_queue()`` returns it)."""

    can_verify = False

    def __init__(self, get_queue: Any, *, scan_budget: int = DEFAULT_SCAN_BUDGET) -> None:
        super().__init__(get_queue)
        self.tracker = HistoryTracker()
        self.scan_budget = scan_budget
        self._queue_names: tuple[float, list[str]] | None = None
        self._stats: tuple[float, float, dict] | None = None    # (when, seconds taken, stats)
        self._stats_lock = threading.Lock()
        q = get_queue()
        s = sql.Identifier(q.schema).as_string(None)
        self._jobs = f"{s}.jobs"
        self._page_sql = f"""
            SELECT seq, {COLS} FROM {self._jobs}
            WHERE seq > %(after)s AND seq <= %(upto)s
              AND (%(st)s::smallint IS NULL OR status = %(st)s)
              AND (%(q)s::text IS NULL OR queue = %(q)s)
              AND (%(t)s::text IS NULL OR job_type = %(t)s)
            ORDER BY seq LIMIT %(limit)s"""
        self._last_seq_sql = f"SELECT max(seq) FROM {self._jobs}"
        self._running_sql = (f"SELECT {COLS} FROM {self._jobs} WHERE status = 2 "
                             "ORDER BY worker, id")

    def _count(self) -> dict:
        with self._stats_lock:
            t0 = time.monotonic()
            stats = self.get_queue().stats()
            self._stats = (time.monotonic(), time.monotonic() - t0, stats)
            return stats

    def stats(self) -> dict:
        """The counts, at most STATS_MAX_AGE (or 4x a slow count's time) old."""
        cached = self._stats
        if cached is None or time.monotonic() - cached[0] > max(STATS_MAX_AGE,
                                                                 4 * cached[1]):
            return self._count()
        return cached[2]

    def refresh(self, *, force: bool = False) -> None:
        cached = self._stats
        if force or cached is None or time.monotonic() - cached[0] >= 4 * cached[1]:
            self._count()

    def queue_names(self) -> list[str]:
        # the filter's choices: counting a big jobs table on every page of the list would
        # cost more than the page, so the names are kept for QUEUE_NAMES_SECONDS
        now = time.monotonic()
        if self._queue_names is None or now - self._queue_names[0] > QUEUE_NAMES_SECONDS:
            self._queue_names = (now, sorted(self.stats()["queues"]))
        return self._queue_names[1]

    def catch_up(self, max_records: int | None = None, *, wait: bool = True) -> None:
        self.tracker.catch_up(self.get_queue(), max_records, wait=wait)

    def activity(self) -> ActivitySnapshot:
        q = self.get_queue()
        return pg_activity.activity(q, q._clock)

    def job_page(self, flt: JobFilter, cursor: str | None, limit: int) -> JobPage:
        after = parse_cursor(cursor)
        q = self.get_queue()
        # an unfiltered page stops at its LIMIT; a filtered one also at its budget
        upto = min(after + self.scan_budget, _MAX_SEQ) if flt.active else _MAX_SEQ
        params = {"after": after, "upto": upto, "limit": limit + 1,
                  "st": None if flt.status is None else flt.status.code,
                  "q": flt.queue, "t": flt.job_type}
        with q._conn() as cur:
            rows = cur.execute(self._page_sql, params).fetchall()
            last_seq = cur.execute(self._last_seq_sql).fetchone()[0] or 0
        shown = rows[:limit]
        jobs = [_job_from_row(r[1:]) for r in shown]
        next_cursor = None
        budget_hit = False
        if len(rows) > limit:
            end = shown[-1][0]
            next_cursor = str(end)
        elif upto < last_seq:                  # the budget ran out before the table did
            end = upto
            budget_hit = True
            next_cursor = str(upto)
        else:
            end = last_seq
        note = (f"looked at enqueue positions {after + 1:,}…{end:,} of {last_seq:,} "
                "(enqueue order; positions are history sequence numbers)")
        return JobPage(jobs, next_cursor, max(0, end - after), end, last_seq, budget_hit,
                       note)

    def workers(self) -> list[WorkerInfo]:
        q = self.get_queue()
        with q._conn() as cur:
            rows = cur.execute(self._running_sql).fetchall()
        return group_by_worker([_job_from_row(r) for r in rows])

    def storage(self) -> StorageView:
        q = self.get_queue()
        with q._conn() as cur:
            version = pg_schema.current_version(cur.connection, q.schema)
            tables = cur.execute(
                """SELECT c.relname, pg_total_relation_size(c.oid), pg_relation_size(c.oid),
                          greatest(c.reltuples, 0)::bigint
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = %s AND c.relkind = 'r' AND c.relname = ANY(%s)
                   ORDER BY c.relname""", (q.schema, list(_TABLES))).fetchall()
            indexes = cur.execute(
                """SELECT i.relname, t.relname, pg_relation_size(i.oid)
                   FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                   JOIN pg_class t ON t.oid = x.indrelid
                   JOIN pg_namespace n ON n.oid = t.relnamespace
                   WHERE n.nspname = %s ORDER BY t.relname, i.relname""",
                (q.schema,)).fetchall()
            server = cur.execute("SHOW server_version").fetchone()[0]
            last_lsn = cur.execute(q._sql.last_lsn).fetchone()[0]
        total = sum(t[1] for t in tables)
        return StorageView(
            cards=[("total-bytes", total, "bytes in the schema's tables (with indexes)"),
                   ("schema-version", f"{version} of {pg_schema.LATEST_VERSION}",
                    f"schema {q.schema} migration version"),
                   ("last-lsn", last_lsn, "newest history position"),
                   ("server-version", server, "PostgreSQL server")],
            tables=[StorageTable("pg-tables", "Tables",
                                 ["Table", "total bytes", "heap bytes", "rows (estimate)"],
                                 [list(t) for t in tables], "No tables.", {1, 2, 3}),
                    StorageTable("pg-indexes", "Indexes", ["Index", "Table", "bytes"],
                                 [list(i) for i in indexes], "No indexes.", {2})],
            notes=["PostgreSQL keeps the jobs in tables: there are no segments, snapshots "
                   "or compaction to show, and no verify run (the server checks its own "
                   "pages). Row counts are the planner's estimates (ANALYZE)."],
            can_verify=False)
