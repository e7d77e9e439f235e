"""The queue's transition records: one record type per state transition, binary and versioned.

The log stores ``(type byte, payload)``; this module gives the payloads their meaning.
Every payload starts with a **layout version byte** (1 today); a decoder that meets a
version it does not know raises :class:`RecordError` rather than guessing, so a layout can
evolve by bumping its version and teaching the decoder both. Integers are little-endian.
Times are int64 milliseconds since the Unix epoch (UTC). ``str16`` is a UTF-8 string whose
u16 byte length is in the fixed header; ``bytes32`` likewise with a u32 length. The
strings follow the fixed header in the order listed. Nothing here is pickle: JSON values
(payload, result) are stored as compact UTF-8 JSON bytes.

====  ==============  ===================================================================
type  name            layout v1 (fixed header, then variable parts)
====  ==============  ===================================================================
1     ENQUEUE         u8 ver, u8 flags (1 = has scheduled_at, 2 = has timeout, 4 = has
                      unique_key), u8 priority (1..4), pad, u32 max_retries,
                      i64 created_ms, i64 at_ms (enqueue time), i64 scheduled_ms,
                      i64 timeout_ms, i64 lease_ms, u16 len id, u16 len job_type,
                      u16 len queue, u16 len unique_key, u32 len payload;
                      then id, job_type, queue, unique_key, payload (JSON object)
2     CLAIM           u8 ver, i64 at_ms, i64 lease_deadline_ms, 8s token, u16 len id,
                      u16 len worker; then id, worker
3     HEARTBEAT       u8 ver, i64 at_ms, i64 lease_deadline_ms, 8s token, u16 len id; id
4     PROGRESS        u8 ver, u8 flags (1 = has message), i64 at_ms, 8s token, f64 fraction,
                      u16 len id, u16 len message; then id, message
5     COMPLETE        u8 ver, u8 flags (1 = has result), i64 at_ms, 8s token, u16 len id,
                      u32 len result; then id, result (JSON value)
6     FAIL            u8 ver, u8 outcome, i64 at_ms, 8s token, i64 next_due_ms, u16 len id,
                      u32 len error; then id, error.  outcome: 1 = retry (status FAILED,
                      due at next_due_ms, retry_count + 1), 2 = dead-letter, 3 = cancelled
                      (a cancel had been requested)
7     REAP            u8 ver, u8 reason (1 = lease expired, 2 = timeout, 3 = process died),
                      u8 outcome (1 = retry: status PENDING, due at next_due_ms,
                      retry_count + 1; 2 = dead-letter; 3 = cancelled), i64 at_ms,
                      8s token (of the attempt reaped), i64 next_due_ms, u16 len id; id
8     CANCEL          u8 ver, i64 at_ms, u16 len id; id     (pending/failed -> CANCELLED)
9     CANCEL_REQUEST  u8 ver, i64 at_ms, u16 len id; id     (running: flag for the worker)
10    RETRY_DEAD      u8 ver, i64 at_ms, u16 len id; id     (DEAD_LETTER -> PENDING, retries
                                                              reset to 0, due at at_ms)
11    PURGE           u8 ver, i64 at_ms, u32 count; count x (u16 len id, id)  (drop
                      finished jobs from the state; compaction's retention)
12    RELEASE         u8 ver, u8 outcome, i64 at_ms, 8s token, u16 len id; id
                      (RUNNING -> PENDING, due at at_ms, retry_count unchanged: the
                      attempt is handed back, not spent; Queue.release). outcome: 1 =
                      pending again, 3 = cancelled (a cancel had been requested)
20    PAUSE           u8 ver, i64 at_ms, u16 len queue; queue    (claims skip the queue)
21    RESUME          u8 ver, i64 at_ms, u16 len queue; queue    (undoes PAUSE)
22    LIMIT           u8 ver, u8 scope (1 = queue, 2 = job_type), i64 at_ms,
                      u32 concurrency (0 = none), u32 rate_count (0 = none),
                      i64 rate_period_ms, u16 len name; name
                      (the whole limit of that queue/job type; all zero removes it)
23    PERIODIC_FIRE   u8 ver, i64 at_ms, i64 due_ms, u16 len name, u16 len id; name, id
                      (schedule `name` fired for due time due_ms; always in one batch
                      with the ENQUEUE of job `id` that follows it)
24    DEPENDS         u8 ver, u8 on_parent_failure (1 = cancel the child, 2 = ignore),
                      i64 at_ms, u16 len id, u16 count; id, count x (u16 len, parent id)
                      (job `id` waits for its parents; always in one batch with the
                      job's ENQUEUE, which follows it)
====  ==============  ===================================================================

Every decision that depends on a clock or on chance is *in* the record (the lease
deadline, the next due time of a retry, the reaper's verdict), so replaying the log gives
the same state no matter when it is replayed. Type 0 is invalid; 13..19 and 25..255 are
free. Queue control (20..24) is folded by ``control.py``: rate limits decide from the
CLAIM records' own times, so replay makes the same decisions.
"""

