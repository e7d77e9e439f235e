"""Many processes, one store: aurora-log's shared mode against SQLite and the bare loop.

    python bench/xproc/many.py [--procs 1,4,16,64] [--workers 1,4,8] [--seconds 1.5]

Issue 19's benchmark, used by bench/compare.py as scenario s8 (ratios taken in one run):

  enqueue  durable enqueue from N producer processes, one job per call, each process with
           its own store handle / connection, at each N, back to back:
             bare    the bare cross-process group-commit loop (bench/xproc/xproc.py `shm`:
                     native/shm.c's commit of a 100-byte record, nothing else)
             aurora  aurora_log.open(path, shared=True) in `sync` durability, q.enqueue(Job)
             sqlite  SQLite WAL, synchronous=FULL, one INSERT per transaction (the same
                     hand-written table as bench/peers/sqlite_table.py)
  claim    claim + durable complete from N worker processes over a prefilled queue:
             aurora  q.claim() then q.complete() (the complete is fdatasynced; the claim is
                     written, never synced: its contract)
             sqlite  the peer's claim (UPDATE..RETURNING in BEGIN IMMEDIATE) and DELETE, each
                     its own FULL transaction

Per point: operations/s, CPU per operation (user+sys of every process over its own timed
window, fdatasync's kernel time included), fdatasyncs/s and records per fdatasync. For
aurora and the bare loop the fdatasyncs are the control page's counter (every process's);
for SQLite in WAL FULL mode every write transaction syncs the WAL once, so its fdatasyncs
are derived (= transactions), not counted.

The processes are forked after the imports; every one opens its own handle, reports
ready, and the timed window starts when all are ready (a go event), so 64 slow opens do
not eat into it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import struct
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
ROOT = os.path.dirname(BENCH)
for _p in (HERE, BENCH, ROOT):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import aurora_log  # noqa: E402  (after the path set-up above)
from aurora_log import Job  # noqa: E402
from peers import sqlite_table  # noqa: E402
import xproc  # noqa: E402

CTX = mp.get_context("fork")
PAYLOAD = {"i": 0, "level": 4, "email": "user00000000@example.com", "template": "welcome-v2",
           "lang": "en", "pad": "x" * 16}          # ~100 bytes of JSON, as compare.py's
COUNTERS_OFF = 320                                 # FORMAT.md: the page's u64 counters
OPEN = {"reaper_interval": None, "auto_compact": False}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ------------------------------------------------------------------ process bodies
# Each opens its own handle, says ready, waits for the go, runs its loop until the shared
# stop time and reports (operations, cpu seconds, time of its last operation).

def _timed(ready, go, window, op) -> tuple[int, float, float]:
    ready.put(os.getpid())
    go.wait(300)
    start, stop = window[0], window[1]
    while time.time() < start:
        time.sleep(0.0005)
    c0, n, last = _cpu(), 0, start
    while True:
        now = time.time()
        if now >= stop:
            break
        if not op(n):
            break           # a claim found the queue empty: the window ends for us here
        n += 1
        last = now
    return n, _cpu() - c0, max(last, time.time() if n else start)


def _aurora_enqueue(path, ready, go, window, out, closing):
    q = aurora_log.open(path, shared=True, durability="sync", **OPEN)

    def op(i):
        q.enqueue(Job("bench", PAYLOAD))
        return True

    out.put(_timed(ready, go, window, op))
    closing.wait(300)   # the parent counts the page's fdatasyncs before our DETACH
    q.close()


def _aurora_claim(path, ready, go, window, out, closing):
    q = aurora_log.open(path, shared=True, durability="sync", **OPEN)
    wid = f"bench-{os.getpid()}"

    def op(i):
        j = q.claim(wid)
        if j is None:
            return False
        q.complete(j.id, j.token)
        return True

    out.put(_timed(ready, go, window, op))
    closing.wait(300)   # the parent counts the page's fdatasyncs before our DETACH
    q.close()


def _sqlite_enqueue(path, ready, go, window, out, closing):
    h = sqlite_table._Handle(path, "FULL")

    def op(i):
        h.enqueue(PAYLOAD)
        return True

    out.put(_timed(ready, go, window, op))
    h.close()


def _sqlite_claim(path, ready, go, window, out, closing):
    h = sqlite_table._Handle(path, "FULL")

    def op(i):
        got = h.claim()
        if got is None:
            return False
        h.complete(got[0])
        return True

    out.put(_timed(ready, go, window, op))
    h.close()


def _run(target, path: str, n: int, seconds: float, page: bool = False) -> dict:
    """n processes of `target` on `path`, one timed window; totals. page: count the
    control page's fdatasyncs from the go to the last report (the attaches' and closes'
    durable ATTACH/DETACH records fall outside)."""
    ready, out, go, closing = CTX.Queue(), CTX.Queue(), CTX.Event(), CTX.Event()
    window = CTX.Array("d", [0.0, 0.0])
    procs = [CTX.Process(target=target, args=(path, ready, go, window, out, closing))
             for _ in range(n)]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready.get(timeout=300)
        s0 = _page_fdatasyncs(path) if page else 0
        start = time.time() + 0.05
        window[0], window[1] = start, start + seconds
        go.set()
        res = [out.get(timeout=seconds + 300) for _ in procs]
        syncs = _page_fdatasyncs(path) - s0 if page else None
    finally:
        closing.set()
        for p in procs:
            p.join(60)
    ops = sum(r[0] for r in res)
    elapsed = max(max(r[2] for r in res) - start, 1e-6)
    row = {"procs": n, "ops": ops, "elapsed": elapsed, "ops_s": ops / elapsed,
           "cpu_us": 1e6 * sum(r[1] for r in res) / max(ops, 1)}
    if syncs is not None:
        row["syncs"] = syncs
    return row


def _page_fdatasyncs(path: str) -> int:
    """The control page's fdatasync counter (FORMAT.md: counters at 320, fdatasyncs
    first); the page survives every process's close."""
    with open(os.path.join(path, "shm"), "rb") as f:
        f.seek(COUNTERS_OFF)
        return struct.unpack("=Q", f.read(8))[0]


