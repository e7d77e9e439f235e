"""Fault injection and I/O recording for tests, through the C core's syscall table.

Every syscall the core makes (open, close, pwrite, pread, fdatasync, fsync, ftruncate,
rename, unlink, mkdir, flock; a directory fsync is open(O_DIRECTORY) + fsync + close) goes
through `struct au_sys` (native/aurora.h). `installed(hook)` points every entry at a Python
dispatcher that shows each call to `hook` first, then (unless the hook fails it) runs the
real syscall:

    rec = Recorder()
    with faults.installed(Chain(rec, FailNth(3, ops={"fdatasync"}))):
        log = Log.open(d); ...
    rec.ops  ->  [Op(name="open", path=..., result=fd), Op(name="pwrite", fd=..., path=...,
                  offset=..., data=b"..."), Op(name="fdatasync", ...), ...]

Hook protocol (subclass Hook, or pass any object with these methods):
    before(op) -> None | int | Short   None: run the real call; an int errno (e.g.
                                       errno.EIO): the call fails with -1/errno without
                                       running; Short(n) (pwrite/pread): run it with n bytes.
    after(op) -> None                  op.result and op.errno are set (errno 0 on success).
Set `capture_data = True` on a hook to get op.data (the bytes of each pwrite).

Install the hook BEFORE opening the Log: fd -> path names are learned from open() calls seen
while installed. Only one hook is installed at a time (compose with Chain). The hook runs in
whatever thread does the I/O (the group-commit leader or the C background thread), holding
the GIL. An exception inside a hook fails the syscall with EIO (and is printed), never
reports success. An injected close() error still closes the descriptor (as Linux does).
Test-only: a hook slows every syscall by a few microseconds.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import os
import threading
from dataclasses import dataclass
from collections.abc import Iterable

from ..local._binding import ffi, lib

__all__ = ["Op", "Short", "Hook", "Recorder", "FailNth", "ShortWrites", "Eintr", "Chain",
           "installed", "OPS"]

OPS = ("open", "close", "pwrite", "pread", "fdatasync", "fsync", "ftruncate", "rename",
       "unlink", "mkdir", "flock")


@dataclass
class Op:
    name: str
    fd: int | None = None
    path: str | None = None        # for fd ops: the path the fd was opened with (if seen)
    path2: str | None = None       # rename target
    offset: int | None = None
    size: int | None = None        # bytes asked for (pwrite/pread), length (ftruncate)
    flags: int | None = None       # open flags / flock op
    mode: int | None = None
    is_dir: bool = False           # fd/path is a directory (directory fsync = fsync + is_dir)
    data: bytes | None = None      # pwrite bytes actually written (capture_data hooks only)
    result: int | None = None
    errno: int = 0
    injected: bool = False         # a hook failed or shortened this call
    seq: int = 0                   # order of the call among all calls seen while installed


@dataclass(frozen=True)
class Short:
    """Run a pwrite/pread with only `n` bytes (a short write/read)."""
    n: int


class Hook:
    capture_data = False

    def before(self, op: Op):
        return None

    def after(self, op: Op) -> None:
        return None


class Recorder(Hook):
    """Records every call (after it ran): `ops` in call order, with the bytes of writes."""
    capture_data = True

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def after(self, op: Op) -> None:
        self.ops.append(op)

    def count(self, name: str, *, ok_only: bool = True) -> int:
        return sum(1 for o in self.ops if o.name == name and (not ok_only or o.errno == 0))

    def names(self) -> list[str]:
        return [o.name for o in self.ops]


class FailNth(Hook):
    """Fails the n-th (1-based) call whose name is in `ops` (all ops if None) and whose path
    contains `path_contains` (if given), with `err`. persistent=True fails that call and
    every matching call after it. `calls` counts matching calls; `fired` counts failures."""

    def __init__(self, n: int, *, err: int = _errno.EIO, ops: Iterable[str] | None = None,
                 persistent: bool = False, path_contains: str | None = None):
        if n < 1:
            raise ValueError("n is 1-based")
        self.n, self.err, self.persistent = n, err, persistent
        self.ops = frozenset(ops) if ops is not None else None
        self.path_contains = path_contains
        self.calls = 0
        self.fired = 0

    def before(self, op: Op):
        if self.ops is not None and op.name not in self.ops:
            return None
        if self.path_contains is not None and self.path_contains not in (op.path or ""):
            return None
        self.calls += 1
        if self.calls == self.n or (self.persistent and self.calls > self.n):
            self.fired += 1
            return self.err
        return None


class ShortWrites(Hook):
    """Every pwrite writes at most `max_bytes` (the core must loop)."""

    def __init__(self, max_bytes: int = 7):
        self.max_bytes = max_bytes
        self.shortened = 0

    def before(self, op: Op):
        if op.name == "pwrite" and op.size is not None and op.size > self.max_bytes:
            self.shortened += 1
            return Short(self.max_bytes)
        return None


class Eintr(Hook):
    """Every `every`-th call of `ops` fails with EINTR first (the core must retry, except
    fsync/fdatasync, where any error is final)."""

    def __init__(self, every: int = 2, ops: Iterable[str] = ("pwrite", "pread")):
        self.every, self.ops = every, frozenset(ops)
        self.calls = 0
        self.fired = 0

    def before(self, op: Op):
        if op.name in self.ops:
            self.calls += 1
            if self.calls % self.every == 0:
                self.fired += 1
                return _errno.EINTR
        return None


class Chain(Hook):
    """Several hooks: before() of each in order, the first non-None answer wins; after() of
    all."""

    def __init__(self, *hooks):
        self.hooks = hooks
        self.capture_data = any(getattr(h, "capture_data", False) for h in hooks)

    def before(self, op: Op):
        for h in self.hooks:
            r = h.before(op)
            if r is not None:
                return r
        return None

    def after(self, op: Op) -> None:
        for h in self.hooks:
            h.after(op)


# ----------------------------------------------------------------------------- dispatch

_hook = None
_fdpaths: dict[int, tuple[str, bool]] = {}
_seq = 0
_install_lock = threading.Lock()
_real = lib.au_sys_default


def _str(p) -> str:
    return os.fsdecode(ffi.string(p))


def _run(op: Op, call, *, short_ok=False):
    """Shows `op` to the hook, runs `call(size)` unless failed, returns the C result."""
    global _seq
    h = _hook
    _seq += 1
    op.seq = _seq
    action = h.before(op) if h is not None else None
    size = op.size
    if action is not None:
        if isinstance(action, Short):
            if not short_ok or op.size is None:
                raise TypeError(f"Short() only applies to pwrite/pread, not {op.name}")
            size = max(0, min(action.n, op.size))
            op.injected = True
        else:
            op.injected = True
            op.result, op.errno = -1, int(action)
            if h is not None:
                h.after(op)
            ffi.errno = int(action)
            return -1
    ffi.errno = 0
    r = call(size)
    e = ffi.errno if r < 0 else 0
    op.result, op.errno = r, e
    if h is not None:
        h.after(op)
    ffi.errno = e
    return r


def _fd_op(name, fd, **kw) -> Op:
    path, is_dir = _fdpaths.get(fd, (None, False))
    return Op(name, fd=fd, path=path, is_dir=is_dir, **kw)


def _on_error(exc, val, tb):
    import traceback
    traceback.print_exception(exc, val, tb)
    ffi.errno = _errno.EIO
    return -1


@ffi.def_extern(onerror=_on_error)
def _au_py_open(path, flags, mode):
    p = _str(path)
    op = Op("open", path=p, flags=flags, mode=mode,
            is_dir=bool(flags & lib.au_o_directory()))
    r = _run(op, lambda _n: _real.open(path, flags, mode))
    if r >= 0:
        _fdpaths[r] = (p, op.is_dir)
    return r


@ffi.def_extern(onerror=_on_error)
def _au_py_close(fd):
    r = _run(_fd_op("close", fd), lambda _n: _real.close(fd))
    if r < 0:
        # Linux releases the descriptor even when close() reports an error; an injected
        # close error must too, or the fd (and a flock on it) would leak
        e = ffi.errno
        _real.close(fd)
        ffi.errno = e
    _fdpaths.pop(fd, None)
    return r


@ffi.def_extern(onerror=_on_error)
def _au_py_pwrite(fd, buf, n, off):
    op = _fd_op("pwrite", fd, offset=off, size=n)
    h = _hook

    def call(k):
        r = _real.pwrite(fd, buf, k, off)
        if r > 0 and h is not None and getattr(h, "capture_data", False):
            op.data = ffi.buffer(buf, r)[:]
        return r
    return _run(op, call, short_ok=True)


@ffi.def_extern(onerror=_on_error)
def _au_py_pread(fd, buf, n, off):
    return _run(_fd_op("pread", fd, offset=off, size=n),
                lambda k: _real.pread(fd, buf, k, off), short_ok=True)


@ffi.def_extern(onerror=_on_error)
def _au_py_fdatasync(fd):
    return _run(_fd_op("fdatasync", fd), lambda _n: _real.fdatasync(fd))


@ffi.def_extern(onerror=_on_error)
def _au_py_fsync(fd):
    return _run(_fd_op("fsync", fd), lambda _n: _real.fsync(fd))


@ffi.def_extern(onerror=_on_error)
def _au_py_ftruncate(fd, length):
    return _run(_fd_op("ftruncate", fd, size=length), lambda _n: _real.ftruncate(fd, length))


@ffi.def_extern(onerror=_on_error)
def _au_py_rename(a, b):
    return _run(Op("rename", path=_str(a), path2=_str(b)), lambda _n: _real.rename(a, b))


@ffi.def_extern(onerror=_on_error)
def _au_py_unlink(p):
    return _run(Op("unlink", path=_str(p)), lambda _n: _real.unlink(p))


@ffi.def_extern(onerror=_on_error)
def _au_py_mkdir(p, mode):
    return _run(Op("mkdir", path=_str(p), mode=mode, is_dir=True),
                lambda _n: _real.mkdir(p, mode))


@ffi.def_extern(onerror=_on_error)
def _au_py_flock(fd, opn):
    return _run(_fd_op("flock", fd, flags=opn), lambda _n: _real.flock(fd, opn))


def _set_table(python: bool) -> None:
    t = lib.au_sys
    for name in OPS:
        setattr(t, name, getattr(lib, f"_au_py_{name}") if python else getattr(_real, name))


@contextlib.contextmanager
def installed(hook):
    """Route every syscall of the C core through `hook` inside the block."""
    global _hook, _seq
    with _install_lock:
        if _hook is not None:
            raise RuntimeError("a fault hook is already installed (compose with Chain)")
        _hook = hook
        _seq = 0
        _fdpaths.clear()
        _set_table(True)
    try:
        yield hook
    finally:
        with _install_lock:
            _set_table(False)
            _hook = None
            _fdpaths.clear()
