"""The README's main job: ``python -m aurora_log.tools.demo`` (``make demo``).

A producer enqueues a few thousand jobs of several types and priorities (some scheduled,
some failing once and retrying, one poison pill that ends in the dead-letter queue). A
worker *process* runs them while the web dashboard (another process) and the CLI (a third)
read the same directory; half way through the demo kills the worker with SIGKILL, starts a
new one on the same directory, enqueues more jobs into it from this process while it runs,
lets it finish, and then checks every acknowledgement the dead worker and its successor
made against what the store says:

- lost: an enqueued job that is not finished, or an acknowledged completion the store
  does not have;
- phantom: a job in the store that nobody enqueued;
- resurrected: an acknowledged job that ran again anyway.

All three must be zero. The jobs that were running at the kill ran again (delivery is
at-least-once), and the store counts that run as an attempt.

An acknowledgement is written by the worker process (one line per job, to DIR/events.log)
only *after* ``complete()``/``fail()`` returned, so it is a claim the store must honour.

Options: ``--dir DIR`` (default: a new temporary directory), ``--jobs N`` (3000),
``--workers N`` (4), ``--seed N``. Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timedelta, UTC
from pathlib import Path

PRIORITIES = {"charge_card": "CRITICAL", "send_email": "HIGH", "render_thumbnail": "NORMAL",
              "call_partner_api": "NORMAL", "send_reminder": "NORMAL", "crunch_analytics": "LOW"}
RETRY_BASE = 0.5          # seconds: the demo's retry backoff (0.5 s, 1 s, 2 s, ...)
LEASE = 5                 # seconds
POISON_RETRIES = 2
REFRESH_SECONDS = 2.0      # how often `aurora-log dashboard DIR` re-reads the store
MIX = [("render_thumbnail", 50), ("send_email", 20), ("crunch_analytics", 15),
       ("call_partner_api", 5), ("charge_card", 5), ("send_reminder", 5)]


# ---------------------------------------------------------------- the shared pieces

def open_queue(path):
    """The demo's queue: sync durability (acknowledged = on disk), short retry backoff."""
    import aurora_log
    try:
        return aurora_log.open(path, retry_base=RETRY_BASE)
    except TypeError:                         # an engine without a retry_base option
        return aurora_log.open(path)


class Events:
    """One line per event, appended with a single write(2) on an O_APPEND file, so lines
    from several threads never interleave and a SIGKILL can at most cut the last line."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def write(self, *fields) -> None:
        os.write(self.fd, (" ".join(str(f) for f in fields) + "\n").encode())


def read_events(path):
    """[(kind, job_id, extra)] for every complete line."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in data.decode(errors="replace").split("\n")[:-1]:   # last piece: maybe torn
        parts = line.split(" ")
        if len(parts) >= 3:
            out.append((parts[0], parts[1], parts[2]))
    return out


# ---------------------------------------------------------------- the worker process

def worker_main(store: str, events_path: str, workers: int) -> int:
    """``python -m aurora_log.tools.demo --worker-child STORE EVENTS N``: the demo's worker."""
    import logging
    from ..job import JobStatus
    from ..runtime.tasks import register_handler
    from ..runtime.worker import Worker, current_context

    logging.basicConfig(level=logging.ERROR, format="worker: %(levelname)s %(message)s")
    try:        # Linux: if the demo itself is killed, stop this worker gracefully too
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)      # PR_SET_PDEATHSIG
    except Exception:
        pass
    events = Events(events_path)
    q = open_queue(store)
    rng = random.Random()

    def work(job, lo=0.002, hi=0.010):
        events.write("R", job.id, job.retry_count)          # this attempt started
        time.sleep(rng.uniform(lo, hi))

    def render_thumbnail(job):
        work(job)
        if job.payload.get("image") is None:                   # the poison pill
            raise ValueError(f"cannot decode image {job.payload.get('image')!r}")
        return {"thumb": job.payload["image"].replace(".png", "-128.png")}

    def call_partner_api(job):
        work(job)
        if job.retry_count == 0:
            raise ConnectionError("partner API answered 503 (will retry)")
        return {"status": 200, "attempt": job.retry_count + 1}

    def crunch_analytics(job):
        work(job, 0.004, 0.016)
        ctx = current_context()
        assert ctx is not None          # a handler runs inside a job's context
        ctx.progress(1, 1, "rows aggregated")
        return {"rows": job.payload["rows"]}

    def simple(job):
        work(job)
        return True

    for job_type, fn in (("render_thumbnail", render_thumbnail),
                         ("call_partner_api", call_partner_api),
                         ("crunch_analytics", crunch_analytics),
                         ("charge_card", simple), ("send_email", simple),
                         ("send_reminder", simple)):
        register_handler(q, job_type, fn)

    def on_done(job, status, detail):
        events.write("A", job.id, status)                      # after the queue returned

    worker = Worker(q, concurrency=workers, shutdown_timeout=10, poll_interval=0.2,
                    on_done=on_done)
    # What was already finished when this worker started (the parent cannot open the store
    # while we hold it): lets it tell "done" even if a kill fell between a completion and
    # its acknowledgement line.
    finished = sum(len(q.list(status=s, limit=10 ** 9))
                   for s in (JobStatus.COMPLETED, JobStatus.DEAD_LETTER, JobStatus.CANCELLED))
    events.write("S", "-", finished)
    try:
        return worker.run()
    finally:
        q.close()


