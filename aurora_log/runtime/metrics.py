"""/metrics: the queue in the Prometheus text format (prometheus_client).

Names follow Prometheus conventions (base units, ``_total`` counters):

* ``aurora_jobs{status,queue}``                gauge: jobs in the live state
* ``aurora_jobs_enqueued_total``               counter: enqueue records read from the log
* ``aurora_jobs_completed_total``              counter: complete records
* ``aurora_jobs_failed_total``                 counter: failed attempts (fail + reap records)
* ``aurora_job_duration_seconds``              histogram: claim -> complete/fail/reap
* ``aurora_wal_bytes``                         gauge: bytes of the WAL segment files
* ``aurora_log_next_lsn``                      gauge: the LSN the next record gets
* ``aurora_fdatasyncs_total``                  counter: the log's fdatasync calls (in the
                                               default shared mode: every process's, from
                                               the control page)
* ``aurora_fdatasync_duration_seconds``        histogram: time in fdatasync (the C writer of
                                               an ``exclusive=True`` store; the shared
                                               mode's group commit does not time them)

On a PostgreSQL queue the same names apply except the WAL and fdatasync ones, which are
omitted (there is no log file; the server's own exporter covers its WAL): the counters and
the histogram are folded from the history table by aurora_log.runtime.pg_activity's
HistoryTracker, the gauge comes from ``stats()``.

The counters and the histogram are folded from the log by an ActivityTracker, so they
count what the store recorded (every process's work), from the oldest record the WAL
still holds when this process started reading; a restart resets them, which Prometheus'
``rate()`` handles. The writer's figures exist only where the store is open writable
(a worker, a mounted dashboard); a read-only dashboard omits them. A queue without a
local log (PostgreSQL) gets ``aurora_jobs`` only.

This module needs prometheus_client only (no web framework): the worker uses it too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from wsgiref.simple_server import WSGIServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..job import JobStatus

from .activity import RUN_BUCKETS, ActivityTracker

__all__ = ["CONTENT_TYPE", "QueueCollector", "make_registry", "render", "serve_metrics",
           "tracker_for"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _cumulative(bounds: Iterable[float], counts: Iterable[int]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    acc = 0
    # one count per bound, then the +Inf bucket's
    for bound, n in zip([*bounds, float("inf")], counts, strict=True):
        acc += n
        out.append(("+Inf" if bound == float("inf") else repr(float(bound)), acc))
    return out


class QueueCollector(Collector):
    """Reads the queue (``get_queue()``) and the tracker at every scrape."""

    def __init__(self, get_queue: Callable[[], Any], tracker: Any,
                 stats: Callable[[], dict] | None = None) -> None:
        """``tracker``: an ActivityTracker, or a HistoryTracker (same totals). ``stats``:
        where the job counts come from (default ``queue.stats()``; the dashboard passes
        its reads', which on PostgreSQL are a count at most seconds old)."""
        self._get_queue = get_queue
        self._stats = stats
        self._tracker = tracker

    def collect(self) -> Iterator[Metric]:
        q = self._get_queue()
        t = self._tracker
        jobs = GaugeMetricFamily("aurora_jobs", "Jobs in the live state, by status and queue",
                                 labels=["status", "queue"])
        stats = self._stats() if self._stats is not None else q.stats()
        for queue, counts in stats["queues"].items():
            for status in JobStatus:
                jobs.add_metric([status.value, queue], counts[status.value])
        yield jobs
        if isinstance(t, ActivityTracker) and getattr(q, "log", None) is None:
            return          # a log tracker but no log to read: the job gauges are all there is
        t.catch_up(q)       # the local log's records, or PostgreSQL's history (tracker_for)
        for name, value, text in (
                ("aurora_jobs_enqueued", t.enqueued_total, "Jobs enqueued (log records read)"),
                ("aurora_jobs_completed", t.completed_total, "Jobs completed"),
                ("aurora_jobs_failed", t.failed_total, "Failed attempts (fail and reap records)")):
            yield CounterMetricFamily(name, text, value=value)
        yield HistogramMetricFamily(
            "aurora_job_duration_seconds", "Run time of an attempt, claim to its outcome",
            buckets=_cumulative(RUN_BUCKETS, t.run_bucket_counts), sum_value=t.run_seconds_sum)
        if getattr(q, "log", None) is None:        # PostgreSQL: no log file, no writer
            return
        yield GaugeMetricFamily("aurora_wal_bytes", "Bytes of the WAL segment files",
                                value=sum(seg.size for seg in q.log.segments()))
        yield GaugeMetricFamily("aurora_log_next_lsn", "The LSN the next record gets",
                                value=q.log.next_lsn)
        writer = q.log.stats()
        if writer:
            yield CounterMetricFamily("aurora_fdatasyncs", "fdatasync calls of the log writer",
                                      value=writer["fdatasyncs"])
            buckets = writer.get("fdatasync_buckets")
            if buckets is not None:
                yield HistogramMetricFamily(
                    "aurora_fdatasync_duration_seconds", "Time the log writer spent in fdatasync",
                    buckets=_cumulative(writer["fdatasync_bounds"], buckets),
                    sum_value=writer["fdatasync_seconds"])


def tracker_for(queue: Any) -> Any:
    """The tracker that folds ``queue``'s activity: its log's records (a local store) or
    its history table (a PostgresQueue, which has a ``schema``)."""
    if getattr(queue, "log", None) is None and hasattr(queue, "schema"):
        from .pg_activity import HistoryTracker
        return HistoryTracker()
    return ActivityTracker()


def make_registry(get_queue: Callable[[], Any], tracker: Any,
                  stats: Callable[[], dict] | None = None) -> CollectorRegistry:
    """A registry of its own (not prometheus_client's global one): two dashboards or a
    dashboard and a worker in one process do not collide."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector(get_queue, tracker, stats))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def serve_metrics(queue: Any, port: int,
                  host: str = "127.0.0.1") -> tuple[WSGIServer, threading.Thread]:
    """Serve ``queue``'s metrics on http://host:port/metrics from a daemon thread (the
    worker's ``metrics_port``). Returns (server, thread); ``server.shutdown()`` stops it."""
    registry = make_registry(lambda: queue, tracker_for(queue))
    return start_http_server(port, addr=host, registry=registry)
