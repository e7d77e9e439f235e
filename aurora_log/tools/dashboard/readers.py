"""The read interface the pages use, and the shapes it answers in.

One implementation per store: reads.LocalReads (the local engine: its state table and its
log) and pg_reads.PostgresReads (SQL on the schema's tables). The pages and templates are
shared and never ask which store they show; what differs between the stores lives behind
these methods (how a page of jobs is found, where the last hour's activity is read from,
what the storage page can say).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aurora_log import Job, JobStatus, Transition

from ...runtime.activity import ActivitySnapshot

__all__ = [
    "DEFAULT_PAGE",
    "DEFAULT_SCAN_BUDGET",
    "JobFilter",
    "JobPage",
    "QueueRow",
    "StorageTable",
    "StorageView",
    "StoreReads",
    "WorkerInfo",
    "queue_rows",
]

DEFAULT_PAGE = 50
DEFAULT_SCAN_BUDGET = 100_000   # jobs (local) or enqueue positions (PostgreSQL) per request


@dataclass(frozen=True)
class JobFilter:
    status: JobStatus | None = None
    queue: str | None = None
    job_type: str | None = None

    @property
    def active(self) -> bool:
        return self.status is not None or self.queue is not None or self.job_type is not None


@dataclass
class JobPage:
    jobs: list[Job]
    next_cursor: str | None        # None: nothing after this page
    examined: int                  # jobs (or positions) looked at for this page
    position: int                  # where the scan stopped, in enqueue order
    total: int                     # jobs in the table (local) / the newest position (PG)
    budget_hit: bool = False       # stopped by the scan budget before the page was full
    note: str = ""                 # where the scan got to, in the store's own terms


@dataclass
class QueueRow:
    name: str
    depth: int          # waiting to run: pending + failed (retry scheduled)
    running: int
    counts: dict[str, int]


def queue_rows(stats: dict) -> list[QueueRow]:
    """One row per queue, from a ``stats()`` answer (pause and concurrency limits do not
    exist in either engine yet)."""
    return [QueueRow(name, c["pending"] + c["failed"], c["running"], c)
            for name, c in stats["queues"].items()]


@dataclass
class WorkerInfo:
    worker_id: str
    jobs: list[Job] = field(default_factory=list)

    @property
    def last_heartbeat(self) -> datetime | None:
        beats = [b for b in (j.last_heartbeat or j.started_at for j in self.jobs)
                 if b is not None]
        return max(beats) if beats else None


def group_by_worker(jobs: list[Job]) -> list[WorkerInfo]:
    """Running jobs grouped by the worker that holds them, workers sorted by id."""
    by_worker: dict[str, WorkerInfo] = {}
    for job in jobs:
        wid = job.worker_id or "?"
        by_worker.setdefault(wid, WorkerInfo(wid)).jobs.append(job)
    return sorted(by_worker.values(), key=lambda w: w.worker_id)


@dataclass
class StorageTable:
    id: str                        # the HTML id (tests and the browser test find it)
    title: str
    headers: list[str]
    rows: list[list[Any]]          # cells: str, int (shown with separators), datetime
    empty: str = ""                # shown when there are no rows
    numeric: set[int] = field(default_factory=set)   # columns aligned right


@dataclass
class StorageView:
    """What the storage page shows: cards (id, value, label), tables, notes."""
    cards: list[tuple[str, Any, str]]
    tables: list[StorageTable]
    notes: list[str] = field(default_factory=list)
    can_verify: bool = False       # verify() exists for the local store only


class StoreReads(abc.ABC):
    """Everything the pages read. ``get_queue()`` is called on every read: a directory
    source swaps its queue when it reopens the store."""

    #: the tracker whose totals /metrics exports (runtime.metrics.QueueCollector)
    tracker: Any
    #: whether the store has a verify() run (the storage page's button)
    can_verify: bool = False

    def __init__(self, get_queue: Callable[[], Any]) -> None:
        self.get_queue = get_queue

    def stats(self) -> dict:
        return self.get_queue().stats()

    def refresh(self, *, force: bool = False) -> None:
        """The poller's turn (and after an action, ``force``): re-read what the store
        keeps cached. The local store's reads need nothing here."""
        return None

    @abc.abstractmethod
    def catch_up(self, max_records: int | None = None, *, wait: bool = True) -> None:
        """Fold what the store recorded since the last call into the tracker."""

    @abc.abstractmethod
    def activity(self) -> ActivitySnapshot:
        """The last hour, minute by minute, and wait/run time percentiles."""

    @abc.abstractmethod
    def job_page(self, flt: JobFilter, cursor: str | None, limit: int) -> JobPage:
        """One page of jobs in enqueue order after ``cursor`` (a JobPage.next_cursor);
        ValueError for a cursor this store did not hand out."""

    def queue_names(self) -> list[str]:
        """The queues to offer in the job list's filter."""
        return sorted(self.stats()["queues"])

    def job_detail(self, job_id: str) -> tuple[Job, list[Transition]] | None:
        """The job and its every transition, or None if the store has no such job."""
        q = self.get_queue()
        job = q.get(job_id)
        if job is None:
            return None
        return job, q.history(job_id)

    def queue_rows(self) -> list[QueueRow]:
        return queue_rows(self.stats())

    @abc.abstractmethod
    def workers(self) -> list[WorkerInfo]:
        """The workers holding a job now (from the running jobs' leases)."""

    @abc.abstractmethod
    def storage(self) -> StorageView:
        """What the storage page says about where the jobs live."""