from __future__ import annotations

import array
import math
import struct
from collections.abc import Callable, Sequence
from itertools import chain, repeat
from typing import Any, NamedTuple

from ..errors import RecordError

__all__ = [
    "ENQUEUE", "CLAIM", "HEARTBEAT", "PROGRESS", "COMPLETE", "FAIL", "REAP", "CANCEL",
    "CANCEL_REQUEST", "RETRY_DEAD", "PURGE", "RELEASE", "RECORD_NAMES", "RecordError",
    "Enqueue", "Claim", "Heartbeat", "Progress", "Complete", "Fail", "Reap", "Cancel",
    "CancelRequest", "RetryDead", "Purge", "Release", "Record", "ATTACH", "DETACH",
    "PROC_GONE", "Attach", "Detach", "ProcGone",
    "PAUSE", "RESUME", "LIMIT", "PERIODIC_FIRE", "DEPENDS", "CONTROL_TYPES", "AT_OFFSET", "at_ms",
    "Pause", "Resume", "Limit", "PeriodicFire", "Depends",
    "SCOPE_QUEUE", "SCOPE_JOB_TYPE", "ON_FAILURE_CANCEL", "ON_FAILURE_IGNORE",
    "OUTCOME_RETRY", "OUTCOME_DEAD", "OUTCOME_CANCELLED",
    "REASON_LEASE_EXPIRED", "REASON_TIMEOUT", "REASON_PROCESS_DIED", "REASON_TEXT",
    "encode", "decode",
]

ENQUEUE = 1
CLAIM = 2
HEARTBEAT = 3
PROGRESS = 4
COMPLETE = 5
FAIL = 6
REAP = 7
CANCEL = 8
CANCEL_REQUEST = 9
RETRY_DEAD = 10
PURGE = 11
RELEASE = 12
# shared mode (many processes, docs/INTERNALS.md "Liveness"): 13-15
ATTACH = 13
DETACH = 14
PROC_GONE = 15
# queue control (issue 17): 20-24
PAUSE = 20
RESUME = 21
LIMIT = 22
PERIODIC_FIRE = 23
DEPENDS = 24
CONTROL_TYPES = (PAUSE, RESUME, LIMIT, PERIODIC_FIRE, DEPENDS)

RECORD_NAMES = {ENQUEUE: "enqueue", CLAIM: "claim", HEARTBEAT: "heartbeat",
                PROGRESS: "progress", COMPLETE: "complete", FAIL: "fail", REAP: "reap",
                CANCEL: "cancel", CANCEL_REQUEST: "cancel_request",
                RETRY_DEAD: "retry_dead", PURGE: "purge", RELEASE: "release",
                PAUSE: "pause", RESUME: "resume", LIMIT: "limit",
                PERIODIC_FIRE: "periodic_fire", DEPENDS: "depends",
                ATTACH: "attach", DETACH: "detach", PROC_GONE: "proc_gone"}

SCOPE_QUEUE = 1
SCOPE_JOB_TYPE = 2
ON_FAILURE_CANCEL = 1
ON_FAILURE_IGNORE = 2

OUTCOME_RETRY = 1
OUTCOME_DEAD = 2
OUTCOME_CANCELLED = 3
_OUTCOMES = (OUTCOME_RETRY, OUTCOME_DEAD, OUTCOME_CANCELLED)

REASON_LEASE_EXPIRED = 1
REASON_TIMEOUT = 2
REASON_PROCESS_DIED = 3
REASON_TEXT = {REASON_LEASE_EXPIRED: "lease expired", REASON_TIMEOUT: "timeout",
               REASON_PROCESS_DIED: "process died"}

VERSION = 1
_U32 = 0xFFFFFFFF    # leases/timeouts (ms) are u32 in the state
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


# --------------------------------------------------------------------------- record types

class Enqueue(NamedTuple):
    id: str
    job_type: str
    queue: str
    priority: int
    max_retries: int
    created_ms: int
    at_ms: int
    scheduled_ms: int | None
    timeout_ms: int | None
    lease_ms: int
    unique_key: str | None
    payload: bytes


