"""huey's SqliteStorage (https://github.com/coleifer/huey), driven at the storage layer.

Durability: SqliteStorage(fsync=None) is the default and leaves `synchronous` at SQLite's
compiled default (FULL here, read back in describe()); fsync=True sets synchronous=2 (FULL),
fsync=False sets 0 (OFF). journal_mode='wal' is the default. On this build the default and
the strongest setting are the same, so it runs once; we pass fsync=True to make the choice
explicit whatever the local SQLite was compiled with.

Adapter choices:
  - one storage object shared by all threads, as huey's thread workers share it (one
    connection behind huey's own lock);
  - payload bytes are our JSON; huey itself would pickle a Task message (huey.serializer
    uses pickle) before calling the storage;
  - claim = dequeue(): SELECT + DELETE in one `begin exclusive` transaction. huey deletes on
    dequeue, so a job is at-most-once and complete has nothing to write (huey's consumer
    writes a result only when a task returns a value). So huey does ONE commit per job where
    the acked queues do two: keep that in mind when reading the claim scenarios;
  - dequeue() returns only the data, no id: the adapter's ref is None.
  - priorities: huey orders by `priority desc, id`, so the 10 levels go in as is;
  - no batch enqueue: enqueue_many is a loop of single enqueues (one commit each).
"""

from __future__ import annotations

import json
import os

from . import DEFAULT_LEVEL, Peer

dumps = json.dumps
loads = json.loads


class HueyPeer(Peer):
    name = "huey"
    label = "huey SqliteStorage"
    setting = "WAL, fsync=True -> synchronous=FULL (default fsync=None is FULL here too)"
    durable = True
    default_or_strong = "default = strongest on this SQLite build"
    supports_priority = True
    batch_native = False
    shared_handle = True
    notes = ("storage layer only, JSON bytes (huey pickles Task messages); dequeue deletes "
             "(at-most-once, one commit per job, complete is a no-op); no batch enqueue")

    @classmethod
    def available(cls):
        try:
            import huey.storage  # noqa: F401
        except ImportError:
            return False, "huey not installed (pip install -r bench/requirements.txt)"
        return True, ""

    def __init__(self, fsync=True):
        super().__init__()
        self.fsync = fsync
        self.s = None

    def _open(self):
        from huey.storage import SqliteStorage
        self.s = SqliteStorage(name="bench", filename=os.path.join(self.directory, "huey.db"),
                               fsync=self.fsync)

    def close(self):
        if self.s is not None:
            self.s.close()
            self.s = None

    def enqueue(self, payload, level=DEFAULT_LEVEL):
        self.s.enqueue(dumps(payload).encode(), level)

    def claim(self):
        data = self.s.dequeue()
        if data is None:
            return None
        return None, loads(bytes(data))

    def complete(self, ref):
        pass

    def prefill(self, items, chunk=10_000):
        conn = self.s.conn
        conn.execute("PRAGMA synchronous=OFF")
        try:
            enq = self.s.enqueue
            for payload, level in items:
                enq(dumps(payload).encode(), level)
        finally:
            conn.execute("PRAGMA synchronous=%d" % (2 if self.fsync else 0))

    def describe(self):
        import huey
        c = self.s.conn
        return {
            "version": getattr(huey, "__version__", "?"),
            "journal_mode": c.execute("PRAGMA journal_mode").fetchone()[0],
            "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[
                c.execute("PRAGMA synchronous").fetchone()[0]],
            "fsync": self.fsync,
        }
