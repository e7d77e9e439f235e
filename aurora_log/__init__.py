"""aurora-log: an embedded, durable background-job queue.

    q = aurora_log.open("./jobs")
"""

from .errors import (
    AuroraLogError,
    ClosedError,
    CorruptionError,
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
)

from .job import Job, JobPriority, JobStatus
from .local.queue import Queue, open
from .local.state import Transition
from .local.verify import VerifyReport, verify
from .runtime.tasks import TaskHandle, register_handler, task
from .runtime.worker import Context, Worker, current_context

__version__ = "0.1.0"

__all__ = [
    "AuroraLogError", "ClosedError", "CorruptionError", "DurabilityError", "InvalidStateError",
    "JobNotFoundError", "LockedError", "ReadOnlyError", "StaleLeaseError",
    "Job", "JobPriority", "JobStatus", "Queue", "Transition", "open", "verify", "VerifyReport",
    "Worker", "Context", "JobCancelled", "JobTimeout", "current_context",
    "TaskHandle", "TaskFailed", "TaskCancelled", "task", "register_handler",
]
