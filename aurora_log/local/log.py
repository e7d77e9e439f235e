"""The write-ahead log's Python face: Log, RecoveryReport, and file helpers.

The byte format and the recovery rules are in native/FORMAT.md; the C core (native/) does
framing, checksums, group commit and scanning. This module does directory handling,
recovery decisions and the typed errors. Every syscall goes through the C core's syscall
table (so aurora_log.testing.faults can record and fail them), including the file helpers at the end
that the snapshot layer uses.

No Python lock is held while a call waits in C (sync/flush release the GIL and block in C),
so many threads can commit at once and share one write + one fdatasync.
"""

from __future__ import annotations

import array
import errno as _errno
import fcntl
import os
import re
import stat
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator, Sequence
from typing import Any

from ._binding import (MODES, append_now1_keeping_gil, check_io, check_writer, ffi, lib,
                       os_error, strerror, writer_address)
from ..errors import (AuroraLogError, ClosedError, CorruptionError, DurabilityError,
                      ReadOnlyError)
from .holders import refused_by_exclusive, refused_by_shared
from .segscan import SegmentWindows

__all__ = [
    "Log", "RecoveryReport", "SegmentInfo", "TailCut", "write_file_durably", "read_file",
    "remove_file", "make_dirs", "is_file", "crc32c", "crc_mask", "REC_HDR", "SEG_HDR",
    "read_file_buffer",
    "WindowScan", "scan_window", "list_segment_files", "check_segment_header", "open_read",
    "pread_at", "close_fd",
]

SEG_RE = re.compile(r"([0-9]{20})\.seg")    # fullmatch only: ASCII digits, no trailing newline
UNSYNCED = ".unsynced"      # <segment>.unsynced: see Log._mark_unsynced
_NOT_IO = (0, _errno.EINVAL, _errno.ETIMEDOUT, _errno.ENOMEM)  # failures that lost no write
SEG_HDR = lib.AU_SEG_HDR
REC_HDR = lib.AU_REC_HDR    # a record's frame header (length, crc, LSN, type) in bytes
_SCAN_CHUNK = 4096
_REC = struct.Struct("=QQII")  # au_rec: lsn, payload offset, len, type
_ZEROS = bytes(1 << 20)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NO_WAIT = lib.AU_WAIT_NONE
_WRITTEN = lib.AU_WAIT_WRITTEN
assert _NO_WAIT == 0 and _WRITTEN == 1     # append_reserved's fast path passes the level
_QUEUED = lib.AU_QUEUED                    # as au_append_now1's `write` flag
_AGAIN = lib.AU_AGAIN
_WAIT = {"none": lib.AU_WAIT_NONE, "written": lib.AU_WAIT_WRITTEN,
         "durable": lib.AU_WAIT_MODE, "synced": lib.AU_WAIT_SYNCED}


# upper bounds (seconds) of the writer's fdatasync duration buckets (aurora.h)
FDATASYNC_BOUNDS = tuple(64e-6 * (1 << i) for i in range(lib.AU_SYNC_BUCKETS - 1))


def _plain_record(r) -> bool:
    """A (type, bytes) tuple with a type in range: what the GIL-keeping append takes
    (ctypes would truncate a type over 255 where cffi raises). Anything else goes to
    _pack, which names what is wrong."""
    return type(r) is tuple and len(r) == 2 and type(r[1]) is bytes and \
        type(r[0]) is int and 0 < r[0] < 256


@dataclass(frozen=True)
class SegmentInfo:
    path: Path
    first_lsn: int
    size: int


@dataclass(frozen=True)
class TailCut:
    """A torn tail cut off the newest segment at open."""
    file: str           # the segment
    offset: int         # where the cut starts (first bad byte/batch)
    reason: str         # why the bytes there are not a valid batch
    bytes: int          # non-zero bytes removed (kept in `kept_as`)
    lsn: int            # the LSN that was expected at `offset` (the next one appended)
    kept_as: str | None  # <segment>.broken-<n>, or None in read_only mode (nothing written)


@dataclass
class RecoveryReport:
    """What Log.open found."""
    segments: int = 0                 # segment files
    records: int = 0                  # records stored (next_lsn - first_lsn)
    first_lsn: int = 1
    next_lsn: int = 1
    tail_records: int = 0             # records verified in the newest segment
    bytes_truncated: int = 0
    cuts: list[TailCut] = field(default_factory=list)
    removed_tmp: list[str] = field(default_factory=list)  # leftover *.seg.tmp deleted

    @property
    def truncated(self) -> bool:
        return bool(self.cuts)


def _seg_name(first_lsn: int) -> str:
    return f"{first_lsn:020d}.seg"


def crc32c(data, value: int = 0) -> int:
    """CRC-32C of `data` continuing from `value` (as the `crc32c` package), in C."""
    buf = ffi.from_buffer(data)
    return lib.au_crc32c(value, buf, len(buf))


def crc_mask(crc: int) -> int:
    """The masked crc stored on disk (FORMAT.md), from the C core: one definition."""
    return lib.au_crc_mask(crc)


# --------------------------------------------------------------------------------------
# file helpers (through the syscall table)

def _open(path, flags, mode=0o600) -> int:
    fd = lib.au_open(os.fsencode(str(path)), flags | _O_CLOEXEC, mode)
    if fd < 0:
        raise os_error(fd, path)
    return fd


def _read_fd(fd: int, path) -> bytearray:
    size = lib.au_file_size(fd)
    if size < 0:
        raise os_error(size, path)
    buf = bytearray(size)
    if size:
        n = lib.au_pread_full(fd, ffi.from_buffer(buf), size, 0)
        if n < 0:
            raise os_error(n, path)
        del buf[n:]
    return buf


def _read_buf(path, limit: int | None = None) -> bytearray:
    """The file's bytes (only the first ``limit`` when given: a segment's written part,
    without the preallocated zeros after it)."""
    fd = _open(path, os.O_RDONLY)
    try:
        if limit is None:
            return _read_fd(fd, path)
        buf = bytearray(limit)
        n = lib.au_pread_full(fd, ffi.from_buffer(buf), limit, 0)
        if n < 0:
            raise os_error(n, path)
        del buf[n:]
        return buf
    finally:
        lib.au_close(fd)


def _pread(path, n: int) -> bytes:
    fd = _open(path, os.O_RDONLY)
    try:
        buf = bytearray(n)
        r = lib.au_pread_full(fd, ffi.from_buffer(buf), n, 0)
        if r < 0:
            raise os_error(r, path)
        return bytes(buf[:r])
    finally:
        lib.au_close(fd)


def read_file(path) -> bytes:
    """The whole file. FileNotFoundError/OSError as os.open would raise."""
    return bytes(_read_buf(path))


def read_file_buffer(path) -> bytearray:
    """The whole file in a new bytearray, read once (read_file copies it again into
    bytes: for a snapshot of many MiB that copy is a tenth of its load)."""
    return _read_buf(path)


