"""Which processes of a shared store are alive, and what happens to a dead one's jobs.

docs/INTERNALS.md ("Liveness") is the protocol. Each process that opens a store in shared
mode:

- creates ``DIR/procs/<random>.live.new`` (0600), takes flock LOCK_EX on it, renames it
  to ``<random>.live.tmp`` (so a probe never sees it unlocked), and under the append lock
  renames it to ``DIR/procs/<attach LSN>.live`` and appends ATTACH at that LSN:
  its identity in every later record (CLAIM v2 carries it);
- holds that flock for its lifetime (the kernel releases it however the process dies);
- on each reaper tick probes the other ``*.live`` files with LOCK_EX|LOCK_NB: a lock it
  gets means the owner died, and it appends PROC_GONE plus a "process died" REAP for each
  of that process's RUNNING jobs in one batch, then deletes the file;
- on a clean close appends DETACH plus the same REAPs for its own RUNNING jobs.

flock, never fcntl locks: a process closing any fd of a file drops all its fcntl locks on
it. A probe never waits on a lock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import socket
import sys
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from . import records as R
from .log import _fsync_dir, make_dirs

if TYPE_CHECKING:
    from .queue import Queue

__all__ = ["Liveness", "PROCS_DIR"]

PROCS_DIR = "procs"
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_PIN_LINE = 30          # b"%020d %08x\n": the folded LSN and the crc32 of its digits
_NEW = ".live.new"      # a liveness file being created (not yet locked): never probed
_NEW_STALE_SECONDS = 60.0   # an unlocked one this old was left by a creator that died


def _name(attach_lsn: int) -> str:
    return f"{attach_lsn:020d}.live"


class Liveness:
    """One process's liveness file and its probes of the others (shared mode)."""

    def __init__(self, q: Queue) -> None:
        self._q = q
        self._dir = Path(q.path) / PROCS_DIR
        self._fd = -1
        self._tmp = Path()
        self.attach_lsn = 0
        self.noticed = 0          # dead processes this one reported (PROC_GONE appended)

    # ---------------------------------------------------------------- attach / detach
    def begin(self) -> None:
        """Before the replay: create and lock ``procs/<random>.live.tmp``. While it exists
        no process retires a segment (this one is reading the log to catch up)."""
        make_dirs(self._dir)
        name = secrets.token_hex(8)
        tmp = self._dir / f"{name}.live.tmp"
        # created under a name no probe looks at, and given the probed name only once
        # locked: a probe between the creation and the flock would find it unlocked, take
        # it for a creator that died, and delete it under us
        new = self._dir / f"{name}{_NEW}"
        fd = os.open(new, os.O_CREAT | os.O_EXCL | os.O_WRONLY | _O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(new, tmp)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(new)
            except FileNotFoundError:
                pass
            raise
        self._fd = fd
        self._tmp = tmp
        self.publish(0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started_ms": round(time.time() * 1000),
                                  "argv0": sys.argv[0] if sys.argv else ""}).encode() + b"\n",
                  _PIN_LINE)

    def publish(self, folded_next_lsn: int) -> None:
        """Publish how far this process has folded (a lower bound: it only grows), in the
        first line of its liveness file: the retention pin others read."""
        digits = b"%020d" % folded_next_lsn
        os.pwrite(self._fd, digits + b" %08x\n" % zlib.crc32(digits), 0)

    def attach(self) -> int:
        """Append ATTACH and give our liveness file its final name. A process that
        recovered the log (nobody else was attached) also returns every job left RUNNING
        by the dead to pending, and deletes their liveness files. Returns how many jobs it
        recovered."""
        q, log = self._q, self._q._sl
        if log.rebuilt:
            self._remove_stale()
        tmp = self._tmp
        self.publish(q._cursor[2])
        now = q._now_ms()
        with q._deciding():
            attach_lsn = log.reserve(1)
            recs: list = [R.Attach(now, os.getpid(), socket.gethostname()[:200])]
            if log.rebuilt:
                # everyone before us died: their RUNNING jobs (claimed below the recovered
                # tail; a process that attached after us claims above it) go back
                bound = log.recovered_next_lsn
                state = q._state
                recs += state.plan_recover(
                    now, q._delay, only=lambda j: state.proc_of.get(j, 0) < bound)
            reserved = q._reserve_apply(recs)
            # the final name appears after ATTACH is published and while we hold its lock,
            # inside the append lock (a noticer takes it before acting): a name always
            # means a published ATTACH at that LSN
            os.rename(tmp, self._dir / _name(attach_lsn))
            self.attach_lsn = attach_lsn
        _fsync_dir(self._dir)
        q._publish(reserved, "durable")
        return len(recs) - 1

    def pin(self) -> int:
        """The lowest LSN a live process may still have to read: the minimum of the folded
        positions the live processes published (ours included); 0 (retire nothing) while
        a process is attaching or a liveness file cannot be read."""
        low = self._q._cursor[2]
        for name in os.listdir(self._dir):
            path = self._dir / name
            if name.endswith(".live.tmp"):
                if path != self._tmp and not self._unlocked(path):
                    return 0          # attaching: it is replaying from a snapshot
                continue
            if not name.endswith(".live") or name == _name(self.attach_lsn):
                continue
            if self._unlocked(path):
                continue              # dead: it reads nothing more
            try:
                with open(path, "rb") as f:
                    line = f.read(_PIN_LINE)
                digits, crc = line[:20], int(line[21:29], 16)
                if zlib.crc32(digits) != crc:
                    return 0
                low = min(low, int(digits))
            except (OSError, ValueError):
                return 0
        return low

    def _remove_stale(self) -> None:
        """We recovered the log: every liveness file left unlocked is a dead process's
        (one attached since holds its lock and stays). A file still being created
        (``*.live.new``) is unlocked for an instant, so only an old one is removed."""
        now = time.time()
        for name in os.listdir(self._dir):
            path = self._dir / name
            if name.endswith(_NEW):
                try:
                    old = now - path.stat().st_mtime > _NEW_STALE_SECONDS
                except FileNotFoundError:
                    continue
                if not (old and self._unlocked(path)):
                    continue
            elif not (name.endswith(".live") or name.endswith(".live.tmp")) or \
                    path == self._tmp or not self._unlocked(path):
                continue
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def detach(self) -> None:
        """Clean close: DETACH and our RUNNING jobs back to pending, one batch, durable;
        then our liveness file goes."""
        q = self._q
        if self._fd < 0:
            return
        try:
            if not q._log.failed:
                now = q._now_ms()
                with q._deciding():
                    me = self.attach_lsn
                    state = q._state
                    mine = set(state.jobs_of_proc(me))
                    recs: list = [R.Detach(now, me)]
                    recs += state.plan_recover(now, q._delay, only=mine.__contains__)
                    reserved = q._reserve_apply(recs)
                q._publish(reserved, "durable")
                q.returned_on_close = len(recs) - 1
        finally:
            self.close_file(unlink=True)

    def close_file(self, unlink: bool = False) -> None:
        if self._fd < 0:
            return
        if unlink:
            try:
                os.unlink(self._dir / _name(self.attach_lsn) if self.attach_lsn else self._tmp)
            except FileNotFoundError:
                pass
        os.close(self._fd)        # never LOCK_UN: a forked child's copy shares the lock
        self._fd = -1

    def forget_after_fork(self) -> None:
        """In a forked child: close our copy of the parent's liveness fd, so the lock goes
        when the parent dies, whether or not the child lives on."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # ---------------------------------------------------------------- probes
    def probe(self) -> int:
        """Probe every other process's liveness file; report the dead ones. Returns how
        many were found dead now."""
        found = 0
        try:
            names = os.listdir(self._dir)
        except FileNotFoundError:
            return 0
        for name in names:
            path = self._dir / name
            if name.endswith(_NEW):
                # a creator killed between its create and its rename to .live.tmp (a few
                # microseconds: one this old and unlocked is a dead creator's)
                try:
                    old = time.time() - os.stat(path).st_mtime > _NEW_STALE_SECONDS
                except FileNotFoundError:
                    continue
                if old and self._unlocked(path):
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
                continue
            if name.endswith(".live.tmp"):
                # a creator that died before the rename (it holds the lock while alive)
                if self._unlocked(path):
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
                continue
            if not name.endswith(".live") or not name[:-5].isdigit():
                continue
            proc = int(name[:-5])
            if proc == self.attach_lsn or not self._unlocked(path):
                continue
            self._report_dead(proc, path)
            found += 1
        return found

    @staticmethod
    def _unlocked(path: Path) -> bool:
        """True if nobody holds the file's flock (its owner is dead). The probe's own lock
        is dropped with its fd at once."""
        try:
            fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        finally:
            os.close(fd)
        return True

    def _report_dead(self, proc: int, path: Path) -> None:
        """PROC_GONE + a "process died" REAP for each of its RUNNING jobs, one batch,
        durable; then its file goes. A second noticer finds it gone in the fold."""
        q = self._q
        now = q._now_ms()
        reserved = None
        with q._deciding():
            state = q._state
            if proc not in state.procs_gone and proc < q._cursor[2]:
                mine = set(state.jobs_of_proc(proc))
                recs: list = [R.ProcGone(now, proc, self.attach_lsn)]
                recs += state.plan_recover(now, q._delay, only=mine.__contains__)
                reserved = q._reserve_apply(recs)
                q._cond.notify_all()
        if reserved is not None:
            q._publish(reserved, "durable")
            self.noticed += 1
        try:
            os.unlink(path)
            _fsync_dir(self._dir)
        except FileNotFoundError:
            pass
