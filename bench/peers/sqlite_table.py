"""A plain sqlite3 table used as a job queue: what a careful user writes by hand.

WAL journal, one connection per thread, `synchronous` FULL (every commit fsyncs the WAL:
durable) or NORMAL (the WAL is synced only at checkpoints: consistent after a crash, but the
last commits can be lost on power failure).

The schema is the lean one, to give SQLite every advantage: SQLite assigns the integer id
(no UUID column, no unique index), the payload is JSON text, and a partial index over the
ready rows serves the claim order (priority desc, then FIFO).

  enqueue       INSERT, one transaction (autocommit)
  enqueue_many  BEGIN; executemany(INSERT); COMMIT
  claim         BEGIN IMMEDIATE; UPDATE .. SET status=1 WHERE id=(SELECT .. ORDER BY priority
                DESC, id LIMIT 1) RETURNING id, payload; COMMIT  (select+update on SQLite
                older than 3.35)
  complete      DELETE by id, one transaction
"""

from __future__ import annotations

import json
import os
import sqlite3
import time

from . import DEFAULT_LEVEL, ConnectionPerThreadPeer

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS jobs ("
    " id INTEGER PRIMARY KEY,"
    " priority INTEGER NOT NULL,"
    " status INTEGER NOT NULL DEFAULT 0,"
    " created_at REAL NOT NULL,"
    " claimed_at REAL,"
    " payload TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (priority DESC, id) WHERE status = 0",
)
INSERT = "INSERT INTO jobs (priority, created_at, payload) VALUES (?, ?, ?)"
CLAIM_RETURNING = (
    "UPDATE jobs SET status = 1, claimed_at = ? WHERE id = ("
    " SELECT id FROM jobs WHERE status = 0 ORDER BY priority DESC, id LIMIT 1)"
    " RETURNING id, payload"
)
SELECT_NEXT = "SELECT id, payload FROM jobs WHERE status = 0 ORDER BY priority DESC, id LIMIT 1"
MARK_CLAIMED = "UPDATE jobs SET status = 1, claimed_at = ? WHERE id = ?"
DELETE = "DELETE FROM jobs WHERE id = ?"
HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)

dumps = json.dumps
loads = json.loads


class _Handle:
    """One connection, used by one thread."""

    def __init__(self, path: str, synchronous: str):
        # isolation_level=None: we issue BEGIN/COMMIT ourselves. A long busy timeout: with
        # 256 writer threads the wait for the write lock is long, and we measure that wait
        # rather than fail on it.
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=600,
                                    check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={synchronous}")

    def enqueue(self, payload, level=DEFAULT_LEVEL):
        return self.conn.execute(INSERT, (level, time.time(), dumps(payload))).lastrowid

    def enqueue_many(self, items):
        now = time.time()
        rows = [(lv, now, dumps(p)) for p, lv in items]
        c = self.conn
        c.execute("BEGIN")
        try:
            c.executemany(INSERT, rows)
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    def claim(self):
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            if HAS_RETURNING:
                row = c.execute(CLAIM_RETURNING, (time.time(),)).fetchone()
            else:
                row = c.execute(SELECT_NEXT).fetchone()
                if row is not None:
                    c.execute(MARK_CLAIMED, (time.time(), row[0]))
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")
        if row is None:
            return None
        return row[0], loads(row[1])

    def complete(self, ref):
        self.conn.execute(DELETE, (ref,))

    def close(self):
        self.conn.close()


class SqliteTablePeer(ConnectionPerThreadPeer):
    _handle_class = _Handle
    batch_native = True
    supports_priority = True
    shared_handle = False

    def __init__(self, synchronous: str = "FULL"):
        super().__init__()
        self.synchronous = synchronous
        self.name = f"sqlite-{synchronous.lower()}"
        self.label = f"sqlite3 table, WAL, sync={synchronous}"
        self.durable = synchronous in ("FULL", "EXTRA")
        if self.durable:
            self.setting = f"WAL, synchronous={synchronous} (fsync per commit)"
            self.default_or_strong = "strongest (and SQLite's compiled default here)"
        else:
            self.setting = (f"WAL, synchronous={synchronous} (WAL synced at checkpoints only: "
                            "power loss can drop recent commits)")
            self.default_or_strong = "the common 'fast' setting"
        self.notes = ("hand-written table-as-queue; SQLite assigns integer ids; payload "
                      "json.dumps'd by the caller; claim = UPDATE..RETURNING in BEGIN "
                      "IMMEDIATE; complete = DELETE")
        self._main = None
        self._handles = []

    @property
    def path(self):
        return os.path.join(self.directory, "queue.db")

    def _open(self):
        super()._open()
        for stmt in SCHEMA:
            self._main.conn.execute(stmt)

    def prefill(self, items, chunk=50_000):
        c = self._main.conn
        c.execute("PRAGMA synchronous=OFF")
        try:
            for i in range(0, len(items), chunk):
                self._main.enqueue_many(items[i:i + chunk])
        finally:
            c.execute(f"PRAGMA synchronous={self.synchronous}")

    def describe(self):
        c = self._main.conn
        return {
            "sqlite_version": sqlite3.sqlite_version,
            "journal_mode": c.execute("PRAGMA journal_mode").fetchone()[0],
            "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[
                c.execute("PRAGMA synchronous").fetchone()[0]],
            "claim": "UPDATE..RETURNING" if HAS_RETURNING else "SELECT+UPDATE",
        }
