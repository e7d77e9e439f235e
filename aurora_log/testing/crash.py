"""The crash harness: run a user's handlers, crash the worker at chosen points, reopen the
store, go on, and check the user's invariant together with the queue's own.

A run:

1. a fresh store (fake clock, sync durability, no background threads) is opened and
   ``scenario(q)`` registers the handlers and enqueues the jobs; what it returns (the user's
   "world": their database, ledger, outbox...) is handed to the invariant at the end;
2. due jobs run one at a time through the worker's dispatch (see runner.py); every attempt
   passes crash points: ``before`` (claimed, handler not called), each
   ``ctx.checkpoint(name)`` the handler reaches, and ``after`` (the handler returned or
   raised, its outcome not yet recorded);
3. at a point the schedule names, the worker "dies": the attempt records nothing, the
   store is closed with the job still RUNNING and reopened in place, and recovery gives the
   job back as pending (a spent attempt), exactly as after a real crash;
4. when nothing is due any more: the queue's checks (every reopen showed the state the
   Jepsen-style checker expects: nothing lost, nothing acknowledged undone; no job completed
   twice; every job's history starts with its enqueue and ends finished; its attempts
   count up by one) and then ``invariant(q, world)``.

A process crash keeps what the OS already had, so the store is closed (written records
stay) rather than torn; power loss is the power-loss suite's business, not the user's.
"""

from __future__ import annotations

import dataclasses
import itertools
import shutil
import tempfile
import types
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from aurora_log.job import JobStatus

from .checker import Checker, History, all_jobs
from .clock import FakeClock
from .runner import JobRunner, RunResult, next_due

__all__ = [
    "CrashAt",
    "CrashPoint",
    "CrashReport",
    "crash_and_reopen",
    "crash_test",
    "exactly_once",
    "open_queue",
]

WHERES = ("before", "checkpoint", "after")


@dataclasses.dataclass(frozen=True)
class CrashPoint:
    """A point an attempt passed: the n-th (``step``, from 1) of its run."""
    step: int
    job_id: str
    job_type: str
    attempt: int
    where: str                       # "before" | "checkpoint" | "after"
    checkpoint: str | None = None

    def __str__(self) -> str:
        at = {"before": "before the handler ran",
              "after": "after the handler returned, before its outcome was recorded",
              "checkpoint": f"at checkpoint {self.checkpoint!r}"}[self.where]
        return (f"step {self.step}: job {self.job_id} ({self.job_type}, attempt "
                f"{self.attempt}) {at}")


@dataclasses.dataclass(frozen=True)
class CrashAt:
    """A chosen crash point: the first point that matches all given fields."""
    where: str = "checkpoint"
    checkpoint: str | None = None
    job_type: str | None = None
    attempt: int | None = None

    def __post_init__(self):
        if self.where not in WHERES:
            raise ValueError(f"where must be one of {', '.join(WHERES)}, not {self.where!r}")

    def matches(self, p: CrashPoint) -> bool:
        return (p.where == self.where
                and (self.checkpoint is None or p.checkpoint == self.checkpoint)
                and (self.job_type is None or p.job_type == self.job_type)
                and (self.attempt is None or p.attempt == self.attempt))


Schedule = Sequence["int | CrashAt"]


@dataclasses.dataclass
class CrashReport:
    """What ``crash_test`` did: the points of a crash-free run, and each run's schedule."""
    points: list[CrashPoint]
    runs: list[tuple[list[CrashPoint], list[RunResult]]]   # (crashes made, attempts)

    @property
    def crashes(self) -> int:
        return sum(len(c) for c, _ in self.runs)


class _Crash(BaseException):
    """The simulated death of the worker. A BaseException, so a handler's ``except
    Exception`` cannot swallow it (as it could not swallow a SIGKILL)."""

    def __init__(self, point: CrashPoint):
        self.point = point
        super().__init__(str(point))


# ---------------------------------------------------------------- queues it can reopen

_options: weakref.WeakKeyDictionary[Any, dict] = weakref.WeakKeyDictionary()

#: what the harness and the fixtures open: nothing runs in the background, so a run is
#: deterministic, and every acknowledged write is on disk
HARNESS_OPTIONS = {"durability": "sync", "reaper_interval": None, "auto_compact": False,
                   "segment_bytes": 4 << 20}   # small segments: a test opens many stores


def open_queue(path, clock: FakeClock | None = None, **options):
    """Open a queue for tests: a :class:`FakeClock` (a new one unless given), sync
    durability, no reaper or compaction thread. ``crash_and_reopen`` can reopen it."""
    import aurora_log
    opts = {**HARNESS_OPTIONS, **options, "clock": clock if clock is not None else FakeClock()}
    q = aurora_log.open(path, **opts)
    _options[q] = opts
    return q


