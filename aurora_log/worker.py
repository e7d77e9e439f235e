"""The worker runtime: threads that claim jobs and run their handlers.

    from aurora_log import Worker
    Worker(q, concurrency=4).run()          # blocks; SIGTERM/SIGINT stop it

What it does for every claimed job:

- finds the handler by job_type (tasks.py); none -> fail "no handler registered for 'x'",
  which follows the job's retry rules like any other failure;
- runs it in the claiming thread (``async def`` handlers on an event loop the worker owns;
  ``isolation="process"``: in a fresh child interpreter, JSON over a pipe);
- heartbeats from one monitor thread every lease/3, so a live job is never reaped; the
  heartbeat's answer tells it a cancel was requested, which the handler sees as
  ``ctx.cancelled`` / ``ctx.check()``;
- at ``timeout_seconds`` fails the job with "timeout" (retried per its policy): a thread
  handler is asked to stop (it cannot be killed; its thread is replaced so capacity stays
  N), a process handler is killed;
- stores the return value (JSON, bounded) as the job's result.

Shutdown: the first SIGTERM/SIGINT stops claiming and waits up to ``shutdown_timeout`` for
running jobs; a second signal (or the timeout) stops at once: running jobs are left to the
engine, which returns them to pending (via ``Queue.release`` when the queue has it,
otherwise when the store is next opened). Signal handlers only bump a counter.

Logging goes to ``logging.getLogger("aurora_log.worker")``; no handlers are installed here.
"""

from __future__ import annotations

import contextvars
import dataclasses
import datetime as _dt
import inspect
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from typing import Any, Callable

from .errors import (
    AuroraLogError, ClosedError, DurabilityError, InvalidStateError, JobNotFoundError,
    ReadOnlyError, StaleLeaseError,
)
from . import tasks as _tasks

__all__ = ["Worker", "Context", "JobCancelled", "JobTimeout", "current_context"]

log = logging.getLogger("aurora_log.worker")

DEFAULT_LEASE = 30.0
MAX_ERROR_CHARS = 4000


class JobCancelled(AuroraLogError):
    """Raised by ``ctx.check()`` once the running job should stop. ``reason`` is
    "cancelled" (q.cancel), "timeout", "shutdown" or "lost" (the lease is gone)."""

    def __init__(self, reason: str = "cancelled"):
        self.reason = reason
        super().__init__(reason)


class JobTimeout(JobCancelled):
    """The job ran past its timeout_seconds."""

    def __init__(self, reason: str = "timeout"):
        super().__init__(reason)


_current: contextvars.ContextVar["Context | None"] = contextvars.ContextVar(
    "aurora_log_context", default=None)


def current_context() -> "Context | None":
    """The Context of the job running in this thread / asyncio task (None outside a job)."""
    return _current.get()


def _cancel_exc(reason: str) -> JobCancelled:
    return JobTimeout(reason) if reason == "timeout" else JobCancelled(reason)


class Context:
    """What a running handler can ask of the worker: ``cancelled``, ``check()``,
    ``progress()``, ``sleep()``. Passed as the first argument with ``context=True``, or
    reachable anywhere in the handler through ``current_context()``."""

    def __init__(self, job, *, sink: Callable[[float, str | None], None] | None = None):
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
        self._async_task = None                  # asyncio.Task of an async handler
        self._loop = None                        # ... and the worker's loop it runs on
        self._child: subprocess.Popen | None = None
        self._kill_at: float | None = None

    def __repr__(self) -> str:
        return f"<Context job={self.job_id} attempt={self.attempt} cancelled={self.cancelled}>"

    @property
    def cancelled(self) -> bool:
        """True once the job should stop (cancel requested, timeout, shutdown, lease lost)."""
        return self._event.is_set()

    @property
    def reason(self) -> str | None:
        return self._reason

    def check(self) -> None:
        """Raise JobCancelled (JobTimeout for a timeout) if the job should stop."""
        if self._event.is_set():
            raise _cancel_exc(self._reason or "cancelled")

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


