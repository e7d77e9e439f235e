"""Claim + complete with queue control in play vs plain claims, in the same run (issue 17).

    python -m pytest bench/test_bench_control.py -s
    AURORA_BENCH_CONTROL_N=20000 python -m pytest bench/test_bench_control.py -s

Two stores with the same N jobs (durability "os", so the figure is the engine's own cost,
not the disk's). The plain store has no control at all. The controlled store has, all at
once: a concurrency limit on the queue (high enough not to throttle one claimer), a rate
limit on the job type (high enough not to throttle), another queue paused, and half the
jobs each waiting for a parent of its own, completed before the run (their release is
bookkept; a chain would serialise the run and measure the chain, not the engine). One
thread claims and completes until the work queue is empty. Target: controlled >= 0.8x
plain.
"""

from __future__ import annotations

import os
import time

import aurora_log
from aurora_log import Job

N = int(os.environ.get("AURORA_BENCH_CONTROL_N", "5000"))
ROUNDS = int(os.environ.get("AURORA_BENCH_CONTROL_ROUNDS", "3"))


def _fill(q, controlled: bool) -> None:
    parents = []
    if controlled:
        q.set_limit(queue="work", concurrency=64)
        q.set_limit(job_type="t", rate=(10 * N, 3600.0))
        q.pause("paused")
        q.enqueue_many([Job("t", {"p": i}, queue="paused") for i in range(100)])
        parents = [Job("parent", {}, queue="parents") for _ in range(N // 2)]
        q.enqueue_many(parents)
    jobs = []
    for i in range(N):
        j = Job("t", {"i": i, "pad": "x" * 32}, queue="work")
        if parents and i % 2 == 0:
            j.after(parents[i // 2])
        jobs.append(j)
    for k in range(0, N, 1000):
        q.enqueue_many(jobs[k:k + 1000])
    if controlled:                 # complete the parents: their children become claimable
        while (p := q.claim("w", queues="parents")) is not None:
            q.complete(p.id, p.token)


def _drain(q) -> float:
    """claim + complete until the work queue is empty; returns ops/s."""
    t0 = time.perf_counter()
    n = 0
    while (j := q.claim("w", queues="work")) is not None:
        q.complete(j.id, j.token)
        n += 1
    dt = time.perf_counter() - t0
    assert n == N, n
    return n / dt


def _one(tmp_path, name: str, controlled: bool) -> float:
    with aurora_log.open(tmp_path / name, durability="os", reaper_interval=None,
                         auto_compact=False) as q:
        _fill(q, controlled)
        return _drain(q)


def test_claim_complete_with_control_vs_plain(tmp_path):
    plain, ctrl = [], []
    for r in range(ROUNDS):          # interleaved, best of ROUNDS: machine noise cancels
        plain.append(_one(tmp_path, f"plain{r}", False))
        ctrl.append(_one(tmp_path, f"ctrl{r}", True))
    ratio = max(ctrl) / max(plain)
    print(f"\n  claim+complete, 1 thread, N={N}: plain {max(plain):,.0f}/s, with limits, "
          f"rate limits, a paused queue and dependencies {max(ctrl):,.0f}/s: "
          f"ratio {ratio:.2f} (target >= 0.8)")
    assert ratio >= 0.8
