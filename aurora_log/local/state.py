"""The fold: transition records in, job table out. No I/O, no clock.

``State.apply(lsn, rtype, record)`` folds one record (``record`` is the payload bytes or the
decoded record from :mod:`aurora_log.local.records`). The queue appends a record to the log
and applies the same record here, and ``replay.py`` applies the stored ones, so replay on
open and live operation run the same code.

The ``plan_*`` methods are the other half: given the state, the caller's arguments and a
``now_ms`` they decide what record an operation must write (or raise StaleLeaseError,
JobNotFoundError, InvalidStateError) without changing anything. Every clock-dependent
decision (lease deadline, next due time, the reaper's verdict) is thereby in the record.

A claim: ``pick`` (the decision: the claim order of ``order.py`` says which job is next)
-> ``plan_claim`` (the record) -> the queue appends it -> ``apply`` (the job runs, and the
claim order drops it).

What the state holds
--------------------
* ``jobs``: ``id -> bytes`` for a job that has only been enqueued (one compact blob, see
  ``table.py``), or ``id -> Rec`` once anything else happened to it. Dict order is enqueue
  order (replacing a value keeps its place), which ``list()`` uses. After a version-2
  snapshot load it is a ``table.LazyJobs`` until something needs the whole dict.
* ``pairs``: the (queue, job_type) pairs met so far; a blob stores its pair's index.
* ``order``: the claim order of the waiting jobs (``order.ClaimOrder``).
* the lease heap ``(deadline_ms, id, token)`` and timeout heap ``(started + timeout, id,
  token)`` the reaper walks, with lazy deletion (an entry is live while the job runs under
  that token, and for a lease, while the deadline is the job's current one).
* counts per status (in total and per queue), the holders of unique keys, the running ids.

Lease rule: a lease holds through its deadline; it is expired when ``now > deadline``.
Likewise a timeout fires when ``now > started + timeout``. A job is due when ``due <= now``.
"""

from __future__ import annotations

import builtins
import heapq
import struct
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import groupby, repeat
from operator import itemgetter
from typing import Any, cast

from . import records as R
from .control import Control
from ..errors import InvalidStateError, JobNotFoundError, StaleLeaseError
from ..job import (MAX_DUE_MS, Job, JobPriority, JobStatus, decode_json, from_ms,
                   retry_delay_ms)
from ..interface import Transition
from .order import ClaimOrder, clamp_due, claim_key, enqueue_due, timer_key
from .table import (AT, CANCELLED, COMPLETED, DEAD_LETTER, F_SCHED, FAILED, FINISHED,
                    FLAGS, HEAD_SIZE, LEASE_MS, LIVE, LSN, MAX_RETRIES, PAIR, PENDING, PRIO,
                    RUNNING, SCHEDULED, TIMEOUT_MS, UKEY_LEN, WAITING, LazyJobs, Rec,
                    SnapshotBase, blob_of, pack_head, unique_key_of, unpack_head)

__all__ = ["State", "Transition"]

_STATUS = {s.code: s for s in JobStatus}
_PRIO = (None,) + tuple(JobPriority)
# the ENQUEUE record's fixed header, for replay's fused path (apply_enqueue_bytes)
_ENQ_UNPACK = R.ENQUEUE_HEAD.unpack_from
_ENQ_SIZE = R.ENQUEUE_HEAD.size
_LSN_PACK = struct.Struct("<q").pack    # a blob head's first field (table.JOB_HEAD)
# an Enqueue's fields but id, unique_key and payload: what one bulk run shares
_RUN_FIELDS = itemgetter(1, 2, 3, 4, 5, 6, 7, 8, 9)
_new_tuple = tuple.__new__
_new_job = Job.__new__
# job.decode_json's decoder settings; scan_once is set by JSONDecoder.__init__ (not typed)
_scan_json: Callable[[str, int], tuple[Any, int]] = \
    json.JSONDecoder().scan_once  # type: ignore[attr-defined]


# A job as a snapshot stores it: (id, blob, None) if never touched, else (id, blob, its
# fields as snapfile.export_rec writes them); runs of ranks as (first, count) segments.
StoredJob = tuple[str, bytes, "list[Any] | None"]
TouchedJob = tuple[str, bytes, list[Any]]
Segments = list[tuple[int, int]]




