"""Where a durable enqueue's time goes beside the write+fdatasync floor (issue 21, s1).

    python bench/s1_budget.py [--rounds R] [--ops N] [--dir DIR]

s1's target is "one producer's durable enqueue >= 0.9x the preallocated write+fdatasync
loop". This script runs, interleaved in rounds (the disk's rate drifts by whole factors in
a minute on a shared machine, so every row is judged against the floor of its own round):

  floor             pwrite(100 B) + fdatasync on a preallocated file (bench/floors.py)
  floor + Job()     the same, plus building one Job between the syncs: the part of a
                    Job-form enqueue the caller does before enqueue() is even called
  floor + enqueue   enqueue(job, durable=False) + a bare os.fdatasync of the log's fd:
                    the enqueue's own CPU with a durable wait that costs nothing extra
  aurora shared     enqueue(job) in the default mode (durability "sync")
  aurora excl       enqueue(job) in the exclusive mode (durability "sync")

and, apart, the CPU of Job() and of enqueue(durable=False) back to back (warm) and right
after the thread slept 100 us (as it does in every fdatasync): on a VM whose idle vCPU
halts, code that runs right after a wake-up runs ~2-3x slower than warm (caches,
predictors), so every microsecond of CPU between two fdatasyncs costs the loop several.
The ratio column is the median over rounds of (row ops/s ÷ the round's floor ops/s).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import floors  # noqa: E402

from aurora_log import Job  # noqa: E402
from aurora_log.local.queue import Queue  # noqa: E402

PAYLOAD = {"i": 0, "pad": "x" * 80}      # ~100 B of JSON, as compare.py's s1
RECORD = b"r" * 100


def _per_op_us(fn, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t0) / n * 1e6


def _cpu_us(fn, n: int, pause_s: float) -> float:
    """Median wall time of fn() alone, each call after sleeping ``pause_s`` (0: back to
    back)."""
    out = []
    clock = time.perf_counter_ns
    for i in range(n):
        if pause_s:
            time.sleep(pause_s)
        t0 = clock()
        fn(i)
        out.append((clock() - t0) / 1e3)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--ops", type=int, default=250, help="operations per row per round")
    ap.add_argument("--dir", default=None, help="directory on the disk to measure")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="s1-budget-", dir=args.dir)
    try:
        run(base, args.rounds, args.ops)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run(base: str, rounds: int, n: int) -> None:
    shared = Queue(os.path.join(base, "shared"))
    excl = Queue(os.path.join(base, "excl"), exclusive=True)
    for q in (shared, excl):
        for _ in range(100):
            q.enqueue(Job("bench", PAYLOAD))
    log_fd = shared._sl._fd
    rows: dict[str, list[float]] = {}
    with floors.preallocated(base, "floor", 16 << 20) as fd:
        off = [0]

        def floor(i: int) -> None:
            if off[0] + 100 > 16 << 20:
                off[0] = 0
            os.pwrite(fd, RECORD, off[0])
            os.fdatasync(fd)
            off[0] += 100

        def floor_job(i: int) -> None:
            Job("bench", PAYLOAD)
            floor(i)

        def floor_enqueue(i: int) -> None:
            shared.enqueue(Job("bench", PAYLOAD), durable=False)
            os.fdatasync(log_fd)

        plan = [("floor", floor),
                ("floor + Job()", floor_job),
                ("floor + enqueue", floor_enqueue),
                ("aurora shared", lambda i: shared.enqueue(Job("bench", PAYLOAD))),
                ("aurora excl", lambda i: excl.enqueue(Job("bench", PAYLOAD)))]
        for r in range(rounds):
            for name, fn in (plan if r % 2 == 0 else plan[:1] + plan[:0:-1]):
                rows.setdefault(name, []).append(_per_op_us(fn, n))
    floor_us = rows["floor"]
    print(f"{rounds} rounds x {n} ops; us per op (median of rounds), ops/s ÷ the round's floor")
    for name, us in rows.items():
        ratios = [f / u for f, u in zip(floor_us, us, strict=True)]
        print(f"  {name:18s} {statistics.median(us):8.1f} us   "
              f"{statistics.median(ratios):5.2f}x   [{min(ratios):.2f}..{max(ratios):.2f}]")
    k = max(200, n)
    print("CPU on the path (median us per call): back to back | after a 100 us sleep")
    for name, fn in [("Job()", lambda i: Job("bench", PAYLOAD)),
                     ("enqueue(durable=False), shared",
                      lambda i: shared.enqueue(Job("bench", PAYLOAD), durable=False)),
                     ("enqueue(durable=False), excl",
                      lambda i: excl.enqueue(Job("bench", PAYLOAD), durable=False))]:
        print(f"  {name:32s} {_cpu_us(fn, k, 0):6.1f} | {_cpu_us(fn, k, 0.0001):6.1f}")
    shared.close()
    excl.close()


if __name__ == "__main__":
    main()
