"""The engine face: ``Queue`` = the write-ahead log + the state fold + the reaper.

Concurrency model: one lock guards the state and the ``log.append`` call (append copies the
record into the group-commit buffer and never waits for I/O). Waiting for durability
(``log.sync(lsn)``) happens after the lock is released, so many threads share one
fdatasync. Every operation is: validate (TypeError/ValueError, nothing written) -> under the
lock, plan the record from the state (may raise StaleLeaseError / JobNotFoundError /
InvalidStateError, nothing written) -> append -> apply the same record to the state ->
release -> wait for the record to be durable (enqueue, enqueue_many, complete, fail,
cancel, retry_dead, purge in ``sync`` mode).

Visibility note: a job is claimable as soon as its record is appended, possibly a moment
before its enqueue is durable. That is safe: the claim's record comes after it in the log,
so a crash that loses the enqueue loses the claim too, and ``complete`` waits for both.

Failure: if the log fails (a write or fdatasync error), the operation whose wait saw it
raises DurabilityError and was not acknowledged; its effect may still show in reads of this
Queue object, but every later write raises DurabilityError until the store is reopened,
and reopening shows only what is on disk.

Times: ``clock()`` returns seconds since the epoch (``time.time`` by default; tests pass a
fake). Records hold integer milliseconds.
"""

from __future__ import annotations

import builtins
import errno
import os
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

from . import records as R
from .locks import YieldingLock
from ..errors import (FORKED_HINT, ClosedError, CorruptionError, ForkedError,
                      ReadOnlyError, UnknownParentError)
from ..interface import (QueueInterface, Transition, check_progress, error_text,
                         check_job_id, check_limit_args, check_names, check_queue_options,
                         token_bytes)
from ..workflows import parents_first
from ..bulk import BulkRequest, bulk_request, check_bulk_call
from ..job import (DEFAULT_LEASE_SECONDS, DEFAULT_TIMEOUT_SECONDS, MAX_NAME_CHARS, Job,
                  JobStatus, check_name, check_new_job, check_seconds, check_text, encode_json,
                  new_ids, payload_bytes, retry_delay_ms, scheduled_ms, to_ms)
from .table import FINISHED
from .replay import replay
from .state import State
from .liveness import Liveness

if TYPE_CHECKING:
    from .sharedlog import SharedLog

__all__ = ["Queue", "open"]

# os.fork() calls in this interpreter (a child counts one more than its parent did;
# _after_fork_in_child): a queue compares the count with the one it was opened under and
# calls getpid() (a syscall) only when they differ. A fork that bypasses os.fork's
# handlers (a C extension's fork() without PyOS_AfterFork_Child) is not counted: the
# control page's own pid check (native/shm.c check()) then refuses the child's appends
# (ForkedError) instead.
_forks: list[int] = [0]


def _note_touched(touched: dict[str, None], recs: Iterable) -> None:
    """A compaction is capturing: note every job the records touch (a PURGE names many;
    control records such as PAUSE or LIMIT, and ATTACH/DETACH, name none)."""
    for r in recs:
        if type(r) is R.Purge:
            touched.update(dict.fromkeys(r.ids))
        elif (jid := getattr(r, "id", None)) is not None:
            touched[jid] = None

T = TypeVar("T")


class _TailMoved(Exception):
    """Shared mode, an optimistic decision (Queue._decide): another process published
    after the state's cursor, so the record decided on it was not written."""


# every open Queue of this process: a forked child marks them (register_at_fork below)
_OPEN_QUEUES: weakref.WeakSet = weakref.WeakSet()
_new_tuple = tuple.__new__
_tokens: list[bytes] = []


def _new_token() -> bytes:
    """8 random bytes (an attempt token), drawn from the OS 4 KiB at a time."""
    while True:
        try:
            return _tokens.pop()
        except IndexError:
            b = os.urandom(4096)
            _tokens.extend([b[i:i + 8] for i in range(0, 4096, 8)])


_fresh_ids_lock = threading.Lock()


def _take_fresh_ids(jobs: builtins.list[Job], built: builtins.list) -> bool:
    """True if every job of the batch carries the id new_id() drew for that very Job
    object, no unique key, and no id twice: no process can hold such an id, so a shared
    store writes the batch without a catch-up. Takes the ids (each Job's ``_auto_id`` is
    cleared), so the same Job object enqueued again goes through the checked path and is
    refused as a duplicate, as it is in exclusive mode."""
    with _fresh_ids_lock:       # two threads enqueuing one Job object: one takes its id
        seen = set()
        for j, (rec, _) in zip(jobs, built, strict=True):
            if rec.unique_key is not None or getattr(j, "_auto_id", None) != rec.id \
                    or rec.id in seen:
                return False
            seen.add(rec.id)
        for j in jobs:
            j._auto_id = None
        return True


def _take_fresh_id(job: Job, rec: R.Enqueue) -> bool:
    """_take_fresh_ids for a batch of one job (its built ENQUEUE record ``rec``)."""
    if rec.unique_key is not None:
        return False
    with _fresh_ids_lock:
        if getattr(job, "_auto_id", None) != rec.id:
            return False
        job._auto_id = None
        return True


def _exclusive_mode(exclusive: bool | None, shared: bool | None) -> bool:
    """True for the single-owner mode: ``exclusive=True``, or its other spelling
    ``shared=False``; the default (neither given) is shared."""
    for name, value in (("exclusive", exclusive), ("shared", shared)):
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")
    if exclusive is not None and shared is not None and exclusive == shared:
        raise ValueError(f"exclusive={exclusive} and shared={shared} contradict each other "
                         "(shared=False is another name for exclusive=True)")
    if exclusive is not None:
        return exclusive
    return shared is False


def open(path, **options) -> Queue:  # noqa: A001 - the package's documented entry point
    """Open (or create) the queue stored in directory ``path``. See :class:`Queue`."""
    return Queue(path, **options)


