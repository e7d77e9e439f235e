"""Handlers by job_type: the ``@q.task`` decorator, ``q.register_handler``, task handles.

Two styles, one registry per queue:

    @q.task(priority=JobPriority.HIGH, max_retries=5)
    def resize(path, width=800):            # a plain function: resize("a.png") just calls it
        ...
    h = resize.enqueue("a.png", width=640)  # -> TaskHandle
    # (its payload: {"args": ["a.png"], "kwargs": {"width": 640}})
    h.result(timeout=30)

    def send_email(job):                    # seed style: the handler receives the Job
        ...
    q.register_handler("send_email", send_email)

A handler that wants the running job's context (cancellation, progress) asks for it with
``context=True`` (it then gets ``ctx`` as its first argument) or calls
``aurora_log.current_context()``.

The registry lives beside the queue, not inside it: the engine (queue.py) never calls user
code, so it does not need to know handlers exist. This module only talks to the queue through
its public API (enqueue / get), so a handle works with any queue that keeps that contract.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import inspect
import json
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, overload

from ..errors import JobNotFoundError, TaskCancelled, TaskFailed
from ..job import Job, JobPriority, JobStatus

__all__ = [
    "Handler", "TaskRegistry", "Task", "TaskHandle", "TaskFailed", "TaskCancelled",
    "task", "register_handler", "registry", "call_payload", "periodic",
]


@dataclasses.dataclass(frozen=True)
class Handler:
    """One registered job_type.

    style "args": payload is {"args": [...], "kwargs": {...}} and fn(*args, **kwargs) is called.
    style "job":  fn(job) is called (seed style).
    context: fn receives the running job's Context as its first argument.
    """
    job_type: str
    fn: Callable[..., Any]
    style: str = "job"
    context: bool = False
    is_async: bool = False
    options: dict = dataclasses.field(default_factory=dict)   # enqueue defaults

    def call_args(self, job: Any, ctx: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The (args, kwargs) to call fn with for this job."""
        lead = (ctx,) if self.context else ()
        if self.style == "job":
            return lead + (job,), {}
        payload = job.payload or {}
        args = payload.get("args", [])
        kwargs = payload.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise TypeError(f"payload of job {job.id} is not an {{args, kwargs}} task payload")
        return lead + tuple(args), dict(kwargs)


