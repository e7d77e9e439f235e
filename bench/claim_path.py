"""Where the microseconds of one claim and one complete go (issue 21), step by step.

    python bench/claim_path.py [--jobs 30000] [--round 200]

One thread, exclusive mode, interval durability. The script walks the same steps as
``Queue._claim_locked`` and ``Queue.complete`` (args, lock, clock + pick, plan, encode,
reserve, fold, Job object, append) with a timer between them, over rounds of ``--round``
operations, and prints each step's minimum and first-quartile mean per operation over the
rounds (the minimum filters out a loaded machine's preemption). It mirrors the queue's
internals: when those change, change the steps here too. The timer's own cost (~0.2 us a
step) is subtracted. The total thread CPU per operation is printed as a check.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections import defaultdict

from aurora_log.interface import check_job_id, check_names, token_bytes
from aurora_log.job import MAX_NAME_CHARS, Job, check_text
from aurora_log.local import records as R
from aurora_log.local.queue import Queue, _new_token


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=30_000, help="pending jobs (claimed, completed)")
    ap.add_argument("--round", type=int, default=200, help="operations per timed round")
    args = ap.parse_args()
    ns = time.perf_counter_ns
    d = tempfile.mkdtemp()
    q = Queue(d, durability="interval", reaper_interval=None, auto_compact=False,
              exclusive=True)
    try:
        for s in range(0, args.jobs, 10_000):
            q.enqueue_many([Job("bench", {"i": i, "pad": "x" * 80})
                            for i in range(s, min(args.jobs, s + 10_000))])
        q.flush()
        t0 = ns()
        for _ in range(1000):
            ns()
        overhead = (ns() - t0) / 1001
        rounds: dict[str, list[float]] = defaultdict(list)
        acc: dict[str, int] = defaultdict(int)
        k = args.round
        st, log = q._state, q._log
        wait = getattr(q, "_durable_wait", "durable")
        jobs: list[Job] = []
        cpu = time.thread_time()
        for n in range(1, args.jobs + 1):
            a = ns()
            check_text("w1", "worker_id", MAX_NAME_CHARS)
            types, qs = check_names(None, "job_types"), check_names(None, "queues")
            b = ns()
            with q._lock:
                c = ns()
                now = q._now_ms()
                job_id = st.pick(now, qs, types)
                assert job_id is not None             # --jobs pending: never drained here
                e = ns()
                rec = st.plan_claim(job_id, now, _new_token(), "w1")
                f = ns()
                encoded = [R.encode(rec)]
                g = ns()
                first = log.reserve(1)
                h = ns()
                st.apply(first, encoded[0][0], rec)
                i = ns()
                job = st.get(job_id)
                assert job is not None and job.token is not None
                j = ns()
            m = ns()
            q._publish((first, encoded, None), "written")
            o = ns()
            jobs.append(job)
            for name, dt in (("claim: arguments", b - a), ("claim: lock", c - b + m - j),
                             ("claim: clock + pick", e - c), ("claim: plan + token", f - e),
                             ("claim: encode", g - f), ("claim: reserve", h - g),
                             ("claim: fold", i - h), ("claim: Job object", j - i),
                             ("claim: append + write", o - m)):
                acc[name] += dt
            if n % k == 0:
                for name, total in acc.items():
                    rounds[name].append(total / k)
                acc.clear()
        claim_cpu = (time.thread_time() - cpu) / args.jobs
        cpu = time.thread_time()
        for n, job in enumerate(jobs, 1):
            a = ns()
            job_id, tok = check_job_id(job.id), token_bytes(job.token)
            b = ns()
            with q._deciding():
                c = ns()
                q._check_open()
                done = st.plan_complete(job_id, tok, q._now_ms(), None)
                e = ns()
                encoded = [R.encode(done)]
                f = ns()
                first = log.reserve(1)
                g = ns()
                st.apply(first, encoded[0][0], done)
                h = ns()
                if st.control.wake_on_finish:
                    q._cond.notify_all()
            m = ns()
            q._publish((first, encoded, None), wait)
            o = ns()
            for name, dt in (("complete: arguments", b - a), ("complete: lock", c - b + m - h),
                             ("complete: check + clock + plan", e - c),
                             ("complete: encode", f - e), ("complete: reserve", g - f),
                             ("complete: fold", h - g), ("complete: append + write", o - m)):
                acc[name] += dt
            if n % k == 0:
                for name, total in acc.items():
                    rounds[name].append(total / k)
                acc.clear()
        complete_cpu = (time.thread_time() - cpu) / args.jobs
    finally:
        q.close()
        shutil.rmtree(d, ignore_errors=True)
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    print(f"{'step':34s} {'min us':>8s} {'p25 us':>8s}")
    for name, means in rounds.items():
        lo = (min(means) - overhead) / 1000
        p25 = (statistics.quantiles(means, n=4)[0] - overhead) / 1000
        op = name.split(":")[0]
        totals[op][0] += lo
        totals[op][1] += p25
        print(f"{name:34s} {lo:8.2f} {p25:8.2f}")
    for op, (lo, p25) in totals.items():
        print(f"{op + ': sum of the steps':34s} {lo:8.2f} {p25:8.2f}")
    print(f"thread CPU per claim {claim_cpu * 1e6:.1f} us, per complete "
          f"{complete_cpu * 1e6:.1f} us (with the timers; a loaded machine inflates it)")


if __name__ == "__main__":
    main()