# ---------------------------------------------------------------- the producer

def make_jobs(n: int, rng: random.Random, now: datetime, prefix: str = "") -> list:
    """``n`` demo jobs of the six types, in the demo's mix (ids unique across calls;
    the caller adds the poison pill)."""
    from ..job import Job
    types = [t for t, w in MIX for _ in range(w)]
    jobs = []
    for i in range(n):
        job_type = rng.choice(types)
        job = Job(job_type, priority=PRIORITIES[job_type], lease_duration=LEASE)
        if job_type == "render_thumbnail":
            job.add_field("image", f"img-{prefix}{i:05d}.png")
        elif job_type == "crunch_analytics":
            job.add_field("rows", rng.randint(1000, 100000))
        elif job_type == "send_email":
            job.add_field("to", f"user{prefix}{i}@example.com")
        elif job_type == "send_reminder":
            job.schedule_at(now + timedelta(seconds=rng.uniform(2.0, 6.0)))
        jobs.append(job)
    return jobs


def produce(store: Path, n: int, rng: random.Random) -> tuple[dict, str, float]:
    """Enqueue n jobs; returns ({id: job_type}, poison_id, seconds)."""
    from ..job import Job
    jobs = make_jobs(n - 1, rng, datetime.now(UTC))
    poison = Job("render_thumbnail", {"image": None}, priority="NORMAL",
                 max_retries=POISON_RETRIES, lease_duration=LEASE)
    jobs.insert(len(jobs) // 3, poison)
    t0 = time.perf_counter()
    q = open_queue(store)
    try:
        for start in range(0, len(jobs), 500):      # one atomic, durable commit per batch
            q.enqueue_many(jobs[start:start + 500])
    finally:
        q.close()
    return {j.id: j.job_type for j in jobs}, poison.id, time.perf_counter() - t0


# ---------------------------------------------------------------- the show

class Show:
    def __init__(self, out=sys.stdout):
        self.out = out
        self.t0 = time.monotonic()

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def bar(self, done: int, total: int, extra: str = "") -> None:
        width = 30
        filled = int(width * done / total) if total else width
        bar = "#" * filled + "." * (width - filled)
        self.say(f"   [{time.monotonic() - self.t0:5.1f}s] |{bar}| "
                 f"{done:>5}/{total} finished{extra}")


def _start_worker(store: Path, events: Path, workers: int, logf) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "aurora_log.tools.demo", "--worker-child",
                             str(store), str(events), str(workers)],
                            stdout=logf, stderr=logf, stdin=subprocess.DEVNULL)


# ---------------------------------------------------------------- the other processes

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_dashboard(store: Path, logf) -> tuple[subprocess.Popen, int] | None:
    """The web dashboard on the same store, in its own process (read-only), once it
    answers; None when the dashboard extra is not installed or it does not come up."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        return None
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "aurora_log", "dashboard", str(store),
                             "--port", str(port)],
                            stdout=logf, stderr=logf, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        if dashboard_completed(port) is not None:
            return proc, port
        time.sleep(0.2)
    stop_process(proc)
    return None


def dashboard_completed(port: int) -> int | None:
    """Completed jobs as the dashboard's /metrics reports them (None: no answer)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # loopback
    try:
        with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return None
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("aurora_jobs{") and 'status="completed"' in line)


def cli_stats(store: Path) -> dict | None:
    """``aurora-log stats STORE --json``, run as its own process (None if it failed)."""
    out = subprocess.run([sys.executable, "-m", "aurora_log", "stats", str(store), "--json"],
                         capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout) if out.returncode == 0 else None