def write_file_durably(path, data) -> None:
    """Write `data` to `path` atomically and durably: <path>.tmp (0600) -> write -> fsync ->
    rename -> fsync the directory. DurabilityError (with errno) if any step fails; the
    temporary file is removed then."""
    path = str(path)
    tmp = path + ".tmp"
    fd = lib.au_open(os.fsencode(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_CLOEXEC,
                     0o600)
    check_io(fd, "open", tmp)
    ok = False
    try:
        buf = ffi.from_buffer(data)
        check_io(lib.au_pwrite_full(fd, buf, len(buf), 0), "write", tmp)
        check_io(lib.au_fsync(fd), "fsync", tmp)
        rc, fd = lib.au_close(fd), -1
        check_io(rc, "close", tmp)
        check_io(lib.au_rename(os.fsencode(tmp), os.fsencode(path)), "rename", tmp)
        check_io(lib.au_fsync_dir(os.fsencode(os.path.dirname(path) or ".")), "fsync dir",
                 os.path.dirname(path))
        ok = True
    finally:
        if fd >= 0:
            lib.au_close(fd)
        if not ok:
            lib.au_unlink(os.fsencode(tmp))


def remove_file(path, *, fsync_dir: bool = True) -> None:
    """unlink(path) (FileNotFoundError if missing), then fsync its directory."""
    path = str(path)
    rc = lib.au_unlink(os.fsencode(path))
    if rc == -_errno.ENOENT:
        raise os_error(rc, path)
    check_io(rc, "unlink", path)
    if fsync_dir:
        check_io(lib.au_fsync_dir(os.fsencode(os.path.dirname(path) or ".")), "fsync dir",
                 os.path.dirname(path))


def _mkdir(path: Path) -> bool:
    """mkdir 0700; True if created."""
    rc = lib.au_mkdir(os.fsencode(str(path)), 0o700)
    if rc == -_errno.EEXIST:
        if not path.is_dir():
            raise NotADirectoryError(_errno.ENOTDIR, "not a directory", str(path))
        return False
    if rc < 0:
        raise os_error(rc, path)
    return True


def _fsync_dir(path) -> None:
    check_io(lib.au_fsync_dir(os.fsencode(str(path))), "fsync dir", path)


def make_dirs(path) -> None:
    """Create `path` and its missing parents, each 0700 through the syscall table (so fault
    injection and the crash simulator see them), each made durable by an fsync of its
    parent before anything is put in it. NotADirectoryError if a component is a file."""
    path = Path(path)
    missing = []
    p = path
    while not p.is_dir() and p.parent != p:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        if _mkdir(d):
            _fsync_dir(d.parent)


# --------------------------------------------------------------------------------------
# scanning helpers

def _new_scan(pos: int, next_lsn: int, limit: int, max_record: int):
    s = ffi.new("au_scan *")
    s.pos = pos
    s.next_lsn = next_lsn
    s.limit = limit
    s.max_record = max_record
    return s


def _check_header(path: Path, hdr: bytes | bytearray, name_lsn: int) -> tuple[int, int]:
    """Verifies a segment header; returns the segment's preallocated size and the record
    limit it was written with (the store's own limit, whatever this opener's is)."""
    out = ffi.new("uint64_t[2]")
    limit = ffi.new("uint32_t *")
    r = lib.au_segment_header_check(ffi.from_buffer(hdr), len(hdr), out, out + 1, limit)
    if r:
        raise CorruptionError(ffi.string(lib.au_reason(r)).decode(), file=str(path), offset=0)
    if out[0] != name_lsn:
        raise CorruptionError(f"segment header first LSN {out[0]} does not match its name",
                              file=str(path), offset=0)
    return out[1], limit[0]


@dataclass
class _TailScan:
    end: int            # offset of the end of valid data
    next_lsn: int
    records: int
    bad_off: int | None = None
    reason: str | None = None
    size: int = 0       # preallocated size from the segment header
    last_flags: int = 0  # flags of the last verified batch
    limit: int = 0      # the record limit in the segment header
    file_size: int = -1  # the file's size (-1: len of the buffer analysed)


_BROKEN_TMP = re.compile(r"[0-9]{20}\.seg\.broken-[0-9]+\.tmp")


def _is_leftover_tmp(name: str) -> bool:
    """A temporary file of ours in wal/ that never became anything (FORMAT.md, recovery
    rule 1): a segment being created or the spare (<20 digits>.seg.tmp), a torn tail
    being kept (<segment>.broken-<n>.tmp), an unsynced marker being written."""
    return (name.endswith(".seg.tmp") and SEG_RE.fullmatch(name[:-4]) is not None) or \
        _BROKEN_TMP.fullmatch(name) is not None or \
        (name.endswith(UNSYNCED + ".tmp") and SEG_RE.fullmatch(name[:-len(UNSYNCED) - 4])
         is not None)


def is_file(path) -> bool:
    """A regular file (or a symlink to one)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


def _batch_hdr_crc(h: bytes) -> int:
    c = crc32c(h[8:32], crc32c(h[0:4]))
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


_BATCH = struct.Struct("<IIQIIQ")  # len, crc, first_lsn, count, flags, durable_end


def _announced_next(path: Path, size: int, chunk: int = 64 << 10) -> tuple[int, int] | None:
    """(offset, first LSN of the next segment) if the segment ends with a valid
    SEAL|NEXT, else None. Reads backwards from the end to the last non-zero byte, which
    lies in that SEAL's durable_end (its own offset, never 0): a few KiB for a segment
    that filled up, more only when a big batch rolled early."""
    fd = _open(path, os.O_RDONLY)
    try:
        end = size
        while end > SEG_HDR:
            start = max(SEG_HDR, end - chunk)
            buf = bytearray(end - start)
            n = lib.au_pread_full(fd, ffi.from_buffer(buf), len(buf), start)
            if n < 0:
                raise os_error(n, path)
            last = lib.au_last_nonzero(ffi.from_buffer(buf), 0, n)
            if last >= 0:
                p = start + last
                off = (p - 24) & ~7
                if off < SEG_HDR:
                    return None
                h = _pread_at(fd, path, off, lib.AU_BATCH_HDR)
                if len(h) < lib.AU_BATCH_HDR:
                    return None
                blen, crc, first, count, flags, dend = _BATCH.unpack(h)
                if blen == lib.AU_BATCH_HDR and crc == _batch_hdr_crc(h) and count == 0 \
                        and flags == lib.AU_FLAG_SEAL | lib.AU_FLAG_NEXT and dend == off:
                    return off, first
                return None
            end = start
        return None
    finally:
        lib.au_close(fd)


def _pread_at(fd: int, path, off: int, n: int) -> bytes:
    buf = bytearray(n)
    r = lib.au_pread_full(fd, ffi.from_buffer(buf), n, off)
    if r < 0:
        raise os_error(r, path)
    return bytes(buf[:r])


def _size_and_header(fd: int, path: Path, lsn: int) -> tuple[int, int, int]:
    """A segment open at ``fd``: its file size, and its header's preallocated size and
    record limit (CorruptionError from _check_header)."""
    fsize = lib.au_file_size(fd)
    if fsize < 0:
        raise os_error(fsize, path)
    hdr = bytearray(SEG_HDR)
    r = lib.au_pread_full(fd, ffi.from_buffer(hdr), SEG_HDR, 0)
    if r < 0:
        raise os_error(r, path)
    size, limit = _check_header(path, bytes(hdr[:r]), lsn)
    return fsize, size, limit


def _unsynced_offset(segment: Path) -> int | None:
    """The offset recorded in <segment>.unsynced, or None. Written atomically, so anything
    but a decimal offset in it is damage: CorruptionError."""
    marker = segment.with_name(segment.name + UNSYNCED)
    try:
        text = read_file(marker)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise CorruptionError("unsynced-offset marker is not a regular file",
                              file=str(marker), offset=0) from None
    try:
        off = int(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        off = -1
    if off < SEG_HDR:
        raise CorruptionError("unreadable unsynced-offset marker", file=str(marker), offset=0)
    return off


def _scan_tail(buf, first_lsn: int, max_record: int) -> _TailScan:
    """Verify every batch of a segment image; stop at the end of data or the first bad batch
    (or at non-zero bytes after the end of data)."""
    cbuf = ffi.from_buffer(buf)
    s = _new_scan(SEG_HDR, first_lsn, len(buf), max_record)
    recs = ffi.new("au_rec[]", _SCAN_CHUNK)
    while True:
        lib.au_scan_next(cbuf, s, recs, _SCAN_CHUNK)
        if s.status != lib.AU_SCAN_MORE:
            break
    ts = _TailScan(end=s.pos, next_lsn=s.next_lsn, records=s.next_lsn - first_lsn,
                   last_flags=s.last_flags if s.batches else 0)
    if s.status == lib.AU_SCAN_BAD:
        ts.bad_off = s.bad_off
        ts.reason = ffi.string(lib.au_reason(s.reason)).decode()
    else:
        z = lib.au_first_nonzero(cbuf, s.pos, len(buf))
        if z >= 0:
            ts.bad_off = s.pos
            ts.reason = "non-zero bytes after the end of data"
    return ts


@dataclass
class WindowScan:
    """What scan_window found in a window of a segment (offsets relative to the window)."""
    records: list[tuple[int, int, bytes]]   # (lsn, rtype, payload), every crc verified
    end: int            # the window offset just after the last valid batch
    next_lsn: int       # the LSN expected next
    complete: bool      # True: stopped at zeros (end of written data) or the window's end
    reason: str | None  # why the batch at ``end`` did not verify (complete=False)


def scan_window(buf, next_lsn: int, max_record: int) -> WindowScan:
    """Verify the batches of ``buf``, a window of a segment starting at a batch boundary,
    and return their records. The window's last batch may be cut short by the window or
    still being written: the scan stops before it (the caller reads on from ``end``).
    The same C scanner as Log.scan; a reader that follows a live log (follow.py) uses it
    on windows it reads itself, because a read_only Log is a picture taken at open."""
    cbuf = ffi.from_buffer(buf)
    s = _new_scan(0, next_lsn, len(buf), max_record)
    recs = ffi.new("au_rec[]", _SCAN_CHUNK)
    rbuf = ffi.buffer(recs)
    mv = memoryview(buf)
    out: list[tuple[int, int, bytes]] = []
    while True:
        n = lib.au_scan_next(cbuf, s, recs, _SCAN_CHUNK)
        for rlsn, off, ln, rtype in _REC.iter_unpack(rbuf[:n * _REC.size]):
            out.append((rlsn, rtype, bytes(mv[off:off + ln])))
        if s.status != lib.AU_SCAN_MORE:
            break
    if s.status == lib.AU_SCAN_BAD:
        return WindowScan(out, s.bad_off, s.next_lsn, False,
                          ffi.string(lib.au_reason(s.reason)).decode())
    return WindowScan(out, s.pos, s.next_lsn, True, None)


def list_segment_files(wal: Path) -> list[tuple[int, Path]]:
    """(first_lsn, path) of every segment in ``wal``, oldest first."""
    try:
        names = os.listdir(wal)
    except FileNotFoundError:
        return []
    return sorted((int(m.group(1)), wal / name) for name in names
                  if (m := SEG_RE.fullmatch(name)))


def check_segment_header(path: Path, header: bytes, first_lsn: int) -> tuple[int, int]:
    """Verify a segment header (CorruptionError); returns the preallocated size and the
    record limit the segment was written with."""
    return _check_header(path, header, first_lsn)


def open_read(path) -> int:
    """A read-only descriptor (through the syscall table). FileNotFoundError if missing."""
    return _open(path, os.O_RDONLY)


def pread_at(fd: int, n: int, offset: int, path=None) -> bytes:
    """Up to n bytes at offset (fewer at the end of the file)."""
    buf = bytearray(n)
    r = lib.au_pread_full(fd, ffi.from_buffer(buf), n, offset)
    if r < 0:
        raise os_error(r, path)
    del buf[r:]
    return bytes(buf)


def close_fd(fd: int) -> None:
    lib.au_close(fd)


# --------------------------------------------------------------------------------------

class Log:
    """The write-ahead log. Use Log.open(); see docs/INTERNALS.md for the contract."""

    def __init__(self):  # use Log.open
        self._w = None
        self._lock_fd = -1
        self._closed = False
        self._state_lock = threading.Lock()
        self._tls = threading.local()
        self._reserve_lock = threading.Lock()
        self._next = 1                    # the next LSN to reserve (writable logs)
        self._failed_seen = False         # a write or wait here reported a failed writer
        self._failed_errno = 0            # ... and the errno it failed with
        self._marked = False              # <segment>.unsynced written after a failure
        self._w_addr = 0                  # the writer's address, for the GIL-keeping append
        self.report = RecoveryReport()
        self.directory = Path()
        self._wal = Path()
        self._first_lsn = 1
        self._ro_next_lsn = 1
        self._ro_cut: tuple[int, int] | None = None  # read_only: (segment lsn, cut offset)
        self._ro_torn_seal: tuple[int, int] | None = None  # read_only: a torn roll SEAL
        self._continued = False           # read_only: the next segment lives elsewhere
        self.read_only = False
        self.durability = "sync"
        self.max_record_bytes = 16 << 20
        self.segment_bytes = 64 << 20
        self._shared = False              # SharedLog: many processes (sharedlog.py)
        self._recovered_tail = None       # (segment LSN, path, end, next LSN) of _recover
        # (path, end of data, marks) of the newest segment as open() verified it: the
        # first scan (replay, which starts after a snapshot) starts at the last verified
        # batch boundary (lsn, offset) at or below its LSN instead of verifying the
        # segment again from its header. Single use; dropped by any scan and close.
        self._open_marks: tuple[Path, int, list[tuple[int, int]]] | None = None

    # ---------------------------------------------------------------- open / recovery
    @classmethod
    def open(cls, directory, *, durability: str = "sync", interval_ms: int = 20,
             segment_bytes: int = 64 << 20, max_record_bytes: int = 16 << 20,
             read_only: bool = False, continued: bool = False, shared: bool = False) -> Log:
        """Open (or create) the log in `directory`; see docs/INTERNALS.md. ``continued``
        (read_only only): its newest segment's successor lives elsewhere, as in
        DIR/archive, whose segments continue in DIR/wal; a SEAL announcing it is then
        not a missing segment. ``shared``: many processes share the log (a SharedLog,
        docs/INTERNALS.md "Shared mode"); the default holds it exclusively."""
        if durability not in MODES:
            raise ValueError(f"durability must be one of {sorted(MODES)}, not {durability!r}")
        if not 1 <= max_record_bytes <= (255 << 20):
            raise ValueError("max_record_bytes must be between 1 and 255 MiB")
        if segment_bytes < 4096:
            raise ValueError("segment_bytes must be at least 4096")
        if not 0 <= interval_ms <= 60_000:
            raise ValueError("interval_ms must be between 0 and 60000")
        if shared and not read_only and cls is Log:
            from .sharedlog import SharedLog
            return SharedLog.open(directory, durability=durability, interval_ms=interval_ms,
                                  segment_bytes=segment_bytes,
                                  max_record_bytes=max_record_bytes)
        self = cls()
        self.directory = Path(directory)
        self._wal = self.directory / "wal"
        if continued and not read_only:
            raise ValueError("continued=True needs read_only=True")
        self.read_only = read_only
        self._continued = continued
        self.durability = durability
        self.max_record_bytes = int(max_record_bytes)
        self.segment_bytes = (int(segment_bytes) + 7) & ~7
        try:
            if read_only:
                self._recover_read_only()
            else:
                self._prepare_dirs()
                self._take_lock()
                self._recover(MODES[durability], int(interval_ms))
        except BaseException as e:
            self._release()
            if not read_only and isinstance(e, (OSError, DurabilityError)) and \
                    e.errno == _errno.EROFS:
                raise ReadOnlyError(
                    f"{self.directory} is on a read-only file system ({e}); open it with "
                    "read_only=True to read it") from e
            raise
        return self

    def _prepare_dirs(self):
        make_dirs(self._wal)

    def _take_lock(self):
        path = self.directory / "LOCK"
        fd = lib.au_open(os.fsencode(str(path)), os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o600)
        if fd < 0:
            raise os_error(fd, path)
        rc = lib.au_flock(fd, lib.au_lock_ex_nb())
        if rc < 0:
            if rc in (-_errno.EWOULDBLOCK, -_errno.EAGAIN):
                # which mode holds it: a shared lock is granted beside shared holders only
                shared = lib.au_flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB) == 0
                lib.au_close(fd)        # drops the probe's lock with the descriptor
                raise (refused_by_shared if shared else refused_by_exclusive)(
                    self.directory, path)
            lib.au_close(fd)
            raise os_error(rc, path)
        self._lock_fd = fd

    def _list_segments(self) -> list[tuple[int, Path]]:
        out = []
        try:
            names = os.listdir(self._wal)
        except FileNotFoundError:
            return []
        for name in names:
            m = SEG_RE.fullmatch(name)
            if m:
                path = self._wal / name
                if not is_file(path):
                    raise CorruptionError("named like a segment but not a regular file",
                                          file=str(path))
                out.append((int(m.group(1)), path))
        out.sort()
        return out

    def _check_headers(self, segs):
        """Every header verified and first LSNs increasing; and LSN continuity where a
        segment says where it continues: a segment sealed by a roll (SEAL|NEXT) names
        the next segment's first LSN, which must be the next file's (a deleted or
        foreign segment in the middle). Log.scan verifies every record as it reads."""
        prev = 0
        for i, (lsn, path) in enumerate(segs):
            if lsn <= prev or lsn == 0:
                raise CorruptionError("segment first LSNs not increasing", file=str(path),
                                      offset=0, lsn=lsn)
            size = _check_header(path, _pread(path, SEG_HDR), lsn)[0]
            if i + 1 < len(segs):
                nxt = _announced_next(path, size)
                if nxt is not None and nxt[1] != segs[i + 1][0]:
                    raise CorruptionError(
                        f"LSN gap between segments: this one ends sealed for a next segment "
                        f"at LSN {nxt[1]}, the next file is {segs[i + 1][1].name}",
                        file=str(path), offset=nxt[0], lsn=nxt[1])
            prev = lsn

    def _analyze_newest(self, lsn: int, path: Path):
        """(buf, ts): the newest segment verified to its end of data, every byte after it
        checked zero. The common case (a clean tail) is checked through a reused window
        (segscan.py) and returns buf None; anything else (a bad batch, a non-zero byte
        in the zero tail, a SEAL|NEXT, an unsynced marker) is analysed again over the
        whole file below, which decides and reports exactly as before."""
        fast = self._analyze_newest_windowed(lsn, path)
        if fast is not None:
            return None, fast
        buf = _read_buf(path)
        size, limit = _check_header(path, buf[:SEG_HDR], lsn)
        if len(buf) < size:
            # header and zeros were fsynced before the file was renamed into place, and
            # writes never change its size: no crash shortens it, so bytes were lost
            raise CorruptionError(
                f"segment file shorter than its preallocated size ({len(buf)} of {size}): "
                "bytes were lost, this is not a crash shape", file=str(path),
                offset=len(buf))
        ts = _scan_tail(buf, lsn, limit)
        ts.size, ts.file_size = size, len(buf)
        if ts.last_flags & lib.AU_FLAG_NEXT and not self._continued:
            # a roll writes SEAL|NEXT only once the next segment is durable: it is gone
            raise CorruptionError(
                f"the newest segment ends with a SEAL announcing a next segment "
                f"({_seg_name(ts.next_lsn)}), which is missing: records from LSN "
                f"{ts.next_lsn} on were lost", file=str(path), offset=ts.end - SEG_HDR,
                lsn=ts.next_lsn)
        if ts.bad_off is not None:
            ev = lib.au_find_durable_evidence(ffi.from_buffer(buf), len(buf), ts.bad_off,
                                              limit)
            if ev >= 0:
                raise CorruptionError(
                    f"{ts.reason}; a later batch at offset {ev} shows these bytes were "
                    "fdatasynced, so this is not a torn tail",
                    file=str(path), offset=ts.bad_off, lsn=ts.next_lsn)
        unsynced = _unsynced_offset(path)
        if unsynced is not None and unsynced < ts.end:
            # bytes written after the last good fdatasync of a writer whose next one
            # failed: the page cache may hold what the disk does not; cut them
            cut = _scan_tail(memoryview(buf)[:unsynced], lsn, limit)
            cut.size, cut.file_size = ts.size, ts.file_size
            if cut.bad_off is None:
                cut.bad_off = cut.end
                cut.reason = ("written after the last successful fdatasync; a later "
                              f"fdatasync of this segment failed ({path.name}{UNSYNCED})")
            ts = cut
        ts.limit = limit
        return buf, ts

    def _analyze_newest_windowed(self, lsn: int, path: Path) -> _TailScan | None:
        """The clean-tail case of _analyze_newest without reading the file whole; None
        when the whole-file analysis must decide. Raises what it raises for a short file
        (checked first, as there)."""
        fd = _open(path, os.O_RDONLY)
        try:
            fsize, size, limit = _size_and_header(fd, path, lsn)
            if fsize < size:
                raise CorruptionError(
                    f"segment file shorter than its preallocated size ({fsize} of {size}): "
                    "bytes were lost, this is not a crash shape", file=str(path),
                    offset=fsize)
            if _unsynced_offset(path) is not None:
                return None
            ws = SegmentWindows(fd, path, SEG_HDR, lsn, fsize, limit)
            for _ in ws.records(0):
                pass
            if ws.status != lib.AU_SCAN_END or ws.first_nonzero_after() >= 0 or \
                    (ws.last_flags & lib.AU_FLAG_NEXT and not self._continued):
                return None
            ws.release()
        finally:
            lib.au_close(fd)
        if not self.read_only:
            self._open_marks = (path, ws.pos, ws.marks)
        return _TailScan(end=ws.pos, next_lsn=ws.next_lsn, records=ws.next_lsn - lsn,
                         last_flags=ws.last_flags, size=size, limit=limit, file_size=fsize)

    def _torn_roll_seal(self, segs, ts: _TailScan) -> tuple[Path, int, bytes, str] | None:
        """A roll makes the next segment durable before it writes SEAL|NEXT into the old
        one, and writes nothing to the next one until that SEAL is fdatasynced. So when
        the newest segment holds no batch, the one before it may end with a torn SEAL
        (FORMAT.md, recovery rule 3a). Returns (segment, offset, bytes after its end of
        data, reason) when that is all that is wrong there, else None (then Log.scan
        reports what it finds)."""
        if len(segs) < 2 or ts.end != SEG_HDR or ts.bad_off is not None:
            return None
        lsn, path = segs[-2]
        buf = _read_buf(path)
        size, limit = _check_header(path, buf[:SEG_HDR], lsn)
        prev = _scan_tail(buf, lsn, limit)
        if prev.bad_off is None or prev.next_lsn != segs[-1][0] or len(buf) != size:
            return None
        cbuf = ffi.from_buffer(buf)
        if lib.au_first_nonzero(cbuf, min(prev.end + lib.AU_BATCH_HDR, size), size) >= 0:
            return None      # more than one SEAL's bytes: damage, Log.scan reports it
        return path, prev.end, bytes(buf[prev.end:prev.end + lib.AU_BATCH_HDR]).rstrip(b"\0"), \
            f"torn SEAL of a roll ({prev.reason}); the next segment exists and is empty"

    def _recover_read_only(self):
        if not self.directory.is_dir():
            raise FileNotFoundError(_errno.ENOENT, "no such store directory", str(self.directory))
        segs = self._list_segments()
        rep = self.report
        rep.segments = len(segs)
        if not segs:
            return
        self._check_headers(segs)
        lsn, path = segs[-1]
        buf, ts = self._analyze_newest(lsn, path)
        torn = self._torn_roll_seal(segs, ts)
        if torn is not None:
            tpath, toff, tbytes, treason = torn
            rep.cuts.append(TailCut(str(tpath), toff, treason, len(tbytes), lsn, None))
            self._ro_torn_seal = (segs[-2][0], toff)
        if ts.bad_off is not None:
            last = lib.au_last_nonzero(ffi.from_buffer(buf), ts.bad_off, len(buf))
            nbytes = max(0, last + 1 - ts.bad_off)
            rep.cuts.append(TailCut(str(path), ts.bad_off, ts.reason, nbytes, ts.next_lsn, None))
            rep.bytes_truncated = nbytes
            self._ro_cut = (lsn, ts.bad_off)
        self._first_lsn = segs[0][0]
        self._ro_next_lsn = ts.next_lsn
        rep.tail_records = ts.records
        rep.first_lsn, rep.next_lsn = self._first_lsn, ts.next_lsn
        rep.records = ts.next_lsn - self._first_lsn

    def _recover(self, mode: int, interval_ms: int):
        rep = self.report
        # leftover <20 digits>.seg.tmp: a segment being created, or the spare
        # (00000000000000000000.seg.tmp, see native/FORMAT.md) in any state: never used
        for name in os.listdir(self._wal):
            # only regular files: we never make a directory (or anything else) by these
            # names, so such an entry is not a leftover of ours and is left alone
            if _is_leftover_tmp(name) and is_file(self._wal / name):
                remove_file(self._wal / name, fsync_dir=False)
                rep.removed_tmp.append(name)
        if rep.removed_tmp:
            _fsync_dir(self._wal)
        segs = self._list_segments()
        if not segs:
            check_io(lib.au_segment_create(os.fsencode(str(self._wal)), 1, self.segment_bytes,
                                           self.max_record_bytes),
                     "create segment", self._wal / _seg_name(1))
            segs = self._list_segments()
        rep.segments = len(segs)
        self._check_headers(segs)
        lsn, path = segs[-1]
        buf, ts = self._analyze_newest(lsn, path)
        size = ts.file_size
        target = max((size + 7) & ~7, ts.size)
        if ts.bad_off is not None:
            assert buf is not None      # only the whole-file analysis reports a bad tail
            cbuf = ffi.from_buffer(buf)
            last = lib.au_last_nonzero(cbuf, ts.bad_off, size)
            cut = bytes(buf[ts.bad_off:last + 1]) if last >= ts.bad_off else b""
            kept = self._keep_broken(path, cut) if cut else None
            self._zero(path, ts.bad_off, max(size, last + 1), target)
            rep.cuts.append(TailCut(str(path), ts.bad_off, ts.reason, len(cut), ts.next_lsn,
                                    kept))
            rep.bytes_truncated = len(cut)
        elif size < target:
            self._zero(path, size, size, target)
        if ts.bad_off is not None or buf is not None:
            self._open_marks = None    # the marks are for a clean tail (set by the window)
        del buf
        torn = self._torn_roll_seal(segs, ts)
        if torn is not None:
            tpath, toff, tbytes, treason = torn
            kept = self._keep_broken(tpath, tbytes)
            self._zero(tpath, toff, toff + lib.AU_BATCH_HDR, 0)
            rep.cuts.append(TailCut(str(tpath), toff, treason, len(tbytes), lsn, kept))
        rep.tail_records = ts.records
        if ts.limit < self.max_record_bytes:
            # this opener may write records the newest segment's header does not allow:
            # write them to a new segment that records this opener's limit
            check_io(lib.au_segment_create(os.fsencode(str(self._wal)), ts.next_lsn,
                                           self.segment_bytes, self.max_record_bytes),
                     "create segment", self._wal / _seg_name(ts.next_lsn))
            segs = self._list_segments()
            lsn, path = segs[-1]
            self._open_marks = None     # no longer the segment being written
            ts = _TailScan(end=SEG_HDR, next_lsn=ts.next_lsn, records=0,
                           size=_check_header(path, _pread(path, SEG_HDR), lsn)[0],
                           limit=self.max_record_bytes)
            target = ts.size
            rep.segments = len(segs)
        for name in os.listdir(self._wal):       # their cuts are durable now
            if name.endswith(UNSYNCED) and is_file(self._wal / name):
                remove_file(self._wal / name)
        self._first_lsn = segs[0][0]
        rep.first_lsn, rep.next_lsn = self._first_lsn, ts.next_lsn
        rep.records = ts.next_lsn - self._first_lsn
        self._recovered_tail = (lsn, path, ts.end, ts.next_lsn)
        if self._shared:          # the shared page's writer takes over (sharedlog.py)
            return
        w = ffi.new("au_writer **")
        rc = lib.au_writer_open(w, os.fsencode(str(self._wal)), os.fsencode(str(path)), lsn,
                                ts.end, target, ts.next_lsn, self.segment_bytes,
                                self.max_record_bytes, mode, interval_ms)
        check_writer(rc, "open writer", None)
        # freed only when no Python reference (hence no in-flight call) remains
        self._w = ffi.gc(w[0], lib.au_writer_free)
        self._next = ts.next_lsn
        # the writer outlives every call that uses its address: self._w holds it
        self._w_addr = writer_address(self._w) if append_now1_keeping_gil is not None else 0

    def _keep_broken(self, path: Path, data: bytes) -> str:
        n = 1
        prefix = path.name + ".broken-"
        for name in os.listdir(path.parent):
            if name.startswith(prefix) and name[len(prefix):].isdigit():
                n = max(n, int(name[len(prefix):]) + 1)
        kept = path.parent / f"{prefix}{n}"
        write_file_durably(kept, data)
        return str(kept)

    @staticmethod
    def _zero(path: Path, start: int, end: int, target: int):
        """Overwrite [start, end) with zeros and extend the file with zeros to `target`;
        then fdatasync."""
        fd = _open(path, os.O_RDWR)
        try:
            stop = max(end, target)
            off = start
            zb = ffi.from_buffer(_ZEROS)
            while off < stop:
                n = min(len(_ZEROS), stop - off)
                check_io(lib.au_pwrite_full(fd, zb, n, off), "write", path)
                off += n
            check_io(lib.au_fdatasync(fd), "fdatasync", path)
        finally:
            lib.au_close(fd)

    def _release(self):
        if self._lock_fd >= 0:
            lib.au_close(self._lock_fd)
            self._lock_fd = -1

    # ---------------------------------------------------------------- properties
    @property
    def first_lsn(self) -> int:
        return self._first_lsn

    @property
    def next_lsn(self) -> int:
        """The next LSN to be reserved (every LSN below it is taken)."""
        if self._w is None:
            return self._ro_next_lsn
        return self._next

    @property
    def failed(self) -> bool:
        return self._w is not None and not self._closed and lib.au_writer_failed(self._w) != 0

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict:
        """Writer counters: fdatasyncs, writes, rounds, batches, records, bytes, rolls,
        spares (spare segment files prepared), spare_rolls (rolls that used one),
        spare_errors (spares that failed; never fatal)."""
        if self._w is None:
            return {}
        s = ffi.new("au_stats *")
        lib.au_writer_stats(self._w, s)
        out = {k: getattr(s, k) for k in
               ("fdatasyncs", "writes", "rounds", "batches", "records", "bytes", "rolls",
                "spares", "spare_rolls", "spare_errors")}
        # time in fdatasync: total seconds, and per-bucket counts with their upper bounds
        # (seconds; the last bucket has no bound)
        out["fdatasync_seconds"] = s.fdatasync_ns / 1e9
        out["fdatasync_buckets"] = list(s.fdatasync_hist)
        out["fdatasync_bounds"] = FDATASYNC_BOUNDS
        return out

    def _tls_ptr(self):
        p = getattr(self._tls, "p", None)
        if p is None:
            p = self._tls.p = ffi.new("uint64_t[4]")
        return p

    def _writer(self, what: str):
        if self._closed:
            raise ClosedError("the log is closed")
        w = self._w
        if w is None:
            raise ReadOnlyError(f"{what}: the log is open read_only")
        return w

    # ---------------------------------------------------------------- writing
    # LSNs are reserved here, in Python, and the records follow in one C call that may
    # also wait for them. A caller that must order its records with its own state (the
    # queue) reserves under its lock and appends after leaving it, so no call that drops
    # the GIL runs under that lock; the C writer parks ranges that arrive early.

    def reserve(self, n: int = 1) -> int:
        """Reserve the next n LSNs; returns the first. The caller MUST then hand exactly
        those records to append_reserved(): a reserved range that never arrives stalls
        every later commit until the writer gives up on it and fails (30 s)."""
        self._writer("reserve")
        if self._failed_seen:     # refuse before the caller changes its state for nothing
            raise DurabilityError("the log failed earlier; nothing more is acknowledged "
                                  "until it is reopened")
        with self._reserve_lock:
            first = self._next
            self._next = first + n
        return first

    def append_reserved(self, first_lsn: int, records: Sequence[tuple[int, bytes]],
                        wait: str = "none", *, checked=None) -> int:
        """Append records with the LSNs reserved for them (first_lsn, first_lsn + 1, ...)
        as one atomic batch, then wait: "none", "written" (handed to the OS), "durable"
        (fdatasynced in sync mode, written otherwise) or "synced" (fdatasynced, any mode).
        Returns the last LSN. Validation errors here fail the writer (the LSNs are taken):
        validate with check_records() before reserving, and pass what it returned as
        ``checked`` to skip packing the records twice."""
        level = _WAIT[wait]
        if len(records) == 1 and level <= _WRITTEN and self._w_addr and not self._closed:
            # every claim (and complete outside sync mode): one record, no wait past the
            # write; _writer and _append1 inlined (their calls were ~1 us of ~3)
            r = records[0]
            if type(r) is tuple and len(r) == 2 and type(r[1]) is bytes and \
                    type(r[0]) is int and 0 < r[0] < 256:
                rc = append_now1_keeping_gil(self._w_addr, first_lsn, r[0], r[1],
                                             level)             # level: 1 = write it too
                if rc == 0:
                    return first_lsn
                if rc == _QUEUED:
                    rc = lib.au_write_through(self._w, first_lsn)
                if rc != _AGAIN:
                    return self._appended(rc, self._w, first_lsn, 1)
                rc = lib.au_append_at1(self._w, first_lsn, r[0], r[1], len(r[1]), level)
                return self._appended(rc, self._w, first_lsn, 1)
        w = self._writer("append")
        if len(records) == 1 and _plain_record(records[0]):
            return self._append1(w, first_lsn, records[0], level)
        if checked is not None:
            return self._append_packed(w, first_lsn, checked, level)
        try:
            packed = self._pack(records)
        except BaseException:
            # the LSNs are taken: a range that never arrives would stall every later
            # commit until the hole timeout, so refuse it in C now (that fails the writer)
            lib.au_append_at(w, first_lsn, 0, ffi.NULL, ffi.NULL, ffi.NULL, lib.AU_WAIT_NONE)
            self._failed_seen = True
            raise
        return self._append_packed(w, first_lsn, packed, level)

    def _append1(self, w, lsn: int, record: tuple[int, bytes], level: int) -> int:
        """One record of bytes. Not waiting, or waiting only for the write: first without
        dropping the GIL (au_append_now1 writes it at once if nobody else is writing), then
        through cffi for the wait that is left."""
        rtype, payload = record
        if self._w_addr and (level == _NO_WAIT or level == _WRITTEN):
            rc = append_now1_keeping_gil(self._w_addr, lsn, rtype, payload,
                                         level == _WRITTEN)
            if rc == lib.AU_QUEUED:
                rc = lib.au_write_through(w, lsn)
            if rc != lib.AU_AGAIN:
                return self._appended(rc, w, lsn, 1)
        rc = lib.au_append_at1(w, lsn, rtype, payload, len(payload), level)
        return self._appended(rc, w, lsn, 1)

    def _append_packed(self, w, first_lsn: int, packed, level: int) -> int:
        types, lens, data = packed
        rc = lib.au_append_at(w, first_lsn, len(types), ffi.from_buffer(types),
                              ffi.from_buffer("uint32_t[]", lens), ffi.from_buffer(data), level)
        return self._appended(rc, w, first_lsn, len(types))

    def _appended(self, rc: int, w, first_lsn: int, n: int) -> int:
        if rc < 0:
            self._note_failure(rc, w)
            check_writer(rc, "append", w)
        return first_lsn + n - 1

    def check_records(self, records: Sequence[tuple[int, bytes]]):
        """TypeError/ValueError for records the writer would refuse (nothing is written).
        Returns them packed, for append_reserved(checked=...)."""
        return self._pack(records)

    def _check_sizes(self, lens, data) -> None:
        """ValueError for a record over max_record_bytes or a batch over the writer's
        limit (the writer would refuse it: nothing is written)."""
        if max(lens) > self.max_record_bytes:
            i = max(range(len(lens)), key=lens.__getitem__)
            raise ValueError(f"record {i} of {lens[i]} bytes is over max_record_bytes "
                             f"({self.max_record_bytes})")
        if len(data) + len(lens) * lib.AU_REC_HDR + 2 * lib.AU_BATCH_HDR > lib.AU_MAX_BATCH:
            raise ValueError(f"a batch of {len(data)} bytes is over the batch limit "
                             f"({lib.AU_MAX_BATCH} bytes)")

    def check_packed(self, types: bytes, lens, data: bytes):
        """check_records for records the caller packed itself (one type byte each, their
        lengths as an array of u32, their payloads concatenated): ValueError for what the
        writer would refuse (nothing is written). Returns them, for append_reserved."""
        if not types or len(types) != len(lens) or 0 in types or sum(lens) != len(data):
            raise ValueError("packed records do not add up (types, lengths, data)")
        self._check_sizes(lens, data)
        return types, lens, data

    def _pack(self, records):
        """(types, lengths, data) of records, validated. This is most of the Python work
        of a big commit (~0.1 ms per 1,000 records), so it runs once per append and the
        common case takes the cheapest forms (measured: list comprehensions, one join,
        array from a list); anything unusual goes to _pack_checked for the exact error."""
        try:
            types = bytes([r[0] for r in records])
            payloads = [r[1] for r in records]
            data = b"".join(payloads)
            sizes = list(map(len, payloads))
            lens = array.array("I", sizes)
        except (TypeError, ValueError, IndexError, OverflowError):
            return self._pack_checked(records)
        if not types or 0 in types or len(data) != sum(sizes):
            return self._pack_checked(records)
        if len(data) > self.max_record_bytes or \
                len(data) + len(lens) * lib.AU_REC_HDR + 2 * lib.AU_BATCH_HDR > lib.AU_MAX_BATCH:
            return self._pack_checked(records)   # a record (or the batch) may be too big
        return types, lens, data

    def _pack_checked(self, records):
        """_pack's slow path: every check, one at a time, with a message that names the
        record."""
        if not records:
            raise ValueError("no records to append")
        try:
            types = bytes([r[0] for r in records])
        except (TypeError, ValueError, IndexError):
            types = None
        if types is None or 0 in types:
            for i, r in enumerate(records):
                rtype = r[0] if isinstance(r, (tuple, list)) and r else r
                if not isinstance(rtype, int) or not 1 <= rtype <= 255:
                    raise ValueError(f"record {i}: type must be an int in 1..255, not {rtype!r}")
        payloads = [r[1] for r in records]
        try:
            data = b"".join(payloads)
            lens = array.array("I", map(len, payloads))
        except TypeError:
            for i, pl in enumerate(payloads):
                if not isinstance(pl, (bytes, bytearray)):
                    raise TypeError(f"record {i}: payload must be bytes or bytearray, not "
                                    f"{type(pl).__name__}") from None
            raise
        self._check_sizes(lens, data)
        if len(data) != sum(lens):   # a multi-byte memoryview: len() is not its byte size
            raise TypeError("payloads must be bytes or bytearray")
        return types, lens, data

    def append(self, rtype: int, payload) -> int:
        """Queue one record for the next group commit; returns its LSN (not yet durable:
        call sync(lsn))."""
        return self._append([(rtype, payload)], _WAIT["none"])

    def append_many(self, records: Sequence[tuple[int, bytes]]) -> int:
        """Queue records as one atomic batch; returns the LAST LSN (next_lsn - 1 for an
        empty sequence)."""
        return self._append(records, _WAIT["none"])

    def commit(self, records: Sequence[tuple[int, bytes]]) -> int:
        """append_many + sync in one call: returns the last LSN once durable (per the
        mode)."""
        return self._append(records, _WAIT["durable"])

    def _append(self, records, level: int) -> int:
        # validate and pack ONCE, before reserving (a refused record takes no LSN)
        w = self._writer("append")
        records = records if isinstance(records, list) else list(records)
        if not records:
            return self.next_lsn - 1
        if len(records) == 1:
            r = records[0]
            if _plain_record(r) and len(r[1]) <= self.max_record_bytes:
                return self._append1(w, self.reserve(1), r, level)
        packed = self._pack(records)
        return self._append_packed(w, self.reserve(len(records)), packed, level)

    def sync(self, lsn: int) -> None:
        """Block until every record <= lsn is written (and fdatasynced in "sync" mode)."""
        self._wait(lsn, "durable", "sync")

    def write_through(self, lsn: int) -> None:
        """Block until every record <= lsn is handed to the OS with write(), in every mode,
        without waiting for an fdatasync: a killed process then loses none of them (a power
        cut still may). Concurrent callers share the write."""
        self._wait(lsn, "written", "write_through")

    def flush(self) -> None:
        """Write and fdatasync everything appended so far, in every mode."""
        w = self._writer("flush")
        check_writer(lib.au_wait(w, self._next - 1, lib.AU_WAIT_SYNCED) if self._next > 1
                     else lib.au_flush(w), "flush", w)

    def _wait(self, lsn: int, wait: str, what: str) -> None:
        w = self._writer(what)
        if lsn < 1:
            return
        if lsn >= self._next:
            raise ValueError(f"{what}: LSN {lsn} was never appended (next is {self._next})")
        rc = lib.au_wait(w, lsn, _WAIT[wait])
        if rc < 0:
            self._note_failure(rc, w)
            check_writer(rc, what, w)

    def _note_failure(self, rc: int, w) -> None:
        if rc != lib.AU_E_CLOSED:
            self._failed_seen = True
            self._failed_errno = lib.au_writer_failed(w) or self._failed_errno
            self._mark_unsynced(w)

    def _mark_unsynced(self, w) -> None:
        """After an I/O error, leave `<segment>.unsynced` naming the offset the last
        successful fdatasync reached. Linux may mark the pages of a failed writeback clean
        ("fsyncgate"): a reopen in the same boot would read bytes that are not on the disk,
        trust them, and write after them, and a later power cut would leave a hole before
        acknowledged records. The next open cuts the segment there instead (FORMAT.md,
        recovery rule 3). Best effort: if even this write fails, nothing more can be done."""
        err = lib.au_writer_failed(w)
        if self._marked or err in _NOT_IO:
            return
        self._marked = True
        p = self._tls_ptr()
        lib.au_writer_durable(w, p, p + 1)
        try:
            write_file_durably(self._wal / (_seg_name(p[0]) + UNSYNCED), b"%d\n" % p[1])
        except (OSError, AuroraLogError):
            pass

    @property
    def failed_errno(self) -> int:
        """The errno that failed the writer, as a write or wait here reported it (0 while
        none has): the queue keeps claims working in memory on ENOSPC."""
        return self._failed_errno

    # ---------------------------------------------------------------- reading
    def segments(self) -> list[SegmentInfo]:
        out = []
        for lsn, path in self._list_segments():
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            out.append(SegmentInfo(path, lsn, size))
        return out

    def scan(self, from_lsn: int = 1) -> Iterator[tuple[int, int, bytes]]:
        """(lsn, rtype, payload) for every stored record >= from_lsn, in LSN order, every
        checksum verified. Sees everything appended before the call."""
        return self._scan(from_lsn, self._scan_bound())

    def scan_chunks(self, from_lsn: int = 1) -> Iterator[tuple[memoryview, Any, int]]:
        """``scan`` without an object per record (replay's bulk fold): ``(buf, recs, n)``
        per chunk of up to 4096 records, ``recs`` a cffi ``au_rec[]`` (lsn, payload offset
        in ``buf``, length, type) of which the first ``n`` are set. Both are valid only
        until the next chunk is asked for. The first chunk may start with records below
        from_lsn (the caller skips them); the checks are scan's."""
        return self._scan_chunks(from_lsn, self._scan_bound())

    def drop_open_read(self) -> None:
        """Let go of the newest segment's bytes open() kept for the first scan (replay
        calls this when it is done, whether or not it needed them)."""
        self._open_marks = None

    def _scan_bound(self):
        if self._closed:
            raise ClosedError("the log is closed")
        if self._w is not None:
            p = self._tls_ptr()
            if self._next > 1 and not lib.au_writer_failed(self._w):
                # a failed writer still reads what reached the file (disk full: reads work)
                check_writer(lib.au_wait(self._w, self._next - 1, lib.AU_WAIT_WRITTEN),
                             "scan", self._w)
            lib.au_writer_position(self._w, p, p + 1, p + 2, p + 3)
            bound = (p[0], p[1])
        elif self._ro_cut is not None:
            bound = self._ro_cut
        else:
            bound = None
        return bound

    def _scan(self, from_lsn, bound):
        for mv, recs, n in self._scan_chunks(from_lsn, bound):
            for rlsn, off, ln, rtype in _REC.iter_unpack(ffi.buffer(recs)[:n * _REC.size]):
                if rlsn >= from_lsn:
                    yield rlsn, rtype, bytes(mv[off:off + ln])

    def _scan_chunks(self, from_lsn, bound):
        opened, self._open_marks = self._open_marks, None
        segs = self._list_segments()
        if bound is not None:
            segs = [s for s in segs if s[0] <= bound[0]]
        expected = None
        for i, (lsn, path) in enumerate(segs):
            nxt = segs[i + 1][0] if i + 1 < len(segs) else None
            if nxt is not None and nxt <= from_lsn:
                expected = None
                continue
            is_bound = bound is not None and lsn == bound[0]
            fd = _open(path, os.O_RDONLY)
            try:
                expected = yield from self._scan_segment(fd, path, lsn, from_lsn, bound,
                                                         is_bound, expected, opened)
            finally:
                lib.au_close(fd)

    def _scan_segment(self, fd, path, lsn, from_lsn, bound, is_bound, expected, opened):
        """One segment of _scan_chunks, read through a reused window (segscan.py): the
        segment being written up to the bound only (the rest is up to 64 MiB of
        preallocated zeros), any other to its end, its zero tail checked."""
        fsize, seg_size, seg_limit = _size_and_header(fd, path, lsn)
        if expected is not None and lsn != expected:
            raise CorruptionError(
                f"LSN gap between segments: expected {expected}, segment starts at {lsn}",
                file=str(path), offset=0, lsn=expected)
        end = min(fsize, bound[1]) if is_bound else fsize
        start, start_lsn = SEG_HDR, lsn
        if opened is not None and opened[0] == path:
            # open() verified this segment's batches moments ago: start at its last
            # boundary at or below from_lsn (never past this scan's end)
            for m_lsn, m_off in opened[2]:
                if m_lsn <= from_lsn and m_off <= end and m_off >= start:
                    start, start_lsn = m_off, m_lsn
        ws = SegmentWindows(fd, path, start, start_lsn, end, seg_limit)
        yield from ws.records(from_lsn=from_lsn)
        if ws.status == lib.AU_SCAN_BAD and (lsn, ws.pos) != self._ro_torn_seal:
            raise CorruptionError(str(ws.reason), file=str(path), offset=ws.pos,
                                  lsn=ws.next_lsn)
        if is_bound:
            if ws.pos < end and self._w is not None:
                raise CorruptionError("end of data before the written position",
                                      file=str(path), offset=ws.pos, lsn=ws.next_lsn)
        else:
            if fsize < seg_size:
                raise CorruptionError(
                    f"segment file shorter than its preallocated size ({fsize} of "
                    f"{seg_size})", file=str(path), offset=fsize, lsn=ws.next_lsn)
            z = ws.first_nonzero_after() if ws.status == lib.AU_SCAN_END else -1
            if z >= 0 and (lsn, ws.pos) != self._ro_torn_seal:
                raise CorruptionError(
                    f"non-zero bytes after the end of data (first at offset {z})",
                    file=str(path), offset=ws.pos, lsn=ws.next_lsn)
        ws.release()
        return ws.next_lsn

    # ---------------------------------------------------------------- maintenance
    def retire_segments_before(self, lsn: int, *, archive_dir=None) -> list[Path]:
        """Delete (or move into archive_dir) the oldest sealed segments whose records are
        all < lsn. Never the segment being written. Returns the original paths.
        Oldest first, each removal made durable (wal/ fsynced) before the next: a crash
        leaves the remaining segments contiguous, never a gap open() would refuse."""
        w = self._writer("retire_segments_before")
        p = self._tls_ptr()
        lib.au_writer_position(w, p, p + 1, p + 2, p + 3)
        return self._retire_before(lsn, p[0], archive_dir)

    def _retire_before(self, lsn: int, current: int, archive_dir) -> list[Path]:
        """retire_segments_before with ``current`` the segment being written."""
        segs = self._list_segments()
        done: list[Path] = []
        for i in range(len(segs) - 1):
            first, path = segs[i]
            if first >= current or segs[i + 1][0] > lsn:
                break
            if archive_dir is None:
                remove_file(path)
            else:
                adir = Path(archive_dir)
                make_dirs(adir)
                dest = adir / path.name
                rc = lib.au_rename(os.fsencode(str(path)), os.fsencode(str(dest)))
                if rc == -_errno.EXDEV:
                    write_file_durably(dest, read_file(path))
                    remove_file(path, fsync_dir=False)
                else:
                    check_io(rc, "rename", path)
                    _fsync_dir(adir)
                _fsync_dir(self._wal)
            done.append(path)
        if done:
            self._first_lsn = self._list_segments()[0][0]
        return done

    # ---------------------------------------------------------------- closing
    def close(self) -> None:
        """Flush, seal, release the lock. Idempotent. DurabilityError if the final flush
        fails (the lock is released anyway)."""
        if self._w is not None and not self._closed and self._next > 1:
            # before refusing appends: ranges reserved by other threads are on their way
            lib.au_wait(self._w, self._next - 1, lib.AU_WAIT_WRITTEN)
        self._open_marks = None
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            w = self._w
        rc = 0
        try:
            if w is not None:
                rc = lib.au_writer_close(w)
                if rc < 0:
                    self._mark_unsynced(w)
        finally:
            self._release()
        if rc < 0:
            raise DurabilityError(f"close: final flush failed: {strerror(-rc)}", errno=-rc)

    def __del__(self):
        # a Log dropped without close(): flush, seal and release the lock like a file would,
        # so the directory is not left locked for the rest of the process
        try:
            if not self._closed and (self._w is not None or self._lock_fd >= 0):
                self.close()
        except Exception:
            pass

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("read_only" if self.read_only else
                                                self.durability)
        return f"<Log {str(self.directory)!r} {state}>"
