"""The pure fold: transition records in, job table and heaps out. No I/O, no clock.

``State.apply(lsn, rtype, record)`` folds one record (``record`` is the payload bytes or the
decoded record from :mod:`aurora_log.records`). ``queue.py`` appends a record to the log and
applies the same record here, so replay on open and live operation run the same code.

The ``plan_*`` methods are the other half: given the state, the caller's arguments and a
``now_ms`` they decide what record an operation must write (or raise StaleLeaseError,
JobNotFoundError, InvalidStateError) without changing anything. Every clock-dependent
decision (lease deadline, next due time, the reaper's verdict) is thereby in the record.

Memory layout (the point: a pending job is not a Python object)
---------------------------------------------------------------
* ``jobs``: ``id -> bytes`` for a job that has only been enqueued (the common case: one
  compact blob, see ``_BLOB``, holding the enqueue LSN, times, limits, priority, unique key
  and the JSON payload), or ``id -> _Rec`` (a slotted object) once anything else happened to
  it. Dict order is enqueue order (replacing a value keeps its place), which ``list()`` uses.
* ready heaps, one per (queue, job_type) pair: ``(key, id)`` with
  ``key = (4 - priority) << 112 | due_ms << 64 | seq`` -- one int orders by priority desc,
  due time, then FIFO (``seq`` = LSN of the record that made the job pending).
* timer heap: ``(due_ms << 64 | seq, id)`` for jobs due in the future (scheduled, retry
  backoff), moved to a ready heap by ``promote(now_ms)``.
* lease heap ``(deadline_ms, id, token)`` and timeout heap ``(started + timeout, id, token)``.
* All heaps use lazy deletion: an entry is live only if the job still is in the state that
  pushed it (blob => the one enqueue episode; ``_Rec`` => status and ``seq``/token match).
* After a version-2 snapshot load (``from_split``) the snapshot's never-touched pending
  jobs are not in the heaps: ``_runs`` (per pair) and ``_trun`` (timers) walk them in key
  order straight from the snapshot content, beside the heaps, with the same liveness rule;
  and ``jobs`` is a ``_LazyJobs`` until something needs the whole dict (see that class).

Lease rule: a lease holds through its deadline; it is expired when ``now > deadline``.
Likewise a timeout fires when ``now > started + timeout``. A job is due when ``due <= now``.
"""

from __future__ import annotations

import heapq
import itertools
import json
import struct
from datetime import datetime
from typing import Any, Callable, Iterable, Iterator, NamedTuple

from . import records as R
from ..errors import InvalidStateError, JobNotFoundError, StaleLeaseError
from ..job import Job, JobPriority, JobStatus, decode_json, from_ms, retry_delay_ms
from .order import MAX_DUE_MS, _M64, _Run
from .table import (CANCELLED, COMPLETED, DEAD_LETTER, FAILED, PENDING, RUNNING, _BLOB,
                    _F_SCHED, _FINISHED, _LIVE, _WAITING, _Base, _LazyJobs, _Rec)

__all__ = ["State", "Transition", "EXPORT_VERSION"]

_STATUS = {s.code: s for s in JobStatus}
_PRIO = (None,) + tuple(JobPriority)
_ENQ_UNPACK = R._ENQ.unpack_from
_ENQ_SIZE = R._ENQ.size

EXPORT_VERSION = 1
_EXPORT_MAGIC = b"AQS\x01"


class Transition(NamedTuple):
    """One entry of ``history(id)``."""
    lsn: int
    kind: str                  # "enqueue", "claim", "heartbeat", "fail", "reap", ...
    at: datetime
    status: JobStatus          # the job's status after this transition
    worker: str | None         # the worker of the attempt, if any
    attempt: int               # 1 = first run, 2 = first retry, ...
    error: str | None          # the error, reap reason or note



