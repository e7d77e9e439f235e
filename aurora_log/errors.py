"""The exception tree. Every error aurora-log raises on purpose derives from AuroraLogError.

Bad *input* is the exception: it raises the built-in TypeError / ValueError (before anything
is written), because that is what Python users catch for bad arguments.
"""

from __future__ import annotations


class AuroraLogError(Exception):
    """Base class of every aurora-log error."""


class CorruptionError(AuroraLogError):
    """Stored bytes fail a check. Names the file, the byte offset, the LSN (if known) and why."""

    def __init__(self, reason: str, *, file: str | None = None, offset: int | None = None,
                 lsn: int | None = None):
        self.reason = reason
        self.file = file
        self.offset = offset
        self.lsn = lsn
        where = []
        if file is not None:
            where.append(f"file {file}")
        if offset is not None:
            where.append(f"offset {offset}")
        if lsn is not None:
            where.append(f"LSN {lsn}")
        super().__init__(f"{reason} ({', '.join(where)})" if where else reason)


class LockedError(AuroraLogError):
    """Another process (or another open Queue/Log in this process) holds the store's lock."""


class ForkedError(AuroraLogError):
    """A handle opened before os.fork() was used in the child where it cannot re-attach
    (an exclusive=True queue, or a Log used directly): open the store again there."""


#: what a ForkedError says (the queue and its log raise it from several places)
FORKED_HINT = (
    "this Queue was opened before os.fork(); it belongs to the parent process (its writer, "
    "locks and threads are not in this one). Open the store again in the child: "
    "aurora_log.open(path) after the fork (gunicorn --preload: in a post_fork hook; "
    "multiprocessing: inside the child's target function, or the 'spawn' start method). "
    "The parent's queue keeps working")


class DurabilityError(AuroraLogError):
    """A write or fsync failed. Nothing in the failed batch was acknowledged, and the log
    refuses every further write until it is closed and reopened (fsync is never retried)."""

    def __init__(self, message: str, *, errno: int | None = None):
        self.errno = errno
        super().__init__(message)


class ClosedError(AuroraLogError):
    """The log or queue was used after close()."""


class StaleLeaseError(AuroraLogError):
    """heartbeat/complete/fail carried an attempt token that no longer holds the job's lease
    (the lease expired and was reaped, the job was claimed again, or it already finished)."""


class JobNotFoundError(AuroraLogError, KeyError):
    """No job with that id is known to the queue."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the plain message
        return str(self.args[0]) if self.args else "job not found"


class InvalidStateError(AuroraLogError):
    """The operation does not apply to the job in its current status
    (for example cancel() of a completed job, or retry_dead() of a pending one)."""


class ReadOnlyError(AuroraLogError):
    """A write was attempted on a store opened read_only (or as_of a past moment)."""


class ConnectionLostError(AuroraLogError):
    """A database-backed queue lost its connection (or the server went away) during an
    operation. The operation's transaction was rolled back, so nothing of it was applied,
    unless the cut came while the server was committing, in which case it may have been
    applied in full (never in part): a retried complete/fail then raises StaleLeaseError,
    a retried enqueue of the same job id raises ValueError. The next call reconnects."""


class RecordError(CorruptionError):
    """A record payload that does not decode (wrong length, unknown version or type,
    invalid UTF-8 or enum value). Raised instead of any lower-level exception."""


class CursorGoneError(AuroraLogError):
    """A log follower's cursor LSN is older than the oldest stored record (its segment was
    retired by compaction): the records in between cannot be delivered."""


class DependencyError(AuroraLogError, ValueError):
    """A job's dependencies cannot be accepted (raised by enqueue before anything is
    written). A ValueError too: it is bad input."""


class UnknownParentError(DependencyError):
    """A job waits for a parent the queue does not know (nor the same enqueue_many batch)."""

    def __init__(self, job_id: str, parent: str):
        self.job_id = job_id
        self.parent = parent
        super().__init__(f"job {job_id} waits for unknown job {parent}")


class DependencyCycleError(DependencyError):
    """Jobs of one enqueue_many batch wait for each other in a cycle."""

    def __init__(self, cycle: list[str]):
        self.cycle = cycle
        super().__init__("dependency cycle: " + " -> ".join(cycle))


# ------------------------------------------------------------------------------- runtime

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


class TaskFailed(AuroraLogError):
    """``handle.result()`` of a job that ended in the dead-letter queue. ``.error`` holds the
    last error the handler raised (or "timeout", "no handler registered for 'x'", ...)."""

    def __init__(self, job_id: str, error: str | None):
        self.job_id = job_id
        self.error = error
        super().__init__(f"job {job_id} failed: {error}")


class TaskCancelled(AuroraLogError):
    """``handle.result()`` of a job that was cancelled."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        super().__init__(f"job {job_id} was cancelled")


# --------------------------------------------------------------------------------- tools

class CliError(AuroraLogError):
    """A command-line failure the ``aurora-log`` tool reports as one line, exiting with
    status ``code`` (1 by default; 2 for a usage error)."""

    def __init__(self, message: str, code: int = 1):
        self.code = code
        super().__init__(message)


class CsrfError(AuroraLogError):
    """A dashboard POST without a valid CSRF token (or from another origin)."""


class ActionsLockedError(LockedError):
    """A dashboard action needs the store's lock, which another process (a worker) holds."""
