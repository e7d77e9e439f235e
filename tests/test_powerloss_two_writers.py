"""Power loss with two (or three) writing processes on one shared store (issue 19, Tests;
docs/MULTIPROCESS.md section 13).

Real processes, forked from the test, each open the same store with ``shared=True`` and
enqueue / enqueue_many / claim / complete / fail / cancel / retry_dead at once (one of them
also compacts), in sync mode over 8 KiB segments so that rolls happen under both. Every
syscall of every writer is recorded through the syscall table with a number from one
shared counter (tests/crashsim_procs.py), so the merged recording is one causal order of
events across processes. For crash points in that order, tests/crashsim.py builds the
directory a power cut would leave (unsynced data dropped / kept / a random subset / the
last write of each file torn) and the test:

* replaces DIR/shm (a mapped file: none of its bytes go through syscalls) by nothing,
  zeros, random bytes or a stale but valid page (the run's final page, whose positions are
  ahead of every image's log): recovery must never need it;
* reopens the image (shared, so the opener is alone and rebuilds) and checks the queue
  against the reference model folded over the operations in LSN order (tests/checker.py:
  lost / phantom / resurrected / duplicated, and the state a prefix of the history that
  holds everything acknowledged by either writer before the crash);
* checks the log itself: the records below the recovered tail are exactly the run's
  records at those LSNs (contiguous, none twice, none changed), and reach the LSN of every
  acknowledged operation of both writers;
* on a sample, drains the queue (no job delivered twice, no finished one again) and
  reopens it a second time (the same state).

The history is also checked on its own, before any crash: folded in LSN order, every claim
took a claimable job, every complete/fail a running one, and every fail/cancel returned
what the model says (one lease per job over both processes).

Reproduce:  pytest tests/test_powerloss_two_writers.py -q -s  (prints a summary line)
"""

from __future__ import annotations

import bisect
import copy
import json
import multiprocessing as mp
import os
import random
import struct
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aurora_log
from aurora_log import Job
from aurora_log.errors import InvalidStateError
from aurora_log.local.log import Log
from aurora_log.testing import faults

from checker import (ALWAYS_BARRIERS, SYNC_BARRIERS, Checker, History, HOp, RefModel, Verdict,
                     all_jobs, canon, queue_fingerprint)
from crashsim import DiskModel, crash_images, image_digest, materialize
from crashsim_procs import Merged, ProcessRecorder, SharedCounter, initial_tree, merge
from fakeclock import FakeClock as Clock
from test_powerloss_support import (Summary, _payload, cleanup_fast_dirs, fast_dir,
                                    segment_syncs, synced_before)

CTX = mp.get_context("fork")
T0 = 1_800_000_000.0
OPTIONS = dict(shared=True, durability="sync", reaper_interval=None, auto_compact=False,
               retain_seconds=None, retain_count=None, segment_bytes=8192)
PAGES = ("absent", "zeros", "random", "stale", "as_left")
SYNC_SECONDS = 0.002      # each fdatasync takes 2 ms (crashsim_procs.ProcessRecorder)
_OFF_NEXT_LSN = 224      # native/shm.c OFF_NEXT_LSN: the page's next LSN (u64)


@pytest.fixture
def tmp_path(tmp_path):
    """Crash images live on tmpfs when available (hundreds of opens + fsyncs)."""
    yield fast_dir(tmp_path)
    cleanup_fast_dirs()


# ------------------------------------------------------------------ the writers

