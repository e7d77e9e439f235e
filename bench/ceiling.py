"""How fast can N Python threads group-commit at all, on this interpreter and machine?

    python bench/ceiling.py [--seconds S]

Issue 2 asks 64 committing threads for >= 10x the 1-thread durable rate. This script
measures the ceiling any CPython group commit has, with none of aurora-log's code in
the way: each thread loops on one C call (cffi, GIL released) that joins the next
"round" of a C "disk" thread and sleeps on its own condition variable until the round
has finished; the round costs what one real fdatasync costs here (measured first, same
run), or nothing. Every commit still has to wake a sleeping thread and hand it the GIL,
and that chain, not the disk, is what the figures show. The project's own Log runs the
same loop beside it (one ~100-byte record per commit, durability "sync").

The C part is compiled at run time with cffi into a temporary directory.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import threading
import time

import cffi

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import floors  # noqa: E402

CDEF = """
int ceil_start(long round_ns);
void ceil_stop(void);
int ceil_commit(void);
void ceil_counters(long long *rounds, long long *commits);
"""

# One mutex; committers queue as waiters on their own condition variables (as the log's
# writer does), the disk thread takes every queued waiter as one round, "does the I/O"
# (sleeps) without the mutex, then wakes that round's waiters one by one.
C_SOURCE = r"""
#include <pthread.h>
#include <sys/prctl.h>
#include <time.h>

typedef struct waiter { struct waiter *next; int done; pthread_cond_t cv; } waiter;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t disk_cv = PTHREAD_COND_INITIALIZER;
static waiter *queued;
static int stopping, running;
static long round_ns;
static long long rounds, commits;
static pthread_t disk;

static void *disk_main(void *arg)
{
    (void)arg;
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);  /* sleep the round's time, not +50 us */
    pthread_mutex_lock(&mu);
    for (;;) {
        while (!queued && !stopping)
            pthread_cond_wait(&disk_cv, &mu);
        if (stopping && !queued)
            break;
        waiter *batch = queued;
        queued = 0;
        pthread_mutex_unlock(&mu);
        if (round_ns > 0) {
            struct timespec ts = {round_ns / 1000000000L, round_ns % 1000000000L};
            clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, 0);
        }
        pthread_mutex_lock(&mu);
        rounds++;
        while (batch) {
            waiter *x = batch;
            batch = x->next;
            x->done = 1;
            commits++;
            pthread_cond_signal(&x->cv);
        }
    }
    pthread_mutex_unlock(&mu);
    return 0;
}

int ceil_start(long ns)
{
    pthread_mutex_lock(&mu);
    int busy = running;
    if (!busy) {
        round_ns = ns;
        stopping = 0;
        rounds = commits = 0;
        running = 1;
    }
    pthread_mutex_unlock(&mu);
    if (busy)
        return -1;
    return pthread_create(&disk, 0, disk_main, 0);
}

void ceil_stop(void)
{
    pthread_mutex_lock(&mu);
    int was = running;
    stopping = 1;
    pthread_cond_signal(&disk_cv);
    pthread_mutex_unlock(&mu);
    if (was)
        pthread_join(disk, 0);   /* the disk thread drains every queued waiter first */
    pthread_mutex_lock(&mu);
    running = 0;
    pthread_mutex_unlock(&mu);
}

int ceil_commit(void)
{
    waiter me = {0};
    pthread_cond_init(&me.cv, 0);
    pthread_mutex_lock(&mu);
    int rc = -1;
    if (running && !stopping) {
        me.next = queued;
        queued = &me;
        pthread_cond_signal(&disk_cv);
        while (!me.done)
            pthread_cond_wait(&me.cv, &mu);
        rc = 0;
    }
    pthread_mutex_unlock(&mu);
    pthread_cond_destroy(&me.cv);
    return rc;
}