def stop_process(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _tally(events_path: Path):
    ev = read_events(events_path)
    final = {}
    started: collections.Counter[str] = collections.Counter()
    for kind, job_id, extra in ev:
        if kind == "A" and extra in ("completed", "dead_letter", "cancelled"):
            final[job_id] = extra
        elif kind == "R":
            started[job_id] += 1
    return ev, final, started


def run_demo(base: Path, n: int, workers: int, seed: int | None, show: Show,
             time_limit: float = 120.0) -> int:
    rng = random.Random(seed)
    store = base / "store"
    events = base / "events.log"
    logfile = base / "worker.log"
    show.say("aurora-log demo: a durable job queue that survives kill -9")
    show.say(f"   store: {store}")
    show.say()

    expected, poison_id, secs = produce(store, n, rng)
    by_type = collections.Counter(expected.values())
    show.say(f"1. producer: {n} jobs enqueued in {secs:.2f} s, durable before enqueue returned")
    show.say("   " + ", ".join(f"{c} {t} ({PRIORITIES[t].lower()})"
                               for t, c in by_type.most_common()))
    show.say(f"   {by_type['send_reminder']} reminders are scheduled 2-6 s ahead; "
             f"{by_type['call_partner_api']} partner-API calls fail once and retry; "
             f"1 poison pill ({poison_id[:8]}) can never succeed")
    show.say()

    log_fd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(log_fd, "ab") as logf:
        child = _start_worker(store, events, workers, logf)
        show.say(f"2. worker process {child.pid} started ({workers} threads)")
        dashboard = start_dashboard(store, logf)
        try:
            if dashboard is None:
                show.say("   (no dashboard: pip install 'aurora-log[dashboard]' to watch it too)")
            else:
                show.say(f"   dashboard process {dashboard[0].pid} on the same store: "
                         f"http://127.0.0.1:{dashboard[1]}/ (read-only)")
            deadline = time.monotonic() + time_limit
            kill_at = max(1, int(n * 0.4))
            while True:
                time.sleep(0.7)
                _ev, final, _started = _tally(events)
                show.bar(len(final), n)
                if len(final) >= kill_at or child.poll() is not None or \
                        time.monotonic() > deadline:
                    break
            if child.poll() is not None:
                show.say(f"   the worker exited early with status {child.returncode}; "
                         f"see {logfile}")
                return 1
            _say_readers(show, store, dashboard)

            ev, final, started = _tally(events)
            running = _in_flight(ev)
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            show.say()
            show.say(f"3. kill -9 {child.pid}: no goodbye, no flush, {len(running)} handler(s) "
                     f"cut off mid-job; {len(final)} jobs acknowledged so far")
            killed_running = set(running)
            acked_before_kill = dict(final)
            show.say()

            child = _start_worker(store, events, workers, logf)
            show.say(f"4. worker process {child.pid} started on the same directory; recovery "
                     "put the interrupted jobs back in line")
            late = make_jobs(max(1, n // 10), rng, datetime.now(UTC), prefix="late-")
            q = open_queue(store)
            try:
                q.enqueue_many(late)
            finally:
                q.close()
            expected.update((j.id, j.job_type) for j in late)
            total = len(expected)
            show.say(f"   meanwhile this process enqueued {len(late)} more jobs into the "
                     f"store the worker is running ({total} in all)")
            last = -1
            while True:
                time.sleep(0.7)
                done = _finished_since_restart(events)
                if done != last or done >= total:
                    show.bar(done, total, _waiting_note(done, total))
                    last = done
                if done >= total or child.poll() is not None or time.monotonic() > deadline:
                    break
            rc = stop_process(child)
            show.say(f"   SIGTERM: the worker stopped cleanly (exit status {rc})")
            if dashboard is not None:
                stats = cli_stats(store)
                want = stats["completed"] if stats is not None else None
                seen = dashboard_completed(dashboard[1])
                end = time.monotonic() + 3 * REFRESH_SECONDS
                while seen != want and time.monotonic() < end:     # its next re-read
                    time.sleep(0.3)
                    seen = dashboard_completed(dashboard[1])
                show.say(f"   the dashboard served through the kill and the restart: its "
                         f"/metrics counts {seen} completed, the CLI {want}")
            show.say()
        finally:
            if dashboard is not None:
                stop_process(dashboard[0])

    return verify(store, events, expected, poison_id, killed_running, acked_before_kill, rc, show)


def _say_readers(show: Show, store: Path, dashboard) -> None:
    """What the CLI and the dashboard, each its own process, read from the store while the
    worker writes it."""
    stats = cli_stats(store)
    if stats is not None:
        show.say(f"   `aurora-log stats` (another process) at the same moment: "
                 f"{stats['completed']} completed, {stats['running']} running, "
                 f"{stats['pending']} pending, {stats['failed']} waiting to retry")
    if dashboard is not None:
        show.say(f"   the dashboard's /metrics: {dashboard_completed(dashboard[1])} completed "
                 f"(it re-reads the store every {REFRESH_SECONDS:g} s)")


def _finished_since_restart(events_path: Path) -> int:
    """Jobs finished when the newest worker started + final acknowledgements since."""
    ev = read_events(events_path)
    base, start = 0, None
    for pos, (kind, _job_id, extra) in enumerate(ev):
        if kind == "S":
            base, start = int(extra), pos
    if start is None:
        return 0
    done = {job_id for kind, job_id, extra in ev[start + 1:]
            if kind == "A" and extra in ("completed", "dead_letter", "cancelled")}
    return base + len(done)


def _waiting_note(done: int, n: int) -> str:
    left = n - done
    if 0 < left <= 40:
        return f"  ({left} waiting for a retry or their scheduled time)"
    return ""


def _in_flight(ev) -> list[str]:
    """Jobs with a started attempt and no acknowledgement after it."""
    open_runs = {}
    for kind, job_id, _extra in ev:
        if kind == "R":
            open_runs[job_id] = True
        elif kind == "A":
            open_runs.pop(job_id, None)
    return list(open_runs)


def verify(store: Path, events: Path, expected: dict, poison_id: str, killed_running: set,
           acked_before_kill: dict, worker_rc: int, show: Show) -> int:
    from ..job import JobStatus
    ev, final, started = _tally(events)
    q = open_queue(store)
    try:
        jobs = {job_id: q.get(job_id) for job_id in expected}
        try:
            everything = q.list(limit=len(expected) + 100)
        except TypeError:
            everything = None
        poison_history = len(q.history(poison_id))
        # the store's own account of the kill: attempts reaped because their process died
        died = {i for i in expected
                if any(t.kind == "reap" and t.error == "process died" for t in q.history(i))}
    finally:
        q.close()

    status_count = collections.Counter(str(j.status) if j else "missing" for j in jobs.values())
    lost = [i for i, j in jobs.items() if j is None or (
        j.status is not JobStatus.COMPLETED and i != poison_id)]
    lost_acks = [i for i, s in final.items() if jobs.get(i) is None or str(jobs[i].status) != s]
    phantoms = ([j.id for j in everything if j.id not in expected] if everything is not None
                else [])
    # resurrected: an attempt that started after the job's acknowledgement
    acked_at: dict[str, int] = {}
    resurrected = set()
    for pos, (kind, job_id, _extra) in enumerate(ev):
        if kind == "A" and _extra in ("completed", "dead_letter", "cancelled"):
            acked_at.setdefault(job_id, pos)
        elif kind == "R" and job_id in acked_at:
            resurrected.add(job_id)
    retries = sum(j.retry_count for j in jobs.values() if j)
    flaky = [j for j in jobs.values() if j and j.job_type == "call_partner_api"]
    reran = [i for i in died
             if started[i] >= 2 or (jobs[i] and jobs[i].status is JobStatus.COMPLETED)]
    counted = [i for i in died if jobs.get(i) and jobs[i].retry_count >= 1]
    unrecovered = [i for i in killed_running if i not in died and i not in final
                   and not (jobs.get(i) and jobs[i].status.is_finished)]
    reminders = [j for j in jobs.values() if j and j.job_type == "send_reminder"]
    early = [j.id for j in reminders if j.started_at and j.scheduled_at
             and j.started_at < j.scheduled_at]
    order = {job_id: pos for pos, job_id in enumerate(i for k, i, e in ev if k == "A")}
    pj = jobs[poison_id]

    show.say("5. checked every acknowledgement against the store:")
    show.say("   status        " + ", ".join(f"{s} {c}" for s, c in status_count.most_common()))
    show.say(f"   retries       {retries} in all: {sum(1 for j in flaky if j.retry_count >= 1)}/"
             f"{len(flaky)} partner-API calls succeeded on their second attempt")
    show.say(f"   dead letter   {status_count.get('dead_letter', 0)}: the poison pill, after "
             f"{pj.retry_count + 1 if pj else '?'} attempts ({poison_history} transitions); "
             f"last error: {(pj.error or '').splitlines()[0] if pj else '?'}")
    show.say(f"   the kill      {len(died)} job(s) held by the killed worker were recovered as "
             f"'process died': {len(reran)} ran again (at-least-once), {len(counted)} with the "
             f"attempt counted")
    show.say(f"   scheduled     {len(reminders)} reminders, {len(early)} started before their time")
    show.say("   priority      mean finishing position: " + ", ".join(
        f"{p.lower()} {_mean_rank(order, expected, p):.0%}" for p in
        ("CRITICAL", "HIGH", "NORMAL", "LOW")))
    # finished in the store, but the kill came between complete() returning and the worker
    # writing its acknowledgement line: done, just never reported to us (at-least-once's twin)
    unreported = [i for i in expected if i not in final and jobs.get(i)
                  and jobs[i].status.is_finished]
    show.say(f"   acknowledged  {len(final)} jobs ({len(acked_before_kill)} by the killed worker)"
             + (f"; {len(unreported)} more finished in the store, their acknowledgement cut off "
                "by the kill" if unreported else ""))
    checks = [("lost", len(lost) + len(lost_acks) + len(unrecovered)), ("phantom", len(phantoms)),
              ("resurrected", len(resurrected)), ("started early", len(early))]
    show.say("   " + ", ".join(f"{name} {count}" for name, count in checks)
             + ("   -> all good" if not any(c for _n, c in checks) else "   -> PROBLEM"))
    show.say()
    ok = (not any(c for _n, c in checks) and worker_rc == 0
          and pj is not None and pj.status is JobStatus.DEAD_LETTER)
    cli = _cli_command()
    show.say("Look around (the store is yours now):")
    show.say(f"   {cli} stats {store}")
    show.say(f"   {cli} jobs {store} --status dead_letter")
    show.say(f"   {cli} history {store} {poison_id}")
    if died:
        show.say(f"   {cli} history {store} {sorted(died)[0]}")
        show.say("      (a job that was running at the kill)")
    show.say(f"   (acknowledgements: {events}; worker log: {store.parent / 'worker.log'})")
    if not ok:
        show.say()
        show.say("SOME CHECK FAILED: see above" + (f"; worker exit status {worker_rc}"
                                                   if worker_rc else ""))
    return 0 if ok else 1


def _cli_command() -> str:
    """How to run the CLI from here: ``aurora-log`` when it is on PATH, else this Python
    (``make demo`` runs in .venv without activating it)."""
    import shutil
    exe = shutil.which("aurora-log")
    if exe and Path(exe).resolve().parent == Path(sys.executable).resolve().parent:
        return "aurora-log"
    python = sys.executable
    try:
        rel = os.path.relpath(python)
        if not rel.startswith(".."):
            python = rel
    except ValueError:
        pass
    return f"{python} -m aurora_log"


def _mean_rank(order: dict, expected: dict, priority: str) -> float:
    ranks = [order[i] for i, t in expected.items() if PRIORITIES[t] == priority and i in order]
    return (sum(ranks) / len(ranks) / max(1, len(order))) if ranks else 0.0


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--worker-child"]:
        return worker_main(argv[1], argv[2], int(argv[3]))
    p = argparse.ArgumentParser(prog="python -m aurora_log.tools.demo",
                                description="aurora-log survives kill -9: a guided demo")
    p.add_argument("--dir", default=os.environ.get("AURORA_LOG_DEMO_DIR"),
                   help="where to put the store (default: a new temporary directory)")
    p.add_argument("--jobs", type=int, default=int(os.environ.get("AURORA_LOG_DEMO_JOBS", 3000)))
    p.add_argument("--workers", type=int, default=int(os.environ.get("AURORA_LOG_DEMO_WORKERS", 4)))
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args(argv)
    if args.jobs < 10:
        p.error("--jobs must be at least 10")
    if args.dir:
        base = Path(args.dir)
        if base.exists() and any(base.iterdir()):
            p.error(f"{base} is not empty; give a new or empty directory")
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
    else:
        base = Path(tempfile.mkdtemp(prefix="aurora-log-demo-"))
    try:
        return run_demo(base, args.jobs, args.workers, args.seed, Show())
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
