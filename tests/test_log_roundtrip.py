"""Round trips through the Log: append/append_many/sync/flush/scan/reopen, modes, rolls,
retirement, read_only, argument errors, file helpers."""

import subprocess
import sys
import textwrap

import pytest

from aurora_log.errors import ClosedError, DurabilityError, ReadOnlyError
from aurora_log.local.log import Log, read_file, remove_file, write_file_durably

from test_log_support import build, image, payload

SEG = 1 << 20  # small segments: a default 64 MiB one costs a zero-fill + fsync


def test_fresh_log(store_dir):
    with Log.open(store_dir) as log:
        assert log.first_lsn == 1 and log.next_lsn == 1
        assert list(log.scan()) == []
        assert log.report.records == 0 and not log.report.truncated
        assert log.directory == store_dir
        [seg] = log.segments()
        assert seg.first_lsn == 1 and seg.size == 64 << 20


def test_append_sync_scan_reopen(store_dir):
    with Log.open(store_dir, segment_bytes=SEG) as log:
        a = log.append(1, b"hello")
        b = log.append(255, b"")
        c = log.append_many([(2, b"x" * 1000), (3, bytearray(b"y")), (4, memoryview(b"zz"))])
        log.sync(c)
        assert (a, b, c) == (1, 2, 5)
        assert log.next_lsn == 6
        expect = [(1, 1, b"hello"), (2, 255, b""), (3, 2, b"x" * 1000), (4, 3, b"y"),
                  (5, 4, b"zz")]
        assert list(log.scan()) == expect
        assert list(log.scan(4)) == expect[3:]
    with Log.open(store_dir, segment_bytes=SEG) as log:
        assert list(log.scan()) == expect
        assert log.report.records == 5 and log.next_lsn == 6
        assert log.append(9, b"more") == 6


def test_scan_sees_unsynced_appends(store_dir):
    with Log.open(store_dir, segment_bytes=SEG) as log:
        log.append(1, b"a")
        assert [r[0] for r in log.scan()] == [1]


@pytest.mark.parametrize("durability", ["sync", "interval", "os"])
def test_modes_round_trip(store_dir, durability):
    with Log.open(store_dir, segment_bytes=SEG, durability=durability, interval_ms=5) as log:
        lsns = [log.append(1, payload(i)) for i in range(300)]
        log.sync(lsns[-1])
        log.flush()
    with Log.open(store_dir, segment_bytes=SEG, durability=durability) as log:
        assert [p for _, _, p in log.scan()] == [payload(i) for i in range(300)]


def test_segment_roll_and_big_records(store_dir):
    with Log.open(store_dir, segment_bytes=4096) as log:
        for i in range(100):
            log.sync(log.append(1, payload(i, 90)))
        big = b"B" * 10_000          # bigger than a segment: gets one of its own
        lsn_big = log.commit([(7, big)])
        many = [(2, payload(i, 300)) for i in range(20)]  # one call, over a segment
        last = log.commit(many)
        segs = log.segments()
        assert len(segs) > 3
        assert [s.first_lsn for s in segs] == sorted(s.first_lsn for s in segs)
        assert log.stats()["rolls"] == len(segs) - 1
    with Log.open(store_dir, segment_bytes=4096) as log:
        recs = list(log.scan())
        assert [r[0] for r in recs] == list(range(1, last + 1))
        assert recs[lsn_big - 1] == (lsn_big, 7, big)
        # the atomic call is inside one segment, so in one batch
        firsts = [s.first_lsn for s in log.segments()]
        inside = [f for f in firsts if last - len(many) + 1 < f <= last]
        assert inside == []


def test_retire_segments(store_dir, tmp_path):
    with Log.open(store_dir, segment_bytes=4096) as log:
        for i in range(200):
            log.sync(log.append(1, payload(i, 100)))
        segs = log.segments()
        cut = segs[2].first_lsn
        gone = log.retire_segments_before(cut)
        assert gone == [segs[0].path, segs[1].path]
        assert log.first_lsn == cut
        assert [r[0] for r in log.scan()][0] == cut
        arch = tmp_path / "archive"
        moved = log.retire_segments_before(10**9, archive_dir=arch)
        assert len(log.segments()) == 1          # never the segment being written
        assert sorted(p.name for p in arch.iterdir()) == [p.name for p in moved]
    with Log.open(store_dir, segment_bytes=4096) as log:
        assert log.first_lsn == log.segments()[0].first_lsn
        assert log.next_lsn == 201


def test_read_only_open_writes_nothing(store_dir):
    recs, _, _ = build(store_dir, 20)
    before = image(store_dir)
    log = Log.open(store_dir, segment_bytes=SEG, read_only=True)
    assert list(log.scan()) == recs and log.next_lsn == 21
    with pytest.raises(ReadOnlyError):
        log.append(1, b"x")
    # a read_only open does not take the lock
    with Log.open(store_dir, segment_bytes=SEG) as w:
        w.append(1, b"y")
    log.close()
    assert image(store_dir).keys() == before.keys()


