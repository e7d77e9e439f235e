"""The claim order: which waiting job a claim takes next. ``ClaimOrder.best`` decides.

One integer orders the waiting jobs, built by :func:`claim_key` and nowhere else::

    (4 - priority) << 112 | due_ms << 64 | seq

so the smallest key is the highest priority, then the earliest due time, then FIFO (``seq``
= the LSN of the record that made the job wait). A job due in the future waits in the timer
heap under :func:`timer_key` (the same key without the priority bits) until ``promote(now)``
moves it to the ready heap of its (queue, job_type) pair.

Structures (all owned by ``ClaimOrder``; the job table stays the state's):

* ``ready``: one heap of ``(claim_key, id)`` per pair index, and beside it a ``lane``: a
  deque of entries that arrived in increasing key order (the common case: FIFO jobs of one
  priority, each key above the last). A job goes to the lane when its key is above the
  lane's last one, else to the heap; the pair's head is the smaller of the two heads. A
  claim then pops a deque (O(1)) instead of sifting a heap of big-int tuples (2.4 us at
  40,000 waiting, more at a million);
* ``timers``: one heap of ``(timer_key, id)`` for jobs due after the record that made them
  wait (scheduled jobs, retry backoff);
* ``runs`` / ``trun``: after a version-2 snapshot load, the snapshot's never-touched pending
  jobs in claim order, per pair and for the timers, walked straight from the snapshot
  content beside the heaps (see ``Run``), so a load pushes no entry per job.

Liveness: an entry is live while its job still waits in the episode that pushed it (a
never-touched job, stored as a blob: always; a touched one: status pending/failed and
``seq`` = the entry's seq). Dead entries are dropped lazily, but never left at a head: the
fold calls ``left(job_id, pair)`` when a job stops waiting (claim, cancel) and the order
drops it and any dead entries under it. So every head is live, and ``best`` and
``next_due_ms`` only read. The one change a claim's decision makes is the clock's:
``promote(now)`` moves the timers that came due into the ready heaps (no job changes).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..job import MAX_DUE_MS
from .table import (AT, F_SCHED, FLAGS, LSN, PAIR, PRIO, SCHEDULED, WAITING, LazyJobs, Rec,
                    blob_of, unpack_head)

if TYPE_CHECKING:
    from .state import State
    from .table import SnapshotBase

__all__ = ["ClaimOrder", "Run", "claim_key", "timer_key", "MAX_DUE_MS"]

SEQ_MASK = (1 << 64) - 1

Entry = tuple[int, str]                # (key, job id)


def claim_key(prio: int, due: int, seq: int) -> int:
    """The claim order of a waiting job: smaller = claimed first (priority desc, due, FIFO)."""
    return (4 - prio) << 112 | due << 64 | seq


def timer_key(due: int, seq: int) -> int:
    """The timer order (due, FIFO): ``claim_key`` without the priority bits."""
    return due << 64 | seq


def clamp_due(due: int) -> int:
    """A due time inside the key's bit field (a scheduled time is stored as given)."""
    return 0 if due < 0 else MAX_DUE_MS if due > MAX_DUE_MS else due


def enqueue_due(head: tuple) -> int:
    """The due time of a job's first episode, from its blob head: scheduled, else enqueued."""
    return clamp_due(head[SCHEDULED] if head[FLAGS] & F_SCHED else head[AT])


class Run:
    """One claim-order run of a version-2 snapshot: the ranks (positions among the
    snapshot's never-touched pending jobs) of one pair's ready jobs, or of the timer jobs,
    sorted by key. Consumed front to back like a sorted heap; ``head`` caches the
    current entry ``(key, id)``, ``last`` the last key handed out (order check)."""
    __slots__ = ("base", "pair", "ranks", "head", "last")

    def __init__(self, base: SnapshotBase, pair: int | None,
                 segments: Iterable[tuple[int, int]]) -> None:
        self.base = base
        self.pair = pair                      # None: the timer run
        self.ranks = itertools.chain.from_iterable(
            itertools.starmap(range, ((a, a + c) for a, c in segments)))
        self.head: Entry | None = None
        self.last = -1


