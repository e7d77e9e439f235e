"""Snapshot files: recovery from them, time travel, compaction (retention, retirement).

The byte format is in native/FORMAT.md ("Snapshot format") and its code in snapfile.py.
In short:

    DIR/snap/<20-digit lsn>.snap   64-byte header (magic, version, LSN, item count, body
                                   length, content length, max record time, body crc, header
                                   crc) + an lz4 frame (content size + content checksum on).
                                   Version 2 (written): a JSON meta, then sections: the
                                   never-touched pending jobs column-wise (ids, as 16 raw
                                   bytes when they are UUIDs; byte planes of their 52-byte
                                   heads; tails) and their claim order as
                                   runs of ranks, then every other job as an export item.
                                   Version 1 (still read): the state export's items, a u32
                                   length table then the items back to back.

A version 2 load builds no object per pending job (snapfile's decoder checks the structure
with bulk operations, ``State.load_split`` makes a state whose job table is lazy), so
reopen + first claim does not grow with the number of pending jobs beyond reading and
decompressing the file.

Recovery (``recover``) = the newest valid snapshot + the log after its LSN. A snapshot that
fails any check is reported, moved aside as ``<name>.broken`` (writable opens only) and the
previous one (and a longer replay) is used. With none usable and the log no longer starting
at LSN 1: CorruptionError naming the files -- never an empty queue by accident.

Compaction (``Compactor.compact``) never holds the queue lock for more than a dictionary
copy plus the jobs touched while it ran (``_capture_start``, ``_capture_finish``): the
export, the compression and the write run outside it. Then: keep the two newest
snapshots; retire WAL segments that the OLDER kept snapshot covers (so falling back to it
still finds its WAL tail); with ``archive=True`` retired segments go to DIR/archive/wal/
and retired snapshots to DIR/archive/snap/ (a layout ``Log.open(DIR/archive,
read_only=True, continued=True)`` reads), which ``state_as_of`` uses for time travel.

History beyond compaction (the choice): a snapshot carries each retained job's whole
transition list (``Rec.hist``, part of the state export), so ``history(job_id)`` keeps
working after the job's records have left the WAL, for as long as retention keeps the job
(completed/cancelled: 24 h or the newest 100,000 by default; dead letters until purged).
A purged job's history, and the state at any past moment, need ``archive=True``: retired
segments and snapshots are then kept under DIR/archive/ and ``state_as_of`` (``open(path,
as_of=..., read_only=True)``) replays them. Without an archive, the past before the older
kept snapshot is gone by design.

The Compactor works on a *host* (the Queue passes one in) through ``CompactionHost``: the
log, the clock, the live state under the queue's lock, a way to note the jobs touched while a
capture runs, and appending (purge) records. Every file operation goes through log.py's
helpers (the C core's syscall table), so fault injection and the power-loss recorder see
them. The file format (bytes <-> State) is snapfile.py's; the replay after a snapshot is
replay.py's.
"""

from __future__ import annotations

import fcntl
import gc
import re
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

from . import records as R
from ..errors import ClosedError, CorruptionError, LockedError
from .log import (SEG_RE, Log, is_file, make_dirs, read_file, read_file_buffer, remove_file,
                  write_file_durably)
from .replay import replay
from .snapfile import (DEFAULT_MAX_CONTENT, HEADER, MAGIC, READ_VERSIONS, SNAP_RE, VERSION,
                       SnapshotInfo, SnapshotProblem, decode_snapshot, encode_snapshot,
                       StateView, encode_state, procs_export, read_header)
from .state import State
from .table import CANCELLED, COMPLETED, LSN, Rec, blob_of, unpack_head

__all__ = [
    "MAGIC", "VERSION", "HEADER", "SnapshotInfo", "SnapshotProblem", "LoadResult",
    "CompactionResult", "Compactor", "encode_snapshot", "decode_snapshot", "read_header",
    "write_snapshot", "load_snapshot", "list_snapshots", "recover", "state_as_of",
    "DEFAULT_MAX_CONTENT", "encode_state", "READ_VERSIONS",
]

