"""Workflows built from dependencies: ``chain`` and ``group``.

    q.enqueue_many(chain(fetch, parse, store))           # one after the other
    q.enqueue_many(group(a, b, then=report))             # report after a and b

Both only set ``Job.after`` links and return the jobs in an order enqueue_many accepts
(parents first); the queue enforces the order durably (the DEPENDS records).
"""

from __future__ import annotations

from .job import Job

__all__ = ["chain", "group"]


def chain(*jobs: Job, on_parent_failure: str = "cancel") -> list[Job]:
    """Each job waits for the one before it. Returns the jobs, in order."""
    if len(jobs) < 2:
        raise ValueError("chain() needs at least two jobs")
    for j in jobs:
        if not isinstance(j, Job):
            raise TypeError(f"chain() takes Jobs, not {type(j).__name__}")
    for parent, child in zip(jobs, jobs[1:], strict=False):
        child.after(parent, on_parent_failure=on_parent_failure)
    return list(jobs)


def group(*jobs: Job, then: Job | None = None, on_parent_failure: str = "cancel") -> list[Job]:
    """Jobs that run independently; ``then`` (if given) waits for all of them. Returns
    the jobs, then ``then``."""
    if not jobs:
        raise ValueError("group() needs at least one job")
    for j in (*jobs, *(() if then is None else (then,))):
        if not isinstance(j, Job):
            raise TypeError(f"group() takes Jobs, not {type(j).__name__}")
    if then is None:
        return list(jobs)
    then.after(*jobs, on_parent_failure=on_parent_failure)
    return [*jobs, then]
