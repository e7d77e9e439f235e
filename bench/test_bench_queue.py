"""Queue engine benchmarks (pytest-benchmark), each against its floor or a sqlite3
table-as-queue measured in the same run. The ratios land in ``extra_info`` and are printed.

    python -m pytest bench/test_bench_queue.py --benchmark-only -s
    AURORA_BENCH_SECONDS=2 AURORA_BENCH_REPLAY=1000000 python -m pytest bench/test_bench_queue.py -s

Multi-threaded figures are throughputs over a fixed wall-clock window (``AURORA_BENCH_SECONDS``,
default 1.0), run once inside ``benchmark.pedantic`` so pytest-benchmark records them too.
Targets (issue 3): 1 thread >= 0.9x an fdatasync loop; 64 threads >= 10x sqlite FULL;
enqueue_many(1000) >= 1.0x sqlite executemany (issue 21: the bulk form
enqueue_many(job_type, payloads), moonshot 2x); claim+complete x 8 threads >= 5x sqlite FULL
(durable) and >= 3x sqlite NORMAL (completes riding the group commit); replay of N pending
jobs (AURORA_BENCH_REPLAY, default 200,000); RSS per pending job <= 500 bytes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

import aurora_log
from aurora_log import Job

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import floors  # noqa: E402

SECONDS = float(os.environ.get("AURORA_BENCH_SECONDS", "1.0"))
REPLAY_N = int(os.environ.get("AURORA_BENCH_REPLAY", "200000"))
RESULTS: dict[str, float] = {}


def payload(i: int) -> dict:
    # ~100 bytes of JSON
    return {"user_id": i, "email": f"user{i}@example.com", "template": "welcome",
            "pad": "x" * 32}


def report(benchmark, **figures):
    benchmark.extra_info.update(figures)
    RESULTS.update(figures)
    print("\n  " + "  ".join(f"{k}={v:,.2f}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in figures.items()))


def run_threads(n: int, work, seconds: float = SECONDS) -> float:
    """ops/s of `work(thread_index, stop_event) -> ops` over `seconds` wall-clock."""
    stop = threading.Event()
    counts = [0] * n
    start = threading.Barrier(n + 1)

    def body(i):
        start.wait()
        counts[i] = work(i, stop)

    ts = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in ts:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


# ------------------------------------------------------------------ sqlite peer (in-file helper)

class SqliteQueue:
    """A table-as-queue in sqlite3 WAL mode: one connection per thread."""

    def __init__(self, path, synchronous="FULL"):
        self.path = str(path)
        self.sync = synchronous
        c = self.conn()
        c.execute("CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, job_type TEXT, "
                  "priority INT, status INT, payload TEXT, created REAL)")
        c.execute("CREATE INDEX IF NOT EXISTS ready ON jobs(status, priority DESC, created)")
        c.close()
        self._local = threading.local()

    def conn(self):
        c = sqlite3.connect(self.path, timeout=60, isolation_level=None,
                            check_same_thread=False)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute(f"PRAGMA synchronous={self.sync}")
        return c

    def local(self):
        c = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = self.conn()
        return c

    def enqueue(self, p: dict):
        c = self.local()
        c.execute("INSERT INTO jobs VALUES (?,?,?,0,?,?)",
                  (str(uuid.uuid4()), "send", 2, json.dumps(p), time.time()))

    def enqueue_many(self, ps):
        c = self.local()
        now = time.time()
        rows = [(str(uuid.uuid4()), "send", 2, json.dumps(p), now) for p in ps]
        c.execute("BEGIN")
        c.executemany("INSERT INTO jobs VALUES (?,?,?,0,?,?)", rows)
        c.execute("COMMIT")

    def claim_complete(self) -> bool:
        c = self.local()
        c.execute("BEGIN IMMEDIATE")
        row = c.execute("SELECT id, payload FROM jobs WHERE status=0 "
                        "ORDER BY priority DESC, created LIMIT 1").fetchone()
        if row is None:
            c.execute("COMMIT")
            return False
        c.execute("UPDATE jobs SET status=1 WHERE id=?", (row[0],))
        c.execute("COMMIT")
        json.loads(row[1])
        c.execute("DELETE FROM jobs WHERE id=?", (row[0],))   # complete: its own commit
        return True


def fdatasync_loop(path, seconds: float = SECONDS, size: int = 150) -> float:
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    buf = b"x" * size
    n = 0
    t0 = time.perf_counter()
    try:
        while time.perf_counter() - t0 < seconds:
            os.write(fd, buf)
            os.fdatasync(fd)
            n += 1
    finally:
        os.close(fd)
    return n / (time.perf_counter() - t0)


@pytest.fixture
def q(tmp_path):
    queue = aurora_log.open(tmp_path / "q", reaper_interval=None)
    yield queue
    queue.close()


# ------------------------------------------------------------------ durable enqueue

def test_enqueue_durable_1_thread_vs_fdatasync_loop(benchmark, q, tmp_path):
    floor = fdatasync_loop(tmp_path / "floor")
    i = iter(range(10**9))
    benchmark.pedantic(lambda: q.enqueue(Job("send", payload(next(i)))),
                       rounds=max(50, int(floor * SECONDS)), iterations=1, warmup_rounds=5)
    ours = 1.0 / benchmark.stats.stats.mean
    # Context for the ratio, same run: the CPU one enqueue costs without an fdatasync
    # (durability "os"), and the preallocated-file loop with no work between its ops and
    # with that much work (on a virtual disk a pause between fsyncs makes each slower).
    cpu_us = 1e6 / _enqueue_rate_os(tmp_path / "os")
    bare = floors.fdatasync_loop(tmp_path / "f", SECONDS)
    same_cpu = floors.fdatasync_loop(tmp_path / "f", SECONDS, think_us=cpu_us)
    report(benchmark, fdatasync_per_s=floor, enqueue_per_s=ours, ratio=ours / floor,
           prealloc_loop_per_s=bare, ratio_prealloc=ours / bare, enqueue_cpu_us=cpu_us,
           loop_with_same_cpu_per_s=same_cpu, ratio_same_cpu=ours / same_cpu)


def _enqueue_rate_os(path, n: int = 20_000) -> float:
    """enqueues/s with durability "os" (no fdatasync): the engine's own CPU per enqueue."""
    q = aurora_log.open(path, durability="os", reaper_interval=None)
    try:
        t0 = time.perf_counter()
        for k in range(n):           # the same work per op as the durable loop above
            q.enqueue(Job("send", payload(k)))
        return n / (time.perf_counter() - t0)
    finally:
        q.close()