_RETAINED = (COMPLETED, CANCELLED)  # retention applies (dead letters wait for a purge)
# a snapshot being written, or one being set aside as broken: never used, removed at open
_SNAP_TMP = re.compile(r"[0-9]{20}\.snap(\.broken)?\.tmp")


def snap_name(lsn: int) -> str:
    return f"{lsn:020d}.snap"



# --------------------------------------------------------------------------- files

def list_snapshots(snap_dir) -> list[tuple[int, Path]]:
    """(lsn, path) of DIR/snap/*.snap, oldest first."""
    out = []
    try:
        names = os.listdir(snap_dir)
    except FileNotFoundError:
        return []
    for name in names:
        m = SNAP_RE.fullmatch(name)
        if m:
            path = Path(snap_dir) / name
            if not is_file(path):
                raise CorruptionError("named like a snapshot but not a regular file",
                                      file=str(path))
            out.append((int(m.group(1)), path))
    out.sort()
    return out


def write_snapshot(snap_dir, data: bytes, lsn: int) -> Path:
    """tmp (0600) -> write -> fsync -> rename -> fsync dir, through the syscall table."""
    snap_dir = Path(snap_dir)
    _ensure_dir(snap_dir)
    path = snap_dir / snap_name(lsn)
    write_file_durably(path, data)
    return path


def _ensure_dir(d: Path) -> None:
    make_dirs(d)    # 0700, through the syscall table, each new directory fsynced in its parent


def load_snapshot(path, *, max_content: int = DEFAULT_MAX_CONTENT) -> tuple[SnapshotInfo, State]:
    path = str(path)
    # A bulk load allocates millions of container objects that all survive: pause the
    # cyclic GC meanwhile (each pass would traverse everything loaded so far).
    enabled = gc.isenabled()
    gc.disable()
    try:
        return decode_snapshot(read_file_buffer(path), path, max_content=max_content)
    finally:
        if enabled:
            gc.enable()


def _move(src: Path, dest: Path) -> None:
    """Move a file durably through the syscall table (copy + remove: snapshots only move
    when they are retired into the archive or set aside as broken, both rare)."""
    _ensure_dir(dest.parent)
    write_file_durably(dest, read_file(src))
    remove_file(src)


# --------------------------------------------------------------------------- recovery

@dataclass
class LoadResult:
    state: State | None                # None: replay the log from its start
    lsn: int = 0                       # the snapshot's LSN (0 = none)
    path: str | None = None
    size: int = 0
    max_at_ms: int = -1
    problems: list[SnapshotProblem] = field(default_factory=list)
    removed_tmp: list[str] = field(default_factory=list)


def check_log_present(directory) -> None:
    """CorruptionError, before anything is opened or written, when DIR/snap holds
    snapshots but DIR/wal is missing or holds no segment: the store lost its log (a
    snapshot is only ever written after its log), and opening it would start empty."""
    directory = Path(directory)
    snaps = list_snapshots(directory / "snap")
    if not snaps:
        return
    wal = directory / "wal"
    try:
        names = os.listdir(wal)
    except FileNotFoundError:
        names = None
    if names is not None and any(SEG_RE.fullmatch(n) for n in names):
        return
    what = f"{wal} is missing" if names is None else f"{wal} holds no segment"
    raise CorruptionError(
        f"{what}, but {directory / 'snap'} holds {len(snaps)} snapshot(s) (newest "
        f"{snaps[-1][1].name}): the log was lost; the snapshots were left in place",
        file=str(wal))


