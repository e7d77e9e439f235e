"""aurora-log: an embedded, durable background-job queue.

    q = aurora_log.open("./jobs")
"""

from .errors import (
    AuroraLogError,
    ClosedError,
    CorruptionError,
    DurabilityError,
    InvalidStateError,
    JobNotFoundError,
    LockedError,
    ReadOnlyError,
    StaleLeaseError,
)

__version__ = "0.1.0"

__all__ = [
    "AuroraLogError", "ClosedError", "CorruptionError", "DurabilityError", "InvalidStateError",
    "JobNotFoundError", "LockedError", "ReadOnlyError", "StaleLeaseError",
]
