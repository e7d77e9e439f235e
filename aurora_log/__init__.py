"""aurora-log: an embedded, durable background-job queue.

    q = aurora_log.open("./jobs")
"""

from .errors import (
    AuroraLogError,
    ClosedError,
    ConnectionLostError,
    CorruptionError,
    DurabilityError,
    InvalidStateError,
    JobNotFoundError,
    LockedError,
    ReadOnlyError,
    StaleLeaseError,
)

from .job import Job, JobPriority, JobStatus
from .queue import Queue, open
from .state import Transition
from .verify import VerifyReport, verify
from .tasks import TaskCancelled, TaskFailed, TaskHandle, register_handler, task
from .worker import Context, JobCancelled, JobTimeout, Worker, current_context

__version__ = "0.1.0"

__all__ = [
    "AuroraLogError", "ClosedError", "ConnectionLostError", "CorruptionError", "DurabilityError", "InvalidStateError",
    "JobNotFoundError", "LockedError", "ReadOnlyError", "StaleLeaseError",
    "Job", "JobPriority", "JobStatus", "Queue", "Transition", "open", "verify", "VerifyReport",
    "Worker", "Context", "JobCancelled", "JobTimeout", "current_context",
    "TaskHandle", "TaskFailed", "TaskCancelled", "task", "register_handler",
]