class Queue(QueueInterface):
    """A durable job queue stored in one directory.

    Compaction options (see aurora_log.local.snapshot): ``auto_compact`` (background snapshots
    when the WAL since the last one exceeds ``compact_wal_bytes`` or ``compact_factor`` x
    the last snapshot's size; None disables either), ``retain_seconds`` / ``retain_count``
    (completed and cancelled jobs kept; None = unlimited), ``archive`` (retired segments and
    snapshots move to DIR/archive/), ``as_of`` (an LSN or datetime: open the state as it
    was then; needs ``read_only=True``), ``max_snapshot_bytes`` (decompression bound).

    Options: ``durability`` ("sync" | "interval" | "os"), ``interval_ms``, ``clock``
    (seconds since the epoch), ``reaper_interval`` (seconds; None disables the thread,
    ``reap()`` still works), ``max_payload_bytes`` (also bounds results), ``retry_base`` /
    ``retry_cap`` / ``retry_jitter`` (the backoff, see ``aurora_log.job``), ``read_only``,
    and the log's ``segment_bytes`` / ``max_record_bytes``.

    Processes: by default any number of processes (and any number of Queue objects in
    one process) open the same directory at once and use the whole API together
    (docs/INTERNALS.md "Shared mode"). ``exclusive=True`` opts into the single-owner mode:
    this Queue holds the store alone (any other writable open gets LockedError) and
    writes through the in-process group-commit writer, measured 10-30% less CPU per
    enqueue in one process (docs/MULTIPROCESS.md). An exclusive open beside shared ones, or a shared
    open beside an exclusive one, raises LockedError naming the holder; ``read_only``
    opens work beside both. ``shared=True`` is the default spelled out; ``shared=False``
    means ``exclusive=True``.
    """

    _touched: dict[str, None] | None = None   # compaction capture: ids touched since
    _schedules: dict = {}    # name -> cron.Periodic (per object, set in __init__)
    _max_at = -1             # largest record time applied (snapshot header, as_of)
    _compactor = None
    _tail_bytes = 0
    _parked = 0              # shared mode: claims asleep on the page (tests probe it)
    _optimistic = False      # shared mode: _decide's body runs without the append lock
    # shared mode: RUNNING jobs this queue handed back (pending again, an attempt spent)
    # when it closed, as the next open of an exclusive store would have ("recovered")
    returned_on_close = 0

    def __init__(self, path, *, durability: str = "sync", interval_ms: int = 20,
                 clock: Callable[[], float] = time.time, reaper_interval: float | None = 1.0,
                 max_payload_bytes: int = 1 << 20, retry_base: float = 5.0,
                 retry_cap: float = 3600.0, retry_jitter: float = 0.0,
                 read_only: bool = False, archive: bool = False, as_of=None,
                 auto_compact: bool = True, compact_wal_bytes: int | None = 64 << 20,
                 compact_factor: float | None = 4.0, retain_seconds: float | None = 86400.0,
                 retain_count: int | None = 100_000, max_snapshot_bytes: int = 16 << 30,
                 exclusive: bool | None = None, shared: bool | None = None,
                 **log_options):
        # every option as given: a forked child re-opens the store with them (_reattach)
        options = dict(locals())
        del options["self"], options["path"]
        options.update(options.pop("log_options"))
        self._options = options
        from .log import Log  # imported here so job/records/state work without the C core
        from . import snapshot

        exclusive = _exclusive_mode(exclusive, shared)
        if as_of is not None and not read_only:
            raise ValueError("as_of needs read_only=True (a past state is for inspection)")

        check_queue_options(clock, reaper_interval, max_payload_bytes, retry_base, retry_cap,
                            retry_jitter)
        self._clock = clock
        self._max_payload = max_payload_bytes
        self._retry = (retry_base, retry_cap, retry_jitter)
        self._read_only = bool(read_only)
        self._lock = YieldingLock()
        # YieldingLock has the lock protocol Condition uses (typeshed names only its own)
        self._cond = threading.Condition(self._lock)  # type: ignore[arg-type]
        self._closed = False
        # set once close() has flushed the log: followers read to the end after it
        self._log_released = threading.Event()
        snapshot.check_log_present(path)    # before Log.open creates an empty log
        # the default: any number of processes open the store at once; exclusive: this
        # Queue alone, through the in-process C writer
        log_options["shared"] = not exclusive and not read_only
        self._log = Log.open(path, durability=durability, interval_ms=interval_ms,
                             read_only=read_only, **log_options)
        # the same log typed as the shared one, for shared-mode paths only (an attribute:
        # the hot paths read it several times per operation)
        self._sl = cast("SharedLog", self._log)
        self._sync_mode = durability == "sync"
        # what a durable complete/fail waits for: outside sync mode "durable" is "written"
        # (the same level in the C writer), and that level can be waited for keeping the
        # GIL (Log._append1), so threads do not hand the GIL around on every complete
        self._durable_wait = "durable" if self._sync_mode else "written"
        self._max_snapshot = max_snapshot_bytes
        # shared mode (many processes, sharedlog.py): the records below _cursor are folded
        self._shared = bool(getattr(self._log, "_shared", False))
        self._cursor: tuple[int, int, int] = (0, 0, 0)
        self._pid = os.getpid()
        # os.fork() calls seen when opened: a pid check (a syscall) is needed only after
        # one (_forks, counted by _after_fork_in_child)
        self._forks = _forks[0]
        self._liveness = None
        try:
            if self._shared:
                self._liveness = Liveness(self)
                self._liveness.begin()
                self._sl.retention_pin = self._liveness.pin
            self._state = self._replay(as_of)
            self.recovered = 0
            if self._liveness is not None:
                self.recovered = self._liveness.attach()
            elif not self._read_only:
                self.recovered = self._recover_running()
        except BaseException:
            if self._liveness is not None:
                self._liveness.close_file(unlink=True)
            self._log.close()
            raise
        _OPEN_QUEUES.add(self)
        self._compactor = None
        if not self._read_only:
            self._compactor = snapshot.Compactor(
                _CompactionLink(self), self._log.directory, archive=archive,
                retain_seconds=retain_seconds,
                retain_count=retain_count, wal_bytes=compact_wal_bytes, factor=compact_factor,
                max_content=max_snapshot_bytes)
            if self._shared:
                self._compactor.lock_path = self._log.directory / "compact.lock"
            self._compactor.tail_bytes = self._tail_bytes
            self._compactor.last_size = self.snapshot_report.size
            if auto_compact:
                self._compactor.start()
        self._schedules = {}
        self._stop = threading.Event()
        self._reaper = None
        if reaper_interval is not None and not self._read_only:
            self._reaper = threading.Thread(target=self._reaper_loop, args=(reaper_interval,),
                                            name="aurora-log-reaper", daemon=True)
            self._reaper.start()

    # ------------------------------------------------------------------ open/close

    def _replay(self, as_of=None) -> State:
        """The newest valid snapshot + the log after its LSN (snapshot.recover picks it and
        reports bad ones in ``snapshot_report``; CorruptionError if none is usable and the
        log does not start at LSN 1). ``as_of``: the state at that LSN/datetime instead."""
        from . import snapshot
        if as_of is not None:
            state, info = snapshot.state_as_of(self._log.directory, as_of,
                                               max_content=self._max_snapshot)
            self.snapshot_report = snapshot.LoadResult(state, info["snapshot_lsn"])
            self.snapshot_report.problems = info["problems"]
            return state
        if self._shared:
            return self._replay_shared()
        res = snapshot.recover(self._log.directory, self._log.first_lsn, self._log.next_lsn,
                               read_only=self._read_only, max_content=self._max_snapshot)
        self.snapshot_report = res
        base_lsn = res.lsn if res.state is not None else self._log.first_lsn - 1
        done = replay(self._log, res.state, base_lsn, base_max_at_ms=res.max_at_ms)
        self._max_at, self._tail_bytes = done.max_at_ms, done.bytes
        return done.state

    def _replay_shared(self) -> State:
        """Shared mode: the same replay, up to a tail read once (others keep appending;
        the rest is folded by catch-up). Only the process that recovered the log (nobody
        else attached) may rename a bad snapshot aside."""
        from . import snapshot
        log = self._sl
        with log.locked():
            cur = log.cursor_at_tail()
        res = snapshot.recover(log.directory, log.first_lsn, cur[2],
                               read_only=not log.rebuilt, max_content=self._max_snapshot)
        self.snapshot_report = res
        base_lsn = res.lsn if res.state is not None else log.first_lsn - 1
        log.scan_bound = cur
        try:
            done = replay(log, res.state, base_lsn, base_max_at_ms=res.max_at_ms)
        finally:
            log.scan_bound = None
        if done.next_lsn != cur[2]:
            raise CorruptionError(f"replay ended at LSN {done.next_lsn}, the tail read was "
                                  f"{cur[2]}", file=str(log.directory), lsn=done.next_lsn)
        self._cursor = cur
        self._max_at, self._tail_bytes = done.max_at_ms, done.bytes
        return done.state

    # ------------------------------------------------------------------ shared mode

    def _check_process(self) -> None:
        if _forks[0] != self._forks and os.getpid() != self._pid:
            self._reattach()

    def _reattach(self) -> None:
        """The first use, in a forked child, of a queue its parent opened: open the store
        again in place (the same options; its own log handle, page attach, liveness file,
        ATTACH record, threads and locks; the state replayed afresh), keeping what lives
        beside the queue (task handlers, periodic schedules). Never the parent's writer,
        lock or thread. An exclusive store belongs to the parent alone: ForkedError."""
        with _reattach_lock:
            if os.getpid() == self._pid:       # another thread of this child did it
                return
            if self._closed:
                raise ClosedError("the queue is closed")
            if not self._shared and not self._read_only:
                raise ForkedError(FORKED_HINT + " (a store opened with exclusive=True belongs "
                                  "to one process: open it in the default mode to share it "
                                  "with child processes)")
            path, options, saved = self._log.directory, self._options, dict(self.__dict__)
            schedules = self._schedules
            self.__dict__.clear()
            try:
                Queue.__init__(self, path, **options)
            except BaseException:
                self.__dict__.clear()
                self.__dict__.update(saved)
                raise
            self._schedules = schedules

    def _catch_up(self) -> None:
        """Shared mode, under the queue lock: fold every record other processes published
        after our cursor (docs/INTERNALS.md "Catch-up")."""
        if not self._shared:
            return
        self._check_process()
        recs, cur = self._sl.read_from(self._cursor)
        if recs:
            self._fold(recs)
        self._cursor = cur

    def _fold(self, recs) -> None:
        state = self._state
        touched = self._touched
        max_at = self._max_at
        for lsn, rtype, payload in recs:
            if rtype == R.ENQUEUE and touched is None:
                at = state.apply_enqueue_bytes(lsn, payload)
            else:
                rec = R.decode(rtype, payload)
                at = rec.at_ms
                if touched is not None:
                    _note_touched(touched, (rec,))
                state.apply(lsn, rtype, rec)
            if at > max_at:
                max_at = at
        self._max_at = max_at
        if recs:
            self._cond.notify_all()

    def _deciding(self) -> AbstractContextManager[Any]:
        """The section in which a record is decided from the state and written: the queue
        lock, and in shared mode also the page's append lock with the state caught up to
        the log's tail (so the decision sees every other process's records). Exclusive
        mode: the lock itself (a generator context costs ~2 us, as much as a whole fold)."""
        if not self._shared:
            return self._lock
        return self._deciding_shared()

    @contextmanager
    def _deciding_shared(self) -> Iterator[None]:
        if _forks[0] != self._forks and os.getpid() != self._pid:
            self._reattach()            # before the lock: re-attaching replaces it
        with self._lock:
            self._check_process()
            with self._sl.locked():
                self._catch_up()
                yield

    def _decide(self, body: Callable[[], T]) -> T:
        """Run ``body`` (decide from the state, then ``_reserve_apply``) as ``with
        self._deciding(): body()`` would, but in shared mode first optimistically: when
        nobody published after our cursor (the page's next LSN equals the cursor's), the
        decision is made on the state as it is, without the append lock, and its record is
        written by the conditional fast append (``SharedLog.try_append(expect_lsn=cursor)``),
        which writes it only if the tail is still our cursor: a record is thus only ever
        written on top of the very state it was decided on (MULTIPROCESS.md invariant I7).
        If the tail moved (or the lock was busy), nothing was written and nothing folded;
        the body runs again the locking way, caught up. ``body`` must change nothing
        before its ``_reserve_apply`` (planners are pure) and write at most one batch.
        A result or an error decided without a write (no job to claim, a stale token) is
        linearised at the moment the tail was seen equal to the cursor."""
        if not self._shared:
            with self._lock:
                return body()
        if _forks[0] != self._forks and os.getpid() != self._pid:
            self._reattach()            # before the lock: re-attaching replaces it
        with self._lock:
            if _forks[0] != self._forks:
                self._check_process()
            log = self._sl
            if log.tail_hint() == self._cursor[2]:
                self._optimistic = True
                try:
                    return body()
                except _TailMoved:
                    pass
                finally:
                    self._optimistic = False
            with log.locked():
                self._catch_up()
                return body()

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """The queue lock, with the state caught up to the published tail (shared mode:
        read-your-writes and everyone else's)."""
        if _forks[0] != self._forks and os.getpid() != self._pid:
            self._reattach()            # before the lock: re-attaching replaces it
        with self._lock:
            self._check_open(write=False)
            self._catch_up()
            yield

    @contextmanager
    def state_view(self) -> Iterator[State]:
        """The engine's state for the with-block, caught up with every process's records
        and held under the queue lock: for this package's tools that need more than the
        public reads (the dashboard pages through a million jobs with it). Read only; the
        State API is internal and changes without notice."""
        with self._reading():
            yield self._state

    def _recover_running(self) -> int:
        """Jobs left RUNNING by a dead process: back to pending as a spent attempt
        ("process died"), or dead-letter when retries are spent. One open is enough."""
        recs = self._state.plan_recover(self._now_ms(), self._delay)
        if recs:
            self._append_apply(recs)
            self._log.sync(self._log.next_lsn - 1)
        return len(recs)


    def close(self) -> None:
        """Stop the reaper, wake blocked claims (they return None), flush and close the log.
        Idempotent."""
        if os.getpid() != self._pid:
            # a forked child's copy: the parent's threads, locks and writer are not ours;
            # closing our copies of its fds never releases its flocks
            self._closed = True
            if self._shared:
                self._log.close()
            self._log_released.set()
            return
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        if getattr(self, "_stop", None) is not None:
            self._stop.set()
        if self._compactor is not None:
            self._compactor.stop()
        if self._reaper is not None and self._reaper is not threading.current_thread():
            self._reaper.join()
        try:
            if self._liveness is not None:
                self._liveness.detach()
        finally:
            try:
                self._log.close()
            finally:
                self._log_released.set()
                _OPEN_QUEUES.discard(self)

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def path(self):
        return self._log.directory

    @property
    def log(self):
        """The underlying Log (for tools and tests; do not append to it directly)."""
        if os.getpid() != self._pid and not self._closed:
            self._reattach()
        return self._log

    # ------------------------------------------------------------------ internals

    def _now_ms(self) -> int:
        return round(self._clock() * 1000)

    def _delay(self, retry_count: int) -> int:
        base, cap, jitter = self._retry
        return retry_delay_ms(retry_count, base=base, cap=cap, jitter=jitter)

    def _check_open(self, write: bool = True) -> None:
        if _forks[0] != self._forks and os.getpid() != self._pid:
            self._reattach()
        if self._closed:
            raise ClosedError("the queue is closed")
        if write and self._read_only:
            raise ReadOnlyError("the queue was opened read_only")

    def _append_apply(self, recs: list, encoded: list | None = None, wait: str = "none") -> int:
        """Append records (one atomic batch) and fold them, all under the lock (or in
        __init__): for the rare paths (reaper, recovery, compaction). Returns the last LSN."""
        if self._shared and not self._sl.holds_lock():
            with self._sl.locked():
                self._catch_up()
                reserved = self._reserve_apply(recs, encoded)
            return self._publish(reserved, wait)
        return self._publish(self._reserve_apply(recs, encoded), wait)

    def _reserve_apply(self, recs: list, encoded: list | None = None,
                       plain: bool = False) -> tuple[int, list, Any]:
        """Reserve the records' LSNs and fold them. The caller holds the lock and MUST
        pass the result to _publish() right after releasing it (the hot paths: no call
        that drops the GIL runs under the lock, so threads do not convoy on it).
        ``plain``: the records are ENQUEUEs without unique keys of ids the state does not
        hold (folded by runs, State.apply_enqueues)."""
        if encoded is None:
            encoded = [R.encode(r) for r in recs]
        checked = None
        if len(encoded) == 1:
            if len(encoded[0][1]) > self._log.max_record_bytes:
                self._log.check_records(encoded)     # raises: nothing reserved
        else:
            checked = self._log.check_records(encoded)
        if self._shared:
            return self._write_apply(recs, encoded, checked, plain)
        first = self._log.reserve(len(encoded))
        try:
            at = recs[0].at_ms
            if at > self._max_at:
                self._max_at = at
            if self._touched is not None:
                _note_touched(self._touched, recs)
            self._fold_reserved(first, recs, encoded, plain)
        except BaseException:
            # the LSNs are taken: a range that never arrives stalls every later commit
            self._log.append_reserved(first, encoded, checked=checked)
            raise
        return first, encoded, checked

    def _reserve_apply1(self, rec) -> tuple[int, list, Any]:
        """_reserve_apply of one record about one job (claim, heartbeat, progress,
        complete, fail, release: the hot paths), without the batch's list building."""
        rtype, payload = R.encode(rec)
        encoded = [(rtype, payload)]
        if len(payload) > self._log.max_record_bytes:
            self._log.check_records(encoded)     # raises: nothing reserved
        if self._shared:
            return self._write_apply1(rec, rtype, payload, encoded)
        first = self._log.reserve(1)
        try:
            self._fold1(first, rtype, rec)
        except BaseException:
            # the LSN is taken: a range that never arrives stalls every later commit
            self._log.append_reserved(first, encoded)
            raise
        return first, encoded, None

    def _fold_reserved(self, first: int, recs: list, encoded: list, plain: bool) -> None:
        """Fold records appended (or about to be) at LSNs from ``first``."""
        if len(recs) == 1:
            self._state.apply(first, encoded[0][0], recs[0])
        elif plain:
            self._state.apply_enqueues(first, recs)
        else:
            self._state.apply_many(first, [(rtype, rec) for rec, (rtype, _) in
                                           zip(recs, encoded, strict=True)])

    def _write_apply(self, recs: list, encoded: list, checked,
                     plain: bool = False) -> tuple[int, list, Any]:
        """Shared mode, under the append lock with the state caught up: write the records
        at the page's tail (written before anything is folded: a failed write changes
        nothing), then fold them. Returns (first LSN, records, position) for _publish."""
        log = self._sl
        if self._optimistic:            # _decide: written only on top of our cursor
            got = log.try_append(encoded, checked, expect_lsn=self._cursor[2])
            if got is None:
                raise _TailMoved()
            first, pos = got
            # the batch directly follows the cursor (the tail was the cursor's LSN), in
            # the segment of its end (a roll's SEAL before it holds no record)
            self._cursor = (pos >> 32, pos & 0xFFFFFFFF, first + len(encoded))
        else:
            first = log.reserve(len(encoded))
            if first != self._cursor[2]:
                raise CorruptionError(f"the state is folded to LSN {self._cursor[2] - 1} but "
                                      f"the tail is {first}", file=str(log.directory),
                                      lsn=first)
            pos = log.write_locked(first, encoded, checked)
            self._cursor = log.cursor_at_tail()
        at = recs[0].at_ms
        if at > self._max_at:
            self._max_at = at
        if self._touched is not None:
            _note_touched(self._touched, recs)
        self._fold_reserved(first, recs, encoded, plain)
        return first, encoded, pos

    def _write_apply1(self, rec, rtype: int, payload: bytes,
                      encoded: list) -> tuple[int, list, Any]:
        """_write_apply of one record (the hot paths: claim, complete, heartbeat ...):
        optimistically, one conditional fast append (SharedLog.try_append1) and one fold,
        without the lists of the batch form; under the append lock, _write_apply."""
        if not self._optimistic:
            return self._write_apply([rec], encoded, None)
        got = self._sl.try_append1(rtype, payload, self._cursor[2])
        if got is None:
            raise _TailMoved()
        first, pos = got
        # as in _write_apply: the record directly follows the cursor
        self._cursor = (pos >> 32, pos & 0xFFFFFFFF, first + 1)
        self._fold1(first, rtype, rec)
        return first, encoded, pos

    def _fold1(self, lsn: int, rtype: int, rec) -> None:
        """Fold one record about one job written (or reserved) at ``lsn``: the hot paths'
        _fold_reserved, without its lists."""
        at = rec.at_ms
        if at > self._max_at:
            self._max_at = at
        if self._touched is not None:    # a compaction is capturing: note the job
            self._touched[rec.id] = None
        self._state.apply(lsn, rtype, rec)

    def _fold_own(self, first: int, recs: Sequence[R.Enqueue], pos: int,
                  bulk: tuple[BulkRequest, list[str], int] | None = None) -> None:
        """After a lazy enqueue's fast append: if our batch directly follows our cursor
        (nobody else appended since our last fold, as when this process is alone) and the
        queue lock is free, fold it now from the records we built, as exclusive mode does,
        instead of reading it back from the log at the next catch-up (a pread, a crc and
        a decode per record). I6 holds: the cursor moves past exactly these records. If
        someone else appended first, or a thread of ours holds the lock, the records wait
        for the catch-up as before (a producer never folds other processes' records)."""
        if self._cursor[2] != first or not self._lock.acquire(blocking=False):
            return
        try:
            if self._cursor[2] == first and not self._closed:
                touched = self._touched
                if bulk is not None:            # the bulk form: folded as exclusive does
                    req, ids, at = bulk
                    if any(map(self._state.jobs.__contains__, ids)):
                        return      # an id drawn twice: the catch-up's fold decides
                    if touched is not None:     # a compaction is capturing: note them
                        touched.update(dict.fromkeys(ids))
                    self._state.apply_enqueue_run(
                        first, ids, req.job_type, req.queue, req.priority, req.max_retries,
                        at, at, req.scheduled_ms, req.timeout_ms, req.lease_ms, req.payloads)
                    n = len(ids)
                else:
                    if touched is not None:     # a compaction is capturing: note them
                        touched.update(dict.fromkeys(r.id for r in recs))
                    if len(recs) == 1:
                        self._state.apply(first, R.ENQUEUE, recs[0])
                    else:
                        self._state.apply_many(first, [(R.ENQUEUE, r) for r in recs])
                    n = len(recs)
                    at = recs[0].at_ms
                self._cursor = (pos >> 32, pos & 0xFFFFFFFF, first + n)
                if at > self._max_at:
                    self._max_at = at
                self._cond.notify_all()
        finally:
            self._lock.release()

    def _out_of_space(self) -> bool:
        if self._shared:    # no unlogged claims across processes: at most one lease
            return False
        return self._log.failed_errno == errno.ENOSPC

    def _apply_unlogged(self, rec) -> None:
        """The disk is full and the log refuses writes until reopened, but claims and
        heartbeats keep working (RELIABILITY.md): they change only the live state. Nothing
        is lost by not logging them: delivery is at-least-once, and after the reopen the
        job is pending again, its unlogged attempt uncounted. Completes and fails still
        raise: they promise durability. Lock held."""
        rtype = R.CLAIM if type(rec) is R.Claim else R.HEARTBEAT
        self._state.apply(self._log.next_lsn, rtype, rec)

    def _publish(self, reserved: tuple[int, list, Any], wait: str) -> int:
        """Hand reserved records to the log (outside the lock) and wait as told."""
        if self._shared:        # written under the append lock already: only the wait
            if wait != "written" and wait != "none":
                self._sl.wait_pos(reserved[2], wait)
            return reserved[0] + len(reserved[1]) - 1
        return self._log.append_reserved(reserved[0], reserved[1], wait, checked=reserved[2])

    def _build(self, job: Job, now: int) -> tuple[R.Enqueue, bytes]:
        """Validate a Job (again: its attributes may have been set directly) and build and
        encode its ENQUEUE record. TypeError/ValueError; nothing is written."""
        check_new_job(job)
        prio, timeout, lease = job.priority, job.timeout_seconds, job.lease_duration
        created_at = job.created_at
        if type(created_at) is datetime and created_at.tzinfo is not None \
                and created_at.microsecond % 1000 == 0:
            created = round(created_at.timestamp() * 1000)  # exact for ms-precision times
        else:
            created = to_ms(created_at, "created_at")
        sched = scheduled_ms(job)
        payload = payload_bytes(job, self._max_payload)
        timeout_ms = (300_000 if timeout is DEFAULT_TIMEOUT_SECONDS else
                      None if timeout is None else round(timeout * 1000))
        lease_ms = 30_000 if lease is DEFAULT_LEASE_SECONDS else round(lease * 1000)
        ukey = job.unique_key
        prio_code = int(prio)
        try:
            data = R.pack_enqueue(job.id.encode(), job.job_type.encode(), job.queue.encode(),
                                  None if ukey is None else ukey.encode(), prio_code,
                                  job.max_retries, created, now, sched, timeout_ms, lease_ms,
                                  payload)
        except struct.error as e:
            raise ValueError(f"job {job.id}: a field does not fit the record: {e}") from None
        # tuple.__new__ skips the NamedTuple constructor's Python-level wrapper (~3x faster)
        return _new_tuple(R.Enqueue, (job.id, job.job_type, job.queue, prio_code,
                                      job.max_retries, created, now, sched, timeout_ms,
                                      lease_ms, ukey, payload)), data

    # ------------------------------------------------------------------ producers

    def enqueue(self, job: Job, *, durable: bool = True) -> str:
        """Add a job; returns its id. With a unique_key held by a live job, returns that
        job's id and adds nothing. In sync mode returns after the record is fdatasynced
        (``durable=False``: do not wait, the record rides the next group commit or the
        background thread's next tick, every ``interval_ms``)."""
        # one Job: straight to the fold (enqueue_many's form checks and lists cost ~2 us,
        # and a durable enqueue pays every microsecond of CPU about three times over on a
        # VM: bench/s1_budget.py)
        if self._shared:
            now = self._now_ms()
            built = self._build(job, now)       # validates: TypeError/ValueError first
            if getattr(job, "_deps", None) is None and _take_fresh_id(job, built[0]):
                self._write_one_unfolded(built, durable)
                return built[0].id
            ids, reserved, lsn = self._fold_built([built], [getattr(job, "_deps", None)],
                                                  range(1), now)
        else:
            ids, reserved, lsn = self._enqueue_folded((job,), durable)
        if reserved is not None:
            self._publish(reserved, "durable" if durable else "none")
        elif lsn > 0 and durable:
            self._log.sync(lsn)
        return ids[0]

    def enqueue_many(self, jobs: Any, payloads: Any = None, /, *, durable: bool = True,
                     **options: Any) -> list[str]:
        """Add many jobs atomically (all or none, one commit). Returns their ids in order
        (an existing live job's id for a unique_key already taken, also within the batch).
        ``enqueue_many(jobs)`` takes Jobs; ``enqueue_many(job_type, payloads, **options)``
        is the bulk form (see QueueInterface.enqueue_many)."""
        ids, reserved, lsn = self._enqueue_either(jobs, payloads, options, durable)
        if reserved is not None:
            self._publish(reserved, "durable" if durable else "none")
        elif lsn > 0 and durable:
            self._log.sync(lsn)
        return ids

    async def enqueue_async(self, job: Job, *, durable: bool = True) -> str:
        """``enqueue`` for asyncio code: the record is appended on the calling thread (no
        I/O wait), the wait for its durability runs in the loop's default executor, so the
        event loop keeps running while the group commit's fdatasync is in flight."""
        return (await self.enqueue_many_async((job,), durable=durable))[0]

    async def enqueue_many_async(self, jobs: Any, payloads: Any = None, /, *,
                                 durable: bool = True, **options: Any) -> list[str]:
        """``enqueue_many`` for asyncio code (atomic, one commit; both forms); see
        enqueue_async. Only a full group-commit buffer (backpressure) can hold the loop,
        as it holds every producer."""
        import asyncio
        loop = asyncio.get_running_loop()
        if self._shared:        # its append takes a cross-process lock: off the loop whole
            return await loop.run_in_executor(
                None, lambda: self.enqueue_many(jobs, payloads, durable=durable, **options))
        ids, reserved, lsn = self._enqueue_either(jobs, payloads, options, durable)
        if reserved is not None:
            lsn = self._publish(reserved, "none")
        if durable and lsn > 0:
            await loop.run_in_executor(None, self._log.sync, lsn)
        return ids

    def _enqueue_either(self, jobs: Any, payloads: Any, options: dict,
                        durable: bool) -> tuple[list[str], Any, int]:
        """Tell the two forms of enqueue_many apart (TypeError for a mix) and fold the
        batch; returns what _enqueue_folded does."""
        if check_bulk_call(jobs, payloads, options):
            return self._enqueue_bulk(bulk_request(jobs, payloads, self._max_payload,
                                                   **options), durable)
        return self._enqueue_folded(jobs, durable)

    def _enqueue_bulk(self, req: BulkRequest, durable: bool) -> tuple[list[str], Any, int]:
        """The bulk form: ids drawn for the whole batch, the records packed and the state
        folded by C-level iteration (records.pack_enqueue_run, State.apply_enqueue_run).
        A batch with unique keys takes the Job form's path (minus the Job objects), which
        decides each key against the state and the batch."""
        now = self._now_ms()
        n = len(req.payloads)
        ids = new_ids(n)
        per_job = req.unique_keys is not None or n == 0
        try:
            if per_job:
                built = [self._bulk_record(req, job_id, k, now) for k, job_id in enumerate(ids)]
            else:
                lens, data = R.pack_enqueue_run(
                    list(map(str.encode, ids)), req.job_type.encode(), req.queue.encode(),
                    req.priority, req.max_retries, now, now, req.scheduled_ms,
                    req.timeout_ms, req.lease_ms, req.payloads)
        except struct.error as e:
            raise ValueError(f"a field does not fit the record: {e}") from None
        if per_job:
            return self._fold_built(built, [None] * n, range(n), now)
        packed = self._log.check_packed(bytes((R.ENQUEUE,)) * n, lens, data)
        if self._shared:        # random ids, no unique keys: nothing to decide, as in
            # _enqueue_lazily: written now, folded at the next catch-up
            return self._write_unfolded(packed, durable, ids, bulk=(req, ids, now)), None, 0
        with self._deciding():
            self._check_open()
            jobs = self._state.jobs
            if any(map(jobs.__contains__, ids)):
                dup = next(i for i in ids if i in jobs)
                raise ValueError(f"a job with id {dup!r} already exists")
            first = self._log.reserve(n)
            try:
                if now > self._max_at:
                    self._max_at = now
                if self._touched is not None:     # a compaction is capturing
                    self._touched.update(dict.fromkeys(ids))
                self._state.apply_enqueue_run(
                    first, ids, req.job_type, req.queue, req.priority, req.max_retries, now,
                    now, req.scheduled_ms, req.timeout_ms, req.lease_ms, req.payloads)
            except BaseException:
                # the LSNs are taken: a range that never arrives stalls every later commit
                self._log.append_reserved(first, (), checked=packed)
                raise
            self._cond.notify_all()
        return ids, (first, (), packed), 0

    def _bulk_record(self, req: BulkRequest, job_id: str, k: int,
                     now: int) -> tuple[R.Enqueue, bytes]:
        """The k-th job of a bulk request as (ENQUEUE record, its bytes), as _build makes
        them from a Job."""
        ukey = req.unique_keys[k] if req.unique_keys is not None else None
        payload = req.payloads[k]
        data = R.pack_enqueue(job_id.encode(), req.job_type.encode(), req.queue.encode(),
                              None if ukey is None else ukey.encode(), req.priority,
                              req.max_retries, now, now, req.scheduled_ms, req.timeout_ms,
                              req.lease_ms, payload)
        return _new_tuple(R.Enqueue, (job_id, req.job_type, req.queue, req.priority,
                                      req.max_retries, now, now, req.scheduled_ms,
                                      req.timeout_ms, req.lease_ms, ukey, payload)), data

    def _enqueue_folded(self, jobs: Iterable[Job],
                        durable: bool) -> tuple[list[str], Any, int]:
        """Validate, and under the lock fold the jobs' ENQUEUE records and reserve their
        LSNs. Returns (ids, reserved records to publish or None, the LSN to wait for when
        nothing new was added: the unique-key owners' records). In shared mode a batch that
        depends on no state is written at once, waited for per ``durable``: (ids, None, 0)."""
        if isinstance(jobs, Job):
            raise TypeError("enqueue_many takes an iterable of Jobs; use enqueue for one")
        # The enqueue time is read before the lock: records stay self-consistent (a job's
        # due time is its own `at`), and encoding happens outside the lock.
        now = self._now_ms()
        jobs = builtins.list(jobs)
        built = [self._build(j, now) for j in jobs]
        deps = [getattr(j, "_deps", None) for j in jobs]
        if self._shared and built and not any(deps) and _take_fresh_ids(jobs, built):
            return self._enqueue_lazily(built, durable), None, 0
        order = range(len(jobs)) if not any(deps) else parents_first(jobs)
        return self._fold_built(built, deps, order, now)

    def _fold_built(self, built: list, deps: list, order: Iterable[int],
                    now: int) -> tuple[list[str], Any, int]:
        """Under the lock, decide unique keys, ids and parents of built ENQUEUE records
        (in ``order``: parents first), then fold them and reserve their LSNs; see
        _enqueue_folded."""
        ids: list[str] = [""] * len(built)
        lsn = 0
        with self._deciding():
            self._check_open()
            state = self._state
            recs: list = []
            encoded = []
            taken: dict[str, str] = {}
            seen: dict[str, str] = {}          # id in this batch -> the id it stands for
            written: set[str] = set()          # ids this batch enqueues
            for k in order:
                rec, payload = built[k]
                ukey = rec.unique_key
                owner = None
                if ukey is not None:
                    owner = taken.get(ukey) or state.unique_owner(ukey)
                if owner is None and (rec.id in state.jobs or rec.id in seen):
                    raise ValueError(f"a job with id {rec.id!r} already exists")
                dep = deps[k]
                if dep is not None:
                    parents = tuple(seen.get(p, p) for p in dep[0])
                    for p in parents:
                        if p not in written and p not in state.jobs:
                            raise UnknownParentError(rec.id, p)
                if owner is not None:
                    ids[k] = seen[rec.id] = owner
                    continue
                if ukey is not None:
                    taken[ukey] = rec.id
                seen[rec.id] = rec.id
                written.add(rec.id)
                if dep is not None:
                    policy = (R.ON_FAILURE_CANCEL if dep[1] == "cancel"
                              else R.ON_FAILURE_IGNORE)
                    depends = R.Depends(rec.id, now, parents, policy)
                    recs.append(depends)
                    encoded.append(R.encode(depends))
                recs.append(rec)
                encoded.append((R.ENQUEUE, payload))
                ids[k] = rec.id
            if recs:
                # ENQUEUEs only, none with a unique key (the ids were checked above): folded
                # by runs of equal fields
                plain = not taken and len(recs) == len(written)
                reserved = self._reserve_apply(recs, encoded, plain)
                self._cond.notify_all()
            else:
                reserved = None
                lsn = self._log.next_lsn - 1   # the owners' records: make sure they are durable
        return ids, reserved, lsn

    def _enqueue_lazily(self, built: list, durable: bool) -> list[str]:
        """Shared mode, jobs with no unique key and ids drawn at random: their records do
        not depend on the state, so they are written under the append lock without a
        catch-up, and folded (in LSN order with everyone else's) at this process's next
        catch-up (docs/INTERNALS.md "Catch-up": a producer never folds on its hot path)."""
        encoded = [(R.ENQUEUE, payload) for _, payload in built]
        recs = [rec for rec, _ in built]
        return self._write_unfolded(self._log.check_records(encoded), durable,
                                    [rec.id for rec in recs], recs)

    def _write_one_unfolded(self, built: tuple, durable: bool) -> None:
        """_enqueue_lazily for one job: its record goes to the one-record fast append
        (no packing), else (a busy lock, a roll, a record the fast path leaves to the
        exact checks) the way _write_unfolded writes a batch."""
        self._check_open()
        rec, payload = built
        log = self._sl
        got = log.try_append1(R.ENQUEUE, payload)
        if got is None:
            self._write_unfolded(log.check_records(((R.ENQUEUE, payload),)), durable,
                                 [rec.id], [rec])
            return
        pos = got[1]
        self._fold_own(got[0], (rec,), pos)
        log.wait_pos(pos, "durable" if durable else "none")

    def _write_unfolded(self, packed: tuple, durable: bool, ids: list[str],
                        recs: list | None = None,
                        bulk: tuple[BulkRequest, list[str], int] | None = None) -> list[str]:
        """Shared mode: write packed ENQUEUE records (checked), unfolded (the fast path,
        or under the append lock), and wait per ``durable``; returns ``ids``. With the
        ENQUEUE records themselves (``recs``) a producer alone at the tail folds them at
        once (_fold_own)."""
        self._check_open()
        log = self._sl
        got = log.try_append((), packed)       # any tail: the records are stateless
        if got is not None:
            pos = got[1]
            if recs is not None or bulk is not None:
                self._fold_own(got[0], recs or [], pos, bulk)
        else:
            with log.locked():
                first = log.reserve(len(packed[0]))
                pos = log.write_locked(first, (), packed)
        log.wait_pos(pos, "durable" if durable else "none")
        return ids

    # ------------------------------------------------------------------ workers

    def claim(self, worker_id: str, *, job_types=None, queues=None,
              wait: float | None = None) -> Job | None:
        """The best due job (priority desc, due time, FIFO) as RUNNING, with ``job.token``
        and ``job.lease_deadline``; or None. ``wait`` (seconds) blocks until a job is
        enqueued, a scheduled/retry time comes, or the wait ends (no polling). The claim
        is handed to the OS before this returns (shared write, no fdatasync): if the
        process is then killed, recovery still counts the attempt, so a handler that kills
        its process ends in dead-letter instead of looping. A power cut may lose the
        claim, which only means the job runs again, uncounted."""
        check_text(worker_id, "worker_id", MAX_NAME_CHARS)
        types = check_names(job_types, "job_types")
        qs = check_names(queues, "queues")
        end = None
        if wait is not None:
            if isinstance(wait, bool) or not isinstance(wait, (int, float)) or wait < 0:
                raise ValueError(f"wait must be a number of seconds >= 0, got {wait!r}")
            end = time.monotonic() + wait
        claimed = (self._claim_shared if self._shared else self._claim_locked)(
            worker_id, types, qs, end)
        if claimed is None:
            return None
        job, reserved = claimed
        if reserved is not None:
            self._publish(reserved, "written")     # outside the lock: claimers share the write
        return job

    def _claim_locked(self, worker_id, types, qs, end):
        """Pick and claim under the lock, waiting on the condition until ``end`` (a
        time.monotonic() deadline; None = do not wait). Returns (job, reserved claim
        record) or None; the caller publishes the record (None: not logged, disk full)."""
        waited = False
        with self._lock:     # the condition's lock (its wrapper adds a call each way)
            while True:
                if self._closed:
                    if waited:
                        return None         # closed while we waited: a clean shutdown
                    raise ClosedError("the queue is closed")
                if self._read_only:
                    raise ReadOnlyError("the queue was opened read_only")
                now = self._now_ms()
                job_id = self._state.pick(now, qs, types)     # the decision (order.py)
                if job_id is not None:
                    rec = self._state.plan_claim(job_id, now, _new_token(), worker_id)
                    if self._out_of_space():
                        self._apply_unlogged(rec)
                        return self._state.get(job_id), None
                    reserved = self._reserve_apply1(rec)      # append + apply (the fold)
                    try:
                        return self._state.get(job_id), reserved
                    except BaseException:
                        self._publish(reserved, "none")   # reserved LSNs must arrive
                        raise
                if end is None:
                    return None
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return None
                due = self._state.next_due_ms()
                free = self._state.next_allowed_ms(now, qs, types)   # a rate limit ends
                if free is not None and (due is None or free < due):
                    due = free
                if due is not None:
                    remaining = min(remaining, max((due - now) / 1000.0, 0.001))
                self._cond.wait(remaining)
                waited = True

    def _claim_shared(self, worker_id, types, qs, end):
        """_claim_locked across processes: decided under the append lock on the caught-up
        state (at most one live lease per job over every process); a blocked claim sleeps
        on the page's append counter (any process's append wakes it), at most 100 ms at a
        time so a close() here or a due time is noticed."""
        waited = False
        while True:
            try:
                claimed = self._claim_shared_once(worker_id, types, qs, end)
            except ClosedError:
                if waited:
                    return None         # closed while we waited: a clean shutdown
                raise
            if claimed is None or claimed[0] is not None:
                return claimed
            seen, remaining = claimed[1]
            self._parked += 1
            try:
                self._sl.wait_append(seen, min(remaining, 0.1))
            except ClosedError:
                return None
            finally:
                self._parked -= 1
            waited = True

    def _claim_shared_once(self, worker_id, types, qs, end):
        """One try of _claim_shared: (job, reserved), None (give up), or (None, (the
        page's append counter, seconds to sleep at most))."""
        def body():
            if self._closed:
                raise ClosedError("the queue is closed")
            if self._read_only:
                raise ReadOnlyError("the queue was opened read_only")
            now = self._now_ms()
            job_id = self._state.pick(now, qs, types)
            if job_id is not None:
                assert self._liveness is not None      # a shared queue is always attached
                rec = self._state.plan_claim(job_id, now, _new_token(), worker_id,
                                             self._liveness.attach_lsn)
                reserved = self._reserve_apply1(rec)
                return self._state.get(job_id), reserved
            if end is None:
                return None
            remaining = end - time.monotonic()
            if remaining <= 0:
                return None
            due = self._state.next_due_ms()
            if due is not None:
                remaining = min(remaining, max((due - now) / 1000.0, 0.001))
            # no lost wake-up: read under the append lock, a publish after it changes the
            # counter; optimistically, the counter is read first and the tail checked
            # after: a publish not yet counted in `seen` is one whose next LSN was stored
            # before its count, so a tail still at our cursor means none after it was
            seen = self._sl.append_seq()
            if self._optimistic and self._sl.tail_hint() != self._cursor[2]:
                raise _TailMoved()
            return None, (seen, remaining)

        return self._decide(body)

    def heartbeat(self, job_id: str, token: str) -> bool:
        """Extend the lease (to now + lease_duration). Returns True if a cancel was
        requested. StaleLeaseError if the token no longer holds the job."""
        job_id, tok = check_job_id(job_id), token_bytes(token)
        def body() -> bool:
            self._check_open()
            rec = self._state.plan_heartbeat(job_id, tok, self._now_ms())
            if self._out_of_space():
                self._apply_unlogged(rec)
                return self._state.cancel_requested(job_id)
            reserved = self._reserve_apply1(rec)
            try:
                return self._state.cancel_requested(job_id)
            finally:
                self._publish(reserved, "none")   # keeps the GIL: fine under the lock

        return self._decide(body)

    def progress(self, job_id: str, token: str, fraction: float,
                 message: str | None = None) -> None:
        """Report progress (0.0..1.0, optional message); counts as a heartbeat for
        last_heartbeat but does not extend the lease."""
        job_id, tok = check_job_id(job_id), token_bytes(token)
        check_progress(fraction, message)
        def body():
            self._check_open()
            rec = self._state.plan_progress(job_id, tok, self._now_ms(), float(fraction),
                                            message)
            return self._reserve_apply1(rec)

        self._publish(self._decide(body), "none")

    def complete(self, job_id: str, token: str, result: Any = None, *,
                 durable: bool = True) -> None:
        """Mark the attempt's job COMPLETED with an optional JSON ``result``."""
        job_id, tok = check_job_id(job_id), token_bytes(token)
        res = None if result is None else encode_json(result, "result")
        if res is not None and len(res) > self._max_payload:
            raise ValueError(f"result is {len(res)} bytes encoded; the limit is "
                             f"{self._max_payload} (max_payload_bytes)")
        def body():
            self._check_open()
            rec = self._state.plan_complete(job_id, tok, self._now_ms(), res)
            reserved = self._reserve_apply1(rec)
            if self._state.control.wake_on_finish:   # a limit's slot, or children released
                self._cond.notify_all()
            return reserved

        self._publish(self._decide(body), self._durable_wait if durable else "none")

    def fail(self, job_id: str, token: str, error: str, *, durable: bool = True) -> JobStatus:
        """Record a failed attempt. Returns FAILED (a retry is scheduled after the backoff),
        DEAD_LETTER (retries spent) or CANCELLED (a cancel had been requested). Errors over
        64 KiB are truncated."""
        job_id, tok = check_job_id(job_id), token_bytes(token)
        error = error_text(error)
        def body():
            self._check_open()
            rec = self._state.plan_fail(job_id, tok, self._now_ms(), error, self._delay)
            reserved = self._reserve_apply1(rec)
            if rec.outcome == R.OUTCOME_RETRY or self._state.control.wake_on_finish:
                self._cond.notify_all()
            return rec, reserved

        rec, reserved = self._decide(body)
        self._publish(reserved, self._durable_wait if durable else "none")
        return {R.OUTCOME_RETRY: JobStatus.FAILED, R.OUTCOME_DEAD: JobStatus.DEAD_LETTER,
                R.OUTCOME_CANCELLED: JobStatus.CANCELLED}[rec.outcome]

    def release(self, job_id: str, token: str) -> JobStatus:
        """Hand a claimed job back: RUNNING -> PENDING, due now, without spending an
        attempt (its retry count is unchanged), recorded in the history as "release".
        For a worker shutting down with jobs whose handlers had not started, or were cut
        off by the shutdown rather than by the job. Returns PENDING, or CANCELLED if a
        cancel had been requested. StaleLeaseError if the token no longer holds the
        job's lease. Durable when it returns (a crash after it does not charge the
        attempt as "process died")."""
        job_id, tok = check_job_id(job_id), token_bytes(token)
        with self._deciding():
            self._check_open()
            rec = self._state.plan_release(job_id, tok, self._now_ms())
            reserved = self._reserve_apply1(rec)
            self._cond.notify_all()
        self._publish(reserved, "durable")
        return JobStatus.CANCELLED if rec.outcome == R.OUTCOME_CANCELLED else JobStatus.PENDING

    # ------------------------------------------------------------------ operators

    def cancel(self, job_id: str) -> JobStatus:
        """Cancel a pending, scheduled or failed (retry-waiting) job -> CANCELLED. For a
        running job, request cancellation (its next heartbeat returns True; a fail or an
        expired lease then ends it CANCELLED) and return RUNNING. InvalidStateError for a
        finished job."""
        job_id = check_job_id(job_id)
        with self._deciding():
            self._check_open()
            rec = self._state.plan_cancel(job_id, self._now_ms())
            if rec is None:
                return JobStatus.RUNNING
            reserved = self._reserve_apply([rec])
            if self._state.control.wake_on_finish:
                self._cond.notify_all()
        self._publish(reserved, "durable")
        return JobStatus.CANCELLED if isinstance(rec, R.Cancel) else JobStatus.RUNNING

    def retry_dead(self, job_id: str) -> None:
        """Re-drive a dead-lettered job: PENDING now, retry_count reset to 0."""
        job_id = check_job_id(job_id)
        with self._deciding():
            self._check_open()
            rec = self._state.plan_retry_dead(job_id, self._now_ms())
            reserved = self._reserve_apply([rec])
            self._cond.notify_all()
        self._publish(reserved, "durable")

    def purge(self, status: JobStatus | str | None = None, older_than: float | None = None,
              *, before: datetime | None = None) -> int:
        """Drop finished jobs (completed, dead-lettered, cancelled; or only ``status``) that
        finished more than ``older_than`` seconds ago (or before ``before``) from the live
        state, with a PURGE record. Returns how many."""
        statuses: tuple[int, ...] = FINISHED
        if status is not None:
            st = JobStatus(status)
            if not st.is_finished:
                raise ValueError(f"only finished jobs can be purged, not {st.value}")
            statuses = (st.code,)
        if older_than is not None and before is not None:
            raise ValueError("give older_than or before, not both")
        if older_than is not None and (isinstance(older_than, bool) or
                                       not isinstance(older_than, (int, float)) or older_than < 0):
            raise ValueError(f"older_than must be seconds >= 0, got {older_than!r}")
        before_ms = to_ms(before, "before") if before is not None else None
        total = 0
        while True:
            with self._deciding():
                self._check_open()
                now = self._now_ms()
                cut = before_ms if before_ms is not None else \
                    now - int((older_than or 0) * 1000) + (0 if older_than else 1)
                rec = self._state.plan_purge(cut, now, statuses, limit=50_000)
                if rec is None:
                    break
                reserved = self._reserve_apply([rec])
            self._publish(reserved, "durable")
            total += len(rec.ids)
        return total

    def reap(self, now: datetime | float | None = None) -> int:
        """Expire leases (now > deadline) and timeouts (now > started + timeout) at once:
        each becomes a logged REAP; the job goes back to pending after the backoff with
        retry_count + 1, or to dead-letter when its retries are spent. Returns how many.
        ``now``: a datetime or epoch seconds (default: the queue's clock)."""
        if now is None:
            now_ms = None
        elif isinstance(now, datetime):
            now_ms = to_ms(now, "now")
        elif isinstance(now, (int, float)) and not isinstance(now, bool):
            now_ms = round(now * 1000)
        else:
            raise TypeError("now must be a datetime, epoch seconds or None")
        total = 0
        while True:
            with self._deciding():
                self._check_open()
                recs = self._state.plan_reap(self._now_ms() if now_ms is None else now_ms,
                                             self._delay, limit=10_000)
                if not recs:
                    return total
                self._append_apply(recs)
                self._cond.notify_all()
            total += len(recs)

    def _reaper_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                if self._liveness is not None:
                    self._liveness.probe()
                self.reap()
                if self._liveness is not None:
                    with self._lock:
                        self._liveness.publish(self._cursor[2])
                if self._schedules:
                    self.run_periodic()
            except ClosedError:
                return
            except Exception:  # a failed log refuses writes until reopened; stop quietly
                return

    def compact(self, on_progress: Callable[[int, int], None] | None = None):
        """Write a snapshot of the live state now (applying retention first), keep the two
        newest snapshots, retire the WAL segments the older one covers. The queue lock is
        held only to capture the state. ``on_progress(done, total)`` is called as jobs are
        written. Returns a snapshot.CompactionResult."""
        self._check_open()
        return self._compactor.compact(on_progress)

    def flush(self) -> None:
        """Make everything appended so far durable (in every durability mode)."""
        self._check_open(write=False)
        self._log.flush()

    # ------------------------------------------------------------------ queue control
    # Each is a record folded like the others (control.py): durable, replayed, in stats.

    def _control(self, rec) -> None:
        """Append and fold one control record, wake waiting claims, wait for durability."""
        with self._deciding():
            self._check_open()
            reserved = self._reserve_apply([rec])
            self._cond.notify_all()
        self._publish(reserved, "durable")

    def pause(self, queue: str) -> None:
        """Stop handing out jobs of ``queue`` (enqueues still work; running jobs go on)
        until resume(). Survives restarts. A queue already paused: nothing is written."""
        check_name(queue, "queue")
        with self._reading():
            if queue in self._state.control.paused:
                return
        self._control(R.Pause(queue, self._now_ms()))

    def resume(self, queue: str) -> None:
        """Hand out jobs of ``queue`` again. A queue not paused: nothing is written."""
        check_name(queue, "queue")
        with self._reading():
            if queue not in self._state.control.paused:
                return
        self._control(R.Resume(queue, self._now_ms()))

    def set_limit(self, *, queue: str | None = None, job_type: str | None = None,
                  concurrency: int | None = None,
                  rate: tuple[int, float] | None = None) -> None:
        """Limit one queue or one job type (give exactly one): at most ``concurrency``
        jobs RUNNING at once over all workers, and at most ``rate[0]`` claims per
        ``rate[1]`` seconds (a sliding window over the claims' own times). A job held back
        stays pending and is not charged an attempt. Both None removes the limit. The
        whole limit of that queue/job type is replaced."""
        scope, name, conc, count, period = check_limit_args(queue, job_type, concurrency,
                                                            rate)
        self._control(R.Limit(scope, name, self._now_ms(), conc, count, period))

    def schedule_periodic(self, name: str, cron: str, job: Job, *, tz: str = "UTC",
                          missed: str = "skip", grace: float = 60.0):
        """Enqueue a copy of ``job`` (a new id each time) at every due time of the cron
        expression ``cron`` in time zone ``tz``. Each firing is a PERIODIC_FIRE record in
        one batch with its enqueue, so a due time fires once however many times the
        process restarts. ``missed``: "skip" (default: due times older than ``grace``
        seconds are not run) or "once" (after downtime the latest missed one runs once).
        The schedule itself lives in this Queue object (register it at startup, like a
        handler); the reaper thread fires it, or call run_periodic(). Replaces a schedule
        of the same name. Returns the schedule (aurora_log.local.cron.Periodic)."""
        from .cron import CronSchedule, Periodic
        check_name(name, "schedule name")
        if not isinstance(job, Job):
            raise TypeError(f"schedule_periodic takes a Job template, not {type(job).__name__}")
        check_seconds(grace, "grace")
        sched = Periodic(name, CronSchedule(cron, tz), job.copy(), missed,
                         round(grace * 1000))
        self._build(self._firing(sched, self._now_ms()), self._now_ms())   # validates
        with self._lock:
            self._check_open(write=False)
            self._schedules[name] = sched
        return sched

    def unschedule_periodic(self, name: str) -> bool:
        """Forget the schedule ``name`` in this process; True if it existed."""
        with self._lock:
            return self._schedules.pop(name, None) is not None

    @staticmethod
    def _firing(sched, now_ms: int) -> Job:
        """The job one firing enqueues: the template with a new id, created now."""
        from ..job import from_ms, new_id
        j = sched.template.copy()
        j.id = new_id()
        j.created_at = from_ms(now_ms)
        return j

    def run_periodic(self, now: datetime | float | None = None) -> builtins.list[str]:
        """Fire every registered schedule that is due (see schedule_periodic); returns the
        ids of the jobs enqueued. The reaper thread calls this every reaper_interval."""
        if not self._schedules:
            return []
        fired: builtins.list[str] = []
        for name in builtins.list(self._schedules):
            now_ms = self._now_ms() if now is None else self._ms(now)
            with self._deciding():             # the firing depends on the fold: caught up
                self._check_open()
                sched = self._schedules.get(name)
                if sched is None:
                    continue
                due = sched.due_to_fire(self._state.control.fired.get(name), now_ms)
                if due is None:
                    continue
                job = self._firing(sched, now_ms)
                rec, payload = self._build(job, now_ms)
                owner = (self._state.unique_owner(rec.unique_key)
                         if rec.unique_key is not None else None)
                fire = R.PeriodicFire(name, now_ms, due, owner or rec.id)
                if owner is not None:          # its unique key is taken: fired, no new job
                    reserved = self._reserve_apply([fire])
                else:
                    reserved = self._reserve_apply([fire, rec],
                                                   [R.encode(fire), (R.ENQUEUE, payload)])
                    fired.append(rec.id)
                self._cond.notify_all()
            self._publish(reserved, "durable")
        return fired

    @staticmethod
    def _ms(now: datetime | float) -> int:
        if isinstance(now, datetime):
            return to_ms(now, "now")
        if isinstance(now, (int, float)) and not isinstance(now, bool):
            return round(now * 1000)
        raise TypeError("now must be a datetime, epoch seconds or None")

    # ------------------------------------------------------------------ reads

    def follow(self, from_lsn: int | None = None, *, poll: float = 0.2, wait: bool = True):
        """Yield every transition from ``from_lsn`` on (None: the oldest stored) as
        :class:`aurora_log.local.follow.LogEntry` objects, as they are written, until the
        queue is closed (or the caller stops iterating; ``wait=False``: until the current
        end). Resume with ``from_lsn=entry.lsn + 1``. Another process can follow the same
        store with :func:`aurora_log.follow` (read-only, no lock)."""
        from .follow import follow
        self._check_open(write=False)
        return follow(self._log.directory, from_lsn, poll=poll, wait=wait,
                      stop=self._log_released.is_set, max_record_bytes=self._log.max_record_bytes)

    def get(self, job_id: str) -> Job | None:
        job_id = check_job_id(job_id)
        with self._reading():
            return self._state.get(job_id)

    def list(self, status: JobStatus | str | None = None, queue: str | None = None,
             job_type: str | None = None, limit: int = 100, after: str | None = None) -> list[Job]:
        """Jobs in enqueue order, filtered; ``after`` = the last id of the previous page."""
        st = None if status is None else JobStatus(status)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be an int >= 0, got {limit!r}")
        with self._reading():
            return self._state.list(status=st, queue=queue, job_type=job_type, limit=limit,
                                    after=after)

    def stats(self) -> dict:
        """Counts per status (pending, running, completed, failed, dead_letter, cancelled,
        total), and the same per queue under "queues"."""
        with self._reading():
            out = self._state.stats()
            out["last_lsn"] = self._state.last_lsn
            out["control"] = self._state.control.describe()
            return out

    def history(self, job_id: str) -> builtins.list[Transition]:
        job_id = check_job_id(job_id)
        with self._reading():
            return self._state.history(job_id)

    def __repr__(self) -> str:
        return f"<aurora_log.Queue {str(self._log.directory)!r}{' closed' if self._closed else ''}>"