class Claim(NamedTuple):
    id: str
    at_ms: int
    token: bytes
    lease_deadline_ms: int
    worker: str
    proc: int = 0       # the claiming process's ATTACH LSN (CLAIM v2); 0 = exclusive mode


class Heartbeat(NamedTuple):
    id: str
    at_ms: int
    token: bytes
    lease_deadline_ms: int


class Progress(NamedTuple):
    id: str
    at_ms: int
    token: bytes
    fraction: float
    message: str | None


class Complete(NamedTuple):
    id: str
    at_ms: int
    token: bytes
    result: bytes | None


class Fail(NamedTuple):
    id: str
    at_ms: int
    token: bytes
    outcome: int
    next_due_ms: int
    error: str


class Reap(NamedTuple):
    id: str
    at_ms: int
    token: bytes
    reason: int
    outcome: int
    next_due_ms: int


class Cancel(NamedTuple):
    id: str
    at_ms: int


class CancelRequest(NamedTuple):
    id: str
    at_ms: int


class RetryDead(NamedTuple):
    id: str
    at_ms: int


class Release(NamedTuple):
    id: str
    at_ms: int
    token: bytes
    outcome: int       # OUTCOME_RETRY (pending again) or OUTCOME_CANCELLED


class Attach(NamedTuple):
    """A process attached to a shared store; its identity is this record's LSN."""
    at_ms: int
    pid: int
    host: str


class Detach(NamedTuple):
    """A process closed its shared store cleanly."""
    at_ms: int
    proc: int           # its ATTACH LSN


class ProcGone(NamedTuple):
    """Another process found ``proc`` dead (its liveness file unlocked)."""
    at_ms: int
    proc: int
    noticer: int        # the noticing process's ATTACH LSN


class Purge(NamedTuple):
    at_ms: int
    ids: tuple


class Pause(NamedTuple):
    queue: str
    at_ms: int


class Resume(NamedTuple):
    queue: str
    at_ms: int


class Limit(NamedTuple):
    scope: int                  # SCOPE_QUEUE or SCOPE_JOB_TYPE
    name: str
    at_ms: int
    concurrency: int            # 0 = no concurrency limit
    rate_count: int             # 0 = no rate limit
    rate_period_ms: int


class PeriodicFire(NamedTuple):
    name: str
    at_ms: int
    due_ms: int
    id: str                     # the job this firing enqueues (its ENQUEUE follows)


class Depends(NamedTuple):
    id: str
    at_ms: int
    parents: tuple
    on_parent_failure: int      # ON_FAILURE_CANCEL or ON_FAILURE_IGNORE


Record = (Enqueue | Claim | Heartbeat | Progress | Complete | Fail | Reap | Cancel
          | CancelRequest | RetryDead | Purge | Release | Pause | Resume | Limit
          | PeriodicFire | Depends | Attach | Detach | ProcGone)

_SIMPLE_TYPES: dict[int, type[Cancel | CancelRequest | RetryDead]] = {
    CANCEL: Cancel, CANCEL_REQUEST: CancelRequest, RETRY_DEAD: RetryDead}

# --------------------------------------------------------------------------- layouts

ENQUEUE_HEAD = struct.Struct("<BBBxIqqqqqHHHHI")
_CLAIM = struct.Struct("<Bqq8sHH")
_HB = struct.Struct("<Bqq8sH")
_PROG = struct.Struct("<BBq8sdHH")
_COMP = struct.Struct("<BBq8sHI")
_FAIL = struct.Struct("<BBq8sqHI")
_REAP = struct.Struct("<BBBq8sqH")
_SIMPLE = struct.Struct("<BqH")
_PURGE = struct.Struct("<BqI")
_REL = struct.Struct("<BBq8sH")
_RELEASE_OUTCOMES = (OUTCOME_RETRY, OUTCOME_CANCELLED)
_H = struct.Struct("<H")
_LIMIT = struct.Struct("<BBqIIqH")
_FIRE = struct.Struct("<BqqHH")
_DEPS = struct.Struct("<BBqHH")
_Q = struct.Struct("<Q")
_ATTACH = struct.Struct("<BqIH")
_DETACH = struct.Struct("<BqQ")
_GONE = struct.Struct("<BqQQ")

