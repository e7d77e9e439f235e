"""The queue interface every backend implements: the local store (aurora_log.local.queue.Queue)
and PostgreSQL (aurora_log.postgres.PostgresQueue).

The contract is behavioural as well as nominal: tests/conformance/ runs the same tests
against every backend. Times are epoch milliseconds computed from the queue's ``clock``
(seconds since the epoch, ``time.time`` by default); the API shows them as UTC datetimes.

Errors: bad input raises TypeError/ValueError before anything is written; a token that no
longer holds a job's lease raises StaleLeaseError; an unknown id JobNotFoundError; an
operation that does not apply to the job's status InvalidStateError; use after close()
ClosedError.
"""

from __future__ import annotations

import abc
import builtins
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, NamedTuple, overload

from .job import Job, JobPriority, JobStatus, check_name, check_seconds, retry_delay_ms

__all__ = ["QueueInterface", "Transition", "bind_task_layer", "check_names", "token_bytes",
           "check_job_id", "check_limit_args", "MAX_ERROR_CHARS", "MAX_MESSAGE_CHARS"]

MAX_ERROR_CHARS = 64 * 1024     # a failure's error text is cut there
MAX_MESSAGE_CHARS = 4096        # a progress message longer than this is refused


class Transition(NamedTuple):
    """One entry of ``history(id)``."""
    lsn: int                   # its position in the backend's history (the local log's LSN)
    kind: str                  # "enqueue", "claim", "heartbeat", "fail", "reap", ...
    at: datetime
    status: JobStatus          # the job's status after this transition
    worker: str | None         # the worker of the attempt, if any
    attempt: int               # 1 = first run, 2 = first retry, ...
    error: str | None          # the error, reap reason or note


# The task layer (runtime/tasks.py: task(q, ...), register_handler(q, ...)) behind
# q.task / q.register_handler. It sits above the backends, so neither they nor this face
# import it: the composition root, aurora_log/__init__.py, hands it over at import time.
_task_layer: Any = None


def bind_task_layer(layer: Any) -> None:
    """Make ``q.task`` / ``q.register_handler`` of every backend forward to ``layer``'s
    ``task(q, name, **options)`` / ``register_handler(q, job_type, fn, context=)``."""
    global _task_layer
    _task_layer = layer


def _bound_task_layer() -> Any:
    if _task_layer is None:     # only while aurora_log/__init__.py itself is importing
        raise RuntimeError("no task layer bound: import aurora_log first")
    return _task_layer


def check_names(value: Any, what: str) -> frozenset[str] | None:
    """None, or a non-empty set of valid names (queues, job types) from a str or iterable."""
    if value is None:
        return None
    if isinstance(value, str):
        value = (value,)
    try:
        items = frozenset(value)
    except TypeError:
        raise TypeError(f"{what} must be a str or an iterable of str") from None
    for v in items:
        check_name(v, what)
    if not items:
        raise ValueError(f"{what} must not be empty (use None for all)")
    return items


def token_bytes(token: Any) -> bytes:
    """The 8 bytes of an attempt token given as job.token (16 hex digits)."""
    if not isinstance(token, str):
        raise TypeError(f"token must be the str from job.token, not {type(token).__name__}")
    try:
        b = bytes.fromhex(token)
    except ValueError:
        b = b""
    if len(b) != 8:
        raise ValueError(f"malformed attempt token {token!r}")
    return b


def check_job_id(job_id: Any) -> str:
    """A job id as given to the API: a str (unknown ids are the backend's JobNotFoundError)."""
    if not isinstance(job_id, str):
        raise TypeError(f"job id must be a str, not {type(job_id).__name__}")
    return job_id


