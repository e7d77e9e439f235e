"""The running job's Context: what a handler can ask of the worker while it runs.

A handler gets it as its first argument (``context=True``) or from ``current_context()``
anywhere below it: ``ctx.cancelled``, ``ctx.check()``, ``ctx.sleep()``, ``ctx.progress()``.
The worker (worker.py) keeps its bookkeeping for the job on the same object, so every way
of running a handler (thread, event loop, child process) stops it the same way:
``_request_stop(reason)``.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from typing import TYPE_CHECKING, Any
from collections.abc import Callable

from ..errors import JobCancelled, JobTimeout

if TYPE_CHECKING:
    import asyncio
    import subprocess

__all__ = ["Context", "current_context", "stop_exception"]

log = logging.getLogger("aurora_log.worker")

ProgressSink = Callable[[float, "str | None"], None]

_current: contextvars.ContextVar[Context | None] = contextvars.ContextVar(
    "aurora_log_context", default=None)


def current_context() -> Context | None:
    """The Context of the job running in this thread / asyncio task (None outside a job)."""
    return _current.get()


def set_current(ctx: Context | None) -> contextvars.Token[Context | None]:
    """Make ``ctx`` what current_context() answers here; the token undoes it."""
    return _current.set(ctx)


def reset_current(token: contextvars.Token[Context | None]) -> None:
    _current.reset(token)


def stop_exception(reason: str) -> JobCancelled:
    """The exception a handler sees when it is stopped for ``reason``."""
    return JobTimeout(reason) if reason == "timeout" else JobCancelled(reason)


class Context:
    """What a running handler can ask of the worker: ``cancelled``, ``check()``,
    ``progress()``, ``sleep()``. Passed as the first argument with ``context=True``, or
    reachable anywhere in the handler through ``current_context()``."""

    def __init__(self, job: Any, *, sink: ProgressSink | None = None):
        self.job = job
        self.job_id: str = job.id
        self.attempt: int = int(getattr(job, "retry_count", 0) or 0) + 1
        self._event = threading.Event()
        self._reason: str | None = None
        self._sink = sink
        # worker bookkeeping
        self._lock = threading.Lock()
        self._final = False
        self._started = time.monotonic()
        self._deadline: float | None = None
        self._next_hb = 0.0
        self._next_cancel_poll = 0.0
        self._progress: tuple[float, str | None] | None = None   # not yet sent
        self._progress_sent = 0.0
        self._async_task: asyncio.Task[Any] | None = None   # the task of an async handler
        self._loop: asyncio.AbstractEventLoop | None = None  # ... and the loop it runs on
        self._child: subprocess.Popen[str] | None = None    # a process-isolated handler
        self._kill_at: float | None = None
        # set by aurora_log.testing's crash harness: called with (ctx, name) at checkpoints
        self._checkpoint_hook: Callable[[Context, str], None] | None = None

    def __repr__(self) -> str:
        return f"<Context job={self.job_id} attempt={self.attempt} cancelled={self.cancelled}>"

    @property
    def cancelled(self) -> bool:
        """True once the job should stop (cancel requested, timeout, shutdown, lease lost)."""
        return self._event.is_set()

    @property
    def reason(self) -> str | None:
        """Why the job should stop ("cancelled", "timeout", "shutdown", "lost"), or None."""
        return self._reason

    def check(self) -> None:
        """Raise JobCancelled (JobTimeout for a timeout) if the job should stop."""
        if self._event.is_set():
            raise stop_exception(self._reason or "cancelled")

    def checkpoint(self, name: str) -> None:
        """Mark a point inside the handler, e.g. ``ctx.checkpoint("charged")`` right after
        an external side effect. A no-op in a worker; the crash harness of
        ``aurora_log.testing`` crashes the worker there to show what a redelivery does."""
        hook = self._checkpoint_hook
        if hook is not None:
            hook(self, name)

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake up and raise JobCancelled as soon as the job should stop."""
        if self._event.wait(seconds):
            self.check()

    def progress(self, value: float, total: float | str | None = None,
                 message: str | None = None) -> None:
        """``ctx.progress(0.5)``, ``ctx.progress(3, 10)``, ``ctx.progress(3, 10, "pages")``,
        ``ctx.progress(0.5, "halfway")``. Recorded on the job (visible in get/history);
        calls are coalesced, so calling it often is cheap."""
        if isinstance(total, str) and message is None:
            total, message = None, total
        if isinstance(total, str):              # progress(1, "a", "b"): two messages
            raise TypeError("progress total must be a number")
        if total is not None:
            if total <= 0:
                raise ValueError("progress total must be > 0")
            value = value / total
        fraction = float(value)
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"progress must be within 0..1 (or done <= total), got {fraction}")
        if message is not None:
            message = str(message)[:500]
        self._progress = (fraction, message)
        if self._sink is not None and time.monotonic() - self._progress_sent >= 0.1:
            self._flush_progress()

    def _flush_progress(self) -> None:
        pending, self._progress = self._progress, None
        if pending is None or self._sink is None:
            return
        self._progress_sent = time.monotonic()
        try:
            self._sink(*pending)
        except Exception as exc:      # progress is best effort: never fails the job
            log.debug("progress of job %s not recorded: %s", self.job_id, exc)

    def _request_stop(self, reason: str) -> None:
        if self._reason is None:
            self._reason = reason
        self._event.set()
        task, loop = self._async_task, self._loop
        if task is not None and loop is not None:
            # asyncio's own cooperative stop: CancelledError at the handler's next await
            loop.call_soon_threadsafe(task.cancel)
