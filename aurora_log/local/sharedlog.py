"""The log shared by many processes: one store, any number of processes appending.

docs/INTERNALS.md ("Shared mode") is the protocol; native/FORMAT.md has the bytes of the
control page (DIR/shm, native/shm.c). In short:

- every process holds DIR/LOCK with LOCK_SH (an exclusive-mode Log holds LOCK_EX, so the
  two never mix) and maps DIR/shm;
- the first process to attach (nobody else holds the page) runs today's recovery (torn tail
  cut, leftovers deleted) and rebuilds the page from the recovered log; later ones repair
  nothing and take the page's positions;
- an append takes the page's robust append lock, writes its batch with one pwrite at the
  page's write position with LSNs from the page, publishes, unlocks (a caller that must
  decide on the newest state, the queue, catches up and decides while it holds the lock:
  ``locked()``); a durable wait is the page's cross-process group commit
  (``au_shm_wait_synced``: one leader fdatasyncs for every process);
- positions are ``seg_first_lsn << 32 | offset``: one u64 orders them across segments;
- a segment roll happens under the append lock and the sync lock (the next segment created
  inline; no spare in shared mode).

This path bypasses the in-process C writer (writer.c): each append writes its own batch
while holding the append lock, and batching across callers happens at the fdatasync.
"""

from __future__ import annotations

import errno as _errno
import fcntl
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._binding import (MODES, address, check_io, ffi, lib, os_error,
                       shm_append_try1_keeping_gil, shm_gil_kept, shm_next_lsn_keeping_gil,
                       strerror)
from .log import (_BATCH, _NOT_IO, SEG_HDR, UNSYNCED, _batch_hdr_crc, _check_header,
                  _new_scan, _O_CLOEXEC, _REC, _SCAN_CHUNK, Log, _pread, _seg_name, is_file,
                  remove_file, write_file_durably)
from ..errors import (FORKED_HINT, AuroraLogError, ClosedError, CorruptionError,
                      DurabilityError, ForkedError)
from .holders import refused_by_exclusive

__all__ = ["SharedLog", "pos_of", "MAX_SHARED_LSN"]

_OFF_BITS = 32
_OFF_MASK = (1 << _OFF_BITS) - 1
MAX_SHARED_LSN = (1 << 32) - 1      # positions keep the segment's first LSN in 32 bits
_BATCH1_HDRS = lib.AU_BATCH_HDR + lib.AU_REC_HDR   # a one-record batch's framing (FORMAT.md)
_POLL_MS = 20                       # a blocked locker rechecks (a dead holder) this often


# os.fork() calls in this interpreter (a child sees one more than its parent had): _h()
# needs a getpid() syscall only after a fork; the C side checks the pid again (check())
_forks = [0]
os.register_at_fork(after_in_child=lambda: _forks.__setitem__(0, _forks[0] + 1))


def pos_of(seg_first_lsn: int, off: int) -> int:
    """A position on the control page: segment and offset in one ordered u64."""
    return seg_first_lsn << _OFF_BITS | off


def _seg_off(pos: int) -> tuple[int, int]:
    return pos >> _OFF_BITS, pos & _OFF_MASK


