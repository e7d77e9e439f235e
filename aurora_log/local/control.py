"""Queue control, folded: paused queues, concurrency and rate limits, periodic firings,
job dependencies. Pure like the job fold it sits beside (no clock, no I/O): every time it
uses comes from a record.

The job fold (state) owns one ``Control`` and calls it:

- for the control records (PAUSE, RESUME, LIMIT, PERIODIC_FIRE, DEPENDS): ``apply_*``;
- when a job enters or leaves RUNNING: ``on_running((queue, job_type), +1/-1)`` (the
  concurrency counts, kept whether or not a limit exists, so a limit set later is right at
  once);
- on every CLAIM: ``on_claim((queue, job_type), at_ms)`` (the rate windows: the claim's own
  time is the clock decision, so replay rebuilds the same windows);
- before it considers a (queue, job_type) pair for a claim: ``blocked(queue, job_type,
  now_ms)``;
- at a job's ENQUEUE: ``hold(job_id)``: True while the job waits for parents (it is then
  not put in a ready heap);
- when a job finishes: ``on_finished(job_id, completed)`` -> the children to release and
  the children to cancel (with the reason), which the job fold applies (and feeds back
  here for the children's own children).

Rate limits are a sliding window of ``rate_count`` claims per ``rate_period_ms``: a claim
is allowed when fewer than ``rate_count`` claims of that scope happened in the last
period. Only the last ``rate_count`` claim times are kept per scope.

Snapshots carry ``export()`` (JSON-ready) and rebuild with ``from_export``; the running
counts are not exported (the job fold recounts its RUNNING jobs on load).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from . import records as R

__all__ = ["Control", "LimitSpec", "SCOPE_NAMES"]

SCOPE_NAMES = {R.SCOPE_QUEUE: "queue", R.SCOPE_JOB_TYPE: "job_type"}


@dataclass(frozen=True)
class LimitSpec:
    """The limit of one queue or job type (0 = none)."""
    concurrency: int = 0
    rate_count: int = 0
    rate_period_ms: int = 0

    @property
    def empty(self) -> bool:
        return not self.concurrency and not self.rate_count


class Control:
    """The control part of the state; see the module docstring."""

    def __init__(self) -> None:
        self.paused: set[str] = set()
        self.limits: dict[tuple[int, str], LimitSpec] = {}
        self.running: dict[tuple[int, str], int] = {}
        self.windows: dict[tuple[int, str], deque[int]] = {}
        self.fired: dict[str, int] = {}                 # schedule -> last due time fired
        self.fired_jobs: dict[str, str] = {}            # schedule -> the job it last enqueued
        # dependencies: child -> [parents still unfinished, policy, all parents]
        self.waiting: dict[str, list[Any]] = {}
        self.children: dict[str, list[str]] = {}        # parent -> children waiting on it
        self.settled: dict[str, str] = {}               # child cancelled by a parent: why
        self._active = False                            # any pause or limit: pick checks
        # (queue, job_type) -> its two keys in `running` (built once per pair)
        self._keys: dict[tuple[str, str], tuple[tuple[int, str], tuple[int, str]]] = {}

    # ------------------------------------------------------------------ the records

    def apply_pause(self, rec: R.Pause) -> None:
        self.paused.add(rec.queue)
        self._active = True

    def apply_resume(self, rec: R.Resume) -> None:
        self.paused.discard(rec.queue)
        self._active = bool(self.paused or self.limits)

    def apply_limit(self, rec: R.Limit) -> None:
        key = (rec.scope, rec.name)
        spec = LimitSpec(rec.concurrency, rec.rate_count, rec.rate_period_ms)
        if spec.empty:
            self.limits.pop(key, None)
            self.windows.pop(key, None)
        else:
            self.limits[key] = spec
            if spec.rate_count:
                old = self.windows.get(key, ())
                self.windows[key] = deque(old, maxlen=spec.rate_count)
            else:
                self.windows.pop(key, None)
        self._active = bool(self.paused or self.limits)

    def apply_fire(self, rec: R.PeriodicFire) -> None:
        if rec.due_ms > self.fired.get(rec.name, -1):
            self.fired[rec.name] = rec.due_ms
            self.fired_jobs[rec.name] = rec.id

    def apply_depends(self, rec: R.Depends, status_of) -> None:
        """``status_of(job_id)``: the parent's status code in the job fold (None if it
        is unknown there). A parent already completed counts as done; one already
        dead-lettered or cancelled settles the child at once (see on_finished)."""
        statuses = [status_of(p) for p in rec.parents]
        if rec.on_parent_failure == R.ON_FAILURE_CANCEL:
            for parent, st in zip(rec.parents, statuses, strict=True):
                if st in _FAILED_END:          # settled at once: waits for nothing
                    self.settled[rec.id] = _reason(parent, st)
                    self.waiting[rec.id] = [0, rec.on_parent_failure, rec.parents]
                    return
        pending = 0
        for parent, st in zip(rec.parents, statuses, strict=True):
            if st == _COMPLETED or st in _FAILED_END:
                continue
            pending += 1
            self.children.setdefault(parent, []).append(rec.id)
        self.waiting[rec.id] = [pending, rec.on_parent_failure, rec.parents]

    # ------------------------------------------------------------------ job-fold hooks

    def on_running(self, pair: tuple[str, str], delta: int) -> None:
        """A job of (queue, job_type) ``pair`` entered (+1) or left (-1) RUNNING."""
        r = self.running
        keys = self._keys.get(pair)      # every claim and finish passes here: no new tuples
        if keys is None:
            keys = self._keys[pair] = ((R.SCOPE_QUEUE, pair[0]), (R.SCOPE_JOB_TYPE, pair[1]))
        kq, kt = keys
        n = r.get(kq, 0) + delta
        if n:
            r[kq] = n
        else:
            del r[kq]
        n = r.get(kt, 0) + delta
        if n:
            r[kt] = n
        else:
            del r[kt]

    def on_claim(self, pair: tuple[str, str], at_ms: int) -> None:
        """A job of (queue, job_type) ``pair`` was claimed at ``at_ms`` (the record's time)."""
        queue, job_type = pair
        if self.windows:
            for key in ((R.SCOPE_QUEUE, queue), (R.SCOPE_JOB_TYPE, job_type)):
                w = self.windows.get(key)
                if w is not None:
                    w.append(at_ms)

    @property
    def active(self) -> bool:
        """True when a pause or a limit exists (otherwise blocked() is always False)."""
        return self._active

    @property
    def wake_on_finish(self) -> bool:
        """True when a job's end can make another claimable (a limit frees a slot, or
        children wait): the queue then wakes waiting claims."""
        return bool(self.limits or self.children)

    def blocked(self, queue: str, job_type: str, now_ms: int) -> bool:
        """True when a claim of a (queue, job_type) job must wait: the queue is paused, or
        a concurrency or rate limit of the queue or the job type is reached."""
        if not self._active:
            return False
        if queue in self.paused:
            return True
        for key in ((R.SCOPE_QUEUE, queue), (R.SCOPE_JOB_TYPE, job_type)):
            spec = self.limits.get(key)
            if spec is None:
                continue
            if spec.concurrency and self.running.get(key, 0) >= spec.concurrency:
                return True
            if spec.rate_count:
                w = self.windows[key]
                if len(w) >= spec.rate_count and w[0] > now_ms - spec.rate_period_ms:
                    return True
        return False

    def rate_free_ms(self, queue: str, job_type: str, now_ms: int) -> int | None:
        """When the rate limits of (queue, job_type) next allow a claim, if a rate limit
        is what blocks it now (the claim wait sleeps until then); else None."""
        best = None
        for key in ((R.SCOPE_QUEUE, queue), (R.SCOPE_JOB_TYPE, job_type)):
            spec = self.limits.get(key)
            if spec is None or not spec.rate_count:
                continue
            w = self.windows[key]
            if len(w) >= spec.rate_count and w[0] > now_ms - spec.rate_period_ms:
                free = w[0] + spec.rate_period_ms
                best = free if best is None else max(best, free)
        return best

    def hold(self, job_id: str) -> bool:
        """True while the job waits for parents (the job fold keeps it out of the ready
        heaps). A job settled by a parent's failure is not held: see settled_reason."""
        w = self.waiting.get(job_id)
        return w is not None and w[0] > 0 and job_id not in self.settled

    def settled_reason(self, job_id: str) -> str | None:
        """Why a job was cancelled by its parent's failure (None: it was not). The job fold
        pops it when it applies the cancellation."""
        return self.settled.pop(job_id, None)

    def parents_of(self, job_id: str) -> tuple:
        w = self.waiting.get(job_id)
        return () if w is None else tuple(w[2])

    def policy_of(self, job_id: str) -> str:
        """"cancel" or "ignore": what a failed parent does to the job."""
        w = self.waiting.get(job_id)
        return "ignore" if w is not None and w[1] == R.ON_FAILURE_IGNORE else "cancel"

    def on_finished(self, job_id: str, status: int) -> tuple[list[str], list[tuple[str, str]]]:
        """A job reached a final status (code). Returns (children now free to run,
        [(child, reason)] to cancel). A parent re-driven later does not un-cancel them."""
        kids = self.children.pop(job_id, None)
        if not kids:
            return [], []
        release: list[str] = []
        cancel: list[tuple[str, str]] = []
        for child in kids:
            w = self.waiting.get(child)
            if w is None or child in self.settled:
                continue
            if status != _COMPLETED and w[1] == R.ON_FAILURE_CANCEL:
                cancel.append((child, _reason(job_id, status)))
                w[0] = 0
                continue
            w[0] -= 1
            if w[0] == 0:
                release.append(child)
        return release, cancel

    def forget(self, job_id: str) -> None:
        """The job left the state (purged): drop what is kept about it."""
        self.waiting.pop(job_id, None)
        self.settled.pop(job_id, None)

    # ------------------------------------------------------------------ reads

    def describe(self) -> dict[str, Any]:
        """For stats(): paused queues, limits with their current use, schedules' last
        firings, jobs waiting for parents."""
        limits = []
        for (scope, name), spec in sorted(self.limits.items()):
            item: dict[str, Any] = {"scope": SCOPE_NAMES[scope], "name": name}
            if spec.concurrency:
                item["concurrency"] = spec.concurrency
                item["running"] = self.running.get((scope, name), 0)
            if spec.rate_count:
                item["rate"] = [spec.rate_count, spec.rate_period_ms / 1000]
            limits.append(item)
        return {"paused": sorted(self.paused), "limits": limits,
                "periodic": dict(sorted(self.fired.items())),
                "waiting_for_parents": sum(1 for w in self.waiting.values() if w[0] > 0)}

    # ------------------------------------------------------------------ snapshots

    def export(self) -> dict[str, Any]:
        """Everything but the running counts, JSON-ready."""
        return {
            "paused": sorted(self.paused),
            "limits": [[s, n, v.concurrency, v.rate_count, v.rate_period_ms]
                       for (s, n), v in sorted(self.limits.items())],
            "windows": [[s, n, list(w)] for (s, n), w in sorted(self.windows.items())],
            "fired": [[k, v, self.fired_jobs.get(k)] for k, v in sorted(self.fired.items())],
            "waiting": [[c, w[0], w[1], list(w[2])] for c, w in self.waiting.items()],
            "children": [[p, list(c)] for p, c in self.children.items()],
            "settled": [[c, why] for c, why in self.settled.items()],
        }

    @classmethod
    def from_export(cls, data: dict[str, Any]) -> Control:
        """The inverse of export(). ValueError for anything malformed."""
        c = cls()
        try:
            c.paused = {str(q) for q in data.get("paused", ())}
            for s, n, conc, count, period in data.get("limits", ()):
                c.apply_limit(R.Limit(int(s), str(n), 0, int(conc), int(count), int(period)))
            for s, n, times in data.get("windows", ()):
                w = c.windows.get((int(s), str(n)))
                if w is None:
                    raise ValueError(f"rate window without a rate limit: {s}/{n}")
                w.extend(int(t) for t in times)
            for name, due, job_id in data.get("fired", ()):
                c.fired[str(name)] = int(due)
                if job_id is not None:
                    c.fired_jobs[str(name)] = str(job_id)
            for child, n, policy, parents in data.get("waiting", ()):
                c.waiting[str(child)] = [int(n), int(policy), tuple(map(str, parents))]
            for parent, kids in data.get("children", ()):
                c.children[str(parent)] = [str(k) for k in kids]
            for child, why in data.get("settled", ()):
                c.settled[str(child)] = str(why)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed control state: {e}") from None
        c._active = bool(c.paused or c.limits)
        return c

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Control):
            return NotImplemented
        return self.export() == other.export() and self.running == other.running


_COMPLETED = 3          # JobStatus codes (job.py): completed, dead_letter, cancelled
_DEAD = 5
_CANCELLED = 6
_FAILED_END = (_DEAD, _CANCELLED)


def _reason(parent: str, status: int) -> str:
    what = "was dead-lettered" if status == _DEAD else "was cancelled"
    return f"parent job {parent} {what}"
