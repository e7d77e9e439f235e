"""The dashboard's own state: where the store comes from, the reads for its kind of store
(with the tracker behind the activity view and /metrics), the metrics registry, the
background poller and the last verify run."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aurora_log import verify

from ...runtime.metrics import make_registry
from .readers import StoreReads
from .source import StoreSource

__all__ = ["Dashboard", "VerifyRun", "reads_for"]

log = logging.getLogger("aurora_log.dashboard")

def reads_for(source: StoreSource) -> StoreReads:
    """The reads for the source's kind of store: a PostgresQueue has a ``schema`` and no
    ``log``; everything else is the local engine."""
    q = source.queue()
    if getattr(q, "log", None) is None and hasattr(q, "schema"):
        from .pg_reads import PostgresReads
        return PostgresReads(source.queue)
    from .reads import LocalReads
    return LocalReads(source.queue)


@dataclass
class VerifyRun:
    started: datetime
    finished: datetime | None = None
    report: Any = None
    error: str | None = None


class Dashboard:
    """Everything the pages share. ``poll_seconds``: how often the background thread
    re-reads the store (a directory source) and folds new log records in."""

    def __init__(self, source: StoreSource, *, allow_actions: bool = False,
                 poll_seconds: float = 2.0, owns_source: bool = False) -> None:
        self.source = source
        self.allow_actions = bool(allow_actions)
        self.poll_seconds = float(poll_seconds)
        self.reads = reads_for(source)
        self.tracker = self.reads.tracker
        self.registry = make_registry(self.queue, self.tracker, self.reads.stats)
        self.verify_run: VerifyRun | None = None
        self._owns_source = owns_source
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def queue(self) -> Any:
        return self.source.queue()

    # ---------------------------------------------------------------- background work

    def ensure_started(self) -> None:
        """Start the poller on first use (a mounted sub-app gets no lifespan events)."""
        if self._poller is not None or self._stop.is_set():
            return
        with self._start_lock:
            if self._poller is None:
                self._poller = threading.Thread(target=self._poll_loop, daemon=True,
                                                name="aurora-log-dashboard-poller")
                self._poller.start()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:
                log.debug("dashboard poll failed; retrying", exc_info=True)
            self._stop.wait(self.poll_seconds)

    def poll_once(self) -> None:
        self.source.refresh()
        self.reads.refresh()
        self.reads.catch_up()

    def fresh_activity(self):
        """The last hour's activity, as fresh as one request can afford."""
        return self.reads.activity()

    def start_verify(self) -> bool:
        """Run verify() on the store in a thread; False if one is running or the store has
        no verify (PostgreSQL)."""
        if not self.reads.can_verify:
            return False
        run = self.verify_run
        if run is not None and run.finished is None:
            return False
        run = self.verify_run = VerifyRun(datetime.now(UTC))
        path = self.source.path

        def work() -> None:
            try:
                run.report = verify(path)
            except Exception as exc:  # noqa: BLE001 - shown on the page (verify reports problems itself)
                run.error = f"{type(exc).__name__}: {exc}"
            run.finished = datetime.now(UTC)

        threading.Thread(target=work, daemon=True, name="aurora-log-dashboard-verify").start()
        return True

    def wait_verify(self, timeout: float = 60.0) -> None:
        """For tests and scripts: wait for a verify run to end."""
        end = time.monotonic() + timeout
        while self.verify_run is not None and self.verify_run.finished is None:
            if time.monotonic() > end:
                raise TimeoutError("verify still running")
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=10)
        if self._owns_source:
            self.source.close()
