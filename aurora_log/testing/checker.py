"""A Jepsen-style checker for the whole queue: a history of operations (each with the point
at which it was invoked and the point at which it returned, if it did), a reference model
that replays the history, and a verdict on a recovered store.

Used by the project's power-loss tests (tests/test_powerloss*.py) and by the crash harness
of the testing kit (aurora_log.testing.crash), which checks every reopen after a simulated
worker crash against it.

Points are any monotonically increasing counter shared with the crash: in the power-loss
runs it is the number of completed syscalls (crashsim.FsRecorder.done), so "acknowledged
before the crash at point i" means `acked <= i`.

Terms (Jepsen's total-queue checker, adapted to a job queue):
    lost         an enqueue acknowledged-durable before the crash is missing after recovery
    phantom      a job nobody enqueued appears, or a payload is not byte-identical
    resurrected  a job whose completion (or cancel) was acknowledged-durable is not finished
                 after recovery, or is delivered again by the drain
    duplicated   the drain after recovery delivers the same job twice
    hole         the recovered state is not the model's state after ANY prefix of the
                 history that contains everything acknowledged-durable (I2). A lost or
                 resurrected job is also a hole; "hole" alone means some other gap.

Durability barriers: in "sync" mode every enqueue/complete/fail/cancel/retry_dead that
returned is a barrier (it and everything before it must survive); in "interval"/"os" mode
only a returned flush() is. Claims are never barriers (a lost claim means a re-run).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from aurora_log.errors import AuroraLogError
from aurora_log.job import Job

SYNC_BARRIERS = {"enqueue", "complete", "fail", "cancel", "retry_dead", "flush", "compact"}
ALWAYS_BARRIERS = {"flush", "compact"}      # both fdatasync everything appended before


@dataclass
class HOp:
    idx: int
    kind: str                  # enqueue | claim | complete | fail | cancel | retry_dead | flush
    #                            | reopen (the crash harness: recovery after a crash)
    ids: tuple = ()
    invoked: int = 0
    acked: int | None = None   # point at return; None: raised or never returned
    ok: bool = False
    barrier: bool = False
    result: object = None
    error: str | None = None
    payloads: tuple = ()       # enqueue: canonical payload JSON per id
    max_retries: tuple = ()


def canon(v) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


@dataclass
class MJob:
    id: str
    payload: str
    max_retries: int
    status: str = "pending"
    retry: int = 0
    cancel_req: bool = False
    result: str | None = None


class RefModel:
    """What the queue's observable state must be after a sequence of operations."""

    def __init__(self):
        self.jobs: dict[str, MJob] = {}

    def apply(self, op: HOp):
        k = op.kind
        if k == "enqueue":
            for jid, p, mr in zip(op.ids, op.payloads, op.max_retries, strict=True):
                if jid not in self.jobs:
                    self.jobs[jid] = MJob(jid, p, mr)
        elif k == "claim":
            if op.ids:
                j = self.jobs[op.ids[0]]
                j.status, j.cancel_req = "running", False
        elif k == "complete":
            j = self.jobs[op.ids[0]]
            j.status = "completed"
            j.result = None if op.result is None else canon(op.result)
        elif k == "fail":
            return self._end(self.jobs[op.ids[0]], "failed")
        elif k == "cancel":
            j = self.jobs[op.ids[0]]
            if j.status in ("pending", "failed"):
                j.status = "cancelled"
            elif j.status == "running":
                j.cancel_req = True
        elif k == "reopen":          # recovery after a crash: the dead process's attempts
            for jid in op.ids:
                self._end(self.jobs[jid], "pending")
        elif k == "retry_dead":
            j = self.jobs[op.ids[0]]
            j.status, j.retry, j.cancel_req = "pending", 0, False
        return None

    @staticmethod
    def _end(j: MJob, retry_status: str) -> str:
        if j.cancel_req:
            j.status = "cancelled"
        elif j.retry < j.max_retries:
            j.retry += 1
            j.status = retry_status
        else:
            j.status = "dead_letter"
        return j.status

    def reopened(self) -> RefModel:
        """The state a reopen shows: running jobs were reaped ("process died")."""
        m = RefModel()
        m.jobs = {k: copy.copy(j) for k, j in self.jobs.items()}
        for j in m.jobs.values():
            if j.status == "running":
                self._end(j, "pending")
        return m

    def fingerprint(self) -> int:
        return fp_sum(_tuple(j) for j in self.jobs.values())


def _tuple(j: MJob) -> tuple:
    return (j.id, j.status, j.retry, j.payload, j.result)


def _reopened_tuple(j: MJob) -> tuple:
    if j.status != "running":
        return _tuple(j)
    j = copy.copy(j)
    RefModel._end(j, "pending")
    return _tuple(j)


