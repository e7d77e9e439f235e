"""A segment file scanned through one reused window instead of read whole.

Reading a 64 MiB segment into a fresh buffer costs more in page faults than in copying
(issue 21: the reopen read the newest segment whole, twice in shared mode). ``SegmentWindows``
runs the same C scanner (au_scan_next) over the file a window at a time, through a buffer
it reuses, and gives the same answer as a scan over the whole file:

- a batch (or the 4-byte word that says "end of data") cut by the window's end is read
  again at the start of the next window; a batch longer than the window gets a window of
  its own length (the buffer grows to the longest batch, never to the file);
- a batch that does not verify is re-read at a window's start covering it whole (or up to
  the scan's end) before it is reported, so the reason is the one a whole-file scan gives;
- ``first_nonzero_after`` checks the zero tail a window at a time (every byte, to the end).

Every read goes through the syscall table (au_pread_full), as the whole-file reads did.
Offsets reported are the file's.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from typing import Any

from ._binding import ffi, lib, os_error

__all__ = ["SegmentWindows", "WINDOW"]

WINDOW = 1 << 20        # 1 MiB: small enough to stay in cache, large enough for few calls
_CHUNK = 4096           # records handed out per au_scan_next call
_U32 = struct.Struct("<I")
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def _new_buffer(n: int) -> mmap.mmap:
    """An anonymous mapping, not a bytearray: freed, it goes back to the system at once
    (a freed malloc block of megabytes would raise malloc's mmap threshold and leave the
    next big allocations on the heap, which a process rarely returns: RSS that stays).
    Populated at once where the system can (every byte is read into anyway): one call
    instead of a page fault per page."""
    return mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _POPULATE)


class SegmentWindows:
    """Scan the batches of one segment file from ``pos`` (a batch boundary where LSN
    ``next_lsn`` starts) up to ``end`` (the file's size, or a published position).

    After ``records()`` is exhausted: ``status`` is lib.AU_SCAN_END or AU_SCAN_BAD;
    ``pos`` the file offset where valid data ends (the bad batch's offset when BAD);
    ``next_lsn``, ``batches``, ``last_flags``, ``reason`` (BAD only) as au_scan's.
    ``marks`` holds (next_lsn, offset) of verified batch boundaries, one per window: a
    later scan of the same bytes may start at one of them (Log.scan_chunks does, after
    open() verified the newest segment)."""

    def __init__(self, fd: int, path: Any, pos: int, next_lsn: int, end: int,
                 max_record: int, window: int | None = None) -> None:
        self.fd, self.path = fd, path
        self.pos, self.next_lsn, self.end, self.max_record = pos, next_lsn, end, max_record
        self.status = lib.AU_SCAN_MORE
        self.reason: str | None = None
        self.batches = 0
        self.last_flags = 0
        self.marks: list[tuple[int, int]] = []
        window = WINDOW if window is None else window      # read at call time (tests)
        self._buf: Any = _new_buffer(min(window, max(end - pos, 0)) or 1)
        self._wpos = pos            # file offset of the buffer's first byte
        self._wlen = 0              # bytes of the file in the buffer

    def _read(self, off: int, n: int) -> None:
        """Fill the buffer with up to n file bytes at off (fewer at the end of the file)."""
        if len(self._buf) < n:
            self._buf = _new_buffer(n)   # the longest batch so far, reused from now on
        r = lib.au_pread_full(self.fd, ffi.from_buffer(self._buf), n, off)
        if r < 0:
            raise os_error(r, self.path)
        self._wpos, self._wlen = off, r

    def records(self, cap: int = _CHUNK,
                from_lsn: int = 0) -> Iterator[tuple[memoryview, Any, int]]:
        """``(buf, recs, n)`` per chunk as Log.scan_chunks (``recs[i].off`` indexes
        ``buf``); both valid only until the next chunk is asked for. ``cap`` 0: hand out
        no records (only verify). Whole batches below ``from_lsn`` are verified and
        stepped over without handing out their records; the batch holding it is handed
        out whole (the caller skips its records below from_lsn)."""
        recs = ffi.new("au_rec[]", max(cap, 1))
        grow = 0                     # a batch at the window's start needs this many bytes
        while True:
            want = min(max(len(self._buf), grow), self.end - self.pos)
            self._read(self.pos, want)
            # a short read (the file ended before ``end``) ends the scan as the file does
            at_end = self.pos + self._wlen >= self.end or self._wlen < want
            self.marks.append((self.next_lsn, self.pos))
            s = ffi.new("au_scan *")
            s.pos, s.next_lsn, s.limit, s.max_record = 0, self.next_lsn, self._wlen, \
                self.max_record
            cbuf = ffi.from_buffer(self._buf)
            mv = memoryview(self._buf)
            while s.next_lsn <= from_lsn:
                s.rec_left = 0            # left set by the last step: see below
                lib.au_scan_next(cbuf, s, recs, 0)
                if s.status != lib.AU_SCAN_MORE:
                    break
            # a step leaves the stepped batch's records pending (rec_left): the batch that
            # took next_lsn past from_lsn is handed out from its first record below
            while s.status == lib.AU_SCAN_MORE:
                if cap:
                    n = lib.au_scan_next(cbuf, s, recs, cap)
                    if n:
                        yield mv, recs, n
                else:
                    s.rec_left = 0
                    lib.au_scan_next(cbuf, s, recs, 0)
            del mv, cbuf
            if s.batches:
                self.last_flags = s.last_flags
            self.batches += s.batches
            self.next_lsn = s.next_lsn
            grow = 0
            if s.status == lib.AU_SCAN_END:
                self.pos += s.pos
                if at_end or (s.pos < self._wlen and self._wlen - s.pos >= 4):
                    self.status = lib.AU_SCAN_END      # zeros here (or the end itself)
                    return
                continue                                # cut by the window: read on
            # BAD at s.bad_off: final only if the window held the batch as a whole-file
            # scan would (it starts the window, and the window reaches its end or ours)
            self.pos += s.bad_off
            if s.bad_off == 0 and (at_end or self._wlen >= self._batch_len()):
                self.status = lib.AU_SCAN_BAD
                self.reason = ffi.string(lib.au_reason(s.reason)).decode()
                return
            if s.bad_off == 0:
                grow = self._batch_len()

    def _batch_len(self) -> int:
        """The length the batch at the window's start claims (unverified: only sizes the
        next read, which never passes the scan's end)."""
        if self._wlen < 4:
            return lib.AU_BATCH_HDR
        return max(_U32.unpack_from(self._buf, 0)[0], lib.AU_BATCH_HDR)

    def first_nonzero_after(self) -> int:
        """The file offset of the first non-zero byte in [pos, file end), or -1: the zero
        tail after the end of data, checked a window at a time."""
        size = lib.au_file_size(self.fd)
        if size < 0:
            raise os_error(size, self.path)
        off = self.pos
        if self._wpos <= off < self._wpos + self._wlen:
            z = lib.au_first_nonzero(ffi.from_buffer(self._buf), off - self._wpos, self._wlen)
            if z >= 0:
                return self._wpos + z
            off = self._wpos + self._wlen
        while off < size:
            self._read(off, min(len(self._buf), size - off))
            if self._wlen == 0:
                break
            z = lib.au_first_nonzero(ffi.from_buffer(self._buf), 0, self._wlen)
            if z >= 0:
                return off + z
            off += self._wlen
        return -1

    def release(self) -> None:
        """Let go of the buffer (a scan may end long before its owner does)."""
        self._buf = b""
        self._wlen = 0