@pytest.mark.parametrize("threads", [1, 4, 16, 64])
def test_enqueue_durable_threads_vs_sqlite_full(benchmark, tmp_path, threads):
    q = aurora_log.open(tmp_path / "q", reaper_interval=None)
    sq = SqliteQueue(tmp_path / "s.db", "FULL")
    try:
        def ours():
            return run_threads(threads, lambda t, stop: _enqueue_until(q, stop))
        rate = benchmark.pedantic(ours, rounds=1, iterations=1)
        peer = run_threads(threads, lambda t, stop: _sqlite_enqueue_until(sq, stop))
        report(benchmark, threads=threads, enqueue_per_s=rate, sqlite_full_per_s=peer,
               ratio=rate / peer)
    finally:
        q.close()


def _enqueue_until(q, stop):
    n = 0
    while not stop.is_set():
        q.enqueue(Job("send", payload(n)))
        n += 1
    return n


def _sqlite_enqueue_until(sq, stop):
    n = 0
    while not stop.is_set():
        sq.enqueue(payload(n))
        n += 1
    return n


# ------------------------------------------------------------------ batches

def test_enqueue_many_1000_vs_sqlite_executemany(benchmark, q, tmp_path):
    payloads = [payload(i) for i in range(1000)]
    sq = SqliteQueue(tmp_path / "s.db", "FULL")

    def ours():
        q.enqueue_many([Job("send", p) for p in payloads])

    def peer():
        sq.enqueue_many(payloads)

    for _ in range(3):      # warm both
        ours()
        peer()
    # interleave the two sides so a noisy neighbour hits both alike; best of 10 each
    t_peer = min(_timeit(peer) for _ in range(10))
    t_ours_list = []

    def ours_then_peer():
        t_ours_list.append(_timeit(ours))
        nonlocal t_peer
        t_peer = min(t_peer, _timeit(peer))

    benchmark.pedantic(ours_then_peer, rounds=10, iterations=1)
    t_ours = min(t_ours_list)
    # How much of SQLite's whole call the Job objects alone cost (the API takes Jobs:
    # validated, id'd, payload checked): the part no engine change can win back.
    t_jobs = min(_timeit(lambda: [Job("send", p) for p in payloads]) for _ in range(10))
    report(benchmark, ours_jobs_per_s=1000 / t_ours, sqlite_jobs_per_s=1000 / t_peer,
           ratio=t_peer / t_ours, job_objects_vs_sqlite_call=t_jobs / t_peer)


