"""Simulated power loss at EVERY I/O operation while queue control is in play (issue 17).

The workload (one recording, tests/crashsim.py via test_powerloss_support.record) runs a
concurrency-limited queue, a rate-limited job type, a queue paused then resumed, a periodic
schedule fired by run_periodic() across fake-clock steps, and chains/groups of dependent
jobs claimed and completed. Each crash image (drop / subset / torn / keep) is recovered
and checked:

    checker     nothing acknowledged lost, phantom or resurrected; the state is a prefix
                of the history containing everything acknowledged (tests/checker.py)
    periodic    one PERIODIC_FIRE per due time, each followed by the enqueue of its job,
                one enqueue per firing - also after a reopen at the crash moment's clock
                that runs the schedule again
    pause       a queue whose PAUSE was acknowledged (and RESUME not yet invoked) is still
                paused; one whose RESUME was acknowledged is not
    limit       claiming from the recovered store until empty never has more than LIMIT
                jobs of the limited queue RUNNING (when the limit was acknowledged)
    rate        no batch claimed at one clock instant has more than RATE[0] jobs of the
                rate-limited type (when the rate limit was acknowledged)
    deps        draining the recovered store never hands out a child before every parent
                is COMPLETED
    verify      aurora_log.verify(path) reports no problem, after all of the above
"""

from __future__ import annotations

import functools
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import aurora_log
from aurora_log import chain, group
from aurora_log.job import Job
from aurora_log.local.follow import Follower, entry_from_record
from checker import Checker, HOp, all_jobs, canon
from crashsim import crash_images, image_digest, materialize
from test_powerloss_support import (T0, cleanup_fast_dirs, fast_dir, record, segment_syncs,
                                    synced_before)
from fakeclock import FakeClock

ALL = ("drop", "subset", "torn", "keep")
LIMITED = "reports"        # concurrency-limited queue
LIMIT = 2
RATED = "mail"             # rate-limited job type
RATE = (2, 60)
PAUSED = "emails"          # paused, then resumed
SCHEDULE = "tick"
CRON = "*/5 * * * *"       # T0 is a multiple of 300 s: due at T0, T0+300, ...


@pytest.fixture
def tmp_path(tmp_path):
    """Crash images live on tmpfs when available (as in test_powerloss)."""
    yield fast_dir(tmp_path)
    cleanup_fast_dirs()


# ------------------------------------------------------------------ the workload

@dataclass
class Marks:
    """Crash points and clock times the checks need, filled in while recording."""
    clock: list = field(default_factory=list)       # (point, clock.t) after each change
    limit_acked: int | None = None
    rate_acked: int | None = None
    pause_acked: int | None = None
    resume_invoked: int | None = None
    resume_acked: int | None = None
    fired: int = 0
    parents: dict = field(default_factory=dict)     # child id -> parent ids, as enqueued

    def clock_at(self, point: int) -> float:
        t = T0
        for p, v in self.clock:
            if p > point:
                break
            t = v
        return t


def _tick_template() -> Job:
    return Job("tick", {"every": "5m"}, max_retries=0)


def _fire(q, hist, now=None) -> list[str]:
    """run_periodic() recorded in the history as one enqueue of the jobs it fired, invoked
    before the call (a crash inside it may keep the firing) and acknowledged after."""
    invoked = hist.point()
    ids = q.run_periodic(now)
    if ids:
        jobs = [q.get(i) for i in ids]
        op = HOp(len(hist.ops), "enqueue", tuple(ids), invoked=invoked, acked=hist.point(),
                 ok=True, barrier=hist.mode == "sync",
                 payloads=tuple(canon(j.payload) for j in jobs),
                 max_retries=tuple(j.max_retries for j in jobs))
        hist.ops.append(op)
        hist.model.apply(op)
    return ids


