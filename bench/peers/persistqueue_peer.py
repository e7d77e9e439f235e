"""persist-queue's SQLiteAckQueue (https://github.com/peter-wangxu/persist-queue).

Durability: persist-queue opens every connection with `PRAGMA journal_mode=WAL` and leaves
`synchronous` at SQLite's compiled default, which is FULL in CPython's bundled/distro SQLite
(read back in describe()), and with the default auto_commit=True every put/get/ack commits on
its own. So the documented default is already its strongest durable setting: there is no
knob to make it stronger, and we run it once, labelled "default = strongest".

Adapter choices, each the library's own:
  - one SQLiteAckQueue shared by all threads (multithreading=True: a separate put
    connection; the queue serialises with its own locks);
  - persist-queue's own JSON serializer (`persistqueue.serializers.json`) instead of its
    default pickle, so every system encodes JSON;
  - claim = get(block=False, raw=True) (marks the row unack: one commit), complete =
    ack(id=...) (marks it acked: one commit). Acked rows stay in the table and the next
    get() scans past them, so every 1,000 acks we call clear_acked_data() with its defaults,
    the housekeeping its docs ask for.
"""

from __future__ import annotations

import os
import threading

from . import DEFAULT_LEVEL, Peer


class PersistQueuePeer(Peer):
    name = "persist-queue"
    label = "persist-queue SQLiteAckQueue"
    setting = "WAL, synchronous=SQLite default (FULL here), commit per put/get/ack"
    durable = True
    default_or_strong = "default = strongest (no stronger knob)"
    supports_priority = False
    batch_native = False
    shared_handle = True
    notes = ("JSON serializer (its default is pickle); no priorities; no batch put "
             "(enqueue_many = a loop of puts, one commit each); acked rows pruned with "
             "clear_acked_data() every 1,000 acks")

    CLEAR_EVERY = 1000

    @classmethod
    def available(cls):
        try:
            import persistqueue  # noqa: F401
            import persistqueue.serializers.json  # noqa: F401
        except ImportError:
            return False, "persist-queue not installed (pip install -r bench/requirements.txt)"
        return True, ""

    def __init__(self):
        super().__init__()
        self.q = None
        self._acks = 0
        self._ack_lock = threading.Lock()

    def _open(self):
        import persistqueue
        import persistqueue.serializers.json as pq_json
        self.q = persistqueue.SQLiteAckQueue(
            os.path.join(self.directory, "pq"), multithreading=True,
            serializer=pq_json, auto_commit=True)

    def close(self):
        if self.q is not None:
            self.q.close()
            self.q = None

    def enqueue(self, payload, level=DEFAULT_LEVEL):
        return self.q.put(payload)

    def claim(self):
        from persistqueue.exceptions import Empty
        try:
            item = self.q.get(block=False, raw=True)
        except Empty:
            return None
        return item["pqid"], item["data"]

    def complete(self, ref):
        self.q.ack(id=ref)
        with self._ack_lock:
            self._acks += 1
            clear = self._acks % self.CLEAR_EVERY == 0
        if clear:
            self.q.clear_acked_data()

    def prefill(self, items, chunk=10_000):
        # Untimed setup: relax the put connection's sync while loading, then restore it.
        conn = self.q._putter
        old = conn.execute("PRAGMA synchronous").fetchone()[0]
        conn.execute("PRAGMA synchronous=OFF")
        try:
            put = self.q.put
            for payload, _level in items:
                put(payload)
        finally:
            conn.execute(f"PRAGMA synchronous={old}")

    def describe(self):
        import persistqueue
        c = self.q._putter
        return {
            "version": getattr(persistqueue, "__version__", "?"),
            "journal_mode": c.execute("PRAGMA journal_mode").fetchone()[0],
            "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[
                c.execute("PRAGMA synchronous").fetchone()[0]],
            "serializer": "persistqueue.serializers.json",
        }
