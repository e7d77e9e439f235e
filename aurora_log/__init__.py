"""aurora-log: an embedded, durable background-job queue.

    q = aurora_log.open("./jobs")
"""

from typing import Any, cast

from .errors import (
    AuroraLogError,
    ClosedError,
    ConnectionLostError,
    CorruptionError,
    CursorGoneError,
    DependencyCycleError,
    DependencyError,
    DurabilityError,
    InvalidStateError,
    JobCancelled,
    JobNotFoundError,
    JobTimeout,
    LockedError,
    ReadOnlyError,
    StaleLeaseError,
    TaskCancelled,
    TaskFailed,
    UnknownParentError,
)
from . import interface as _interface
from .interface import QueueInterface, Transition
from .job import Job, JobPriority, JobStatus
from .workflows import chain, group
from .local import queue as _local_queue
from .local.follow import LogEntry, follow
from .local.queue import Queue
from .local.verify import VerifyReport, verify
from .runtime import isolation as _isolation
from .runtime import tasks as _tasks
from .runtime.tasks import TaskHandle, register_handler, task
from .runtime.worker import Context, Worker, current_context

__version__ = "0.1.0"

# This module is the composition root: the one place the layers are wired together.
# ``q.task`` / ``q.register_handler`` on the engine's Queue forward to the task layer,
# which sits above the engine; the engine does not import it, it is handed it here.
_interface.bind_task_layer(_tasks)


def open(path: Any, **options: Any) -> QueueInterface:  # noqa: A001 - the documented entry point
    """Open (or create) the queue stored in directory ``path`` (a :class:`Queue`), or, for a
    ``postgresql://`` DSN, the queue in that database (an
    :class:`aurora_log.postgres.PostgresQueue`; options such as ``schema="aurora"``).

    A local store is shared: any number of processes open the same directory and use it
    at once. ``exclusive=True`` (= ``shared=False``) holds it for this queue alone
    (faster for one process; any other writable open then raises LockedError).

    Inside a process-isolation child (runtime/isolation.py) the store belongs to the worker
    process, so this returns a queue that only registers handlers (``@q.task``,
    ``q.register_handler``): the user's module imports there as it does everywhere."""
    if _isolation.in_handler_child():
        return cast(QueueInterface, _isolation.HandlerOnlyQueue(path, **options))
    if isinstance(path, str) and path.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresQueue     # only here: a local store never imports psycopg
        return PostgresQueue(path, **options)
    return _local_queue.open(path, **options)


__all__ = [
    "AuroraLogError", "ClosedError", "ConnectionLostError", "CorruptionError", "DurabilityError",
    "InvalidStateError", "QueueInterface",
    "JobNotFoundError", "LockedError", "ReadOnlyError", "StaleLeaseError",
    "Job", "JobPriority", "JobStatus", "Queue", "Transition", "open", "verify", "VerifyReport",
    "Worker", "Context", "JobCancelled", "JobTimeout", "current_context",
    "TaskHandle", "TaskFailed", "TaskCancelled", "task", "register_handler",
    "follow", "LogEntry", "CursorGoneError", "chain", "group",
    "DependencyError", "DependencyCycleError", "UnknownParentError",
]
