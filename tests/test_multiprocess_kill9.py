"""kill -9 of random producer and worker processes sharing one store (issue 19).

Several producer and worker processes (tests/mp_kill9_child.py) open the same store at
once (producers also write a snapshot every 100 enqueue calls, so restarted processes open
from snapshots and some kills land mid-compaction). Each cycle SIGKILLs one of them at
random (producer or worker, sometimes before it finished opening) and starts a new one in
its place; the others keep running. Every
process reports each acknowledgement on its pipe after the call returned, with a
system-wide monotonic timestamp, so the test merges all pipes in the order things
happened and feeds the single-process test's bookkeeping (tests/test_kill9.py's Knowledge
and Tally). At the end everything is stopped, the store is reopened, checked and drained
(test_kill9._check_and_drain):

    lost         an acknowledged enqueue missing                        -> 0
    phantom      a job nobody intended, or a payload whose bytes differ  -> 0
    resurrected  an acknowledged complete not COMPLETED, or delivered again -> 0
    duplicated   a job completed twice                                  -> 0

and one check the single-process test cannot make: a killed worker's RUNNING jobs (each
with a 300 s lease) are back to pending (a "process died" reap after its claim in their
history) within REDELIVERY_BOUND seconds of the kill, because the others notice the death,
not because a lease ran out. The time to their next delivery is reported, not bounded:
a returned job waits its turn behind the backlog of higher-priority jobs.

Reproduce:  pytest tests/test_multiprocess_kill9.py -q -s       (30 cycles)
Soak:       python bench/soak.py mpkill9 --cycles 500
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aurora_log
import pytest
from mp_support import child_env
from test_kill9 import Knowledge, Tally, _check_and_drain

HERE = Path(__file__).resolve().parent
CHILD = HERE / "mp_kill9_child.py"
REDELIVERY_BOUND = 5.0        # seconds from a worker's kill to its jobs back to pending
EARLY_KILLS = 0.15            # the share of cycles that also kill a process still starting
SETTLE = 10.0                 # seconds the end waits for the last kills' jobs to come back


@dataclass
class Child:
    role: str
    name: str
    proc: subprocess.Popen
    err_path: Path
    buf: bytes = b""
    lines: list = field(default_factory=list)      # (ns, line) in this child's order

    def pump(self, block: bool = False) -> bool:
        """Read one chunk if there is one (block: wait up to 1 s for it); False at EOF."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        r, _, _ = select.select([fd], [], [], 1.0 if block else 0)
        if not r:
            return True
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return False
        self.buf += chunk
        *whole, self.buf = self.buf.split(b"\n")
        for raw in whole:
            line = raw.decode()
            self.lines.append((int(line.rsplit(" ", 1)[1]), line))
        return True

    def ready(self) -> bool:
        return any(line.startswith("READY") for _, line in self.lines)

    def finish(self) -> None:
        """After a SIGKILL: read to EOF (a line cut by the kill acknowledges nothing)."""
        while self.pump(block=True):
            pass
        self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def in_flight(self) -> set[str]:
        """Jobs this worker was delivered and had not reported complete or failed."""
        held: set[str] = set()
        for _, line in self.lines:
            kind, job_id = line.split()[:2]
            if kind == "D":
                held.add(job_id)
            elif kind in ("C", "F"):
                held.discard(job_id)
        return held


@dataclass
class Kill:
    at_ns: int                # time.monotonic_ns() (the children's line stamps)
    at_wall: float            # time.time() (the store's transition times)
    name: str
    held: set[str]            # a killed worker's jobs in flight


@dataclass
class MultiTally(Tally):
    snapshots: int = 0
    producer_kills: int = 0
    worker_kills: int = 0
    jobs_held_at_kills: int = 0
    returned_s: list = field(default_factory=list)     # kill -> "process died" reap
    redelivery_s: list = field(default_factory=list)   # kill -> next delivery
    finished_unreported: int = 0     # completed/failed by the victim just before the kill
    not_returned: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return super().ok and not self.not_returned

    def line(self) -> str:
        return (f"{super().line()}; {self.snapshots} snapshots; "
                f"kills: {self.producer_kills} producers, "
                f"{self.worker_kills} workers holding {self.jobs_held_at_kills} jobs: "
                f"{len(self.returned_s)} back to pending ({_spread(self.returned_s)}), "
                f"redelivered {len(self.redelivery_s)} ({_spread(self.redelivery_s)}), "
                f"{self.finished_unreported} finished unreported, "
                f"{len(self.not_returned)} not returned")


