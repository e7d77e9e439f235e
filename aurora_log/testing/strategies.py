"""Hypothesis strategies for aurora-log tests (imports hypothesis: a ``test`` extra).

    jobs(job_types=("charge",), clock=clock)     valid Job objects
    payloads()                                   JSON dicts a queue accepts
    crash_schedules()                            step numbers for crash_test(schedules=[...])
    clock_steps()                                seconds to advance before each claim
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta

from hypothesis import strategies as st

from aurora_log.job import Job, JobPriority, from_ms

__all__ = ["clock_steps", "crash_schedules", "jobs", "payloads"]

_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=20)
_names = st.text(st.characters(min_codepoint=48, max_codepoint=122,
                               whitelist_categories=("Ll", "Lu", "Nd")), min_size=1, max_size=12)


def payloads(max_leaves: int = 10) -> st.SearchStrategy[dict]:
    """JSON dicts with str keys: str, int (64-bit), finite float, bool, None, nested lists and
    dicts, as ``Job(payload=...)`` accepts them."""
    scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
               | st.floats(allow_nan=False, allow_infinity=False) | _text)
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(_text, inner, max_size=4), max_leaves=max_leaves)
    return st.dictionaries(_text, values, max_size=5)


def jobs(job_types: Sequence[str] = ("task",), *, clock: Callable[[], float] | None = None,
         max_delay: float = 3600.0, max_retries: int = 5,
         queues: Sequence[str] = ("default",)) -> st.SearchStrategy[Job]:
    """Valid new Jobs: a job_type and queue from the given ones, a payload, any priority,
    0..max_retries retries, and either no schedule or one up to ``max_delay`` seconds after
    ``clock()`` (a FakeClock; default: the real time, as Job does)."""
    if not job_types or not queues:
        raise ValueError("jobs() needs at least one job_type and one queue")

    @st.composite
    def build(draw) -> Job:
        delay = draw(st.none() | st.integers(0, int(max_delay * 1000)))
        scheduled = None
        if delay is not None:
            if clock is not None:
                scheduled = from_ms(round(clock() * 1000) + delay)
            else:
                scheduled = Job("x").created_at + timedelta(milliseconds=delay)
        return Job(draw(st.sampled_from(list(job_types))), draw(payloads()),
                   priority=draw(st.sampled_from(list(JobPriority))),
                   max_retries=draw(st.integers(0, max_retries)),
                   scheduled_at=scheduled, queue=draw(st.sampled_from(list(queues))),
                   timeout_seconds=draw(st.none() | st.integers(1, 600)),
                   lease_duration=draw(st.integers(1, 120)))

    return build()


def crash_schedules(max_crashes: int = 3, max_step: int = 40) -> st.SearchStrategy[list[int]]:
    """Where a run crashes: sorted distinct step numbers (the n-th crash point the run
    passes, from 1). Steps past the end of a run never fire; shrinks towards few, early
    crashes."""
    return st.lists(st.integers(1, max_step), max_size=max_crashes, unique=True).map(sorted)


def clock_steps(max_steps: int = 20, max_seconds: float = 120.0) -> st.SearchStrategy[list[float]]:
    """Seconds (whole milliseconds) to advance the fake clock before each claim of a drain
    or a crash_test run: time passing while the worker was busy or idle."""
    return st.lists(st.integers(0, int(max_seconds * 1000)).map(lambda ms: ms / 1000.0),
                    max_size=max_steps)
