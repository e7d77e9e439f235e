"""Many threads committing at once: nothing lost, and group commit really batches."""

import threading

from aurora_log import faults
from aurora_log.log import Log

SEG = 1 << 20  # small segments: a default 64 MiB one costs a zero-fill + fsync


def test_16_threads_commit_concurrently_lose_nothing(store_dir):
    n_threads, per_thread = 16, 150
    acked = [[] for _ in range(n_threads)]
    errors = []
    with Log.open(store_dir, segment_bytes=64 << 10) as log:
        def worker(t):
            try:
                for i in range(per_thread):
                    p = b"t%02d-%04d" % (t, i) + bytes([t]) * (i % 50)
                    if i % 10 == 9:
                        last = log.append_many([(2, p), (3, p[::-1])])
                        log.sync(last)
                        acked[t] += [(last - 1, 2, p), (last, 3, p[::-1])]
                    else:
                        lsn = log.append(1, p)
                        log.sync(lsn)
                        acked[t].append((lsn, 1, p))
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        ts = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        stats = log.stats()
    assert not errors
    every = sorted(r for rs in acked for r in rs)
    assert len(every) == n_threads * per_thread * 11 // 10
    with Log.open(store_dir, segment_bytes=64 << 10) as log:
        got = list(log.scan())
    assert got == every        # all acknowledged, no others, consecutive LSNs, same bytes
    assert [r[0] for r in got] == list(range(1, len(got) + 1))
    print(f"16 threads: {stats['records']} records in {stats['fdatasyncs']} fdatasyncs, "
          f"{stats['rolls']} rolls")
    assert stats["fdatasyncs"] <= stats["records"]


def test_group_commit_one_write_and_one_fdatasync_for_many_committers(store_dir):
    """All threads append, then all commit: the first becomes the leader and covers every
    one of them with one write and one fdatasync (counted through the syscall table)."""
    n, rounds = 16, 10
    rec = faults.Recorder()
    barrier = threading.Barrier(n, timeout=60)
    with faults.installed(rec):
        log = Log.open(store_dir, segment_bytes=SEG, interval_ms=60_000)
        base_sync = rec.count("fdatasync")
        base_write = rec.count("pwrite")

        def worker(i):
            for r in range(rounds):
                lsn = log.append(1, b"%d-%d" % (i, r))
                barrier.wait()
                log.sync(lsn)
                barrier.wait()

        ts = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        syncs = rec.count("fdatasync") - base_sync
        writes = rec.count("pwrite") - base_write
        log.close()
    assert syncs == rounds and writes == rounds
    with Log.open(store_dir, segment_bytes=SEG) as log:
        assert log.next_lsn == n * rounds + 1
