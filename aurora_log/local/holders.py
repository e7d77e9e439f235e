"""Who holds a store's DIR/LOCK, for the LockedError a refused open raises.

Every writable open flocks DIR/LOCK: the default (shared) mode with LOCK_SH, an
``exclusive=True`` open with LOCK_EX, so the two modes refuse each other. flock itself
does not say who holds a lock; Linux lists every flock in /proc/locks with the holder's
pid and the file's device and inode, which is enough to name the processes in the error
(best effort: elsewhere, or if /proc is not mounted, the message names no pid).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import LockedError

__all__ = ["lock_holders", "refused_by_exclusive", "refused_by_shared"]


def lock_holders(path: Path) -> list[tuple[int, str]]:
    """(pid, "exclusive" | "shared") of each process holding a flock on ``path``, as
    /proc/locks lists them (waiters left out); [] if that cannot be read."""
    try:
        st = os.stat(path)
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    out = []
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; a waiter has "->" after "1:"
        parts = line.split()
        if len(parts) < 6 or parts[1] != "FLOCK":
            continue
        try:
            major, minor, ino = parts[5].split(":")
            where = (int(major, 16), int(minor, 16), int(ino))
            pid = int(parts[4])
        except ValueError:
            continue
        if where == want:
            out.append((pid, "exclusive" if parts[3] == "WRITE" else "shared"))
    return out


def _who(pids: list[int]) -> str:
    """'process 1234 (myapp worker)', 'this process', or '2 processes (...)'."""
    names = []
    for pid in sorted(set(pids)):
        if pid == os.getpid():
            names.append(f"this process ({pid})")
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            cmd = " ".join(a.decode(errors="replace") for a in argv[:3] if a)[:80]
        except OSError:
            cmd = ""
        names.append(f"process {pid} ({cmd})" if cmd else f"process {pid}")
    if len(names) > 4:
        names = names[:4] + [f"{len(names) - 4} more"]
    return ", ".join(names)


def refused_by_exclusive(directory: Path, lock_path: Path) -> LockedError:
    """The error for an open refused because an ``exclusive=True`` process holds the store."""
    pids = [pid for pid, kind in lock_holders(lock_path) if kind == "exclusive"]
    who = _who(pids) if pids else "another process"
    return LockedError(
        f"{directory} is held by {who}, which opened it with exclusive=True (that mode "
        f"admits no other process; lock {lock_path}). Open it there without "
        "exclusive=True (the default lets any number of processes share the store), or "
        "stop it; read_only=True opens work beside it")


def refused_by_shared(directory: Path, lock_path: Path) -> LockedError:
    """The error for an ``exclusive=True`` open refused because the store is open in the
    default (shared) mode somewhere."""
    pids = [pid for pid, kind in lock_holders(lock_path) if kind == "shared"]
    who = _who(pids) if pids else "another process"
    return LockedError(
        f"{directory} is open in {who} in the default shared mode (lock {lock_path}); "
        "exclusive=True needs the store alone. Open it without exclusive=True (every "
        "process then shares it), or close the others first")
