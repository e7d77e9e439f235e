"""Shared pieces of the power-loss runs: the canonical workloads, recording a workload once,
and replaying every crash point through recovery + the checker."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import aurora_log
from aurora_log.testing import faults
from aurora_log.job import Job

from checker import Checker, History, Verdict, all_jobs, queue_fingerprint
from crashsim import FsRecorder, crash_images, image_digest, materialize
from fakeclock import FakeClock as Clock

T0 = 1_800_000_000.0


def fast_dir(tmp_path: Path) -> Path:
    """A scratch directory on tmpfs when there is one (the crash images are opened and
    fsynced hundreds of times; on a real disk that is I/O-bound), else under tmp_path."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        d = Path(tempfile.mkdtemp(prefix="aurora-crash-", dir=shm))
        _cleanup.append(d)
        return d
    return tmp_path


_cleanup: list = []


def cleanup_fast_dirs():
    while _cleanup:
        shutil.rmtree(_cleanup.pop(), ignore_errors=True)




def _payload(rng: random.Random, n: int) -> dict:
    return {"n": n, "blob": "".join(rng.choice("abcdefxyz0123") for _ in range(rng.randrange(
        0, 1200))), "nested": {"k": [n, n * 2, None, True]}}


class Work:
    """Helpers the workloads share: live job ids by status, taken from the history's model."""

    def __init__(self, q, hist: History, rng: random.Random, clock: Clock):
        self.q, self.h, self.rng, self.clock = q, hist, rng, clock
        self.running: list = []
        self.n = 0

    def new_job(self, **kw):
        self.n += 1
        kw.setdefault("max_retries", self.rng.randrange(0, 3))
        return Job("t", _payload(self.rng, self.n), id=f"j{self.n:05d}",
                   priority=self.rng.randrange(1, 5), **kw)

    def ids(self, *statuses):
        return sorted(j.id for j in self.h.model.jobs.values() if j.status in statuses)

    def claim(self):
        j = self.h.claim(self.q)
        if j is not None:
            self.running.append(j)
        return j

    def take_running(self):
        live = [j for j in self.running if self.h.model.jobs[j.id].status == "running"]
        self.running = live
        if not live:
            return None
        j = live.pop(self.rng.randrange(len(live)))
        self.running = live
        return j


def mix(q, hist, rng, clock, *, steps=300, relaxed=False):
    """A 300-op mix of enqueue/enqueue_many/claim/complete/fail/cancel/retry_dead."""
    w = Work(q, hist, rng, clock)
    while len(hist.ops) < steps:
        clock.t += 1
        r = rng.random()
        if r < 0.30 or not hist.model.jobs:
            hist.enqueue(q, [w.new_job()])
        elif r < 0.36:
            hist.enqueue(q, [w.new_job() for _ in range(rng.randint(2, 5))])
        elif r < 0.58:
            w.claim()
        elif r < 0.72:
            j = w.take_running()
            if j is not None:
                hist.complete(q, j, {"ok": j.id})
        elif r < 0.84:
            j = w.take_running()
            if j is not None:
                hist.fail(q, j, "boom")
        elif r < 0.90:
            ids = w.ids("pending", "failed", "running")
            if ids:
                hist.cancel(q, rng.choice(ids))
        elif r < 0.94:
            ids = w.ids("dead_letter")
            if ids:
                hist.retry_dead(q, rng.choice(ids))
        else:
            clock.t += 4000          # retries come due
        if relaxed and rng.random() < 0.05:
            hist.flush(q)


def rolls(q, hist, rng, clock):
    """Enough ~1 KiB jobs through a 4 KiB-segment log for at least three rolls."""
    w = Work(q, hist, rng, clock)
    while q.log.stats()["rolls"] < 3 or len(hist.ops) < 40:
        clock.t += 1
        hist.enqueue(q, [w.new_job()])
        if rng.random() < 0.5:
            j = w.claim()
            if j is not None and rng.random() < 0.7:
                hist.complete(q, w.take_running(), None)
    assert q.log.stats()["rolls"] >= 3


def dead_letter(q, hist, rng, clock):
    """Jobs driven through every retry to dead-letter, some re-driven, some cancelled."""
    w = Work(q, hist, rng, clock)
    hist.enqueue(q, [w.new_job(max_retries=m) for m in (0, 1, 2, 3, 1, 2)])
    while w.ids("pending", "failed"):
        clock.t += 4000
        j = w.claim()
        if j is None:
            continue
        hist.fail(q, w.take_running(), f"attempt failed at {clock.t}")
    dead = w.ids("dead_letter")
    assert len(dead) == 6
    for jid in dead[:3]:
        hist.retry_dead(q, jid)
    j = w.claim()
    hist.cancel(q, j.id)                       # a cancel request on a running job
    hist.fail(q, w.take_running(), "ends cancelled")
    hist.cancel(q, w.ids("pending")[0])
    j = w.claim()
    hist.complete(q, w.take_running(), [1, 2, 3])


def compaction(q, hist, rng, clock, *, rounds=3, per_round=30):
    """Mixed ops over 4 KiB segments with a compaction after each round: snapshots written
    (tmp, fsync, rename, dir fsync), the oldest removed, WAL segments retired (unlink +
    dir fsync). Open with auto_compact=False, retain_seconds=None, retain_count=None."""
    w = Work(q, hist, rng, clock)
    for _ in range(rounds):
        start = len(hist.ops)
        while len(hist.ops) - start < per_round:
            clock.t += 1
            r = rng.random()
            if r < 0.4 or not hist.model.jobs:
                hist.enqueue(q, [w.new_job()])
            elif r < 0.65:
                w.claim()
            elif r < 0.8:
                j = w.take_running()
                if j is not None:
                    hist.complete(q, j, {"r": j.id})
            elif r < 0.9:
                j = w.take_running()
                if j is not None:
                    hist.fail(q, j, "boom")
            else:
                clock.t += 4000
        hist.compact(q)
    hist.enqueue(q, [w.new_job()])