# Where each type's i64 at_ms sits in its payload (the layouts above), for readers that
# want a record's time without decoding it (the dashboard's activity, over a whole log).
AT_OFFSET = {ENQUEUE: 16, CLAIM: 1, HEARTBEAT: 1, PROGRESS: 2, COMPLETE: 2, FAIL: 2, REAP: 3,
             CANCEL: 1, CANCEL_REQUEST: 1, RETRY_DEAD: 1, PURGE: 1, RELEASE: 2,
             PAUSE: 1, RESUME: 1, LIMIT: 2, PERIODIC_FIRE: 1, DEPENDS: 2,
             ATTACH: 1, DETACH: 1, PROC_GONE: 1}
_AT = struct.Struct("<q")


def at_ms(rtype: int, payload: bytes) -> int:
    """A record's time (ms) read at its fixed offset, without decoding the rest."""
    return int(_AT.unpack_from(payload, AT_OFFSET[rtype])[0])

_F_SCHED, _F_TIMEOUT, _F_UKEY = 1, 2, 4


def _s(text: str) -> bytes:
    b = text.encode("utf-8")
    if len(b) > 0xFFFF:
        raise ValueError(f"string of {len(b)} bytes is too long for a record (limit 65535)")
    return b


def pack_enqueue(job_id: bytes, job_type: bytes, queue: bytes, ukey: bytes | None,
                 priority: int, max_retries: int, created_ms: int, at_ms: int,
                 scheduled_ms: int | None, timeout_ms: int | None, lease_ms: int,
                 payload: bytes) -> bytes:
    """ENQUEUE layout from already-encoded strings (the enqueue hot path). struct.error
    (-> ValueError in callers) if a length or value does not fit."""
    flags = ((_F_SCHED if scheduled_ms is not None else 0)
             | (_F_TIMEOUT if timeout_ms is not None else 0)
             | (_F_UKEY if ukey is not None else 0))
    if ukey is None:
        ukey = b""
    return b"".join((ENQUEUE_HEAD.pack(VERSION, flags, priority, max_retries, created_ms, at_ms,
                               scheduled_ms or 0, timeout_ms or 0, lease_ms, len(job_id),
                               len(job_type), len(queue), len(ukey), len(payload)),
                     job_id, job_type, queue, ukey, payload))


_U32_PACK = struct.Struct("<I").pack


def pack_enqueue_run(job_ids: Sequence[bytes], job_type: bytes, queue: bytes, priority: int,
                     max_retries: int, created_ms: int, at_ms: int, scheduled_ms: int | None,
                     timeout_ms: int | None, lease_ms: int,
                     payloads: Sequence[bytes]) -> tuple[array.array, bytes]:
    """The ENQUEUE records of one bulk batch: jobs that differ only in id (all ids of one
    length) and payload, with no unique key. Returns (their lengths, the records
    concatenated): byte for byte what pack_enqueue gives for each job, built with C-level
    iteration instead of a Python loop (the fixed header is packed once: only its last
    field, the payload length, differs between jobs). struct.error if a value does not
    fit; ValueError for ids of different lengths."""
    if not job_ids:
        return array.array("I"), b""
    li = len(job_ids[0])
    if set(map(len, job_ids)) != {li}:
        raise ValueError("a bulk batch's ids must all have the same length")
    flags = ((_F_SCHED if scheduled_ms is not None else 0)
             | (_F_TIMEOUT if timeout_ms is not None else 0))
    head = ENQUEUE_HEAD.pack(VERSION, flags, priority, max_retries, created_ms, at_ms,
                             scheduled_ms or 0, timeout_ms or 0, lease_ms, li, len(job_type),
                             len(queue), 0, 0)[:-4]          # all but the payload length
    names = job_type + queue
    fixed = len(head) + 4 + li + len(names)
    sizes = list(map(len, payloads))
    data = b"".join(chain.from_iterable(zip(repeat(head), map(_U32_PACK, sizes), job_ids,
                                            repeat(names), payloads)))
    return array.array("I", map(fixed.__add__, sizes)), data


def encode_enqueue(r: Enqueue) -> bytes:
    flags = ((_F_SCHED if r.scheduled_ms is not None else 0)
             | (_F_TIMEOUT if r.timeout_ms is not None else 0)
             | (_F_UKEY if r.unique_key is not None else 0))
    i, t, q = _s(r.id), _s(r.job_type), _s(r.queue)
    u = _s(r.unique_key) if r.unique_key is not None else b""
    return b"".join((ENQUEUE_HEAD.pack(VERSION, flags, r.priority, r.max_retries, r.created_ms,
                               r.at_ms, r.scheduled_ms or 0, r.timeout_ms or 0, r.lease_ms,
                               len(i), len(t), len(q), len(u), len(r.payload)),
                     i, t, q, u, r.payload))


