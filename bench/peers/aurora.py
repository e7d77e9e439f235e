"""aurora-log itself, through its public Queue API (docs/INTERNALS.md, "queue.py").

Two rows:
  aurora-sync      durability="sync" (the default): enqueue/enqueue_many/complete return
                   after their records are fdatasynced; concurrent callers share one
                   write + one fdatasync (group commit). Claims do not wait for a sync.
  aurora-interval  durability="interval" (fdatasync every interval_ms, 20 ms by default):
                   acknowledged writes ride the next group commit; a crash loses at most
                   that window. This is the row compared with SQLite at synchronous=NORMAL.

One Queue is shared by all threads (it is thread-safe by contract); each thread claims
under its own worker id. The 0..9 priority levels map onto JobPriority via
peers.aurora_level (0-2 LOW, 3-4 NORMAL, 5-7 HIGH, 8-9 CRITICAL).
"""

from __future__ import annotations

import os
import threading

from . import DEFAULT_LEVEL, Peer, aurora_level


class AuroraPeer(Peer):
    supports_priority = True
    batch_native = True
    shared_handle = True

    @classmethod
    def available(cls):
        try:
            import aurora_log
            from aurora_log.job import Job, JobPriority  # noqa: F401
        except ImportError as e:
            return False, f"aurora-log's queue is not importable yet ({e})"
        if not hasattr(aurora_log, "open"):
            return False, "aurora_log.open is missing (the queue engine has not landed yet)"
        return True, ""

    def __init__(self, durability="sync", interval_ms=None, shared=None):
        super().__init__()
        self.durability = durability
        self.interval_ms = interval_ms
        self.shared = shared            # None: the library's default store mode
        mode = "" if shared is None else ("-shared" if shared else "-excl")
        self.name = f"aurora-{durability}{mode}"
        self.label = f"aurora-log ({durability}{', ' + mode[1:] if mode else ''})"
        if durability == "sync":
            self.setting = "sync: fdatasync before enqueue/complete return (group commit)"
            self.durable = True
            self.default_or_strong = "default = strongest"
        else:
            self.setting = (f"{durability}: writes ride the next group commit "
                            f"(interval_ms={interval_ms or 'default'})")
            self.durable = False
            self.default_or_strong = "relaxed"
        self.notes = ("payload dict -> Job('bench', payload, priority=..); a batch of one "
                      "priority: enqueue_many('bench', payloads, priority=..); ids are UUIDs")
        self.q = None
        # s6 reopens the store once as filled (background compaction as configured by
        # default) and once more after an explicit compact() (a snapshot and no tail).
        self.compacts = durability == "sync"
        self._tls = threading.local()
        self._prio = None

    def _open(self):
        import aurora_log
        from aurora_log.job import Job, JobPriority
        self._Job = Job
        self._prio = [JobPriority(aurora_level(lv)) for lv in range(10)]
        kwargs = {"durability": self.durability}
        if self.interval_ms is not None:
            kwargs["interval_ms"] = self.interval_ms
        if self.shared is not None:
            kwargs["shared"] = self.shared
        self.q = aurora_log.open(self.directory, **kwargs)

    def close(self):
        if self.q is not None:
            self.q.close()
            self.q = None

    def _job(self, payload, level):
        # The keyword constructor, the Python-side equivalent of
        # Job.new("bench").with_payload(payload).with_priority(..): one validation pass.
        return self._Job("bench", payload, priority=self._prio[level])

    def enqueue(self, payload, level=DEFAULT_LEVEL):
        return self.q.enqueue(self._job(payload, level))

    def enqueue_many(self, items):
        # One priority for the whole batch (s3's case): the bulk form, as a user with a
        # list of payload dicts calls it. Mixed priorities: one Job per payload.
        levels = {lv for _, lv in items}
        if len(levels) == 1:
            return self.q.enqueue_many("bench", [p for p, _ in items],
                                       priority=self._prio[levels.pop()])
        job = self._job
        return self.q.enqueue_many([job(p, lv) for p, lv in items])

    def _worker_id(self):
        w = getattr(self._tls, "wid", None)
        if w is None:
            w = self._tls.wid = f"bench-{threading.get_ident()}"
        return w

    def claim(self):
        j = self.q.claim(self._worker_id())
        if j is None:
            return None
        return (j.id, j.token), j.payload

    def complete(self, ref):
        self.q.complete(ref[0], ref[1])

    def prefill(self, items, chunk=10_000):
        for i in range(0, len(items), chunk):
            self.enqueue_many(items[i:i + chunk])

    def compact(self):
        self.q.compact()

    def disk_bytes(self):
        """'used' counts each WAL segment up to its last non-zero byte (a segment has its
        full size, but only a few MiB of zeros past its data are written: the rest is a
        hole), 'allocated' what the file system holds; 'by_kind' splits the allocated
        bytes into segments, the spare, snapshots and everything else."""
        from . import data_end, directory_bytes
        out = directory_bytes(self.directory)
        used = 0
        kinds = {"segments": 0, "spare": 0, "snapshots": 0, "other": 0}
        for root, _dirs, names in os.walk(self.directory):
            for n in names:
                path = os.path.join(root, n)
                try:
                    used += data_end(path) if n.endswith(".seg") else os.path.getsize(path)
                    blocks = os.stat(path).st_blocks * 512
                except FileNotFoundError:
                    continue
                kind = ("segments" if n.endswith(".seg") else
                        "spare" if n == "00000000000000000000.seg.tmp" else
                        "snapshots" if n.endswith(".snap") else "other")
                kinds[kind] += blocks
        out["used"] = used
        out["by_kind"] = kinds
        return out

    def describe(self):
        import aurora_log
        return {"version": getattr(aurora_log, "__version__", "?"),
                "durability": self.durability, "interval_ms": self.interval_ms,
                "shared": self.shared}