class _Writer:
    """One writer's operations, each stamped with global points and the LSN of the batch
    it wrote (the order the reference model folds them in)."""

    def __init__(self, q, rec: ProcessRecorder, k: int, rng: random.Random, clock: Clock,
                 tag: str = ""):
        self.q, self.rec, self.k, self.rng, self.clock = q, rec, k, rng, clock
        self.tag = tag or f"w{k}"          # job ids: unique per writer thread
        self.flusher = False               # a process that only reads and flushes
        self.ops: list[dict] = []
        self.mine: list = []            # jobs this writer claimed and still runs
        self.known: list[str] = []      # ids it enqueued or claimed (cancel candidates)
        self.dead: list[str] = []       # ids its fails dead-lettered (retry_dead candidates)
        self.n = 0

    def run(self, kind, fn, ids=(), **extra):
        last = getattr(self.q.log._tls, "last", None)
        op = dict(kind=kind, ids=list(ids), invoked=self.rec.point(), writer=self.k, **extra)
        self.ops.append(op)
        try:
            r = fn()
        except InvalidStateError as e:      # a race lost to the other writer: nothing written
            op.update(ok=False, error=f"{type(e).__name__}: {e}", lsn=None)
            return None
        op["acked"] = self.rec.point()
        op["ok"] = True
        now = getattr(self.q.log._tls, "last", None)
        op["lsn"] = now[0] if now is not None and now is not last else None
        return op, r

    def new_job(self) -> Job:
        self.n += 1
        payload = _payload(self.rng, self.n)
        if self.rng.random() < 0.04:     # bigger than a segment: a roll to one of its size
            payload["big"] = "x" * self.rng.randrange(9000, 20000)
        return Job("t", payload, id=f"{self.tag}-{self.n:04d}",
                   priority=self.rng.randrange(1, 5), max_retries=self.rng.randrange(0, 3))

    def enqueue(self, jobs: list[Job]) -> None:
        fn = (lambda: self.q.enqueue(jobs[0])) if len(jobs) == 1 else \
            (lambda: self.q.enqueue_many(jobs))
        self.run("enqueue", fn, [j.id for j in jobs],
                 payloads=[canon(j.payload) for j in jobs],
                 max_retries=[j.max_retries for j in jobs])
        self.known += [j.id for j in jobs]

    def claim(self) -> None:
        done = self.run("claim", lambda: self.q.claim(self.tag))
        assert done is not None
        op, job = done
        if job is not None:
            op["ids"] = [job.id]
            self.mine.append(job)
            self.known.append(job.id)

    def finish(self, job, how: str) -> None:
        if how == "complete":
            self.run("complete", lambda: self.q.complete(job.id, job.token, {"ok": job.id}),
                     [job.id], result={"ok": job.id})
            return
        done = self.run("fail", lambda: self.q.fail(job.id, job.token, "boom"), [job.id])
        assert done is not None
        op, status = done
        op["returned"] = status.value
        if status.value == "dead_letter":
            self.dead.append(job.id)

    def cancel(self) -> None:
        jid = self.rng.choice(self.known)
        done = self.run("cancel", lambda: self.q.cancel(jid), [jid])
        if done is not None:
            done[0]["returned"] = done[1].value

    def retry_dead(self) -> None:
        jid = self.dead.pop(self.rng.randrange(len(self.dead)))
        self.run("retry_dead", lambda: self.q.retry_dead(jid), [jid])

    def compact(self) -> None:
        done = self.run("compact", self.q.compact)
        assert done is not None
        done[0]["lsn"] = done[1].lsn       # the state it captured: every record <= lsn

    def flush(self) -> None:
        """Everything published so far made durable (the relaxed modes' barrier): placed in
        the history after the last LSN published when it was called."""
        lsn = self.q.log.next_lsn - 1
        done = self.run("flush", self.q.flush)
        assert done is not None
        done[0]["lsn"] = lsn

    def step(self, relaxed: bool = False) -> None:
        self.clock.t += 1
        if self.flusher:               # appends nothing: reads, and flushes the others'
            time.sleep(self.rng.random() * 0.03)     # spread over the writers' run
            if self.rng.random() < 0.5:
                self.flush()
            else:
                self.q.stats()
            return
        if relaxed and self.rng.random() < 0.05:
            self.flush()
        r = self.rng.random()
        if r < 0.30 or not self.known:
            self.enqueue([self.new_job()])
        elif r < 0.36:
            self.enqueue([self.new_job() for _ in range(self.rng.randint(2, 4))])
        elif r < 0.58:
            self.claim()
        elif r < 0.82:
            if self.mine:
                job = self.mine.pop(self.rng.randrange(len(self.mine)))
                self.finish(job, "complete" if r < 0.70 else "fail")
        elif r < 0.88:
            self.cancel()
        elif r < 0.92:
            if self.dead:
                self.retry_dead()
        else:
            self.clock.t += 4000          # retries come due