COMPACTION_OPTIONS = dict(segment_bytes=4096, auto_compact=False, retain_seconds=None,
                          retain_count=None)

WORKLOADS = {"mix": mix, "rolls": rolls, "dead_letter": dead_letter, "compaction": compaction}


@dataclass
class Recording:
    rec: FsRecorder
    hist: History
    durability: str
    options: dict


def record(root: Path, workload, *, durability="sync", seed=0, hooks=(), **options) -> Recording:
    """Run `workload` once against a new store at root/store with every syscall recorded
    (`hooks`: more fault hooks chained after the recorder, e.g. ShortWrites)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rec = FsRecorder(root)
    hist = History(lambda: rec.done, mode=durability)
    clock = Clock(T0)
    rng = random.Random(seed)
    options = dict(options)
    with faults.installed(faults.Chain(rec, *hooks) if hooks else rec):
        q = aurora_log.open(root / "store", durability=durability, clock=clock,
                            reaper_interval=None, **options)
        try:
            workload(q, hist, rng, clock)
        finally:
            q.close()
    return Recording(rec, hist, durability, options)


@dataclass
class Summary:
    points: int = 0
    images: int = 0
    distinct: int = 0
    recoveries: int = 0
    drains: int = 0
    cut_tails: int = 0
    failures: list = field(default_factory=list)
    seconds: float = 0.0
    lost: int = 0
    phantom: int = 0
    resurrected: int = 0
    duplicated: int = 0
    holes: int = 0

    def add(self, v: Verdict, where: str):
        self.lost += len(v.lost)
        self.phantom += len(v.phantom)
        self.resurrected += len(v.resurrected)
        self.duplicated += len(v.duplicated)
        self.holes += bool(v.hole)
        if not v.ok:
            self.failures.append(f"{where}: {v}")


def open_recovered(store: Path, rc: Recording, clock=None):
    return aurora_log.open(store, durability=rc.durability, clock=clock or Clock(T0 + 10**6),
                           reaper_interval=None, **rc.options)


def segment_syncs(rec) -> list[tuple[int, int]]:
    """(done, started) for every successful fdatasync/fsync of a WAL segment: the crash
    point at which it returned, and how many calls had completed when it started."""
    out, done, starts = [], 0, {}
    for kind, op in rec.events:
        if kind == "start":
            starts[id(op)] = done
            continue
        done += 1
        if op.name in ("fdatasync", "fsync") and op.errno == 0 and op.path and \
                op.path.endswith(".seg"):
            out.append((done, starts.get(id(op), done)))
    return out


def synced_before(syncs, point: int) -> int:
    best = 0
    for done, started in syncs:
        if done > point:
            break
        best = max(best, started)
    return best


def replay(tmp: Path, rc: Recording, modes=("drop",), *, seed=0, drain=False,
           points=None) -> Summary:
    """Every crash point x every mode: rebuild, recover (cache by image), check."""
    t = time.monotonic()
    chk = Checker(rc.hist)
    s = Summary()
    cache: dict[str, tuple] = {}
    work = Path(tmp) / "crash"
    seen_points = set()
    syncs = segment_syncs(rc.rec)
    for i, mode, img in crash_images(rc.rec, modes, seed=seed, points=points):
        seen_points.add(i)
        s.images += 1
        d = image_digest(img)
        if d not in cache:
            target = materialize(img, work)
            try:
                clock = Clock(T0 + 10**6)
                q = open_recovered(target / "store", rc, clock)
                try:
                    jobs = all_jobs(q)
                    cut = bool(q.log.report.cuts)
                    dv = None
                    if drain:
                        dv = Verdict(i)
                        clock.t += 7200          # every retry and reaped job is due
                        chk.drain(q, dv, i, clock=clock)
                finally:
                    q.close()
                # a store whose tail was cut opens again to the same state (I8)
                again = None
                if cut and not drain:
                    q = open_recovered(target / "store", rc)
                    try:
                        again = queue_fingerprint(all_jobs(q))
                    finally:
                        q.close()
                fp = queue_fingerprint(jobs)
                err = None
                if again is not None and again != fp:
                    err = "second open differs from the first"
                cache[d] = (jobs, fp, cut, dv, err)
                s.recoveries += 1
            except Exception as e:  # noqa: BLE001 - every failure is reported
                cache[d] = (None, None, False, None,
                            f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}")
        jobs, fp, cut, dv, err = cache[d]
        s.cut_tails += cut
        where = f"{mode} crash after op {i}/{len(rc.rec.ops)}"
        if err:
            v = Verdict(i, error=err)
        else:
            v = chk.check(i, jobs, fp=fp, synced=synced_before(syncs, i))
            if dv is not None:
                v.resurrected += [x for x in dv.resurrected if x not in v.resurrected]
                v.duplicated += dv.duplicated
        s.add(v, where)
    s.points = len(seen_points)
    s.distinct = len(cache)
    s.drains = s.recoveries if drain else 0
    s.seconds = time.monotonic() - t
    return s
