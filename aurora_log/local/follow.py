"""Follow a store's log as it grows: each committed transition, decoded, with its LSN.

A follower reads ``DIR/wal/`` read-only, takes no lock, and runs beside the writing process
(or inside it). It verifies every batch with the log's own C scanner (``log.scan_window``)
and never yields a record from a batch that does not verify: a batch still being written
(a torn tail) stops it there until the next poll. Its cursor is an LSN: every entry carries
its ``lsn``; resume with ``from_lsn=entry.lsn + 1``.

Where it reads: the segment holding the cursor, through a descriptor it keeps open (so a
segment retired by compaction while being read stays readable), window by window. At the
end of the written data it looks for the next segment; the writer seals a segment before it
creates the next one, so the next segment must start exactly at the LSN the follower expects
(anything else is CorruptionError). A bad batch in a segment that is no longer the newest is
corruption too; in the newest one it is a batch being written, retried.

What "committed" means here: written to the OS by the writer (what another process sees).
In ``sync`` mode that is at most one group commit ahead of the fdatasync; a power cut can
still take back records a follower has already yielded (the writer's next open cuts a
torn tail), so a standby that must match the primary byte for byte should re-check the LSN
it resumes from.
"""

from __future__ import annotations

import json
import os
import struct
import time
from dataclasses import dataclass, field
from datetime import datetime, UTC
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterator

from . import records as R
from .log import (SEG_HDR, check_segment_header, close_fd, list_segment_files, open_read,
                  pread_at, scan_window)
from ..errors import CorruptionError, CursorGoneError

__all__ = ["LogEntry", "Follower", "follow", "CursorGoneError", "entry_from_record"]

_WINDOW = 1 << 20            # bytes read per step; grows to fit a bigger batch
_MAX_BATCH = 256 << 20
_U32 = struct.Struct("<I")


@dataclass(frozen=True)
class LogEntry:
    """One committed transition: ``type`` is the record's name ("enqueue", "claim", ...),
    ``job_id`` the job it is about (None for a record about many jobs, e.g. "purge"),
    ``at`` its time, ``fields`` the rest of the record as JSON-ready values."""
    lsn: int
    type: str
    job_id: str | None
    at: datetime | None
    fields: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the CLI's ``tail --json`` line)."""
        return {"lsn": self.lsn, "type": self.type, "job_id": self.job_id,
                "at": None if self.at is None else self.at.isoformat(), **self.fields}


def _jsonable(name: str, value: Any) -> Any:
    if isinstance(value, bytes):
        if name in ("payload", "result"):      # stored as JSON text
            return json.loads(value)
        return value.hex()                     # attempt tokens
    if isinstance(value, tuple):
        return [_jsonable(name, v) for v in value]
    return value


def entry_from_record(lsn: int, rtype: int, payload: bytes) -> LogEntry:
    """Decode one stored record into a LogEntry (CorruptionError for a payload that does
    not decode). A record type this version does not know is returned undecoded, as
    ``type="type<N>"`` with the payload in hex, so a follower survives a newer writer."""
    name = R.RECORD_NAMES.get(rtype)
    if name is None:
        return LogEntry(lsn, f"type{rtype}", None, None, {"payload_hex": payload.hex()})
    rec = R.decode(rtype, payload)
    data = rec._asdict()
    job_id = data.pop("id", None)
    at_ms = data.pop("at_ms", None)
    at = None if at_ms is None else datetime.fromtimestamp(at_ms / 1000, UTC)
    fields = {k: _jsonable(k, v) for k, v in data.items()}
    return LogEntry(lsn, name, job_id, at, fields)