class TaskRegistry:
    """job_type -> Handler. Thread-safe; registering the same job_type again replaces it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handlers: dict[str, Handler] = {}

    def add(self, handler: Handler) -> Handler:
        _check_name(handler.job_type)
        with self._lock:
            self._handlers[handler.job_type] = handler
        return handler

    def get(self, job_type: str) -> Handler | None:
        return self._handlers.get(job_type)

    def __contains__(self, job_type: str) -> bool:
        return job_type in self._handlers

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._handlers))

    def __len__(self) -> int:
        return len(self._handlers)

    def job_types(self) -> list[str]:
        return sorted(self._handlers)


# One registry per queue object. Weak keys: a closed, dropped queue takes its registry along.
_registries: weakref.WeakKeyDictionary[Any, TaskRegistry] = weakref.WeakKeyDictionary()
_registries_by_id: dict[int, tuple[Any, TaskRegistry]] = {}   # for queues without weakref
_reg_lock = threading.Lock()


def registry(queue: Any) -> TaskRegistry:
    """The handler registry of ``queue`` (created on first use)."""
    with _reg_lock:
        try:
            reg = _registries.get(queue)
            if reg is None:
                reg = _registries[queue] = TaskRegistry()
            return reg
        except TypeError:       # not weak-referenceable (e.g. __slots__ without __weakref__)
            entry = _registries_by_id.get(id(queue))
            if entry is None or entry[0] is not queue:
                entry = _registries_by_id[id(queue)] = (queue, TaskRegistry())
            return entry[1]


def all_registries() -> list[tuple[Any, TaskRegistry]]:
    """Every (queue, registry) pair of this process (the process-isolation child uses it)."""
    with _reg_lock:
        return list(_registries.items()) + list(_registries_by_id.values())


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"job_type must be a non-empty string, not {name!r}")


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None))   # noqa: B004 - an instance's async __call__


def register_handler(q: Any, job_type: str, fn: Callable[..., Any], *,
                     context: bool = False) -> Callable[..., Any]:
    """Seed style: ``fn(job)`` (or ``fn(ctx, job)`` with context=True) runs every job of
    ``job_type``; the Job (built by the caller) carries its own priority, retries and
    timeout. ``fn`` may be ``async def``. Returns fn unchanged."""
    if not callable(fn):
        raise TypeError(f"handler for {job_type!r} is not callable")
    registry(q).add(Handler(job_type, fn, "job", bool(context), _is_async(fn), {}))
    return fn


_OPTIONS = {"priority", "max_retries", "timeout", "queue", "lease"}


def _check_options(options: dict) -> None:
    unknown = set(options) - _OPTIONS
    if unknown:
        raise TypeError(f"unknown task option(s): {', '.join(sorted(unknown))}")


@overload
def task(q: Any, name: Callable[..., Any], *, context: bool = False, **options: Any) -> Task: ...
@overload
def task(q: Any, name: str | None = None, *, context: bool = False,
         **options: Any) -> Callable[[Callable[..., Any]], Task]: ...


def task(q: Any, name: str | Callable[..., Any] | None = None, *, context: bool = False,
         **options: Any) -> Task | Callable[[Callable[..., Any]], Task]:
    """``@task(q)`` / ``@task(q, "name", priority=..., max_retries=..., timeout=..., queue=...,
    lease=...)``. Also usable bare: ``task(q)(fn)``. The decorated function stays callable as
    before and gains ``.enqueue(*args, **kwargs)``, ``.enqueue_with(...)``, ``.job_type``."""
    if callable(name):              # @q.task without parentheses
        return task(q)(name)
    _check_options(options)

    def decorate(fn: Callable[..., Any]) -> Task:
        job_type = name or _default_name(fn)
        handler = Handler(job_type, fn, "args", bool(context), _is_async(fn), dict(options))
        registry(q).add(handler)
        return Task(q, handler)

    return decorate


def periodic(q: Any, cron: str, *, tz: str = "UTC", missed: str = "skip",
             grace: float = 60.0, name: str | None = None,
             **options: Any) -> Callable[[Callable[..., Any]], Task]:
    """``@q.periodic("*/5 * * * *", tz="Europe/Paris")`` on a function (it becomes a task,
    as with ``@q.task``; task options such as ``priority=`` or ``queue=`` are accepted) or
    on a Task: the task runs with no arguments at every due time of ``cron``, fired once
    per due time by the queue (see ``Queue.schedule_periodic``; ``name`` defaults to the
    task's job_type). The schedule lives in this process: register it at startup, as
    handlers are; what was fired is in the log."""
    _check_options(options)
    schedule = getattr(q, "schedule_periodic", None)
    if schedule is None:
        raise NotImplementedError(f"{type(q).__name__} has no periodic schedules yet")

    def decorate(fn: Callable[..., Any]) -> Task:
        t = fn if isinstance(fn, Task) else task(q, **options)(fn)
        opts = {**t.handler.options, **options} if isinstance(fn, Task) else t.handler.options
        job = build_job(t.job_type, call_payload([], {}), **opts)
        schedule(name or t.job_type, cron, job, tz=tz, missed=missed, grace=grace)
        return t

    return decorate


def _default_name(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None) or ""
    qual = getattr(fn, "__qualname__", None) or fn.__name__
    if module in ("", "__main__", "__aurora_log_child__"):   # a script (as the process-
        return qual                                          # isolation child runs it)
    return f"{module}.{qual}"


class Task:
    """A decorated function: call it to run it here; ``.enqueue(...)`` to run it on a worker."""

    def __init__(self, queue: Any, handler: Handler):
        self.queue = queue
        self.handler = handler
        self.fn = handler.fn
        self.job_type = handler.job_type
        functools.update_wrapper(self, handler.fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.job_type}>"

    def enqueue(self, *args: Any, **kwargs: Any) -> TaskHandle:
        """Enqueue one run with the task's default options. Durable when it returns (sync mode)."""
        return self._enqueue(args, kwargs, {})

    def enqueue_with(self, *, priority: JobPriority | int | str | None = None,
                     delay: float | None = None, at: _dt.datetime | float | None = None,
                     unique_key: str | None = None, max_retries: int | None = None,
                     timeout: float | None = None, queue: str | None = None,
                     lease: float | None = None) -> Callable[..., TaskHandle]:
        """``resize.enqueue_with(priority=JobPriority.HIGH, delay=60)("a.png")``: one run
        with options overridden. ``delay`` is seconds from now; ``at`` a datetime (or a Unix
        timestamp); ``unique_key``: at most one live job per key (if the queue supports it)."""
        over = {"priority": priority, "delay": delay, "at": at, "unique_key": unique_key,
                "max_retries": max_retries, "timeout": timeout, "queue": queue, "lease": lease}
        over = {k: v for k, v in over.items() if v is not None}

        def enqueue(*args: Any, **kwargs: Any) -> TaskHandle:
            return self._enqueue(args, kwargs, over)

        return enqueue

    def _enqueue(self, args: tuple[Any, ...], kwargs: dict[str, Any],
                 over: dict[str, Any]) -> TaskHandle:
        payload = call_payload(list(args), dict(kwargs))
        opts = {**self.handler.options, **over}
        job = build_job(self.job_type, payload, **opts)
        job_id = self.queue.enqueue(job)
        return TaskHandle(self.queue, job_id)

    async def enqueue_async(self, *args: Any, **kwargs: Any) -> TaskHandle:
        """``enqueue`` for asyncio code: does not block the event loop while the record
        becomes durable. ``await handle`` (or ``await handle.result_async(timeout)``) then
        waits for the result."""
        payload = call_payload(list(args), dict(kwargs))
        job = build_job(self.job_type, payload, **self.handler.options)
        enqueue_async = getattr(self.queue, "enqueue_async", None)
        if enqueue_async is not None:
            job_id = await enqueue_async(job)
        else:                       # a queue without it: its blocking enqueue, off the loop
            import asyncio
            job_id = await asyncio.get_running_loop().run_in_executor(
                None, self.queue.enqueue, job)
        return TaskHandle(self.queue, job_id)


def call_payload(args: list, kwargs: dict) -> dict:
    """The payload of a task call, ``{"args": [...], "kwargs": {...}}``, as the worker will
    see it after a JSON round trip (tuples become lists). TypeError (before anything is
    written) if an argument is not JSON-encodable. (Not to be confused with
    ``job.encode_payload``, which turns any payload into the bytes a record stores.)"""
    payload = {"args": args, "kwargs": kwargs}
    try:
        text = json.dumps(payload, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"task arguments must be JSON-encodable: {exc}") from None
    return json.loads(text)


def build_job(job_type: str, payload: dict[str, Any], *,
              priority: JobPriority | int | str | None = None, max_retries: int | None = None,
              timeout: float | None = None, queue: str | None = None,
              lease: float | None = None, delay: float | None = None,
              at: _dt.datetime | float | None = None, unique_key: str | None = None) -> Job:
    """A Job for the engine from task options (names as in @task) — the one place that knows
    job.py's constructor."""
    fields: dict[str, Any] = {"job_type": job_type, "payload": payload}
    if priority is not None:
        fields["priority"] = _priority(priority)
    if max_retries is not None:
        fields["max_retries"] = int(max_retries)
    if timeout is not None:
        fields["timeout_seconds"] = timeout
    if lease is not None:
        fields["lease_duration"] = lease
    if queue is not None:
        fields["queue"] = queue
    if unique_key is not None:
        fields["unique_key"] = unique_key
    when = None
    if at is not None:
        when = at if isinstance(at, _dt.datetime) else _dt.datetime.fromtimestamp(
            float(at), _dt.UTC)
        if when.tzinfo is None:
            raise ValueError("at= must be timezone-aware (or a Unix timestamp)")
    elif delay is not None:
        when = _dt.datetime.now(_dt.UTC) + _dt.timedelta(seconds=float(delay))
    if when is not None:
        fields["scheduled_at"] = when
    return Job(**fields)


def _priority(value: JobPriority | int | str) -> JobPriority:
    if isinstance(value, JobPriority):
        return value
    if isinstance(value, str):
        try:
            return JobPriority[value.upper()]
        except KeyError:
            raise ValueError(f"unknown priority {value!r}") from None
    return JobPriority(value)


def _status_name(job: Any) -> str:
    status = job.status
    return str(getattr(status, "value", status)).lower()


class TaskHandle:
    """A reference to one enqueued job: ``id``, ``status()``, ``result(timeout=)``,
    ``await result_async(timeout=)``. Results are read from the queue, so the handle works
    wherever the queue is open (typically the worker's own process, or after the fact)."""

    __slots__ = ("queue", "id")

    def __init__(self, queue: Any, job_id: str):
        self.queue = queue
        self.id = job_id

    def __repr__(self) -> str:
        return f"<TaskHandle {self.id}>"

    def job(self) -> Job | None:
        return self.queue.get(self.id)

    def status(self) -> JobStatus | None:
        """The job's current JobStatus (None if the queue no longer knows it)."""
        job = self.queue.get(self.id)
        return None if job is None else job.status

    def _outcome(self) -> tuple[bool, Any]:
        job = self.queue.get(self.id)
        if job is None:
            raise JobNotFoundError(f"job {self.id} not found")
        state = _status_name(job)
        if state == "completed":
            return True, getattr(job, "result", None)
        if state == "dead_letter":
            error = getattr(job, "error", None) or getattr(job, "last_error", None)
            raise TaskFailed(self.id, error)
        if state == "cancelled":
            raise TaskCancelled(self.id)
        return False, None

    def result(self, timeout: float | None = None, *, poll: float = 0.05) -> Any:
        """Block until the job finished; its return value. TaskFailed (dead letter),
        TaskCancelled, TimeoutError after ``timeout`` seconds. A job waiting for a retry is
        not finished: the wait goes on."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = min(poll, 0.01)
        while True:
            done, value = self._outcome()
            if done:
                return value
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.id} did not finish within {timeout} s")
            wait = delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
            time.sleep(wait)
            delay = min(poll * 4, delay * 2)

    def __await__(self) -> Any:
        """``await handle``: the job's result (``result_async()`` without a timeout)."""
        return self.result_async().__await__()

    async def result_async(self, timeout: float | None = None, *, poll: float = 0.05) -> Any:
        """``result()`` for asyncio code: polls without blocking the event loop."""
        import asyncio
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        delay = min(poll, 0.01)
        while True:
            done, value = self._outcome()
            if done:
                return value
            if deadline is not None and loop.time() >= deadline:
                raise TimeoutError(f"job {self.id} did not finish within {timeout} s")
            await asyncio.sleep(delay)
            delay = min(poll * 4, delay * 2)


def find_handler(job_type: str, queue: Any = None) -> Handler | None:
    """The handler for job_type: in queue's registry, or (queue=None) in any registry of this
    process."""
    if queue is not None:
        return registry(queue).get(job_type)
    for _q, reg in all_registries():
        h = reg.get(job_type)
        if h is not None:
            return h
    return None
