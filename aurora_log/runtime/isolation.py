"""Process isolation: a handler run in a fresh child interpreter (``Worker(isolation="process")``).

The worker keeps the store open, and locked, in its own process; the child only runs the
handler. Protocol, one child per job attempt:

  parent -> child stdin    one JSON line, the request: {"import": {"module": "pkg.mod"} or
                           {"path": "/abs/script.py"}, "sys_path": [...], "job_type": "...",
                           "job": Job.to_dict()}; later, the line "cancel" when the job
                           should stop (the child's Context sees it as a cancel request)
  child  -> parent stdout  JSON lines: {"progress": f, "message": m} any number of times, then
                           one {"result": value} or {"error": text} (with "cancelled": reason
                           when the handler stopped because it was told to)

The child's own prints go to its stderr, so stdout carries only the protocol. A child that
dies without a final line fails the job with its exit code; at the job's timeout (or
``cancel_grace`` after a cancel it ignores) the worker kills it.

Importing the user's module in the child runs its top level, which usually opens the
queue (``q = aurora_log.open(...)``) and registers handlers on it. The real store is the
worker's, so the child sets ``in_handler_child()`` before the import and
``aurora_log.open`` (aurora_log/__init__.py) answers a ``HandlerOnlyQueue`` while it is
set: handlers can be registered on it, nothing else. That flag is the whole mechanism;
nothing in the package is replaced at run time.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import inspect
import json
import os
import signal
import subprocess
import sys
import threading
from typing import Any, Literal
from collections.abc import Callable

from ..errors import JobCancelled
from . import tasks as _tasks
from .context import Context, set_current
from .outcome import MAX_ERROR_CHARS, Outcome, format_error

__all__ = ["in_handler_child", "HandlerOnlyQueue", "run_in_child", "cancel_child",
           "kill_child", "child_main", "job_to_dict", "job_from_dict"]

# Set once, by child_main(), before the user's module is imported; read by aurora_log.open.
_in_handler_child = False

# The command a child runs: this module's child_main().
CHILD_COMMAND = ("import sys; from aurora_log.runtime.isolation import child_main; "
                 "sys.exit(child_main())")


def in_handler_child() -> bool:
    """True inside a process-isolation child: ``aurora_log.open`` then returns a
    HandlerOnlyQueue instead of opening the store (the worker process holds it)."""
    return _in_handler_child


class HandlerOnlyQueue:
    """What ``aurora_log.open()`` returns inside a process-isolation child: handlers can be
    registered on it (so the user's module imports normally), nothing else. The real queue
    stays open, and locked, in the worker process."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def task(self, name: str | None = None, **options: Any) -> Any:
        return _tasks.task(self, name, **options)

    def register_handler(self, job_type: str, fn: Callable[..., Any], *,
                         context: bool = False) -> Callable[..., Any]:
        return _tasks.register_handler(self, job_type, fn, context=context)

    def close(self) -> None:
        pass

    def __enter__(self) -> HandlerOnlyQueue:
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        return False

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"Queue.{name}() is not available in a handler child process: "
                           "the queue is open in the worker process")


# -------------------------------------------------------------------- the worker's side

def import_spec(handler: _tasks.Handler, import_path: str | None) -> dict[str, str]:
    """How the child finds the handler: a module to import or a script to run."""
    if import_path:
        return {"module": import_path}
    module = getattr(handler.fn, "__module__", None)
    if module and module != "__main__":
        return {"module": module}
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path:
        return {"path": os.path.abspath(path)}
    raise RuntimeError(f"handler for {handler.job_type!r} is not importable by a child "
                       "process (define it in a module, or pass import_path=)")


