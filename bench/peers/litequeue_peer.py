"""litequeue (https://github.com/litements/litequeue).

Durability: LiteQueue's constructor always sets `PRAGMA synchronous = NORMAL` (with WAL),
so its default is not power-loss durable (NORMAL in WAL mode syncs only at checkpoints).
There is no constructor knob; for the strongest setting we set `PRAGMA synchronous=FULL` on
its connection right after construction. Two rows: "litequeue-default" (NORMAL) and
"litequeue-full" (FULL).

Adapter choices:
  - one LiteQueue (one connection) per thread: LiteQueue runs BEGIN/COMMIT on its single
    connection, so two threads sharing one would collide; separate instances on the same
    file are what a threaded user does;
  - data is a str: our JSON; ids are litequeue's own uuid7 message ids;
  - claim = pop() (UPDATE..RETURNING in BEGIN IMMEDIATE), complete = done(message_id)
    (UPDATE to DONE; done rows stay until prune()). pop() finds the ready rows through its
    status index and then sorts them by message_id ("USE TEMP B-TREE FOR ORDER BY" in its
    query plan), so every claim costs O(pending jobs): its claim rate falls as the queue
    grows (thousands/s at hundreds pending, tens/s at 40,000);
  - no priorities (FIFO by message id), no batch put (enqueue_many = a loop of puts, each
    its own commit; prefill wraps the loop in one transaction, untimed).
"""

from __future__ import annotations

import json
import os

from . import DEFAULT_LEVEL, ConnectionPerThreadPeer

dumps = json.dumps
loads = json.loads


class _Handle:
    def __init__(self, path, synchronous):
        from litequeue import LiteQueue
        # A long busy timeout (its default is sqlite3's 5 s): with 64+ writer threads the
        # wait for the write lock is long, and we measure that wait instead of failing on
        # it, as for the plain sqlite table.
        self.q = LiteQueue(path, timeout=600)
        if synchronous is not None:
            self.q.conn.execute(f"PRAGMA synchronous={synchronous}")

    def enqueue(self, payload, level=DEFAULT_LEVEL):
        return self.q.put(dumps(payload)).message_id

    def enqueue_many(self, items):
        put = self.q.put
        return [put(dumps(p)).message_id for p, _lv in items]

    def claim(self):
        m = self.q.pop()
        if m is None:
            return None
        return m.message_id, loads(m.data)

    def complete(self, ref):
        self.q.done(ref)

    def close(self):
        self.q.close()


class LiteQueuePeer(ConnectionPerThreadPeer):
    _handle_class = _Handle
    supports_priority = False
    batch_native = False
    shared_handle = False

    @classmethod
    def available(cls):
        try:
            import litequeue  # noqa: F401
        except ImportError:
            return False, "litequeue not installed (pip install -r bench/requirements.txt)"
        return True, ""

    def __init__(self, synchronous=None):
        super().__init__()
        self.synchronous = synchronous
        if synchronous is None:
            self.name = "litequeue-default"
            self.label = "litequeue (default)"
            self.setting = "WAL, synchronous=NORMAL (hard-coded; not power-loss durable)"
            self.durable = False
            self.default_or_strong = "default"
        else:
            self.name = f"litequeue-{synchronous.lower()}"
            self.label = f"litequeue, sync={synchronous}"
            self.setting = f"WAL, synchronous={synchronous} (set on its connection after init)"
            self.durable = True
            self.default_or_strong = "strongest"
        self.notes = ("one LiteQueue per thread; no priorities; no batch put; done() keeps "
                      "rows (status DONE) until prune(); pop() sorts all ready rows on every "
                      "call, so claims slow down as the queue grows; busy timeout 600 s "
                      "(default 5 s fails under 64 writer threads)")
        self._main = None
        self._handles = []

    @property
    def path(self):
        return os.path.join(self.directory, "litequeue.db")

    def prefill(self, items, chunk=50_000):
        q = self._main.q
        for i in range(0, len(items), chunk):
            with q.transaction():
                for p, _lv in items[i:i + chunk]:
                    q.put(dumps(p))

    def describe(self):
        import litequeue
        c = self._main.q.conn
        return {
            "version": getattr(litequeue, "__version__", "?"),
            "journal_mode": c.execute("PRAGMA journal_mode").fetchone()[0],
            "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[
                c.execute("PRAGMA synchronous").fetchone()[0]],
        }