_MOD = 1 << 128


def _h(t: tuple) -> int:
    return int.from_bytes(hashlib.blake2b(repr(t).encode(), digest_size=16).digest(), "little")


def fp_sum(tuples) -> int:
    """An order-free fingerprint of a set of job tuples (sum of 128-bit hashes), so a
    prefix's fingerprint updates in O(jobs touched) rather than O(all jobs)."""
    return sum(_h(t) for t in tuples) % _MOD


def queue_fingerprint(jobs) -> int:
    return fp_sum((j.id, j.status.value, j.retry_count, canon(j.payload),
                   None if j.result is None else canon(j.result)) for j in jobs)


def all_jobs(q) -> list:
    return q.list(limit=1 << 30)


class History:
    """Records operations against a real queue. `point()` gives the current crash point."""

    def __init__(self, point: Callable[[], int], mode: str = "sync"):
        self.point = point
        self.mode = mode
        self.ops: list[HOp] = []
        self.model = RefModel()

    def _run(self, kind, fn, ids=(), **extra):
        op = HOp(len(self.ops), kind, tuple(ids), invoked=self.point(), **extra)
        self.ops.append(op)
        try:
            r = fn()
        except (AuroraLogError, OSError) as e:
            op.error = f"{type(e).__name__}: {e}"
            raise
        op.acked = self.point()
        op.ok = True
        op.barrier = kind in ALWAYS_BARRIERS or (self.mode == "sync" and kind in SYNC_BARRIERS)
        return op, r

    def enqueue(self, q, jobs: list[Job]):
        ids = tuple(j.id for j in jobs)
        extra = {"payloads": tuple(canon(j.payload) for j in jobs),
                 "max_retries": tuple(j.max_retries for j in jobs)}
        fn = (lambda: q.enqueue(jobs[0])) if len(jobs) == 1 else (lambda: q.enqueue_many(jobs))
        op, _ = self._run("enqueue", fn, ids, **extra)
        self.model.apply(op)

    def enqueued(self, jobs: list[Job]) -> None:
        """Record jobs that code outside this history enqueued (a user's scenario, a handler
        enqueueing follow-ups) as one enqueue acknowledged-durable now."""
        if not jobs:
            return
        now = self.point()
        op = HOp(len(self.ops), "enqueue", tuple(j.id for j in jobs), invoked=now, acked=now,
                 ok=True, barrier=True, payloads=tuple(canon(j.payload) for j in jobs),
                 max_retries=tuple(j.max_retries for j in jobs))
        self.ops.append(op)
        self.model.apply(op)

    def reopened(self) -> None:
        """Record a reopen after a process crash (more than one crash per history): the
        jobs running then come back pending with the attempt spent, or dead-lettered.
        Recovery fdatasyncs its records before the store is open: a barrier."""
        now = self.point()
        running = tuple(j.id for j in self.model.jobs.values() if j.status == "running")
        op = HOp(len(self.ops), "reopen", running, invoked=now, acked=now, ok=True,
                 barrier=True)
        self.ops.append(op)
        self.model.apply(op)

    def claim(self, q, worker="w"):
        op = HOp(len(self.ops), "claim", (), invoked=self.point())
        self.ops.append(op)
        job = q.claim(worker)
        op.acked, op.ok = self.point(), True
        if job is not None:
            op.ids = (job.id,)
            self.model.apply(op)
        return job

    def complete(self, q, job, result):
        op, _ = self._run("complete", lambda: q.complete(job.id, job.token, result),
                          (job.id,), result=result)
        self.model.apply(op)

    def fail(self, q, job, error="boom"):
        op, st = self._run("fail", lambda: q.fail(job.id, job.token, error), (job.id,))
        want = self.model.apply(op)
        if st.value != want:
            raise AssertionError(f"fail({job.id}) returned {st.value}, model says {want}")
        return st

    def cancel(self, q, job_id):
        op, st = self._run("cancel", lambda: q.cancel(job_id), (job_id,))
        self.model.apply(op)
        return st

    def retry_dead(self, q, job_id):
        op, _ = self._run("retry_dead", lambda: q.retry_dead(job_id), (job_id,))
        self.model.apply(op)

    def flush(self, q):
        self._run("flush", q.flush)

    def compact(self, q):
        """A snapshot (retention off in these runs): changes no observable state."""
        return self._run("compact", q.compact)[1]

    # ------------------------------------------------------------------ analysis
    def prefix_fingerprints(self) -> list[int]:
        """fps[k] = fingerprint of the (reopened) model after the first k ops (ops that
        raised are left out: the power-loss runs have none)."""
        m = RefModel()
        cur: dict[str, int] = {}
        total = 0
        fps = [0]
        for op in self.ops:
            if op.ok:
                m.apply(op)
                for jid in op.ids:
                    hnew = _h(_reopened_tuple(m.jobs[jid]))
                    total = (total - cur.get(jid, 0) + hnew) % _MOD
                    cur[jid] = hnew
            fps.append(total)
        return fps