def recover(directory, log_first_lsn: int, log_next_lsn: int, *, read_only: bool = False,
            max_content: int = DEFAULT_MAX_CONTENT) -> LoadResult:
    """Pick the newest usable snapshot for a log holding [log_first_lsn, log_next_lsn).
    Usable: passes every check and first_lsn <= lsn + 1 <= next_lsn. Bad ones are reported
    (and, unless read_only, moved aside as <name>.broken). CorruptionError if none is usable
    and the log does not start at LSN 1."""
    snap_dir = Path(directory) / "snap"
    res = LoadResult(None)
    if not read_only and snap_dir.is_dir():
        for name in os.listdir(snap_dir):
            # a snapshot being written, or one being set aside as .broken: never used;
            # only regular files (we never make anything else by these names)
            if _SNAP_TMP.fullmatch(name) and is_file(snap_dir / name):
                remove_file(snap_dir / name)
                res.removed_tmp.append(name)
    for lsn, path in reversed(list_snapshots(snap_dir)):
        problem = None
        if lsn + 1 < log_first_lsn:
            # older than the WAL we still have; not damaged, just not usable
            res.problems.append(SnapshotProblem(
                str(path), f"snapshot LSN {lsn} is older than the log's first LSN "
                f"{log_first_lsn}", lsn=lsn))
            continue
        else:
            try:
                info, state = load_snapshot(path, max_content=max_content)
                if info.lsn != lsn:
                    raise CorruptionError(f"snapshot header LSN {info.lsn} does not match "
                                          "its name", file=str(path), offset=16)
            except CorruptionError as e:
                problem = SnapshotProblem(str(path), e.reason, e.offset, lsn)
            except OSError as e:
                # an I/O error says nothing about the bytes: fall back, but leave it in place
                res.problems.append(SnapshotProblem(str(path), f"unreadable: {e}", None, lsn))
                continue
            else:
                if lsn + 1 > log_next_lsn:
                    # the log was fdatasynced through `lsn` before this snapshot was
                    # written, so a log that ends earlier lost durable records: refuse,
                    # and leave the (valid) snapshot where it is
                    raise CorruptionError(
                        f"the log ends at LSN {log_next_lsn - 1} but the valid snapshot "
                        f"{path.name} holds the state through LSN {lsn}: the log lost "
                        "records that were durable", file=str(path), lsn=log_next_lsn)
                res.state, res.lsn, res.path = state, lsn, str(path)
                res.size, res.max_at_ms = info.size, info.max_at_ms
                return res
        if not read_only:
            dest = path.with_name(path.name + ".broken")
            try:
                _move(path, dest)
                problem = SnapshotProblem(problem.file, problem.reason, problem.offset,
                                          problem.lsn, str(dest))
            except OSError:
                pass
        res.problems.append(problem)
    if log_first_lsn > 1:
        files = "; ".join(str(p) for p in res.problems) or "no snapshot files"
        raise CorruptionError(
            f"no usable snapshot and the log starts at LSN {log_first_lsn}, not 1 "
            f"({files})", file=str(snap_dir), lsn=log_first_lsn)
    return res


# --------------------------------------------------------------------------- compaction

def _clone(r: Rec) -> Rec:
    c = Rec.__new__(Rec)
    for s in _SLOTS:
        setattr(c, s, getattr(r, s))
    c.hist = list(r.hist)
    return c


_SLOTS = Rec.__slots__


class CompactionHost(Protocol):
    """What a Compactor needs of the queue it compacts (the queue passes one in)."""

    @property
    def log(self) -> Log:
        """The queue's log: stats, flush, retire_segments_before, failed."""

    @property
    def closed(self) -> bool:
        """The queue is closed (the compactor stops)."""

    def now_ms(self) -> int:
        """The queue's clock, in ms."""

    def locked(self) -> AbstractContextManager[State]:
        """Hold the queue's lock; the live state."""

    def track_touched(self) -> None:
        """Lock held: from now on note the id of every job a record touches."""

    def untrack_touched(self) -> dict[str, None]:
        """Lock held: stop noting; the ids noted since track_touched, in order ({} if
        it was not noting)."""

    def append_apply(self, recs: list[R.Record]) -> int:
        """Lock held: append records (one atomic batch) and fold them; the last LSN."""

    def max_at_ms(self) -> int:
        """Lock held: the largest record time applied so far (the snapshot header's)."""