def _encode_claim(rec: Claim) -> bytes:
    i, w = rec.id.encode("utf-8"), rec.worker.encode("utf-8")   # every claim: _s inlined
    if len(i) > 0xFFFF or len(w) > 0xFFFF:
        _s(rec.id)
        _s(rec.worker)          # raises, naming the size
    if rec.proc:        # v2: the claiming process's ATTACH LSN at the end
        return _CLAIM.pack(2, rec.at_ms, rec.lease_deadline_ms, rec.token,
                           len(i), len(w)) + i + w + _Q.pack(rec.proc)
    return _CLAIM.pack(VERSION, rec.at_ms, rec.lease_deadline_ms, rec.token,
                       len(i), len(w)) + i + w


def _encode_attach(rec: Attach) -> bytes:
    h = _s(rec.host)
    return _ATTACH.pack(VERSION, rec.at_ms, rec.pid, len(h)) + h


def _encode_detach(rec: Detach) -> bytes:
    return _DETACH.pack(VERSION, rec.at_ms, rec.proc)


def _encode_gone(rec: ProcGone) -> bytes:
    return _GONE.pack(VERSION, rec.at_ms, rec.proc, rec.noticer)


def _encode_heartbeat(rec: Heartbeat) -> bytes:
    i = _s(rec.id)
    return _HB.pack(VERSION, rec.at_ms, rec.lease_deadline_ms, rec.token, len(i)) + i


def _encode_progress(rec: Progress) -> bytes:
    i = _s(rec.id)
    m = _s(rec.message) if rec.message is not None else b""
    return _PROG.pack(VERSION, 1 if rec.message is not None else 0, rec.at_ms,
                      rec.token, rec.fraction, len(i), len(m)) + i + m


def _encode_complete(rec: Complete) -> bytes:
    i = rec.id.encode("utf-8")                   # every complete: _s inlined
    if len(i) > 0xFFFF:
        _s(rec.id)              # raises, naming the size
    res = rec.result if rec.result is not None else b""
    return _COMP.pack(VERSION, 1 if rec.result is not None else 0, rec.at_ms,
                      rec.token, len(i), len(res)) + i + res


def _encode_fail(rec: Fail) -> bytes:
    i = _s(rec.id)
    e = rec.error.encode("utf-8")
    return _FAIL.pack(VERSION, rec.outcome, rec.at_ms, rec.token,
                      rec.next_due_ms, len(i), len(e)) + i + e


def _encode_reap(rec: Reap) -> bytes:
    i = _s(rec.id)
    return _REAP.pack(VERSION, rec.reason, rec.outcome, rec.at_ms, rec.token,
                      rec.next_due_ms, len(i)) + i


def _encode_simple(rec: Cancel | CancelRequest | RetryDead) -> bytes:
    i = _s(rec.id)
    return _SIMPLE.pack(VERSION, rec.at_ms, len(i)) + i


def _encode_purge(rec: Purge) -> bytes:
    parts = [_PURGE.pack(VERSION, rec.at_ms, len(rec.ids))]
    for job_id in rec.ids:
        i = _s(job_id)
        parts.append(_H.pack(len(i)))
        parts.append(i)
    return b"".join(parts)


def _encode_release(rec: Release) -> bytes:
    if rec.outcome not in _RELEASE_OUTCOMES:
        raise ValueError(f"release outcome must be 1 or 3, not {rec.outcome}")
    i = _s(rec.id)
    return _REL.pack(VERSION, rec.outcome, rec.at_ms, rec.token, len(i)) + i


def _encode_queue_name(rec: Pause | Resume) -> bytes:
    n = _s(rec.queue)
    return _SIMPLE.pack(VERSION, rec.at_ms, len(n)) + n


def _encode_limit(rec: Limit) -> bytes:
    n = _s(rec.name)
    return _LIMIT.pack(VERSION, rec.scope, rec.at_ms, rec.concurrency, rec.rate_count,
                       rec.rate_period_ms, len(n)) + n


def _encode_fire(rec: PeriodicFire) -> bytes:
    n, i = _s(rec.name), _s(rec.id)
    return _FIRE.pack(VERSION, rec.at_ms, rec.due_ms, len(n), len(i)) + n + i


def _encode_depends(rec: Depends) -> bytes:
    i = _s(rec.id)
    parts = [_DEPS.pack(VERSION, rec.on_parent_failure, rec.at_ms, len(i), len(rec.parents)), i]
    for parent in rec.parents:
        b = _s(parent)
        parts.append(_H.pack(len(b)))
        parts.append(b)
    return b"".join(parts)