def _with_syncs(row: dict, syncs: int | None) -> dict:
    if syncs is None:           # SQLite WAL FULL: one WAL sync per write transaction
        row["fdatasyncs_s"] = row["sync_tx_s"]
        row["rec_per_sync"] = row["ops_s"] / max(row["sync_tx_s"], 1e-9)
        row["fdatasyncs_counted"] = False
    else:
        row["fdatasyncs_s"] = syncs / row["elapsed"]
        row["rec_per_sync"] = row["ops"] / max(syncs, 1)
        row["fdatasyncs_counted"] = True
    return row


# ------------------------------------------------------------------ points

def enqueue_point(system: str, n: int, seconds: float, work: str, shm_dir: str) -> dict:
    d = tempfile.mkdtemp(prefix=f"many-{system}-{n}-", dir=work)
    try:
        if system == "bare":
            r = xproc.run_point("shm", n, seconds, work, shm_dir)
            return {"system": system, "procs": n, "ops_s": r["commits_s"],
                    "cpu_us": r["cpu_us_per_commit"], "fdatasyncs_s": r["syncs_s"],
                    "rec_per_sync": r["recs_per_sync"], "fdatasyncs_counted": True}
        if system == "aurora":
            aurora_log.open(d, shared=True, **OPEN).close()     # created, page built
            row = _run(_aurora_enqueue, d, n, seconds, page=True)
            return {"system": system, **_with_syncs(row, row.pop("syncs"))}
        if system == "sqlite":
            peer = sqlite_table.SqliteTablePeer("FULL")
            peer.open(d)
            peer.close()
            row = _run(_sqlite_enqueue, peer.path, n, seconds)
            row["sync_tx_s"] = row["ops_s"]
            return {"system": system, **_with_syncs(row, None)}
        raise ValueError(system)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def claim_point(system: str, n: int, seconds: float, work: str, prefill: int) -> dict:
    d = tempfile.mkdtemp(prefix=f"many-claim-{system}-{n}-", dir=work)
    try:
        if system == "aurora":
            with aurora_log.open(d, shared=True, **OPEN) as q:
                for i in range(0, prefill, 5000):
                    q.enqueue_many([Job("bench", PAYLOAD) for _ in range(min(5000,
                                                                        prefill - i))],
                                   durable=False)
                q.log.flush()
            row = _run(_aurora_claim, d, n, seconds, page=True)
            return {"system": system, **_with_syncs(row, row.pop("syncs"))}
        if system == "sqlite":
            peer = sqlite_table.SqliteTablePeer("FULL")
            peer.open(d)
            peer.prefill([(PAYLOAD, 4)] * prefill)
            peer.close()
            row = _run(_sqlite_claim, peer.path, n, seconds)
            row["sync_tx_s"] = 2 * row["ops_s"]       # the claim's and the DELETE's
            return {"system": system, **_with_syncs(row, None)}
        raise ValueError(system)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def measure(procs: list[int], workers: list[int], seconds: float, prefill: int,
            work: str | None = None, log=print) -> dict:
    """Every point of both parts, back to back per process count; returns rows and the
    ratios of issue 19 (aurora/bare and aurora/sqlite at each count)."""
    root = tempfile.mkdtemp(prefix="many-", dir=work)
    try:
        shm_dir = os.path.join(root, "build")
        os.makedirs(shm_dir)
        xproc.build_shm(shm_dir)
        enq, claims = [], []
        for n in procs:
            by = {s: enqueue_point(s, n, seconds, root, shm_dir)
                  for s in ("bare", "aurora", "sqlite")}
            for r in by.values():
                enq.append(r)
                log(fmt(r, "enqueue"))
            log(f"    enqueue x{n}: aurora/bare {ratio(by, 'bare'):.2f}  "
                f"aurora/sqlite {ratio(by, 'sqlite'):.2f}")
        for n in workers:
            # enough jobs for the window at a generous rate; a worker that finds the
            # queue empty ends its window there (rates use each one's real window)
            by = {s: claim_point(s, n, seconds, root, prefill) for s in ("aurora", "sqlite")}
            for r in by.values():
                claims.append(r)
                log(fmt(r, "claim+complete"))
            log(f"    claim+complete x{n}: aurora/sqlite {ratio(by, 'sqlite'):.2f}")
        return {"enqueue": enq, "claim": claims, "ratios": ratios(enq, claims)}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def ratio(by: dict, other: str) -> float:
    return by["aurora"]["ops_s"] / max(by[other]["ops_s"], 1e-9)