@dataclass
class CompactionResult:
    lsn: int
    path: str
    jobs: int
    bytes: int
    purged: int
    removed_snapshots: list[str]
    retired_segments: list[str]
    pause_ms: float            # longest time the queue lock was held by this compaction
    seconds: float


class Compactor:
    """Snapshots, retention and retirement for one Queue (the host)."""

    def __init__(self, host: CompactionHost, directory, *, archive: bool = False, keep: int = 2,
                 retain_seconds: float | None = 24 * 3600, retain_count: int | None = 100_000,
                 wal_bytes: int | None = 64 << 20, factor: float | None = 4.0,
                 min_bytes: int = 1 << 20, max_content: int = DEFAULT_MAX_CONTENT):
        if keep < 2:
            raise ValueError("keep must be >= 2 (the older snapshot is the fallback)")
        self.host: CompactionHost | None = host
        self.dir = Path(directory)
        self.snap_dir = self.dir / "snap"
        self.archive = archive
        self.keep = keep
        self.retain_ms = None if retain_seconds is None else round(retain_seconds * 1000)
        self.retain_count = retain_count
        self.wal_bytes = wal_bytes
        self.factor = factor
        self.min_bytes = min_bytes
        self.max_content = max_content
        self._mutex = threading.Lock()
        self.progress_every = 50_000   # jobs between on_progress calls
        self.last_size = 0          # bytes of the newest snapshot
        self._wal_base = 0          # log bytes written at the last snapshot
        self.tail_bytes = 0         # WAL bytes replayed at open (after the snapshot)
        self.last_result: CompactionResult | None = None
        self.last_error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lock_path: Path | None = None   # shared mode: DIR/compact.lock

    # ---------------------------------------------------------------- trigger
    def wal_since(self) -> int:
        st = self._host().log.stats()
        return self.tail_bytes + st.get("bytes", 0) - self._wal_base

    def due(self) -> bool:
        """The WAL since the last snapshot is over ``wal_bytes``, or over ``factor`` x the
        last snapshot's size (and at least ``min_bytes``, so a tiny state does not compact
        on every few records)."""
        since = self.wal_since()
        if self.wal_bytes is not None and since >= self.wal_bytes:
            return True
        if self.factor is not None and since >= self.min_bytes and \
                since >= self.factor * max(self.last_size, 1):
            return True
        return False

    def start(self, interval: float = 0.5) -> None:
        if self.wal_bytes is None and self.factor is None:
            return
        self._thread = threading.Thread(target=self._loop, args=(interval,),
                                        name="aurora-log-compactor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the trigger thread (waits for a compaction in progress) and drop the host:
        Queue <-> Compactor is a reference cycle, and a closed queue's state (millions of
        objects) should be freed at once, not at the next full GC pass."""
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join()
        with self._mutex:
            self.host = None

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                if self.due():
                    self.compact(wait=False)
            except LockedError:
                pass        # another process is compacting now: its snapshot will do
            except Exception as e:  # noqa: BLE001 - keep it for the owner; stop on a failed log
                self.last_error = e
                host = self.host
                if host is None or host.closed or host.log.failed:
                    return

    # ---------------------------------------------------------------- compaction
    def compact(self, on_progress: Callable[[int, int], None] | None = None, *,
                wait: bool = True) -> CompactionResult:
        """Compact now. On a shared store one process compacts at a time: ``wait`` (an
        explicit compaction) waits for another process's compaction to end, then runs;
        ``wait=False`` (the background trigger) raises LockedError instead."""
        with self._mutex:
            if self.host is None:
                raise ClosedError("the queue is closed")
            if self.lock_path is None:
                return self._compact(on_progress)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0),
                         0o600)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if not wait:
                            raise LockedError("another process is compacting this store "
                                              "now") from None
                    # a compactor's death releases its lock: this wait is bounded by
                    # the other compaction; a close() of this queue ends it
                    if self.host.closed:
                        raise ClosedError("the queue is closed")
                    time.sleep(0.02)
                return self._compact(on_progress)
            finally:
                os.close(fd)

    def _host(self) -> CompactionHost:
        host = self.host
        if host is None:
            raise ClosedError("the queue is closed")
        return host

    def _compact(self, on_progress: Callable[[int, int], None] | None) -> CompactionResult:
        t0 = time.perf_counter()
        host = self._host()
        pauses: list[float] = []
        # a lazily loaded state (version 2 snapshot) is materialised by the copy under the
        # lock below; its bulk (pure, from immutable snapshot bytes) is built here, outside
        with host.locked() as st:
            jobs = st.jobs
        prebuild = getattr(jobs, "prebuild", None)
        if prebuild is not None:
            prebuild()
        view, lsn0 = self._capture_start(pauses)
        try:
            # outside the lock: detach every mutable record of the copy (racy reads are
            # fixed up below: any job touched since the copy is re-read under the lock)
            for jid, v in view.items():
                if type(v) is not bytes:
                    view[jid] = _clone(v)
            now = host.now_ms()
            purge_ids = self._retention(view, now)
        except BaseException:
            with host.locked():
                host.untrack_touched()
            raise
        vstate, max_at, purged = self._capture_finish(view, lsn0, purge_ids, now, pauses)
        lsn = vstate.last_lsn
        wal_mark = host.log.stats().get("bytes", 0)
        host.log.flush()             # every record <= lsn durable before the snapshot is
        total = len(vstate.jobs) + 1
        path = self.snap_dir / snap_name(lsn)
        if path.exists():
            # nothing was logged since that snapshot (written by us or checked at open)
            size = path.stat().st_size
        else:
            data = encode_state(vstate, lsn, max_at, on_progress=on_progress,
                                every=self.progress_every)
            size = len(data)
            path = write_snapshot(self.snap_dir, data, lsn)
            del data
        del vstate, view
        self.last_size = size
        self._wal_base = wal_mark
        self.tail_bytes = 0
        if on_progress is not None:
            on_progress(total, total)
        removed, retired = self._retire()
        res = CompactionResult(lsn, str(path), total - 1, size, purged, removed, retired,
                               max(pauses) * 1000 if pauses else 0.0,
                               time.perf_counter() - t0)
        self.last_result = res
        return res

    def _capture_start(self, pauses: list[float]) -> tuple[dict, int]:
        host = self._host()
        with host.locked() as st:
            t = time.perf_counter()
            if host.closed:
                raise ClosedError("the queue is closed")
            view = st.jobs.copy()
            lsn0 = st.last_lsn
            host.track_touched()
            pauses.append(time.perf_counter() - t)
        return view, lsn0

    def _capture_finish(self, view: dict, lsn0: int, purge_ids: dict, now: int,
                        pauses: list[float]) -> tuple[StateView, int, int]:
        """Under the lock: apply retention (PURGE records) and re-read every job touched
        since the copy. Returns the view to encode, the max record time and how many were
        purged."""
        host = self._host()
        purged = 0
        with host.locked() as st:
            t = time.perf_counter()
            try:
                jobs = st.jobs
                if purge_ids:
                    # still finished the same way (a re-driven and re-finished job is not)
                    ids = []
                    for i, (status, done) in purge_ids.items():
                        v = jobs.get(i)
                        if type(v) is Rec and v.status == status and v.completed == done:
                            ids.append(i)
                    for k in range(0, len(ids), 50_000):
                        host.append_apply([R.Purge(now, tuple(ids[k:k + 50_000]))])
                    purged = len(ids)
                touched = host.untrack_touched()
                new = []
                for jid in touched:
                    v = jobs.get(jid)
                    if v is None:
                        view.pop(jid, None)
                        continue
                    c = _clone(v) if type(v) is Rec else v
                    blob = blob_of(v)
                    enqueued = unpack_head(blob)[LSN]
                    if enqueued > lsn0:               # enqueued after the copy
                        view.pop(jid, None)
                        new.append((enqueued, jid, c))
                    else:
                        view[jid] = c
                new.sort()
                for _, jid, c in new:
                    view[jid] = c
                vs = StateView(view, list(st.pairs), st.last_lsn, st.applied,
                               st.control.export(), procs_export(st))
                max_at = host.max_at_ms()
            finally:
                host.untrack_touched()
                pauses.append(time.perf_counter() - t)
        return vs, max_at, purged

    def _retention(self, view, now: int) -> dict[str, tuple[int, int]]:
        """Finished jobs past their limit: completed/cancelled that finished before
        now - retain_seconds, and beyond the newest retain_count of them (oldest finish
        first, ties in enqueue order). Dead letters stay until purged.
        Returns {id: (status, finished_ms)} as seen in the capture."""
        if self.retain_ms is None and self.retain_count is None:
            return {}
        fin = []
        for i, (jid, v) in enumerate(view.items()):
            if type(v) is not bytes and v.status in _RETAINED:
                fin.append((v.completed, i, jid, v.status))
        out = {}
        if self.retain_ms is not None:
            cut = now - self.retain_ms
            out = {jid: (st, c) for c, _, jid, st in fin if c < cut}
            fin = [f for f in fin if f[0] >= cut]
        if self.retain_count is not None and len(fin) > self.retain_count:
            fin.sort()
            out.update((jid, (st, c)) for c, _, jid, st in fin[:len(fin) - self.retain_count])
        return out

    def _retire(self) -> tuple[list[str], list[str]]:
        """Keep the newest ``keep`` snapshots; retire WAL segments the OLDEST kept snapshot
        covers (all its records <= that LSN)."""
        snaps = list_snapshots(self.snap_dir)
        removed = []
        for _, path in snaps[:-self.keep]:
            if self.archive:
                _move(path, self.dir / "archive" / "snap" / path.name)
            else:
                remove_file(path)
            removed.append(str(path))
        kept = snaps[-self.keep:]
        retired = []
        if len(kept) >= 2:
            adir = self.dir / "archive" / "wal" if self.archive else None
            retired = [str(p) for p in self._host().log.retire_segments_before(
                kept[0][0] + 1, archive_dir=adir)]
        return removed, retired


# --------------------------------------------------------------------------- time travel

def state_as_of(directory, target, *, max_content: int = DEFAULT_MAX_CONTENT
                ) -> tuple[State, dict]:
    """The state as of ``target``: an int LSN (state after that record) or a datetime
    (state after every record up to, not including, the first record later than it).
    Uses the newest valid snapshot at or before the target (DIR/snap and DIR/archive/snap)
    and the records after it (DIR/archive/wal then DIR/wal). Reads only."""
    from ..job import to_ms

    directory = Path(directory)
    if isinstance(target, datetime):
        t_ms = to_ms(target, "as_of")
        t_lsn = None
    elif isinstance(target, int) and not isinstance(target, bool) and target >= 0:
        t_ms, t_lsn = None, target
    else:
        raise TypeError("as_of must be a datetime or an LSN (int >= 0)")
    snaps = list_snapshots(directory / "snap") + list_snapshots(directory / "archive" / "snap")
    snaps.sort(reverse=True)
    problems = []
    base, base_lsn = None, 0
    for lsn, path in snaps:
        if t_lsn is not None and lsn > t_lsn:
            continue
        try:
            info, st = load_snapshot(path, max_content=max_content)
        except (CorruptionError, OSError) as e:
            problems.append(f"{path}: {e}")
            continue
        if t_ms is not None and info.max_at_ms > t_ms:
            continue
        base, base_lsn = st, lsn
        break
    logs = []
    if (directory / "archive" / "wal").is_dir():
        logs.append(Log.open(directory / "archive", read_only=True, continued=True))
    logs.append(Log.open(directory, read_only=True))
    try:
        state = replay(logs, base, base_lsn, until_lsn=t_lsn, until_ms=t_ms).state
    finally:
        for lg in logs:
            lg.close()
    return state, {"snapshot_lsn": base_lsn, "lsn": state.last_lsn, "problems": problems}