# record class -> (type byte, its encoder): one lookup per record
_ENCODERS: dict[type, tuple[int, Callable[[Any], bytes]]] = {
    Enqueue: (ENQUEUE, encode_enqueue), Claim: (CLAIM, _encode_claim),
    Heartbeat: (HEARTBEAT, _encode_heartbeat), Progress: (PROGRESS, _encode_progress),
    Complete: (COMPLETE, _encode_complete), Fail: (FAIL, _encode_fail),
    Reap: (REAP, _encode_reap), Cancel: (CANCEL, _encode_simple),
    CancelRequest: (CANCEL_REQUEST, _encode_simple), RetryDead: (RETRY_DEAD, _encode_simple),
    Purge: (PURGE, _encode_purge), Release: (RELEASE, _encode_release),
    Pause: (PAUSE, _encode_queue_name), Resume: (RESUME, _encode_queue_name),
    Limit: (LIMIT, _encode_limit), PeriodicFire: (PERIODIC_FIRE, _encode_fire),
    Depends: (DEPENDS, _encode_depends),
    Attach: (ATTACH, _encode_attach), Detach: (DETACH, _encode_detach),
    ProcGone: (PROC_GONE, _encode_gone),
}


def encode(rec: Record) -> tuple[int, bytes]:
    """(rtype, payload) for a record. ValueError for values that do not fit the layout."""
    entry = _ENCODERS.get(type(rec))
    if entry is None:
        raise TypeError(f"not a record: {type(rec).__name__}")
    rtype, encoder = entry
    try:
        return rtype, encoder(rec)
    except struct.error as e:
        raise ValueError(f"{RECORD_NAMES[rtype]} record field out of range: {e}") from None


# --------------------------------------------------------------------------- decoding

def _bad(rtype: int, why: str) -> RecordError:
    return RecordError(f"malformed {RECORD_NAMES.get(rtype, f'type-{rtype}')} record: {why}")


def _strs(rtype: int, data: bytes, pos: int, lengths, optional=()) -> list:
    if pos + sum(lengths) != len(data):
        raise _bad(rtype, f"length {len(data)} does not match its fields "
                          f"({pos} + {sum(lengths)})")
    out = []
    for n in lengths:
        chunk = data[pos:pos + n]
        pos += n
        try:
            out.append(chunk.decode("utf-8"))
        except UnicodeDecodeError:
            raise _bad(rtype, "string is not valid UTF-8") from None
    return out


def _head(rtype: int, st: struct.Struct, data: bytes) -> tuple:
    if len(data) < st.size:
        raise _bad(rtype, f"{len(data)} bytes, shorter than its {st.size}-byte header")
    vals = st.unpack_from(data)
    if vals[0] != VERSION:
        raise _bad(rtype, f"unknown layout version {vals[0]}")
    return vals


def _check_id(rtype: int, job_id: str) -> str:
    if not job_id:
        raise _bad(rtype, "empty job id")
    return job_id


_ENQ_UNPACK = ENQUEUE_HEAD.unpack_from
_ENQ_SIZE = ENQUEUE_HEAD.size
_names: dict[bytes, str] = {}   # job_type / queue spellings repeat: decode each once


def _name(b: bytes) -> str:
    s = _names.get(b)
    if s is None:
        s = b.decode("utf-8")
        if len(_names) < 4096:
            _names[b] = s
    return s


def _decode_enqueue(data: bytes) -> Enqueue:
    """The hot path of replay: ENQUEUE without the generic helpers (same checks)."""
    n = len(data)
    if n < _ENQ_SIZE:
        raise _bad(ENQUEUE, f"{n} bytes, shorter than its {_ENQ_SIZE}-byte header")
    (ver, flags, prio, maxr, created, at, sched, tmo, lease,
     li, lt, lq, lu, lp) = _ENQ_UNPACK(data)
    if ver != VERSION:
        raise _bad(ENQUEUE, f"unknown layout version {ver}")
    if flags & ~(_F_SCHED | _F_TIMEOUT | _F_UKEY):
        raise _bad(ENQUEUE, f"unknown flags {flags:#x}")
    if not 1 <= prio <= 4:
        raise _bad(ENQUEUE, f"priority {prio} out of range")
    if not 0 < lease <= _U32 or ((flags & _F_TIMEOUT) and not 0 < tmo <= _U32):
        raise _bad(ENQUEUE, "lease or timeout out of range")
    a = _ENQ_SIZE + li
    b = a + lt
    c = b + lq
    d = c + lu
    if d + lp != n:
        raise _bad(ENQUEUE, "length does not match its fields")
    if not li or not lt or not lq or bool(lu) != bool(flags & _F_UKEY):
        raise _bad(ENQUEUE, "empty id/job_type/queue/unique_key")
    try:
        job_id = data[_ENQ_SIZE:a].decode("utf-8")
        jtype = _name(data[a:b])
        queue = _name(data[b:c])
        ukey = data[c:d].decode("utf-8") if lu else None
    except UnicodeDecodeError:
        raise _bad(ENQUEUE, "string is not valid UTF-8") from None
    payload = data[d:]
    if payload[:1] != b"{":
        raise _bad(ENQUEUE, "payload is not a JSON object")
    return Enqueue(job_id, jtype, queue, prio, maxr, created, at,
                   sched if flags & _F_SCHED else None, tmo if flags & _F_TIMEOUT else None,
                   lease, ukey, payload)