def control_workload(q, hist, rng, clock, *, marks: Marks, rounds: int = 3):
    def step(seconds: float) -> None:
        clock.t += seconds
        marks.clock.append((hist.point(), clock.t))

    n = 0

    def job(kind="t", **kw) -> Job:
        nonlocal n
        n += 1
        kw.setdefault("max_retries", 1)
        return Job(kind, {"n": n, "r": rng.randrange(1000)}, id=f"c{n:04d}", **kw)

    q.schedule_periodic(SCHEDULE, CRON, _tick_template())
    marks.fired += len(_fire(q, hist))                 # the due time T0
    # jobs of the limited queue exist before its limit: a lost LIMIT record would let a
    # recovered store run all of them
    hist.enqueue(q, [job(queue=LIMITED) for _ in range(LIMIT + 1)])
    q.set_limit(queue=LIMITED, concurrency=LIMIT)
    marks.limit_acked = hist.point()
    hist.enqueue(q, [job(RATED) for _ in range(RATE[0] + 1)])
    q.set_limit(job_type=RATED, rate=RATE)
    marks.rate_acked = hist.point()

    running: list = []

    def claim() -> None:
        j = hist.claim(q)
        if j is not None:
            running.append(j)

    def finish_some(k: int) -> None:
        for _ in range(min(k, len(running))):
            j = running.pop(rng.randrange(len(running)))
            hist.complete(q, j, {"ok": j.id})

    for r in range(rounds):
        hist.enqueue(q, [job(queue=LIMITED) for _ in range(3)])
        hist.enqueue(q, [job(RATED) for _ in range(2)])
        for jobs in (chain(job(), job(), job()), group(job(), job(), then=job())):
            marks.parents.update({j.id: j.depends_on for j in jobs if j.depends_on})
            hist.enqueue(q, jobs)
        if r == 0:
            q.pause(PAUSED)
            marks.pause_acked = hist.point()
        hist.enqueue(q, [job(queue=PAUSED)])
        for _ in range(6):
            claim()
        finish_some(3)
        for _ in range(4):
            claim()
        step(61)                                       # the rate window moves on
        claim()
        finish_some(len(running))
        if r == rounds - 2:
            marks.resume_invoked = hist.point()
            q.resume(PAUSED)
            marks.resume_acked = hist.point()
        step(300 - 61)                                 # the next due time
        marks.fired += len(_fire(q, hist))
        for _ in range(4):
            claim()
        finish_some(2)
    assert marks.fired == rounds + 1


# ------------------------------------------------------------------ recovery and checks

@dataclass
class Found:
    points: int = 0
    images: int = 0
    distinct: int = 0
    recoveries: int = 0
    fires_seen: int = 0          # firings present in recovered images (summed)
    refires: int = 0             # firings the reopen made
    paused_checked: int = 0
    limited_claims: int = 0
    rated_claims: int = 0
    children_claimed: int = 0
    failures: list = field(default_factory=list)
    seconds: float = 0.0


def _entries(store: Path) -> list:
    with Follower(store) as f:
        return [entry_from_record(*r) for r in f.read()]


def _check_firings(entries) -> list[str]:
    """One PERIODIC_FIRE per due time, each followed by the ENQUEUE of its job, and every
    tick job enqueued by exactly one firing."""
    problems = []
    fires = [(i, e) for i, e in enumerate(entries) if e.type == "periodic_fire"]
    dues = [e.fields["due_ms"] for _, e in fires]
    if len(dues) != len(set(dues)):
        problems.append(f"a due time fired twice: {sorted(dues)}")
    for i, e in fires:
        nxt = entries[i + 1] if i + 1 < len(entries) else None
        if nxt is None or nxt.type != "enqueue" or nxt.job_id != e.job_id:
            problems.append(f"firing of {e.fields['due_ms']} not followed by its enqueue")
    ticks = [e for e in entries if e.type == "enqueue" and e.fields.get("job_type") == "tick"]
    if len(ticks) != len(fires):
        problems.append(f"{len(ticks)} tick enqueues for {len(fires)} firings")
    return problems


def _open(store: Path, clock, options):
    return aurora_log.open(store, durability="sync", clock=clock, reaper_interval=None,
                           **options)


