"""Replay: a base state (a snapshot's, or empty) plus the log records after it, folded.

The one loop that turns stored records into a State. Used by recovery on open
(``Queue``: the newest usable snapshot + the WAL after it), by time travel
(``snapshot.state_as_of``: stop at an LSN or a time) and by ``verify`` (which passes its
checks in and reads every record). Each caller picks the base; this module only folds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import struct
from typing import Any

from . import records as R
from ..errors import CorruptionError
from ..job import MAX_DUE_MS
from .kernels import enqueue_run_build, enqueue_run_len
from .log import REC_HDR, Log
from .state import State
from .table import PENDING, LazyJobs

__all__ = ["replay", "Replayed", "ReplayCheck"]


class ReplayCheck(Protocol):
    """Checks run beside the fold (verify's). With one given, a record that does not
    decode is reported to it and skipped instead of raising."""

    def before(self, state: State, lsn: int, rtype: int, rec: R.Record) -> None:
        """Called before ``rec`` is applied."""

    def after(self, state: State, lsn: int, rtype: int, rec: R.Record) -> None:
        """Called after ``rec`` is applied."""

    def undecodable(self, lsn: int, error: CorruptionError) -> None:
        """Record ``lsn`` does not decode (it is skipped)."""


@dataclass
class Replayed:
    state: State
    next_lsn: int          # the LSN after the last record replayed
    max_at_ms: int         # the largest record time seen (the base's included)
    bytes: int             # log bytes replayed (records with their headers)


def replay(logs: Log | Sequence[Log], base: State | None = None, base_lsn: int = 0, *,
           base_max_at_ms: int = -1, until_lsn: int | None = None,
           until_ms: int | None = None, check: ReplayCheck | None = None) -> Replayed:
    """Fold the records after ``base_lsn`` from ``logs`` (read in order: e.g. the archive,
    then the live WAL) into ``base`` (None: an empty state, then ``base_lsn`` is 0).

    ``until_lsn``: stop after that LSN. ``until_ms``: stop before the first record later
    than that time (the state as of a moment). ``check``: see ReplayCheck.
    CorruptionError if the logs do not hold every LSN from ``base_lsn + 1`` on (a gap
    between them), or from the log itself (a record that does not decode, without check)."""
    if isinstance(logs, Log):
        logs = [logs]
    state = base if base is not None else State()
    expected = base_lsn + 1
    max_at = base_max_at_ms
    nbytes = 0
    # replay's hot path: an ENQUEUE folded straight from its bytes (no record object),
    # runs of them in bulk (_fold_enqueue_run)
    fused = check is None and until_ms is None
    if fused and until_lsn is None and all(
            type(lg).scan is Log.scan or type(lg).scan_chunks is not Log.scan_chunks
            for lg in logs):
        # (a log that bounds its scan its own way must bound scan_chunks the same way, as
        # the shared one does; one that does not is read record by record)
        return _replay_bulk(logs, state, expected, max_at)
    stop = False
    for lg in logs:
        if until_lsn is not None and expected > until_lsn:
            break
        if lg.next_lsn <= expected:
            continue
        _check_continues(lg, expected)
        for lsn, rtype, payload in lg.scan(expected):
            if until_lsn is not None and lsn > until_lsn:
                stop = True
                break
            if fused and rtype == R.ENQUEUE:
                at = state.apply_enqueue_bytes(lsn, payload)
            else:
                try:
                    rec = R.decode(rtype, payload)
                except CorruptionError as e:
                    if check is None:
                        raise
                    check.undecodable(lsn, e)
                    expected = lsn + 1
                    continue
                at = rec.at_ms
                if until_ms is not None and at > until_ms:
                    stop = True           # for good: the first record later than the time
                    break
                if check is not None:
                    check.before(state, lsn, rtype, rec)
                state.apply(lsn, rtype, rec)
                if check is not None:
                    check.after(state, lsn, rtype, rec)
            if at > max_at:
                max_at = at
            nbytes += len(payload) + REC_HDR
            expected = lsn + 1
        if stop:
            break
    for lg in logs:
        lg.drop_open_read()
    return Replayed(state, expected, max_at, nbytes)


def _check_continues(lg: Log, expected: int) -> None:
    """CorruptionError unless ``lg`` holds the record at ``expected`` or an earlier one."""
    if lg.first_lsn > expected:
        raise CorruptionError(f"history needed from LSN {expected} is not stored "
                              f"(this log starts at {lg.first_lsn})",
                              file=str(lg.directory), lsn=expected)


def _replay_bulk(logs: Sequence[Log], state: State, expected: int, max_at: int) -> Replayed:
    """``replay`` without checks or limits: the records by chunks (``Log.scan_chunks``),
    each run of plain ENQUEUE records folded in bulk, everything else one by one exactly
    as ``replay`` folds it."""
    nbytes = 0
    apply_enqueue_bytes, apply = state.apply_enqueue_bytes, state.apply
    decode, ENQUEUE = R.decode, R.ENQUEUE
    for lg in logs:
        if lg.next_lsn <= expected:
            continue
        _check_continues(lg, expected)
        for mv, recs, n in lg.scan_chunks(expected):
            i = 0
            while i < n and recs[i].lsn < expected:
                i += 1
            while i < n:
                r = recs[i]
                if r.type == ENQUEUE:
                    m, at, nb = _fold_enqueue_run(state, mv, recs + i, n - i)
                    if m > 0:
                        i += m
                        expected = recs[i - 1].lsn + 1
                        nbytes += nb
                        if at > max_at:
                            max_at = at
                        continue
                    stop = i + (-m if m < 0 else 1)   # -m: that many, one by one
                else:
                    stop = i + 1
                while i < stop:
                    r = recs[i]
                    lsn, rtype, off = r.lsn, r.type, r.off
                    payload = bytes(mv[off:off + r.len])
                    if rtype == ENQUEUE:
                        at = apply_enqueue_bytes(lsn, payload)
                    else:
                        rec = decode(rtype, payload)
                        at = rec.at_ms
                        apply(lsn, rtype, rec)
                    if at > max_at:
                        max_at = at
                    nbytes += len(payload) + REC_HDR
                    expected = lsn + 1
                    i += 1
    for lg in logs:
        lg.drop_open_read()       # (a log with nothing after the base was never scanned)
    return Replayed(state, expected, max_at, nbytes)


_ENQ_KEY = struct.Struct("<HHH")    # ENQUEUE_HEAD's id, job_type and queue lengths
_ENQ_KEY_AT = 48


def _fold_enqueue_run(state: State, mv: memoryview, recs: Any, n: int) -> tuple[int, int, int]:
    """Fold the run of plain ENQUEUE records of one (job_type, queue) pair at the start of
    ``recs[:n]`` (native/enqrun.c decides which records qualify and builds the blobs):
    the same state as ``apply_enqueue_bytes`` one by one. Returns (m, the largest record
    time, bytes folded) with m records folded; m = 0: the first record is not one (fold it
    alone); m < 0: the -m records of the run need the one-by-one fold (an id held already
    or repeated, a job waiting for parents, a pair name that is not UTF-8)."""
    m = enqueue_run_len(mv, recs, n)
    if m == 0:
        return 0, 0, 0
    off = recs[0].off
    li, lt, lq = _ENQ_KEY.unpack_from(mv, off + _ENQ_KEY_AT)
    a = off + R.ENQUEUE_HEAD.size + li
    key = (lt, bytes(mv[a:a + lt + lq]))
    pair = state._pair_raw.get(key)
    if pair is None:
        try:
            job_type, queue = key[1][:lt].decode(), key[1][lt:].decode()
        except UnicodeDecodeError:
            return -m, 0, 0
        pair = state.pair_index(queue, job_type)
        state._pair_raw[key] = pair
    bb, ends, lines, dues, ats, prios, nbytes = enqueue_run_build(mv, recs, m, pair,
                                                                  MAX_DUE_MS)
    ids = lines.decode("ascii").split("\n")
    ids.pop()
    control = state.control
    distinct = set(ids)     # (a set: isdisjoint then walks the smaller side, often the dict)
    if len(distinct) != m or (control.waiting and
                              not control.waiting.keys().isdisjoint(distinct)):
        return -m, 0, 0
    starts = [0]
    starts += ends[:-1]
    values = list(map(bb.__getitem__, map(slice, starts, ends)))
    jobs = state.jobs
    if type(jobs) is LazyJobs:
        if not jobs.insert_many_new(ids, values, lines, distinct):
            return -m, 0, 0
    else:
        if not jobs.keys().isdisjoint(ids):
            return -m, 0, 0
        jobs.update(zip(ids, values, strict=True))
    first, last = recs[0].lsn, recs[m - 1].lsn
    if last > state.last_lsn:
        state.last_lsn = last
    state.applied += m
    state._counts[PENDING] += m
    queue = state.pairs[pair][0]
    qc = state._qcounts.get(queue)
    if qc is None:
        qc = state._qcounts[queue] = [0] * 7
    qc[PENDING] += m
    state.order.add_many(ids, pair, prios, dues, first, ats)
    return m, max(ats), nbytes
