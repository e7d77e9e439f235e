"""The local store's reads (LocalReads, see readers.py): counts, a page of jobs, one job, the
workers, the files of the store, read from a local Queue. No HTML here.

The job list pages with a keyset cursor over the queue's job table, which keeps enqueue
order (a Python dict). A cursor is "position:id" of the last job shown; the next page
starts right after it. Skipping to the position is done by ``itertools.islice`` in C
(a few ms for a million jobs, no copy of the table, nothing sorted); the id confirms the
position is still right (a purge shifts it; then the id is looked up). With a filter that
matches few jobs, one request examines at most ``scan_budget`` jobs and hands back a
cursor to go on from, so every response stays short however large the store is.

This module is the one place that reads the engine's private state (``q._state`` under
``q._reading()``: the queue lock, the state caught up with every process's records): the
public ``Queue.list(after=...)`` walks from the start to find its cursor, which is fine for
a CLI but not for paging through a million jobs.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from aurora_log import Job, JobStatus, Transition
from aurora_log.local.table import JOB_HEAD, PAIR

from ...runtime.activity import ActivitySnapshot, ActivityTracker
from .readers import (
    DEFAULT_PAGE,
    DEFAULT_SCAN_BUDGET,
    JobFilter,
    JobPage,
    StorageTable,
    StorageView,
    StoreReads,
    WorkerInfo,
    group_by_worker,
)

__all__ = [
    "DEFAULT_PAGE",
    "JobFilter",
    "JobPage",
    "LocalReads",
    "StorageInfo",
    "WorkerInfo",
    "job_detail",
    "job_page",
    "parse_cursor",
    "storage_info",
    "workers",
]

# a job's blob in the state (local/table.py): the (queue, job_type) pair index is the u32
# at JOB_HEAD's PAIR field, read alone (one field per job on a scan of a million)
_PAIR_AT = struct.calcsize(JOB_HEAD.format[:1 + PAIR])
_U32 = struct.Struct("<I")
_PENDING = JobStatus.PENDING.code
# records one request folds in before answering (the poller does the rest)
REQUEST_CATCH_UP = 20_000


def parse_cursor(text: str | None) -> tuple[int, str] | None:
    """"pos:id" -> (pos, id); ValueError for anything else."""
    if not text:
        return None
    pos, sep, job_id = text.partition(":")
    if not sep or not pos.isdigit() or not job_id:
        raise ValueError(f"malformed cursor {text!r}")
    return int(pos), job_id


def _seek(jobs: Any, cursor: tuple[int, str] | None) -> tuple[int, Iterator]:
    """(position, an iterator of the (id, value) items from there): the items just after
    the cursor's job. The skip is itertools' C loop: no copy, nothing sorted."""
    it = iter(jobs.items())
    if cursor is None:
        return 0, it
    pos, job_id = cursor
    if pos < len(jobs):
        next(itertools.islice(it, pos, pos), None)        # advance pos items
        at = next(it, None)
        if at is not None and at[0] == job_id:
            return pos + 1, it
    # the table shifted (a purge) or the cursor is stale: find the id (C speed)
    if job_id in jobs:
        start = list(jobs).index(job_id) + 1
    else:
        start = min(pos + 1, len(jobs))   # the job itself was purged: close enough
    it = iter(jobs.items())
    next(itertools.islice(it, start, start), None)
    return start, it


def _pairs_matching(state: Any, flt: JobFilter) -> set[int] | None:
    if flt.queue is None and flt.job_type is None:
        return None
    return {i for i, (q, t) in enumerate(state.pairs)
            if (flt.queue is None or q == flt.queue)
            and (flt.job_type is None or t == flt.job_type)}


def _matches(items: Iterator, code: int | None, pairs: set[int] | None) -> Iterator[tuple]:
    """(index offset, id, value) of the items that pass the filter."""
    unpack = _U32.unpack_from
    for n, (job_id, v) in enumerate(items):
        if type(v) is bytes:                       # enqueued, never touched: pending
            if code is not None and code != _PENDING:
                continue
            blob = v
        else:
            if code is not None and v.status != code:
                continue
            blob = v.blob
        if pairs is not None and unpack(blob, _PAIR_AT)[0] not in pairs:
            continue
        yield n, job_id, v


def job_page(q: Any, flt: JobFilter | None = None, *, cursor: tuple[int, str] | None = None,
             limit: int = DEFAULT_PAGE, scan_budget: int = DEFAULT_SCAN_BUDGET) -> JobPage:
    """One page of jobs in enqueue order, after ``cursor``."""
    flt = flt if flt is not None else JobFilter()
    if limit < 1 or scan_budget < 1:
        raise ValueError("limit and scan_budget must be >= 1")
    code = flt.status.code if flt.status is not None else None
    with q._reading():     # the lock, the state caught up with every process
        state = q._state
        jobs = state.jobs
        total = len(jobs)
        pairs = _pairs_matching(state, flt)
        if pairs is not None and not pairs:
            return JobPage([], None, 0, total, total)
        start, items = _seek(jobs, cursor)
        window = itertools.islice(items, scan_budget)
        shown: list[tuple[int, str, Any]] = []
        more = False
        for n, job_id, v in _matches(window, code, pairs):
            if len(shown) == limit:           # a match beyond the page: there is a next one
                more = True
                break
            shown.append((start + n, job_id, v))
        page = [state.get(job_id) for _, job_id, v in shown]
        end = min(start + scan_budget, total)  # where an exhausted scan stopped
        next_cursor = None
        budget_hit = False
        if more:
            pos, job_id, _ = shown[-1]
            next_cursor = f"{pos}:{job_id}"
            end = pos + 1
        elif end < total:                      # the budget ran out before the table did
            budget_hit = True
            last_id = next(itertools.islice(iter(jobs), end - 1, None))  # C-speed skip
            next_cursor = f"{end - 1}:{last_id}"
    return JobPage(page, next_cursor, end - start, end, total, budget_hit)


def job_detail(q: Any, job_id: str) -> tuple[Job, list[Transition]] | None:
    """The job and its every transition, or None if the store has no such job."""
    job = q.get(job_id)
    if job is None:
        return None
    return job, q.history(job_id)


def workers(q: Any) -> list[WorkerInfo]:
    """The workers that hold a job right now (from the running jobs' leases)."""
    with q._reading():     # the lock, the state caught up with every process
        ids = sorted(q._state.running_ids())
    running = [job for job in map(q.get, ids)
               if job is not None and job.status is JobStatus.RUNNING]
    return group_by_worker(running)


@dataclass
class FileInfo:
    name: str
    size: int
    modified: datetime


@dataclass
class StorageInfo:
    path: str
    segments: list[FileInfo]
    snapshots: list[FileInfo]
    archived: int
    wal_bytes: int
    last_compaction: datetime | None
    first_lsn: int
    next_lsn: int
    writer: dict[str, int]


def _files(directory: Path, suffix: str) -> list[FileInfo]:
    out = []
    try:
        with os.scandir(directory) as it:
            for e in it:
                if e.name.endswith(suffix) and e.is_file():
                    st = e.stat()
                    out.append(FileInfo(e.name, st.st_size,
                                        datetime.fromtimestamp(st.st_mtime).astimezone()))
    except FileNotFoundError:
        pass
    return sorted(out, key=lambda f: f.name)


def wal_bytes(path: Path) -> int:
    """Bytes of the WAL segment files (allocated size: segments are preallocated)."""
    return sum(f.size for f in _files(path / "wal", ".seg"))


def storage_info(q: Any) -> StorageInfo:
    path = Path(q.path)
    segs = _files(path / "wal", ".seg")
    snaps = _files(path / "snap", ".snap")
    archived = len(_files(path / "archive" / "wal", ".seg"))
    log = q.log
    return StorageInfo(str(path), segs, snaps, archived, sum(s.size for s in segs),
                       snaps[-1].modified if snaps else None, log.first_lsn, log.next_lsn,
                       log.stats())


class LocalReads(StoreReads):
    """The reads of a local store: its state table, its files, and its log's records
    folded by an ActivityTracker."""

    can_verify = True

    def __init__(self, get_queue: Any) -> None:
        super().__init__(get_queue)
        self.tracker = ActivityTracker()

    def catch_up(self, max_records: int | None = None, *, wait: bool = True) -> None:
        self.tracker.catch_up(self.get_queue(), max_records, wait=wait)

    def activity(self) -> ActivitySnapshot:
        # fold in a bounded number of new records first (the poller does the rest): keeps
        # the first overview of a big store fast
        self.tracker.catch_up(self.get_queue(), REQUEST_CATCH_UP, wait=False)
        return self.tracker.snapshot()

    def job_page(self, flt: JobFilter, cursor: str | None, limit: int) -> JobPage:
        page = job_page(self.get_queue(), flt, cursor=parse_cursor(cursor), limit=limit)
        page.note = (f"looked at jobs up to #{page.position:,} of {page.total:,} "
                     "(enqueue order)")
        return page

    def workers(self) -> list[WorkerInfo]:
        return workers(self.get_queue())

    def storage(self) -> StorageView:
        info = storage_info(self.get_queue())

        def files(table_id: str, title: str, items: list[FileInfo], when: str,
                  empty: str) -> StorageTable:
            return StorageTable(table_id, title, ["File", "bytes", when],
                                [[f.name, f.size, f.modified] for f in items], empty, {1})

        tables = [files("segments", "Segments", info.segments, "modified", ""),
                  files("snapshots", "Snapshots", info.snapshots, "written",
                        "No snapshot yet (the store replays its whole log on open).")]
        if info.writer:
            tables.append(StorageTable("writer", "Log writer (this process)", ["", ""],
                                       [[k, v] for k, v in info.writer.items()], "", {1}))
        notes = [f"{info.archived} archived segment(s) in archive/wal."] if info.archived \
            else []
        return StorageView(
            cards=[("wal-bytes", info.wal_bytes, f"WAL bytes ({len(info.segments)} segment(s))"),
                   ("snapshot-count", len(info.snapshots), "snapshots"),
                   ("lsn-range", f"{info.first_lsn}…{info.next_lsn - 1}", "LSNs in the WAL"),
                   ("last-compaction", info.last_compaction,
                    "last compaction (newest snapshot)")],
            tables=tables, notes=notes, can_verify=True)
