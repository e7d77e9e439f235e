"""Workflows built from dependencies: ``chain`` and ``group``.

    q.enqueue_many(chain(fetch, parse, store))           # one after the other
    q.enqueue_many(group(a, b, then=report))             # report after a and b

Both only set ``Job.after`` links and return the jobs in an order enqueue_many accepts
(parents first); the queue enforces the order durably (the DEPENDS records).
"""

from __future__ import annotations

from .job import Job

__all__ = ["chain", "group", "parents_first"]


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


def parents_first(jobs: list[Job]) -> list[int]:
    """The indexes of ``jobs`` with every job after its parents in the batch (stable
    otherwise), for a backend writing a batch with dependencies. DependencyCycleError
    (before anything is written) if jobs of the batch wait for each other."""
    from .errors import DependencyCycleError
    where = {j.id: k for k, j in enumerate(jobs)}
    out: list[int] = []
    state = [0] * len(jobs)          # 0 new, 1 on the path, 2 placed
    for start in range(len(jobs)):
        if state[start]:
            continue
        path = [start]
        stack = [iter(jobs[start].depends_on)]
        state[start] = 1
        while stack:
            parent = next(stack[-1], None)
            if parent is None:
                stack.pop()
                k = path.pop()
                state[k] = 2
                out.append(k)
                continue
            p = where.get(parent)
            if p is None or state[p] == 2:
                continue
            if state[p] == 1:
                raise DependencyCycleError([jobs[i].id for i in path[path.index(p):]] + [parent])
            state[p] = 1
            path.append(p)
            stack.append(iter(jobs[p].depends_on))
    return out
