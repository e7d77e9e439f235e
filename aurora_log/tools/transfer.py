"""Moving jobs between backends: ``copy_jobs(src, dst)`` (the ``aurora-log copy`` command).

Copies jobs with their whole history from one queue to another: a local store to
PostgreSQL, PostgreSQL to a local store (or either to its own kind). Each job arrives in the
state it had (status, retry count, due time, error, result, progress; a running job keeps
its attempt token and lease deadline, so if its worker is gone the destination's reaper
retries it), and ``history(id)`` on the destination lists the same transitions (kind, time,
worker, attempt, note) with the destination's own positions (lsn).

Into a local store, a running job is ended by the store's open-time recovery the next time
it opens ("process died": retried, or cancelled if a cancel was requested), as for any job
left running in a store that no process holds.

By default only live jobs are copied (pending, scheduled, running, waiting for a retry);
``include_finished=True`` copies completed, dead-lettered and cancelled jobs too. A job
whose id already exists in the destination is skipped (so a copy can be re-run), as is a
live job whose unique_key a different live job holds there. Copy while no worker runs on the
source, or accept that jobs finished on the source after they were copied run again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..job import Job, JobStatus, encode_json, encode_payload, to_ms

__all__ = ["CopyReport", "copy_jobs", "iter_jobs"]

_LIVE = (JobStatus.PENDING, JobStatus.RUNNING, JobStatus.FAILED)


@dataclass
class CopyReport:
    copied: int = 0
    skipped_existing: int = 0
    skipped_unique: int = 0
    skipped_ids: list = field(default_factory=list)

    def __str__(self) -> str:
        return (f"copied {self.copied} job(s); skipped {self.skipped_existing} already in the "
                f"destination, {self.skipped_unique} whose unique_key is held there")


def iter_jobs(src: Any, include_finished: bool = False, page: int = 500) -> Iterator[Job]:
    """The source's jobs in enqueue order (live ones only unless include_finished)."""
    after = None
    while True:
        batch = src.list(limit=page, after=after)
        if not batch:
            return
        for j in batch:
            if include_finished or j.status in _LIVE:
                yield j
        after = batch[-1].id


def copy_jobs(src: Any, dst: Any, *, include_finished: bool = False,
              on_progress: Callable[[int], None] | None = None) -> CopyReport:
    """Copy jobs with their history from queue ``src`` to queue ``dst`` (see the module
    docstring). Returns a CopyReport."""
    report = CopyReport()
    batch: list[tuple[Job, list]] = []

    def flush() -> None:
        if not batch:
            return
        if hasattr(dst, "import_jobs"):       # PostgresQueue: rows and history rows
            res = dst.import_jobs(batch)
        else:
            res = _import_local(dst, batch)
        for job_id, outcome in res:
            if outcome == "copied":
                report.copied += 1
            elif outcome == "exists":
                report.skipped_existing += 1
                report.skipped_ids.append(job_id)
            else:
                report.skipped_unique += 1
                report.skipped_ids.append(job_id)
        batch.clear()
        if on_progress is not None:
            on_progress(report.copied)

    for job in iter_jobs(src, include_finished):
        batch.append((job, src.history(job.id)))
        if len(batch) >= 200:
            flush()
    flush()
    return report


# ------------------------------------------------------------------ into a local store

def _reason_code(note: str | None) -> int:
    from ..local import records as R
    for code, text in R.REASON_TEXT.items():
        if text == note:
            return code
    return R.REASON_LEASE_EXPIRED


def _outcome(status: JobStatus) -> int:
    from ..local import records as R
    if status is JobStatus.DEAD_LETTER:
        return R.OUTCOME_DEAD
    if status is JobStatus.CANCELLED:
        return R.OUTCOME_CANCELLED
    return R.OUTCOME_RETRY


def _progress_of(note: str | None) -> tuple[float, str | None]:
    """A history note "50% half" back into (0.5, "half")."""
    pct, _, message = (note or "0%").partition(" ")
    try:
        fraction = min(max(int(pct.rstrip("%")) / 100, 0.0), 1.0)
    except ValueError:
        fraction = 0.0
    return fraction, message or None