class State:
    """The queue's state; see the module docstring."""

    def __init__(self) -> None:
        self.jobs: dict[str, bytes | _Rec] = {}
        self._pairs: list[tuple[str, str]] = []      # index -> (queue, job_type)
        self._pair_ix: dict[tuple[str, str], int] = {}
        self._ready: list[list] = []                 # index -> heap of (key, id)
        self._timers: list = []
        self._leases: list = []
        self._timeouts: list = []
        self._running: set[str] = set()
        self._unique: dict[str, str] = {}
        self._counts = [0] * 7                       # by status code
        self._qcounts: dict[str, list[int]] = {}
        self._pick_cache: dict = {}
        self._pair_raw: dict = {}                    # (len type, type+queue bytes) -> pair
        self.last_lsn = 0
        self.applied = 0
        self.anomalies: list[tuple[int, str]] = []   # records that did not apply (kept <= 100)
        # after a version-2 snapshot load: the snapshot's never-touched pending jobs in claim
        # order, per pair (ready) and for the timers (see _Run); empty otherwise
        self._runs: dict[int, _Run] = {}
        self._trun: _Run | None = None
        self._spills = 0

    # ------------------------------------------------------------------ small helpers

    def _count_pending_by_pair(self, counts) -> None:
        """Add counts[pair index] pending jobs to the totals (a bulk load's counters)."""
        for ix, c in enumerate(counts):
            if c:
                queue = self._pairs[ix][0]
                self._counts[PENDING] += c
                q = self._qcounts.get(queue)
                if q is None:
                    q = self._qcounts[queue] = [0] * 7
                q[PENDING] += c

    def _pair(self, queue: str, job_type: str) -> int:
        key = (queue, job_type)
        ix = self._pair_ix.get(key)
        if ix is None:
            ix = len(self._pairs)
            self._pairs.append(key)
            self._pair_ix[key] = ix
            self._ready.append([])
            self._pick_cache.clear()
        return ix

    def _count(self, queue: str, old: int, new: int) -> None:
        c = self._counts
        q = self._qcounts.get(queue)
        if q is None:
            q = self._qcounts[queue] = [0] * 7
        if old:
            c[old] -= 1
            q[old] -= 1
        if new:
            c[new] += 1
            q[new] += 1

    def _anomaly(self, lsn: int, why: str) -> None:
        if len(self.anomalies) < 100:
            self.anomalies.append((lsn, why))

    def _rec(self, job_id: str) -> _Rec | None:
        """The job as a _Rec, converting a blob (touching it) if needed."""
        v = self.jobs.get(job_id)
        if v is None or type(v) is _Rec:
            return v
        r = _Rec(v)
        self.jobs[job_id] = r
        return r

    def _live_entry(self, key: int, job_id: str) -> bool:
        v = self.jobs.get(job_id)
        if v is None:
            return False
        if type(v) is bytes:
            return True
        return v.status in _WAITING and v.seq == key & _M64

    def _schedule(self, job_id: str, blob: bytes, due: int, seq: int, at: int) -> None:
        """Put a waiting job into the timer heap, or straight into its ready heap when due
        is not after the transition's own time (due <= at)."""
        due = min(max(due, 0), MAX_DUE_MS)
        tkey = due << 64 | seq
        if due > at:
            heapq.heappush(self._timers, (tkey, job_id))
        else:
            h = _BLOB.unpack_from(blob)
            heapq.heappush(self._ready[h[7]], ((4 - h[8]) << 112 | tkey, job_id))

    @staticmethod
    def _queue_of(blob: bytes, pairs) -> str:
        return pairs[_BLOB.unpack_from(blob)[7]][0]

    def _set(self, job_id: str, r: _Rec, new: int) -> None:
        old = r.status
        if old == new:
            return
        h = _BLOB.unpack_from(r.blob)
        self._count(self._pairs[h[7]][0], old, new)
        r.status = new
        if old == RUNNING:
            self._running.discard(job_id)
        if new == RUNNING:
            self._running.add(job_id)
        if new in _FINISHED and h[10]:
            ukey = r.blob[_BLOB.size:_BLOB.size + h[10]].decode()
            if self._unique.get(ukey) == job_id:
                del self._unique[ukey]

    # ------------------------------------------------------------------ the fold

    def apply(self, lsn: int, rtype: int, rec: bytes | R.Record) -> None:
        """Fold one record. Records that do not apply (which the queue never writes) are
        skipped and noted in ``anomalies``; apply never raises for them."""
        if isinstance(rec, (bytes, bytearray, memoryview)):
            rec = R.decode(rtype, rec)
        if lsn > self.last_lsn:
            self.last_lsn = lsn
        self.applied += 1
        fn = _APPLY.get(rtype)
        if fn is None:
            self._anomaly(lsn, f"unknown record type {rtype}")
            return
        fn(self, lsn, rec)

    def apply_enqueue_bytes(self, lsn: int, data: bytes) -> int:
        """Replay's hot path: fold an ENQUEUE record straight from its bytes (the blob is
        built from the record's tail without decoding the payload or re-encoding strings).
        Same result as ``apply(lsn, ENQUEUE, data)``; any record the fast path does not
        like goes through the full decoder (which raises RecordError if it is malformed).
        Returns the record's at_ms."""
        if type(data) is not bytes or len(data) < _ENQ_SIZE:
            return self._apply_slow(lsn, data)
        (ver, flags, prio, maxr, created, at, sched, tmo, lease,
         li, lt, lq, lu, lp) = _ENQ_UNPACK(data)
        a = _ENQ_SIZE + li
        b = a + lt
        c = b + lq
        if (ver != 1 or flags & ~7 or not 1 <= prio <= 4 or not 0 < lease <= 0xFFFFFFFF
                or ((flags & 2) and not 0 < tmo <= 0xFFFFFFFF) or not li or not lt or not lq
                or bool(lu) != bool(flags & 4) or c + lu + lp != len(data)
                or data[c + lu:c + lu + 1] != b"{"):
            return self._apply_slow(lsn, data)
        key = (lt, data[a:c])        # job_type + queue bytes, split point included
        pair = self._pair_raw.get(key)
        try:
            job_id = data[_ENQ_SIZE:a].decode("utf-8")
            if pair is None:
                pair = self._pair(data[b:c].decode("utf-8"), data[a:b].decode("utf-8"))
                self._pair_raw[key] = pair
            ukey = data[c:c + lu].decode("utf-8") if lu else None
        except UnicodeDecodeError:
            return self._apply_slow(lsn, data)
        if lsn > self.last_lsn:
            self.last_lsn = lsn
        self.applied += 1
        jobs = self.jobs
        if job_id in jobs:
            self._anomaly(lsn, f"enqueue of existing job {job_id}")
            return at
        has_sched = flags & 1
        blob = _BLOB.pack(lsn, at, created, sched if has_sched else 0,
                          tmo if flags & 2 else 0, lease, maxr, pair, prio,
                          has_sched, lu) + data[c:]
        jobs[job_id] = blob
        self._counts[PENDING] += 1
        queue = self._pairs[pair][0]
        qc = self._qcounts.get(queue)
        if qc is None:
            qc = self._qcounts[queue] = [0] * 7
        qc[PENDING] += 1
        if ukey is not None and ukey not in self._unique:
            self._unique[ukey] = job_id
        due = at if not has_sched else min(max(sched, 0), MAX_DUE_MS)
        tkey = due << 64 | lsn
        if due > at:
            heapq.heappush(self._timers, (tkey, job_id))
        else:
            heapq.heappush(self._ready[pair], ((4 - prio) << 112 | tkey, job_id))
        return at

    def _apply_slow(self, lsn: int, data) -> int:
        rec = R.decode(R.ENQUEUE, data)
        self.apply(lsn, R.ENQUEUE, rec)
        return rec.at_ms

    def apply_many(self, first_lsn: int, records) -> None:
        """Fold decoded records ``[(rtype, record), ...]`` with consecutive LSNs from
        ``first_lsn`` (one append_many batch); the same as apply() for each."""
        lsn = first_lsn
        table = _APPLY
        for rtype, rec in records:
            fn = table.get(rtype)
            if fn is None:
                self._anomaly(lsn, f"unknown record type {rtype}")
            else:
                fn(self, lsn, rec)
            lsn += 1
        self.applied += len(records)
        if lsn - 1 > self.last_lsn:
            self.last_lsn = lsn - 1

    def _apply_enqueue(self, lsn: int, e: R.Enqueue) -> None:
        jobs = self.jobs
        job_id = e.id
        if job_id in jobs:
            self._anomaly(lsn, f"enqueue of existing job {job_id}")
            return
        pair = self._pair_ix.get((e.queue, e.job_type))
        if pair is None:
            pair = self._pair(e.queue, e.job_type)
        ukey = e.unique_key
        u = ukey.encode() if ukey is not None else b""
        sched = e.scheduled_ms
        at = e.at_ms
        blob = _BLOB.pack(lsn, at, e.created_ms, sched or 0, e.timeout_ms or 0,
                          e.lease_ms, e.max_retries, pair, e.priority,
                          _F_SCHED if sched is not None else 0, len(u)) + u + e.payload
        jobs[job_id] = blob
        self._counts[PENDING] += 1
        qc = self._qcounts.get(e.queue)
        if qc is None:
            qc = self._qcounts[e.queue] = [0] * 7
        qc[PENDING] += 1
        if ukey is not None and ukey not in self._unique:
            self._unique[ukey] = job_id
        due = at if sched is None else min(max(sched, 0), MAX_DUE_MS)
        tkey = due << 64 | lsn
        if due > at:
            heapq.heappush(self._timers, (tkey, job_id))
        else:
            heapq.heappush(self._ready[pair], ((4 - e.priority) << 112 | tkey, job_id))

    def _running_rec(self, lsn: int, rec, what: str) -> _Rec | None:
        r = self.jobs.get(rec.id)
        if type(r) is not _Rec or r.status != RUNNING or r.token != rec.token:
            self._anomaly(lsn, f"{what} of {rec.id}: not running under that token")
            return None
        return r

    def _apply_claim(self, lsn: int, c: R.Claim) -> None:
        r = self._rec(c.id)
        if r is None or r.status not in _WAITING:
            self._anomaly(lsn, f"claim of {c.id}: not waiting")
            return
        self._set(c.id, r, RUNNING)
        r.token = c.token
        r.worker = c.worker
        r.started = r.hb = c.at_ms
        r.lease_dl = c.lease_deadline_ms
        r.progress = r.pmsg = None
        r.cancel_req = False
        r.hist.append((lsn, R.CLAIM, c.at_ms, RUNNING, c.worker, r.retry + 1, None))
        heapq.heappush(self._leases, (c.lease_deadline_ms, c.id, c.token))
        timeout = _BLOB.unpack_from(r.blob)[4]
        if timeout:
            heapq.heappush(self._timeouts, (c.at_ms + timeout, c.id, c.token))

    def _apply_heartbeat(self, lsn: int, h: R.Heartbeat) -> None:
        r = self._running_rec(lsn, h, "heartbeat")
        if r is None:
            return
        r.hb = h.at_ms
        if h.lease_deadline_ms != r.lease_dl:
            r.lease_dl = h.lease_deadline_ms
            heapq.heappush(self._leases, (h.lease_deadline_ms, h.id, h.token))

    def _apply_progress(self, lsn: int, p: R.Progress) -> None:
        r = self._running_rec(lsn, p, "progress")
        if r is None:
            return
        r.hb = p.at_ms
        r.progress = p.fraction
        r.pmsg = p.message
        # history shows the attempt's latest progress, not every report (a handler may report
        # thousands of times): a progress entry right after another one replaces it
        note = f"{p.fraction:.0%}" + (f" {p.message}" if p.message else "")
        entry = (lsn, R.PROGRESS, p.at_ms, RUNNING, r.worker, r.retry + 1, note)
        if r.hist and r.hist[-1][1] == R.PROGRESS:
            r.hist[-1] = entry
        else:
            r.hist.append(entry)

    def _finish_attempt(self, r: _Rec) -> None:
        r.token = None
        r.lease_dl = 0

    def _apply_complete(self, lsn: int, c: R.Complete) -> None:
        r = self._running_rec(lsn, c, "complete")
        if r is None:
            return
        self._set(c.id, r, COMPLETED)
        self._finish_attempt(r)
        r.completed = c.at_ms
        r.result = c.result
        r.error = None
        r.hist.append((lsn, R.COMPLETE, c.at_ms, COMPLETED, r.worker, r.retry + 1, None))

    def _after_attempt(self, lsn: int, job_id: str, r: _Rec, outcome: int, at: int, due: int,
                       retry_status: int, rtype: int, note: str) -> None:
        attempt = r.retry + 1
        self._finish_attempt(r)
        if outcome == R.OUTCOME_RETRY:
            r.retry += 1
            r.seq = lsn
            r.due = due
            self._set(job_id, r, retry_status)
            self._schedule(job_id, r.blob, due, lsn, at)
        else:
            r.completed = at
            self._set(job_id, r, DEAD_LETTER if outcome == R.OUTCOME_DEAD else CANCELLED)
        r.hist.append((lsn, rtype, at, r.status, r.worker, attempt, note))

    def _apply_fail(self, lsn: int, f: R.Fail) -> None:
        r = self._running_rec(lsn, f, "fail")
        if r is None:
            return
        r.error = f.error
        self._after_attempt(lsn, f.id, r, f.outcome, f.at_ms, f.next_due_ms, FAILED, R.FAIL,
                            f.error)

    def _apply_reap(self, lsn: int, p: R.Reap) -> None:
        r = self._running_rec(lsn, p, "reap")
        if r is None:
            return
        reason = R.REASON_TEXT[p.reason]
        r.error = reason
        self._after_attempt(lsn, p.id, r, p.outcome, p.at_ms, p.next_due_ms, PENDING, R.REAP,
                            reason)

    def _apply_cancel(self, lsn: int, c: R.Cancel) -> None:
        r = self._rec(c.id)
        if r is None or r.status not in _WAITING:
            self._anomaly(lsn, f"cancel of {c.id}: not waiting")
            return
        self._set(c.id, r, CANCELLED)
        r.completed = c.at_ms
        r.hist.append((lsn, R.CANCEL, c.at_ms, CANCELLED, None, r.retry + 1, None))

    def _apply_cancel_request(self, lsn: int, c: R.CancelRequest) -> None:
        r = self.jobs.get(c.id)
        if type(r) is not _Rec or r.status != RUNNING:
            self._anomaly(lsn, f"cancel request of {c.id}: not running")
            return
        r.cancel_req = True
        r.hist.append((lsn, R.CANCEL_REQUEST, c.at_ms, RUNNING, r.worker, r.retry + 1, None))

    def _apply_retry_dead(self, lsn: int, c: R.RetryDead) -> None:
        r = self.jobs.get(c.id)
        if type(r) is not _Rec or r.status != DEAD_LETTER:
            self._anomaly(lsn, f"retry_dead of {c.id}: not dead-lettered")
            return
        r.retry = 0
        r.seq = lsn
        r.due = 0
        r.completed = 0
        r.cancel_req = False
        self._set(c.id, r, PENDING)
        ukey = self._ukey(r.blob)
        if ukey is not None and ukey not in self._unique:
            self._unique[ukey] = c.id
        self._schedule(c.id, r.blob, c.at_ms, lsn, c.at_ms)
        r.hist.append((lsn, R.RETRY_DEAD, c.at_ms, PENDING, None, 1, None))

    def _apply_purge(self, lsn: int, p: R.Purge) -> None:
        for job_id in p.ids:
            r = self.jobs.get(job_id)
            if type(r) is not _Rec or r.status not in _FINISHED:
                self._anomaly(lsn, f"purge of {job_id}: not finished")
                continue
            self._count(self._queue_of(r.blob, self._pairs), r.status, 0)
            del self.jobs[job_id]

    @staticmethod
    def _ukey(blob: bytes) -> str | None:
        n = _BLOB.unpack_from(blob)[10]
        return blob[_BLOB.size:_BLOB.size + n].decode() if n else None

    # ------------------------------------------------------------------ time-driven reads

    def promote(self, now_ms: int) -> int:
        """Move timer entries that are due (due <= now) into their ready heaps."""
        timers = self._timers
        n = 0
        limit = (now_ms + 1) << 64
        trun = self._trun
        while True:
            head = self._run_head(trun) if trun is not None else None
            if timers and timers[0][0] < limit and (head is None or timers[0][0] < head[0]):
                tkey, job_id = heapq.heappop(timers)
                if not self._live_entry(tkey, job_id):
                    continue
            elif head is not None and head[0] < limit:
                tkey, job_id = head
                trun.head = None                  # consumed: it moves to a ready heap
            else:
                break
            v = self.jobs[job_id]
            h = _BLOB.unpack_from(v if type(v) is bytes else v.blob)
            heapq.heappush(self._ready[h[7]], ((4 - h[8]) << 112 | tkey, job_id))
            n += 1
        return n

    def next_due_ms(self) -> int | None:
        """The due time of the earliest scheduled job or retry (None if none)."""
        # the run first: one that has to be spilled goes into the heap below
        head = self._run_head(self._trun) if self._trun is not None else None
        timers = self._timers
        while timers and not self._live_entry(timers[0][0], timers[0][1]):
            heapq.heappop(timers)
        best = timers[0][0] if timers else None
        if head is not None and (best is None or head[0] < best):
            best = head[0]
        return (best >> 64) if best is not None else None

    def _candidates(self, queues, job_types) -> list[int]:
        ck = (queues, job_types)
        c = self._pick_cache.get(ck)
        if c is None:
            c = [i for i, (q, t) in enumerate(self._pairs)
                 if (queues is None or q in queues) and (job_types is None or t in job_types)]
            if len(self._pick_cache) > 256:
                self._pick_cache.clear()
            self._pick_cache[ck] = c
        return c

    def pick(self, now_ms: int, queues: frozenset | None = None,
             job_types: frozenset | None = None) -> str | None:
        """The id of the best due job (priority desc, due time, FIFO), or None. Changes
        nothing observable (promotes due timers and drops dead heap entries)."""
        spills = self._spills
        self.promote(now_ms)
        best = None
        best_id = None
        ready = self._ready
        runs = self._runs
        for ix in self._candidates(queues, job_types):
            if runs:        # first: a run that has to be spilled goes into the heap below
                run = runs.get(ix)
                if run is not None:
                    head = self._run_head(run)
                    if head is not None and (best is None or head[0] < best):
                        best, best_id = head
            heap = ready[ix]
            while heap:
                key, job_id = heap[0]
                if self._live_entry(key, job_id):
                    if best is None or key < best:
                        best, best_id = key, job_id
                    break
                heapq.heappop(heap)
        if self._spills != spills:
            return self.pick(now_ms, queues, job_types)     # the runs are heaps now: again
        return best_id

    # ------------------------------------------------------------------ snapshot runs

    def _run_head(self, run: "_Run"):
        """(key, id) of the first live entry of a snapshot run, or None when it is spent.
        Dead entries (claimed, cancelled, re-queued under a new seq, purged) are skipped,
        as a heap drops its stale entries. Each entry's key is computed from the job's own
        blob (the truth); the run only supplies the order. An entry that does not belong
        in this run, or comes out of key order, means the writer broke its contract: the
        rest of the run is pushed into the ordinary heaps (so every job stays claimable in
        the right order from here on) and the event is noted in ``anomalies``."""
        while True:
            head = run.head
            if head is not None:
                if self._live_entry(head[0], head[1]):
                    return head
                run.head = None
            k = next(run.ranks, None)
            if k is None:
                self._drop_run(run)
                return None
            jobs = self.jobs
            base = run.base
            job_id = base.id(k)
            if type(jobs) is _LazyJobs:
                jobs.note(job_id, k)
            v = jobs.get(job_id)
            if v is None:
                continue                          # purged since
            lsn, at, _, sched, _, _, _, pair, prio, flags, _ = _BLOB.unpack_from(
                v if type(v) is bytes else v.blob)
            due = sched if flags & _F_SCHED else at
            if due < 0 or due > MAX_DUE_MS:
                due = 0 if due < 0 else MAX_DUE_MS
            if run.pair is None:
                key = due << 64 | lsn
                fits = due > at
            else:
                key = (4 - prio) << 112 | due << 64 | lsn
                fits = due <= at and pair == run.pair
            if not fits or key < run.last:
                self._spill(run, k)
                return None
            run.last = key
            run.head = (key, job_id)

    def _drop_run(self, run: "_Run") -> None:
        if run.pair is None:
            self._trun = None
        else:
            self._runs.pop(run.pair, None)

    def _spill(self, run: "_Run", first: int) -> None:
        """A run broke its contract: none of them is trusted any more. Move what is left
        of every run (from rank ``first`` in ``run``) into the heaps, each entry placed
        from its own blob exactly as from_export places a pending job."""
        self._anomaly(self.last_lsn, f"snapshot {run.base.where}: claim-order run "
                      f"{'timers' if run.pair is None else run.pair} is not in key order or "
                      f"holds a job that does not belong to it (rank {first}); every run "
                      "rebuilt as a heap")
        self._spills += 1
        rest = [(r, ()) for r in self._runs.values() if r is not run]
        if self._trun is not None and self._trun is not run:
            rest.append((self._trun, ()))
        rest.append((run, (first,)))
        self._runs = {}
        self._trun = None
        jobs = self.jobs
        for r, extra in rest:
            if r.head is not None:
                key, job_id = r.head
                heapq.heappush(self._timers if r.pair is None else self._ready[r.pair],
                               (key, job_id))
                r.head = None
            for k in itertools.chain(extra, r.ranks):
                job_id = r.base.id(k)
                if type(jobs) is _LazyJobs:
                    jobs.note(job_id, k)
                v = jobs.get(job_id)
                if v is None:
                    continue
                blob = v if type(v) is bytes else v.blob
                h = _BLOB.unpack_from(blob)
                self._schedule(job_id, blob, h[3] if h[9] & _F_SCHED else h[1], h[0], h[1])

    def materialize(self) -> None:
        """Turn a lazily loaded job table (after a version-2 snapshot) into a plain dict now.
        Every operation that needs it does this by itself; this is for callers that want
        the cost paid at a time of their choosing."""
        if type(self.jobs) is _LazyJobs:
            self.jobs.materialize()

    # ------------------------------------------------------------------ planners

    def _get_running(self, job_id: str, token: bytes) -> _Rec:
        v = self.jobs.get(job_id)
        if v is None:
            raise JobNotFoundError(f"no job with id {job_id!r}")
        if type(v) is not _Rec or v.status != RUNNING or v.token != token:
            status = _STATUS[PENDING if type(v) is bytes else v.status]
            raise StaleLeaseError(f"job {job_id} is {status.value}; the attempt token "
                                  "does not hold its lease")
        return v

    def plan_claim(self, job_id: str, now_ms: int, token: bytes, worker: str) -> R.Claim:
        v = self.jobs[job_id]
        lease = _BLOB.unpack_from(v if type(v) is bytes else v.blob)[5]
        return R.Claim(job_id, now_ms, token, now_ms + lease, worker)

    def plan_heartbeat(self, job_id: str, token: bytes, now_ms: int) -> R.Heartbeat:
        r = self._get_running(job_id, token)
        lease = _BLOB.unpack_from(r.blob)[5]
        return R.Heartbeat(job_id, now_ms, token, max(now_ms + lease, r.lease_dl))

    def cancel_requested(self, job_id: str) -> bool:
        v = self.jobs.get(job_id)
        return type(v) is _Rec and v.cancel_req

    def plan_progress(self, job_id: str, token: bytes, now_ms: int, fraction: float,
                      message: str | None) -> R.Progress:
        self._get_running(job_id, token)
        return R.Progress(job_id, now_ms, token, fraction, message)

    def plan_complete(self, job_id: str, token: bytes, now_ms: int,
                      result: bytes | None) -> R.Complete:
        self._get_running(job_id, token)
        return R.Complete(job_id, now_ms, token, result)

    def _verdict(self, r: _Rec, now_ms: int, delay: Callable[[int], int]) -> tuple[int, int]:
        if r.cancel_req:
            return R.OUTCOME_CANCELLED, 0
        max_retries = _BLOB.unpack_from(r.blob)[6]
        if r.retry < max_retries:
            return R.OUTCOME_RETRY, min(now_ms + delay(r.retry), MAX_DUE_MS)
        return R.OUTCOME_DEAD, 0

    def plan_fail(self, job_id: str, token: bytes, now_ms: int, error: str,
                  delay: Callable[[int], int] = retry_delay_ms) -> R.Fail:
        """``delay(retry_count) -> ms`` is the backoff (the queue passes its configured one)."""
        r = self._get_running(job_id, token)
        outcome, due = self._verdict(r, now_ms, delay)
        return R.Fail(job_id, now_ms, token, outcome, due, error)

    def plan_reap(self, now_ms: int, delay: Callable[[int], int] = retry_delay_ms,
                  limit: int = 10_000) -> list[R.Reap]:
        """Reap records for leases expired (now > deadline) and running jobs past their
        timeout (now > started + timeout). Changes nothing observable."""
        out: list[R.Reap] = []
        seen: set[str] = set()
        for heap, reason in ((self._timeouts, R.REASON_TIMEOUT),
                             (self._leases, R.REASON_LEASE_EXPIRED)):
            keep = []
            while heap and heap[0][0] < now_ms and len(out) < limit:
                entry = heapq.heappop(heap)
                deadline, job_id, token = entry
                r = self.jobs.get(job_id)
                if type(r) is not _Rec or r.status != RUNNING or r.token != token:
                    continue                      # stale entry: drop it
                if reason == R.REASON_LEASE_EXPIRED and r.lease_dl != deadline:
                    continue                      # superseded by a heartbeat
                keep.append(entry)                # live until the reap record is applied
                if job_id in seen:
                    continue
                seen.add(job_id)
                outcome, due = self._verdict(r, now_ms, delay)
                out.append(R.Reap(job_id, now_ms, token, reason, outcome, due))
            for entry in keep:
                heapq.heappush(heap, entry)
        return out

    def plan_recover(self, now_ms: int, delay: Callable[[int], int] = retry_delay_ms) -> list[R.Reap]:
        """On open: every job left RUNNING by a dead process, as a "process died" reap."""
        out = []
        for job_id in sorted(self._running, key=lambda i: (self.jobs[i].started, i)):
            r = self.jobs[job_id]
            outcome, due = self._verdict(r, now_ms, delay)
            out.append(R.Reap(job_id, now_ms, r.token, R.REASON_PROCESS_DIED, outcome, due))
        return out

    def plan_cancel(self, job_id: str, now_ms: int) -> R.Cancel | R.CancelRequest | None:
        """CANCEL for a waiting job, CANCEL_REQUEST for a running one (None if already
        requested); InvalidStateError for a finished job."""
        v = self.jobs.get(job_id)
        if v is None:
            raise JobNotFoundError(f"no job with id {job_id!r}")
        status = PENDING if type(v) is bytes else v.status
        if status in _WAITING:
            return R.Cancel(job_id, now_ms)
        if status == RUNNING:
            return None if v.cancel_req else R.CancelRequest(job_id, now_ms)
        raise InvalidStateError(f"job {job_id} is {_STATUS[status].value}; only pending, "
                                "scheduled, failed or running jobs can be cancelled")

    def plan_retry_dead(self, job_id: str, now_ms: int) -> R.RetryDead:
        v = self.jobs.get(job_id)
        if v is None:
            raise JobNotFoundError(f"no job with id {job_id!r}")
        status = PENDING if type(v) is bytes else v.status
        if status != DEAD_LETTER:
            raise InvalidStateError(f"job {job_id} is {_STATUS[status].value}, not dead_letter")
        ukey = self._ukey(v.blob)
        if ukey is not None and ukey in self._unique:
            raise InvalidStateError(f"job {self._unique[ukey]} with the same unique_key "
                                    f"{ukey!r} is live; cannot re-drive {job_id}")
        return R.RetryDead(job_id, now_ms)

    def plan_purge(self, before_ms: int, now_ms: int, statuses=_FINISHED,
                   limit: int = 100_000) -> R.Purge | None:
        """PURGE of finished jobs (of ``statuses``) that finished before ``before_ms``."""
        ids = []
        statuses = tuple(s for s in statuses if s in _FINISHED)
        for job_id, v in self.jobs.items():
            if type(v) is _Rec and v.status in statuses and v.completed < before_ms:
                ids.append(job_id)
                if len(ids) >= limit:
                    break
        return R.Purge(now_ms, tuple(ids)) if ids else None

    # ------------------------------------------------------------------ queries

    def __contains__(self, job_id: str) -> bool:
        return job_id in self.jobs

    def __len__(self) -> int:
        return len(self.jobs)

    def unique_owner(self, key: str) -> str | None:
        """The id of the live job holding unique_key ``key``."""
        return self._unique.get(key)

    def status_of(self, job_id: str) -> JobStatus | None:
        v = self.jobs.get(job_id)
        if v is None:
            return None
        return JobStatus.PENDING if type(v) is bytes else _STATUS[v.status]

    def running_ids(self) -> set[str]:
        return set(self._running)

    def get(self, job_id: str) -> Job | None:
        v = self.jobs.get(job_id)
        return None if v is None else self._materialise(job_id, v)

    def _materialise(self, job_id: str, v) -> Job:
        blob = v if type(v) is bytes else v.blob
        (lsn, at, created, sched, timeout, lease, max_retries, pair, prio, flags,
         lu) = _BLOB.unpack_from(blob)
        queue, job_type = self._pairs[pair]
        j = Job._raw()
        j.id = job_id
        j.job_type = job_type
        j.queue = queue
        pos = _BLOB.size + lu
        j.unique_key = blob[_BLOB.size:pos].decode() if lu else None
        try:
            j.payload = decode_json(blob[pos:])
        except ValueError:   # JSONDecodeError / UnicodeDecodeError: only a bug can store it
            raise R.RecordError(f"job {job_id}: its stored payload is not valid JSON "
                                f"(enqueued at LSN {lsn})") from None
        j.priority = _PRIO[prio]
        j.max_retries = max_retries
        j.created_at = from_ms(created)
        j.timeout_seconds = _secs(timeout) if timeout else None
        j.lease_duration = _secs(lease)
        if type(v) is bytes:
            j.status = JobStatus.PENDING
            j.retry_count = 0
            j.scheduled_at = from_ms(sched) if flags & _F_SCHED else None
            j.started_at = j.completed_at = j.last_heartbeat = None
            j.token = j.lease_deadline = j.worker_id = j.error = j.result = None
            j.progress = j.progress_message = None
            j.cancel_requested = False
            return j
        j.status = _STATUS[v.status]
        j.retry_count = v.retry
        j.scheduled_at = from_ms(v.due) if v.due else None
        j.started_at = started = from_ms(v.started) if v.started else None
        j.completed_at = from_ms(v.completed) if v.completed and v.status in _FINISHED else None
        j.last_heartbeat = (started if v.hb == v.started else from_ms(v.hb)) if v.hb else None
        running = v.status == RUNNING
        j.token = v.token.hex() if running else None
        j.lease_deadline = from_ms(v.lease_dl) if running else None
        j.worker_id = v.worker
        j.error = v.error
        j.result = decode_json(v.result) if v.result is not None else None
        j.progress = v.progress
        j.progress_message = v.pmsg
        j.cancel_requested = v.cancel_req
        return j

    def iter_ids(self, *, status: JobStatus | None = None, queue: str | None = None,
                 job_type: str | None = None, after: str | None = None) -> Iterator[str]:
        """Job ids in enqueue order, filtered."""
        code = status.code if status is not None else None
        pairs = None
        if queue is not None or job_type is not None:
            pairs = {i for i, (q, t) in enumerate(self._pairs)
                     if (queue is None or q == queue) and (job_type is None or t == job_type)}
            if not pairs:
                return
        it = iter(self.jobs.items())
        if after is not None:
            if after not in self.jobs:
                raise JobNotFoundError(f"no job with id {after!r} (the 'after' cursor)")
            for job_id, _ in it:
                if job_id == after:
                    break
        for job_id, v in it:
            if type(v) is bytes:
                if code is not None and code != PENDING:
                    continue
                if pairs is not None and _BLOB.unpack_from(v)[7] not in pairs:
                    continue
            else:
                if code is not None and v.status != code:
                    continue
                if pairs is not None and _BLOB.unpack_from(v.blob)[7] not in pairs:
                    continue
            yield job_id

    def list(self, *, status=None, queue=None, job_type=None, limit=100, after=None) -> list[Job]:
        out = []
        for job_id in self.iter_ids(status=status, queue=queue, job_type=job_type, after=after):
            if len(out) >= limit:
                break
            out.append(self._materialise(job_id, self.jobs[job_id]))
        return out

    def stats(self) -> dict[str, Any]:
        """Counts per status (the seed's names), in total and per queue."""
        def block(c):
            d = {s.value: c[s.code] for s in JobStatus}
            d["total"] = sum(c)
            return d
        out = block(self._counts)
        out["queues"] = {q: block(c) for q, c in sorted(self._qcounts.items()) if sum(c)}
        return out

    def history(self, job_id: str) -> list[Transition]:
        v = self.jobs.get(job_id)
        if v is None:
            raise JobNotFoundError(f"no job with id {job_id!r}")
        if type(v) is bytes:
            h = _BLOB.unpack_from(v)
            hist = [(h[0], R.ENQUEUE, h[1], PENDING, None, 1, None)]
        else:
            hist = v.hist
        return [Transition(lsn, R.RECORD_NAMES[rt], from_ms(at), _STATUS[st], w, a, note)
                for lsn, rt, at, st, w, a, note in hist]

    def fingerprint(self) -> tuple:
        """Everything observable, for tests: equal fingerprints = equal states."""
        jobs = tuple((i, self._materialise(i, v).to_dict(), tuple(self.history(i)))
                     for i, v in self.jobs.items())
        return (jobs, self.stats(), tuple(sorted(self._unique.items())), self.last_lsn)

    # ------------------------------------------------------------------ snapshot support

    def export(self) -> Iterator[bytes]:
        """The live contents as a sequence of byte strings (a header, then one item per job).
        ``State.from_export(items)`` rebuilds an equal state (heaps included). The items are
        self-describing and versioned; the snapshot layer frames and compresses them."""
        header = {"v": EXPORT_VERSION, "last_lsn": self.last_lsn, "applied": self.applied,
                  "pairs": [list(p) for p in self._pairs], "jobs": len(self.jobs)}
        yield _EXPORT_MAGIC + json.dumps(header, separators=(",", ":")).encode()
        for job_id, v in self.jobs.items():
            if type(v) is bytes:
                i = job_id.encode()
                yield b"B" + struct.pack("<H", len(i)) + i + v
            else:
                yield _export_rec(job_id, v)

    def export_split(self, on_progress: Callable[[int], None] | None = None,
                     every: int = 50_000) -> dict:
        """The live contents split the way a version-2 snapshot stores them (see
        native/FORMAT.md): the never-touched pending jobs ("base": ids and blobs in state
        order, plus claim-order runs of their ranks), and every other job as an export
        item ("rest", with ``rest_pos`` = how many base jobs come before each). Runs are
        lists of ``(first_rank, count)`` segments: one per pair (ready jobs in heap-key
        order), then one for the timer jobs (due after their enqueue, in timer-key order).
        ``State.from_split`` rebuilds a state equal to ``from_export(export())``."""
        ids: list[str] = []
        blobs: list[bytes] = []
        rest: list[bytes] = []
        rest_pos: list[int] = []
        npairs = len(self._pairs)
        ready: list[list] = [[] for _ in range(npairs)]
        timers: list = []
        unpack = _BLOB.unpack_from
        n = 0
        for job_id, v in self.jobs.items():
            n += 1
            if on_progress is not None and n % every == 0:
                on_progress(n)
            if type(v) is not bytes:
                rest.append(_export_rec(job_id, v))
                rest_pos.append(len(ids))
                continue
            lsn, at, _, sched, _, _, _, pair, prio, flags, _ = unpack(v)
            due = sched if flags & _F_SCHED else at
            if due < 0 or due > MAX_DUE_MS:
                due = 0 if due < 0 else MAX_DUE_MS
            # key << 32 | rank: one int per job (ints are not tracked by the cyclic GC; a
            # million tuples would set off full collections in the middle of compaction)
            rank = len(ids)
            if due > at:
                timers.append((due << 64 | lsn) << 32 | rank)
            else:
                ready[pair].append(((4 - prio) << 112 | due << 64 | lsn) << 32 | rank)
            ids.append(job_id)
            blobs.append(v)
        runs = [_segments(r) for r in ready]
        runs.append(_segments(timers))
        meta = {"last_lsn": self.last_lsn, "applied": self.applied,
                "pairs": [list(p) for p in self._pairs]}
        return {"meta": meta, "ids": ids, "blobs": blobs, "rest": rest, "rest_pos": rest_pos,
                "runs": runs}

    @classmethod
    def from_split(cls, meta: dict, base: _Base, rest: list, rest_pos: list[int],
                   runs: list, pair_counts: list[int], ukeys: list) -> "State":
        """The state of a version-2 snapshot, lazily: the base jobs stay in ``base`` (no
        object per job), the rest are imported as by from_export. The caller (snapshot.py)
        has checked the byte-level structure: every rank in exactly one run, ``pair_counts``
        = base jobs per pair, ``ukeys`` = [(rank, unique_key)] of base jobs that have one,
        ``rest_pos`` non-decreasing and <= base.n. ValueError if the items are malformed."""
        s = cls()
        try:
            for q, t in meta["pairs"]:
                s._pair(q, t)
            s.last_lsn = meta["last_lsn"]
            s.applied = meta["applied"]
            over: dict = {}
            s.jobs = over
            rest_ids = []
            for item in rest:
                if item[:1] != b"R":
                    raise ValueError(f"unknown state export item kind {item[:1]!r}")
                li, lb = struct.unpack_from("<HI", item, 1)
                job_id = item[7:7 + li].decode()
                if job_id in over:
                    raise ValueError(f"job {job_id} is stored twice")
                blob = bytes(item[7 + li:7 + li + lb])
                s._import_job(job_id, blob, json.loads(item[7 + li + lb:]))
                rest_ids.append(job_id)
        except (KeyError, IndexError, TypeError, struct.error, UnicodeDecodeError,
                json.JSONDecodeError) as e:
            raise ValueError(f"malformed state export: {type(e).__name__}: {e}") from None
        if len(runs) != len(s._pairs) + 1 or len(pair_counts) != len(s._pairs):
            raise ValueError("snapshot runs do not match the pairs")
        if ukeys:
            # the holder of a unique key is the first live job with it in state order, as
            # from_export's setdefault in item order
            order = [(rank, 1, 0, u, base.id(rank)) for rank, u in ukeys]
            for j, (job_id, p) in enumerate(zip(rest_ids, rest_pos)):
                r = over[job_id]
                u = s._ukey(r.blob)
                if u is not None and r.status in _LIVE:
                    order.append((p, 0, j, u, job_id))
            order.sort()
            s._unique = {}
            for _, _, _, u, job_id in order:
                s._unique.setdefault(u, job_id)
        s._count_pending_by_pair(pair_counts)
        s.jobs = _LazyJobs(s, base, over, rest_pos)
        s._runs = {ix: _Run(base, ix, segs) for ix, segs in enumerate(runs[:-1]) if segs}
        s._trun = _Run(base, None, runs[-1]) if runs[-1] else None
        return s

    @classmethod
    def from_export(cls, items: Iterable[bytes]) -> "State":
        """Rebuild a State from ``export()``'s items. ValueError if they are malformed."""
        it = iter(items)
        try:
            head = next(it)
        except StopIteration:
            raise ValueError("empty state export") from None
        if not head.startswith(_EXPORT_MAGIC):
            raise ValueError("not a state export (bad magic)")
        try:
            h = json.loads(head[len(_EXPORT_MAGIC):])
            if h["v"] != EXPORT_VERSION:
                raise ValueError(f"unknown state export version {h['v']}")
            s = cls()
            for q, t in h["pairs"]:
                s._pair(q, t)
            s.last_lsn = h["last_lsn"]
            s.applied = h["applied"]
            n = 0
            # Bulk path for never-touched jobs (blobs, the common case at scale): their heap
            # entries are collected and heapified once, counts added once per pair. Same
            # result as _import_job(job_id, blob, None) per item (issue 4: reopen time).
            jobs, unique = s.jobs, s._unique
            unpack = _BLOB.unpack_from
            pend = [0] * len(s._pairs)
            ready_add: list[list] = [[] for _ in s._pairs]
            timers_add = []
            for item in it:
                n += 1
                kind = item[:1]
                if kind == b"B":
                    li = item[1] | item[2] << 8
                    job_id = item[3:3 + li].decode()
                    blob = bytes(item[3 + li:])
                    lsn, at, _, sched, _, _, _, pair, prio, flags, lu = unpack(blob)
                    if not 1 <= prio <= 4:
                        raise ValueError(f"malformed state export item for job {job_id}")
                    pend[pair] += 1
                    jobs[job_id] = blob
                    if lu:
                        unique.setdefault(blob[_BLOB.size:_BLOB.size + lu].decode(), job_id)
                    due = sched if flags & _F_SCHED else at
                    if due < 0 or due > MAX_DUE_MS:
                        due = 0 if due < 0 else MAX_DUE_MS
                    if due > at:
                        timers_add.append((due << 64 | lsn, job_id))
                    else:
                        ready_add[pair].append(((4 - prio) << 112 | due << 64 | lsn, job_id))
                elif kind == b"R":
                    li, lb = struct.unpack_from("<HI", item, 1)
                    job_id = item[7:7 + li].decode()
                    blob = bytes(item[7 + li:7 + li + lb])
                    s._import_job(job_id, blob, json.loads(item[7 + li + lb:]))
                else:
                    raise ValueError(f"unknown state export item kind {kind!r}")
            if n != h["jobs"]:
                raise ValueError(f"state export has {n} jobs, its header says {h['jobs']}")
            for ix, add in enumerate(ready_add):
                if add:
                    heap = s._ready[ix]
                    heap.extend(add)
                    heapq.heapify(heap)
            if timers_add:
                s._timers.extend(timers_add)
                heapq.heapify(s._timers)
            s._count_pending_by_pair(pend)
            return s
        except (KeyError, IndexError, TypeError, struct.error, UnicodeDecodeError,
                json.JSONDecodeError) as e:
            raise ValueError(f"malformed state export: {type(e).__name__}: {e}") from None

    def _import_job(self, job_id: str, blob: bytes, meta: list | None) -> None:
        h = _BLOB.unpack_from(blob)
        if h[7] >= len(self._pairs) or not 1 <= h[8] <= 4:
            raise ValueError(f"malformed state export item for job {job_id}")
        queue = self._pairs[h[7]][0]
        ukey = self._ukey(blob)
        if meta is None:
            self.jobs[job_id] = blob
            self._count(queue, 0, PENDING)
            if ukey is not None:
                self._unique.setdefault(ukey, job_id)
            self._schedule(job_id, blob, h[3] if h[9] & _F_SCHED else h[1], h[0], h[1])
            return
        r = _Rec(blob)
        (r.status, r.retry, r.seq, r.due, token, r.worker, r.lease_dl, r.started, r.hb,
         r.completed, r.error, result, r.progress, r.pmsg, r.cancel_req, hist) = meta
        if r.status not in _STATUS:
            raise ValueError(f"malformed state export item for job {job_id}")
        r.token = bytes.fromhex(token) if token else None
        r.result = result.encode() if result is not None else None
        r.hist = [tuple(e) for e in hist]
        self.jobs[job_id] = r
        self._count(queue, 0, r.status)
        if ukey is not None and r.status in _LIVE:
            self._unique.setdefault(ukey, job_id)
        if r.status in _WAITING:
            # the ready/timer split is recomputed by promote(); `at` = the last transition
            at = r.hist[-1][2] if r.hist else h[1]
            due = r.due if r.due else (h[3] if h[9] & _F_SCHED and r.seq == h[0] else at)
            self._schedule(job_id, blob, due, r.seq, at)
        elif r.status == RUNNING:
            self._running.add(job_id)
            heapq.heappush(self._leases, (r.lease_dl, job_id, r.token))
            if h[4]:
                heapq.heappush(self._timeouts, (r.started + h[4], job_id, r.token))