class _CompactionLink:
    """The queue as its Compactor sees it (snapshot.CompactionHost): the only way the
    compactor reaches into a queue."""
    __slots__ = ("_q",)

    def __init__(self, q: Queue) -> None:
        self._q = q

    @property
    def log(self):
        return self._q._log

    @property
    def closed(self) -> bool:
        return self._q._closed

    def now_ms(self) -> int:
        return self._q._now_ms()

    @contextmanager
    def locked(self) -> Iterator[State]:
        with self._q._lock:
            self._q._catch_up()
            yield self._q._state

    def track_touched(self) -> None:
        self._q._touched = {}

    def untrack_touched(self) -> dict[str, None]:
        touched, self._q._touched = self._q._touched, None
        return touched or {}

    def append_apply(self, recs: list) -> int:
        return self._q._append_apply(recs)

    def max_at_ms(self) -> int:
        return self._q._max_at


_reattach_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """A child of a process with open queues: their locks may have been held by a thread
    that does not exist here; give each fresh ones, and close the child's copies of the
    parent's fds (the handle, its writer and its threads are the parent's). The child's
    first use of such a queue re-attaches it (Queue._reattach) instead of hanging."""
    global _reattach_lock
    _forks[0] += 1
    _reattach_lock = threading.Lock()
    _tokens.clear()           # the parent's pending tokens: a sibling would draw the same
    for q in list(_OPEN_QUEUES):
        q._lock = YieldingLock()
        q._cond = threading.Condition(q._lock)
        if q._shared:
            if q._liveness is not None:
                q._liveness.forget_after_fork()
            q._log.forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