class _DiesMidWrite(ProcessRecorder):
    """A writer killed holding the append lock: its `n`-th pwrite to a segment writes half
    of its bytes, then the process writes down what it recorded and exits on the spot (as
    kill -9 would: no close, no unlock; the robust lock tells the next holder, which zeroes
    the half batch)."""

    def __init__(self, counter: SharedCounter, n: int, last_words) -> None:
        super().__init__(counter, SYNC_SECONDS)
        self.left = n
        self.last_words = last_words
        self.dying = False

    def before(self, op):
        if op.name == "pwrite" and (op.path or "").endswith(".seg") and (op.size or 0) > 64:
            self.left -= 1
            if self.left == 0:
                self.dying = True
                return faults.Short(op.size // 2)
        return super().before(op)

    def after(self, op):
        super().after(op)
        if self.dying:
            self.last_words()
            os._exit(0)


def _work(w: _Writer, steps: int, compacts: bool, relaxed: bool, died, doomed: bool) -> None:
    """One writer thread's operations (see _writer_main)."""
    for i in range(steps):
        if compacts and i in (steps // 3, 2 * steps // 3):
            w.compact()              # a snapshot and retirement while the others write
        w.step(relaxed=relaxed)
    if died is not None and not doomed:
        assert died.wait(60), "the doomed writer never died"
        for _ in range(4):
            w.step(relaxed=relaxed)
    while w.mine:                    # nothing left RUNNING: close returns nothing
        w.finish(w.mine.pop(), "complete")


def _writer_main(k: int, root: str, counter: SharedCounter, opened, start, out: str,
                 steps: int, seed: int, die_at: int | None = None,
                 durability: str = "sync", died=None, threads: int = 1,
                 flusher: bool = False) -> None:
    """A child: open the store after the writers before it did (all at once if `opened` is
    None), run `steps` operations, finish its own running jobs, close; then write its
    events and operations to `out`. `die_at`: die at that pwrite to a segment instead (and
    set `died`); a survivor given `died` waits for the death and writes a few more
    operations after it (the first takes the dead holder's lock and repairs). `threads`:
    that many writer threads in the process, on its one queue. `flusher`: it never
    appends; it reads and calls flush() (a dashboard, a CLI), so its view of the newest
    segment is the one it attached to."""
    try:
        ws: list[_Writer] = []

        def last_words(stats=None):
            rec.dump(Path(out) / f"events-{k}.jsonl")
            Path(out, f"ops-{k}.json").write_text(json.dumps(
                {"ops": [op for w in ws for op in w.ops], "stats": stats or {}}))
            if died is not None and stats is None:
                died.set()
        rec = ProcessRecorder(counter, SYNC_SECONDS) if die_at is None else \
            _DiesMidWrite(counter, die_at, last_words)
        rng = random.Random(seed * 1000 + k)
        clock = Clock(T0)
        with faults.installed(rec):
            if k > 0 and opened is not None:
                opened[k - 1].wait(60)
            q = aurora_log.open(Path(root) / "store", clock=clock,
                                **dict(OPTIONS, durability=durability))
            if opened is not None:
                opened[k].set()
            start.wait(60)
            ws += [_Writer(q, rec, k, random.Random(rng.random()), clock,
                           f"w{k}" if threads == 1 else f"w{k}t{t}") for t in range(threads)]
            for w in ws:
                w.flusher = flusher
            args = [(w, steps, k == 0 and t == 0, durability != "sync", died,
                     die_at is not None) for t, w in enumerate(ws)]
            if threads == 1:
                _work(*args[0])
            else:
                errors: list[BaseException] = []

                def body(a):
                    try:
                        _work(*a)
                    except BaseException as e:  # noqa: BLE001 - reported below
                        errors.append(e)
                pool = [threading.Thread(target=body, args=(a,)) for a in args]
                for th in pool:
                    th.start()
                for th in pool:
                    th.join()
                if errors:
                    raise errors[0]
            stats = q.log.stats()
            q.close()
        last_words(stats)
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


# ------------------------------------------------------------------ one recorded run

@dataclass
class Run:
    merged: Merged
    hist: History
    lsns: list[int]                 # per history op: the LSN its record(s) end at
    reference: dict[int, tuple[int, bytes]]     # every record the run wrote, by LSN
    page: bytes                     # the final control page (a stale one for every image)
    stats: list[dict]
    raw_ops: list[dict] = field(default_factory=list)


def record_run(root: Path, *, writers: int = 2, steps: int = 70, seed: int = 1,
               staggered: bool = True, die_at: int | None = None,
               durability: str = "sync", threads: int = 1, flusher: bool = False) -> Run:
    """Run `writers` processes on a new store under root and merge their recordings.
    staggered: each opens after the one before it (else all at once, racing to create the
    store); die_at: the last writer is killed at that pwrite to a segment; flusher: the
    last writer only reads and flushes."""
    root.mkdir(parents=True, exist_ok=True)
    out = root / "out"
    out.mkdir()
    initial = initial_tree(root)
    counter = SharedCounter()
    opened = [CTX.Event() for _ in range(writers)]
    start = CTX.Barrier(writers)
    died = CTX.Event() if die_at is not None else None
    procs = [CTX.Process(target=_writer_main,
                         args=(k, str(root), counter, opened if staggered else None, start,
                               str(out), steps, seed, die_at if k == writers - 1 else None,
                               durability, died, threads, flusher and k == writers - 1))
             for k in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0, f"writer exited with {p.exitcode}"
    merged = merge(root, initial, [out / f"events-{k}.jsonl" for k in range(writers)])
    raw, stats = [], []
    for k in range(writers):
        d = json.loads((out / f"ops-{k}.json").read_text())
        raw += d["ops"]
        stats.append(d["stats"])
    hist, lsns = _history(merged, raw, durability)
    page = (root / "store" / "shm").read_bytes()
    return Run(merged, hist, lsns, _reference_log(merged, root / "ref"), page, stats, raw)


def _history(merged: Merged, raw: list[dict], durability: str = "sync"
             ) -> tuple[History, list[int]]:
    """The operations that wrote something, in LSN order (the order the log has them),
    with crash points from the global numbers. A compaction or a flush writes no record:
    it goes after the records it made durable."""
    written = [o for o in raw if o.get("ok") and o["lsn"] is not None]
    lsns = [o["lsn"] for o in written if o["kind"] not in ("compact", "flush")]
    assert len(set(lsns)) == len(lsns), "two operations ended at one LSN"
    written.sort(key=lambda o: (o["lsn"], o["kind"] in ("compact", "flush")))
    hist = History(lambda: 0, mode=durability)
    for o in written:
        op = HOp(len(hist.ops), o["kind"], tuple(o["ids"]),
                 invoked=merged.point_of(o["invoked"]), acked=merged.point_of(o["acked"]),
                 ok=True, barrier=o["kind"] in (SYNC_BARRIERS if durability == "sync"
                                                else ALWAYS_BARRIERS),
                 result=o.get("result"),
                 payloads=tuple(o.get("payloads", ())),
                 max_retries=tuple(o.get("max_retries", ())))
        op.returned = o.get("returned")          # type: ignore[attr-defined]
        hist.ops.append(op)
    return hist, [o["lsn"] for o in written]


def _reference_log(merged: Merged, dest: Path) -> dict[int, tuple[int, bytes]]:
    """Every record the run wrote, by LSN, read from every segment file it ever wrote
    (retired ones included) as the page cache last held them."""
    model = DiskModel(merged)
    model.advance_to(len(merged.ops))
    wal = dest / "wal"
    wal.mkdir(parents=True)
    for rel, data in model.all_files().items():
        parts = Path(rel).parts
        if len(parts) == 3 and parts[1] == "wal" and rel.endswith(".seg"):
            (wal / parts[2]).write_bytes(data)
    log = Log.open(dest, read_only=True)
    try:
        return {lsn: (rtype, payload) for lsn, rtype, payload in log.scan(log.first_lsn)}
    finally:
        log.close()


def check_history(run: Run) -> None:
    """Folded in LSN order, the operations both processes saw agree with the model."""
    m = RefModel()
    for op in run.hist.ops:
        j = m.jobs.get(op.ids[0]) if op.ids else None
        if op.kind == "claim":
            assert j is not None and j.status in ("pending", "failed"), (op, j)
        elif op.kind in ("complete", "fail"):
            assert j is not None and j.status == "running", (op, j)
        elif op.kind == "cancel":
            assert j is not None
            want = "running" if j.status == "running" else "cancelled"
            assert op.returned == want, (op, j)          # type: ignore[attr-defined]
        got = m.apply(op)
        if op.kind == "fail":
            assert op.returned == got, (op, got)          # type: ignore[attr-defined]


# ------------------------------------------------------------------ crash images

def _set_page(store: Path, how: str, stale: bytes, rng: random.Random) -> None:
    page = store / "shm"
    if how == "absent":
        page.unlink(missing_ok=True)
    elif how == "zeros":
        page.write_bytes(bytes(len(stale)))
    elif how == "random":
        page.write_bytes(rng.randbytes(len(stale)))
    elif how == "stale":
        page.write_bytes(stale)
    if page.exists():
        os.chmod(page, 0o600)


@dataclass
class Outcome:
    jobs: list | None = None
    fp: int | None = None
    tail: int = 0                  # the recovered log's next LSN
    error: str | None = None
    drained: Verdict | None = None


def _open_image(store: Path, run: Run, point: int, chk: Checker, *, deep: bool) -> Outcome:
    out = Outcome()
    clock = Clock(T0 + 10**6)
    q = aurora_log.open(store, clock=clock, **OPTIONS)
    try:
        log = q.log
        if not log.rebuilt:
            out.error = "the first open after a power cut did not rebuild the page"
            return out
        out.jobs = all_jobs(q)
        out.fp = queue_fingerprint(out.jobs)
        out.tail = log.recovered_next_lsn
        prev = None
        for lsn, rtype, payload in log.scan(log.first_lsn):
            if lsn >= out.tail:
                break
            if prev is not None and lsn != prev + 1:
                out.error = f"LSN {lsn} follows {prev}: a hole in the recovered log"
                return out
            if run.reference.get(lsn) != (rtype, payload):
                out.error = f"the record at LSN {lsn} is not the one the run wrote there"
                return out
            prev = lsn
        if deep:
            out.drained = Verdict(point)
            clock.t += 7200               # every retry and every reaped job is due
            chk.drain(q, out.drained, point)
    finally:
        q.close()
    if deep and out.error is None and out.drained is not None and out.drained.ok:
        rep = aurora_log.verify(store)
        if not rep.ok:
            out.error = f"verify after the drain: {rep.problems[:3]}"
            return out
        # the recovery's own records were durable: a second open shows the drained state
        with aurora_log.open(store, clock=Clock(T0 + 2 * 10**6), **OPTIONS) as q2:
            st = q2.stats()
            if st["pending"] or st["running"]:
                out.error = f"a second open shows {st['pending']} pending, {st['running']} running"
    return out


def replay_run(tmp: Path, run: Run, modes, points, *, seed: int = 0, deep_every: int = 5,
               page: str | None = None, stride: dict[str, int] | None = None) -> Summary:
    """Crash images at `points` (None: every point) in each of `modes`, each with the
    control page replaced as `page` says (None: a different way at each point).
    stride: {mode: k} checks that mode only at every k-th point (the budget of make test)."""
    t = time.monotonic()
    chk = Checker(run.hist)
    s = Summary()
    rng = random.Random(seed)
    syncs = segment_syncs(run.merged)
    cache: dict[tuple[str, str], Outcome] = {}
    work = tmp / "crash"
    seen = set()
    acked_lsn = _acked_lsns(run)
    for i, mode, img in crash_images(run.merged, modes, seed=seed, points=points):
        if stride and i % stride.get(mode, 1):
            continue
        seen.add(i)
        s.images += 1
        how = page or PAGES[i % len(PAGES)]
        key = (image_digest(img), how)
        if key not in cache:
            target = materialize(img, work)
            store = target / "store"
            deep = len(cache) % deep_every == 0
            try:
                if store.exists():
                    _set_page(store, how, run.page, rng)
                cache[key] = _open_image(store, run, i, chk, deep=deep)
            except Exception as e:  # noqa: BLE001 - every failure is reported
                cache[key] = Outcome(error=f"{type(e).__name__}: {e}\n"
                                           f"{traceback.format_exc(limit=4)}")
            s.recoveries += 1
            s.drains += deep
        o = cache[key]
        where = f"{mode} crash after op {i}/{len(run.merged.ops)} (page {how})"
        if o.error:
            v = Verdict(i, error=o.error)
        else:
            assert o.jobs is not None
            v = chk.check(i, o.jobs, fp=o.fp, synced=synced_before(syncs, i))
            need = acked_lsn(i)
            if o.tail <= need:
                v.error = f"acknowledged LSN {need} is not in the recovered log (tail {o.tail})"
            # not just some prefix: exactly the operations whose records survived
            k = bisect.bisect_left(run.lsns, o.tail)
            if chk.fps[k] != o.fp:
                v.error = v.error or (f"the state is not the model folded over the {k} "
                                      f"operations below the recovered tail {o.tail}")
            if o.drained is not None:
                v.resurrected += [x for x in o.drained.resurrected if x not in v.resurrected]
                v.duplicated += o.drained.duplicated
                v.error = v.error or o.drained.error
        s.add(v, where)
    s.points = len(seen)
    s.distinct = len(cache)
    s.seconds = time.monotonic() - t
    return s


def _acked_lsns(run: Run):
    """point -> the highest LSN of an operation acknowledged durable by then (either
    writer): the recovered log must reach it."""
    acks = sorted((op.acked, lsn) for op, lsn in zip(run.hist.ops, run.lsns, strict=True)
                  if op.barrier and op.acked is not None)

    def need(point: int) -> int:
        best = 0
        for acked, lsn in acks:
            if acked > point:
                break
            best = max(best, lsn)
        return best
    return need


def _report(name: str, run: Run, s: Summary) -> None:
    # the page's counters are the store's (every process's): the last reading is the total
    covered = max(x.get("covered", 0) for x in run.stats)
    syncs = max(x.get("fdatasyncs", 0) for x in run.stats)
    rolls = sum(x.get("rolls", 0) for x in run.stats)
    print(f"\n[powerloss/{name}] {len(run.merged.ops)} calls, {len(run.hist.ops)} writes, "
          f"{rolls} rolls, {syncs} fdatasyncs, {covered} commits covered by a sync another "
          f"waiter led; "
          f"{s.points} crash points, {s.images} images, {s.distinct} distinct recovered, "
          f"{s.drains} drained; lost {s.lost}, phantom {s.phantom}, resurrected "
          f"{s.resurrected}, duplicated {s.duplicated}, holes {s.holes}, {s.seconds:.1f}s")
    assert not s.failures, "\n".join(s.failures[:20])
    assert s.lost == s.phantom == s.resurrected == s.duplicated == s.holes == 0


# ------------------------------------------------------------------ tests

@pytest.fixture(scope="module")
def two_writers(tmp_path_factory):
    """One recorded run of two writers, shared by the tests below."""
    root = fast_dir(tmp_path_factory.mktemp("pl2"))
    run = record_run(root / "rec", writers=2, steps=70, seed=1)
    yield run, root
    cleanup_fast_dirs()


def test_two_writers_history_agrees_with_the_model(two_writers):
    """Both processes wrote every kind of record, interleaved, and the history folded in
    LSN order agrees with what each process was told."""
    run, _ = two_writers
    kinds = {op.kind for op in run.hist.ops}
    assert {"enqueue", "claim", "complete", "fail", "cancel", "compact"} <= kinds
    by_writer = [o["writer"] for o in sorted(run.raw_ops, key=lambda o: o.get("lsn") or 0)
                 if o.get("ok") and o["lsn"] is not None]
    assert set(by_writer) == {0, 1}
    switches = sum(a != b for a, b in zip(by_writer, by_writer[1:], strict=False))
    assert switches > 10                      # really interleaved, not one after the other
    assert len({op.pid for op in run.merged.ops}) == 2     # type: ignore[attr-defined]
    assert sum(x["rolls"] for x in run.stats) >= 3
    check_history(run)


def test_two_writers_power_loss_at_every_call_dropped_and_torn(two_writers):
    """At every call of both writers: unsynced data and directory entries lost; and at
    every third call, everything unsynced kept but the last write of each file torn."""
    run, root = two_writers
    s = replay_run(root / "every", run, ("drop", "torn"), None, seed=1, stride={"torn": 3})
    assert s.points == len(run.merged.ops) + 1
    _report("2 writers/drop+torn", run, s)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(data=st.data())
def test_two_writers_power_loss_sampled_keep_subset_torn(two_writers, data):
    """The other modes at hypothesis-chosen crash points, each image drained and verified:
    everything kept (what kill -9 of both leaves), a random subset of the unsynced changes
    (a later batch may survive an earlier one), the last write of each file torn."""
    run, root = two_writers
    point = data.draw(st.integers(0, len(run.merged.ops)), label="point")
    mode = data.draw(st.sampled_from(("keep", "subset", "torn")), label="mode")
    page = data.draw(st.sampled_from(PAGES), label="page")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    s = replay_run(root / "sampled", run, (mode,), [point], seed=seed, deep_every=1,
                   page=page)
    assert not s.failures, "\n".join(s.failures)


def test_three_writers_power_loss_at_every_call_dropped(tmp_path):
    """Three writers (more commits covered by another process's fdatasync), every call."""
    run = record_run(tmp_path / "rec", writers=3, steps=30, seed=2)
    check_history(run)
    s = replay_run(tmp_path / "every", run, ("drop",), None, seed=2)
    _report("3 writers/drop", run, s)


def test_a_stale_valid_page_after_a_power_cut_is_rebuilt_from_the_log(two_writers):
    """A power cut can leave DIR/shm as it was late in the run: a valid page (magic, crc,
    ready) whose positions are ahead of what survived in the log. The first open must
    rebuild it from the log: the next record lands at the recovered tail, and the store
    reopens to the same state. (tests/test_multiprocess.py's
    test_stale_or_damaged_page_is_rebuilt_when_nobody_is_attached covers a page of random
    bytes and one left by a killed holder; tests/test_shm.py's
    test_first_attach_rebuilds_a_stale_page_from_the_log the C side of this case.)"""
    run, root = two_writers
    page_next = struct.unpack_from("<Q", run.page, _OFF_NEXT_LSN)[0]
    assert run.page[:8] == b"AURSHM01" and page_next == max(run.reference) + 1
    model = DiskModel(run.merged)
    model.advance_to(len(run.merged.ops) // 2)
    store = materialize(model.crash_image("drop"), root / "stale") / "store"
    _set_page(store, "stale", run.page, random.Random(0))
    with aurora_log.open(store, clock=Clock(T0 + 10**6), **OPTIONS) as q:
        assert q.log.rebuilt
        tail = q.log.recovered_next_lsn
        assert tail < page_next                 # the page really was ahead of the log
        before = {j.id: j.status for j in all_jobs(q)}
        nxt = q.log.next_lsn
        assert nxt == tail + 1 + q.recovered    # ATTACH and the reaps, after the log's tail
        q.enqueue(Job("t", {"after": "the cut"}, id="after-cut"))
        assert q.log.next_lsn == nxt + 1        # at the log's tail, not the page's
    with aurora_log.open(store, clock=Clock(T0 + 10**6), **OPTIONS) as q:
        after = {j.id: j.status for j in all_jobs(q)}
        assert after.pop("after-cut").value == "pending"
        assert after == before
        lsns = [lsn for lsn, _, _ in q.log.scan(q.log.first_lsn)]
        assert lsns == list(range(lsns[0], lsns[0] + len(lsns)))
    assert aurora_log.verify(store).ok


def test_harness_sees_a_loss_when_one_writer_never_synced(two_writers):
    """Negative control: the same recording with writer 1's fdatasyncs erased (as if they
    never happened; writer 0's still cover writer 1's bytes when they came first) must lose
    acknowledged records, so the zeros above mean something."""
    run, root = two_writers
    pid1 = {op.pid for op in run.merged.ops}           # type: ignore[attr-defined]
    victim = max(pid1)
    events = []
    for kind, op in run.merged.events:
        if op.name in ("fdatasync", "fsync") and op.pid == victim:  # type: ignore[attr-defined]
            op = copy.copy(op)
            op.errno, op.result = 5, -1
        events.append((kind, op))
    broken = copy.copy(run.merged)
    broken.events = events
    broken.ops = [op for kind, op in events if kind == "done"]
    bad = copy.copy(run)
    bad.merged = broken
    s = replay_run(root / "control", bad, ("drop",), range(0, len(broken.ops) + 1, 5), seed=1)
    assert s.lost > 0 or any("acknowledged LSN" in f for f in s.failures), s.failures[:3]


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("writers,seed", [(2, 101), (3, 102), (2, 103)])
def test_many_writers_power_loss_every_call_all_modes(tmp_path, writers, seed):
    """Longer runs, every call in all four modes."""
    run = record_run(tmp_path / "rec", writers=writers, steps=300, seed=seed)
    check_history(run)
    s = replay_run(tmp_path / "every", run, ("drop", "keep", "subset", "torn"), None,
                   seed=seed)
    _report(f"{writers} writers/all modes, seed {seed}", run, s)


def test_two_writers_one_killed_mid_write_then_power_loss(tmp_path):
    """One writer dies holding the append lock with half a batch written (its running jobs
    left RUNNING); the other repairs the tail and carries on. Every call, with unsynced
    data dropped; at every third call kept (the half batch and the repair both in the page
    cache) and torn (the last write of each file, the repair's zeros included, in
    pieces)."""
    run = record_run(tmp_path / "rec", writers=2, steps=40, seed=3, die_at=10)
    survivor = run.stats[0]
    assert survivor["owner_died"] >= 1 and survivor["repairs"] >= 1
    assert run.stats[1] == {}                          # died before its close
    check_history(run)
    s = replay_run(tmp_path / "every", run, ("drop", "keep", "torn"), None, seed=3,
                   stride={"keep": 3, "torn": 3})
    _report("2 writers, one killed mid-write/drop+keep+torn", run, s)


def test_three_writers_racing_to_create_the_store(tmp_path):
    """Three processes open a directory that does not exist yet at the same moment (one
    creates the store, the others attach), then write; every call, unsynced data
    dropped."""
    run = record_run(tmp_path / "rec", writers=3, steps=15, seed=4, staggered=False)
    check_history(run)
    s = replay_run(tmp_path / "every", run, ("drop",), None, seed=4)
    _report("3 writers created at once/drop", run, s)


def test_two_writers_and_a_flusher_interval_mode_every_call_dropped(tmp_path):
    """`interval` durability: each process's background thread syncs every 20 ms, the two
    writers flush now and then, and a third process only reads and flushes (it never
    appends, so after the writers' rolls its segment fd is an old one: the group commits
    it leads must still fdatasync the newest segment). Only what a flush (or any
    fdatasync) covered must survive, as a clean prefix. Every call dropped, every third
    torn."""
    run = record_run(tmp_path / "rec", writers=3, steps=40, seed=5, durability="interval",
                     flusher=True)
    assert sum(op.kind == "flush" for op in run.hist.ops) > 10
    check_history(run)
    s = replay_run(tmp_path / "every", run, ("drop", "torn"), None, seed=5,
                   stride={"torn": 3})
    _report("2 writers + a flusher, interval/drop+torn", run, s)


def test_two_writer_processes_with_three_threads_each_every_call_dropped(tmp_path):
    """Two processes, three writer threads in each on one queue: group commit inside a
    process and across processes at once. Every call dropped."""
    run = record_run(tmp_path / "rec", writers=2, steps=20, seed=6, threads=3)
    assert len({o["ids"][0].split("-")[0] for o in run.raw_ops
                if o["kind"] == "enqueue" and o.get("ok")}) == 6
    check_history(run)
    s = replay_run(tmp_path / "every", run, ("drop",), None, seed=6)
    _report("2 processes x 3 threads/drop", run, s)