void ceil_counters(long long *r, long long *c)
{
    pthread_mutex_lock(&mu);
    *r = rounds;
    *c = commits;
    pthread_mutex_unlock(&mu);
}
"""

THREADS = (1, 4, 16, 64, 256)


def build(tmpdir: str):
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source("_aurora_ceiling", C_SOURCE,
                   extra_compile_args=["-O2", "-std=c11", "-D_POSIX_C_SOURCE=200809L",
                                       "-pthread"],
                   extra_link_args=["-pthread"])
    path = ffi.compile(tmpdir=tmpdir, verbose=False)
    spec = importlib.util.spec_from_file_location("_aurora_ceiling", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ffi, mod.lib


def run_threads(n: int, seconds: float, commit, work=None) -> float:
    """commits/s of n threads each looping `commit()` (and `work()` between) for seconds."""
    stop = threading.Event()
    counts = [0] * n
    barrier = threading.Barrier(n + 1)

    def body(i):
        barrier.wait()
        k = 0
        while not stop.is_set():
            commit()
            if work is not None:
                work()
            k += 1
        counts[i] = k

    ts = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in ts:
        t.join(timeout=60)
        if t.is_alive():
            raise RuntimeError("a committer did not return within 60 s")
    return sum(counts) / (time.perf_counter() - t0)


def ceiling_series(ffi, lib, round_ns: int, seconds: float, work=None) -> dict:
    out = {}
    for n in THREADS:
        if lib.ceil_start(round_ns) != 0:
            raise RuntimeError("could not start the disk thread")
        try:
            rate = run_threads(n, seconds, lib.ceil_commit, work)
        finally:
            lib.ceil_stop()
        r, c = ffi.new("long long *"), ffi.new("long long *")
        lib.ceil_counters(r, c)
        out[n] = (rate, c[0] / r[0] if r[0] else 0.0)
    return out


def spin(us: float):
    """Python work of `us` microseconds between commits (None: none at all)."""
    if not us:
        return None
    clock = time.perf_counter
    span = us / 1e6

    def work():
        until = clock() + span
        while clock() < until:
            pass
    return work


def log_series(directory: str, seconds: float, durability: str = "sync",
               threads=THREADS) -> dict | None:
    try:
        from aurora_log.local.log import Log
    except ImportError as e:
        print(f"  (aurora_log is not importable, the Log rows are skipped: {e})")
        return None
    out = {}
    rec = [(1, b"p" * 100)]
    for n in threads:
        d = tempfile.mkdtemp(dir=directory)
        log = Log.open(d, durability=durability)
        try:
            out[n] = (run_threads(n, seconds, lambda: log.commit(rec)), None)  # noqa: B023 - called at once
        finally:
            log.close()
            shutil.rmtree(d, ignore_errors=True)
    return out


def table(title: str, series: dict, floor: float) -> None:
    print(f"\n{title}")
    print(f"  {'threads':>7}  {'commits/s':>10}  {'x floor':>8}  {'per round':>9}")
    for n, (rate, batch) in series.items():
        per_round = f"{batch:>9.1f}" if batch is not None else f"{'':>9}"
        print(f"  {n:>7}  {rate:>10,.0f}  {rate / floor:>8.2f}  {per_round}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=1.5, help="per measured point")
    ap.add_argument("--dir", default=None, help="where the floor and the Log write "
                    "(default: a temporary directory under the current one)")
    args = ap.parse_args(argv)
    base = tempfile.mkdtemp(prefix="ceiling-", dir=args.dir or os.getcwd())
    try:
        os.chmod(base, 0o700)
        ffi, lib = build(os.path.join(base, "build"))
        floor = floors.fdatasync_loop(base, args.seconds)
        round_ns = int(1e9 / floor)
        print(f"floor: write+fdatasync loop {floor:,.0f}/s ({round_ns / 1000:.0f} us each); "
              f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs. "
              f"'x floor' = commits/s over that loop's rate; the target (64 threads >= 10x "
              f"the 1-thread rate, which is ~1x floor) is ~10x floor.")
        at64 = {}
        for us in (0, 2, 5):
            series = ceiling_series(ffi, lib, round_ns, args.seconds, spin(us))
            table(f"ceiling: each round costs one fdatasync ({round_ns / 1000:.0f} us) of "
                  f"sleep, {us} us of Python work per commit", series, floor)
            at64[us] = series[64][0] / floor
        free = ceiling_series(ffi, lib, 0, args.seconds)
        table("ceiling: rounds cost nothing (the wake -> GIL handoff chain alone)", free, floor)
        log = log_series(base, args.seconds)
        if log:
            table("aurora_log.Log, durability sync, one 100 B record per commit", log, floor)
            cpu = log_series(base, args.seconds, "os", threads=(1,))
            log_us = 1e6 / cpu[1][0]
            print(f"  Log.commit's own CPU (durability os, 1 thread): {log_us:.1f} us per call")
        verdict = ", ".join(f"{us} us -> {r:.1f}x" for us, r in at64.items())
        print(f"\nverdict: 64 threads, Python work per commit -> x floor: {verdict}; "
              f"no disk at all: {free[64][0] / floor:.1f}x"
              + (f"; aurora_log.Log: {log[64][0] / floor:.1f}x (1 thread "
                 f"{log[1][0] / floor:.2f}x)." if log else "."))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
