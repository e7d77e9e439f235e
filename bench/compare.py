#!/usr/bin/env python3
"""aurora-log against the queues users would pick instead, and against the hardware floor.

    pip install -r bench/requirements.txt      # the peers (and matplotlib for the chart)
    python bench/compare.py                    # default sizes, < 10 minutes on 2 cores
    python bench/compare.py --quick            # tiny sizes, ~30 s (CI smoke)
    python bench/compare.py --only s2,s4 --peers aurora-sync,sqlite-full

Systems (bench/peers/, one adapter each): aurora-log in `sync` and `interval` durability,
a sqlite3 WAL table-as-queue at synchronous=FULL and NORMAL, persist-queue SQLiteAckQueue,
huey SqliteStorage and litequeue (default NORMAL and FULL). A peer whose package is not
installed is skipped with a line saying so.

Floors, measured in the same run on the same disk: a write+fdatasync loop of 100-byte
records, a one-write-one-fdatasync batch curve, and a pure-Python json.dumps + heappush +
heappop loop (the interpreter's ceiling for an in-memory priority queue).

Scenarios:
  s1  durable enqueue, 1 producer
  s2  durable enqueue, 1/4/16/64/256 producer threads (own connection per thread where the
      peer needs one; one insert per commit)
  s3  batched enqueue, 1,000 jobs per call, both sides from the same 1,000 payload dicts
  s4  claim + complete, 1 and 8 worker threads
  s5  priority-ordered claim + complete over 10 priority levels (order checked)
  s6  reopen + first claim with N pending jobs (fresh child process per system)
  s7  disk bytes and RSS growth per pending job (same child processes as s6)
  s8  many processes on one store (issue 19, bench/xproc/many.py): durable enqueue from
      1/4/16/64 producer processes, aurora-log shared mode against SQLite WAL FULL (one
      connection per process) and the bare cross-process group-commit loop (xproc.py
      `shm`), back to back at each count; claim + durable complete from 1/4/8 worker
      processes against SQLite FULL. CPU per op, fdatasyncs/s, records per fdatasync.
      Runs in the harness process (it forks its own), whatever --peers says.

Isolation: every system runs in its own long-lived child process (scenarios run
scenario-major, so slow drifts in machine load hit all systems alike), and every
measurement gets a fresh directory under --dir, on the disk of --dir. The reopen/RSS
measurement gets one more fresh process per system so its baseline RSS is clean.

Output: a table on the terminal, DIR/compare-<timestamp>.json and compare-latest.json
(machine description, settings, every number), and compare-latest.png (aurora-log's
advantage over each peer per scenario) when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import heapq
import importlib.metadata
import json
import os
import platform
import random
import selectors
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# Measure this checkout's aurora_log (built in place by `pip install -e .`), and find the
# peers package next to this file, whether run as a script or imported by tests.
for _p in (HERE, REPO):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import floors  # noqa: E402  (after the path set-up above)
import peers  # noqa: E402

SCENARIOS = {
    "s1": "durable enqueue, 1 producer",
    "s2": "durable enqueue, N producer threads",
    "s3": "batched enqueue, 1,000 per call",
    "s4": "claim + complete, N worker threads",
    "s5": "priority-ordered claim + complete, 10 levels",
    "s6": "reopen + first claim with N pending",
    "s7": "disk bytes and RSS per pending job",
    "s8": "many processes, one store: durable enqueue and claim+complete",
}


# ---------------------------------------------------------------------------------------
# sizes
# ---------------------------------------------------------------------------------------


def _paired_with_floor(name: str) -> bool:
    """s1 runs the fdatasync floor right before these peers: aurora-log in sync mode, in
    either spelling of its mode (aurora-sync, aurora-sync-excl, aurora-sync-shared)."""
    return name == "aurora-sync" or name.startswith("aurora-sync-")


@dataclass
class Config:
    duration: float = 1.5              # seconds per timed measurement
    enqueue_threads: list = field(default_factory=lambda: [1, 4, 16, 64, 256])
    claim_threads: list = field(default_factory=lambda: [1, 8])
    s1_rounds: int = 3                 # s1 is short: 3 rounds against drift
    batch: int = 1000
    claim_prefill: int = 40_000        # pending jobs before the claim measurement
    priority_prefill: int = 20_000
    reopen_sizes: list = field(default_factory=lambda: [200_000])
    reopen_big: int = 1_000_000        # aurora-log + the two sqlite tables only, by default
    reopen_big_peers: list = field(default_factory=lambda: [
        "aurora-sync", "sqlite-full", "sqlite-normal"])
    batch_curve: list = field(default_factory=lambda: [1, 4, 16, 64, 256, 1000])
    py_loop_n: int = 200_000
    op_timeout: float = 300.0          # a child that does not answer in this long is killed
    xproc_procs: list = field(default_factory=lambda: [1, 4, 16, 64])    # s8 producers
    xproc_workers: list = field(default_factory=lambda: [1, 4, 8])       # s8 workers
    xproc_prefill: int = 20_000        # s8: pending jobs before the claim measurement

    @classmethod
    def quick(cls):
        return cls(duration=0.1, s1_rounds=1, enqueue_threads=[1, 4], claim_threads=[1, 8],
                   batch=100,
                   claim_prefill=600, priority_prefill=300, reopen_sizes=[2_000],
                   reopen_big=0, batch_curve=[1, 16, 100], py_loop_n=5_000,
                   op_timeout=60.0, xproc_procs=[1, 2], xproc_workers=[1, 2],
                   xproc_prefill=1_000)


# ---------------------------------------------------------------------------------------
# payloads: ~100 bytes of JSON each, identical for every system
# ---------------------------------------------------------------------------------------

def payload(i: int, level: int = peers.DEFAULT_LEVEL) -> dict:
    return {"i": i, "level": level, "email": f"user{i:08d}@example.com",
            "template": "welcome-v2", "lang": "en", "pad": "x" * 16}


def items(start: int, n: int, levels=None):
    if levels is None:
        return [(payload(i), peers.DEFAULT_LEVEL) for i in range(start, start + n)]
    return [(payload(i, levels[i - start]), levels[i - start]) for i in range(start, start + n)]


# ---------------------------------------------------------------------------------------
# measurement primitives (run inside the per-system child)
# ---------------------------------------------------------------------------------------

def settle():
    """Flush every dirty page before a timed part. Setup (prefill) leaves megabytes of
    dirty data behind, and on ext4 (data=ordered) the next fsyncs of ANY file on the file
    system wait for that writeback: the first system after a big fill would pay for it."""
    os.sync()


def timed_threads(peer, nthreads: int, duration: float, work) -> dict:
    """Run work(handle, stop, counts, i) on n threads from one barrier for `duration`.

    The rate is the total count over the time from the barrier's release to the last
    thread's exit, so the last in-flight operations count with their full time. Work that
    runs out (a drained queue) ends early, and the time ends with it.
    """
    handles = [peer.handle() for _ in range(nthreads)]
    counts = [0] * nthreads
    errors = []
    stop = [False]
    barrier = threading.Barrier(nthreads + 1)

    def run(i):
        try:
            barrier.wait()
            work(handles[i], stop, counts, i)
        except Exception as e:     # a peer error is a result, not a crash of the run
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(nthreads)]
    for t in threads:
        t.start()
    settle()
    barrier.wait()
    t0 = time.perf_counter()
    deadline = t0 + duration
    while time.perf_counter() < deadline and any(t.is_alive() for t in threads):
        time.sleep(min(0.01, max(0.0, deadline - time.perf_counter())))
    stop[0] = True
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    for h in handles:
        if h is not peer:
            peer.release(h)
    total = sum(counts)
    return {"ops": total, "elapsed": elapsed, "rate": total / elapsed if elapsed else 0.0,
            "threads": nthreads, "errors": errors[:5], "n_errors": len(errors)}


def op_enqueue(peer, threads: int, duration: float) -> dict:
    pl = [payload(i) for i in range(1000)]
    level = peers.DEFAULT_LEVEL

    def work(h, stop, counts, i):
        enq = h.enqueue
        n = 0
        while not stop[0]:
            enq(pl[n % 1000], level)
            n += 1
            counts[i] = n

    return timed_threads(peer, threads, duration, work)


def op_batch(peer, batch: int, duration: float) -> dict:
    its = items(0, batch)          # the same payload dicts on every call, for every system
    settle()
    t0 = time.perf_counter()
    n = 0
    while True:
        peer.enqueue_many(its)
        n += 1
        if time.perf_counter() - t0 >= duration:
            break
    elapsed = time.perf_counter() - t0
    return {"ops": n * batch, "calls": n, "elapsed": elapsed, "rate": n * batch / elapsed,
            "batch": batch}


def op_claim(peer, threads: int, duration: float, prefill: int) -> dict:
    t = time.perf_counter()
    for s in range(0, prefill, 50_000):
        peer.prefill(items(s, min(50_000, prefill - s)))
    prefill_s = time.perf_counter() - t

    def work(h, stop, counts, i):
        claim, complete = h.claim, h.complete
        n = 0
        while not stop[0]:
            r = claim()
            if r is None:
                break
            complete(r[0])
            n += 1
            counts[i] = n

    res = timed_threads(peer, threads, duration, work)
    res["prefill"] = prefill
    res["prefill_s"] = prefill_s
    res["drained"] = res["ops"] >= prefill
    return res


def op_priority(peer, duration: float, prefill: int, mapping: str) -> dict:
    rnd = random.Random(7)
    levels = [rnd.randrange(10) for _ in range(prefill)]
    peer.prefill(items(0, prefill, levels))
    seen = []
    settle()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < duration:
        r = peer.claim()
        if r is None:
            break
        peer.complete(r[0])
        seen.append((r[1]["level"], r[1]["i"]))
    elapsed = time.perf_counter() - t0
    # Order check, on the system's own priority scale: priorities never rise; within a
    # priority the jobs come out in enqueue order (FIFO).
    key = peers.aurora_level if mapping == "aurora" else (lambda lv: lv)
    inversions = 0
    for (la, ia), (lb, ib) in zip(seen, seen[1:], strict=False):
        pa, pb = key(la), key(lb)
        if pb > pa or (pb == pa and ib < ia):
            inversions += 1
    # The claims must also start at the best priority present.
    best = max(key(lv) for lv in levels)
    first_ok = bool(seen) and key(seen[0][0]) == best
    return {"ops": len(seen), "elapsed": elapsed, "rate": len(seen) / elapsed,
            "prefill": prefill, "inversions": inversions, "first_is_best": first_ok,
            "order_ok": inversions == 0 and first_ok}


def op_fill(peer, n: int) -> dict:
    t = time.perf_counter()
    chunk = 50_000
    for s in range(0, n, chunk):
        peer.prefill(items(s, min(chunk, n - s)))
    return {"prefill_s": time.perf_counter() - t, "n": n}


# ---------------------------------------------------------------------------------------
# floors (run in the parent, which imports no peer)
# ---------------------------------------------------------------------------------------

def py_heap_loop(n: int) -> float:
    """json.dumps + heappush, then heappop + json.loads, per job: the interpreter's ceiling
    for an in-memory priority queue of JSON jobs (no I/O, no locks)."""
    pl = [payload(i) for i in range(1000)]
    heap = []
    dumps, loads, push, pop = json.dumps, json.loads, heapq.heappush, heapq.heappop
    t0 = time.perf_counter()
    for i in range(n):
        push(heap, (-peers.DEFAULT_LEVEL, i, dumps(pl[i % 1000])))
    while heap:
        loads(pop(heap)[2])
    return n / (time.perf_counter() - t0)


class Floors:
    """The disk floors from bench/floors.py (writes over preallocated, fsynced files, as the
    log does). Each scenario re-measures the floor it is judged against right next to its
    systems, because a shared machine's disk drifts by whole factors over minutes."""

    source = "bench/floors.py (preallocated files)"

    def __init__(self, workdir, cfg: Config):
        self.dir = os.path.join(workdir, "floors")
        os.makedirs(self.dir, exist_ok=True)
        self.cfg = cfg

    def fdatasync(self, seconds: float) -> float:
        return float(floors.fdatasync_loop(self.dir, float(seconds), record_bytes=100))

    def curve(self, sizes, seconds: float) -> dict:
        raw = floors.batch_curve(self.dir, list(sizes), seconds=float(seconds))
        return {int(k): float(v) for k, v in raw.items()}

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def measure_floors(fl: Floors, cfg: Config) -> dict:
    """The overview printed before the scenarios (each scenario measures its own again)."""
    fd_rate = fl.fdatasync(cfg.duration)
    curve = fl.curve(cfg.batch_curve, max(0.05, cfg.duration / 3))
    py = py_heap_loop(cfg.py_loop_n)
    return {"source": fl.source, "fdatasync_loop": fd_rate, "batch_curve": curve,
            "py_heap_loop": py, "record_bytes": 100}