class SharedLog(Log):
    """A Log that other processes append to at the same time (``Log.open(shared=True)``).

    The queue uses ``locked()`` to decide on the newest state and write in one critical
    section; ``read_from(cursor)`` to fold what others appended."""

    def __init__(self) -> None:
        super().__init__()
        self._shared = True
        self._shm = None
        self._pid = os.getpid()
        self._forks = _forks[0]        # a fork since: _h() compares pids (else it skips it)
        self._fd = -1                  # the newest segment as this process last saw it
        self._seg_first = 0
        self._seg_size = 0
        self._old_fds: list[int] = []  # older segments' fds (a covered wait never uses them)
        self._roll_seq = -1            # the page's roll counter when _fd was opened
        # (fd, its first LSN, its size, roll counter) as ONE tuple, replaced whole: a
        # thread that reads it without the append lock (the fast path, a durable wait)
        # never pairs one segment's fd with another's counter (the fast path's C checks
        # trust the fd only while the page's counter equals the one paired with it)
        self._seg_state: tuple[int, int, int, int] = (-1, 0, 0, -1)
        self._holder: int | None = None   # thread id holding the append lock
        self._interval: threading.Thread | None = None
        self._stop = threading.Event()
        self.rebuilt = False           # this open was alone: it recovered the log
        self.recovered_next_lsn = 0    # alone: every record below it is a dead process's
        self.scan_bound: tuple[int, int, int] | None = None  # scan() stops there if set
        self.retention_pin: Callable[[], int] | None = None  # see retire_segments_before
        self._stats = {"appends": 0, "records": 0, "bytes": 0, "rolls": 0, "owner_died": 0,
                       "repairs": 0, "fast_appends": 0}
        # one-record fast appends (try_append), counted apart: two additions instead of
        # four dict updates on the claim/complete path; stats() adds them in
        self._fast1 = 0
        self._fast1_bytes = 0

    @classmethod
    def open(cls, directory, *, durability: str = "sync", interval_ms: int = 20,
             segment_bytes: int = 64 << 20, max_record_bytes: int = 16 << 20,
             read_only: bool = False, continued: bool = False,
             shared: bool = True) -> SharedLog:
        """Attach to (or create) the log in ``directory`` shared with other processes."""
        if durability not in MODES:
            raise ValueError(f"durability must be one of {sorted(MODES)}, not {durability!r}")
        if not 1 <= max_record_bytes <= (255 << 20):
            raise ValueError("max_record_bytes must be between 1 and 255 MiB")
        if not 4096 <= segment_bytes <= _OFF_MASK:
            raise ValueError("segment_bytes must be between 4096 and 4 GiB - 1 in shared mode")
        if not 0 <= interval_ms <= 60_000:
            raise ValueError("interval_ms must be between 0 and 60000")
        self = cls()
        self.directory = Path(directory)
        self._wal = self.directory / "wal"
        self.durability = durability
        self.max_record_bytes = int(max_record_bytes)
        self.segment_bytes = (int(segment_bytes) + 7) & ~7
        try:
            self._prepare_dirs()
            self._take_shared_lock()
            self._attach(MODES[durability], int(interval_ms))
        except BaseException:
            self._release()
            raise
        if durability == "interval" and interval_ms > 0:
            self._interval = threading.Thread(target=self._interval_loop,
                                              args=(interval_ms / 1000.0,),
                                              name="aurora-log-shared-sync", daemon=True)
            self._interval.start()
        return self

    def _take_shared_lock(self) -> None:
        path = self.directory / "LOCK"
        fd = lib.au_open(os.fsencode(str(path)), os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o600)
        if fd < 0:
            raise os_error(fd, path)
        rc = lib.au_flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        if rc < 0:
            lib.au_close(fd)
            if rc in (-_errno.EWOULDBLOCK, -_errno.EAGAIN):
                raise refused_by_exclusive(self.directory, path)
            raise os_error(rc, path)
        self._lock_fd = fd

    def _attach(self, mode: int, interval_ms: int) -> None:
        out = ffi.new("au_shm **")
        alone = ffi.new("int *")
        page = self.directory / "shm"
        check_io(lib.au_shm_attach_begin(out, os.fsencode(str(page)), alone), "attach", page)
        h = out[0]
        try:
            if alone[0]:
                # nobody else is attached: the page may be stale (a crash) and the log's
                # tail may be torn; recover exactly as an exclusive open does
                self._recover(mode, interval_ms)
                assert self._recovered_tail is not None     # set by _recover
                lsn, path, end, next_lsn = self._recovered_tail
                self.recovered_next_lsn = next_lsn
                if next_lsn > MAX_SHARED_LSN:
                    raise AuroraLogError("shared mode supports LSNs below 2**32")
                # a rebuilt page's roll counter is 0, and nobody rolls before the gate
                # opens at the end of attach_end
                fd = self._open_segment(lsn, path, roll_seq=0)
                rc = lib.au_shm_attach_end(h, fd, pos_of(lsn, end), next_lsn)
            else:
                fd = -1
                rc = lib.au_shm_attach_end(h, -1, 0, 0)
            if rc == lib.AU_E_SHM_CORRUPT:
                raise CorruptionError(f"{page} is damaged while other processes use it; "
                                      "close every process of this store to rebuild it",
                                      file=str(page))
            check_io(rc, "attach", page)
        except BaseException:
            lib.au_shm_attach_abort(h)
            raise
        self._shm = ffi.gc(h, lib.au_shm_close)
        self._h_addr = address(h)      # the same handle for the GIL-keeping ctypes calls
        self.rebuilt = bool(alone[0])
        if fd < 0:
            seg, _ = _seg_off(self._position()[0])
            fd = self._open_segment(seg, self._wal / _seg_name(seg))
            # chosen outside the append lock: a roll may have come between the position
            # and the counter; the first lock or durable wait follows the page again
            self._roll_seq = -1
        segs = self._list_segments()
        self._first_lsn = segs[0][0] if segs else 1

    def _open_segment(self, lsn: int, path: Path, roll_seq: int | None = None) -> int:
        # the roll counter is read BEFORE the file is opened: a roll in between then shows
        # as a changed counter, never as a stale fd under a current one (the fast path
        # trusts the fd only while the page's counter equals ours)
        if roll_seq is None and self._shm is not None:
            roll_seq = lib.au_shm_roll_seq(self._shm)
        fd = lib.au_open(os.fsencode(str(path)), os.O_RDWR | _O_CLOEXEC, 0o600)
        if fd < 0:
            raise os_error(fd, path)
        try:
            size, _limit = _check_header(path, _pread(path, SEG_HDR), lsn)
        except BaseException:
            lib.au_close(fd)            # not ours yet: nothing else would close it
            raise
        if self._fd >= 0:
            self._old_fds.append(self._fd)
            while len(self._old_fds) > 2:
                lib.au_close(self._old_fds.pop(0))
        self._fd, self._seg_first, self._seg_size = fd, lsn, size
        # last: a thread that finds the counter current (wait_pos, outside the lock) then
        # reads this segment's fd, never the one before it
        if roll_seq is not None:
            self._roll_seq = roll_seq
        self._seg_state = (fd, lsn, size, self._roll_seq)
        return fd

    # ---------------------------------------------------------------- the page
    def _h(self):
        if self._closed:
            raise ClosedError("the log is closed")
        if _forks[0] != self._forks and os.getpid() != self._pid:
            raise ForkedError(FORKED_HINT)
        return self._shm

    def tail_hint(self) -> int:
        """The page's next LSN without the lock: a hint that only grows (exact under
        ``locked()``). Equal to a cursor's next LSN: nobody has published after it.
        Read keeping the GIL (it is read under the queue lock)."""
        if self._closed or _forks[0] != self._forks:
            self._h()           # raises if closed, or forked (the page is the parent's)
        if shm_next_lsn_keeping_gil is not None:
            return shm_next_lsn_keeping_gil(self._h_addr)
        return lib.au_shm_next_lsn(self._shm)

    def _next_lsn(self) -> int:
        """The page's next LSN, keeping the GIL (exact under the append lock)."""
        g = shm_gil_kept
        return g.next_lsn(self._h_addr) if g is not None else lib.au_shm_next_lsn(self._shm)

    def _position(self) -> tuple[int, int, int, int]:
        """(write_end, writing_end, next_lsn, synced_end) as the page has them; read
        keeping the GIL (it is read under the append lock), write_end first as
        au_shm_position does (a publish stores it last)."""
        g = shm_gil_kept
        if g is not None:
            a = self._h_addr
            write = g.write_end(a)
            nxt = g.next_lsn(a)
            return write, g.writing_end(a), nxt, g.synced_end(a)
        p = ffi.new("uint64_t[4]")   # pragma: no cover - no ctypes
        lib.au_shm_position(self._shm, p, p + 1, p + 2, p + 3)
        return p[0], p[1], p[2], p[3]

    @property
    def next_lsn(self) -> int:
        """The page's next LSN (exact while this thread holds ``locked()``)."""
        if self._shm is None or self._closed:
            return self._next
        return self._position()[2]

    @property
    def published(self) -> int:
        """The page's write position: every batch below it is whole."""
        return lib.au_shm_write_end(self._shm)

    @property
    def failed(self) -> bool:
        return self._shm is not None and not self._closed and lib.au_shm_failed(self._shm) != 0

    def append_seq(self) -> int:
        return lib.au_shm_append_seq(self._h())

    def wait_append(self, seen: int, seconds: float) -> None:
        """Sleep until another append is published after ``seen`` (append_seq()), at most
        ``seconds``."""
        lib.au_shm_wait_append(self._h(), seen, max(1, min(int(seconds * 1000), 60_000)))

    # ---------------------------------------------------------------- the append lock
    def holds_lock(self) -> bool:
        return self._holder == threading.get_ident()

    @contextmanager
    def locked(self) -> Iterator[int]:
        """Hold the page's append lock (reentrant in this thread); yields the page's next
        LSN. A dead previous holder's unpublished bytes are repaired first."""
        if self.holds_lock():
            yield self._next_lsn()
            return
        h = self._h()
        g, a = shm_gil_kept, self._h_addr
        while True:
            # GIL-aware: the trylock never blocks, a busy lock is waited for without
            # holding anything (docs/INTERNALS.md, "The GIL and the append lock")
            # the trylock keeps the GIL: a thread never holds append_mu while it waits
            # for its own GIL (MULTIPROCESS.md "The GIL and append_mu")
            if g is not None:
                seen, rc = g.unlock_seq(a), g.trylock(a)
            else:   # pragma: no cover - no ctypes
                seen, rc = lib.au_shm_unlock_seq(h), lib.au_shm_trylock(h)
            if rc == 0 or rc == lib.AU_SHM_OWNER_DIED:
                break
            if rc != lib.AU_SHM_BUSY:
                raise DurabilityError(f"append lock: {strerror(-rc)}", errno=-rc)
            lib.au_shm_wait_unlock(h, seen, _POLL_MS)
        self._holder = threading.get_ident()
        try:
            if rc == lib.AU_SHM_OWNER_DIED:
                self._stats["owner_died"] += 1
            self._repair()
            yield self._next_lsn()
        finally:
            self._holder = None
            if g is not None:
                g.unlock(a)
            else:   # pragma: no cover - no ctypes
                lib.au_shm_unlock(h)

    def _repair(self) -> None:
        """Under the lock: follow the page to the newest segment; undo or finish what a
        holder that died left half done (a batch being written: zeroed; a roll: redone)."""
        write, writing, next_lsn, _ = self._position()
        seg, _ = _seg_off(write)
        g = shm_gil_kept
        roll_seq = g.roll_seq(self._h_addr) if g is not None else lib.au_shm_roll_seq(self._shm)
        if seg != self._seg_first or roll_seq != self._roll_seq:
            # a roll since we last looked: a new segment, or (a batch bigger than the
            # segment) a bigger file renamed over an empty one of the same name
            self._open_segment(seg, self._wal / _seg_name(seg))
        if writing != write:
            self._stats["repairs"] += 1
            if _seg_off(writing)[0] != seg:
                self._roll(next_lsn)      # the holder died mid-roll: the roll is redone
            else:
                check_io(lib.au_shm_zero_tail(self._shm, self._fd), "repair", self._wal)

    def _roll(self, next_lsn: int, size: int | None = None) -> None:
        """Under the lock: seal the newest segment and start the next at ``next_lsn``
        (FORMAT.md "Preallocation, rolling", with the next segment created inline), of
        ``size`` bytes (default segment_bytes; more for a batch that needs it). A newest
        segment that holds no record is replaced by the new file of the same name."""
        h = self._shm
        old_fd, old_first = self._fd, self._seg_first
        write = self._position()[0]
        _, off = _seg_off(write)
        new_path = self._wal / _seg_name(next_lsn)
        rc = lib.au_shm_roll_begin(h)
        if rc < 0:
            raise DurabilityError(f"roll: {strerror(-rc)}", errno=-rc)
        err = lib.au_shm_failed(h)
        if err:
            # a leader's fdatasync failed after our caller checked (it does not hold the
            # append lock): the roll's own fdatasync may return 0 over pages the failed one
            # dropped, so it must not publish a synced position (I5: nothing is
            # acknowledged after a failed fdatasync, by any process)
            lib.au_shm_roll_abort(h)
            self._failed_seen, self._failed_errno = True, err
            raise DurabilityError("the log failed earlier (an fdatasync failed in some "
                                  "process); nothing more is acknowledged until every "
                                  "process reopens it", errno=err)
        try:
            lib.au_shm_set_writing(h, pos_of(next_lsn, SEG_HDR))    # a roll in progress
            self._sync_or_fail(old_fd, "fdatasync before a roll")
            tmp = self._wal / (_seg_name(next_lsn) + ".tmp")
            if is_file(tmp):                  # left by a roller that died (under this lock)
                remove_file(tmp, fsync_dir=False)
            check_io(lib.au_segment_create(os.fsencode(str(self._wal)), next_lsn,
                                           max(size or 0, self.segment_bytes),
                                           self.max_record_bytes),
                     "create segment", new_path)
            if next_lsn != old_first and off + SEG_HDR <= self._seg_size:
                hdr = bytearray(_BATCH.pack(SEG_HDR, 0, next_lsn, 0,
                                            lib.AU_FLAG_SEAL | lib.AU_FLAG_NEXT, off))
                _BATCH.pack_into(hdr, 0, SEG_HDR, _batch_hdr_crc(bytes(hdr)), next_lsn, 0,
                                 lib.AU_FLAG_SEAL | lib.AU_FLAG_NEXT, off)
                check_io(lib.au_pwrite_full(old_fd, ffi.from_buffer(hdr), SEG_HDR, off),
                         "write", self._wal / _seg_name(old_first))
                self._sync_or_fail(old_fd, "fdatasync of a SEAL")
            self._open_segment(next_lsn, new_path)
        except BaseException:
            lib.au_shm_roll_abort(h)
            raise
        lib.au_shm_roll_end(h, pos_of(next_lsn, SEG_HDR))
        self._stats["rolls"] += 1

    def _sync_or_fail(self, fd: int, what: str) -> None:
        rc = lib.au_fdatasync(fd)
        if rc < 0:
            lib.au_shm_set_failed(self._shm, -rc)    # never retried, by any process
            self._sync_failed(-rc)
            raise DurabilityError(f"{what}: {strerror(-rc)}", errno=-rc)

    def _sync_failed(self, err: int) -> None:
        """An fdatasync failed (ours, or the group commit's we waited on): leave
        ``<newest segment>.unsynced`` naming the offset the page's synced position reached
        in it, as the exclusive writer does (Log._mark_unsynced). Linux may mark the pages
        of a failed writeback clean ("fsyncgate"): the open that finds every process gone
        would read bytes the disk does not hold, trust them and append after them, and a
        power cut would then leave a hole before acknowledged records. That open cuts the
        segment at the marker instead (FORMAT.md recovery rule 3). Nothing above the synced
        position was acknowledged as durable (invariant I5). Best effort, written once."""
        self._failed_seen, self._failed_errno = True, err
        if self._marked or err in _NOT_IO or err >= 10000 or self._shm is None:
            return   # a library code (not an errno): no write was lost
        self._marked = True
        newest, _ = _seg_off(self._position()[0])
        newest = max(newest, self._seg_first)
        sseg, soff = _seg_off(lib.au_shm_synced_end(self._shm))
        off = soff if sseg == newest else SEG_HDR    # below: nothing synced in the newest
        try:
            write_file_durably(self._wal / (_seg_name(newest) + UNSYNCED), b"%d\n" % off)
        except (OSError, AuroraLogError):
            pass

    # ---------------------------------------------------------------- writing
    def reserve(self, n: int = 1) -> int:
        """Under ``locked()``: the first LSN the next write_locked() will use."""
        if not self.holds_lock():
            raise AuroraLogError("SharedLog.reserve needs the append lock (locked())")
        self._check_failed()
        return self._next_lsn()

    def _check_failed(self) -> None:
        self._h()
        g = shm_gil_kept
        err = g.failed(self._h_addr) if g is not None else lib.au_shm_failed(self._shm)
        if err or self._failed_seen:
            self._failed_seen = True
            self._failed_errno = err or self._failed_errno
            raise DurabilityError("the log failed earlier (an fdatasync failed in some "
                                  "process); nothing more is acknowledged until every "
                                  "process reopens it", errno=self._failed_errno)

    def write_locked(self, first_lsn: int, records: Sequence[tuple[int, bytes]],
                     checked=None) -> int:
        """Under ``locked()``: write records first_lsn.. as one batch at the page's tail
        (rolling first if it does not fit the segment) and publish. Returns the position
        after it (for wait_pos)."""
        if not self.holds_lock():
            raise AuroraLogError("write_locked needs the append lock (locked())")
        self._check_failed()
        types, lens, data = checked if checked is not None else self._pack(records)
        n = len(types)
        blen = (lib.AU_BATCH_HDR + n * lib.AU_REC_HDR + len(data) + 7) & ~7
        write, _, next_lsn, synced = self._position()
        if first_lsn != next_lsn:
            raise AuroraLogError(f"write_locked: LSN {first_lsn} is not the tail {next_lsn}")
        if next_lsn + n > MAX_SHARED_LSN:
            raise DurabilityError("shared mode supports LSNs below 2**32")
        _, off = _seg_off(write)
        if off + blen + SEG_HDR > self._seg_size:
            need = SEG_HDR + blen + SEG_HDR
            if need > _OFF_MASK:
                raise ValueError(f"a batch of {blen} bytes does not fit a segment")
            # a batch bigger than segment_bytes gets a segment of its own size
            self._roll(next_lsn, need)
        # durable_end: how far this segment is known fdatasynced (FORMAT.md; recovery
        # tells a torn tail from a damaged record by it). The page's synced position is
        # read under the append lock: it is <= our offset, and after a roll it is the new
        # segment's start
        sseg, soff = _seg_off(synced)
        durable_off = soff if sseg == self._seg_first else SEG_HDR
        end = ffi.new("uint64_t *")
        ctypes_, clens, cdata = (ffi.from_buffer(types), ffi.from_buffer("uint32_t[]", lens),
                                 ffi.from_buffer(data))
        g = shm_gil_kept
        if g is not None:       # under append_mu: keep the GIL (see locked())
            rc = g.write_batch(self._h_addr, self._fd, first_lsn, n, address(ctypes_),
                               address(clens), address(cdata), durable_off, address(end))
        else:   # pragma: no cover - no ctypes
            rc = lib.au_shm_write_batch(self._shm, self._fd, first_lsn, n, ctypes_, clens,
                                        cdata, durable_off, end)
        del ctypes_, clens, cdata
        if rc < 0:
            if rc != lib.AU_E_INVAL:
                self._failed_seen, self._failed_errno = True, -rc
            raise DurabilityError(f"append: {strerror(-rc)}", errno=-rc if rc > -10000 else 0)
        self._stats["appends"] += 1
        self._stats["records"] += n
        self._stats["bytes"] += blen
        self._tls.last = (first_lsn + n - 1, end[0])
        return end[0]

    def try_append(self, records: Sequence[tuple[int, bytes]], checked=None,
                   expect_lsn: int = 0) -> tuple[int, int] | None:
        """The fast path of an append (native/shm.c au_shm_append_try): take the append
        lock without waiting, write the records as one batch at the tail, publish, unlock,
        all in one C call, so no Python runs while the lock is held. With ``expect_lsn``
        the append happens only if the page's next LSN is still ``expect_lsn`` (nobody
        appended since the caller's state was folded to it). Returns (first LSN, the
        position after the batch), or None when nothing was done: the lock was busy, the
        tail moved, or something needs the locking path (a dead holder's tail, a roll,
        a failed log); the caller then uses ``locked()``."""
        h = self._h()
        fd, seg_first, seg_size, roll_seq = self._seg_state     # one consistent snapshot
        if self._failed_seen or self._holder is not None or roll_seq < 0:
            return None         # the locking path raises / reenters / finds the segment
        if checked is None and len(records) == 1 and shm_append_try1_keeping_gil is not None:
            rtype, payload = records[0]
            if type(payload) is not bytes or type(rtype) is not int or not 0 < rtype < 256:
                return None     # the locking path raises the exact error (_pack)
            return self.try_append1(rtype, payload, expect_lsn)
        tls = self._tls.__dict__
        out = tls.get("out")
        if out is None:         # per thread: the out array is written during the call
            out = tls["out"] = ffi.new("uint64_t[2]")
        types, lens, data = checked if checked is not None else self._pack(records)
        n, nbytes = len(types), len(data)
        rc = lib.au_shm_append_try(h, fd, seg_first, seg_size,
                                   roll_seq, expect_lsn, n, ffi.from_buffer(types),
                                   ffi.from_buffer("uint32_t[]", lens),
                                   ffi.from_buffer(data), out)
        if rc != 0:
            self._not_appended(rc)
            return None
        first, end = out[0], out[1]
        st = self._stats
        st["appends"] += 1
        st["records"] += n
        st["bytes"] += (lib.AU_BATCH_HDR + n * lib.AU_REC_HDR + nbytes + 7) & ~7
        st["fast_appends"] += 1
        self._tls.last = (first + n - 1, end)
        return first, end

    def try_append1(self, rtype: int, payload: bytes,
                    expect_lsn: int = 0) -> tuple[int, int] | None:
        """try_append of one record (a claim, a complete: the queue's hot paths), through
        the GIL-keeping call that answers the (first LSN, position after it) pair itself.
        ``payload`` is bytes and ``rtype`` 1..255 (else TypeError / ValueError, nothing
        written); None as try_append."""
        if self._closed or _forks[0] != self._forks:
            self._h()           # raises if closed, or forked (the page is the parent's)
        try1 = shm_append_try1_keeping_gil
        if try1 is None:        # no GIL-keeping call: the batch form through cffi
            return self.try_append([(rtype, payload)], self._pack([(rtype, payload)]),
                                   expect_lsn)
        fd, seg_first, seg_size, roll_seq = self._seg_state     # one consistent snapshot
        if self._failed_seen or self._holder is not None or roll_seq < 0 or \
                len(payload) > self.max_record_bytes:
            return None         # the locking path raises / reenters / finds the segment
        got = try1(self._h_addr, fd, seg_first, seg_size, roll_seq, expect_lsn, rtype,
                   payload)
        if type(got) is tuple:
            self._fast1 += 1
            self._fast1_bytes += (_BATCH1_HDRS + len(payload) + 7) & ~7
            self._tls.last = got
            return got
        self._not_appended(got)
        return None

    def _not_appended(self, rc: int) -> None:
        """A fast append that wrote nothing: AU_SHM_BUSY / MOVED / SLOW return (the
        caller takes the locking path); a failed write raises (and marks the log failed,
        unless it was a refused argument or a forked handle)."""
        if rc > 0:
            return
        if rc != lib.AU_E_INVAL and rc != lib.AU_E_SHM_FORKED:
            self._failed_seen, self._failed_errno = True, -rc
        raise DurabilityError(f"append: {strerror(-rc)}", errno=-rc if rc > -10000 else 0)

    def wait_pos(self, pos: int, wait: str) -> None:
        """Wait as told for the bytes below ``pos``: "none"/"written" return (they were
        written under the lock), "durable" syncs in sync mode, "synced" in every mode."""
        if wait == "synced" or (wait == "durable" and self.durability == "sync"):
            h = self._h()
            seg, _ = _seg_off(pos)
            if not self.holds_lock() and (seg > self._seg_first or
                                          lib.au_shm_roll_seq(h) != self._roll_seq):
                # another process rolled since we last appended: our fd may be an older
                # segment (or the file a bigger one replaced), and a group commit we lead
                # would fdatasync it and publish `pos`, in the newest one, as synced.
                # Taking the append lock follows the page (_repair); rare: once per roll
                self._follow()
            # a position in an older segment was covered by the roll's fdatasync: the C
            # side returns before it would use the fd
            cur_fd, cur_first = self._seg_state[:2]     # one consistent pair
            fd = cur_fd if seg == cur_first else -1
            if fd < 0:
                _, _, _, synced = self._position()
                if synced >= pos:
                    return
                fd = self._fd
            rc = lib.au_shm_wait_synced(h, fd, pos)
            if rc < 0:
                self._sync_failed(-rc)
                raise DurabilityError(f"fdatasync failed: {strerror(-rc)}", errno=-rc)

    def _follow(self) -> None:
        """Open the page's newest segment as ours (the append lock's repair does)."""
        with self.locked():
            pass

    def append_reserved(self, first_lsn: int, records: Sequence[tuple[int, bytes]],
                        wait: str = "none", *, checked=None) -> int:
        with self.locked():
            pos = self.write_locked(first_lsn, records, checked)
        self.wait_pos(pos, wait)
        return first_lsn + len(records) - 1

    def _append(self, records, level: int) -> int:
        self._h()
        records = records if isinstance(records, list) else list(records)
        if not records:
            return self.next_lsn - 1
        packed = self._pack(records)
        with self.locked() as first:
            self._check_failed()
            pos = self.write_locked(first, records, packed)
        self.wait_pos(pos, {lib.AU_WAIT_MODE: "durable", lib.AU_WAIT_SYNCED: "synced"}.get(
            level, "none"))
        return first + len(records) - 1

    def _wait(self, lsn: int, wait: str, what: str) -> None:
        self._h()
        if lsn < 1:
            return
        last = getattr(self._tls, "last", None)
        # this thread's own last write, else everything published so far
        pos = last[1] if last is not None and last[0] >= lsn else self.published
        self.wait_pos(pos, wait)

    def flush(self) -> None:
        """Make everything published so far durable (in every mode)."""
        self.wait_pos(self.published, "synced")

    def _interval_loop(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            try:
                self.wait_pos(self.published, "synced")
            except Exception:
                return

    def stats(self) -> dict:
        s = ffi.new("au_shm_stats *")
        lib.au_shm_info(self._shm, s)
        out = dict(self._stats)
        n1 = self._fast1
        for k, v in (("appends", n1), ("records", n1), ("fast_appends", n1)):
            out[k] += v
        out["bytes"] += self._fast1_bytes
        out.update(fdatasyncs=s.fdatasyncs, shm_appends=s.appends, covered=s.covered,
                   wakeups=s.wakeups, leader_died=s.leader_died, generation=s.generation)
        return out

    # ---------------------------------------------------------------- reading
    def read_from(self, cursor: tuple[int, int, int], until: int | None = None
                  ) -> tuple[list[tuple[int, int, bytes]], tuple[int, int, int]]:
        """The records others published after ``cursor`` = (segment first LSN, offset,
        next LSN), up to the page's write position (or ``until``), and the new cursor.
        Every crc is checked; a bad batch below a published position is corruption."""
        self._h()
        seg, off, nxt = cursor
        limit = self.published if until is None else until
        lseg, loff = _seg_off(limit)
        out: list[tuple[int, int, bytes]] = []
        while (seg, off) < (lseg, loff):
            path = self._wal / _seg_name(seg)
            fd = lib.au_open(os.fsencode(str(path)), os.O_RDONLY | _O_CLOEXEC, 0)
            if fd == -_errno.ENOENT and seg != lseg and nxt != seg and \
                    is_file(self._wal / _seg_name(nxt)):
                # retired: retirement keeps every segment holding a record at or above a
                # live process's published pin, so all that was left for us here was its
                # SEAL; the next segment starts at our next LSN
                seg, off = nxt, SEG_HDR
                continue
            if fd < 0:
                raise os_error(fd, path)
            try:
                if seg == lseg:
                    n = loff - off
                else:
                    n = self._file_size(fd) - off    # to its SEAL; then zeros
                buf = bytearray(n)
                got = lib.au_pread_full(fd, ffi.from_buffer(buf), n, off) if n else 0
                if got < 0:
                    raise os_error(got, path)
            finally:
                lib.au_close(fd)
            s = _new_scan(0, nxt, n, self.max_record_bytes if seg == lseg else 255 << 20)
            cbuf = ffi.from_buffer(buf)
            recs = ffi.new("au_rec[]", _SCAN_CHUNK)
            rbuf = ffi.buffer(recs)
            mv = memoryview(buf)
            while True:
                k = lib.au_scan_next(cbuf, s, recs, _SCAN_CHUNK)
                for rlsn, roff, ln, rtype in _REC.iter_unpack(rbuf[:k * _REC.size]):
                    out.append((rlsn, rtype, bytes(mv[roff:roff + ln])))
                if s.status == lib.AU_SCAN_MORE:
                    continue
                if s.status == lib.AU_SCAN_BAD:
                    raise CorruptionError(ffi.string(lib.au_reason(s.reason)).decode(),
                                          file=str(path), offset=off + s.bad_off,
                                          lsn=s.next_lsn)
                break
            del mv, cbuf
            nxt = s.next_lsn
            if seg == lseg:
                if s.pos != n:
                    raise CorruptionError("end of data before the published position",
                                          file=str(path), offset=off + s.pos, lsn=nxt)
                off = loff
            else:
                if not s.last_flags & lib.AU_FLAG_SEAL:
                    raise CorruptionError("a segment before the newest ends without a SEAL",
                                          file=str(path), offset=off + s.pos, lsn=nxt)
                seg, off = nxt, SEG_HDR
        return out, (seg, off, nxt)

    @staticmethod
    def _file_size(fd: int) -> int:
        return os.fstat(fd).st_size

    def cursor_at_tail(self) -> tuple[int, int, int]:
        """Under ``locked()``: the cursor of the page's tail."""
        seg, off = _seg_off(lib.au_shm_write_end(self._shm))
        return seg, off, lib.au_shm_next_lsn(self._shm)

    def scan(self, from_lsn: int = 1) -> Iterator[tuple[int, int, bytes]]:
        """(lsn, rtype, payload) of every stored record >= from_lsn up to the published
        position."""
        return self._scan(from_lsn, self._shared_bound())

    def scan_chunks(self, from_lsn: int = 1) -> Iterator[tuple[memoryview, Any, int]]:
        """Log.scan_chunks (replay's bulk fold) with scan()'s bound: the same records."""
        return self._scan_chunks(from_lsn, self._shared_bound())

    def _shared_bound(self) -> tuple[int, int]:
        """Where scans stop: ``scan_bound`` (the tail a replay read under the lock) if set,
        else the published position."""
        if self._closed:
            raise ClosedError("the log is closed")
        if self.scan_bound is not None:
            return self.scan_bound[0], self.scan_bound[1]
        return _seg_off(self.published)

    def retire_segments_before(self, lsn: int, *, archive_dir=None) -> list[Path]:
        """As Log's, but never past the pin: the lowest LSN a live process may still have
        to read (``retention_pin``, set by the queue from the processes' liveness files;
        None: retire nothing). Never the segment the page says is being written."""
        self._h()
        pin = self.retention_pin() if self.retention_pin is not None else 0
        if pin <= 1:
            return []
        return self._retire_before(min(lsn, pin), self._seg_first, archive_dir)

    def forget_after_fork(self) -> None:
        """In a forked child: drop the inherited copies of the parent's fds and mapping
        (closing a copy never releases the parent's flocks: they belong to the shared open
        file description, and the parent keeps its fds), so that the parent's death is
        seen by everyone even while the child lives. Any later use raises ForkedError."""
        self._close_segment_fds()
        if self._shm is not None:
            shm, self._shm = self._shm, None
            ffi.gc(shm, None)
            lib.au_shm_close(shm)
        self._release()

    # ---------------------------------------------------------------- closing
    def close(self) -> None:
        """Make what this process appended durable (every mode), detach. Never seals: the
        others keep writing to the segment. Idempotent."""
        with self._state_lock:
            if self._closed:
                return
            forked = os.getpid() != self._pid
            err = None
            if self._shm is not None and not forked:
                try:
                    last = getattr(self._tls, "last", None)
                    if self.durability != "os" and not self.failed:
                        self.wait_pos(self.published if last is None else last[1], "synced")
                except DurabilityError as e:
                    err = e
            self._closed = True
        self._stop.set()
        if self._interval is not None and self._interval is not threading.current_thread():
            self._interval.join()
        if forked:
            # closing fds only: a forked child's copies never release the parent's flocks
            self._close_segment_fds()
        # else the segment fds go with the object (__del__): a thread of ours asleep in a
        # group commit may still lead one fdatasync with them (never a closed fd)
        if self._shm is not None:
            if forked:
                self._shm = None      # the mapping is the parent's: leave it to exit
            else:
                # the flock goes now; the mapping when the last reference does (a thread
                # of ours may still be asleep in a call that reads the page)
                lib.au_shm_detach(self._shm)
        self._release()
        if err is not None:
            raise err

    def _close_segment_fds(self) -> None:
        for fd in self._old_fds + [self._fd]:
            if fd >= 0:
                lib.au_close(fd)
        self._old_fds, self._fd = [], -1
        self._seg_state = (-1, 0, 0, -1)

    def __del__(self):
        try:
            if not self._closed and os.getpid() == self._pid and self._shm is not None:
                self.close()
            self._close_segment_fds()
        except Exception:
            pass

