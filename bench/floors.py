"""Disk floors measured in the same run as the benchmarks they judge.

Plain functions (no pytest), imported by bench/test_bench_log.py and bench/compare.py.
Every floor writes over a preallocated, fsynced file (as the log does: its segments are
zero-filled at creation), so the fdatasync measured is the same kind the log pays: no
file-size change to commit. Files are created in `directory` and removed afterwards.

    fdatasync_loop(directory, seconds_or_n, record_bytes=100, think_us=0) -> ops/s
    batch_curve(directory, sizes, record_bytes=100, seconds=0.5) -> {size: records/s}
    sequential_write_fsync(directory, total_bytes, chunk_bytes=117_000) -> MB/s
"""

from __future__ import annotations

import os
import time

__all__ = ["fdatasync_loop", "batch_curve", "sequential_write_fsync", "preallocated"]

_CHUNK = 1 << 20


class preallocated:
    """Context manager: a zero-filled, fsynced file of `size` bytes opened O_WRONLY."""

    def __init__(self, directory, name: str, size: int):
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, name)
        self.size = size

    def __enter__(self) -> int:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        zeros = bytes(_CHUNK)
        off = 0
        while off < self.size:
            off += os.pwrite(self.fd, zeros[:min(_CHUNK, self.size - off)], off)
        os.fsync(self.fd)
        return self.fd

    def __exit__(self, *exc):
        os.close(self.fd)
        os.unlink(self.path)


def _loop(fd, buf: bytes, size: int, seconds_or_n, think_us: float = 0) -> tuple[int, float]:
    """write `buf` + fdatasync repeatedly, wrapping inside the file; -> (ops, seconds).
    `think_us`: spin the CPU that long between ops (see fdatasync_loop)."""
    by_count = isinstance(seconds_or_n, int) and not isinstance(seconds_or_n, bool)
    think = think_us / 1e6
    clock = time.perf_counter
    n = 0
    off = 0
    t0 = clock()
    while True:
        if off + len(buf) > size:
            off = 0
        os.pwrite(fd, buf, off)
        os.fdatasync(fd)
        off += len(buf)
        n += 1
        if think:
            until = clock() + think
            while clock() < until:
                pass
        if by_count:
            if n >= seconds_or_n:
                break
        elif time.perf_counter() - t0 >= seconds_or_n:
            break
    return n, time.perf_counter() - t0


def fdatasync_loop(directory, seconds_or_n, record_bytes: int = 100,
                   think_us: float = 0) -> float:
    """write(record_bytes) + fdatasync in a loop on a preallocated file -> ops/s.
    `seconds_or_n`: a float runs that long; an int runs that many ops.
    `think_us`: CPU work (a spin) between ops, as any caller has: on a virtual disk an
    fdatasync issued right after the last one completes is faster than one issued after
    a pause (here 10 us of work between ops cost ~30 us per op), so the no-think loop is
    the disk's best case, not what a program that does anything between fsyncs can get."""
    buf = b"r" * record_bytes
    with preallocated(directory, "floor-fdatasync", 16 << 20) as fd:
        n, dt = _loop(fd, buf, 16 << 20, seconds_or_n, think_us)
    return n / dt


def batch_curve(directory, sizes, record_bytes: int = 100, seconds: float = 0.5) -> dict:
    """For each size k: one write of k records + one fdatasync, repeated for `seconds`
    -> {k: records/s} (batches/s = records/s / k)."""
    out = {}
    for k in sizes:
        buf = b"r" * (record_bytes * k)
        size = max(16 << 20, 4 * len(buf))
        with preallocated(directory, f"floor-batch-{k}", size) as fd:
            n, dt = _loop(fd, buf, size, float(seconds))
        out[k] = n * k / dt
    return out


def sequential_write_fsync(directory, total_bytes: int, chunk_bytes: int = 117_000) -> float:
    """Write total_bytes sequentially in chunk_bytes writes, each followed by an fdatasync
    (the default chunk is one batch of 1,000 framed ~100-byte records) -> MB/s (10^6)."""
    buf = b"s" * chunk_bytes
    n_chunks = max(1, total_bytes // chunk_bytes)
    size = n_chunks * chunk_bytes
    with preallocated(directory, "floor-sequential", size) as fd:
        n, dt = _loop(fd, buf, size, n_chunks)
    return n * chunk_bytes / dt / 1e6