def _spread(xs: list) -> str:
    if not xs:
        return "-"
    xs = sorted(xs)
    return f"median {xs[len(xs) // 2]:.2f}s, max {xs[-1]:.2f}s"


def _spawn(role: str, store: Path, name: str, seed: int, scratch: Path) -> Child:
    err_path = scratch / f"{name}.err"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, str(CHILD), role, str(store), name, str(seed)],
                                stdout=subprocess.PIPE, stderr=err, env=child_env())
    return Child(role, name, proc, err_path)


def _pump_for(children: list[Child], seconds: float) -> None:
    end = time.monotonic() + seconds
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return
        fds = {c.proc.stdout.fileno(): c for c in children if c.proc.stdout is not None
               and not c.proc.stdout.closed}
        r, _, _ = select.select(list(fds), [], [], min(left, 0.05))
        for fd in r:
            fds[fd].pump()


def _wait_ready(children: list[Child], t: Tally, seconds: float = 60.0) -> None:
    """Pump until every child has opened the store (a child that cannot is an error)."""
    end = time.monotonic() + seconds
    while not all(c.ready() for c in children):
        if time.monotonic() > end:
            late = [c.name for c in children if not c.ready()]
            raise AssertionError(f"not ready after {seconds}s: {late}")
        for c in children:
            if not c.ready() and c.proc.poll() is not None:
                c.pump()
                raise AssertionError(f"{c.name} died before it was ready: "
                                     f"{c.err_path.read_text()[-2000:]}")
        _pump_for(children, 0.02)


def _after_claim(q, job_id: str, worker: str) -> list:
    """The transitions of `job_id` after the last claim by `worker`."""
    hist = q.history(job_id)
    claims = [n for n, tr in enumerate(hist) if tr.kind == "claim" and tr.worker == worker]
    return hist[claims[-1] + 1:] if claims else []


def _settled(store: Path, kills: list[Kill]) -> bool:
    """Every job a killed worker held has moved on from that worker's claim."""
    with aurora_log.open(store, read_only=True) as q:
        return all(_after_claim(q, job_id, k.name) for k in kills for job_id in k.held)


def _returned(kills: list[Kill], everything, store: Path, t: MultiTally) -> None:
    """Each job a killed worker held must be back (a "process died" reap after its claim)
    within REDELIVERY_BOUND of the kill, or have been finished by the victim itself just
    before it died (its complete or fail returned but the kill came before the report).
    Also measured: the time to the job's next delivery (which waits its turn in the order,
    behind a backlog of higher-priority jobs)."""
    deliveries: dict[str, list[int]] = {}
    for ns, line in everything:
        parts = line.split()
        if parts[0] == "D":
            deliveries.setdefault(parts[1], []).append(ns)
    with aurora_log.open(store, read_only=True) as q:
        for k in kills:
            t.jobs_held_at_kills += len(k.held)
            for job_id in sorted(k.held):
                after = _after_claim(q, job_id, k.name)
                if after and after[0].kind in ("complete", "fail") and \
                        after[0].worker == k.name:
                    t.finished_unreported += 1
                elif after and after[0].kind == "reap" and "died" in (after[0].error or ""):
                    t.returned_s.append(after[0].at.timestamp() - k.at_wall)
                    later = [ns for ns in deliveries.get(job_id, ()) if ns > k.at_ns]
                    if later:
                        t.redelivery_s.append((later[0] - k.at_ns) / 1e9)
                else:
                    t.not_returned.append((k.name, job_id, [(tr.kind, tr.worker, tr.error)
                                                            for tr in after[:2]]))