class _HandlerExit(Exception):
    """A SystemExit/KeyboardInterrupt raised by an async handler, carried out of the event
    loop as an ordinary exception (it would otherwise stop the loop every job shares)."""

    def __init__(self, text: str):
        self.text = text
        super().__init__(text)


@dataclasses.dataclass
class _Outcome:
    kind: str                   # "complete" | "fail"
    value: Any = None           # result or error text
    cancelled: bool = False     # the handler stopped because of a cancel request


def format_error(exc: BaseException) -> str:
    """The error text stored on the job: "Type: message" and the innermost frames."""
    head = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    tb = [f for f in traceback.extract_tb(exc.__traceback__)
          if f.filename != __file__][-3:]         # the user's frames, not the worker's
    where = "".join(f"\n  at {f.filename}:{f.lineno} in {f.name}" for f in tb)
    return (head + where)[:MAX_ERROR_CHARS]


def _seconds(value) -> float | None:
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

    def __init__(self, queue, *, concurrency: int | None = None, queues=None, job_types=None,
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
        self.concurrency = int(concurrency or os.cpu_count() or 1)
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
        self._metrics_server = None

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
        self._loop = None                          # the worker's asyncio loop, made on demand
        self._loop_thread: threading.Thread | None = None
        self._loop_lock = threading.Lock()
        self._started = False
        self._thread_seq = 0
        self.failed: BaseException | None = None     # set when the store failed
        self.counts = {"completed": 0, "failed": 0, "dead_letter": 0, "cancelled": 0,
                       "lost": 0, "timeout": 0}
        self._counts_lock = threading.Lock()

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> "Worker":
        """Start the threads and return (``run()`` = start + wait for a signal + stop)."""
        if self._started:
            raise RuntimeError("worker already started")
        self._started = True
        if self.metrics_port is not None:
            # imported here: a worker without metrics never needs prometheus_client
            from .tools.dashboard.metrics import serve_metrics
            self._metrics_server, _ = serve_metrics(self.queue, self.metrics_port)
            self.metrics_address = self._metrics_server.server_address[:2]
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

    def _on_signal(self, signum, frame) -> None:     # flag only: no locks, no I/O
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
                log.warning("shutdown timeout (%.0f s) reached: stopping now", self.shutdown_timeout)
                self._forced.set()
                break
            time.sleep(0.05)
        clean = not self._forced.is_set()
        if not clean:
            self._abandon_running()
        self._monitor_stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout=2)
        self._stop_loop()
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
        release = getattr(self.queue, "release", None)
        with self._active_lock:
            running = list(self._active.values())
        for ctx, _thread in running:
            with ctx._lock:
                if ctx._final:
                    continue
                ctx._final = True
            ctx._request_stop("shutdown")
            self._kill_child(ctx)
            if release is not None:
                try:
                    release(ctx.job_id, ctx.job.token)
                    log.info("job %s returned to pending", ctx.job_id)
                    continue
                except AuroraLogError as exc:
                    log.warning("job %s not released: %s", ctx.job_id, exc)
            log.info("job %s left running; it returns to pending when the store is next "
                     "opened", ctx.job_id)

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
            t = threading.Thread(target=self._thread_main, name=f"aurora-log-worker-{self._thread_seq}",
                                 daemon=True)
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
            if self._forced.is_set():
                break                       # claimed while stopping hard: left for recovery
            try:
                self._run_job(job)
            except Exception:               # never lose the thread to a bug in bookkeeping
                log.exception("internal error running job %s", getattr(job, "id", "?"))
        self._retiring.discard(me)

    # ---------------------------------------------------------------- running a job

    def _run_job(self, job) -> None:
        ctx = Context(job, sink=lambda f, m, _job=job: self.queue.progress(_job.id, _job.token, f, m))
        timeout = _seconds(getattr(job, "timeout_seconds", None))
        lease = _seconds(getattr(job, "lease_duration", None)) or DEFAULT_LEASE
        now = time.monotonic()
        ctx._deadline = now + timeout if timeout else None
        ctx._next_hb = now + lease / 3.0
        handler = self.registry.get(job.job_type)
        with self._active_lock:
            self._active[job.id] = (ctx, threading.current_thread())
        try:
            log.debug("job %s (%s) attempt %d started", job.id, job.job_type, ctx.attempt)
            if handler is None:
                outcome = _Outcome("fail", f"no handler registered for {job.job_type!r}")
            elif self.isolation == "process":
                outcome = self._run_process(ctx, handler)
            elif handler.is_async:
                outcome = self._run_async(ctx, handler)
            else:
                outcome = self._run_inline(ctx, handler)
            self._finish(ctx, outcome)
        finally:
            with self._active_lock:
                self._active.pop(job.id, None)

    def _run_inline(self, ctx: Context, handler: _tasks.Handler) -> _Outcome:
        token = _current.set(ctx)
        try:
            args, kwargs = handler.call_args(ctx.job, ctx)
            value = handler.fn(*args, **kwargs)
            if inspect.isawaitable(value):          # a sync callable that returned a coroutine
                value = self._await_on_loop(ctx, value)
            return _Outcome("complete", value)
        except JobCancelled as exc:
            return _Outcome("fail", exc.reason, cancelled=exc.reason == "cancelled")
        except _HandlerExit as exc:
            return _Outcome("fail", exc.text)
        except BaseException as exc:        # SystemExit too: a handler cannot end its thread
            log.debug("job %s raised", ctx.job_id, exc_info=True)
            return _Outcome("fail", format_error(exc))
        finally:
            _current.reset(token)

    # -- asyncio

    def _get_loop(self):
        import asyncio                      # only workers with async handlers pay for it
        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def main():
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._loop_thread = threading.Thread(target=main, name="aurora-log-loop", daemon=True)
                self._loop_thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def _stop_loop(self) -> None:
        with self._loop_lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
            if self._loop_thread is not None:
                self._loop_thread.join(timeout=2)

    def _run_async(self, ctx: Context, handler: _tasks.Handler) -> _Outcome:
        try:
            args, kwargs = handler.call_args(ctx.job, ctx)
        except Exception as exc:
            return _Outcome("fail", format_error(exc))
        try:
            return _Outcome("complete", self._await_on_loop(ctx, None, handler.fn, args, kwargs))
        except JobCancelled as exc:
            return _Outcome("fail", exc.reason, cancelled=exc.reason == "cancelled")
        except _HandlerExit as exc:
            return _Outcome("fail", exc.text)
        except Exception as exc:
            return _Outcome("fail", format_error(exc))

    def _await_on_loop(self, ctx: Context, awaitable, fn=None, args=(), kwargs=None):
        import asyncio
        loop = self._get_loop()

        async def runner():
            _current.set(ctx)            # this task's own context copy
            ctx._async_task = asyncio.current_task()
            ctx._loop = loop
            if ctx.cancelled:
                raise _cancel_exc(ctx.reason or "cancelled")
            try:
                return await (awaitable if fn is None else fn(*args, **(kwargs or {})))
            except asyncio.CancelledError:
                raise _cancel_exc(ctx.reason or "cancelled") from None
            except (SystemExit, KeyboardInterrupt) as exc:   # would stop the shared loop
                raise _HandlerExit(format_error(exc)) from None

        fut = asyncio.run_coroutine_threadsafe(runner(), loop)
        while True:
            try:
                return fut.result(timeout=0.25)
            except TimeoutError:
                if ctx._final:             # timed out and settled by the monitor: give up
                    fut.cancel()
                    raise _cancel_exc(ctx.reason or "timeout") from None

    # -- process isolation

    def _import_spec(self, handler: _tasks.Handler) -> dict:
        if self.import_path:
            return {"module": self.import_path}
        module = getattr(handler.fn, "__module__", None)
        if module and module != "__main__":
            return {"module": module}
        main = sys.modules.get("__main__")
        path = getattr(main, "__file__", None)
        if path:
            return {"path": os.path.abspath(path)}
        raise RuntimeError(f"handler for {handler.job_type!r} is not importable by a child "
                           "process (define it in a module, or pass import_path=)")

    def _run_process(self, ctx: Context, handler: _tasks.Handler) -> _Outcome:
        try:
            message = {"import": self._import_spec(handler), "sys_path": sys.path,
                       "job_type": ctx.job.job_type, "job": job_to_dict(ctx.job)}
            request = json.dumps(message, default=_json_default) + "\n"
        except Exception as exc:
            return _Outcome("fail", format_error(exc))
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys; from aurora_log.worker import _child_main; "
                                   "sys.exit(_child_main())"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
            close_fds=True,             # the store's lock fd stays with us
            start_new_session=True)     # a terminal's Ctrl-C is the worker's to handle
        ctx._child = child
        try:
            child.stdin.write(request)
            child.stdin.flush()
        except OSError:
            pass
        final = None
        for line in child.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "progress" in msg:
                try:
                    ctx.progress(msg["progress"], message=msg.get("message"))
                except (TypeError, ValueError):
                    pass
            elif "result" in msg or "error" in msg:
                final = msg
        rc = child.wait()
        for stream in (child.stdin, child.stdout):
            try:
                stream.close()
            except OSError:
                pass
        if final is not None and "result" in final:
            return _Outcome("complete", final["result"])
        if final is not None:
            reason = final.get("cancelled")
            if reason:
                return _Outcome("fail", reason, cancelled=reason == "cancelled")
            return _Outcome("fail", str(final["error"])[:MAX_ERROR_CHARS])
        if ctx.reason:
            return _Outcome("fail", ctx.reason, cancelled=ctx.reason == "cancelled")
        return _Outcome("fail", f"handler process exited with code {rc} without a result")

    def _kill_child(self, ctx: Context) -> None:
        child = ctx._child
        if child is not None and child.poll() is None:
            try:
                child.kill()
            except OSError:
                pass

    def _tell_child(self, ctx: Context, text: str) -> None:
        child = ctx._child
        if child is not None and child.poll() is None:
            try:
                child.stdin.write(text + "\n")
                child.stdin.flush()
            except (OSError, ValueError):
                pass

    # ---------------------------------------------------------------- outcomes

    def _finish(self, ctx: Context, outcome: _Outcome) -> None:
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
                outcome = _Outcome("fail", f"result is not JSON-encodable: {exc}")
            else:
                if len(text.encode()) > self.max_result_bytes:
                    outcome = _Outcome("fail", f"result too large ({len(text.encode())} bytes "
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
            log.warning("job %s (%s) failed for good (dead letter): %s", job.id, job.job_type, first)
        else:
            log.warning("job %s (%s) attempt %d failed: %s", job.id, job.job_type, ctx.attempt, first)
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
                        self._kill_child(ctx)
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
            self._kill_child(ctx)
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
            self._tell_child(ctx, "cancel")
            grace = time.monotonic() + self.cancel_grace
            ctx._kill_at = grace if ctx._deadline is None else min(grace, ctx._deadline)

    def _on_timeout(self, ctx: Context, thread: threading.Thread) -> None:
        ctx._request_stop("timeout")
        self._count("timeout")
        if ctx._child is not None:
            self._kill_child(ctx)        # the job's thread sees the child die and settles it
            return
        # A thread cannot be killed: settle the job now, and replace the thread if the
        # handler does not come back by itself shortly.
        log.warning("job %s timed out; its handler was asked to stop", ctx.job_id)
        self._finish(ctx, _Outcome("fail", "timeout"))
        if not self._stopping.is_set():
            self._retiring.add(thread.ident)
            self._spawn_thread()


def _status_str(status) -> str:
    return str(getattr(status, "value", status)).lower()


def _as_list(value) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
    out = [v for v in value if v]
    return out or None


def _json_default(obj):
    if isinstance(obj, _dt.datetime):
        return obj.isoformat()
    if hasattr(obj, "value"):            # enums
        return obj.value
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    raise TypeError(f"{type(obj).__name__} is not JSON-encodable")


def job_to_dict(job) -> dict:
    to_dict = getattr(job, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    if dataclasses.is_dataclass(job):
        return {f.name: getattr(job, f.name) for f in dataclasses.fields(job)}
    return dict(vars(job))


def job_from_dict(data: dict):
    """Rebuild a Job from ``Job.to_dict()`` output (the process-isolation child's copy)."""
    from .job import Job
    fields = dict(data)
    for name in ("created_at", "scheduled_at", "started_at", "completed_at",
                 "last_heartbeat", "lease_deadline"):
        if isinstance(fields.get(name), str):
            fields[name] = _dt.datetime.fromisoformat(fields[name])
    job_type = fields.pop("job_type")
    payload = fields.pop("payload", None)
    try:
        return Job(job_type, payload, **fields)
    except (TypeError, ValueError):
        import types
        return types.SimpleNamespace(job_type=job_type, payload=payload, **fields)


# -------------------------------------------------------------------- the child process

class _HandlerOnlyQueue:
    """What ``aurora_log.open()`` returns inside a process-isolation child: handlers can be
    registered on it (so the user's module imports normally), nothing else. The real queue
    stays open, and locked, in the worker process."""

    def __init__(self, *args, **kwargs):
        pass

    def task(self, name=None, **options):
        return _tasks.task(self, name, **options)

    def register_handler(self, job_type, fn, **options):
        return _tasks.register_handler(self, job_type, fn, **options)

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __getattr__(self, name):
        raise RuntimeError(f"Queue.{name}() is not available in a handler child process: "
                           "the queue is open in the worker process")


_child_globals: list = []


def _child_main() -> int:
    """The handler child process: read one request line, run the handler,
    write JSON lines (progress..., then result or error) to the original stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the worker decides when we stop
    try:                                             # Linux: die with the worker thread
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except Exception:
        pass
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)                                    # user prints go to stderr
    out_lock = threading.Lock()

    def send(obj) -> None:
        with out_lock:
            proto.write(json.dumps(obj, default=_json_default) + "\n")
            proto.flush()

    request = json.loads(sys.stdin.readline())
    sys.path[:] = request.get("sys_path") or sys.path
    import aurora_log
    aurora_log.open = _HandlerOnlyQueue
    try:
        from . import queue as _queue_mod
        if hasattr(_queue_mod, "open"):
            _queue_mod.open = _HandlerOnlyQueue
    except Exception:
        pass
    ctx = None
    try:
        spec = request["import"]
        if "module" in spec:
            import importlib
            importlib.import_module(spec["module"])
        else:
            import runpy
            # kept referenced: the registries are keyed weakly by the queues it created
            _child_globals.append(runpy.run_path(spec["path"], run_name="__aurora_log_child__"))
        handler = _tasks.find_handler(request["job_type"])
        if handler is None:
            send({"error": f"no handler registered for {request['job_type']!r}"})
            return 0
        job = job_from_dict(request["job"])
        ctx = Context(job, sink=lambda f, m: send({"progress": f, "message": m}))

        def listen():
            for line in sys.stdin:
                if line.strip() == "cancel":
                    ctx._request_stop("cancelled")

        threading.Thread(target=listen, daemon=True).start()
        _current.set(ctx)
        args, kwargs = handler.call_args(job, ctx)
        value = handler.fn(*args, **kwargs)
        if inspect.isawaitable(value):
            import asyncio

            async def _await(v):
                return await v
            value = asyncio.run(_await(value))
        ctx._flush_progress()
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            send({"error": f"result is not JSON-encodable: {exc}"})
            return 0
        send({"result": value})
    except JobCancelled as exc:
        send({"error": exc.reason, "cancelled": exc.reason})
    except BaseException as exc:
        send({"error": format_error(exc)})
    return 0

