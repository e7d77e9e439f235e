"""kill -9 under load with real processes (RELIABILITY.md "process" line).

Each cycle: a child process (tests/test_kill9_child.py) opens the store and runs two
producers and two workers, reporting every acknowledgement on a pipe only after the call
returned; the parent SIGKILLs it at a random moment, reads what was acknowledged, reopens
the store, checks, and drains it (claims and completes everything left). Across all cycles
(the same store, cycle after cycle):

    lost         an acknowledged enqueue missing after reopen          -> must be 0
    phantom      a job nobody intended to enqueue, or a payload whose bytes differ -> 0
    resurrected  an acknowledged complete not COMPLETED after reopen, or delivered again
                 (by the child or by the drain)                        -> 0
    duplicated   a job completed twice (two acknowledged completes)    -> 0

The durability mode rotates sync / interval / os: a killed process loses nothing the OS
accepted, so every mode must lose nothing here.

Reproduce:  pytest tests/test_kill9.py -q -s          (50 cycles)
Soak:       python bench/soak.py kill9 --cycles 1000
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from test_kill9_child import payload  # noqa: E402

CHILD = HERE / "test_kill9_child.py"
MODES = ("sync", "interval", "os")


@dataclass
class Tally:
    cycles: int = 0
    early_kills: int = 0          # killed before READY (during import / open / recovery)
    acked_enqueues: int = 0
    acked_completes: int = 0
    acked_fails: int = 0
    recovered_running: int = 0
    drained: int = 0
    lost: list = field(default_factory=list)
    phantom: list = field(default_factory=list)
    resurrected: list = field(default_factory=list)
    duplicated: list = field(default_factory=list)
    child_errors: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self):
        return not (self.lost or self.phantom or self.resurrected or self.duplicated
                    or self.child_errors)

    def line(self):
        return (f"{self.cycles} kill -9 cycles ({self.early_kills} before ready), "
                f"{self.acked_enqueues} acknowledged enqueues, "
                f"{self.acked_completes} acknowledged completes, {self.acked_fails} fails, "
                f"{self.recovered_running} running jobs recovered, {self.drained} drained; "
                f"lost {len(self.lost)}, phantom {len(self.phantom)}, resurrected "
                f"{len(self.resurrected)}, duplicated {len(self.duplicated)}, "
                f"child errors {len(self.child_errors)}, {self.seconds:.1f}s")


class Knowledge:
    """What the parent knows from every pipe so far."""

    def __init__(self):
        self.intents: set[str] = set()
        self.enqueued: set[str] = set()
        self.completed: set[str] = set()

    def feed(self, lines, t: Tally):
        for line in lines:
            parts = line.split()
            if not parts:
                continue
            kind = parts[0]
            if kind == "I":
                self.intents.add(parts[1])
            elif kind == "E":
                self.enqueued.add(parts[1])
                t.acked_enqueues += 1
            elif kind == "D":
                if parts[1] in self.completed:
                    t.resurrected.append(("delivered after complete", parts[1]))
            elif kind == "C":
                if parts[1] in self.completed:
                    t.duplicated.append(parts[1])
                self.completed.add(parts[1])
                t.acked_completes += 1
            elif kind == "F":
                t.acked_fails += 1
            elif kind == "X":
                t.phantom.append(("payload differs at delivery", parts[1]))


def _read_until_dead(proc, deadline_s: float, kill_after: float, early: bool = False
                     ) -> list[str]:
    """Read the child's stdout; SIGKILL it `kill_after` seconds after READY (early: after
    it started, READY or not - a kill during import, open or recovery)."""
    buf = b""
    fd = proc.stdout.fileno()
    ready_at = None
    killed = False
    end = time.monotonic() + deadline_s
    if early:
        ready_at = time.monotonic()
    while True:
        now = time.monotonic()
        if ready_at is None and b"READY\n" in buf:
            ready_at = now
        if ready_at is not None and not killed and now >= ready_at + kill_after:
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
        if now > end and not killed:
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
        timeout = 0.01 if not killed else 1.0
        r, _, _ = select.select([fd], [], [], timeout)
        if r:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            buf += chunk
    proc.wait()
    text = buf.decode()
    if not text.endswith("\n"):
        # a line cut by the kill: its write() never completed, so it acknowledges nothing
        text = text[:text.rfind("\n") + 1]
    return text.splitlines()


def _check_and_drain(store: Path, k: Knowledge, t: Tally) -> None:
    q = aurora_log.open(store, retry_base=0.0, retry_cap=0.0, reaper_interval=None)
    try:
        t.recovered_running += q.recovered
        jobs = {j.id: j for j in q.list(limit=1 << 30)}
        for jid in k.enqueued:
            if jid not in jobs:
                t.lost.append(jid)
        for jid in k.completed:
            j = jobs.get(jid)
            if j is not None and j.status.value != "completed":
                t.resurrected.append((j.status.value, jid))
        for jid, j in jobs.items():
            if jid not in k.intents:
                t.phantom.append(("never issued", jid))
            elif j.payload != payload(jid):
                t.phantom.append(("payload differs", jid))
        while True:
            j = q.claim("drain")
            if j is None:
                st = q.stats()
                if st["pending"] == st["failed"] == st["running"] == 0:
                    break
                time.sleep(0.001)
                continue
            if j.id in k.completed:
                t.resurrected.append(("drained after complete", j.id))
            q.complete(j.id, j.token, {"drained": True}, durable=False)
            k.completed.add(j.id)
            t.drained += 1
        q.flush()
    finally:
        q.close()


def run_cycles(store: Path, cycles: int, seed: int = 0, *, max_run: float = 0.6,
               rotate_every: int | None = None, progress=None,
               early_kills: float = 0.15) -> Tally:
    rng = random.Random(seed)
    t = Tally()
    k = Knowledge()
    start = time.monotonic()
    base = Path(store)
    cur = base
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(HERE.parent)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    for c in range(cycles):
        if rotate_every and c % rotate_every == 0:
            cur = base.with_name(f"{base.name}-{c // rotate_every}")
            k = Knowledge()
        mode = MODES[c % len(MODES)]
        proc = subprocess.Popen([sys.executable, str(CHILD), str(cur), str(c),
                                 str(rng.randrange(1 << 30)), mode],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        early = rng.random() < early_kills
        lines = _read_until_dead(proc, 20.0, rng.uniform(0.05, 0.6) if early
                                 else rng.uniform(0.0, max_run), early)
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        proc.stdout.close()
        if "READY" not in lines:
            if early and "Traceback" not in err:
                t.early_kills += 1          # killed during import/open/recovery
            else:
                t.child_errors.append(f"cycle {c}: child never became ready: {err[-2000:]}")
                break
        if "Traceback" in err:
            t.child_errors.append(f"cycle {c}: {err[-2000:]}")
        k.feed(lines, t)
        _check_and_drain(cur, k, t)
        t.cycles += 1
        if progress and (c + 1) % progress == 0:
            t.seconds = time.monotonic() - start
            print(f"  {t.line()}", flush=True)
    t.seconds = time.monotonic() - start
    return t


def test_kill9_under_load(tmp_path):
    t = run_cycles(tmp_path / "store", 50, seed=9, max_run=0.4, rotate_every=10)
    print(f"\n[kill9] {t.line()}")
    assert t.ok, (t.lost[:5], t.phantom[:5], t.resurrected[:5], t.duplicated[:5],
                  t.child_errors[:2])
    assert t.cycles == 50
    assert t.acked_enqueues > 500 and t.acked_completes > 200