def run_in_child(ctx: Context, handler: _tasks.Handler, import_path: str | None) -> Outcome:
    """Run ctx's job in a new child process and wait for it; its Outcome. The child is
    kept on ``ctx._child`` so that the worker's monitor can cancel or kill it."""
    try:
        message = {"import": import_spec(handler, import_path), "sys_path": sys.path,
                   "job_type": ctx.job.job_type, "job": job_to_dict(ctx.job)}
        request = json.dumps(message, default=_json_default) + "\n"
    except Exception as exc:
        return Outcome("fail", format_error(exc))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_COMMAND],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        close_fds=True,             # the store's lock fd stays with us
        start_new_session=True)     # a terminal's Ctrl-C is the worker's to handle
    ctx._child = child
    stdin, stdout = child.stdin, child.stdout
    assert stdin is not None and stdout is not None      # both are PIPEs
    try:
        stdin.write(request)
        stdin.flush()
    except OSError:
        pass
    final = None
    for line in stdout:
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
    for stream in (stdin, stdout):
        try:
            stream.close()
        except OSError:
            pass
    if final is not None and "result" in final:
        return Outcome("complete", final["result"])
    if final is not None:
        reason = final.get("cancelled")
        if reason:
            return Outcome("fail", reason, cancelled=reason == "cancelled")
        return Outcome("fail", str(final["error"])[:MAX_ERROR_CHARS])
    if ctx.reason:
        return Outcome("fail", ctx.reason, cancelled=ctx.reason == "cancelled")
    return Outcome("fail", f"handler process exited with code {rc} without a result")


def kill_child(ctx: Context) -> None:
    """Kill ctx's child process, if it is still running (the job's thread then settles)."""
    child = ctx._child
    if child is not None and child.poll() is None:
        try:
            child.kill()
        except OSError:
            pass


def cancel_child(ctx: Context) -> None:
    """Tell ctx's child that its job should stop (its Context turns cancelled)."""
    child = ctx._child
    if child is not None and child.poll() is None and child.stdin is not None:
        try:
            child.stdin.write("cancel\n")
            child.stdin.flush()
        except (OSError, ValueError):
            pass


def _json_default(obj: object) -> Any:
    if isinstance(obj, _dt.datetime):
        return obj.isoformat()
    if hasattr(obj, "value"):            # enums
        return obj.value
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    raise TypeError(f"{type(obj).__name__} is not JSON-encodable")


def job_to_dict(job: Any) -> dict[str, Any]:
    """The job as a dict for the request (``Job.to_dict()`` when it has one)."""
    to_dict = getattr(job, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    if dataclasses.is_dataclass(job) and not isinstance(job, type):
        return {f.name: getattr(job, f.name) for f in dataclasses.fields(job)}
    return dict(vars(job))


def job_from_dict(data: dict[str, Any]) -> Any:
    """Rebuild a Job from ``Job.to_dict()`` output (the process-isolation child's copy)."""
    from ..job import Job
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


# -------------------------------------------------------------------- the child's side

# kept referenced: the registries are keyed weakly by the queues a script created
_child_globals: list[dict[str, Any]] = []


def child_main() -> int:
    """The handler child process: read one request line, run the handler,
    write JSON lines (progress..., then result or error) to the original stdout."""
    global _in_handler_child
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the worker decides when we stop
    try:                                             # Linux: die with the worker thread
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except Exception:
        pass
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)                                    # user prints go to stderr
    out_lock = threading.Lock()

    def send(obj: dict[str, Any]) -> None:
        with out_lock:
            proto.write(json.dumps(obj, default=_json_default) + "\n")
            proto.flush()

    request = json.loads(sys.stdin.readline())
    sys.path[:] = request.get("sys_path") or sys.path
    _in_handler_child = True            # before the user's module opens "its" queue
    try:
        spec = request["import"]
        if "module" in spec:
            import importlib
            importlib.import_module(spec["module"])
        else:
            import runpy
            _child_globals.append(runpy.run_path(spec["path"], run_name="__aurora_log_child__"))
        handler = _tasks.find_handler(request["job_type"])
        if handler is None:
            send({"error": f"no handler registered for {request['job_type']!r}"})
            return 0
        job = job_from_dict(request["job"])
        ctx = Context(job, sink=lambda f, m: send({"progress": f, "message": m}))

        def listen() -> None:
            for line in sys.stdin:
                if line.strip() == "cancel":
                    ctx._request_stop("cancelled")

        threading.Thread(target=listen, daemon=True).start()
        set_current(ctx)
        args, kwargs = handler.call_args(job, ctx)
        value = handler.fn(*args, **kwargs)
        if inspect.isawaitable(value):
            import asyncio

            async def _await(v: Any) -> Any:
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
