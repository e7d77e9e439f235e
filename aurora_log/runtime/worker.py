"""The worker runtime: threads that claim jobs and run their handlers.

    from aurora_log import Worker
    Worker(q, concurrency=4).run()          # blocks; SIGTERM/SIGINT stop it

What it does for every claimed job:

- finds the handler by job_type (tasks.py); none -> fail "no handler registered for 'x'",
  which follows the job's retry rules like any other failure;
- runs it in the claiming thread (``async def`` handlers on an event loop the worker owns,
  event_loop.py; ``isolation="process"``: in a fresh child interpreter, JSON over a pipe,
  isolation.py);
- heartbeats from one monitor thread every lease/3, so a live job is never reaped; the
  heartbeat's answer tells it a cancel was requested, which the handler sees as
  ``ctx.cancelled`` / ``ctx.check()``;
- at ``timeout_seconds`` fails the job with "timeout" (retried per its policy): a thread
  handler is asked to stop (it cannot be killed; its thread is replaced so capacity stays
  N), a process handler is killed;
- stores the return value (JSON, bounded) as the job's result.

Shutdown: the first SIGTERM/SIGINT stops claiming (a job claimed meanwhile, its handler not
started, is handed back with ``Queue.release``) and waits up to ``shutdown_timeout`` for
running jobs; a second signal (or the timeout) stops at once: running jobs are left to the
engine, which returns them to pending (via ``Queue.release`` when the queue has it,
otherwise when the store is next opened). Signal handlers only bump a counter.

Logging goes to ``logging.getLogger("aurora_log.worker")``; no handlers are installed here.

The handler's side lives beside this module: context.py (``Context``, ``current_context``),
outcome.py (what a run produced, the stored error text), event_loop.py, isolation.py.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import json
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

from ..errors import (
    AuroraLogError, ClosedError, DurabilityError, InvalidStateError, JobCancelled,
    JobNotFoundError, JobTimeout, ReadOnlyError, StaleLeaseError,
)
from . import isolation as _isolation
from . import tasks as _tasks
from .context import Context, current_context, reset_current, set_current
from .event_loop import EventLoopThread, HandlerExit
from .outcome import Outcome, format_error

__all__ = ["Worker", "Context", "JobCancelled", "JobTimeout", "current_context"]

log = logging.getLogger("aurora_log.worker")

DEFAULT_LEASE = 30.0


def _seconds(value: float | _dt.timedelta | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    return float(value)


class Worker:
    """Runs the handlers registered on ``queue`` (see tasks.py) for the jobs it claims.

    concurrency: worker threads (default os.cpu_count()).
    queues / job_types: claim only these (default: everything).
    isolation: "thread" (default) or "process" (each job in a child interpreter, killed at
      its timeout; handlers must be importable: ``import_path="pkg.mod"`` or taken from
      the handler's module).
    shutdown_timeout: seconds a graceful stop waits for running jobs.
    cancel_poll: how often a running job's cancel flag is read (in memory) between
      heartbeats. cancel_grace: how long a process handler may take to honour a cancel
      before it is killed (a thread handler that ignores it is stopped at its timeout).
    poll_interval: the claim's wait; the longest a stop request waits for an idle thread.
    max_result_bytes: a larger (JSON) result fails the job instead of being stored.
    on_done(job, status, detail): called after the queue acknowledged the job's outcome
      ("completed", "failed", "dead_letter", "cancelled" as returned by the queue).
    metrics_port: serve Prometheus metrics on http://127.0.0.1:PORT/metrics while the
      worker runs (0 = any free port, see ``metrics_address``); needs the dashboard extra
      (prometheus_client), imported only when this is set.
    """

    def __init__(self, queue: Any, *, concurrency: int | None = None,
                 queues: str | Iterable[str] | None = None,
                 job_types: str | Iterable[str] | None = None,
                 isolation: str = "thread", shutdown_timeout: float = 30.0,
                 worker_id: str | None = None, poll_interval: float = 0.5,
                 max_result_bytes: int = 256 << 10, registry: _tasks.TaskRegistry | None = None,
                 import_path: str | None = None, cancel_grace: float = 5.0,
                 cancel_poll: float = 0.5,
                 on_done: Callable[[Any, str, Any], None] | None = None,
                 metrics_port: int | None = None):
        if metrics_port is not None and (isinstance(metrics_port, bool) or
                                         not isinstance(metrics_port, int) or
                                         not 0 <= metrics_port <= 65535):
            raise ValueError(f"metrics_port must be a port number 0..65535, got {metrics_port!r}")
        if isolation not in ("thread", "process"):
            raise ValueError(f"isolation must be 'thread' or 'process', not {isolation!r}")
        self.queue = queue
        # None means the default; 0 is a mistake, refused below rather than read as None
        self.concurrency = int(os.cpu_count() or 1) if concurrency is None else int(concurrency)
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.queues = _as_list(queues)
        self.job_types = _as_list(job_types)
        self.isolation = isolation
        self.shutdown_timeout = float(shutdown_timeout)
        self.worker_id = worker_id or f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.poll_interval = float(poll_interval)
        self.max_result_bytes = int(max_result_bytes)
        self.registry = registry if registry is not None else _tasks.registry(queue)
        self.import_path = import_path
        self.cancel_grace = float(cancel_grace)
        self.cancel_poll = float(cancel_poll)
        self.on_done = on_done
        self.metrics_port = metrics_port
        self.metrics_address: tuple[str, int] | None = None   # where /metrics is served
        self._metrics_server: Any = None           # a wsgiref server while metrics are served

        self._signals = 0                 # bumped by signal handlers, read by run()
        self._stopping = threading.Event()
        self._forced = threading.Event()
        self._active: dict[str, tuple[Context, threading.Thread]] = {}
        self._active_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._threads_lock = threading.Lock()
        self._retiring: set[int] = set()          # thread idents replaced after a timeout
        self._monitor: threading.Thread | None = None
        self._monitor_stop = threading.Event()
        self._event_loop = EventLoopThread()       # for async handlers, started on demand
        self._started = False
        self._thread_seq = 0
        self.failed: BaseException | None = None     # set when the store failed
        self.counts = {"completed": 0, "failed": 0, "dead_letter": 0, "cancelled": 0,
                       "lost": 0, "timeout": 0}
        self._counts_lock = threading.Lock()

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> Worker:
        """Start the threads and return (``run()`` = start + wait for a signal + stop)."""
        if self._started:
            raise RuntimeError("worker already started")
        self._started = True
        if self.metrics_port is not None:
            # imported here: a worker without metrics never needs prometheus_client
            from .metrics import serve_metrics
            server, _ = serve_metrics(self.queue, self.metrics_port)
            self._metrics_server = server
            host, port = server.server_address[:2]
            self.metrics_address = (str(host), int(port))
            log.info("metrics on http://%s:%d/metrics", *self.metrics_address)
        self._monitor = threading.Thread(target=self._monitor_loop, name="aurora-log-monitor",
                                         daemon=True)
        self._monitor.start()
        for _ in range(self.concurrency):
            self._spawn_thread()
        log.info("worker %s started on %s: %d %s(s)%s%s", self.worker_id,
                 getattr(self.queue, "path", "?"), self.concurrency,
                 "thread" if self.isolation == "thread" else "process slot",
                 f", queues {','.join(self.queues)}" if self.queues else "",
                 f", job types {','.join(self.job_types)}" if self.job_types else "")
        return self

    def run(self, *, install_signals: bool = True) -> int:
        """Run until SIGTERM/SIGINT (or ``request_stop()``). Returns 0 after a clean stop,
        1 when running jobs had to be abandoned (second signal or shutdown timeout)."""
        previous = {}
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            if not self._started:
                self.start()
            while self._signals == 0 and not self._stopping.is_set():
                time.sleep(0.1)
            return self._shutdown()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # flag only: no locks, no I/O
        self._signals += 1

    def request_stop(self, *, force: bool = False) -> None:
        """Ask a running ``run()`` to stop (what a signal does); force = the second signal."""
        self._stopping.set()
        if force:
            self._forced.set()

    def stop(self, timeout: float | None = None) -> int:
        """Stop a worker started with ``start()``: graceful up to ``timeout`` (default
        shutdown_timeout), then forced. Same return value as ``run()``."""
        if timeout is not None:
            self.shutdown_timeout = float(timeout)
        self._stopping.set()
        return self._shutdown()

    def _shutdown(self) -> int:
        self._stopping.set()
        n = len(self._active)
        if n:
            log.info("stopping: no new claims; waiting up to %.0f s for %d running job(s) "
                     "(signal again to stop now)", self.shutdown_timeout, n)
        else:
            log.info("stopping")
        deadline = time.monotonic() + self.shutdown_timeout
        while True:
            # threads still stuck in a handler whose job was already settled at its timeout
            # cannot be stopped and hold nothing: a clean stop does not wait for them
            if not any(t.ident not in self._retiring for t in self._live_threads()):
                break
            if self._signals >= 2 or self._forced.is_set():
                if self.failed is None:
                    log.warning("second stop request: stopping now")
                self._forced.set()
                break
            if time.monotonic() >= deadline:
                log.warning("shutdown timeout (%.0f s) reached: stopping now",
                            self.shutdown_timeout)
                self._forced.set()
                break
            time.sleep(0.05)
        clean = not self._forced.is_set()
        if not clean:
            self._abandon_running()
        self._monitor_stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout=2)
        self.stop_event_loop()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        c = self.counts
        log.info("worker %s stopped (%s): %d completed, %d failed and will retry, %d dead "
                 "letter, %d cancelled", self.worker_id, "clean" if clean else "forced",
                 c["completed"], c["failed"], c["dead_letter"], c["cancelled"])
        return 0 if clean and self.failed is None else 1

    def _abandon_running(self) -> None:
        """Forced stop: running jobs go back to pending (now if the queue can release a
        lease, otherwise when the store is next opened). Handlers are told to stop."""
        with self._active_lock:
            running = list(self._active.values())
        for ctx, _thread in running:
            with ctx._lock:
                if ctx._final:
                    continue
                ctx._final = True
            ctx._request_stop("shutdown")
            _isolation.kill_child(ctx)
            self._hand_back(ctx.job, "stopped by a forced shutdown")

    def _hand_back(self, job: Any, why: str) -> None:
        """Queue.release a claimed job whose handler did not start (or was cut off by the
        shutdown): pending again, no attempt spent. Without release (another queue
        implementation), or if it fails, recovery returns it when the store reopens."""
        release = getattr(self.queue, "release", None)
        if release is not None:
            try:
                release(job.id, job.token)
                log.info("job %s returned to pending (%s)", job.id, why)
                return
            except AuroraLogError as exc:
                log.warning("job %s not released: %s", job.id, exc)
        log.info("job %s left running; it returns to pending when the store is next "
                 "opened", job.id)

    @property
    def running(self) -> list[str]:
        """Ids of the jobs running now."""
        with self._active_lock:
            return list(self._active)

    def _live_threads(self) -> list[threading.Thread]:
        with self._threads_lock:
            return [t for t in self._threads if t.is_alive()]

    def _spawn_thread(self) -> None:
        with self._threads_lock:
            self._thread_seq += 1
            t = threading.Thread(target=self._thread_main,
                                 name=f"aurora-log-worker-{self._thread_seq}", daemon=True)
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    # ---------------------------------------------------------------- claiming

    def _thread_main(self) -> None:
        me = threading.get_ident()
        errors = 0
        while not self._stopping.is_set() and me not in self._retiring:
            try:
                job = self.queue.claim(self.worker_id, job_types=self.job_types,
                                       queues=self.queues, wait=self.poll_interval)
                errors = 0
            except ClosedError:
                break
            except DurabilityError as exc:
                self._store_failed(exc)
                break
            except ReadOnlyError as exc:
                if not self.failed:
                    self.failed = exc
                    log.critical("the queue is read-only; a worker needs to write: stopping")
                self._stopping.set()
                break
            except Exception as exc:
                errors += 1
                log.error("claim failed: %s", exc, exc_info=errors == 1)
                time.sleep(min(5.0, 0.1 * 2 ** min(errors, 6)))
                continue
            if job is None:
                if getattr(self.queue, "closed", False):    # claim(wait=) answers None then
                    log.warning("the queue was closed under the worker: stopping")
                    self._stopping.set()
                    break
                continue
            # Queue.claim hands the claim to the OS before it returns, so a handler that
            # kills this process still spends an attempt (and ends in dead-letter).
            if self._stopping.is_set():
                # claimed while stopping: its handler never started, so hand it back
                # without spending an attempt
                self._hand_back(job, "claimed while stopping; not started")
                break
            try:
                self._run_job(job)
            except Exception:               # never lose the thread to a bug in bookkeeping
                log.exception("internal error running job %s", getattr(job, "id", "?"))
        self._retiring.discard(me)

    def stop_event_loop(self) -> None:
        """Stop the thread async handlers run on (started on demand by ``run_attempt``).
        ``stop()`` does this; a caller that ran attempts itself without ``start()`` calls
        it when done."""
        self._event_loop.stop()

    # ---------------------------------------------------------------- running a job

    def _run_job(self, job: Any) -> None:
        def record_progress(fraction: float, message: str | None) -> None:
            self.queue.progress(job.id, job.token, fraction, message)

        ctx = Context(job, sink=record_progress)
        timeout = _seconds(getattr(job, "timeout_seconds", None))
        lease = _seconds(getattr(job, "lease_duration", None)) or DEFAULT_LEASE
        now = time.monotonic()
        ctx._deadline = now + timeout if timeout else None
        ctx._next_hb = now + lease / 3.0
        with self._active_lock:
            self._active[job.id] = (ctx, threading.current_thread())
        try:
            log.debug("job %s (%s) attempt %d started", job.id, job.job_type, ctx.attempt)
            self.record_outcome(ctx, self.run_attempt(ctx))
        finally:
            with self._active_lock:
                self._active.pop(job.id, None)

    def run_attempt(self, ctx: Context) -> Outcome:
        """Run a claimed job's handler (found by job_type) in the calling thread, the way
        this worker's threads run handlers, and say how it ended; nothing is recorded yet
        (``record_outcome`` does that). With ``record_outcome``, the entry point of
        aurora_log.testing's drain and crash harness, so they run handlers exactly as a
        worker does."""
        handler = self.registry.get(ctx.job.job_type)
        if handler is None:
            return Outcome("fail", f"no handler registered for {ctx.job.job_type!r}")
        if self.isolation == "process":
            return _isolation.run_in_child(ctx, handler, self.import_path)
        if handler.is_async:
            return self._event_loop.run_handler(ctx, handler)
        return self._run_inline(ctx, handler)

    def _run_inline(self, ctx: Context, handler: _tasks.Handler) -> Outcome:
        token = set_current(ctx)
        try:
            args, kwargs = handler.call_args(ctx.job, ctx)
            value = handler.fn(*args, **kwargs)
            if inspect.isawaitable(value):          # a sync callable that returned a coroutine
                value = self._event_loop.wait_for(ctx, value)
            return Outcome("complete", value)
        except JobCancelled as exc:
            return Outcome("fail", exc.reason, cancelled=exc.reason == "cancelled")
        except HandlerExit as exc:
            return Outcome("fail", exc.text)
        except BaseException as exc:        # SystemExit too: a handler cannot end its thread
            log.debug("job %s raised", ctx.job_id, exc_info=True)
            return Outcome("fail", format_error(exc))
        finally:
            reset_current(token)

    # ---------------------------------------------------------------- outcomes

    def record_outcome(self, ctx: Context, outcome: Outcome) -> None:
        """Record what ``run_attempt`` returned (complete or fail, with the result checks)
        unless the attempt was settled already (timeout, lost lease, forced stop); then
        count it and call ``on_done``."""
        with ctx._lock:
            if ctx._final:
                return                      # settled already (timeout, lost lease, forced stop)
            ctx._final = True
        ctx._flush_progress()
        job, q = ctx.job, self.queue
        if outcome.kind == "complete":
            try:
                text = json.dumps(outcome.value, allow_nan=False)
            except (TypeError, ValueError) as exc:
                outcome = Outcome("fail", f"result is not JSON-encodable: {exc}")
            else:
                if len(text.encode()) > self.max_result_bytes:
                    outcome = Outcome("fail", f"result too large ({len(text.encode())} bytes "
                                               f"> {self.max_result_bytes})")
        try:
            if outcome.kind == "complete":
                q.complete(job.id, job.token, outcome.value)
                status = "completed"
                log.debug("job %s (%s) completed in %.3f s", job.id, job.job_type,
                          time.monotonic() - ctx._started)
            else:
                status = self._fail(ctx, outcome.value)
        except (StaleLeaseError, InvalidStateError, JobNotFoundError) as exc:
            self._count("lost")
            if outcome.value == "timeout":
                log.info("job %s timed out; the queue's reaper settled it first", job.id)
            else:
                log.warning("job %s: outcome not recorded (%s); it was reaped or settled "
                            "elsewhere and may run again", job.id, exc)
            return
        except ClosedError:
            log.warning("job %s: queue closed before its outcome was recorded", job.id)
            return
        except DurabilityError as exc:
            log.error("job %s: its outcome could not be made durable (it will run again)",
                      job.id)
            self._store_failed(exc)
            return
        except Exception:
            log.exception("job %s: recording the outcome failed", job.id)
            return
        self._count(status)
        if self.on_done is not None:
            try:
                self.on_done(job, status, outcome.value)
            except Exception:
                log.exception("on_done hook failed")

    def _fail(self, ctx: Context, error: str) -> str:
        job = ctx.job
        # A cancel that was requested turns this fail into CANCELLED (the engine knows).
        status = _status_str(self.queue.fail(job.id, job.token, error))
        first = error.splitlines()[0] if error else error
        if status == "cancelled":
            log.info("job %s (%s) cancelled", job.id, job.job_type)
        elif status == "dead_letter":
            log.warning("job %s (%s) failed for good (dead letter): %s", job.id, job.job_type,
                        first)
        else:
            log.warning("job %s (%s) attempt %d failed: %s", job.id, job.job_type, ctx.attempt,
                        first)
        return status

    def _store_failed(self, exc: BaseException) -> None:
        """A write or fsync failed: the queue acknowledges nothing more until it is
        reopened, so stop (not cleanly) and let the supervisor restart the worker."""
        if not self.failed:
            self.failed = exc
            log.critical("the store failed (%s); stopping: restart the worker to reopen it",
                         exc)
        self._stopping.set()
        self._forced.set()

    def _count(self, status: str) -> None:
        with self._counts_lock:
            self.counts[status] = self.counts.get(status, 0) + 1

    # ---------------------------------------------------------------- the monitor thread

    def _monitor_loop(self) -> None:
        while not self._monitor_stop.is_set():
            now = time.monotonic()
            with self._active_lock:
                running = list(self._active.values())
            for ctx, thread in running:
                if ctx._final:
                    continue
                try:
                    if ctx._deadline is not None and now >= ctx._deadline:
                        self._on_timeout(ctx, thread)
                    elif ctx._kill_at is not None and now >= ctx._kill_at:
                        _isolation.kill_child(ctx)
                    elif now >= ctx._next_hb:
                        self._heartbeat(ctx)
                    elif now >= ctx._next_cancel_poll:
                        self._poll_cancel(ctx)
                    if ctx._progress is not None:
                        ctx._flush_progress()
                except Exception:
                    log.exception("monitor: job %s", ctx.job_id)
            self._monitor_stop.wait(0.05)

    def _heartbeat(self, ctx: Context) -> None:
        job = ctx.job
        lease = _seconds(getattr(job, "lease_duration", None)) or DEFAULT_LEASE
        try:
            cancel = self.queue.heartbeat(job.id, job.token)
        except (StaleLeaseError, InvalidStateError, JobNotFoundError) as exc:
            with ctx._lock:
                if ctx._final:
                    return
                ctx._final = True
            self._count("lost")
            log.warning("job %s lost its lease (%s); telling the handler to stop", job.id, exc)
            ctx._request_stop("lost")
            _isolation.kill_child(ctx)
            return
        except ClosedError:
            return
        except Exception as exc:
            log.warning("heartbeat of job %s failed: %s (retrying)", job.id, exc)
            ctx._next_hb = time.monotonic() + min(1.0, lease / 6.0)
            return
        ctx._next_hb = time.monotonic() + lease / 3.0
        if cancel:
            self._on_cancel_requested(ctx)

    def _poll_cancel(self, ctx: Context) -> None:
        """Between heartbeats, look at the in-memory job (no write) so a cancel reaches the
        handler within cancel_poll seconds instead of up to lease/3."""
        ctx._next_cancel_poll = time.monotonic() + self.cancel_poll
        if ctx.cancelled:
            return
        try:
            job = self.queue.get(ctx.job_id)
        except Exception:
            return
        if job is not None and getattr(job, "cancel_requested", False):
            self._on_cancel_requested(ctx)

    def _on_cancel_requested(self, ctx: Context) -> None:
        if ctx.cancelled:
            return
        log.info("job %s: cancel requested", ctx.job_id)
        ctx._request_stop("cancelled")
        if ctx._child is not None:
            _isolation.cancel_child(ctx)
            grace = time.monotonic() + self.cancel_grace
            ctx._kill_at = grace if ctx._deadline is None else min(grace, ctx._deadline)

    def _on_timeout(self, ctx: Context, thread: threading.Thread) -> None:
        ctx._request_stop("timeout")
        self._count("timeout")
        if ctx._child is not None:
            _isolation.kill_child(ctx)        # the job's thread sees the child die and settles it
            return
        # A thread cannot be killed: settle the job now, and replace the thread if the
        # handler does not come back by itself shortly.
        log.warning("job %s timed out; its handler was asked to stop", ctx.job_id)
        self.record_outcome(ctx, Outcome("fail", "timeout"))
        if not self._stopping.is_set() and thread.ident is not None:
            self._retiring.add(thread.ident)
            self._spawn_thread()


def _status_str(status: object) -> str:
    return str(getattr(status, "value", status)).lower()


def _as_list(value: str | Iterable[str] | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
    out = [v for v in value if v]
    return out or None
