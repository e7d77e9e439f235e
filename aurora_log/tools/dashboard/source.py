"""Where the dashboard gets its Queue from, and how it runs an action against it.

Three sources:

* :class:`QueueSource` -- the user mounted the dashboard in their own app and handed it
  their open Queue: reads and actions go straight to it.
* :class:`DirectorySource` -- ``aurora-log dashboard DIR``. The dashboard reads through a
  ``read_only`` queue (no lock: it works beside workers in either mode) and reopens it
  when the WAL changed, at most every ``refresh_seconds`` -- and no sooner than four times
  the last open took, so a big store under a busy worker is not replayed back to back (a
  reopen replays from the newest snapshot). An action opens the store in the default
  shared mode just for that action, beside the running workers; only while a process
  holds the store with ``exclusive=True`` it raises :class:`ActionsLockedError` (the UI
  says so) instead of waiting or crashing.
* :class:`PostgresSource` -- ``aurora-log dashboard postgresql://...``: a PostgresQueue the
  dashboard opens (no reaper: the workers run theirs; no migration: the schema must be
  current) and closes. The database has no single-writer lock, so reads are always fresh
  and actions run directly.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import aurora_log
from aurora_log import LockedError, ReadOnlyError
from aurora_log.errors import ActionsLockedError

__all__ = ["ActionsLockedError", "DirectorySource", "PostgresSource", "QueueSource",
           "StoreSource"]

T = TypeVar("T")


class StoreSource:
    """The interface both sources share."""

    path: str | Path                 # a directory, or a PostgreSQL queue's "dsn schema=..."

    def queue(self) -> Any:
        """The Queue to read from now (do not close it)."""
        raise NotImplementedError

    def run_action(self, action: Callable[[Any], T]) -> T:
        """Run ``action(queue)`` on a writable queue; ActionsLockedError if none is possible."""
        raise NotImplementedError

    def refresh(self) -> bool:
        """Pick up changes made by other processes; True if the queue object changed."""
        return False

    def close(self) -> None:
        """Release what the source opened itself."""

    @property
    def read_only(self) -> bool:
        return bool(getattr(self.queue(), "_read_only", False))


class QueueSource(StoreSource):
    """A Queue the caller opened and owns (the mounted dashboard)."""

    def __init__(self, queue: Any) -> None:
        if not hasattr(queue, "stats") or not hasattr(queue, "history"):
            raise TypeError(f"dashboard needs an aurora_log.Queue, not {type(queue).__name__}")
        self._queue = queue
        self.path = queue.path if isinstance(queue.path, str) else Path(queue.path)

    def queue(self) -> Any:
        return self._queue

    def run_action(self, action: Callable[[Any], T]) -> T:
        try:
            return action(self._queue)
        except ReadOnlyError:
            raise ActionsLockedError("this queue was opened read_only; actions need a "
                                     "writable queue") from None


def _wal_signature(path: Path) -> tuple:
    """Names, sizes and mtimes of the WAL segments and snapshots: changes on every write."""
    sig = []
    for sub in ("wal", "snap"):
        try:
            with os.scandir(path / sub) as it:
                for entry in it:
                    st = entry.stat()
                    sig.append((sub, entry.name, st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            continue
    return tuple(sorted(sig))


class DirectorySource(StoreSource):
    """A store directory, read through a read_only Queue that is reopened on change."""

    def __init__(self, path: str | os.PathLike, *, refresh_seconds: float = 2.0,
                 opener: Callable[..., Any] = aurora_log.open) -> None:
        self.path: Path = Path(path)
        if not (self.path / "wal").is_dir():
            raise FileNotFoundError(f"no aurora-log store at {self.path} (no wal/ directory)")
        self.refresh_seconds = float(refresh_seconds)
        self._open = opener
        self._lock = threading.Lock()          # one reopen or action at a time
        self.open_seconds = 0.0                # how long the last (re)open took
        self._queue = self._open_read_only()
        self._signature = _wal_signature(self.path)
        self._checked = time.monotonic()
        # the queue replaced by the last reopen: a request may still be reading it, so it
        # is closed one reopen later
        self._retired: Any = None

    def _open_read_only(self) -> Any:
        t0 = time.monotonic()
        q = self._open(self.path, read_only=True, reaper_interval=None)
        self.open_seconds = time.monotonic() - t0
        return q

    def queue(self) -> Any:
        return self._queue

    def refresh(self, *, force: bool = False) -> bool:
        """Reopen when the WAL or snapshots changed (and ``refresh_seconds`` passed)."""
        now = time.monotonic()
        gap = max(self.refresh_seconds, 4 * self.open_seconds)
        if not force and now - self._checked < gap:
            return False
        with self._lock:
            self._checked = now
            sig = _wal_signature(self.path)
            if sig == self._signature and not force:
                return False
            fresh = self._open_read_only()
            self._checked = time.monotonic()
            if self._retired is not None:
                self._retired.close()
            self._retired, self._queue, self._signature = self._queue, fresh, sig
            return True

    def run_action(self, action: Callable[[Any], T]) -> T:
        with self._lock:
            try:
                q = self._open(self.path, reaper_interval=None, auto_compact=False)
            except LockedError as exc:
                raise ActionsLockedError(
                    f"actions need a writable open: {exc} Or mount the dashboard in that "
                    "process with aurora_log.dashboard.app(q)") from None
            try:
                result = action(q)
            finally:
                q.close()
        self.refresh(force=True)
        return result

    def close(self) -> None:
        with self._lock:
            for q in (self._retired, self._queue):
                if q is not None:
                    q.close()
            self._retired = None


class PostgresSource(QueueSource):
    """A PostgreSQL queue opened (and closed) by the dashboard itself."""

    def __init__(self, dsn: str, *, schema: str = "aurora_log") -> None:
        from aurora_log.postgres import PostgresQueue
        super().__init__(PostgresQueue(dsn, schema=schema, reaper_interval=None,
                                       migrate=False, pool_size=4))

    def close(self) -> None:
        self._queue.close()