def decode(rtype: int, data: bytes) -> Record:
    """Decode one record payload; RecordError (never another exception) if malformed."""
    try:
        if rtype == ENQUEUE:
            return _decode_enqueue(data if type(data) is bytes else bytes(data))
        return _decode(rtype, bytes(data))
    except RecordError:
        raise
    except Exception as e:  # belt and braces: a decoder must never crash the opener
        raise _bad(rtype, f"{type(e).__name__}: {e}") from None


def _decode(rtype: int, data: bytes) -> Record:
    """Every record type but ENQUEUE (decode() sends that to _decode_enqueue)."""
    if rtype == CLAIM:
        if data[:1] == b"\x02":      # v2: + u64 the claiming process's ATTACH LSN
            if len(data) < _CLAIM.size + _Q.size:
                raise _bad(rtype, "too short")
            (proc,) = _Q.unpack_from(data, len(data) - _Q.size)
            body = b"\x01" + data[1:len(data) - _Q.size]
        else:
            proc, body = 0, data
        _, at, deadline, token, li, lw = _head(rtype, _CLAIM, body)
        job_id, worker = _strs(rtype, body, _CLAIM.size, (li, lw))
        return Claim(_check_id(rtype, job_id), at, token, deadline, worker, proc)
    if rtype == ATTACH:
        _, at, pid, lh = _head(rtype, _ATTACH, data)
        (host,) = _strs(rtype, data, _ATTACH.size, (lh,))
        return Attach(at, pid, host)
    if rtype == DETACH:
        _, at, proc = _head(rtype, _DETACH, data)
        if len(data) != _DETACH.size:
            raise _bad(rtype, "trailing bytes")
        return Detach(at, proc)
    if rtype == PROC_GONE:
        _, at, proc, noticer = _head(rtype, _GONE, data)
        if len(data) != _GONE.size:
            raise _bad(rtype, "trailing bytes")
        return ProcGone(at, proc, noticer)
    if rtype == HEARTBEAT:
        _, at, deadline, token, li = _head(rtype, _HB, data)
        (job_id,) = _strs(rtype, data, _HB.size, (li,))
        return Heartbeat(_check_id(rtype, job_id), at, token, deadline)
    if rtype == PROGRESS:
        _, flags, at, token, frac, li, lm = _head(rtype, _PROG, data)
        if flags & ~1 or (lm and not flags & 1):
            raise _bad(rtype, f"bad flags {flags:#x}")
        if not math.isfinite(frac):
            raise _bad(rtype, "fraction is not finite")
        job_id, msg = _strs(rtype, data, _PROG.size, (li, lm))
        return Progress(_check_id(rtype, job_id), at, token, frac, msg if flags & 1 else None)
    if rtype == COMPLETE:
        _, flags, at, token, li, lr = _head(rtype, _COMP, data)
        if flags & ~1 or (lr and not flags & 1):
            raise _bad(rtype, f"bad flags {flags:#x}")
        pos = _COMP.size
        if pos + li + lr != len(data):
            raise _bad(rtype, "length does not match its fields")
        (job_id,) = _strs(rtype, data[:pos + li], pos, (li,))
        return Complete(_check_id(rtype, job_id), at, token,
                        data[pos + li:] if flags & 1 else None)
    if rtype == FAIL:
        _, outcome, at, token, due, li, le = _head(rtype, _FAIL, data)
        if outcome not in _OUTCOMES:
            raise _bad(rtype, f"unknown outcome {outcome}")
        job_id, err = _strs(rtype, data, _FAIL.size, (li, le))
        return Fail(_check_id(rtype, job_id), at, token, outcome, due, err)
    if rtype == REAP:
        _, reason, outcome, at, token, due, li = _head(rtype, _REAP, data)
        if reason not in REASON_TEXT:
            raise _bad(rtype, f"unknown reason {reason}")
        if outcome not in _OUTCOMES:
            raise _bad(rtype, f"unknown outcome {outcome}")
        (job_id,) = _strs(rtype, data, _REAP.size, (li,))
        return Reap(_check_id(rtype, job_id), at, token, reason, outcome, due)
    if rtype in (CANCEL, CANCEL_REQUEST, RETRY_DEAD):
        _, at, li = _head(rtype, _SIMPLE, data)
        (job_id,) = _strs(rtype, data, _SIMPLE.size, (li,))
        cls: type[Cancel | CancelRequest | RetryDead] = _SIMPLE_TYPES[rtype]
        return cls(_check_id(rtype, job_id), at)
    if rtype == RELEASE:
        _, outcome, at, token, li = _head(rtype, _REL, data)
        if outcome not in _RELEASE_OUTCOMES:
            raise _bad(rtype, f"unknown outcome {outcome}")
        (job_id,) = _strs(rtype, data, _REL.size, (li,))
        return Release(_check_id(rtype, job_id), at, token, outcome)
    if rtype in (PAUSE, RESUME):
        _, at, ln = _head(rtype, _SIMPLE, data)
        (queue,) = _strs(rtype, data, _SIMPLE.size, (ln,))
        if not queue:
            raise _bad(rtype, "empty queue name")
        return (Pause if rtype == PAUSE else Resume)(queue, at)
    if rtype == LIMIT:
        _, scope, at, conc, count, period, ln = _head(rtype, _LIMIT, data)
        if scope not in (SCOPE_QUEUE, SCOPE_JOB_TYPE):
            raise _bad(rtype, f"unknown scope {scope}")
        if (count == 0) != (period == 0) or period < 0:
            raise _bad(rtype, f"rate {count} per {period} ms")
        (name,) = _strs(rtype, data, _LIMIT.size, (ln,))
        if not name:
            raise _bad(rtype, "empty name")
        return Limit(scope, name, at, conc, count, period)
    if rtype == PERIODIC_FIRE:
        _, at, due, ln, li = _head(rtype, _FIRE, data)
        name, job_id = _strs(rtype, data, _FIRE.size, (ln, li))
        if not name:
            raise _bad(rtype, "empty schedule name")
        return PeriodicFire(name, at, due, _check_id(rtype, job_id))
    if rtype == DEPENDS:
        _, policy, at, li, count = _head(rtype, _DEPS, data)
        if policy not in (ON_FAILURE_CANCEL, ON_FAILURE_IGNORE):
            raise _bad(rtype, f"unknown on_parent_failure {policy}")
        pos = _DEPS.size + li
        if pos > len(data):
            raise _bad(rtype, "truncated id")
        (job_id,) = _strs(rtype, data[:pos], _DEPS.size, (li,))
        parents = []
        for _ in range(count):
            if pos + 2 > len(data):
                raise _bad(rtype, "truncated parent list")
            (n,) = _H.unpack_from(data, pos)
            pos += 2
            if pos + n > len(data):
                raise _bad(rtype, "truncated parent id")
            try:
                parents.append(_check_id(rtype, data[pos:pos + n].decode("utf-8")))
            except UnicodeDecodeError:
                raise _bad(rtype, "parent id is not valid UTF-8") from None
            pos += n
        if pos != len(data) or not parents:
            raise _bad(rtype, "trailing bytes or no parents")
        return Depends(_check_id(rtype, job_id), at, tuple(parents), policy)
    if rtype == PURGE:
        _, at, count = _head(rtype, _PURGE, data)
        pos = _PURGE.size
        if count > (len(data) - pos) // 2:
            raise _bad(rtype, f"count {count} exceeds the record")
        ids = []
        for _ in range(count):
            if pos + 2 > len(data):
                raise _bad(rtype, "truncated id list")
            (n,) = _H.unpack_from(data, pos)
            pos += 2
            if pos + n > len(data):
                raise _bad(rtype, "truncated id")
            try:
                ids.append(_check_id(rtype, data[pos:pos + n].decode("utf-8")))
            except UnicodeDecodeError:
                raise _bad(rtype, "id is not valid UTF-8") from None
            pos += n
        if pos != len(data):
            raise _bad(rtype, "trailing bytes")
        return Purge(at, tuple(ids))
    raise RecordError(f"unknown record type {rtype}")