def local_records(job: Job, history: list) -> list:
    """The log records that rebuild ``job`` with ``history`` in a local store."""
    from ..local import records as R
    recs: list = []
    lease_ms = round(job.lease_duration * 1000)
    timeout_ms = None if job.timeout_seconds is None else round(job.timeout_seconds * 1000)
    due_setting = [i for i, t in enumerate(history) if t.kind in ("fail", "reap", "retry_dead")]
    last_due = due_setting[-1] if due_setting else None
    claims = [i for i, t in enumerate(history) if t.kind == "claim"]
    last_progress = max((i for i, t in enumerate(history) if t.kind == "progress"), default=None)
    token = b""
    for i, t in enumerate(history):
        at = to_ms(t.at)
        if t.kind == "enqueue":
            sched = None
            if job.scheduled_at is not None and last_due is None:
                sched = to_ms(job.scheduled_at)
            recs.append(R.Enqueue(job.id, job.job_type, job.queue, int(job.priority),
                                  job.max_retries, to_ms(job.created_at), at, sched, timeout_ms,
                                  lease_ms, job.unique_key, encode_payload(job.payload)))
        elif t.kind == "claim":
            final = job.status is JobStatus.RUNNING and i == claims[-1]
            token = bytes.fromhex(job.token) if final and job.token else os.urandom(8)
            deadline = to_ms(job.lease_deadline) if final and job.lease_deadline else at + lease_ms
            recs.append(R.Claim(job.id, at, token, deadline, t.worker or "copy"))
        elif t.kind == "progress":
            if i == last_progress and job.progress is not None and t.status is JobStatus.RUNNING \
                    and job.status is JobStatus.RUNNING:
                fraction, message = float(job.progress), job.progress_message
            else:
                fraction, message = _progress_of(t.error)
            recs.append(R.Progress(job.id, at, token, fraction, message))
        elif t.kind == "complete":
            result = None if job.result is None else encode_json(job.result, "result")
            recs.append(R.Complete(job.id, at, token, result))
        elif t.kind in ("fail", "reap"):
            outcome = _outcome(t.status)
            due = 0
            if outcome == R.OUTCOME_RETRY:
                if i == last_due and job.scheduled_at is not None:
                    due = to_ms(job.scheduled_at)
                else:   # an earlier retry: due by the next claim
                    due = next((to_ms(history[c].at) for c in claims if c > i), at)
            if t.kind == "fail":
                recs.append(R.Fail(job.id, at, token, outcome, due, t.error or ""))
            else:
                recs.append(R.Reap(job.id, at, token, _reason_code(t.error), outcome, due))
        elif t.kind == "cancel":
            recs.append(R.Cancel(job.id, at))
        elif t.kind == "cancel_request":
            recs.append(R.CancelRequest(job.id, at))
        elif t.kind == "retry_dead":
            recs.append(R.RetryDead(job.id, at))
    return recs


def _import_local(q: Any, batch: list[tuple[Job, list]]) -> list[tuple[str, str]]:
    """Append each job's records to a local Queue (engine internals: the same path its
    own operations take, one atomic batch per job) and check the result."""
    out = []
    for job, history in batch:
        # the queue's decision section: its lock, and on a shared store the append lock
        # with the state caught up to every other process's records
        with q._deciding():
            q._check_open()
            state = q._state
            if job.id in state:
                out.append((job.id, "exists"))
                continue
            if job.unique_key is not None and job.status in _LIVE \
                    and state.unique_owner(job.unique_key) is not None:
                out.append((job.id, "unique"))
                continue
            anomalies = len(state.anomalies)
            q._append_apply(local_records(job, history))
            if len(state.anomalies) != anomalies:
                raise RuntimeError(f"copying job {job.id}: its history did not rebuild "
                                   f"({state.anomalies[-1][1]})")
        out.append((job.id, "copied"))
    q.flush()
    return out