def run_cycles(store: Path, cycles: int, seed: int = 0, *, producers: int = 2,
               workers: int = 2, max_wait: float = 0.5, progress: int | None = None
               ) -> MultiTally:
    rng = random.Random(seed)
    t = MultiTally()
    start = time.monotonic()
    scratch = store.parent / "children"
    scratch.mkdir(parents=True, exist_ok=True)
    store = Path(store)
    generation = 0

    def spawn(role: str, slot: int) -> Child:
        nonlocal generation
        generation += 1
        return _spawn(role, store, f"g{generation}-{role[0]}{slot}", rng.randrange(1 << 30),
                      scratch)

    # the first process creates the store; the others then attach to it
    slots = [spawn("producer", 0)]
    _pump_for(slots, 0.0)
    ready_by = time.monotonic() + 60
    while not slots[0].ready():
        if not slots[0].pump(block=True) or time.monotonic() > ready_by:
            raise AssertionError(slots[0].err_path.read_text()[-2000:])
    slots += [spawn("producer", i) for i in range(1, producers)]
    slots += [spawn("worker", i) for i in range(workers)]
    done: list[Child] = []
    kills: list[Kill] = []
    for c in range(cycles):
        _wait_ready(slots, t)
        _pump_for(slots, rng.uniform(0.05, max_wait))
        i = rng.randrange(len(slots))
        victim = slots[i]
        if rng.random() < EARLY_KILLS:
            # sometimes a process still importing, opening or attaching instead
            done.append(victim)
            victim.proc.kill()
            victim.finish()
            victim = slots[i] = spawn(victim.role, int(victim.name[-1]))
            _pump_for(slots, rng.uniform(0.0, 0.4))
        at_ns, at_wall = time.monotonic_ns(), time.time()
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.finish()
        if not victim.ready():
            t.early_kills += 1
        if victim.role == "worker":
            t.worker_kills += 1
            kills.append(Kill(at_ns, at_wall, victim.name, victim.in_flight()))
        else:
            t.producer_kills += 1
        done.append(victim)
        slots[i] = spawn(victim.role, int(victim.name[-1]))
        t.cycles += 1
        if progress and (c + 1) % progress == 0:
            # (acknowledgements are tallied from the merged pipes at the end)
            print(f"  {c + 1} cycles: {t.producer_kills} producers and {t.worker_kills} "
                  f"workers killed ({t.early_kills} before ready), "
                  f"{time.monotonic() - start:.0f}s", flush=True)
    # the end: stop producing; give the live workers time to take back the last victims'
    # jobs (a read-only open shows what the store holds)
    for s in slots:
        if s.role == "producer":
            s.proc.kill()
    end = time.monotonic() + SETTLE
    while time.monotonic() < end and not _settled(store, kills[-3:]):
        _pump_for(slots, 0.2)
    for s in slots:
        s.proc.kill()
        s.finish()
        done.append(s)
    everything = sorted(x for child in done for x in child.lines)
    for child in done:
        err = child.err_path.read_text(errors="replace")
        if "Traceback" in err:
            t.child_errors.append(f"{child.name}: {err[-2000:]}")
    k = Knowledge()
    k.feed([line for _, line in everything], t)
    t.snapshots = sum(1 for _, line in everything if line.startswith("S "))
    _returned(kills, everything, store, t)
    _check_and_drain(store, k, t)
    t.seconds = time.monotonic() - start
    return t


def _assert_clean(t: MultiTally, cycles: int) -> None:
    assert t.ok, (t.lost[:5], t.phantom[:5], t.resurrected[:5], t.duplicated[:5],
                  t.not_returned[:5], t.child_errors[:2])
    assert t.cycles == cycles
    assert max(t.returned_s, default=0.0) < REDELIVERY_BOUND, sorted(t.returned_s)[-5:]


def test_kill9_of_random_producers_and_workers(shared_store, tmp_path):
    t = run_cycles(tmp_path / "store", 30, seed=19)
    print(f"\n[mp-kill9] {t.line()}")
    _assert_clean(t, 30)
    # the run did what it claims: work was acknowledged, workers died holding jobs
    assert t.acked_enqueues > 200 and t.acked_completes > 100
    assert t.producer_kills and t.worker_kills and t.returned_s


@pytest.mark.slow
@pytest.mark.timeout(1800)      # 500 cycles took 300-600 s on a loaded 2-core machine
def test_kill9_of_random_producers_and_workers_long(shared_store, tmp_path):
    t = run_cycles(tmp_path / "store", 500, seed=1919, progress=50)
    print(f"\n[mp-kill9] {t.line()}")
    _assert_clean(t, 500)