def crash_and_reopen(q) -> int:
    """Simulate the death of the process that has ``q`` open, and reopen the store in the
    same Queue object (handlers registered on it and task objects bound to it keep working).
    Jobs it left RUNNING come back pending with the attempt spent (or dead-lettered), as
    after a real crash. Returns how many jobs recovery returned."""
    from aurora_log import Queue
    opts = _options.get(q)
    if opts is None:
        raise ValueError("crash_and_reopen needs a queue opened by aurora_log.testing "
                         "(open_queue or the aurora_queue fixture)")
    path = q.path
    q.close()                    # written records stay, as with a killed process
    # a shared-mode close hands its RUNNING jobs back itself (as the others would on
    # noticing its death); an exclusive store's reopen does it
    returned = q.returned_on_close
    q.__dict__.clear()           # the weak registry key (the object) survives
    Queue.__init__(q, path, **opts)
    return returned + q.recovered


# ---------------------------------------------------------------- the invariant helper

def exactly_once(effects: Iterable, effect: str = "effect") -> None:
    """Assert that no item of ``effects`` (e.g. the order ids a ledger charged) occurs more
    than once; the AssertionError names each duplicated effect and how often it happened."""
    counts = Counter(effects)
    dups = {k: n for k, n in counts.items() if n > 1}
    if dups:
        listed = ", ".join(f"{effect} {k!r} happened {n} times" for k, n in dups.items())
        raise AssertionError(f"duplicated effect: {listed} (expected once each)")


# ---------------------------------------------------------------- recording the history

class _Recorded:
    """The queue as the worker code sees it in a harness run: claims, completes and fails go
    through the checker's History (so every reopen can be checked against its model)."""

    def __init__(self, q, history: History):
        self._q = q
        self._h = history
        self.problem: str | None = None

    def claim(self, worker_id: str, **_):
        return self._h.claim(self._q, worker_id)

    def complete(self, job_id: str, token: str, result: Any = None, **_) -> None:
        self._h.complete(self._q, types.SimpleNamespace(id=job_id, token=token), result)

    def fail(self, job_id: str, token: str, error: str, **_):
        try:
            return self._h.fail(self._q, types.SimpleNamespace(id=job_id, token=token), error)
        except AssertionError as exc:         # the worker would log and swallow it
            self.problem = str(exc)
            raise

    def __getattr__(self, name):              # progress, heartbeat, get, closed, path ...
        return getattr(self._q, name)


class _Run:
    """One run of the scenario with one crash schedule."""

    def __init__(self, scenario, directory: Path, schedule: Schedule, clock_start,
                 clock_steps: Sequence[float], max_runs: int, options: dict):
        self.step = 0
        self.points: list[CrashPoint] = []
        self.crashes: list[CrashPoint] = []
        self.results: list[RunResult] = []
        self.steps = {s for s in schedule if isinstance(s, int)}
        self.chosen = [s for s in schedule if isinstance(s, CrashAt)]
        self.clock = FakeClock(clock_start)
        self.clock_steps = clock_steps
        self.max_runs = max_runs
        self.q = open_queue(directory, self.clock, **options)
        self.world = scenario(self.q)
        counter = itertools.count(1)
        self.history = History(lambda: next(counter))
        self.known: set[str] = set()
        self._note_new_jobs()
        self.proxy = _Recorded(self.q, self.history)
        self.runner = JobRunner(self.q, queue=self.proxy, hook=self._point)

    def _note_new_jobs(self) -> None:
        if self.q.stats()["total"] == len(self.known):
            return
        new = [j for j in all_jobs(self.q) if j.id not in self.known]
        self.known.update(j.id for j in new)
        self.history.enqueued(new)

    def _point(self, ctx, where: str, checkpoint: str | None) -> None:
        self.step += 1
        p = CrashPoint(self.step, ctx.job_id, ctx.job.job_type, ctx.attempt, where, checkpoint)
        self.points.append(p)
        hit = self.step in self.steps
        for c in self.chosen:
            if c.matches(p):
                self.chosen.remove(c)
                hit = True
                break
        if hit:
            raise _Crash(p)               # re-raised by the runner if the handler swallows it

    def _crash(self, point: CrashPoint) -> None:
        self.crashes.append(point)
        self._note_new_jobs()             # a handler may have enqueued before it died
        crash_and_reopen(self.q)
        # the reopened store must show the model's state after some prefix of the history
        # that holds everything acknowledged (checked before the model applies the reopen)
        verdict = Checker(self.history).check(self.history.point(), all_jobs(self.q))
        if not verdict.ok:
            raise AssertionError(f"the queue's own check failed after reopening: {verdict}")
        self.history.reopened()

    def go(self) -> None:
        while True:
            n = len(self.results)
            if n < len(self.clock_steps):
                self.clock.advance(self.clock_steps[n])
            job = self.runner.claim()
            if job is None:
                due = next_due(self.q)
                if due is None:
                    return
                self.clock.set(due)
                continue
            if n >= self.max_runs:
                raise AssertionError(f"{self.max_runs} attempts ran and jobs are still due")
            crash = None
            try:
                result = self.runner.run(job)
            except _Crash as exc:
                crash = exc
            if crash is None and self.proxy.problem:
                raise AssertionError(f"the queue's own check failed: {self.proxy.problem}")
            if crash is not None:
                self.results.append(RunResult(job.id, job.job_type, crash.point.attempt,
                                              "crashed", error=str(crash.point), at=job.started_at))
                self._crash(crash.point)
            else:
                self.results.append(result)
            self._note_new_jobs()

    def check_queue(self) -> None:
        """The queue's own invariants after the last run; AssertionError naming the job."""
        jobs = all_jobs(self.q)
        verdict = Checker(self.history).check(self.history.point(), jobs)
        if not verdict.ok:
            raise AssertionError(f"the queue's own check failed: {verdict}")
        for job in jobs:
            hist = self.q.history(job.id)
            if not hist or hist[0].kind != "enqueue":
                raise AssertionError(f"job {job.id}: its history does not start with its "
                                     f"enqueue: {[t.kind for t in hist]}")
            completes = sum(1 for t in hist if t.kind == "complete")
            if completes > 1:
                raise AssertionError(f"job {job.id} ({job.job_type}) was completed "
                                     f"{completes} times")
            attempts = [t.attempt for t in hist if t.kind == "claim"]
            if attempts != sorted(set(attempts)):
                raise AssertionError(f"job {job.id}: attempts out of order {attempts}")
            if not job.status.is_finished:
                raise AssertionError(f"job {job.id} ({job.job_type}) was left {job.status} "
                                     "after everything due had run")
            if job.status is JobStatus.COMPLETED and completes != 1:
                raise AssertionError(f"job {job.id} is completed but its history has "
                                     f"{completes} completions")

    def close(self) -> None:
        self.runner.close()
        self.q.close()


