"""Loads the C core (aurora_log.local._native, built by cffi at install time) and maps its return
codes to exceptions. Only log.py, sharedlog.py and faults.py import this module.

The few hot calls that must keep the GIL go through aurora_log.local._gilkept (a small
CPython extension, native/gilkept.c, calling the same functions of _native), else through
ctypes.PyDLL (same calls, slower argument conversion).

There is no pure-Python fallback on purpose: a log without the C core would be a different
(slower, untested) program.
"""

from __future__ import annotations

import os

from ..errors import ClosedError, DurabilityError

try:
    from . import _native  # type: ignore[attr-defined]
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "aurora_log.local._native (the C core) is not built. Build it with `pip install -e .` "
        "(or `pip install .`) from the project directory; it needs gcc and the Python "
        f"headers. Original error: {exc}"
    ) from exc

ffi = _native.ffi
lib = _native.lib

MODES = {"sync": lib.AU_MODE_SYNC, "interval": lib.AU_MODE_INTERVAL, "os": lib.AU_MODE_OS}


def _gilkept_module():
    """aurora_log.local._gilkept (native/gilkept.c) bound to this core, or None.

    The extension holds no copy of the C core: it calls the functions of _native through
    the addresses handed to it here, so the syscall table (native/sys.c: fault injection,
    crash simulation) is the one table either way. None when it was not built (a build
    without it, an interpreter it does not load in): the ctypes.PyDLL calls below do the
    same work, keeping the GIL too, at ~1 us more per call."""
    try:
        from . import _gilkept  # type: ignore[attr-defined]
    except ImportError:
        return None

    def fn_address(name: str) -> int:
        return int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))

    _gilkept.bind(fn_address("au_shm_next_lsn"), fn_address("au_shm_append_try1"),
                  fn_address("au_append_now1"))
    _gilkept.bind_locking(*(fn_address(f"au_shm_{name}") for name in (
        "trylock", "unlock", "unlock_seq", "write_end", "writing_end", "synced_end",
        "roll_seq", "failed", "write_batch")))
    return _gilkept


gilkept = _gilkept_module()


def _ctypes_dll():
    try:
        import ctypes
        return ctypes.PyDLL(_native.__file__)
    except (ImportError, OSError):  # pragma: no cover - no ctypes
        return None


_dll = _ctypes_dll()


def _append_now1_keeping_gil():
    """au_append_now1 callable WITHOUT dropping the GIL, or None:
    ``append_now1(w, lsn, rtype, payload, write) -> return code``.

    cffi drops the GIL around every call. For an append that does not wait (a copy and a
    checksum under the writer's mutex, which nobody holds during I/O) dropping it buys
    nothing and, when other threads want the GIL, costs a thread handoff: claim+complete
    from 8 threads ran 25-50% faster without it. The same holds for a claim's small write
    when nobody else is writing: one pwrite costs less than handing the GIL over and
    back. The extension (else ctypes.PyDLL) calls the same compiled function of the same
    module and keeps the GIL; au_append_now1 never waits on a condition (it answers
    AU_AGAIN / AU_QUEUED and the caller then makes the waiting call through cffi, which
    drops the GIL)."""
    if gilkept is not None:
        return gilkept.append_now1
    if _dll is None:  # pragma: no cover - no ctypes
        return None
    import ctypes as c
    fn = _dll.au_append_now1
    fn.argtypes = [c.c_void_p, c.c_uint64, c.c_uint8, c.c_char_p, c.c_uint32, c.c_int]
    fn.restype = c.c_int

    def append_now1(w: int, lsn: int, rtype: int, payload: bytes, write: int) -> int:
        return fn(w, lsn, rtype, payload, len(payload), write)
    return append_now1


append_now1_keeping_gil = _append_now1_keeping_gil()


def _shm_append_try1_keeping_gil():
    """au_shm_append_try1 (shared mode's one-record fast path) callable WITHOUT dropping
    the GIL, or None: ``try1(h, fd, seg_first, seg_size, roll_seq, expect_lsn, rtype,
    payload)`` -> (first LSN, position after the batch) when written, else the return
    code (AU_SHM_BUSY / MOVED / SLOW, or < 0). It never waits (a trylock, one pwrite, an
    unlock), so for the same reason as append_now1_keeping_gil a thread that calls it
    under the queue lock keeps the GIL instead of handing it to threads that would only
    queue on that lock. It never holds the append lock across Python code either way
    (MULTIPROCESS.md, "The GIL and append_mu")."""
    if gilkept is not None:
        return gilkept.shm_append_try1
    if _dll is None:  # pragma: no cover - no ctypes
        return None
    import ctypes as c
    fn = _dll.au_shm_append_try1
    fn.argtypes = [c.c_void_p, c.c_int, c.c_uint64, c.c_uint64, c.c_uint32, c.c_uint64,
                   c.c_uint8, c.c_char_p, c.c_uint32, c.c_void_p]
    fn.restype = c.c_int

    def try1(h: int, fd: int, seg_first: int, seg_size: int, roll_seq: int,
             expect_lsn: int, rtype: int, payload: bytes) -> tuple[int, int] | int:
        out = (c.c_uint64 * 2)()
        rc = fn(h, fd, seg_first, seg_size, roll_seq, expect_lsn, rtype, payload,
                len(payload), c.addressof(out))
        return (out[0], out[1]) if rc == 0 else rc
    return try1