def _export_rec(job_id: str, v: _Rec) -> bytes:
    i = job_id.encode()
    meta = json.dumps([
        v.status, v.retry, v.seq, v.due, v.token.hex() if v.token else None,
        v.worker, v.lease_dl, v.started, v.hb, v.completed, v.error,
        v.result.decode() if v.result is not None else None, v.progress, v.pmsg,
        v.cancel_req, v.hist], separators=(",", ":"), ensure_ascii=False).encode()
    return b"R" + struct.pack("<HI", len(i), len(v.blob)) + i + v.blob + meta


def _segments(entries: list) -> list[tuple[int, int]]:
    """Sort ``key << 32 | rank`` entries (keys are unique: they end in an LSN) and return
    the ranks as (first, count) segments of consecutive ranks (one segment when key order
    is rank order, the common case)."""
    entries.sort()
    segs: list[tuple[int, int]] = []
    first = nxt = -1
    for e in entries:
        rank = e & 0xFFFFFFFF
        if rank != nxt:
            if first >= 0:
                segs.append((first, nxt - first))
            first = rank
        nxt = rank + 1
    if first >= 0:
        segs.append((first, nxt - first))
    return segs


def _secs(ms: int):
    return ms // 1000 if ms % 1000 == 0 else ms / 1000


_APPLY = {
    R.ENQUEUE: State._apply_enqueue, R.CLAIM: State._apply_claim,
    R.HEARTBEAT: State._apply_heartbeat, R.PROGRESS: State._apply_progress,
    R.COMPLETE: State._apply_complete, R.FAIL: State._apply_fail, R.REAP: State._apply_reap,
    R.CANCEL: State._apply_cancel, R.CANCEL_REQUEST: State._apply_cancel_request,
    R.RETRY_DEAD: State._apply_retry_dead, R.PURGE: State._apply_purge,
}
