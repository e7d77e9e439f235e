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

from . import records as R
from ..errors import CorruptionError
from .log import REC_HDR, Log
from .state import State

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
    # replay's hot path: an ENQUEUE folded straight from its bytes (no record object)
    fused = check is None and until_ms is None
    stop = False
    for lg in logs:
        if until_lsn is not None and expected > until_lsn:
            break
        if lg.next_lsn <= expected:
            continue
        if lg.first_lsn > expected:
            raise CorruptionError(f"history needed from LSN {expected} is not stored "
                                  f"(this log starts at {lg.first_lsn})",
                                  file=str(lg.directory), lsn=expected)
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
    return Replayed(state, expected, max_at, nbytes)