shm_append_try1_keeping_gil = _shm_append_try1_keeping_gil()


def _shm_next_lsn_keeping_gil():
    """au_shm_next_lsn (one atomic load of the page) callable without dropping the GIL, or
    None: shared mode reads it under the queue lock before every decision, and dropping
    the GIL there hands it to threads that only queue on that lock (measured: 12 us per
    call with 8 claiming threads)."""
    if gilkept is not None:
        return gilkept.shm_next_lsn
    if _dll is None:  # pragma: no cover - no ctypes
        return None
    import ctypes
    fn = _dll.au_shm_next_lsn
    fn.argtypes = [ctypes.c_void_p]
    fn.restype = ctypes.c_uint64
    return fn


shm_next_lsn_keeping_gil = _shm_next_lsn_keeping_gil()


class ShmGilKept:
    """The control page's calls made while its append lock is held (or that take it
    without waiting), through the extension (else ctypes.PyDLL): they keep the GIL. A
    thread holding the append lock must never wait for its own GIL (MULTIPROCESS.md, "The
    GIL and append_mu"): through cffi, every call returns only once the thread has the GIL back,
    which another thread of the process may keep for a whole switch interval while every
    process waits for the lock. None of these calls blocks. Handles are addresses
    (``address(h)``); pointers are addresses too."""

    def __init__(self, dll) -> None:
        if dll is gilkept and gilkept is not None:      # the extension: the same calls
            g = gilkept
            self.trylock, self.unlock, self.unlock_seq = g.trylock, g.unlock, g.unlock_seq
            self.next_lsn, self.write_end = g.shm_next_lsn, g.write_end
            self.writing_end, self.synced_end = g.writing_end, g.synced_end
            self.roll_seq, self.failed, self.write_batch = g.roll_seq, g.failed, g.write_batch
            return
        import ctypes as c
        vp, u64, u32 = c.c_void_p, c.c_uint64, c.c_uint32

        def fn(name, restype, *argtypes):
            f = getattr(dll, name)
            f.argtypes, f.restype = list(argtypes), restype
            return f

        self.trylock = fn("au_shm_trylock", c.c_int, vp)
        self.unlock = fn("au_shm_unlock", None, vp)
        self.unlock_seq = fn("au_shm_unlock_seq", u32, vp)
        self.next_lsn = fn("au_shm_next_lsn", u64, vp)
        self.write_end = fn("au_shm_write_end", u64, vp)
        self.writing_end = fn("au_shm_writing_end", u64, vp)
        self.synced_end = fn("au_shm_synced_end", u64, vp)
        self.roll_seq = fn("au_shm_roll_seq", u32, vp)
        self.failed = fn("au_shm_failed", c.c_int, vp)
        self.write_batch = fn("au_shm_write_batch", c.c_int, vp, c.c_int, u64, u32, vp, vp,
                              vp, u64, vp)


def _shm_gil_kept():
    if gilkept is not None:
        return ShmGilKept(gilkept)
    return ShmGilKept(_dll) if _dll is not None else None


shm_gil_kept = _shm_gil_kept()


def address(p) -> int:
    """The address a cffi pointer holds, for the ctypes (GIL-keeping) calls."""
    return int(ffi.cast("uintptr_t", p))


def writer_address(w) -> int:
    """The address of a cffi au_writer pointer, for append_now1_keeping_gil."""
    return int(ffi.cast("uintptr_t", w))


def strerror(errno_: int) -> str:
    try:
        return os.strerror(errno_)
    except ValueError:  # pragma: no cover
        return f"errno {errno_}"


def os_error(rc: int, path=None) -> OSError:
    """An OSError (FileNotFoundError, PermissionError, ...) for a -errno return code."""
    e = -rc
    if path is None:
        return OSError(e, strerror(e))
    return OSError(e, strerror(e), str(path))


def check_io(rc: int, what: str, path=None) -> int:
    """For the file helpers: -errno -> DurabilityError naming the operation and path."""
    if rc >= 0:
        return rc
    e = -rc
    where = f" {path}" if path is not None else ""
    raise DurabilityError(f"{what}{where} failed: {strerror(e)}", errno=e)


def check_writer(rc: int, what: str, writer) -> int:
    """Maps a writer return code to the exception tree."""
    if rc >= 0:
        return rc
    if rc == lib.AU_E_CLOSED:
        raise ClosedError("the log is closed")
    if rc == lib.AU_E_FAILED:
        e = lib.au_writer_failed(writer) if writer is not None else 0
        raise DurabilityError(
            f"{what}: the log failed earlier ({strerror(e) if e else 'I/O error'}); nothing "
            "more is acknowledged until it is reopened", errno=e or None)
    if rc == lib.AU_E_INVAL:
        raise ValueError(f"{what}: invalid argument")
    if rc == lib.AU_E_TOOBIG:
        raise ValueError(f"{what}: batch larger than {lib.AU_MAX_BATCH} bytes")
    e = -rc
    raise DurabilityError(f"{what} failed: {strerror(e)}", errno=e)