class Follower:
    """A read-only cursor over a store's log. ``read()`` returns the records committed
    since the last call (possibly none); it never blocks. Not thread-safe: one per thread.

    ``from_lsn``: the first LSN wanted; None = the oldest stored record."""

    def __init__(self, directory, from_lsn: int | None = None, *,
                 max_record_bytes: int = 16 << 20):
        if from_lsn is not None and (isinstance(from_lsn, bool) or
                                     not isinstance(from_lsn, int) or from_lsn < 1):
            raise ValueError(f"from_lsn must be an int >= 1 or None, got {from_lsn!r}")
        self.directory = Path(directory)
        self._wal = self.directory / "wal"
        self._want = from_lsn            # skip records below it
        self._max_record = max_record_bytes
        self._fd = -1
        self._seg: tuple[int, Path] | None = None
        self._pos = 0                    # offset in the segment of the next batch
        self._next = 0                   # the LSN expected there
        self._window = _WINDOW
        self._seg_limit = max_record_bytes

    @property
    def next_lsn(self) -> int | None:
        """The cursor: the LSN the next record returned will have (None before the first
        segment was found)."""
        if self._seg is None:
            return self._want
        return max(self._next, self._want or 1)

    def close(self) -> None:
        if self._fd >= 0:
            close_fd(self._fd)
            self._fd = -1

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # ------------------------------------------------------------------ positioning
    def _open_segment(self, first_lsn: int, path: Path) -> None:
        fd = open_read(path)
        try:
            _, limit = check_segment_header(path, pread_at(fd, SEG_HDR, 0, path), first_lsn)
        except BaseException:
            close_fd(fd)
            raise
        self.close()
        self._fd, self._seg = fd, (first_lsn, path)
        self._pos, self._next = SEG_HDR, first_lsn
        # the segment's own record limit (a version 1 header has none: the opener's)
        self._seg_limit = limit or self._max_record

    def _replaced(self) -> bool:
        """The segment file at our path is no longer the one we read: a roll out of a
        segment that held no record renames its successor over it (same name)."""
        assert self._seg is not None
        try:
            return os.stat(self._seg[1]).st_ino != os.fstat(self._fd).st_ino
        except FileNotFoundError:
            return False            # retired: what it held is still readable through _fd

    def _locate(self) -> bool:
        """Open the segment that holds the cursor. False: the store has no segment yet."""
        segs = list_segment_files(self._wal)
        if not segs:
            return False
        want = self._want
        if want is None:
            want = self._want = segs[0][0]
        if want < segs[0][0]:
            raise CursorGoneError(f"LSN {want} is no longer stored in {self.directory} (the "
                                  f"oldest stored record is {segs[0][0]})")
        first, path = [s for s in segs if s[0] <= want][-1]
        try:
            self._open_segment(first, path)
        except FileNotFoundError:      # retired between the listing and the open
            return self._locate()
        return True

    # ------------------------------------------------------------------ reading
    def read(self) -> list[tuple[int, int, bytes]]:
        """(lsn, rtype, payload) of every record committed after the cursor and verified,
        in LSN order; advances the cursor past them."""
        if self._seg is None and not self._locate():
            return []
        out: list[tuple[int, int, bytes]] = []
        rechecked = False
        while True:
            assert self._seg is not None
            seg_lsn, path = self._seg
            buf = pread_at(self._fd, self._window, self._pos, path)
            ws = scan_window(buf, self._next, self._seg_limit)
            want = self._want or 1
            out.extend(r for r in ws.records if r[0] >= want)
            self._pos += ws.end
            self._next = ws.next_lsn
            if ws.end and ws.end == len(buf) and len(buf) == self._window:
                continue                              # the window ended between batches
            if not ws.complete:
                blen = _U32.unpack_from(buf, ws.end)[0] if len(buf) - ws.end >= 4 else 0
                if ws.end and len(buf) == self._window:
                    continue                          # the next window starts at that batch
                if len(buf) == self._window and self._window < blen <= _MAX_BATCH:
                    self._window = blen               # a batch bigger than the window
                    continue
            # end of what is written here: a batch being written, or zeros
            if self._next == seg_lsn and self._replaced():
                self._open_segment(seg_lsn, path)     # an empty segment rolled over
                continue
            newer = [s for s in list_segment_files(self._wal) if s[0] > seg_lsn]
            if not newer:
                return out
            if not rechecked:        # the last batches and the roll may have come since
                rechecked = True
                continue
            nxt_lsn, nxt_path = newer[0]
            # A roll writes the next segment first, then the old one's SEAL: a bad batch
            # here while the next segment continues exactly is that SEAL being written.
            if not ws.complete and nxt_lsn != self._next:
                raise CorruptionError(f"bad batch in a sealed segment: {ws.reason}",
                                      file=str(path), offset=self._pos, lsn=self._next)
            if nxt_lsn != self._next:
                raise CorruptionError(f"LSN gap between segments: expected {self._next}, "
                                      f"segment starts at {nxt_lsn}", file=str(nxt_path),
                                      offset=0, lsn=self._next)
            self._open_segment(nxt_lsn, nxt_path)
            rechecked = False


def follow(directory, from_lsn: int | None = None, *, poll: float = 0.2, wait: bool = True,
           stop: Callable[[], bool] | None = None,
           max_record_bytes: int = 16 << 20) -> Iterator[LogEntry]:
    """Yield every transition of the store at ``directory`` from ``from_lsn`` on (None:
    the oldest stored), as LogEntry objects, as they are committed. ``wait=False`` stops
    at the current end; otherwise it polls every ``poll`` seconds until ``stop()`` returns
    True, then reads once more so nothing committed before the stop is missed (or until
    the caller stops iterating). Keep ``entry.lsn + 1`` to resume."""
    if isinstance(poll, bool) or not isinstance(poll, (int, float)) or poll <= 0:
        raise ValueError(f"poll must be a number of seconds > 0, got {poll!r}")
    follower = Follower(directory, from_lsn, max_record_bytes=max_record_bytes)
    try:
        while True:
            # stop() is sampled before the read: what was committed before the stop
            # (a queue's last writes before close) is still read and yielded.
            stopping = not wait or (stop is not None and stop())
            for lsn, rtype, payload in follower.read():
                yield entry_from_record(lsn, rtype, payload)
            if stopping:
                return
            time.sleep(poll)
    finally:
        follower.close()
