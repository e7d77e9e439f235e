"""Reopen + first claim of a big store, wall and CPU, both store modes (issue 21's target).

bench/compare.py s6 measures the wall time of one reopen per system next to its peers; this
script is the narrower tool for working on the reopen itself: it fills one store once, copies
it, compacts the copy, and then reopens each store in fresh processes, in the default (shared)
mode and in exclusive mode, several times, reporting wall and CPU (time.process_time) of
open + first claim and the RSS grown per pending job. --profile prints a cProfile of one
reopen per case. The page cache is warm after the first round (the store was just written
or read); the first round is reported separately as "first".

  python bench/reopen.py --n 1000000 --rounds 3 [--keep DIR] [--profile]
  python bench/reopen.py --reuse DIR ...        # measure stores kept by an earlier --keep
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def payload(i: int) -> dict:
    """The same 100-byte-ish JSON payload as bench/compare.py's."""
    return {"i": i, "level": 5, "email": f"user{i:08d}@example.com",
            "template": "welcome-v2", "lang": "en", "pad": "x" * 16}


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def fill(directory: str, n: int, chunk: int = 50_000) -> float:
    import aurora_log
    t = time.perf_counter()
    q = aurora_log.open(directory)
    try:
        for s in range(0, n, chunk):
            q.enqueue_many("bench", [payload(i) for i in range(s, min(n, s + chunk))])
    finally:
        q.close()
    return time.perf_counter() - t


def compact(directory: str) -> float:
    import aurora_log
    t = time.perf_counter()
    q = aurora_log.open(directory)
    try:
        q.compact()
    finally:
        q.close()
    return time.perf_counter() - t


def child(directory: str, exclusive: bool, profile: bool) -> dict:
    """One fresh process: import and warm the code first, then open + first claim."""
    import aurora_log
    probe = tempfile.mkdtemp(prefix="reopen-probe-", dir=os.path.dirname(directory))
    aurora_log.open(probe, exclusive=exclusive).close()
    shutil.rmtree(probe, ignore_errors=True)
    gc.collect()
    rss0 = _rss()
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    w0, c0 = time.perf_counter(), time.process_time()
    q = aurora_log.open(directory, exclusive=exclusive)
    w1, c1 = time.perf_counter(), time.process_time()
    job = q.claim("bench")
    w2, c2 = time.perf_counter(), time.process_time()
    if prof:
        prof.disable()
    gc.collect()
    rss1 = _rss()
    res = {"open_wall": w1 - w0, "open_cpu": c1 - c0, "wall": w2 - w0, "cpu": c2 - c0,
           "rss_grown": rss1 - rss0, "claimed": job is not None}
    if job is not None:
        res["i"] = job.payload.get("i")
        q.complete(job.id, job.token)       # untimed: leave no running job behind
    q.close()
    if prof:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(35)
        res["profile"] = s.getvalue()
    return res


def run_child(directory: str, exclusive: bool, profile: bool) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO] + ([env["PYTHONPATH"]]
                                                 if env.get("PYTHONPATH") else []))
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", directory,
                        "--exclusive" if exclusive else "--shared"]
                       + (["--profile"] if profile else []),
                       capture_output=True, text=True, env=env, timeout=600)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"child exited {p.returncode}: {p.stderr[-2000:]}")
    return json.loads(lines[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep", help="fill into this directory and keep the stores")
    ap.add_argument("--reuse", help="measure the stores an earlier --keep left here")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--exclusive", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--shared", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.exclusive, args.profile)))
        return 0

    base = args.reuse or args.keep or tempfile.mkdtemp(prefix="reopen-bench-")
    filled, compacted = os.path.join(base, "filled"), os.path.join(base, "compacted")
    if not args.reuse:
        os.makedirs(base, mode=0o700, exist_ok=True)
        print(f"fill {args.n:,} pending: {fill(filled, args.n):.1f} s", flush=True)
        shutil.copytree(filled, compacted)
        print(f"compact the copy: {compact(compacted):.1f} s", flush=True)
    try:
        for label, d in (("as filled", filled), ("after compaction", compacted)):
            for mode, excl in (("shared", False), ("exclusive", True)):
                runs = [run_child(d, excl, args.profile and r == args.rounds - 1)
                        for r in range(args.rounds)]
                warm = runs[1:] or runs
                best = min(warm, key=lambda r: r["wall"])
                print(f"{label:17s} {mode:9s} wall {best['wall']*1e3:7.1f} ms  "
                      f"cpu {best['cpu']*1e3:7.1f} ms  (open {best['open_wall']*1e3:6.1f} ms "
                      f"wall / {best['open_cpu']*1e3:6.1f} ms cpu)  "
                      f"rss {best['rss_grown'] / args.n:5.1f} B/job  "
                      f"first round wall {runs[0]['wall']*1e3:.1f} ms  "
                      f"walls {[round(r['wall'] * 1e3, 1) for r in warm]}", flush=True)
                if not all(r["claimed"] for r in runs):
                    print("  ! a reopen claimed nothing")
                prof = next((r["profile"] for r in runs if "profile" in r), None)
                if prof:
                    print(prof)
    finally:
        if not (args.keep or args.reuse):
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
