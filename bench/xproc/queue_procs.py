"""Durable enqueue from N processes sharing one store (issue 19 phase 2).

    python bench/xproc/queue_procs.py --procs 1,4,16 --seconds 3

Each point: N forked processes, each opening the store itself (the default shared mode)
and calling ``q.enqueue(Job(...))`` (sync durability: returns after the fdatasync that
covers it) in a loop for the timed window. Prints enqueues/s, fdatasyncs/s (from the
control page's counter), records per fdatasync and CPU us per enqueue (user+sys of every
process). ``--exclusive`` adds one-process points with N threads instead of processes, in
the default mode and with ``exclusive=True`` (the single-owner mode's in-process writer),
for comparison. Compare with ``bench/xproc/xproc.py --only shm`` (the bare
cross-process group-commit loop) run at the same time: the disk here is shared and its
fdatasync rate swings minute to minute.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import tempfile
import threading
import time

import aurora_log
from aurora_log import Job

CTX = mp.get_context("fork")


def _producer(path: str, start: float, stop: float, out) -> None:
    q = aurora_log.open(path, reaper_interval=None, auto_compact=False)
    while time.time() < start:
        time.sleep(0.001)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    n = 0
    while time.time() < stop:
        q.enqueue(Job("bench", {"n": n, "pad": "x" * 40}))
        n += 1
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    syncs = q.log.stats()["fdatasyncs"]
    q.close()
    out.put((n, cpu, syncs))


def run_procs(n: int, seconds: float, root: str) -> dict:
    path = os.path.join(root, f"p{n}")
    with aurora_log.open(path) as q:
        syncs0 = q.log.stats()["fdatasyncs"]
    out = CTX.Queue()
    start = time.time() + 0.5 + 0.05 * n
    stop = start + seconds
    procs = [CTX.Process(target=_producer, args=(path, start, stop, out)) for _ in range(n)]
    for p in procs:
        p.start()
    res = [out.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    total = sum(r[0] for r in res)
    cpu = sum(r[1] for r in res)
    syncs = max(r[2] for r in res) - syncs0     # the page's counter: every process's
    shutil.rmtree(path, ignore_errors=True)
    return {"procs": n, "enqueues_s": total / seconds, "fdatasyncs_s": syncs / seconds,
            "rec_per_sync": total / max(syncs, 1), "cpu_us": cpu / max(total, 1) * 1e6}


def run_one_process(threads: int, seconds: float, root: str, exclusive: bool) -> dict:
    path = os.path.join(root, f"{'x' if exclusive else 's'}{threads}")
    q = aurora_log.open(path, reaper_interval=None, auto_compact=False, exclusive=exclusive)
    counts = [0] * threads
    stop = time.time() + seconds

    def loop(i: int) -> None:
        while time.time() < stop:
            q.enqueue(Job("bench", {"n": counts[i], "pad": "x" * 40}))
            counts[i] += 1

    c0 = time.process_time()
    ts = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    cpu = time.process_time() - c0
    syncs = q.log.stats()["fdatasyncs"]
    q.close()
    shutil.rmtree(path, ignore_errors=True)
    total = sum(counts)
    mode = "exclusive" if exclusive else "shared"
    return {"procs": f"1 ({mode}, {threads} threads)", "enqueues_s": total / seconds,
            "fdatasyncs_s": syncs / seconds, "rec_per_sync": total / max(syncs, 1),
            "cpu_us": cpu / max(total, 1) * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", default="1,4,16")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--exclusive", action="store_true")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    root = tempfile.mkdtemp(dir=args.dir)
    try:
        rows = [run_procs(int(n), args.seconds, root) for n in args.procs.split(",")]
        if args.exclusive:
            rows += [run_one_process(int(n), args.seconds, root, exclusive)
                     for n in args.procs.split(",") for exclusive in (False, True)]
        print(f"{'processes':>28} {'enqueues/s':>11} {'fdatasyncs/s':>13} {'rec/sync':>9} "
              f"{'CPU us/op':>10}")
        for r in rows:
            print(f"{r['procs']!s:>28} {r['enqueues_s']:>11,.0f} {r['fdatasyncs_s']:>13,.0f} "
                  f"{r['rec_per_sync']:>9.1f} {r['cpu_us']:>10.0f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