def _recover_and_check(store: Path, i: int, rc, marks: Marks, chk: Checker, syncs,
                       f: Found) -> list[str]:
    problems: list[str] = []
    crash_t = marks.clock_at(i)
    # 1. recovery: the checker's prefix rules
    q = _open(store, FakeClock(crash_t), rc.options)
    try:
        v = chk.check(i, all_jobs(q), synced=synced_before(syncs, i))
        if not v.ok:
            problems.append(f"checker: {v}")
        paused = q.stats()["control"]["paused"]
    finally:
        q.close()
    # 2. pause
    if marks.pause_acked is not None and marks.pause_acked <= i and (
            marks.resume_invoked is None or i <= marks.resume_invoked):
        f.paused_checked += 1
        if PAUSED not in paused:
            problems.append(f"pause acknowledged at {marks.pause_acked}, not paused")
    if marks.resume_acked is not None and marks.resume_acked <= i and PAUSED in paused:
        problems.append(f"resume acknowledged at {marks.resume_acked}, still paused")
    # 3. periodic: as recovered, then after a reopen at the crash moment that fires again
    entries = _entries(store)
    f.fires_seen += sum(e.type == "periodic_fire" for e in entries)
    problems += [f"periodic (recovered): {p}" for p in _check_firings(entries)]
    clock = FakeClock(crash_t)
    q = _open(store, clock, rc.options)
    try:
        q.schedule_periodic(SCHEDULE, CRON, _tick_template())
        f.refires += len(q.run_periodic())
        # 4. the limited queue: claim until empty, never more than LIMIT running
        # 5. dependencies: at every claim (batches claimed before any completes), each
        #    parent of the claimed job is COMPLETED
        def claim_batch() -> list:
            batch = []
            while (j := q.claim("after")) is not None:
                batch.append(j)
                parents = marks.parents.get(j.id, ())    # from the workload, not the store
                bad = [p for p in parents if q.get(p).status.value != "completed"]
                if bad:
                    problems.append(f"child {j.id} claimed before parents {bad} completed")
                f.children_claimed += bool(parents)
                running = q.stats()["queues"].get(LIMITED, {}).get("running", 0)
                if limited and running > LIMIT:
                    problems.append(f"{running} running in {LIMITED} (limit {LIMIT})")
                    break
            # one batch is claimed at one clock instant: one rate window
            rated = sum(j.job_type == RATED for j in batch)
            if rate_set and rated > RATE[0]:
                problems.append(f"{rated} {RATED} claims in one instant (rate {RATE})")
            f.rated_claims += rated
            return batch

        limited = marks.limit_acked is not None and marks.limit_acked <= i
        rate_set = marks.rate_acked is not None and marks.rate_acked <= i
        first = claim_batch()
        f.limited_claims += sum(j.queue == LIMITED for j in first)
        if PAUSED in q.stats()["control"]["paused"]:
            q.resume(PAUSED)
        batch, idle = first, 0
        while idle < 3:                     # drain: complete the batch, claim the next
            for j in batch:
                q.complete(j.id, j.token, {"drained": True})
            batch = claim_batch()
            if not batch:
                idle += 1
                clock.t += 3700                          # retries and rate windows come due
            else:
                idle = 0
    finally:
        q.close()
    problems += [f"periodic (after reopen): {p}" for p in _check_firings(_entries(store))]
    # 6. verify replays the whole log, checking each claim against its moment's control
    report = aurora_log.verify(store)
    if not report.ok:
        problems.append(f"verify: {[str(p) for p in report.problems][:3]}")
    return problems


def run_control_powerloss(tmp: Path, *, rounds: int, seed: int, modes=ALL,
                          points=None) -> tuple[Found, object, Marks]:
    marks = Marks()
    rc = record(tmp / "rec", functools.partial(control_workload, marks=marks, rounds=rounds),
                durability="sync", seed=seed, segment_bytes=64 << 10)
    t = time.monotonic()
    chk = Checker(rc.hist)
    syncs = segment_syncs(rc.rec)
    f = Found()
    cache: dict[str, list[str]] = {}
    seen = set()
    for i, mode, img in crash_images(rc.rec, modes, seed=seed, points=points):
        seen.add(i)
        f.images += 1
        # the verdict depends on the point too (what was acknowledged): key on both
        key = f"{image_digest(img)}/{i}"
        if key not in cache:
            target = materialize(img, tmp / "crash")
            try:
                cache[key] = _recover_and_check(target / "store", i, rc, marks, chk, syncs, f)
            except Exception as e:  # noqa: BLE001 - every failure is reported
                cache[key] = [f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"]
            f.recoveries += 1
        f.failures += [f"{mode} crash after op {i}/{len(rc.rec.ops)}: {p}" for p in cache[key]]
    f.points = len(seen)
    f.distinct = len({k.split("/")[0] for k in cache})
    f.seconds = time.monotonic() - t
    return f, rc, marks


def _report(name: str, f: Found) -> None:
    print(f"\n[control powerloss] {name}: {f.points} crash points, {f.images} images, "
          f"{f.distinct} distinct, {f.recoveries} recoveries, {f.fires_seen} firings seen, "
          f"{f.refires} re-fired after reopen, {f.paused_checked} paused checks, "
          f"{f.limited_claims} limited claims, {f.rated_claims} rated claims, "
          f"{f.children_claimed} children claimed, "
          f"{len(f.failures)} failures, {f.seconds:.1f}s")
    assert not f.failures, "\n".join(f.failures[:20])


# ------------------------------------------------------------------ the tests

def test_control_every_op(tmp_path):
    """Every I/O op of a 3-round control workload, four disk models."""
    f, rc, marks = run_control_powerloss(tmp_path, rounds=3, seed=17)
    assert f.points == len(rc.rec.ops) + 1
    assert marks.pause_acked and marks.resume_acked and marks.limit_acked
    assert f.fires_seen and f.refires and f.paused_checked and f.limited_claims
    assert f.children_claimed and f.rated_claims
    _report("3 rounds", f)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("seed", [171, 172])
def test_control_every_op_long(tmp_path, seed):
    f, rc, _ = run_control_powerloss(tmp_path, rounds=16, seed=seed)
    assert f.points == len(rc.rec.ops) + 1
    _report(f"16 rounds seed {seed}", f)
