"""LISTEN/NOTIFY: wakes claims that wait for work, without polling.

Writers that make a job claimable (enqueue, a retry scheduled, retry_dead) run
``NOTIFY <channel>`` in their transaction; PostgreSQL delivers it on commit. One listener
thread per queue object holds a dedicated connection that LISTENs and bumps a generation
counter on each notification; waiting claims sleep on a condition until the generation
moves past the one they read before their last attempt (so a notification that arrives
between an attempt and the wait is not missed).

If the listener's connection is lost it reconnects with a backoff and bumps the generation
(waiters then look again: notifications sent while it was away are lost by PostgreSQL).
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg
from psycopg import sql

log = logging.getLogger("aurora_log.postgres")

__all__ = ["Listener"]


class Listener:
    """A background LISTEN on ``channel``; ``wait(gen, timeout)`` for a notification."""

    def __init__(self, dsn: str, channel: str) -> None:
        self._dsn = dsn
        self._channel = channel
        self._cond = threading.Condition()
        self._gen = 0
        self._stop = threading.Event()
        self._conn: psycopg.Connection | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aurora-log-pg-listener",
                                        daemon=True)
        self._thread.start()

    @property
    def generation(self) -> int:
        """Read this before looking for work, pass it to wait() after finding none."""
        with self._cond:
            return self._gen

    def wait_ready(self, timeout: float) -> bool:
        """Block until the first LISTEN is in place (so a notification right after the
        first claim attempt is not missed)."""
        return self._ready.wait(timeout)

    def wait(self, gen: int, timeout: float) -> bool:
        """Sleep until the generation moves past ``gen``, the timeout passes, or close().
        Returns True when woken by a notification (or a reconnect)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._gen != gen or self._stop.is_set(),
                                       timeout)

    def wake_all(self) -> None:
        with self._cond:
            self._gen += 1
            self._cond.notify_all()

    def close(self, poke=None) -> None:
        """Stop the thread. ``poke()`` (the queue sends a NOTIFY on the channel) ends its
        wait for a notification at once; without it the wait ends within a second."""
        self._stop.set()
        self.wake_all()
        if poke is not None and self._conn is not None:
            try:
                poke()
            except Exception:   # best effort: the 1 s wait ends it anyway
                log.debug("poking the listener failed", exc_info=True)
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True) as conn:
                    self._conn = conn
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    self._ready.set()
                    self.wake_all()            # notifications may have been lost meanwhile
                    backoff = 0.05
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self.wake_all()
            except Exception as e:  # noqa: BLE001 - any failure: reconnect (or stop)
                if self._stop.is_set():
                    break
                log.warning("LISTEN connection lost (%s); reconnecting", str(e).strip())
                self.wake_all()
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                self._conn = None