def test_bad_arguments_raise_before_writing(store_dir):
    with Log.open(store_dir, segment_bytes=SEG, max_record_bytes=100) as log:
        for bad in (0, 256, -1, "1", 1.0):
            with pytest.raises(ValueError):
                log.append(bad, b"x")
        with pytest.raises(ValueError):
            log.append(1, b"x" * 101)
        with pytest.raises(ValueError):
            log.append_many([(1, b"ok"), (1, b"x" * 101)])
        with pytest.raises(TypeError):
            log.append_many([(1, "text")])
        assert log.next_lsn == 1
        log.append(1, b"x" * 100)
        assert log.append_many([]) == 1
    with pytest.raises(ValueError):
        Log.open(store_dir, segment_bytes=SEG, durability="maybe")


def test_closed_log(store_dir):
    log = Log.open(store_dir, segment_bytes=SEG)
    log.close()
    log.close()  # idempotent
    for call in (lambda: log.append(1, b"x"), lambda: log.sync(1), log.flush,
                 lambda: log.scan()):
        with pytest.raises(ClosedError):
            call()


def test_file_helpers(tmp_path):
    p = tmp_path / "snap.bin"
    write_file_durably(p, b"abc" * 1000)
    assert read_file(p) == b"abc" * 1000
    write_file_durably(p, b"new")
    assert read_file(p) == b"new"
    assert not (tmp_path / "snap.bin.tmp").exists()
    remove_file(p)
    assert not p.exists()
    with pytest.raises(FileNotFoundError):
        read_file(p)
    with pytest.raises(FileNotFoundError):
        remove_file(p)


def test_os_mode_killed_process_loses_nothing(store_dir):
    """os/interval mode: sync() returns after write(); a SIGKILL loses nothing."""
    code = textwrap.dedent(f"""
        import os, signal, sys
        from aurora_log.local.log import Log
        log = Log.open({str(store_dir)!r}, durability="os", interval_ms=60000)
        for i in range(50):
            log.sync(log.append(1, b"r%d" % i))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    subprocess.run([sys.executable, "-c", code], timeout=60)
    with Log.open(store_dir, segment_bytes=SEG) as log:
        assert [p for _, _, p in log.scan()] == [b"r%d" % i for i in range(50)]
        assert not log.report.truncated


def test_failed_writer_refuses_until_reopen_then_works(store_dir):
    from aurora_log.testing import faults
    Log.open(store_dir, segment_bytes=SEG).close()
    with faults.installed(faults.FailNth(1, ops={"pwrite"}, path_contains=".seg")) as f:
        log = Log.open(store_dir, segment_bytes=SEG)
        with pytest.raises(DurabilityError) as ei:
            log.sync(log.append(1, b"a"))
        assert ei.value.errno == 5 and log.failed and f.fired == 1
        with pytest.raises(DurabilityError):
            log.append(1, b"b")
        with pytest.raises(DurabilityError):
            log.close()
    with Log.open(store_dir, segment_bytes=SEG) as log:
        assert not log.failed
        log.sync(log.append(1, b"c"))
        assert [p for _, _, p in log.scan()][-1] == b"c"


def _wait_for(cond, timeout=30.0):
    import time
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "background thread did not act"
        time.sleep(0.005)


def test_interval_mode_background_fdatasync(store_dir):
    with Log.open(store_dir, segment_bytes=SEG, durability="interval", interval_ms=10) as log:
        base = log.stats()["fdatasyncs"]
        log.sync(log.append(1, b"a"))     # returns after write(), before any fdatasync
        _wait_for(lambda: log.stats()["fdatasyncs"] > base)


def test_os_mode_never_fsyncs_until_flush(store_dir):
    with Log.open(store_dir, segment_bytes=SEG, durability="os", interval_ms=1) as log:
        base = log.stats()["fdatasyncs"]
        for _i in range(20):
            log.sync(log.append(1, b"a"))
        log.append(1, b"unsynced")              # the background thread writes it
        _wait_for(lambda: log.stats()["records"] == 21)
        assert log.stats()["fdatasyncs"] == base
        log.flush()
        assert log.stats()["fdatasyncs"] == base + 1


def test_sync_mode_background_writes_records_nobody_waits_for(store_dir):
    with Log.open(store_dir, segment_bytes=SEG, interval_ms=5) as log:
        log.append(1, b"fire and forget")
        _wait_for(lambda: log.stats()["records"] == 1)


def test_dropped_log_releases_its_lock(store_dir):
    import gc
    log = Log.open(store_dir, segment_bytes=SEG)
    log.append(1, b"x")
    del log
    gc.collect()
    with Log.open(store_dir, segment_bytes=SEG) as log:
        assert list(log.scan()) == [(1, 1, b"x")]


def test_sync_mode_fdatasyncs_what_a_write_through_left_unsynced(store_dir):
    """A record written (a claim's write-through) but not fdatasynced, with nothing after it:
    the background thread's timer fdatasyncs it within interval_ms in sync mode too, so a
    durable=False complete that rode a claim's write is never unsynced for long."""
    with Log.open(store_dir, segment_bytes=SEG, interval_ms=5) as log:
        base = log.stats()["fdatasyncs"]
        log.write_through(log.append(1, b"written, nobody waits for the disk"))
        _wait_for(lambda: log.stats()["fdatasyncs"] > base)