def test_enqueue_many_bulk_1000_vs_sqlite_executemany(benchmark, q, tmp_path):
    """The bulk form, enqueue_many(job_type, payloads): no Job objects, the batch's records
    packed and folded in one pass each. Target (issue 21): >= 1.0x SQLite executemany
    built from the same payload dicts (json.dumps of each, in the timed call on both
    sides); moonshot 2x. Also its CPU alone (durable=False, no fdatasync wait) against
    SQLite's at synchronous=OFF: what the disk does not decide."""
    payloads = [payload(i) for i in range(1000)]
    sq = SqliteQueue(tmp_path / "s.db", "FULL")
    sq_off = SqliteQueue(tmp_path / "s-off.db", "OFF")

    def ours():
        q.enqueue_many("send", payloads)

    def ours_cpu():
        q.enqueue_many("send", payloads, durable=False)

    def peer():
        sq.enqueue_many(payloads)

    def peer_cpu():
        sq_off.enqueue_many(payloads)

    for _ in range(3):      # warm every side
        ours(), ours_cpu(), peer(), peer_cpu()
    best = {"ours": [], "ours_cpu": [], "peer": [], "peer_cpu": []}

    def round_of_each():    # interleaved, so a noisy neighbour hits every side alike
        best["ours"].append(_timeit(ours))
        best["peer"].append(_timeit(peer))
        best["ours_cpu"].append(_timeit(ours_cpu))
        best["peer_cpu"].append(_timeit(peer_cpu))

    benchmark.pedantic(round_of_each, rounds=15, iterations=1)
    t = {k: min(v) for k, v in best.items()}
    q.flush()
    report(benchmark, bulk_jobs_per_s=1000 / t["ours"], sqlite_jobs_per_s=1000 / t["peer"],
           ratio=t["peer"] / t["ours"], cpu_us_per_job=t["ours_cpu"] * 1000,
           sqlite_off_us_per_job=t["peer_cpu"] * 1000,
           cpu_ratio=t["peer_cpu"] / t["ours_cpu"])


def _timeit(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ------------------------------------------------------------------ claim + complete

PREFILL = int(os.environ.get("AURORA_BENCH_PREFILL", "80000"))


@pytest.mark.parametrize("durable", [True, False], ids=["durable", "group-commit"])
def test_claim_complete_8_threads_vs_sqlite(benchmark, tmp_path, durable):
    q = aurora_log.open(tmp_path / "q", reaper_interval=None)
    sq = SqliteQueue(tmp_path / "s.db", "FULL" if durable else "NORMAL")
    try:
        for start in range(0, PREFILL, 1000):
            q.enqueue_many([Job("send", payload(i)) for i in range(start, start + 1000)])
            sq.enqueue_many([payload(i) for i in range(start, start + 1000)])

        def work(t, stop):
            n = 0
            while not stop.is_set():
                j = q.claim(f"w{t}")
                if j is None:
                    break
                q.complete(j.id, j.token, durable=durable)
                n += 1
            return n

        def peer_work(t, stop):
            n = 0
            while not stop.is_set() and sq.claim_complete():
                n += 1
            return n

        # alternate short windows of each side so a noisy neighbour hits both alike
        rates, peers = [], []

        def window():
            rates.append(run_threads(8, work, SECONDS / 4))
            peers.append(run_threads(8, peer_work, SECONDS / 4))

        benchmark.pedantic(window, rounds=4, iterations=1)
        rate, peer = sum(rates) / len(rates), sum(peers) / len(peers)
        report(benchmark, durable=str(durable), claim_complete_per_s=rate,
               **{f"sqlite_{sq.sync.lower()}_per_s": peer}, ratio=rate / peer)
    finally:
        q.close()


# ------------------------------------------------------------------ replay and memory

_CHILD = textwrap.dedent("""
    import json, sys, time
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    import aurora_log
    from aurora_log.local.state import State
    before = rss()
    t0 = time.perf_counter()
    q = aurora_log.open(sys.argv[1], reaper_interval=None, auto_compact=False)
    t_open = time.perf_counter() - t0
    j = q.claim("bench")
    t_claim = time.perf_counter() - t0
    after = rss()
    n = q.stats()["total"]
    print(json.dumps({"n": n, "open_s": t_open, "open_claim_s": t_claim,
                      "rss_per_job": (after - before) / n, "top_priority": int(j.priority)}))
    q.close()
""")


def _fill(directory, n):
    q = aurora_log.open(directory, reaper_interval=None, durability="os", auto_compact=False)
    try:
        for start in range(0, n, 5000):
            batch = []
            for i in range(start, min(n, start + 5000)):
                j = Job("send", payload(i))
                if i == n // 2:
                    j.with_priority(4)
                batch.append(j)
            q.enqueue_many(batch, durable=False)
        q.flush()
    finally:
        q.close()


def test_replay_pending_jobs_and_rss_per_job(benchmark, tmp_path):
    d = tmp_path / "replay"
    _fill(d, REPLAY_N)

    def child():
        out = subprocess.run([sys.executable, "-c", _CHILD, str(d)], capture_output=True,
                             text=True, check=True)
        return json.loads(out.stdout)

    assert not list(d.glob("snap/*")), "the replay must be a full WAL replay (no snapshot)"
    res = benchmark.pedantic(child, rounds=1, iterations=1)
    assert res["n"] == REPLAY_N and res["top_priority"] == 4
    report(benchmark, jobs=REPLAY_N, replay_s=res["open_s"], replay_and_claim_s=res["open_claim_s"],
           records_per_s=REPLAY_N / res["open_s"], rss_bytes_per_pending_job=res["rss_per_job"])