@dataclass
class Verdict:
    point: int
    lost: list = field(default_factory=list)
    phantom: list = field(default_factory=list)
    resurrected: list = field(default_factory=list)
    duplicated: list = field(default_factory=list)
    hole: bool = False
    prefix: int | None = None          # the k that matched
    required: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not (self.lost or self.phantom or self.resurrected or self.duplicated
                    or self.hole or self.error)

    def __str__(self):
        parts = [f"point {self.point}: required prefix {self.required}, matched {self.prefix}"]
        for name in ("lost", "phantom", "resurrected", "duplicated"):
            v = getattr(self, name)
            if v:
                parts.append(f"{name}={v[:5]}{'...' if len(v) > 5 else ''}")
        if self.hole:
            parts.append("HOLE (state is no prefix of the history)")
        if self.error:
            parts.append(f"error={self.error}")
        return "; ".join(parts)


class Checker:
    def __init__(self, history: History):
        self.h = history
        self.fps = history.prefix_fingerprints()
        self.by_fp: dict[int, list[int]] = {}
        for k, fp in enumerate(self.fps):
            self.by_fp.setdefault(fp, []).append(k)
        self._m, self._mk = RefModel(), 0       # _model_at's incremental model
        self.issued = {}
        for op in history.ops:
            if op.kind == "enqueue":
                for jid, p in zip(op.ids, op.payloads, strict=True):
                    self.issued[jid] = p

    def _model_at(self, k: int) -> RefModel:
        """The model after the first k ops (incremental: crash points come in order)."""
        if k < self._mk:
            self._m, self._mk = RefModel(), 0
        while self._mk < k:
            op = self.h.ops[self._mk]
            if op.ok:
                self._m.apply(op)
            self._mk += 1
        return self._m

    def bounds(self, point: int, synced: int = 0) -> tuple[int, int]:
        """(required, possible): the prefix must contain every op before the last barrier
        acknowledged by `point` and every op acknowledged by `synced` (the point at which
        the last successful fdatasync of the log STARTED: what had been written to the OS
        by then is durable, in every mode), and cannot contain ops invoked at or after
        `point`."""
        required = 0
        possible = 0
        for op in self.h.ops:
            if op.acked is not None and (op.barrier and op.acked <= point or
                                         op.ok and op.acked <= synced):
                required = op.idx + 1
            if op.invoked < point:
                possible = op.idx + 1
        return required, max(required, possible)

    def check(self, point: int, jobs, *, fp=None, synced: int = 0) -> Verdict:
        """`jobs`: the recovered queue's jobs (all_jobs(q)) at crash point `point`;
        `synced`: see bounds()."""
        required, possible = self.bounds(point, synced)
        v = Verdict(point, required=required)
        got = {j.id: j for j in jobs}
        fp = queue_fingerprint(jobs) if fp is None else fp
        req_model = self._model_at(required)
        for jid, mj in req_model.jobs.items():
            j = got.get(jid)
            if j is None:
                v.lost.append(jid)
            elif mj.status in ("completed", "cancelled") and j.status.value != mj.status:
                v.resurrected.append(jid)
        for jid, j in got.items():
            if jid not in self.issued or canon(j.payload) != self.issued[jid]:
                v.phantom.append(jid)
        ks = [k for k in self.by_fp.get(fp, ()) if required <= k <= possible]
        if ks:
            v.prefix = ks[-1]
        else:
            v.hole = True
        return v

    def drain(self, q, v: Verdict, point: int, *, clock=None, limit=100_000) -> None:
        """Claim and complete everything the recovered queue still has; record resurrected
        (a finished-acknowledged job delivered) and duplicated deliveries in `v`."""
        required, _ = self.bounds(point)
        finished = set()
        for op in self.h.ops[:required]:
            if op.kind in ("complete",) and op.ok:
                finished.add(op.ids[0])
        seen = set()
        for _ in range(limit):
            j = q.claim("drain")
            if j is None:
                break
            if j.id in finished:
                v.resurrected.append(j.id)
            if j.id in seen:
                v.duplicated.append(j.id)
            seen.add(j.id)
            q.complete(j.id, j.token, {"drained": True}, durable=False)
        st = q.stats()
        if st["pending"] or st["running"] or st["failed"]:
            v.error = (f"drain left {st['pending']} pending / {st['running']} running / "
                       f"{st['failed']} failed")