def ratios(enq: list[dict], claims: list[dict]) -> dict:
    out: dict = {"enqueue_vs_bare": {}, "enqueue_vs_sqlite": {}, "claim_vs_sqlite": {}}
    for rows, key, other in ((enq, "enqueue_vs_bare", "bare"),
                             (enq, "enqueue_vs_sqlite", "sqlite"),
                             (claims, "claim_vs_sqlite", "sqlite")):
        for r in rows:
            if r["system"] != "aurora":
                continue
            o = next(x for x in rows if x["system"] == other and x["procs"] == r["procs"])
            out[key][r["procs"]] = r["ops_s"] / max(o["ops_s"], 1e-9)
    return out


def fmt(r: dict, what: str) -> str:
    derived = "" if r["fdatasyncs_counted"] else " (derived)"
    return (f"  {what:>14} {r['system']:>6} x{r['procs']:<3} {r['ops_s']:>9,.0f} ops/s  "
            f"cpu {r['cpu_us']:6.0f} us/op  {r['fdatasyncs_s']:>7,.0f} fdatasyncs/s"
            f"{derived}  {r['rec_per_sync']:5.1f} rec/sync")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--procs", default="1,4,16,64")
    ap.add_argument("--workers", default="1,4,8")
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--prefill", type=int, default=20_000)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    res = measure([int(x) for x in a.procs.split(",") if x],
                  [int(x) for x in a.workers.split(",") if x], a.seconds, a.prefill, a.dir)
    if a.json:
        print(json.dumps(res))


if __name__ == "__main__":
    main()