def _attempts(results: list[RunResult]) -> str:
    lines = []
    for r in results:
        how = r.outcome if r.outcome != "crashed" else \
            f"CRASHED ({(r.error or '').split(': ', 1)[-1]})"
        lines.append(f"  job {r.job_id} ({r.job_type}) attempt {r.attempt}: {how}")
    return "\n".join(lines)


def crash_test(scenario: Callable[[Any], Any], invariant: Callable[[Any, Any], Any], *,
               schedules: Iterable[Schedule] | None = None, path=None,
               clock_start: float | None = 1_700_000_000.0,
               clock_steps: Sequence[float] = (), max_runs: int = 1000,
               cleanup: Callable[[Any], None] | None = None,
               **queue_options) -> CrashReport:
    """Run ``scenario`` under crashes and check ``invariant(q, world)`` after each run.

    ``scenario(q)``: register the handlers on ``q`` and enqueue the jobs; return the "world"
    the invariant reads (it must be fresh on every call: each run starts from scratch).
    ``invariant(q, world)``: raise AssertionError (or return False) when the world is wrong.

    ``cleanup(world)``: called after each run (close the user's database, ...).
    ``clock_steps``: seconds to advance the fake clock before each claim (time passing).
    ``queue_options``: more ``aurora_log.open`` options for the run's store.

    ``schedules``: the crash schedules to try, each a sequence of step numbers (the n-th
    crash point a run passes, see ``strategies.crash_schedules()``) and/or :class:`CrashAt`
    points. Default: a crash-free run lists the points, then one run per point crashes
    there once (every single crash is tried). The crash-free run is always checked too.

    AssertionError on the first failing run, naming the crash point(s), what failed (the
    invariant's message, e.g. the duplicated effect) and the attempts that ran. Returns a
    :class:`CrashReport` otherwise."""
    if not callable(scenario) or not callable(invariant):
        raise TypeError("crash_test(scenario, invariant): both must be callables")
    base = Path(path) if path is not None else Path(tempfile.mkdtemp(prefix="aurora-crash-"))
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    runs: list[tuple[list[CrashPoint], list[RunResult]]] = []
    seq = itertools.count()

    def one(schedule: Schedule) -> _Run:
        d = base / f"run-{next(seq)}"
        run = _Run(scenario, d, schedule, clock_start, clock_steps, max_runs, queue_options)
        try:
            try:
                run.go()
                run.check_queue()
                verdict = invariant(run.q, run.world)
                if verdict is False:
                    raise AssertionError("the invariant returned False")
            except AssertionError as exc:
                where = ("; ".join(f"crash at {c}" for c in run.crashes)
                         or "no crash (a plain run)")
                raise AssertionError(f"{where}:\n{exc}\nattempts:\n"
                                     f"{_attempts(run.results)}") from None
            runs.append((list(run.crashes), list(run.results)))
            return run
        finally:
            run.close()
            if cleanup is not None:
                cleanup(run.world)
            shutil.rmtree(d, ignore_errors=True)

    try:
        plain = one(())
        todo = list(schedules) if schedules is not None else [(p.step,) for p in plain.points]
        for schedule in todo:
            one(schedule)
    finally:
        if path is None:
            shutil.rmtree(base, ignore_errors=True)
    return CrashReport(plain.points, runs)