# ---------------------------------------------------------------------------------------
# child processes
# ---------------------------------------------------------------------------------------

def _proto_out():
    """Keep the real stdout for protocol lines; anything a peer prints goes to stderr."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return out


def child_main(name: str) -> int:
    out = _proto_out()
    ok, why = peers.availability(name)
    out.write(json.dumps({"ready": ok, "why": why}) + "\n")
    if not ok:
        return 0
    for line in sys.stdin:
        req = json.loads(line)
        op = req.pop("op")
        if op == "quit":
            break
        directory = req.pop("dir")
        try:
            peer = peers.make(name)
            peer.open(directory)
            try:
                if op == "describe":
                    res = {"info": peer.info(), "settings": peer.describe()}
                elif op == "enqueue":
                    res = op_enqueue(peer, req["threads"], req["duration"])
                elif op == "batch":
                    res = op_batch(peer, req["batch"], req["duration"])
                elif op == "claim":
                    res = op_claim(peer, req["threads"], req["duration"], req["prefill"])
                elif op == "priority":
                    res = op_priority(peer, req["duration"], req["prefill"],
                                      "aurora" if name.startswith("aurora") else "raw")
                elif op == "fill":
                    res = op_fill(peer, req["n"])
                elif op == "compact":
                    t = time.perf_counter()
                    peer.compact()
                    res = {"compact_s": time.perf_counter() - t}
                else:
                    raise ValueError(f"unknown op {op}")
            finally:
                peer.close()
            if op in ("fill", "compact"):
                res["disk"] = peer.disk_bytes()
        except Exception as e:
            res = {"error": f"{type(e).__name__}: {e}",
                   "traceback": traceback.format_exc(limit=6)}
        out.write(json.dumps(res) + "\n")
    return 0


def _status_kb(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    return 0


def reopen_child_main(name: str, directory: str, n: int, expect_i: int = 0) -> int:
    """A fresh process: imports first, then baseline RSS, then open + first claim."""
    out = _proto_out()
    try:
        cls, kwargs = peers.peer_class(name)
        ok, why = cls.available()
        if not ok:
            raise peers.Unavailable(why)
        peer = cls(**kwargs)
        # Import the peer's package before the baseline, so the baseline holds the code.
        probe = os.path.join(os.path.dirname(directory), f"probe-{os.getpid()}")
        peer.open(probe)
        peer.close()
        shutil.rmtree(probe, ignore_errors=True)
        peer = cls(**kwargs)
        gc.collect()
        rss0 = _status_kb("VmRSS")
        t0 = time.perf_counter()
        peer.open(directory)
        t1 = time.perf_counter()
        r = peer.claim()
        t2 = time.perf_counter()
        gc.collect()
        rss1 = _status_kb("VmRSS")
        res = {"open_s": t1 - t0, "first_claim_s": t2 - t1, "reopen_s": t2 - t0,
               "rss_base": rss0, "rss_after": rss1, "rss_peak": _status_kb("VmHWM"),
               "claimed": r is not None,
               "first_is_oldest": r is not None and r[1].get("i") == expect_i, "n": n}
        if r is not None:
            peer.complete(r[0])     # untimed: leave no running job for a later reopen
        peer.close()
    except Exception as e:
        res = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=6)}
    out.write(json.dumps(res) + "\n")
    return 0


def _child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([HERE, REPO] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("PYTHONHASHSEED", "0")
    return env


class Child:
    """A long-lived child process serving one system, one JSON line per request."""

    def __init__(self, name: str, timeout: float):
        self.name = name
        self.timeout = timeout
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--child", name],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_child_env(),
            start_new_session=True)
        hello = self._read(60.0)
        self.ready = bool(hello and hello.get("ready"))
        self.why = (hello or {}).get("why", "child did not start")

    def _read(self, timeout):
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(timeout):
                return None
            line = self.proc.stdout.readline()
        finally:
            sel.close()
        if not line:
            return None
        return json.loads(line)

    def request(self, **req) -> dict:
        if self.proc.poll() is not None:
            return {"error": f"child exited with {self.proc.returncode}"}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        res = self._read(self.timeout)
        if res is None:
            self.kill()
            return {"error": f"no answer within {self.timeout:.0f} s (child killed)"}
        return res

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)   # our own child's process group
            self.proc.wait()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except Exception:
                self.kill()


def run_reopen_child(name, directory, n, timeout, expect_i=0) -> dict:
    try:
        p = subprocess.run([sys.executable, os.path.abspath(__file__), "--reopen-child",
                            name, directory, str(n), str(expect_i)], capture_output=True,
                           text=True,
                           env=_child_env(), timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"reopen child timed out after {timeout:.0f} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"error": f"reopen child exited {p.returncode}: {p.stderr[-400:]}"}
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------
# the machine
# ---------------------------------------------------------------------------------------

def _read(path, default=""):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def filesystem_of(path: str) -> dict:
    path = os.path.realpath(path)
    best = None
    for line in _read("/proc/self/mounts").splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        dev, mnt, fstype, opts = parts[:4]
        mnt = mnt.replace("\\040", " ")
        if path == mnt or path.startswith(mnt.rstrip("/") + "/") or mnt == "/":
            if best is None or len(mnt) > len(best[1]):
                best = (dev, mnt, fstype, opts)
    if best is None:
        return {}
    dev, mnt, fstype, opts = best
    info = {"device": dev, "mountpoint": mnt, "type": fstype, "options": opts}
    base = os.path.basename(dev)
    for blk in (base, base.rstrip("0123456789"), base.split("p")[0]):
        rot = _read(f"/sys/block/{blk}/queue/rotational").strip()
        if rot:
            info["rotational"] = rot == "1"
            model = _read(f"/sys/block/{blk}/device/model").strip()
            if model:
                info["model"] = model
            break
    return info


def machine(bench_dir: str) -> dict:
    cpu = ""
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    flags = _read("/proc/cpuinfo")
    mem = 0
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) * 1024
    versions = {}
    for pkg in ("aurora-log", "persist-queue", "huey", "litequeue", "matplotlib", "cffi"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    commit = ""
    dirty = None
    try:
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        # Uncommitted changes to the engine mean the numbers are not the commit's.
        dirty = bool(subprocess.run(
            ["git", "-C", REPO, "status", "--porcelain", "--", "aurora_log", "native"],
            capture_output=True, text=True, timeout=10).stdout.strip())
    except Exception:
        pass
    try:
        import aurora_log
        aurora_path = os.path.dirname(aurora_log.__file__)
    except Exception as e:
        aurora_path = f"not importable: {e}"
    return {
        "cpu_model": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "virtualized": " hypervisor" in flags,
        "memory_bytes": mem,
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
        "filesystem": filesystem_of(bench_dir),
        "bench_dir": os.path.realpath(bench_dir),
        "packages": versions,
        "git_commit": commit,
        "git_engine_dirty": dirty,
        "aurora_log_from": aurora_path,
        "loadavg_start": os.getloadavg(),
    }


# ---------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------

def fmt_rate(v):
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:,.1f}"


def fmt_ratio(v):
    if v is None:
        return "-"
    return f"{v:.2f}x" if v < 100 else f"{v:,.0f}x"


class Runner:
    def __init__(self, args, cfg: Config):
        self.args = args
        self.cfg = cfg
        self.out_dir = os.path.abspath(args.out)
        os.makedirs(self.out_dir, exist_ok=True)
        self.work = os.path.abspath(args.dir or os.path.join(self.out_dir, "work"))
        self.run_dir = os.path.join(self.work, f"run-{os.getpid()}")
        os.makedirs(self.run_dir, exist_ok=True)
        self.children = {}
        self.skipped = {}
        self.result = {"scenarios": {}, "peers": {}, "skipped": {}, "targets": []}
        self.counter = 0

    # -- plumbing -----------------------------------------------------------------------
    def log(self, msg=""):
        print(msg, flush=True)

    def fresh_dir(self, tag):
        self.counter += 1
        d = os.path.join(self.run_dir, f"{self.counter:03d}-{tag}")
        os.makedirs(d)
        return d

    def drop_dir(self, d):
        if not self.args.keep:
            shutil.rmtree(d, ignore_errors=True)

    def child(self, name):
        c = self.children.get(name)
        if c is None or c.proc.poll() is not None:
            c = Child(name, self.cfg.op_timeout)
            if not c.ready:
                self.skipped[name] = c.why
                c.close()
                return None
            self.children[name] = c
        return c

    def ask(self, name, op, tag, **req):
        c = self.child(name)
        if c is None:
            return None
        d = self.fresh_dir(f"{op}-{name}-{tag}")
        res = c.request(op=op, dir=d, **req)
        if op != "fill":
            self.drop_dir(d)
        else:
            res["dir"] = d
        if "error" in res:
            self.log(f"    ! {name} {op} {tag}: {res['error']}")
        return res

    def systems(self):
        return [n for n in self.args.peers if n not in self.skipped]

    # -- the run ------------------------------------------------------------------------
    def run(self):
        t_start = time.perf_counter()
        self.result["machine"] = machine(self.work)
        self.result["config"] = asdict(self.cfg) | {"quick": self.args.quick}
        m = self.result["machine"]
        fs = m["filesystem"]
        self.log(f"aurora-log comparison  {_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M UTC}"
                 f"  (git {m['git_commit'] or '?'}"
                 f"{', with uncommitted engine changes' if m['git_engine_dirty'] else ''})")
        self.log(f"machine: {m['cpu_model']}, {m['cores']} cores"
                 f"{' (VM)' if m['virtualized'] else ''}, {m['memory_bytes'] / 2**30:.1f} GiB, "
                 f"Linux {m['kernel']}, Python {m['python']}, SQLite {m['sqlite']}")
        self.log(f"bench dir: {m['bench_dir']} on {fs.get('type', '?')} ({fs.get('device', '?')}"
                 f"{', rotational' if fs.get('rotational') else ''})")
        if fs.get("type") in ("tmpfs", "ramfs", "overlay"):
            self.log(f"  warning: {fs.get('type')} is not a disk; fsync numbers mean little "
                     "here. Pass --dir on the disk you care about.")
        self.log(f"load average at start: {' '.join(f'{x:.2f}' for x in m['loadavg_start'])}"
                 f"  (other work on the machine makes every number noisier)")
        self.log()

        for name in self.args.peers:
            c = self.child(name)
            if c is None:
                self.log(f"  skipping {name}: {self.skipped[name]}")
                continue
            desc = self.ask(name, "describe", "d")
            if desc and "error" not in desc:
                self.result["peers"][name] = desc["info"] | {"settings": desc["settings"]}
        self.result["skipped"] = dict(self.skipped)
        self.print_settings()

        self.log("floors ...")
        self.fl = Floors(self.run_dir, self.cfg)
        self.floors = measure_floors(self.fl, self.cfg)
        self.result["floors"] = self.floors
        f = self.floors
        self.log(f"  write+fdatasync loop (100 B): {fmt_rate(f['fdatasync_loop'])} /s; "
                 f"batch curve (records/s at k per fdatasync): "
                 + ", ".join(f"{k}: {fmt_rate(v)}" for k, v in sorted(f["batch_curve"].items()))
                 + f"; json.dumps+heappush+heappop: {fmt_rate(f['py_heap_loop'])} /s"
                 f"  [{f['source']}]")
        self.log()

        for s in self.args.only:
            getattr(self, s)()
        self.floors["source"] = self.fl.source
        self.fl.close()
        for c in self.children.values():
            c.close()
        self.result["skipped"] = dict(self.skipped)
        self.result["machine"]["loadavg_end"] = os.getloadavg()
        self.result["elapsed_s"] = time.perf_counter() - t_start
        self.evaluate_targets()
        self.write_outputs()
        if not self.args.keep:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        self.log(f"done in {self.result['elapsed_s']:.0f} s")

    def print_settings(self):
        self.log("systems and their durability settings:")
        for name, p in self.result["peers"].items():
            st = p.get("settings", {})
            readback = ", ".join(f"{k}={v}" for k, v in st.items() if k in (
                "journal_mode", "synchronous", "durability", "serializer"))
            self.log(f"  {name:18} {p['setting']}")
            self.log(f"  {'':18} [{p['default_or_strongest']}; read back: {readback or '-'}]")
            if p.get("notes"):
                self.log(f"  {'':18} {p['notes']}")
        self.log()

    # -- table helpers ------------------------------------------------------------------
    def label(self, name):
        peers_info = self.result["peers"]
        if name in peers_info:
            return peers_info[name].get("label", name)
        base, _, extra = name.partition("+")      # "aurora-sync+compact"
        if extra and base in peers_info:
            return f"{peers_info[base].get('label', base)}, after {extra}()"
        return name                               # floors: "floor: write+fdatasync loop"

    def table(self, key, title, rows, floors_rows=(), unit="jobs/s"):
        """rows: list of (system, value, note). Prints value and aurora's advantage."""
        ref = {r[0]: r[1] for r in rows if r[1] is not None}
        sync, itv = ref.get("aurora-sync"), ref.get("aurora-interval")
        self.log(f"{key.upper()}  {title}")
        hdr = f"  {'system':34} {unit:>12}  {'sync ÷ it':>10}  {'interval ÷ it':>13}  note"
        self.log(hdr)
        out = []
        for name, v, note in list(rows) + list(floors_rows):
            label = self.label(name)
            r_s = sync / v if (sync and v) else None
            r_i = itv / v if (itv and v) else None
            self.log(f"  {label[:34]:34} {fmt_rate(v):>12}  {fmt_ratio(r_s):>10}  "
                     f"{fmt_ratio(r_i):>13}  {note}")
            out.append({"system": name, "value": v, "sync_ratio": r_s, "interval_ratio": r_i,
                        "note": note, "floor": name.startswith("floor:")})
        self.log()
        return out

    def _note(self, name, res):
        p = self.result["peers"].get(name, {})
        bits = []
        if not p.get("durable", True):
            bits.append("not power-loss durable")
        if res and res.get("n_errors"):
            bits.append(f"{res['n_errors']} thread errors: {res['errors'][0]}")
        if res and "error" in res:
            bits.append(res["error"][:60])
        return "; ".join(bits)

    # -- scenarios ----------------------------------------------------------------------
    def s1(self):
        """`s1_rounds` rounds (system order forward, then reversed, ...). In every round the
        fdatasync floor runs right before each aurora-log sync peer (aurora-sync, and the
        -excl/-shared spellings), so each of their rounds has a floor sample taken seconds
        away, not minutes: on a shared machine the disk's rate drifts by whole factors in a
        minute. The table shows each system's best round (load only ever slows a run
        down); the target uses the median of the paired per-round ratios aurora-log ÷ floor
        (aurora-sync's, else the default mode's, aurora-sync-shared), which one lucky or
        unlucky sample cannot move."""
        samples = {}
        floor = []
        pairs: dict[str, list[float]] = {}
        order = self.systems()
        for r in range(self.cfg.s1_rounds):
            for name in (order if r % 2 == 0 else order[::-1]):
                f_r = None
                if _paired_with_floor(name):
                    f_r = self.fl.fdatasync(self.cfg.duration)
                    floor.append(f_r)
                res = self.ask(name, "enqueue", f"t1r{r}", threads=1,
                               duration=self.cfg.duration)
                if res is not None:
                    samples.setdefault(name, []).append(res)
                    if f_r and res.get("rate"):
                        pairs.setdefault(name, []).append(res["rate"] / f_r)
        if not floor:
            floor.append(self.fl.fdatasync(self.cfg.duration))
        rows = []
        raw = {}
        for name in order:
            runs = samples.get(name)
            if not runs:
                continue
            best = max(runs, key=lambda x: x.get("rate") or 0)
            raw[name] = best | {"rounds": [x.get("rate") for x in runs]}
            rows.append((name, best.get("rate"), self._note(name, best)))
        medians = {name: sorted(p)[len(p) // 2] for name, p in pairs.items()}
        judged = next((n for n in ("aurora-sync", "aurora-sync-shared") if n in medians), None)
        note = f"100 B records; best of {len(floor)}"
        for name, p in pairs.items():
            note += (f"; paired {name} ÷ floor per round: "
                     + ", ".join(f"{x:.2f}" for x in p) + f" (median {medians[name]:.2f})")
        fl = [("floor: write+fdatasync loop", max(floor), note)]
        self.result["scenarios"]["s1"] = {
            "title": SCENARIOS["s1"], "unit": "jobs/s",
            "rows": self.table("s1", SCENARIOS["s1"], rows, fl),
            "raw": raw, "floor_samples": floor,
            "paired_ratios": pairs.get(judged, []) if judged else [],
            "paired_median": medians.get(judged) if judged else None,
            "paired_by_system": pairs, "paired_medians": medians,
            "rounds": self.cfg.s1_rounds}

    def s2(self):
        by_threads = {}
        for n in self.cfg.enqueue_threads:
            rows = []
            raw = {}
            floor_n = self.fl.curve([n], max(0.05, self.cfg.duration / 3))[n]
            for name in self.systems():
                res = self.ask(name, "enqueue", f"t{n}", threads=n,
                               duration=self.cfg.duration)
                if res is None:
                    continue
                raw[name] = res
                rows.append((name, res.get("rate"), self._note(name, res)))
            fl = [(f"floor: batch curve, {n}/fdatasync", floor_n,
                   "all n writers in every fdatasync")]
            by_threads[n] = {"rows": self.table("s2", f"{SCENARIOS['s2']}: {n} threads",
                                                rows, fl), "raw": raw}
        self.result["scenarios"]["s2"] = {"title": SCENARIOS["s2"], "unit": "jobs/s",
                                          "by_threads": by_threads}

    def s3(self):
        rows = []
        raw = {}
        b = self.cfg.batch
        floor_b = self.fl.curve([b], max(0.05, self.cfg.duration / 3))[b]
        for name in self.systems():
            res = self.ask(name, "batch", f"b{b}", batch=b, duration=self.cfg.duration)
            if res is None:
                continue
            raw[name] = res
            note = self._note(name, res)
            p = self.result["peers"].get(name, {})
            if not p.get("batch_native", True):
                note = "; ".join(x for x in ("no batch API: a loop of single puts", note) if x)
            rows.append((name, res.get("rate"), note))
        fl = [(f"floor: {b} records/fdatasync", floor_b,
               "one write + one fdatasync per batch")]
        self.result["scenarios"]["s3"] = {
            "title": SCENARIOS["s3"].replace("1,000", f"{b:,}"), "unit": "jobs/s",
            "rows": self.table("s3", SCENARIOS["s3"].replace("1,000", f"{b:,}"), rows, fl),
            "raw": raw}

    def s4(self):
        by_threads = {}
        for n in self.cfg.claim_threads:
            rows = []
            raw = {}
            for name in self.systems():
                res = self.ask(name, "claim", f"t{n}", threads=n, duration=self.cfg.duration,
                               prefill=self.cfg.claim_prefill)
                if res is None:
                    continue
                raw[name] = res
                note = self._note(name, res)
                if name == "huey":
                    note = "; ".join(x for x in ("delete on dequeue: 1 commit/job", note) if x)
                if res.get("drained"):
                    note = "; ".join(x for x in (note, "drained early") if x)
                rows.append((name, res.get("rate"), note))
            fl = [("floor: json+heappush+heappop", self.floors["py_heap_loop"], "no I/O, no locks")]
            by_threads[n] = {"rows": self.table("s4", f"{SCENARIOS['s4']}: {n} threads",
                                                rows, fl), "raw": raw}
        self.result["scenarios"]["s4"] = {"title": SCENARIOS["s4"], "unit": "jobs/s",
                                          "by_threads": by_threads}

    def s5(self):
        rows = []
        raw = {}
        for name in self.systems():
            p = self.result["peers"].get(name, {})
            if not p.get("supports_priority", True):
                self.log(f"  (s5: {name} has no priorities; not run)")
                continue
            res = self.ask(name, "priority", "p", duration=self.cfg.duration,
                           prefill=self.cfg.priority_prefill)
            if res is None:
                continue
            raw[name] = res
            note = self._note(name, res)
            if "order_ok" in res:
                note = "; ".join(x for x in (
                    "order ok" if res["order_ok"] else
                    f"ORDER VIOLATED ({res['inversions']} inversions)", note) if x)
            if name.startswith("aurora"):
                note += "; 10 levels -> 4 priorities"
            rows.append((name, res.get("rate"), note))
        fl = [("floor: json+heappush+heappop", self.floors["py_heap_loop"], "no I/O, no locks")]
        self.result["scenarios"]["s5"] = {"title": SCENARIOS["s5"], "unit": "jobs/s",
                                          "rows": self.table("s5", SCENARIOS["s5"], rows, fl),
                                          "raw": raw,
                                          "mapping": "levels 0-9 (higher first); aurora-log: "
                                                     "0-2 LOW, 3-4 NORMAL, 5-7 HIGH, 8-9 CRITICAL"}

    def s6(self):
        """Fill, close, measure disk; reopen + first claim in a fresh process (RSS too)."""
        sizes = [(n, self.systems()) for n in self.cfg.reopen_sizes]
        if self.cfg.reopen_big:
            sizes.append((self.cfg.reopen_big,
                          [s for s in self.systems() if s in self.cfg.reopen_big_peers]))
        by_size = {}
        for n, names in sizes:
            per = {}
            for name in names:
                fill = self.ask(name, "fill", f"n{n}", n=n)
                if fill is None:
                    continue
                d = fill.pop("dir")
                if "error" in fill:
                    per[name] = fill
                    self.drop_dir(d)
                    continue
                settle()
                r = run_reopen_child(name, d, n, self.cfg.op_timeout)
                r["fill"] = fill
                if "error" in r:
                    self.log(f"    ! {name} reopen n={n}: {r['error']}")
                per[name] = r
                if self.result["peers"].get(name, {}).get("compacts") and "error" not in r:
                    # Same store after an explicit compaction: reopen = snapshot load.
                    c = self.child(name)
                    comp = c.request(op="compact", dir=d) if c else {"error": "no child"}
                    if "error" in comp:
                        self.log(f"    ! {name} compact n={n}: {comp['error']}")
                    else:
                        settle()
                        r2 = run_reopen_child(name, d, n, self.cfg.op_timeout, expect_i=1)
                        r2["fill"] = fill | {"disk": comp["disk"], "compact_s": comp["compact_s"]}
                        if "error" in r2:
                            self.log(f"    ! {name} reopen after compact n={n}: {r2['error']}")
                        per[f"{name}+compact"] = r2
                self.drop_dir(d)
            by_size[n] = per
            self.print_reopen(n, per)
        self.result["scenarios"]["s6"] = {"title": SCENARIOS["s6"], "unit": "s",
                                          "by_size": by_size}

    def s7(self):
        if "s6" not in self.result["scenarios"]:
            self.log("S7  (measured together with s6; running s6)")
            self.s6()
        self.log("S7  is reported in the S6 tables above (disk/job and RSS/job columns)")
        self.log()
        self.result["scenarios"]["s7"] = {"title": SCENARIOS["s7"],
                                          "see": "s6 by_size: fill.disk, rss_after - rss_base"}

    def s8(self):
        """Issue 19's many-process benchmark (bench/xproc/many.py), every ratio from this
        run: each process count measures the bare loop, aurora-log and SQLite back to back."""
        sys.path.insert(0, os.path.join(HERE, "xproc"))
        import many
        cfg = self.cfg
        self.log(f"S8  {SCENARIOS['s8']} ({cfg.duration:g} s per point)")
        res = many.measure(cfg.xproc_procs, cfg.xproc_workers, cfg.duration,
                           cfg.xproc_prefill, work=self.run_dir, log=self.log)
        self.log("  fdatasyncs: aurora-log and the bare loop count them on the control page; "
                 "SQLite's are derived (WAL FULL syncs once per write transaction)")
        self.log()
        self.result["scenarios"]["s8"] = {"title": SCENARIOS["s8"], "unit": "ops/s", **res}

    def print_reopen(self, n, per):
        self.log(f"S6/S7  reopen + first claim, disk and RSS with {n:,} pending jobs "
                 f"(~100 B payloads)")
        self.log(f"  {'system':34} {'reopen s':>9} {'x':>7} {'disk/job':>10} {'x':>6} "
                 f"{'RSS/job':>9} {'x':>6}  note")
        a = per.get("aurora-sync", {})

        def vals(r):
            if not r or "error" in r:
                return None, None, None
            disk = r["fill"]["disk"]["used"] / n
            rss = max(0, r["rss_after"] - r["rss_base"]) / n
            return r["reopen_s"], disk, rss

        ar, ad, am = vals(a)
        for name, r in per.items():
            label = self.label(name)
            t, d, m = vals(r)
            if t is None:
                self.log(f"  {label[:34]:34} {'-':>9}  {r.get('error', '')[:70]}")
                continue
            note = []
            if not r.get("first_is_oldest"):
                note.append("first claim was not the oldest job")
            note.append(f"allocated {r['fill']['disk']['allocated'] / n:,.0f} B/job")
            kinds = r["fill"]["disk"].get("by_kind")
            if kinds:
                note.append("(" + ", ".join(f"{k} {v / n:,.0f}" for k, v in kinds.items()
                                            if v) + ")")
            note.append(f"open {r['open_s']:.3f} s + claim {r['first_claim_s']:.3f} s")
            note.append(f"peak RSS {r['rss_peak'] / 2**20:.0f} MiB")
            note.append(f"fill {r['fill']['prefill_s']:.1f} s")
            if "compact_s" in r["fill"]:
                note.append(f"compact() {r['fill']['compact_s']:.1f} s")
            rx = t / ar if ar else None      # >1: the peer takes longer than aurora-log
            dx = ad / d if (ad and d) else None   # aurora bytes ÷ peer bytes (issue's form)
            mx = am / m if (am is not None and m) else None
            self.log(f"  {label[:34]:34} {t:9.3f} {fmt_ratio(rx):>7} {d:8,.0f} B "
                     f"{fmt_ratio(dx):>6} {m:7,.0f} B {fmt_ratio(mx):>6}  {'; '.join(note)}")
        self.log("  x columns: reopen = this ÷ aurora-log (>1: aurora-log faster); disk and "
                 "RSS = aurora-log ÷ this (<1: aurora-log smaller)")
        self.log("  disk/job = bytes holding data after close (aurora-log: each WAL segment up "
                 "to its last non-zero byte;\n  the zeros written ahead of it show in "
                 "'allocated', split by file kind; the s7 target compares allocated bytes); "
                 "RSS/job = RSS growth of a fresh process over open + first claim")
        self.log()

    # -- targets ------------------------------------------------------------------------
    def evaluate_targets(self):
        sc = self.result["scenarios"]
        t = []

        def row(rows, name, key="value"):
            for r in rows:
                if r["system"] == name:
                    return r[key]
            return None

        def add(target, measured, goal, higher_better=True, detail=""):
            if measured is None:
                t.append({"target": target, "measured": None, "goal": goal,
                          "status": "not measured", "detail": detail})
                return
            met = measured >= goal if higher_better else measured <= goal
            if met:
                status = "met"
            elif higher_better:
                status = f"missed by {(1 - measured / goal) * 100:.0f}%"
            elif measured / goal >= 2:
                status = f"missed: {measured / goal:.1f}x the goal"
            else:
                status = f"missed by {(measured / goal - 1) * 100:.0f}%"
            t.append({"target": target, "measured": measured, "goal": goal, "status": status,
                      "detail": detail})

        if "s1" in sc:
            add("s1 durable enqueue, 1 producer >= 0.9x fdatasync loop (paired median)",
                sc["s1"].get("paired_median"), 0.9)
        if "s2" in sc:
            bt = sc["s2"]["by_threads"]
            n = 64 if 64 in bt else max(bt)
            add(f"s2 durable enqueue, {n} producers >= 10x sqlite FULL ({n} threads)",
                row(bt[n]["rows"], "sqlite-full", "sync_ratio"), 10.0)
        if "s3" in sc:
            add("s3 batched enqueue >= 1.0x sqlite FULL executemany",
                row(sc["s3"]["rows"], "sqlite-full", "sync_ratio"), 1.0)
        if "s4" in sc:
            bt = sc["s4"]["by_threads"]
            n = 8 if 8 in bt else max(bt)
            add(f"s4 claim+complete, {n} threads, durable >= 5x sqlite FULL",
                row(bt[n]["rows"], "sqlite-full", "sync_ratio"), 5.0)
            add(f"s4 claim+complete, {n} threads, completes on the group commit >= 3x "
                f"sqlite NORMAL", row(bt[n]["rows"], "sqlite-normal", "interval_ratio"), 3.0)
        if "s6" in sc:
            bs = sc["s6"]["by_size"]
            big = max(bs)
            a = bs[big].get("aurora-sync", {})
            add(f"s6 reopen + first claim with {big:,} pending <= 1 s"
                + ("" if big >= 1_000_000 else " (target is at 1,000,000)"),
                a.get("reopen_s"), 1.0, higher_better=False)
            ac = bs[big].get("aurora-sync+compact")
            if ac:
                add("s6 the same after an explicit compact() (snapshot load) <= 1 s",
                    ac.get("reopen_s"), 1.0, higher_better=False)
            sq = bs[big].get("sqlite-full", {})
            # allocated blocks, as issue 21 measures them (the zeros ahead count)
            if a.get("fill") and sq.get("fill"):
                ratio = a["fill"]["disk"]["allocated"] / sq["fill"]["disk"]["allocated"]
            else:
                ratio = None
            add(f"s7 disk per pending job (allocated) <= 1.0x sqlite ({big:,} jobs)", ratio,
                1.0, higher_better=False)
            if ac and ac.get("fill") and sq.get("fill"):
                add(f"s7 the same after compact() ({big:,} jobs)",
                    ac["fill"]["disk"]["allocated"] / sq["fill"]["disk"]["allocated"], 1.0,
                    higher_better=False)
            if a and "rss_after" in a:
                add(f"s7 RSS growth per pending job <= 500 B (issue 3; {big:,} jobs)",
                    max(0, a["rss_after"] - a["rss_base"]) / big, 500, higher_better=False)
        if "s8" in sc:
            r8 = sc["s8"]["ratios"]
            for n, v in sorted(r8["enqueue_vs_bare"].items()):
                add(f"s8 durable enqueue, {n} processes >= 0.8x the bare group-commit loop",
                    v, 0.8)
            for n, goal in ((16, 3.0), (64, 4.0)):
                if n in r8["enqueue_vs_sqlite"]:
                    add(f"s8 durable enqueue, {n} processes >= {goal:g}x sqlite FULL",
                        r8["enqueue_vs_sqlite"][n], goal)
            cw = r8["claim_vs_sqlite"]
            if cw:
                n = 8 if 8 in cw else max(cw)
                add(f"s8 claim+complete, {n} worker processes >= 3x sqlite FULL", cw[n], 3.0)
        self.result["targets"] = t
        self.log("targets (issues 7 and 19; ratios from this run):")
        for x in t:
            m = x["measured"]
            ms = "-" if m is None else (f"{m:.2f}" if m < 100 else f"{m:,.0f}")
            self.log(f"  {x['target']:78} {ms:>8}  {x['status']}")
        self.log()

    # -- files --------------------------------------------------------------------------
    def write_outputs(self):
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        data = json.dumps(self.result, indent=1, default=str)
        path = os.path.join(self.out_dir, f"compare-{stamp}.json")
        with open(path, "w") as f:
            f.write(data)
        latest = os.path.join(self.out_dir, "compare-latest.json")
        with open(latest, "w") as f:
            f.write(data)
        self.log(f"wrote {path}")
        try:
            png = plot(self.result, os.path.join(self.out_dir, "compare-latest.png"))
        except ImportError:
            self.log("matplotlib not installed: no chart (pip install -r bench/requirements.txt)")
        else:
            if png:
                self.log(f"wrote {png}")


# ---------------------------------------------------------------------------------------
# the chart
# ---------------------------------------------------------------------------------------

def chart_panels(result):
    """(title, [(label, ratio)], target) per panel; ratio > 1 means aurora-log is better."""
    sc = result["scenarios"]
    peers_info = result.get("peers", {})
    panels = []

    def ikeys(d):      # JSON turns the int keys of by_threads/by_size into str
        return {int(k): v for k, v in d.items()}

    def used(r):
        disk = r["fill"]["disk"]
        return disk.get("used", disk["apparent"])

    def lab(name):
        return peers_info.get(name, {}).get("label", name)

    def bars(rows, key="sync_ratio", skip=("aurora-sync", "aurora-interval")):
        return [(lab(r["system"]), r[key]) for r in rows
                if r["system"] not in skip and r.get(key)]


    if "s1" in sc:
        panels.append(("S1 durable enqueue, 1 producer\naurora-log sync ÷ it",
                       bars(sc["s1"]["rows"]), 0.9))
    if "s2" in sc:
        bt = ikeys(sc["s2"]["by_threads"])
        for n in sorted(bt):
            if n in (max(bt), 64) or len(bt) <= 2:
                panels.append((f"S2 durable enqueue, {n} threads\naurora-log sync ÷ it",
                               bars(bt[n]["rows"]), 10.0 if n == 64 else None))
    if "s3" in sc:
        panels.append((f"S3 {sc['s3']['title']}\naurora-log sync ÷ it",
                       bars(sc["s3"]["rows"]), 1.0))
    if "s4" in sc:
        bt = ikeys(sc["s4"]["by_threads"])
        n = max(bt)
        panels.append((f"S4 claim+complete, {n} threads\naurora-log sync ÷ it",
                       bars(bt[n]["rows"]), 5.0))
        panels.append((f"S4 claim+complete, {n} threads\naurora-log interval ÷ it",
                       bars(bt[n]["rows"], "interval_ratio"), 3.0))
    if "s5" in sc:
        panels.append(("S5 priority claim+complete\naurora-log sync ÷ it",
                       bars(sc["s5"]["rows"]), None))
    if "s6" in sc:
        bs = ikeys(sc["s6"]["by_size"])
        # the size that most systems ran (the big size runs only a few), then the largest
        n = max(bs, key=lambda k: (sum("reopen_s" in r for r in bs[k].values()), k))
        per = bs[n]
        a = per.get("aurora-sync", {})
        if a and "reopen_s" in a:
            re_b, disk_b, rss_b = [], [], []
            for name, r in per.items():
                if name.startswith("aurora") or "reopen_s" not in r:
                    continue
                re_b.append((lab(name), r["reopen_s"] / a["reopen_s"]))
                disk_b.append((lab(name), used(r) / used(a)))
                ra = max(1, a["rss_after"] - a["rss_base"])
                disk_rss = max(1, r["rss_after"] - r["rss_base"])
                rss_b.append((lab(name), disk_rss / ra))
            panels.append((f"S6 reopen + first claim, {int(n):,} pending\nit ÷ aurora-log "
                           "(time)", re_b, None))
            panels.append((f"S7 disk per pending job, {int(n):,}\nit ÷ aurora-log (bytes)",
                           disk_b, 1.0))
            panels.append((f"S7 RSS per pending job, {int(n):,}\nit ÷ aurora-log (bytes)",
                           rss_b, None))
    return [p for p in panels if p[1]]


def plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    panels = chart_panels(result)
    if not panels:
        return None
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(15, 3.3 * rows + 1.0), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, data, target) in zip(axes.flat, panels, strict=False):
        labels = [d[0] for d in data]
        vals = [d[1] for d in data]
        # Floors are ceilings, not competitors: grey, whatever the ratio.
        colors = ["#9a9a9a" if lb.startswith("floor:") else
                  "#2a9d5c" if v >= 1 else "#d1495b" for lb, v in zip(labels, vals, strict=True)]
        y = range(len(vals))
        ax.barh(list(y), vals, color=colors)
        ax.set_yticks(list(y))
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        lo = min(vals + [1.0, target or 1.0]) / 2
        hi = max(vals + [1.0, target or 1.0]) * 3
        ax.set_xlim(lo, hi)
        decades = __import__("math").log10(hi / lo)
        subs = (1.0,) if decades > 3.5 else (1.0, 3.0) if decades > 1.5 else (1.0, 2.0, 5.0)
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}x"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.axvline(1.0, color="black", linewidth=1)
        if target:
            ax.axvline(target, color="#1d4e89", linestyle="--", linewidth=1.2)
            ax.text(target * 1.05, len(vals) - 0.55, f"target {target:g}x", fontsize=7,
                    color="#1d4e89", ha="left", va="bottom")
        for yi, v in zip(y, vals, strict=True):
            ax.text(v * 1.08, yi, f"{v:.3g}x" if v < 100 else f"{v:,.0f}x", va="center",
                    fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    m = result.get("machine", {})
    fs = m.get("filesystem", {})
    fig.suptitle("aurora-log's advantage over each alternative (>1 = aurora-log better: "
                 "green better, red worse, grey = the floor, a ceiling)\n"
                 f"{m.get('cpu_model', '?')}, {m.get('cores', '?')} cores, Linux "
                 f"{m.get('kernel', '?')}, {fs.get('type', '?')}, Python {m.get('python', '?')}"
                 f"{', quick mode' if result.get('config', {}).get('quick') else ''}",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="Compare aurora-log with persist-queue, huey, litequeue and a sqlite3 "
                    "table, and with the disk's and the interpreter's floors.",
        epilog="Peers: pip install -r bench/requirements.txt. Scenarios: "
               + "; ".join(f"{k} {v}" for k, v in SCENARIOS.items()))
    ap.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke, ~30 s)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"),
                    help="where the JSON and PNG go (default bench/results)")
    ap.add_argument("--only", default=None,
                    help="comma-separated scenarios to run (s1..s8; default all)")
    ap.add_argument("--peers", default=None,
                    help="comma-separated systems (default all but the opt-in aurora "
                         "store-mode variants): " + ",".join(peers.NAMES))
    ap.add_argument("--dir", default=None,
                    help="where the queues are created (default OUT/work); put it on the "
                         "disk you want to measure, not on tmpfs")
    ap.add_argument("--seconds", type=float, default=None,
                    help="seconds per timed measurement (default 1.5, quick 0.1)")
    ap.add_argument("--sizes", default=None,
                    help="comma-separated pending-job counts for s6/s7 (all systems)")
    ap.add_argument("--big", type=int, default=None,
                    help="extra s6/s7 size for aurora-sync and the sqlite tables "
                         "(default 1,000,000; 0 = none)")
    ap.add_argument("--big-all", action="store_true",
                    help="run the --big size for every system (adds minutes)")
    ap.add_argument("--keep", action="store_true", help="keep the queue directories")
    ap.add_argument("--plot", metavar="JSON",
                    help="only redraw the chart from a results JSON (next to it, .png)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--reopen-child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",")] if args.only else list(SCENARIOS)
    for s in args.only:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s!r}; known: {', '.join(SCENARIOS)}")
    args.peers = ([s.strip() for s in args.peers.split(",")] if args.peers
                  else list(peers.DEFAULT_NAMES))
    for s in args.peers:
        if s not in peers.NAMES:
            ap.error(f"unknown system {s!r}; known: {', '.join(peers.NAMES)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child)
    if args.reopen_child:
        name, directory, n, expect_i = args.reopen_child
        return reopen_child_main(name, directory, int(n), int(expect_i))
    if args.plot:
        with open(args.plot) as f:
            png = plot(json.load(f), os.path.splitext(args.plot)[0] + ".png")
        print(f"wrote {png}")
        return 0
    cfg = Config.quick() if args.quick else Config()
    if args.seconds:
        cfg.duration = args.seconds
    if args.sizes:
        cfg.reopen_sizes = [int(x) for x in args.sizes.split(",")]
    if args.big is not None:
        cfg.reopen_big = args.big
    if args.big_all:
        cfg.reopen_big_peers = list(peers.NAMES)
    Runner(args, cfg).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