def check_progress(fraction: Any, message: Any) -> None:
    """progress()'s arguments: a number within 0..1 and an optional str of at most
    MAX_MESSAGE_CHARS that encodes as UTF-8. TypeError/ValueError."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise TypeError(f"fraction must be a number, not {type(fraction).__name__}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction!r}")
    if message is not None:
        if not isinstance(message, str):
            raise TypeError(f"message must be a str, not {type(message).__name__}")
        if len(message) > MAX_MESSAGE_CHARS:
            raise ValueError(f"message is over {MAX_MESSAGE_CHARS} characters")
        message.encode("utf-8")


def error_text(error: Any) -> str:
    """fail()'s error as stored: a str, cut at MAX_ERROR_CHARS, unencodable characters
    replaced. TypeError for anything but a str."""
    if not isinstance(error, str):
        raise TypeError(f"error must be a str, not {type(error).__name__}")
    text: str = error
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS] + "... [truncated]"
    return text.encode("utf-8", "replace").decode("utf-8")


def check_limit_args(queue: Any, job_type: Any, concurrency: Any,
                     rate: Any) -> tuple[int, str, int, int, int]:
    """set_limit's arguments checked: (scope 1 queue / 2 job type, name, concurrency or 0,
    rate count or 0, rate period in ms or 0). TypeError/ValueError."""
    if (queue is None) == (job_type is None):
        raise ValueError("set_limit takes exactly one of queue= or job_type=")
    scope, name = (1, queue) if queue is not None else (2, job_type)
    check_name(name, "queue" if scope == 1 else "job_type")
    conc = 0
    if concurrency is not None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) \
                or not 1 <= concurrency <= 0xFFFFFFFF:
            raise ValueError(f"concurrency must be an int >= 1 (or None), got {concurrency!r}")
        conc = concurrency
    count = period = 0
    if rate is not None:
        if not isinstance(rate, tuple) or len(rate) != 2:
            raise TypeError("rate must be a (count, seconds) tuple")
        count, seconds = rate
        if isinstance(count, bool) or not isinstance(count, int) \
                or not 1 <= count <= 0xFFFFFFFF:
            raise ValueError(f"rate count must be an int >= 1, got {count!r}")
        check_seconds(seconds, "rate period")
        period = round(seconds * 1000)
        if period < 1:
            raise ValueError(f"rate period must be at least 1 ms, got {seconds!r}")
    return scope, name, conc, count, period


def check_queue_options(clock: Any, reaper_interval: Any, max_payload_bytes: Any,
                        retry_base: Any, retry_cap: Any, retry_jitter: Any) -> None:
    """The options both backends' constructors share: TypeError/ValueError before anything
    is opened."""
    if isinstance(max_payload_bytes, bool) or not isinstance(max_payload_bytes, int) \
            or max_payload_bytes <= 0:
        raise ValueError(f"max_payload_bytes must be a positive int, got {max_payload_bytes!r}")
    if reaper_interval is not None:
        check_seconds(reaper_interval, "reaper_interval")
    retry_delay_ms(0, base=retry_base, cap=retry_cap, jitter=retry_jitter)  # validates
    if not callable(clock):
        raise TypeError("clock must be a callable returning seconds since the epoch")


class QueueInterface(abc.ABC):
    """What a queue backend offers. ``task``, ``register_handler`` and the context manager
    are implemented here once, on top of the abstract methods."""

    # ------------------------------------------------------------------ producers

    @abc.abstractmethod
    def enqueue(self, job: Job, *, durable: bool = True) -> str:
        """Add a job; returns its id. With a unique_key held by a live job (pending,
        scheduled, running, waiting for a retry), returns that job's id and adds nothing.
        ValueError if a job with the same id exists."""

    @overload
    def enqueue_many(self, jobs: Iterable[Job], /, *, durable: bool = True) -> list[str]: ...

    @overload
    def enqueue_many(self, job_type: str, payloads: Iterable[Mapping[str, Any]], /, *,
                     durable: bool = True, priority: JobPriority | int | str = ...,
                     queue: str = ..., max_retries: int = ...,
                     timeout_seconds: float | None = ..., lease_duration: float = ...,
                     scheduled_at: datetime | None = ...,
                     unique_keys: Iterable[str | None] | None = ...) -> list[str]: ...

    @abc.abstractmethod
    def enqueue_many(self, jobs: Any, payloads: Any = None, /, *, durable: bool = True,
                     **options: Any) -> list[str]:
        """Add many jobs atomically (all or none). Two forms:

        ``enqueue_many(jobs)``: a list of Jobs, each with its own options. Returns their
        ids in order (an existing live job's id for a unique_key already taken, also within
        the batch). Jobs with parents (Job.after, chain, group) wait until every parent
        completed; a parent dead-lettered or cancelled settles them per
        ``on_parent_failure``; unknown parents (UnknownParentError) and cycles
        (DependencyCycleError) are refused before anything is written.

        ``enqueue_many(job_type, payloads, **options)``: the bulk form, one job of
        ``job_type`` per payload dict, all with the same options (``priority``, ``queue``,
        ``max_retries``, ``timeout_seconds``, ``lease_duration``, ``scheduled_at``: the Job
        fields of those names, same defaults and rules) and optionally ``unique_keys``, one
        str or None per payload. No Job object is built; ids are drawn for the whole batch
        at once (UUIDs in the version 7 layout, ascending through the batch). Same
        atomicity, FIFO order, unique-key rule and errors as the Job form.

        The first argument decides the form: a str is a job type and needs payloads;
        payloads or options with a list of Jobs are a TypeError."""

    # ------------------------------------------------------------------ workers

    @abc.abstractmethod
    def claim(self, worker_id: str, *, job_types: str | Iterable[str] | None = None,
              queues: str | Iterable[str] | None = None,
              wait: float | None = None) -> Job | None:
        """The best due job (priority desc, due time, FIFO) as RUNNING, with ``job.token``
        and ``job.lease_deadline``; or None. ``wait`` (seconds) blocks until a job is
        enqueued, a scheduled/retry time comes, or the wait ends (no polling); a claim
        blocked when the queue is closed returns None."""

    @abc.abstractmethod
    def heartbeat(self, job_id: str, token: str) -> bool:
        """Extend the lease (to now + lease_duration). Returns True if a cancel was
        requested. StaleLeaseError if the token no longer holds the job."""

    @abc.abstractmethod
    def progress(self, job_id: str, token: str, fraction: float,
                 message: str | None = None) -> None:
        """Report progress (0.0..1.0, optional message); history keeps the latest report
        of an attempt. Does not extend the lease."""

    @abc.abstractmethod
    def complete(self, job_id: str, token: str, result: Any = None, *,
                 durable: bool = True) -> None:
        """Mark the attempt's job COMPLETED with an optional JSON ``result``."""

    @abc.abstractmethod
    def fail(self, job_id: str, token: str, error: str, *, durable: bool = True) -> JobStatus:
        """Record a failed attempt. Returns FAILED (a retry is scheduled after the backoff
        of aurora_log.job.retry_delay_ms), DEAD_LETTER (retries spent) or CANCELLED (a
        cancel had been requested)."""

    # ------------------------------------------------------------------ operators

    @abc.abstractmethod
    def cancel(self, job_id: str) -> JobStatus:
        """Cancel a pending, scheduled or failed job -> CANCELLED. For a running job,
        request cancellation (its next heartbeat returns True; a fail or an expired lease
        then ends it CANCELLED) and return RUNNING. InvalidStateError for a finished job."""

    @abc.abstractmethod
    def retry_dead(self, job_id: str) -> None:
        """Re-drive a dead-lettered job: PENDING now, retry_count reset to 0."""

    @abc.abstractmethod
    def purge(self, status: JobStatus | str | None = None, older_than: float | None = None,
              *, before: datetime | None = None) -> int:
        """Drop finished jobs (or only ``status``) that finished more than ``older_than``
        seconds ago (or before ``before``). Returns how many."""

    @abc.abstractmethod
    def reap(self, now: datetime | float | None = None) -> int:
        """Expire leases (now > deadline) and timeouts (now > started + timeout): the job
        goes back to pending after the backoff, or to dead-letter when its retries are
        spent (CANCELLED if a cancel was requested). Returns how many."""

    @abc.abstractmethod
    def release(self, job_id: str, token: str) -> JobStatus:
        """Hand a claimed job back without spending an attempt: RUNNING -> PENDING, due now,
        recorded in the history as "release" (CANCELLED instead if a cancel had been
        requested). For a worker shutting down with jobs whose handlers had not started or
        were cut off by the shutdown. StaleLeaseError for a stale token."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Make everything acknowledged so far durable."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop background threads, wake blocked claims (they return None), release
        resources. Idempotent."""

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """True after close()."""

    # ------------------------------------------------------------------ queue control
    # Decided by the store itself, so they hold over every process (and machine) sharing it.

    @abc.abstractmethod
    def pause(self, queue: str) -> None:
        """Stop handing out jobs of ``queue`` (enqueues still work; running jobs go on)
        until resume(). Survives restarts; every process sharing the store obeys it."""

    @abc.abstractmethod
    def resume(self, queue: str) -> None:
        """Hand out jobs of ``queue`` again (wakes waiting claims)."""

    @abc.abstractmethod
    def set_limit(self, *, queue: str | None = None, job_type: str | None = None,
                  concurrency: int | None = None,
                  rate: tuple[int, float] | None = None) -> None:
        """Limit one queue or one job type (exactly one): at most ``concurrency`` jobs
        RUNNING at once over all workers and processes, and at most ``rate[0]`` claims per
        ``rate[1]`` seconds (a sliding window). A job held back stays pending and is not
        charged an attempt. Both None removes the limit; the whole limit is replaced.
        TypeError/ValueError (see check_limit_args) before anything is written."""

    @abc.abstractmethod
    def schedule_periodic(self, name: str, cron: str, job: Job, *, tz: str = "UTC",
                          missed: str = "skip", grace: float = 60.0) -> Any:
        """Enqueue a copy of ``job`` (a new id each time) at every due time of the cron
        expression ``cron`` in time zone ``tz``, once per due time however many processes
        run the schedule. ``missed``: "skip" (due times older than ``grace`` seconds are
        not run) or "once" (after downtime the latest missed one runs once). The schedule
        lives in the queue object (register it at startup); the reaper thread fires it,
        or run_periodic(). Returns the schedule (aurora_log.local.cron.Periodic)."""

    @abc.abstractmethod
    def unschedule_periodic(self, name: str) -> bool:
        """Forget the schedule ``name`` in this queue object; True if it existed."""

    @abc.abstractmethod
    def run_periodic(self, now: datetime | float | None = None) -> builtins.list[str]:
        """Fire every registered schedule that is due; returns the ids of the jobs
        enqueued."""

    # ------------------------------------------------------------------ reads

    @abc.abstractmethod
    def get(self, job_id: str) -> Job | None:
        """The job, or None if no job has that id."""

    @abc.abstractmethod
    def list(self, status: JobStatus | str | None = None, queue: str | None = None,
             job_type: str | None = None, limit: int = 100,
             after: str | None = None) -> builtins.list[Job]:
        """Jobs in enqueue order, filtered; ``after`` = the last id of the previous page."""

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """Counts per status (pending, running, completed, failed, dead_letter, cancelled,
        total), the same per queue under "queues", and "last_lsn" (the position of the
        newest transition)."""

    @abc.abstractmethod
    def history(self, job_id: str) -> builtins.list[Transition]:
        """The job's transitions (aurora_log.Transition), oldest first."""

    # ------------------------------------------------------------------ shared

    def task(self, name: str | None = None, **options: Any) -> Any:
        """Decorator registering a task handler; see :func:`aurora_log.runtime.tasks.task`."""
        return _bound_task_layer().task(self, name, **options)

    def periodic(self, cron: str, *, tz: str = "UTC", missed: str = "skip",
                 grace: float = 60.0, name: str | None = None, **options: Any) -> Any:
        """Decorator: run a task at every due time of ``cron`` (a backend with
        ``schedule_periodic``); see :func:`aurora_log.runtime.tasks.periodic`."""
        return _bound_task_layer().periodic(self, cron, tz=tz, missed=missed, grace=grace,
                                            name=name, **options)

    def register_handler(self, job_type: str, fn: Callable[..., Any], *,
                         context: bool = False) -> Any:
        """Seed style ``fn(job)`` handler for ``job_type``; see
        :func:`aurora_log.runtime.tasks.register_handler`."""
        return _bound_task_layer().register_handler(self, job_type, fn, context=context)

    def __enter__(self) -> QueueInterface:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
