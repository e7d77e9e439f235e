"""Log benchmarks against disk floors measured in the same run (bench/floors.py).

    python -m pytest bench/test_bench_log.py --benchmark-only -s

Targets (issue 2): 1-thread durable append >= 0.9x the write+fdatasync loop; 64 threads
>= 10x the 1-thread rate; 1,000 x 100 B batches >= 0.5x sequential write+fdatasync (MB/s);
no commit stalls for a segment roll (test_worst_commit_latency_across_rolls: the spare
segment file against the inline creation it replaced, in the same run).
The ratios are printed and stored in each benchmark's extra_info; they are not asserted
(a shared machine is noisy).
"""

import os
import shutil
import statistics
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import floors  # noqa: E402

from aurora_log.local._binding import lib  # noqa: E402
from aurora_log.local.log import Log  # noqa: E402

REC = b"p" * 100
ONE = [(1, REC)]
SECONDS = float(os.environ.get("AURORA_BENCH_SECONDS", "1.5"))
_results = {}


@pytest.fixture(scope="module")
def floor(tmp_path_factory):
    d = tmp_path_factory.mktemp("floors")
    return {
        "fdatasync": floors.fdatasync_loop(d, SECONDS),
        "curve": floors.batch_curve(d, [1, 64, 1000], seconds=SECONDS / 3),
    }


def _report(benchmark, **kw):
    benchmark.extra_info.update(kw)
    _results[benchmark.name] = kw
    print("\n  " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in kw.items()))


def test_durable_append_1_thread(benchmark, tmp_path, floor):
    # the disk's fdatasync rate drifts on a shared machine: measure the floor right before
    # and right after, and compare with their mean
    before = floors.fdatasync_loop(tmp_path / "f", SECONDS / 2)
    with Log.open(tmp_path / "log") as log:
        def one():
            log.commit(ONE)
        benchmark.pedantic(one, rounds=int(max(200, before * SECONDS)),
                           iterations=1, warmup_rounds=20)
        rate = 1.0 / benchmark.stats.stats.mean
    after = floors.fdatasync_loop(tmp_path / "f", SECONDS / 2)
    fl = (before + after) / 2
    _report(benchmark, records_per_s=rate, floor_fdatasync_per_s=fl, ratio_vs_floor=rate / fl)


def _threads(log, n, seconds):
    stop = time.perf_counter() + seconds
    counts = [0] * n

    def worker(i):
        c = 0
        while time.perf_counter() < stop:
            log.commit(ONE)
            c += 1
        counts[i] = c

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    before = log.stats()
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    dt = time.perf_counter() - t0
    after = log.stats()
    return sum(counts), after["fdatasyncs"] - before["fdatasyncs"], dt


@pytest.mark.parametrize("threads", [1, 4, 16, 64, 256])
def test_durable_append_threads(benchmark, tmp_path, floor, threads):
    with Log.open(tmp_path / "log") as log:
        out = {}

        def run():
            out["r"] = _threads(log, threads, SECONDS)
        benchmark.pedantic(run, rounds=1, iterations=1)
    recs, syncs, dt = out["r"]
    rate = recs / dt
    if threads == 1:
        _results["one_thread_rate"] = rate
    base = _results.get("one_thread_rate") or floor["fdatasync"]
    _report(benchmark, threads=threads, records_per_s=rate, fdatasyncs_per_s=syncs / dt,
            mean_batch=recs / max(1, syncs), ratio_vs_1_thread=rate / base,
            ratio_vs_floor=rate / floor["fdatasync"])


def test_batches_of_1000(benchmark, tmp_path, floor):
    """Steady state: enough batches to fill three segments, so the window holds rolls and
    the zero-filling of the spare segments in the proportion a long run has (a short window
    would hold one whole 64 MiB zero-fill against a few MB of batches)."""
    batch = [(1, REC)] * 1000
    framed = 1000 * (len(REC) + lib.AU_REC_HDR) + lib.AU_BATCH_HDR
    with Log.open(tmp_path / "log") as log:
        rounds = max(int(40 * SECONDS), 3 * log.segment_bytes // framed)
        benchmark.pedantic(lambda: log.commit(batch), rounds=rounds, iterations=1,
                           warmup_rounds=3)
        mean = benchmark.stats.stats.mean
        rolls = log.stats()["rolls"]
    payload_mb_s = 1000 * len(REC) / mean / 1e6
    disk_mb_s = framed / mean / 1e6
    total = framed * rounds
    seq = floors.sequential_write_fsync(tmp_path / "floor", total, chunk_bytes=framed)
    _report(benchmark, records_per_s=1000 / mean, payload_MB_s=payload_mb_s,
            written_MB_s=disk_mb_s, floor_sequential_MB_s=seq, ratio_vs_floor=disk_mb_s / seq,
            floor_batch_1000_records_per_s=floor["curve"][1000], rolls=rolls)


def _commits_across_rolls(directory, batch, rolls, segment_bytes):
    """Commit `batch` until the log has rolled `rolls` times -> (latency of each commit
    whose round rolled, latency of every other commit), in seconds."""
    at_roll, other = [], []
    with Log.open(directory, segment_bytes=segment_bytes) as log:
        n = 0
        while n < rolls:
            t0 = time.perf_counter()
            log.commit(batch)
            dt = time.perf_counter() - t0
            r = log.stats()["rolls"]
            (at_roll if r != n else other).append(dt)
            n = r
        st = log.stats()
    shutil.rmtree(directory)
    return at_roll, other, st


def test_worst_commit_latency_across_rolls(benchmark, tmp_path):
    """1,000-record commits through 64 MiB segments, two rolls per run, alternating runs
    with the spare segment file off (every roll zero-fills + fsyncs the next segment inside
    the commit round: the old path) and on (the default). Reports the worst commit latency
    at a roll and overall, p99 and mean, per mode."""
    batch = [(1, REC)] * 1000
    seg = 64 << 20
    runs = int(os.environ.get("AURORA_BENCH_ROLL_RUNS", "2"))
    out = {"inline": ([], [], []), "spare": ([], [], [])}

    def run():
        for i in range(runs):
            for mode in ("inline", "spare"):
                lib.au_set_spare_min_bytes(1 << 62 if mode == "inline" else 2 << 20)
                try:
                    at_roll, other, st = _commits_across_rolls(tmp_path / f"{mode}{i}", batch,
                                                               2, seg)
                finally:
                    lib.au_set_spare_min_bytes(2 << 20)
                out[mode][0].extend(at_roll)
                out[mode][1].extend(other)
                out[mode][2].append(st["spare_rolls"])
    benchmark.pedantic(run, rounds=1, iterations=1)
    kw = {}
    for mode, (at_roll, other, spare_rolls) in out.items():
        every = sorted(at_roll + other)
        kw[f"{mode}_worst_roll_ms"] = max(at_roll) * 1e3
        kw[f"{mode}_worst_ms"] = every[-1] * 1e3
        kw[f"{mode}_p99_ms"] = every[int(len(every) * 0.99)] * 1e3
        kw[f"{mode}_mean_ms"] = statistics.fmean(every) * 1e3
        kw[f"{mode}_spare_rolls"] = sum(spare_rolls)
    kw["worst_roll_ratio_inline_over_spare"] = (kw["inline_worst_roll_ms"] /
                                                kw["spare_worst_roll_ms"])
    _report(benchmark, **kw)
