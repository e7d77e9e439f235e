"""kill -9 while a limit, a cron schedule or a dependency is in play (real processes).

Each cycle, tests/control_kill9_child.py opens the store and works until it is SIGKILLed at
a random moment; the next cycle reopens the same store (recovery included). The checks
read the whole log in order, with the follower, so they hold at every instant the log
records, not only at the end:

    periodic   never two PERIODIC_FIRE records for one (schedule, due time), and each in
               one batch with its ENQUEUE (the next record enqueues the job it names)
    limits     never more than 3 RUNNING jobs of queue "reports", also right after the
               recovery of an open
    deps       never a CLAIM of a job before every parent's COMPLETE
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import aurora_log
from aurora_log.local.follow import Follower, entry_from_record

HERE = Path(__file__).resolve().parent
CHILD = HERE / "control_kill9_child.py"
CYCLES = int(os.environ.get("AURORA_CONTROL_KILL9_CYCLES", "9"))


def _cycle(store: Path, scenario: str, cycle: int, rnd: random.Random) -> None:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    p = subprocess.Popen([sys.executable, str(CHILD), str(store), scenario, str(cycle)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        ready, _, _ = select.select([p.stdout], [], [], 60)
        line = p.stdout.readline() if ready else b""
        if line.strip() != b"READY":
            p.kill()
            raise AssertionError(f"child did not start: {line!r} {p.stderr.read()[-2000:]!r}")
        select.select([], [], [], rnd.uniform(0.02, 0.4))
        if p.poll() is not None:
            raise AssertionError(f"child died: {p.stderr.read()[-2000:]!r}")
        os.kill(p.pid, signal.SIGKILL)
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _entries(store: Path):
    with Follower(store) as f:
        return [entry_from_record(*r) for r in f.read()]


def _run(tmp_path, scenario: str) -> list:
    store = tmp_path / "store"
    rnd = random.Random(1700 + len(scenario))
    for cycle in range(CYCLES):
        _cycle(store, scenario, cycle, rnd)
    # a final clean open: recovery of the last kill is in the log too
    aurora_log.open(store, reaper_interval=None).close()
    # verify replays the log and checks every claim against the control state of its
    # moment (parents completed, queue not paused, under its limits)
    report = aurora_log.verify(store)
    assert report.ok, [str(p) for p in report.problems]
    return _entries(store)


@pytest.mark.timeout(240)
def test_periodic_never_fires_a_due_time_twice(tmp_path):
    entries = _run(tmp_path, "periodic")
    fires = [(i, e) for i, e in enumerate(entries) if e.type == "periodic_fire"]
    assert fires, "the child never fired"
    dues = [e.fields["due_ms"] for _, e in fires]
    assert len(dues) == len(set(dues)), "a due time fired twice"
    for i, e in fires:
        nxt = entries[i + 1]
        assert nxt.type == "enqueue" and nxt.job_id == e.job_id
    enqueued = [e for e in entries if e.type == "enqueue"]
    assert len(enqueued) == len(fires)


@pytest.mark.timeout(240)
def test_concurrency_limit_holds_across_kills(tmp_path):
    entries = _run(tmp_path, "limits")
    queue_of: dict[str, str] = {}
    running: set[str] = set()
    peak = 0
    claims = 0
    for e in entries:
        if e.type == "enqueue":
            queue_of[e.job_id] = e.fields["queue"]
        elif e.type == "claim":
            running.add(e.job_id)
            claims += 1
        elif e.type in ("complete", "fail", "reap"):
            running.discard(e.job_id)
        elif e.type == "cancel":
            running.discard(e.job_id)
        n = sum(1 for j in running if queue_of.get(j) == "reports")
        peak = max(peak, n)
        assert n <= 3, f"{n} running at LSN {e.lsn}"
    assert claims > 3 and peak == 3


@pytest.mark.timeout(240)
def test_no_child_runs_before_its_parents_completed(tmp_path):
    entries = _run(tmp_path, "deps")
    parents: dict[str, tuple] = {}
    completed: set[str] = set()
    children_claimed = 0
    for e in entries:
        if e.type == "depends":
            parents[e.job_id] = tuple(e.fields["parents"])
        elif e.type == "claim":
            missing = [p for p in parents.get(e.job_id, ()) if p not in completed]
            assert not missing, f"job {e.job_id} claimed at LSN {e.lsn} before {missing}"
            children_claimed += e.job_id in parents
        elif e.type == "complete":
            completed.add(e.job_id)
    assert parents and children_claimed