class State:
    """The queue's state; see the module docstring."""

    def __init__(self) -> None:
        # a dict, or after a version-2 snapshot load a LazyJobs standing in for it (the
        # same interface by delegation, typed as the dict it becomes)
        self.jobs: dict[str, bytes | Rec] = {}
        self.pairs: list[tuple[str, str]] = []       # index -> (queue, job_type)
        self._pair_ix: dict[tuple[str, str], int] = {}
        self._pair_raw: dict[tuple[int, bytes], int] = {}   # (len type, type+queue) -> pair
        self.order = ClaimOrder(self)
        self._leases: list[tuple[int, str, bytes | None]] = []
        self._timeouts: list[tuple[int, str, bytes | None]] = []
        self._running: set[str] = set()
        self._unique: dict[str, str] = {}
        self._counts = [0] * 7                       # by status code
        self._qcounts: dict[str, list[int]] = {}
        self.last_lsn = 0
        self.applied = 0
        self.anomalies: list[tuple[int, str]] = []   # records that did not apply (kept <= 100)
        # queue control (pause, limits, periodic firings, dependencies): control.py
        self.control = Control()
        # shared mode (docs/INTERNALS.md "Liveness"); stored in snapshots (the meta's
        # "procs"), so a process that loads one can still hand back a dead claimer's jobs
        self.proc_of: dict[str, int] = {}    # running job -> its claimer's ATTACH LSN
        self.procs_gone: set[int] = set()    # ATTACH LSNs detached or found dead
        # the last (ms, datetime) of a job's created time, of a start, of a lease deadline:
        # consecutive claims mostly share them (one enqueue batch, one millisecond), and a
        # datetime is immutable, so Job objects may share one (see _job_from_entry)
        self._dt_created: tuple[int, Any] = (-1, None)
        self._dt_started: tuple[int, Any] = (-1, None)
        self._dt_deadline: tuple[int, Any] = (-1, None)

    # ------------------------------------------------------------------ small helpers

    def _count_pending_by_pair(self, counts: Sequence[int]) -> None:
        """Add counts[pair index] pending jobs to the totals (a bulk load's counters)."""
        for ix, c in enumerate(counts):
            if c:
                queue = self.pairs[ix][0]
                self._counts[PENDING] += c
                q = self._qcounts.get(queue)
                if q is None:
                    q = self._qcounts[queue] = [0] * 7
                q[PENDING] += c

    def pair_index(self, queue: str, job_type: str) -> int:
        """The index of the (queue, job_type) pair, added if new."""
        key = (queue, job_type)
        ix = self._pair_ix.get(key)
        if ix is None:
            ix = len(self.pairs)
            self.pairs.append(key)
            self._pair_ix[key] = ix
            self.order.add_pair()
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

    def anomaly(self, lsn: int, why: str) -> None:
        """Note a record that did not apply (or a snapshot run that broke its contract)."""
        if len(self.anomalies) < 100:
            self.anomalies.append((lsn, why))

    def _rec(self, job_id: str) -> Rec | None:
        """The job as a Rec, converting a blob (touching it) if needed."""
        v = self.jobs.get(job_id)
        if v is None or isinstance(v, Rec):
            return v
        r = Rec(v)
        self.jobs[job_id] = r
        return r

    def _set(self, job_id: str, r: Rec, new: int) -> None:
        old = r.status
        if old == new:
            return
        h = unpack_head(r.blob)
        pair = self.pairs[h[PAIR]]
        self._count(pair[0], old, new)
        r.status = new
        if old == RUNNING:
            self._running.discard(job_id)
            self.control.on_running(pair, -1)
            if self.proc_of:
                self.proc_of.pop(job_id, None)
        if new == RUNNING:
            self._running.add(job_id)
            self.control.on_running(pair, +1)
        if new in FINISHED and h[UKEY_LEN]:
            self._drop_unique(job_id, r.blob, h[UKEY_LEN])

    def _drop_unique(self, job_id: str, blob: bytes, ukey_len: int) -> None:
        """A job holding a unique key finished: the key is free again (if it held it)."""
        ukey = blob[HEAD_SIZE:HEAD_SIZE + ukey_len].decode()
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
            self.anomaly(lsn, f"unknown record type {rtype}")
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
                pair = self.pair_index(data[b:c].decode("utf-8"), data[a:b].decode("utf-8"))
                self._pair_raw[key] = pair
            ukey = data[c:c + lu].decode("utf-8") if lu else None
        except UnicodeDecodeError:
            return self._apply_slow(lsn, data)
        if lsn > self.last_lsn:
            self.last_lsn = lsn
        self.applied += 1
        jobs = self.jobs
        has_sched = flags & 1
        if type(jobs) is LazyJobs:
            # after a snapshot load: one id lookup (the base's hash index), not two
            blob = pack_head(lsn, at, created, sched if has_sched else 0,
                             tmo if flags & 2 else 0, lease, maxr, pair, prio,
                             has_sched, lu) + data[c:]
            if not jobs.insert_new(job_id, blob):
                self.anomaly(lsn, f"enqueue of existing job {job_id}")
                return at
        else:
            if job_id in jobs:
                self.anomaly(lsn, f"enqueue of existing job {job_id}")
                return at
            jobs[job_id] = pack_head(lsn, at, created, sched if has_sched else 0,
                                     tmo if flags & 2 else 0, lease, maxr, pair, prio,
                                     has_sched, lu) + data[c:]
        self._counts[PENDING] += 1
        queue = self.pairs[pair][0]
        qc = self._qcounts.get(queue)
        if qc is None:
            qc = self._qcounts[queue] = [0] * 7
        qc[PENDING] += 1
        if ukey is not None and ukey not in self._unique:
            self._unique[ukey] = job_id
        if self.control.waiting and job_id in self.control.waiting:
            self._enqueue_dependent(lsn, job_id, at)
            return at
        self.order.add(job_id, pair, prio, clamp_due(sched) if has_sched else at, lsn, at)
        return at

    def _apply_slow(self, lsn: int, data) -> int:
        rec = R.decode(R.ENQUEUE, data)
        self.apply(lsn, R.ENQUEUE, rec)
        return rec.at_ms

    def apply_many(self, first_lsn: int, records: Sequence[tuple[int, R.Record]]) -> None:
        """Fold decoded records ``[(rtype, record), ...]`` with consecutive LSNs from
        ``first_lsn`` (one append_many batch); the same as apply() for each."""
        lsn = first_lsn
        for rtype, rec in records:
            fn = _APPLY.get(rtype)
            if fn is None:
                self.anomaly(lsn, f"unknown record type {rtype}")
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
            self.anomaly(lsn, f"enqueue of existing job {job_id}")
            return
        pair = self._pair_ix.get((e.queue, e.job_type))
        if pair is None:
            pair = self.pair_index(e.queue, e.job_type)
        ukey = e.unique_key
        u = ukey.encode() if ukey is not None else b""
        sched = e.scheduled_ms
        at = e.at_ms
        blob = pack_head(lsn, at, e.created_ms, sched or 0, e.timeout_ms or 0,
                          e.lease_ms, e.max_retries, pair, e.priority,
                          F_SCHED if sched is not None else 0, len(u)) + u + e.payload
        jobs[job_id] = blob
        self._counts[PENDING] += 1
        qc = self._qcounts.get(e.queue)
        if qc is None:
            qc = self._qcounts[e.queue] = [0] * 7
        qc[PENDING] += 1
        if ukey is not None and ukey not in self._unique:
            self._unique[ukey] = job_id
        if self.control.waiting and job_id in self.control.waiting:
            self._enqueue_dependent(lsn, job_id, at)
            return
        self.order.add(job_id, pair, e.priority, at if sched is None else clamp_due(sched),
                       lsn, at)

    def apply_enqueue_run(self, first_lsn: int, job_ids: Sequence[str], job_type: str,
                          queue: str, prio: int, max_retries: int, created: int, at: int,
                          sched: int | None, timeout_ms: int | None, lease_ms: int,
                          payloads: Sequence[bytes]) -> None:
        """Fold the ENQUEUE records of one bulk batch (records.pack_enqueue_run, LSNs from
        ``first_lsn``): jobs that share every field but id and payload and have no unique
        key. The same state as apply() of each record, with the blobs and claim-order
        entries built by C-level iteration. The caller made sure that no id is in the
        table yet (the queue refuses such a batch before it takes LSNs); a batch with an
        id a DEPENDS record waits for is folded record by record."""
        n = len(job_ids)
        if not n:
            return
        jobs = self.jobs
        waiting = self.control.waiting
        if waiting and not waiting.keys().isdisjoint(job_ids):
            for k, (job_id, payload) in enumerate(zip(job_ids, payloads, strict=True)):
                self.apply(first_lsn + k, R.ENQUEUE, R.Enqueue(
                    job_id, job_type, queue, prio, max_retries, created, at, sched,
                    timeout_ms, lease_ms, None, payload))
            return
        pair = self._pair_ix.get((queue, job_type))
        if pair is None:
            pair = self.pair_index(queue, job_type)
        tail = pack_head(0, at, created, sched or 0, timeout_ms or 0, lease_ms, max_retries,
                         pair, prio, F_SCHED if sched is not None else 0, 0)[8:]
        lsns = range(first_lsn, first_lsn + n)
        blobs = map(b"".join, zip(map(_LSN_PACK, lsns), repeat(tail), payloads, strict=False))
        if type(jobs) is dict:
            jobs.update(zip(job_ids, blobs, strict=True))
        else:                                   # a LazyJobs: one by one (it counts them)
            for job_id, blob in zip(job_ids, blobs, strict=True):
                jobs[job_id] = blob
        self._counts[PENDING] += n
        qc = self._qcounts.get(queue)
        if qc is None:
            qc = self._qcounts[queue] = [0] * 7
        qc[PENDING] += n
        self.order.add_run(job_ids, pair, prio, at if sched is None else clamp_due(sched),
                           first_lsn, at)
        self.applied += n
        if lsns[-1] > self.last_lsn:
            self.last_lsn = lsns[-1]

    def apply_enqueues(self, first_lsn: int, records: Sequence[R.Enqueue]) -> None:
        """Fold ENQUEUE records without unique keys, LSNs from ``first_lsn`` (a batch of
        Jobs): each run of consecutive records that share every field but id and payload
        is folded by apply_enqueue_run, so the result is apply() of each record. The caller
        made sure that no id is in the table yet."""
        lsn = first_lsn
        for key, group in groupby(records, _RUN_FIELDS):
            run = list(group)
            job_type, queue, prio, maxr, created, at, sched, tmo, lease = key
            self.apply_enqueue_run(lsn, [r[0] for r in run], job_type, queue, prio, maxr,
                                   created, at, sched, tmo, lease, [r[11] for r in run])
            lsn += len(run)

    # ------------------------------------------------------------------ dependencies

    def _enqueue_dependent(self, lsn: int, job_id: str, at: int) -> None:
        """The ENQUEUE of a job whose DEPENDS came first. It is touched at once (a Rec:
        a snapshot then stores it with its fields, never in a claim-order run), and put
        in the claim order only when its parents allow: now, when they are done already;
        never, when one failed first (it is cancelled here)."""
        r = self._rec(job_id)
        assert r is not None
        reason = self.control.settled_reason(job_id)
        if reason is not None:
            self._settle_cancel(lsn, at, job_id, r, reason)
        elif not self.control.hold(job_id):
            self._release(job_id, r, at)

    def _release(self, job_id: str, r: Rec, at: int) -> None:
        """A waiting child's parents are done: it enters the claim order at its own place
        (its enqueue due time and FIFO position), as if it had waited there all along."""
        if r.status != PENDING:
            return                          # cancelled meanwhile
        h = unpack_head(r.blob)
        self.order.add_blob(job_id, r.blob, enqueue_due(h), r.seq, at)

    def _settle_cancel(self, lsn: int, at: int, job_id: str, r: Rec, reason: str) -> None:
        """A parent failed: the waiting child ends CANCELLED with the reason (a transition
        of its own in history, at the record that decided it), and its own children follow."""
        if r.status != PENDING:
            return
        self._set(job_id, r, CANCELLED)
        r.completed = at
        r.error = reason
        r.hist.append((lsn, R.CANCEL, at, CANCELLED, None, r.retry + 1, reason))
        self.order.left(job_id, unpack_head(r.blob)[PAIR])
        self._finished(lsn, at, job_id, CANCELLED)

    def _finished(self, lsn: int, at: int, job_id: str, status: int) -> None:
        """``job_id`` reached a final status: settle the children waiting for it."""
        if not self.control.children:
            return
        release, cancel = self.control.on_finished(job_id, status)
        for child in release:
            r = self._rec(child)
            if r is not None:
                self._release(child, r, at)
        for child, reason in cancel:
            r = self._rec(child)
            if r is not None:
                self._settle_cancel(lsn, at, child, r, reason)

    def _running_rec(self, lsn: int, rec, what: str) -> Rec | None:
        r = self.jobs.get(rec.id)
        if type(r) is not Rec or r.status != RUNNING or r.token != rec.token:
            self.anomaly(lsn, f"{what} of {rec.id}: not running under that token")
            return None
        return r

    def _apply_claim(self, lsn: int, c: R.Claim) -> None:
        # the hot path of every claim (live and in replay): _rec and _set inlined for the
        # one transition a claim makes (waiting -> RUNNING), one head unpack in all
        job_id = c.id
        jobs = self.jobs
        v = jobs.get(job_id)
        if isinstance(v, Rec):
            if v.status not in WAITING:
                self.anomaly(lsn, f"claim of {job_id}: not waiting")
                return
            r = v
            h = unpack_head(r.blob)
        elif v is None:
            self.anomaly(lsn, f"claim of {job_id}: not waiting")
            return
        else:                                   # never touched: its blob becomes a Rec
            h = unpack_head(v)
            r = Rec(v, h)
            jobs[job_id] = r
        at = c.at_ms
        pix = h[PAIR]
        pair = self.pairs[pix]
        old = r.status                          # _count inlined (a status code is >= 1)
        counts = self._counts
        counts[old] -= 1
        counts[RUNNING] += 1
        qc = self._qcounts.get(pair[0])
        if qc is None:
            qc = self._qcounts[pair[0]] = [0] * 7
        qc[old] -= 1
        qc[RUNNING] += 1
        r.status = RUNNING
        self._running.add(job_id)
        control = self.control
        control.on_running(pair, +1)
        token = c.token
        r.token = token
        r.worker = c.worker
        r.started = r.hb = at
        r.lease_dl = c.lease_deadline_ms
        r.progress = r.pmsg = None
        r.cancel_req = False
        r.hist.append((lsn, R.CLAIM, at, RUNNING, c.worker, r.retry + 1, None))
        if c.proc:
            self.proc_of[job_id] = c.proc
        heapq.heappush(self._leases, (c.lease_deadline_ms, job_id, token))
        if control.windows:
            control.on_claim(pair, at)
        if h[TIMEOUT_MS]:
            heapq.heappush(self._timeouts, (at + h[TIMEOUT_MS], job_id, token))
        self.order.left(job_id, pix)

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

    def _finish_attempt(self, r: Rec) -> None:
        r.token = None
        r.lease_dl = 0

    def _apply_complete(self, lsn: int, c: R.Complete) -> None:
        # the hot path of every complete (live and in replay): _running_rec, _set and
        # _finish_attempt inlined for the one transition (RUNNING -> COMPLETED)
        job_id = c.id
        r = self.jobs.get(job_id)
        if type(r) is not Rec or r.status != RUNNING or r.token != c.token:
            self.anomaly(lsn, f"complete of {job_id}: not running under that token")
            return
        at = c.at_ms
        h = unpack_head(r.blob)
        pair = self.pairs[h[PAIR]]
        counts = self._counts                   # _count inlined
        counts[RUNNING] -= 1
        counts[COMPLETED] += 1
        qc = self._qcounts[pair[0]]             # it counted this job RUNNING
        qc[RUNNING] -= 1
        qc[COMPLETED] += 1
        r.status = COMPLETED
        self._running.discard(job_id)
        self.control.on_running(pair, -1)
        if self.proc_of:
            self.proc_of.pop(job_id, None)
        if h[UKEY_LEN]:
            self._drop_unique(job_id, r.blob, h[UKEY_LEN])
        r.token = None
        r.lease_dl = 0
        r.completed = at
        r.result = c.result
        r.error = None
        r.hist.append((lsn, R.COMPLETE, at, COMPLETED, r.worker, r.retry + 1, None))
        if self.control.children:
            self._finished(lsn, at, job_id, COMPLETED)

    def _after_attempt(self, lsn: int, job_id: str, r: Rec, outcome: int, at: int, due: int,
                       retry_status: int, rtype: int, note: str) -> None:
        attempt = r.retry + 1
        self._finish_attempt(r)
        if outcome == R.OUTCOME_RETRY:
            r.retry += 1
            r.seq = lsn
            r.due = due
            self._set(job_id, r, retry_status)
            self.order.add_blob(job_id, r.blob, due, lsn, at)
        else:
            r.completed = at
            self._set(job_id, r, DEAD_LETTER if outcome == R.OUTCOME_DEAD else CANCELLED)
        r.hist.append((lsn, rtype, at, r.status, r.worker, attempt, note))
        if outcome != R.OUTCOME_RETRY:
            self._finished(lsn, at, job_id, r.status)

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

    def _apply_release(self, lsn: int, rel: R.Release) -> None:
        """A claimed job handed back by its worker (Queue.release): pending again, due
        now, with the same retry count, so the attempt is not spent; or cancelled when a
        cancel had been requested (the record says which)."""
        r = self._running_rec(lsn, rel, "release")
        if r is None:
            return
        attempt = r.retry + 1
        self._finish_attempt(r)
        if rel.outcome == R.OUTCOME_CANCELLED:
            r.completed = rel.at_ms
            self._set(rel.id, r, CANCELLED)
        else:
            r.seq = lsn
            r.due = rel.at_ms
            self._set(rel.id, r, PENDING)
            self.order.add_blob(rel.id, r.blob, rel.at_ms, lsn, rel.at_ms)
        r.hist.append((lsn, R.RELEASE, rel.at_ms, r.status, r.worker, attempt, None))
        if r.status == CANCELLED:
            self._finished(lsn, rel.at_ms, rel.id, CANCELLED)

    def _apply_cancel(self, lsn: int, c: R.Cancel) -> None:
        r = self._rec(c.id)
        if r is None or r.status not in WAITING:
            self.anomaly(lsn, f"cancel of {c.id}: not waiting")
            return
        self._set(c.id, r, CANCELLED)
        r.completed = c.at_ms
        r.hist.append((lsn, R.CANCEL, c.at_ms, CANCELLED, None, r.retry + 1, None))
        self.order.left(c.id, unpack_head(r.blob)[PAIR])
        self._finished(lsn, c.at_ms, c.id, CANCELLED)

    def _apply_cancel_request(self, lsn: int, c: R.CancelRequest) -> None:
        r = self.jobs.get(c.id)
        if type(r) is not Rec or r.status != RUNNING:
            self.anomaly(lsn, f"cancel request of {c.id}: not running")
            return
        r.cancel_req = True
        r.hist.append((lsn, R.CANCEL_REQUEST, c.at_ms, RUNNING, r.worker, r.retry + 1, None))

    def _apply_retry_dead(self, lsn: int, c: R.RetryDead) -> None:
        r = self.jobs.get(c.id)
        if type(r) is not Rec or r.status != DEAD_LETTER:
            self.anomaly(lsn, f"retry_dead of {c.id}: not dead-lettered")
            return
        r.retry = 0
        r.seq = lsn
        r.due = 0
        r.completed = 0
        r.cancel_req = False
        self._set(c.id, r, PENDING)
        ukey = unique_key_of(r.blob)
        if ukey is not None and ukey not in self._unique:
            self._unique[ukey] = c.id
        self.order.add_blob(c.id, r.blob, c.at_ms, lsn, c.at_ms)
        r.hist.append((lsn, R.RETRY_DEAD, c.at_ms, PENDING, None, 1, None))

    def _apply_attach(self, lsn: int, a: R.Attach) -> None:
        pass                    # identity only: the process is this record's LSN

    def _apply_detach(self, lsn: int, d: R.Detach | R.ProcGone) -> None:
        self.procs_gone.add(d.proc)

    def jobs_of_proc(self, proc: int) -> builtins.list[str]:
        """The RUNNING jobs whose last claim came from the process attached at ``proc``."""
        return [j for j, p in self.proc_of.items() if p == proc and j in self._running]

    def _apply_purge(self, lsn: int, p: R.Purge) -> None:
        for job_id in p.ids:
            r = self.jobs.get(job_id)
            if type(r) is not Rec or r.status not in FINISHED:
                self.anomaly(lsn, f"purge of {job_id}: not finished")
                continue
            self._count(self.pairs[unpack_head(r.blob)[PAIR]][0], r.status, 0)
            del self.jobs[job_id]
            self.control.forget(job_id)

    def _apply_pause(self, lsn: int, p: R.Pause) -> None:
        self.control.apply_pause(p)

    def _apply_resume(self, lsn: int, p: R.Resume) -> None:
        self.control.apply_resume(p)

    def _apply_limit(self, lsn: int, p: R.Limit) -> None:
        self.control.apply_limit(p)

    def _apply_periodic_fire(self, lsn: int, p: R.PeriodicFire) -> None:
        self.control.apply_fire(p)

    def _apply_depends(self, lsn: int, d: R.Depends) -> None:
        if d.id in self.jobs:
            self.anomaly(lsn, f"depends of existing job {d.id}")
            return

        def status_of(job_id: str) -> int | None:
            v = self.jobs.get(job_id)
            return None if v is None else (v.status if type(v) is Rec else PENDING)

        self.control.apply_depends(d, status_of)

    # ------------------------------------------------------------------ the claim decision

    def pick(self, now_ms: int, queues: frozenset | None = None,
             job_types: frozenset | None = None) -> str | None:
        """Which job a claim at ``now_ms`` takes: the id of the best due job (priority
        desc, due time, FIFO) of these queues and job types, or None. Changes no job: the
        clock's effect on the claim order comes first (timers due by now become ready),
        then the choice is a pure read (``ClaimOrder.best``). The claim itself happens when
        its record is applied."""
        order = self.order
        if order.timers or order.trun is not None:      # else nothing can come due
            order.promote(now_ms)
        cands = order.candidates(queues, job_types)
        control = self.control
        if control.active:          # paused queues and reached limits are not looked at
            pairs = self.pairs
            cands = [ix for ix in cands if not control.blocked(*pairs[ix], now_ms)]
        return order.best(cands)

    def next_allowed_ms(self, now_ms: int, queues: frozenset | None = None,
                        job_types: frozenset | None = None) -> int | None:
        """When a rate limit that now holds back some of these pairs lets a claim through
        (the claim wait sleeps until then), or None."""
        control = self.control
        if not control.windows:
            return None
        best = None
        for ix in self.order.candidates(queues, job_types):
            free = control.rate_free_ms(*self.pairs[ix], now_ms)
            if free is not None and (best is None or free < best):
                best = free
        return best

    def next_due_ms(self) -> int | None:
        """The due time of the earliest scheduled job or retry (None if none)."""
        return self.order.next_due_ms()

    def materialize(self) -> None:
        """Turn a lazily loaded job table (after a version-2 snapshot) into a plain dict now.
        Every operation that needs it does this by itself; this is for callers that want
        the cost paid at a time of their choosing."""
        if type(self.jobs) is LazyJobs:
            self.jobs.materialize()

    # ------------------------------------------------------------------ planners

    def _get_running(self, job_id: str, token: bytes) -> Rec:
        v = self.jobs.get(job_id)
        if v is None:
            raise JobNotFoundError(f"no job with id {job_id!r}")
        if type(v) is not Rec or v.status != RUNNING or v.token != token:
            status = _STATUS[v.status if type(v) is Rec else PENDING]
            raise StaleLeaseError(f"job {job_id} is {status.value}; the attempt token "
                                  "does not hold its lease")
        return v

    def plan_claim(self, job_id: str, now_ms: int, token: bytes, worker: str,
                   proc: int = 0) -> R.Claim:
        """The CLAIM record of ``job_id`` (``proc``: the claiming process's ATTACH LSN in
        shared mode; cheaper here than a ``_replace`` of the record, ~1 us)."""
        v = self.jobs[job_id]
        lease = unpack_head(v.blob if isinstance(v, Rec) else v)[LEASE_MS]
        # tuple.__new__: the NamedTuple's Python-level constructor costs more than the rest
        return _new_tuple(R.Claim, (job_id, now_ms, token, now_ms + lease, worker, proc))

    def plan_heartbeat(self, job_id: str, token: bytes, now_ms: int) -> R.Heartbeat:
        r = self._get_running(job_id, token)
        lease = unpack_head(r.blob)[LEASE_MS]
        return R.Heartbeat(job_id, now_ms, token, max(now_ms + lease, r.lease_dl))

    def cancel_requested(self, job_id: str) -> bool:
        v = self.jobs.get(job_id)
        return type(v) is Rec and v.cancel_req

    def plan_progress(self, job_id: str, token: bytes, now_ms: int, fraction: float,
                      message: str | None) -> R.Progress:
        self._get_running(job_id, token)
        return R.Progress(job_id, now_ms, token, fraction, message)

    def plan_complete(self, job_id: str, token: bytes, now_ms: int,
                      result: bytes | None) -> R.Complete:
        v = self.jobs.get(job_id)
        if type(v) is not Rec or v.status != RUNNING or v.token != token:
            self._get_running(job_id, token)          # raises the error that fits
        return _new_tuple(R.Complete, (job_id, now_ms, token, result))

    def _verdict(self, r: Rec, now_ms: int, delay: Callable[[int], int]) -> tuple[int, int]:
        if r.cancel_req:
            return R.OUTCOME_CANCELLED, 0
        max_retries = unpack_head(r.blob)[MAX_RETRIES]
        if r.retry < max_retries:
            return R.OUTCOME_RETRY, min(now_ms + delay(r.retry), MAX_DUE_MS)
        return R.OUTCOME_DEAD, 0

    def plan_release(self, job_id: str, token: bytes, now_ms: int) -> R.Release:
        """StaleLeaseError unless `token` holds the job's lease."""
        r = self._get_running(job_id, token)
        outcome = R.OUTCOME_CANCELLED if r.cancel_req else R.OUTCOME_RETRY
        return R.Release(job_id, now_ms, token, outcome)

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
                if type(r) is not Rec or r.status != RUNNING or token is None \
                        or r.token != token:
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

    def plan_recover(self, now_ms: int,
                     delay: Callable[[int], int] = retry_delay_ms,
                     only: Callable[[str], bool] | None = None) -> list[R.Reap]:
        """On open: every job left RUNNING by a dead process, as a "process died" reap.
        ``only``: the jobs it accepts (a shared store: one dead process's jobs)."""
        running: builtins.list[tuple[int, str, Rec, bytes]] = []
        for job_id in self._running:
            if only is not None and not only(job_id):
                continue
            r = self.jobs[job_id]
            assert type(r) is Rec and r.token is not None      # running: touched, leased
            running.append((r.started, job_id, r, r.token))
        out = []
        for _, job_id, r, token in sorted(running, key=lambda e: e[:2]):
            outcome, due = self._verdict(r, now_ms, delay)
            out.append(R.Reap(job_id, now_ms, token, R.REASON_PROCESS_DIED, outcome, due))
        return out

    def plan_cancel(self, job_id: str, now_ms: int) -> R.Cancel | R.CancelRequest | None:
        """CANCEL for a waiting job, CANCEL_REQUEST for a running one (None if already
        requested); InvalidStateError for a finished job."""
        v = self.jobs.get(job_id)
        if v is None:
            raise JobNotFoundError(f"no job with id {job_id!r}")
        status = v.status if type(v) is Rec else PENDING
        if status in WAITING:
            return R.Cancel(job_id, now_ms)
        if type(v) is Rec and status == RUNNING:
            return None if v.cancel_req else R.CancelRequest(job_id, now_ms)
        raise InvalidStateError(f"job {job_id} is {_STATUS[status].value}; only pending, "
                                "scheduled, failed or running jobs can be cancelled")

    def plan_retry_dead(self, job_id: str, now_ms: int) -> R.RetryDead:
        v = self.jobs.get(job_id)
        if v is None:
            raise JobNotFoundError(f"no job with id {job_id!r}")
        if type(v) is not Rec or v.status != DEAD_LETTER:
            status = v.status if type(v) is Rec else PENDING
            raise InvalidStateError(f"job {job_id} is {_STATUS[status].value}, not dead_letter")
        ukey = unique_key_of(v.blob)
        if ukey is not None and ukey in self._unique:
            raise InvalidStateError(f"job {self._unique[ukey]} with the same unique_key "
                                    f"{ukey!r} is live; cannot re-drive {job_id}")
        return R.RetryDead(job_id, now_ms)

    def plan_purge(self, before_ms: int, now_ms: int, statuses=FINISHED,
                   limit: int = 100_000) -> R.Purge | None:
        """PURGE of finished jobs (of ``statuses``) that finished before ``before_ms``."""
        ids = []
        statuses = tuple(s for s in statuses if s in FINISHED)
        for job_id, v in self.jobs.items():
            if type(v) is Rec and v.status in statuses and v.completed < before_ms:
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
        return _STATUS[v.status] if type(v) is Rec else JobStatus.PENDING

    def running_ids(self) -> set[str]:
        return set(self._running)

    def get(self, job_id: str) -> Job | None:
        v = self.jobs.get(job_id)
        return None if v is None else self._job_from_entry(job_id, v)

    def _job_from_entry(self, job_id: str, v: bytes | Rec) -> Job:
        blob = v.blob if isinstance(v, Rec) else v
        (lsn, at, created, sched, timeout, lease, max_retries, pair, prio, flags,
         lu) = unpack_head(blob)
        queue, job_type = self.pairs[pair]
        j = _new_job(Job)                   # unfilled_job() without its two calls
        j.id = job_id
        j.job_type = job_type
        j.queue = queue
        pos = HEAD_SIZE + lu
        j.unique_key = blob[HEAD_SIZE:pos].decode() if lu else None
        try:
            j.payload = _stored_json(blob[pos:])
        except ValueError:   # JSONDecodeError / UnicodeDecodeError: only a bug can store it
            raise R.RecordError(f"job {job_id}: its stored payload is not valid JSON "
                                f"(enqueued at LSN {lsn})") from None
        j.priority = _PRIO[prio]
        j.max_retries = max_retries
        c = self._dt_created
        if c[0] != created:
            self._dt_created = c = (created, from_ms(created))
        j.created_at = c[1]
        j.timeout_seconds = _secs(timeout) if timeout else None
        j.lease_duration = _secs(lease)
        if self.control.waiting:
            parents = self.control.parents_of(job_id)
            if parents:
                j._deps = (parents, self.control.policy_of(job_id))
        if type(v) is not Rec:
            j.status = JobStatus.PENDING
            j.retry_count = 0
            j.scheduled_at = from_ms(sched) if flags & F_SCHED else None
            j.started_at = j.completed_at = j.last_heartbeat = None
            j.token = j.lease_deadline = j.worker_id = j.error = j.result = None
            j.progress = j.progress_message = None
            j.cancel_requested = False
            return j
        status = v.status
        j.status = _STATUS[status]
        j.retry_count = v.retry
        j.scheduled_at = from_ms(v.due) if v.due else None
        started = None
        if v.started:
            c = self._dt_started
            if c[0] != v.started:
                self._dt_started = c = (v.started, from_ms(v.started))
            started = c[1]
        j.started_at = started
        j.completed_at = from_ms(v.completed) if v.completed and status in FINISHED else None
        j.last_heartbeat = (started if v.hb == v.started else from_ms(v.hb)) if v.hb else None
        if status == RUNNING:
            j.token = v.token.hex() if v.token is not None else None
            c = self._dt_deadline
            if c[0] != v.lease_dl:
                self._dt_deadline = c = (v.lease_dl, from_ms(v.lease_dl))
            j.lease_deadline = c[1]
        else:
            j.token = j.lease_deadline = None
        j.worker_id = v.worker
        j.error = v.error
        j.result = _stored_json(v.result) if v.result is not None else None
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
            pairs = {i for i, (q, t) in enumerate(self.pairs)
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
                if pairs is not None and unpack_head(v)[PAIR] not in pairs:
                    continue
            elif type(v) is Rec:
                if code is not None and v.status != code:
                    continue
                if pairs is not None and unpack_head(v.blob)[PAIR] not in pairs:
                    continue
            yield job_id

    def list(self, *, status: JobStatus | None = None, queue: str | None = None,
             job_type: str | None = None, limit: int = 100,
             after: str | None = None) -> builtins.list[Job]:
        out: builtins.list[Job] = []
        for job_id in self.iter_ids(status=status, queue=queue, job_type=job_type, after=after):
            if len(out) >= limit:
                break
            out.append(self._job_from_entry(job_id, self.jobs[job_id]))
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

    def history(self, job_id: str) -> builtins.list[Transition]:
        v = self.jobs.get(job_id)
        if v is None:
            raise JobNotFoundError(f"no job with id {job_id!r}")
        if type(v) is Rec:
            hist = v.hist
        else:
            h = unpack_head(blob_of(v))
            hist = [(h[LSN], R.ENQUEUE, h[AT], PENDING, None, 1, None)]
        return [Transition(lsn, R.RECORD_NAMES[rt], from_ms(at), _STATUS[st], w, a, note)
                for lsn, rt, at, st, w, a, note in hist]

    def fingerprint(self) -> tuple[Any, ...]:
        """Everything observable, for tests: equal fingerprints = equal states."""
        jobs = tuple((i, self._job_from_entry(i, v).to_dict(), tuple(self.history(i)))
                     for i, v in self.jobs.items())
        return (jobs, self.stats(), tuple(sorted(self._unique.items())), self.last_lsn,
                repr(self.control.export()), tuple(sorted(self.control.running.items())))

    # ------------------------------------------------------------------ loading a snapshot
    # (the bytes are snapfile.py's; these build the state from the jobs it decoded)

    @classmethod
    def restore(cls, pairs: Iterable[Iterable[str]], last_lsn: int, applied: int) -> State:
        """An empty state at ``last_lsn`` with these (queue, job_type) pairs, to load into."""
        s = cls()
        for q, t in pairs:
            s.pair_index(q, t)
        s.last_lsn = last_lsn
        s.applied = applied
        return s

    def load_jobs(self, items: Iterable[StoredJob]) -> int:
        """Add jobs in order as a snapshot stores them: ``(id, blob, None)`` for a
        never-touched pending job, ``(id, blob, meta)`` for any other (``meta`` as
        ``snapfile.export_rec`` writes it). Returns how many. ValueError (or the
        KeyError/IndexError/TypeError of a malformed item) if one does not fit.

        Never-touched jobs (the common case at scale) take a bulk path: their claim-order
        entries are collected and heapified once, counts added once per pair; the same
        result as ``import_job(job_id, blob, None)`` for each (issue 4: reopen time)."""
        jobs, unique = self.jobs, self._unique
        pend = [0] * len(self.pairs)
        ready_add: builtins.list[builtins.list[tuple[int, str]]] = [[] for _ in self.pairs]
        timers_add: builtins.list[tuple[int, str]] = []
        n = 0
        for job_id, blob, meta in items:
            n += 1
            if meta is not None:
                self.import_job(job_id, blob, meta)
                continue
            h = unpack_head(blob)
            prio, pair, lu = h[PRIO], h[PAIR], h[UKEY_LEN]
            if not 1 <= prio <= 4:
                raise ValueError(f"malformed state export item for job {job_id}")
            pend[pair] += 1
            jobs[job_id] = blob
            if lu:
                unique.setdefault(blob[HEAD_SIZE:HEAD_SIZE + lu].decode(), job_id)
            due, at = enqueue_due(h), h[AT]
            if due > at:
                timers_add.append((timer_key(due, h[LSN]), job_id))
            else:
                ready_add[pair].append((claim_key(prio, due, h[LSN]), job_id))
        self.order.load_heaps(ready_add, timers_add)
        self._count_pending_by_pair(pend)
        return n

    def load_split(self, base: SnapshotBase, rest: Sequence[TouchedJob],
                   rest_pos: Sequence[int],
                   runs: Sequence[Segments], pair_counts: Sequence[int],
                   ukeys: Sequence[tuple[int, str]]) -> None:
        """Load a version-2 snapshot lazily: the base jobs stay in ``base`` (no object per
        job) and are walked in claim order by ``runs``; the ``rest`` are imported as by
        ``import_job``. The caller (snapfile.py) has checked the byte-level structure:
        every rank in exactly one run, ``pair_counts`` = base jobs per pair, ``ukeys`` =
        [(rank, unique_key)] of base jobs that have one, ``rest_pos`` (base jobs before
        each rest job) non-decreasing and <= base.n. ValueError if they do not fit."""
        over: dict[str, bytes | Rec] = {}
        self.jobs = over
        for job_id, blob, meta in rest:
            if job_id in over:
                raise ValueError(f"job {job_id} is stored twice")
            self.import_job(job_id, blob, meta)
        if len(runs) != len(self.pairs) + 1 or len(pair_counts) != len(self.pairs):
            raise ValueError("snapshot runs do not match the pairs")
        if ukeys:
            # the holder of a unique key is the first live job with it in state order, as
            # load_jobs' setdefault in item order
            order = [(rank, 1, 0, u, base.id(rank)) for rank, u in ukeys]
            for j, ((job_id, _, _), p) in enumerate(zip(rest, rest_pos, strict=True)):
                r = over[job_id]
                assert type(r) is Rec
                u = unique_key_of(r.blob)
                if u is not None and r.status in LIVE:
                    order.append((p, 0, j, u, job_id))
            order.sort()
            self._unique = {}
            for _, _, _, u, job_id in order:
                self._unique.setdefault(u, job_id)
        self._count_pending_by_pair(pair_counts)
        self.jobs = cast("dict[str, bytes | Rec]", LazyJobs(self, base, over, rest_pos))
        self.order.load_runs(base, runs)

    def import_job(self, job_id: str, blob: bytes, meta: Sequence[Any]) -> None:
        """Add one touched job as a snapshot stores it (see ``load_jobs``)."""
        h = unpack_head(blob)
        if h[PAIR] >= len(self.pairs) or not 1 <= h[PRIO] <= 4:
            raise ValueError(f"malformed state export item for job {job_id}")
        queue = self.pairs[h[PAIR]][0]
        ukey = unique_key_of(blob)
        r = Rec(blob)
        (r.status, r.retry, r.seq, r.due, token, r.worker, r.lease_dl, r.started, r.hb,
         r.completed, r.error, result, r.progress, r.pmsg, r.cancel_req, hist) = meta
        if r.status not in _STATUS:
            raise ValueError(f"malformed state export item for job {job_id}")
        r.token = bytes.fromhex(token) if token else None
        r.result = result.encode() if result is not None else None
        r.hist = [tuple(e) for e in hist]
        self.jobs[job_id] = r
        self._count(queue, 0, r.status)
        if ukey is not None and r.status in LIVE:
            self._unique.setdefault(ukey, job_id)
        if r.status in WAITING and self.control.hold(job_id):
            pass                             # waits for its parents, outside the order
        elif r.status in WAITING:
            # the ready/timer split is recomputed by promote(); `at` = the last transition
            at = r.hist[-1][2] if r.hist else h[AT]
            due = r.due if r.due else \
                (h[SCHEDULED] if h[FLAGS] & F_SCHED and r.seq == h[LSN] else at)
            self.order.add_blob(job_id, blob, due, r.seq, at)
        elif r.status == RUNNING:
            self._running.add(job_id)
            self.control.on_running(self.pairs[h[PAIR]], +1)
            heapq.heappush(self._leases, (r.lease_dl, job_id, r.token))
            if h[TIMEOUT_MS]:
                heapq.heappush(self._timeouts, (r.started + h[TIMEOUT_MS], job_id, r.token))

    # the snapshot encoding lives in snapfile.py; these two keep the state's own spelling
    # for tools and tests that copy a state (imported here: snapfile imports this module)

    def export(self) -> Iterator[bytes]:
        """The live contents as version-1 export items (see ``snapfile.export_items``)."""
        from .snapfile import export_items
        return export_items(self)

    @classmethod
    def from_export(cls, items: Iterable[bytes]) -> State:
        """Rebuild a State from ``export()``'s items (see ``snapfile.state_from_items``)."""
        from .snapfile import state_from_items
        return state_from_items(items)


def _stored_json(data: bytes) -> Any:
    """decode_json of a payload or result the state stores (compact JSON, checked when it
    was written): the C scanner called directly, without json's two Python frames and two
    whitespace regex matches (~0.5 us of every claim). Anything else (whitespace, trailing
    bytes, bad JSON) goes to decode_json, which decides and raises as before."""
    text = data.decode("utf-8")
    try:
        value, end = _scan_json(text, 0)
    except StopIteration:
        return decode_json(data)
    if end != len(text):
        return decode_json(data)
    return value


def _secs(ms: int):
    return ms // 1000 if ms % 1000 == 0 else ms / 1000


# record type -> the fold's method for it
_APPLY: dict[int, Callable[[State, int, Any], None]] = {
    R.ENQUEUE: State._apply_enqueue, R.CLAIM: State._apply_claim,
    R.HEARTBEAT: State._apply_heartbeat, R.PROGRESS: State._apply_progress,
    R.COMPLETE: State._apply_complete, R.FAIL: State._apply_fail, R.REAP: State._apply_reap,
    R.CANCEL: State._apply_cancel, R.CANCEL_REQUEST: State._apply_cancel_request,
    R.RETRY_DEAD: State._apply_retry_dead, R.PURGE: State._apply_purge,
    R.RELEASE: State._apply_release,
    R.PAUSE: State._apply_pause, R.RESUME: State._apply_resume, R.LIMIT: State._apply_limit,
    R.PERIODIC_FIRE: State._apply_periodic_fire, R.DEPENDS: State._apply_depends,
    R.RELEASE: State._apply_release, R.ATTACH: State._apply_attach,
    R.DETACH: State._apply_detach, R.PROC_GONE: State._apply_detach,
}
