"""``drain(q)``: run every due job of a queue in the test's own thread, through the handlers
registered on it, until nothing is due, moving a fake clock to the next due time.

Handlers run through the Worker's own code (``Worker.run_attempt`` and ``record_outcome``): the
same handler lookup, calling convention, async support, result checks and fail/complete
calls as a real worker, minus the threads. Jobs come out of ``Queue.claim``, so the order is
the queue's: priority, then due time, then FIFO.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from aurora_log.job import Job, JobStatus
from aurora_log.runtime.worker import Context, Worker

from .clock import FakeClock

__all__ = ["JobRunner", "RunResult", "drain", "next_due"]

WORKER_ID = "aurora-log-testing"

#: a hook called at each crash point of a run: (ctx, where, checkpoint name or None). A hook
#: raises to stop the attempt; the runner re-raises what a checkpoint hook raised even when
#: the handler (or the worker's run_attempt) caught it.
PointHook = Callable[[Context, str, "str | None"], None]


@dataclasses.dataclass(frozen=True)
class RunResult:
    """One attempt that ``drain`` ran.

    outcome: "completed", "failed" (a retry is scheduled), "dead_letter", "cancelled",
    "lost" (the queue no longer let this attempt record its outcome) or "crashed" (the crash
    harness stopped it). ``result``: the handler's return value; ``error``: the error text
    the job got (or the crash point)."""
    job_id: str
    job_type: str
    attempt: int
    outcome: str
    result: Any = None
    error: str | None = None
    at: datetime | None = None          # the queue's clock when the attempt started

    @property
    def ok(self) -> bool:
        return self.outcome == "completed"


def next_due(q) -> float | None:
    """The earliest time (epoch seconds), later than the queue's clock now, at which
    something becomes due: a scheduled job, a retry after its backoff, or a running job whose
    lease or timeout runs out (the reaper then gives it back); None if nothing waits."""
    now = q._clock()
    times = []
    for status in (JobStatus.PENDING, JobStatus.FAILED):
        times += [j.scheduled_at.timestamp() for j in q.list(status=status, limit=1 << 30)
                  if j.scheduled_at is not None]
    for job in q.list(status=JobStatus.RUNNING, limit=1 << 30):
        # the reaper acts once now > deadline: one millisecond past it
        if job.lease_deadline is not None:
            times.append(job.lease_deadline.timestamp() + 0.001)
        if job.timeout_seconds is not None and job.started_at is not None:
            times.append(job.started_at.timestamp() + job.timeout_seconds + 0.001)
    later = [t for t in times if t > now]
    return min(later) if later else None


class JobRunner:
    """Claims and runs jobs one at a time in the calling thread. ``queue`` is what the worker
    code talks to (the crash harness passes a recording proxy); ``store`` is the real Queue
    (reads, clock); ``hook`` is called at each crash point of an attempt."""

    def __init__(self, store, *, queue=None, registry=None, hook: PointHook | None = None):
        self.store = store
        self.queue = queue if queue is not None else store
        self.hook = hook
        self._last: tuple[str, Any] | None = None
        self.worker = Worker(self.queue, concurrency=1, worker_id=WORKER_ID,
                             registry=registry if registry is not None else _registry(store),
                             on_done=self._on_done)

    def _on_done(self, job, status: str, detail: Any) -> None:
        self._last = (status, detail)

    def claim(self) -> Job | None:
        """The next due job, claimed (expired leases and timeouts are reaped first)."""
        self.store.reap()
        return self.queue.claim(WORKER_ID)

    def run(self, job: Job) -> RunResult:
        """Run one claimed job's handler and record its outcome, as a worker thread does."""
        ctx = Context(job, sink=lambda f, m: self.queue.progress(job.id, job.token, f, m))
        at = job.started_at
        stopped: list[BaseException] = []     # what a checkpoint hook raised
        if self.hook is not None:
            hook = self.hook

            def at_checkpoint(c: Context, name: str) -> None:
                try:
                    hook(c, "checkpoint", name)
                except BaseException as exc:
                    stopped.append(exc)
                    raise

            ctx._checkpoint_hook = at_checkpoint
            hook(ctx, "before", None)
        outcome = self.worker.run_attempt(ctx)
        if stopped:
            # the hook stopped the attempt at a checkpoint; run_attempt (or the handler
            # itself) turned that into a failure, which a dead worker never records
            raise stopped[0]
        if self.hook is not None:
            self.hook(ctx, "after", None)
        self._last = None
        self.worker.record_outcome(ctx, outcome)
        if self._last is None:
            return RunResult(job.id, job.job_type, ctx.attempt, "lost", error=str(outcome.value),
                             at=at)
        status, detail = self._last
        if status == "completed":
            return RunResult(job.id, job.job_type, ctx.attempt, status, result=detail, at=at)
        return RunResult(job.id, job.job_type, ctx.attempt, status, error=str(detail), at=at)

    def close(self) -> None:
        """Stop the event loop async handlers ran on (if any)."""
        self.worker.stop_event_loop()


def _registry(q):
    from aurora_log.runtime.tasks import registry
    return registry(q)


def _fake_clock(q) -> FakeClock | None:
    clock = getattr(q, "_clock", None)
    return clock if isinstance(clock, FakeClock) else None


def drain(q, *, advance: bool = True, clock_steps: Sequence[float] = (),
          max_runs: int = 10_000) -> list[RunResult]:
    """Run every due job of ``q`` through its registered handlers until nothing is due.

    With a :class:`FakeClock` as the queue's clock and ``advance`` on, the clock is moved to
    the next due time whenever nothing is due, so scheduled jobs and retries after backoff
    run too, in the order the queue hands them out, without sleeping. ``clock_steps``: the
    clock is advanced by ``clock_steps[i]`` seconds before the i-th claim (a hypothesis
    ``clock_steps()`` schedule). Returns one :class:`RunResult` per attempt, in order.
    RuntimeError after ``max_runs`` attempts (a task that keeps enqueueing itself)."""
    if isinstance(max_runs, bool) or not isinstance(max_runs, int) or max_runs < 1:
        raise ValueError(f"max_runs must be a positive int, got {max_runs!r}")
    clock = _fake_clock(q)
    if clock_steps and clock is None:
        raise ValueError("clock_steps needs a queue opened with an aurora_log.testing.FakeClock")
    runner = JobRunner(q)
    results: list[RunResult] = []
    try:
        while True:
            if len(results) < len(clock_steps):
                clock.advance(clock_steps[len(results)])   # type: ignore[union-attr]
            job = runner.claim()
            if job is None:
                due = next_due(q) if advance and clock is not None else None
                if due is None:
                    return results
                clock.set(due)                            # type: ignore[union-attr]
                continue
            if len(results) >= max_runs:
                raise RuntimeError(f"drain ran {max_runs} attempts and jobs are still due "
                                   f"(job {job.id} of type {job.job_type!r} is next)")
            results.append(runner.run(job))
    finally:
        runner.close()
