"""``benchmark_tasks``: the throughput of a user's own task through a real Worker.

    def test_resize_throughput(benchmark, tmp_path):
        q = aurora_log.open(tmp_path / "q")
        register(q)
        report = benchmark_tasks(q, 500, 4, task=resize, args=("a.png",), benchmark=benchmark)
        print(report)     # 500 jobs, 4 threads: 812 jobs/s; latency p50 4.1 ms ...

Jobs are enqueued in one batch before the clock starts; the figure covers claiming, running
the handler and the durable completion, i.e. what a worker of that concurrency sustains.
Latency is per job, from its claim to its acknowledged outcome, read on the queue's clock
(the claim time is kept to the millisecond, so each latency is good to about 0.5 ms).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from aurora_log.job import Job
from aurora_log.runtime.tasks import build_job, call_payload, registry
from aurora_log.runtime.worker import Worker

from .clock import FakeClock

__all__ = ["BenchReport", "benchmark_tasks"]

_FINAL = ("completed", "dead_letter", "cancelled")


@dataclasses.dataclass(frozen=True)
class BenchReport:
    n: int
    concurrency: int
    seconds: float
    jobs_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    completed: int
    dead_letter: int
    failed_attempts: int

    def __str__(self) -> str:
        return (f"{self.n} jobs, {self.concurrency} thread(s): {self.jobs_per_s:,.0f} jobs/s "
                f"in {self.seconds:.3f} s; latency p50 {self.p50_ms:.1f} ms, p95 "
                f"{self.p95_ms:.1f} ms, p99 {self.p99_ms:.1f} ms; {self.completed} completed, "
                f"{self.dead_letter} dead letter, {self.failed_attempts} failed attempts")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def _job_maker(q, task, args, kwargs) -> Callable[[int], Job]:
    reg = registry(q)
    if task is None:
        types = reg.job_types()
        if len(types) != 1:
            raise ValueError(f"the queue has {len(types)} handlers ({', '.join(types)}); "
                             "say which with task=")
        job_type = types[0]
    else:
        found = task if isinstance(task, str) else getattr(task, "job_type", None)
        job_type = found if isinstance(found, str) else ""
    handler = reg.get(job_type)
    if handler is None:
        raise ValueError(f"no handler registered on this queue for task {task!r}")
    if handler.style == "args":
        payload = call_payload(list(args), dict(kwargs or {}))
        return lambda i: build_job(job_type, payload, **handler.options)
    if args:
        raise ValueError(f"{job_type!r} is a fn(job) handler: pass its payload as kwargs=")
    return lambda i: Job(job_type, dict(kwargs or {}))


def benchmark_tasks(q, n: int, concurrency: int, *, task: Any = None, args: tuple = (),
                    kwargs: dict | None = None, make_job: Callable[[int], Job] | None = None,
                    benchmark: Any = None, timeout: float = 120.0) -> BenchReport:
    """Enqueue ``n`` jobs of ``task`` (a ``@q.task`` function or a job_type; default: the
    queue's only handler) with ``args``/``kwargs`` (or ``make_job(i)`` -> Job), run them
    through a real Worker with ``concurrency`` threads, and report jobs/s and latency
    percentiles. ``benchmark``: the pytest-benchmark fixture, which then times the run
    (one round) and gets the figures in ``extra_info``. TimeoutError after ``timeout``
    seconds without all jobs finished."""
    for name, v in (("n", n), ("concurrency", concurrency)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if isinstance(getattr(q, "_clock", None), FakeClock):
        raise ValueError(  # noqa: TRY004 - a wrong queue setup, not a wrong argument type
            "benchmark_tasks needs a queue on the real clock, not a FakeClock")
    make = make_job if make_job is not None else _job_maker(q, task, args, kwargs)
    latencies: list[float] = []
    counts = {"completed": 0, "dead_letter": 0, "cancelled": 0, "failed": 0}
    lock = threading.Lock()
    done = threading.Event()

    def on_done(job, status: str, _detail) -> None:
        lat = q._clock() - job.started_at.timestamp()
        with lock:
            counts[status] = counts.get(status, 0) + 1
            if status in _FINAL:
                latencies.append(lat * 1000.0)
                if len(latencies) == n:
                    done.set()

    elapsed: list[float] = []

    def setup():
        done.clear()
        latencies.clear()
        for k in counts:
            counts[k] = 0
        q.enqueue_many([make(i) for i in range(n)])
        return (), {}

    def run() -> None:
        worker = Worker(q, concurrency=concurrency, registry=registry(q), on_done=on_done,
                        poll_interval=0.05)
        t0 = time.perf_counter()
        worker.start()
        try:
            finished = done.wait(timeout)
            elapsed.append(time.perf_counter() - t0)
        finally:
            worker.stop(timeout=10)
        if not finished:
            raise TimeoutError(f"{len(latencies)} of {n} jobs finished within {timeout} s")

    if benchmark is not None:
        benchmark.pedantic(run, setup=setup, rounds=1, iterations=1)
    else:
        setup()
        run()
    lat = sorted(latencies)
    seconds = elapsed[-1]
    report = BenchReport(n, concurrency, seconds, n / seconds if seconds > 0 else math.inf,
                         percentile(lat, 50), percentile(lat, 95), percentile(lat, 99),
                         counts["completed"], counts["dead_letter"], counts["failed"])
    if benchmark is not None:
        benchmark.extra_info.update(report.as_dict())
    return report