class ClaimOrder:
    """The ready heaps, the timer heap and the snapshot runs of one State."""

    def __init__(self, state: State) -> None:
        self.st = state                       # its job table decides liveness
        self.ready: list[list[Entry]] = []    # pair index -> heap
        self.lanes: list[deque[Entry]] = []   # pair index -> entries in increasing key order
        self.timers: list[Entry] = []
        self.runs: dict[int, Run] = {}
        self.trun: Run | None = None
        self._candidates: dict[tuple, list[int]] = {}

    # ------------------------------------------------------------------ building

    def add_pair(self) -> None:
        """A new (queue, job_type) pair got the next index."""
        self.ready.append([])
        self.lanes.append(deque())
        self._candidates.clear()

    def add(self, job_id: str, pair: int, prio: int, due: int, seq: int, at: int) -> None:
        """A job starts waiting (at time ``at``, the record's): into the timer heap if it
        is due later, else straight into its ready heap."""
        if due > at:
            heapq.heappush(self.timers, (due << 64 | seq, job_id))
        else:
            key = claim_key(prio, due, seq)
            lane = self.lanes[pair]
            if not lane or key > lane[-1][0]:
                lane.append((key, job_id))
            else:
                heapq.heappush(self.ready[pair], (key, job_id))

    def add_run(self, job_ids: Sequence[str], pair: int, prio: int, due: int, first_seq: int,
                at: int) -> None:
        """``add`` for jobs of one pair, priority and due time with consecutive seqs from
        ``first_seq`` (a bulk enqueue): their keys are consecutive too, so the entries are
        made and pushed by C-level iteration, with no Python call per job."""
        n = len(job_ids)
        if due > at:
            heap, k0 = self.timers, timer_key(due, first_seq)
        else:
            k0 = claim_key(prio, due, first_seq)
            lane = self.lanes[pair]
            if not lane or k0 > lane[-1][0]:     # the run's keys increase: all fit the lane
                lane.extend(zip(range(k0, k0 + n), job_ids, strict=True))
                return
            heap = self.ready[pair]
        entries = zip(range(k0, k0 + n), job_ids, strict=True)
        deque(map(heapq.heappush, itertools.repeat(heap), entries), maxlen=0)

    def add_many(self, ids: Sequence[str], pair: int, prios: Iterable[int],
                 dues: Iterable[int], first_seq: int, ats: Iterable[int]) -> None:
        """``add`` for jobs of one pair with consecutive seqs from ``first_seq`` (replay's
        bulk fold of an ENQUEUE run); the keys are ``claim_key``'s and ``timer_key``'s."""
        ready, timers, push = self.ready[pair], self.timers, heapq.heappush
        lane = self.lanes[pair]
        last = lane[-1][0] if lane else -1
        if self._add_many_to_lane(lane, last, ids, prios, dues, first_seq, ats):
            return
        lane_append = lane.append
        seq = first_seq
        for job_id, prio, due, at in zip(ids, prios, dues, ats, strict=True):
            if due > at:
                push(timers, (due << 64 | seq, job_id))
            else:
                key = (4 - prio) << 112 | due << 64 | seq
                if key > last:          # in key order, as a replayed FIFO run mostly is
                    lane_append((key, job_id))
                    last = key
                else:
                    push(ready, (key, job_id))
            seq += 1

    @staticmethod
    def _add_many_to_lane(lane: deque, last: int, ids: Sequence[str], prios: Any,
                          dues: Any, first_seq: int, ats: Any) -> bool:
        """add_many's common case without a bytecode loop per job (a reopen folds a
        million): one priority and one due time, every job due at once (no timer), so
        the keys are consecutive integers after the lane's last one (as add_run's).
        False, and nothing added, when the run is not that case."""
        n = len(ids)
        if not n or not isinstance(prios, (bytes, bytearray)) or \
                prios.count(prios[0]) != n or dues.count(dues[0]) != n:
            return False
        due = dues[0]
        if due > min(ats):
            return False                            # a job waits for its due time
        k0 = claim_key(prios[0], due, first_seq)
        if k0 <= last:
            return False
        lane.extend(zip(range(k0, k0 + n), ids, strict=True))
        return True

    def add_blob(self, job_id: str, blob: bytes, due: int, seq: int, at: int) -> None:
        """``add`` for a job given by its blob (pair and priority read from its head)."""
        h = unpack_head(blob)
        self.add(job_id, h[PAIR], h[PRIO], clamp_due(due), seq, at)

    def load_heaps(self, ready: list[list[Entry]], timers: list[Entry]) -> None:
        """Bulk load (a snapshot): extend every heap by the given live entries, heapify once."""
        for ix, add in enumerate(ready):
            if add:
                heap = self.ready[ix]
                heap.extend(add)
                heapq.heapify(heap)
        if timers:
            self.timers.extend(timers)
            heapq.heapify(self.timers)

    def load_runs(self, base: SnapshotBase, runs: Sequence[Sequence[tuple[int, int]]]) -> None:
        """A version-2 snapshot's runs (one per pair, then the timers): walked from here on
        beside the heaps. Each run's head is found now, so the heads are live from the start."""
        self.runs = {ix: Run(base, ix, segs) for ix, segs in enumerate(runs[:-1]) if segs}
        self.trun = Run(base, None, runs[-1]) if runs[-1] else None
        for run in list(self.runs.values()) + ([self.trun] if self.trun else []):
            if run is self.trun or (run.pair is not None and self.runs.get(run.pair) is run):
                self._advance(run)            # (unless a spill took the runs meanwhile)

    # ------------------------------------------------------------------ liveness

    def live(self, key: int, job_id: str) -> bool:
        """Whether a heap entry still stands for a waiting episode of its job."""
        v = self.st.jobs.get(job_id)
        if type(v) is Rec:
            return v.status in WAITING and v.seq == key & SEQ_MASK
        return v is not None                  # a blob: never touched, always waiting

    def _drop_dead(self, entries, pop: Callable = heapq.heappop) -> None:
        """Pop dead entries off the head of a heap (``pop``: heappop) or of a lane
        (``pop``: deque.popleft) until a live one heads it. live() inlined: this runs
        after every claim."""
        jobs = self.st.jobs
        while entries:
            key, job_id = entries[0]
            v = jobs.get(job_id)
            if type(v) is Rec:
                if v.status in WAITING and v.seq == key & SEQ_MASK:
                    return
            elif v is not None:
                return                      # a blob: never touched, always waiting
            pop(entries)

    def left(self, job_id: str, pair: int) -> None:
        """``job_id`` (of pair ``pair``) stopped waiting (the fold applied its claim or
        cancel): wherever it is a head, drop it and the dead entries under it."""
        lane = self.lanes[pair]
        if lane and lane[0][1] == job_id:
            self._drop_dead(lane, deque.popleft)
        heap = self.ready[pair]
        if heap and heap[0][1] == job_id:
            self._drop_dead(heap)
        if self.timers and self.timers[0][1] == job_id:
            self._drop_dead(self.timers)
        if self.runs:
            run = self.runs.get(pair)
            if run is not None and run.head is not None and run.head[1] == job_id:
                self._advance(run)
        trun = self.trun
        if trun is not None and trun.head is not None and trun.head[1] == job_id:
            self._advance(trun)

    # ------------------------------------------------------------------ the decision

    def candidates(self, queues: frozenset | None, job_types: frozenset | None) -> list[int]:
        """The pair indexes a claim for these queues and job types looks at (cached)."""
        ck = (queues, job_types)
        c = self._candidates.get(ck)
        if c is None:
            c = [i for i, (q, t) in enumerate(self.st.pairs)
                 if (queues is None or q in queues) and (job_types is None or t in job_types)]
            if len(self._candidates) > 256:
                self._candidates.clear()
            self._candidates[ck] = c
        return c

    def best(self, candidates: list[int]) -> str | None:
        """The id of the first job in claim order among the ready jobs of these pairs, or
        None. A pure read: every head is live (see the module doc)."""
        best: int | None = None
        best_id = None
        ready, lanes, runs = self.ready, self.lanes, self.runs
        for ix in candidates:
            if runs:
                run = runs.get(ix)
                if run is not None and run.head is not None and \
                        (best is None or run.head[0] < best):
                    best, best_id = run.head
            lane = lanes[ix]
            if lane and (best is None or lane[0][0] < best):
                best, best_id = lane[0]
            heap = ready[ix]
            if heap and (best is None or heap[0][0] < best):
                best, best_id = heap[0]
        return best_id

    def head(self, pair: int) -> Entry | None:
        """The first (key, id) entry of one pair's ready jobs (of its heap, lane or snapshot
        run), or None. For tests and tools; claims use best()."""
        run = self.runs.get(pair)
        heads = [e for e in (self.lanes[pair][0] if self.lanes[pair] else None,
                             self.ready[pair][0] if self.ready[pair] else None,
                             run.head if run is not None else None) if e is not None]
        return min(heads) if heads else None

    def ready_count(self, pair: int) -> int:
        """Entries (live or not yet dropped) in one pair's heap and lane."""
        return len(self.ready[pair]) + len(self.lanes[pair])

    def promote(self, now_ms: int) -> int:
        """The clock's effect: move the timers due by ``now_ms`` (due <= now) into their
        ready heaps. Changes no job. Returns how many moved."""
        timers = self.timers
        jobs = self.st.jobs
        n = 0
        limit = (now_ms + 1) << 64
        while True:
            trun = self.trun
            head = trun.head if trun is not None else None
            if timers and timers[0][0] < limit and (head is None or timers[0][0] < head[0]):
                tkey, job_id = heapq.heappop(timers)
                self._drop_dead(timers)
            elif trun is not None and head is not None and head[0] < limit:
                tkey, job_id = head
                self._advance(trun)               # consumed: it moves to a ready heap
            else:
                break
            v = jobs[job_id]
            h = unpack_head(blob_of(v))
            heapq.heappush(self.ready[h[PAIR]],
                           (claim_key(h[PRIO], tkey >> 64, tkey & SEQ_MASK), job_id))
            n += 1
        return n

    def next_due_ms(self) -> int | None:
        """The due time of the earliest job in the timers (None if none). A pure read."""
        best = self.timers[0][0] if self.timers else None
        head = self.trun.head if self.trun is not None else None
        if head is not None and (best is None or head[0] < best):
            best = head[0]
        return (best >> 64) if best is not None else None

    # ------------------------------------------------------------------ snapshot runs

    def _advance(self, run: Run) -> None:
        """Move ``run.head`` to the run's next live entry (None and the run dropped when it
        is spent). Dead entries (claimed, cancelled, re-queued under a new seq, purged) are
        skipped, as a heap drops its dead entries. Each entry's key is computed from the
        job's own blob (the truth); the run only supplies the order. An entry that does not
        belong in this run, or comes out of key order, means the writer broke its contract:
        every run's rest is pushed into the heaps (so every job stays claimable in the right
        order from here on) and the event is noted in the state's ``anomalies``."""
        run.head = None
        base = run.base
        while True:
            k = next(run.ranks, None)
            if k is None:
                self._drop_run(run)
                return
            jobs = self.st.jobs
            job_id = base.id(k)
            if type(jobs) is LazyJobs:
                jobs.note(job_id, k)
            v = jobs.get(job_id)
            if v is None:
                continue                          # purged since
            h = unpack_head(blob_of(v))
            due, at = enqueue_due(h), h[AT]
            if run.pair is None:
                key = timer_key(due, h[LSN])
                fits = due > at
            else:
                key = claim_key(h[PRIO], due, h[LSN])
                fits = due <= at and h[PAIR] == run.pair
            if not fits or key < run.last:
                self._spill(run, k)
                return
            run.last = key
            if self.live(key, job_id):
                run.head = (key, job_id)
                return

    def _drop_run(self, run: Run) -> None:
        if run.pair is None:
            self.trun = None
        else:
            self.runs.pop(run.pair, None)

    def _spill(self, run: Run, first: int) -> None:
        """A run broke its contract: none of them is trusted any more. Move what is left
        of every run (from rank ``first`` in ``run``) into the heaps, each entry placed
        from its own blob exactly as a snapshot's pending job is placed."""
        self.st.anomaly(self.st.last_lsn, f"snapshot {run.base.where}: claim-order run "
                        f"{'timers' if run.pair is None else run.pair} is not in key order or "
                        f"holds a job that does not belong to it (rank {first}); every run "
                        "rebuilt as a heap")
        rest: list[tuple[Run, tuple[int, ...]]] = [(r, ()) for r in self.runs.values()
                                                   if r is not run]
        if self.trun is not None and self.trun is not run:
            rest.append((self.trun, ()))
        rest.append((run, (first,)))
        self.runs = {}
        self.trun = None
        jobs = self.st.jobs
        for r, extra in rest:
            if r.head is not None:
                heapq.heappush(self.timers if r.pair is None else self.ready[r.pair], r.head)
                r.head = None
            for k in itertools.chain(extra, r.ranks):
                job_id = r.base.id(k)
                if type(jobs) is LazyJobs:
                    jobs.note(job_id, k)
                v = jobs.get(job_id)
                if v is None:
                    continue
                blob = blob_of(v)
                h = unpack_head(blob)
                self.add_blob(job_id, blob, enqueue_due(h), h[LSN], h[AT])
        # entries of jobs that no longer wait went in too: keep every head live
        for heap in self.ready:
            self._drop_dead(heap)
        self._drop_dead(self.timers)
