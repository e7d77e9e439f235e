"""LSNs reserved in Python, records appended later (Log.reserve / append_reserved).

The queue reserves LSNs under its lock and appends after leaving it, so ranges can reach
the C writer out of order: an early range is parked until the gap before it fills. A
range that never arrives must fail the writer (not hang every later commit), and a range
the writer refuses must fail it too (its LSNs are taken).
"""

import random
import threading
import time

import pytest

from aurora_log.local._binding import lib
from aurora_log.errors import DurabilityError
from aurora_log.local.log import Log

SEG = 64 << 10


def _stored(path):
    with Log.open(path, segment_bytes=SEG) as log:
        return [(lsn, t, bytes(p)) for lsn, t, p in log.scan()]


def test_a_range_that_arrives_early_waits_for_the_gap(store_dir):
    with Log.open(store_dir, segment_bytes=SEG) as log:
        a = log.reserve(2)
        b = log.reserve(1)
        assert (a, b) == (1, 3)
        log.append_reserved(b, [(3, b"third")])             # parked: 1 and 2 are missing
        log.append_reserved(a, [(1, b"first"), (2, b"second")], wait="durable")
        log.sync(b)
    assert _stored(store_dir) == [(1, 1, b"first"), (2, 2, b"second"), (3, 3, b"third")]


def test_a_committer_waiting_behind_a_gap_returns_once_it_fills(store_dir):
    with Log.open(store_dir, segment_bytes=SEG) as log:
        a, b = log.reserve(), log.reserve()
        done = []
        t = threading.Thread(target=lambda: done.append(
            log.append_reserved(b, [(1, b"b")], wait="durable")))
        t.start()
        time.sleep(0.05)
        assert not done                                      # LSN 1 has not arrived
        log.append_reserved(a, [(1, b"a")])
        t.join(10)
        assert done == [b]
    assert [p for _, _, p in _stored(store_dir)] == [b"a", b"b"]


def test_a_reserved_range_that_never_arrives_fails_the_writer(store_dir):
    log = Log.open(store_dir, segment_bytes=SEG)
    lib.au_writer_set_hole_timeout(log._w, 200)
    log.append(1, b"before")
    log.flush()
    log.reserve()                                             # ...and never appended
    late = log.reserve()
    t0 = time.monotonic()
    with pytest.raises(DurabilityError, match="timed out"):
        log.append_reserved(late, [(1, b"after the hole")], wait="durable")
    assert time.monotonic() - t0 < 10
    assert log.failed
    with pytest.raises(DurabilityError):
        log.append(1, b"refused")
    with pytest.raises(DurabilityError):                     # close reports it too
        log.close()
    assert _stored(store_dir) == [(1, 1, b"before")]         # acknowledged data kept


def test_appending_a_range_twice_fails_the_writer(store_dir):
    log = Log.open(store_dir, segment_bytes=SEG)
    lsn = log.reserve()
    log.append_reserved(lsn, [(1, b"once")], wait="durable")
    with pytest.raises(ValueError):
        log.append_reserved(lsn, [(1, b"twice")])
    assert log.failed
    with pytest.raises(DurabilityError):
        log.close()
    assert _stored(store_dir) == [(1, 1, b"once")]


def test_a_refused_reserved_record_fails_the_writer_instead_of_leaving_a_hole(store_dir):
    log = Log.open(store_dir, segment_bytes=SEG, max_record_bytes=1024)
    lsn = log.reserve()
    with pytest.raises(ValueError):
        log.append_reserved(lsn, [(1, b"x" * 2048)])         # skipped check_records()
    assert log.failed
    with pytest.raises(DurabilityError):
        log.reserve()                                         # refused before reserving
    with pytest.raises(DurabilityError):
        log.close()


def test_bad_records_are_refused_before_any_lsn_is_reserved(store_dir):
    with Log.open(store_dir, segment_bytes=SEG, max_record_bytes=1024) as log:
        for bad in ([(0, b"x")], [(256, b"x")], [(1, "str")], [(1, b"x" * 2048)], []):
            with pytest.raises((TypeError, ValueError)):
                log.check_records(bad)
            with pytest.raises((TypeError, ValueError)):
                log.commit(bad) if bad else log.check_records(bad)
        assert log.next_lsn == 1 and not log.failed
        assert log.commit([(1, b"ok")]) == 1


def test_sync_of_an_lsn_never_reserved_is_a_value_error(store_dir):
    with Log.open(store_dir, segment_bytes=SEG) as log:
        log.commit([(1, b"x")])
        with pytest.raises(ValueError, match="never appended"):
            log.sync(5)
        assert not log.failed


@pytest.mark.parametrize("seed", range(3))
def test_threads_appending_reserved_ranges_in_random_order_lose_nothing(store_dir, seed):
    rng = random.Random(seed)
    jobs = [[(1 + rng.randrange(3), b"r%d-%d" % (i, k)) for k in range(1 + rng.randrange(4))]
            for i in range(400)]
    order = threading.Lock()
    expected = []
    with Log.open(store_dir, segment_bytes=SEG) as log:
        def worker(batch, delay, wait):
            with order:                     # reserve and note, in LSN order
                first = log.reserve(len(batch))
                expected.append((first, batch))
            time.sleep(delay)               # ...and arrive in any order
            log.append_reserved(first, batch, wait=wait)

        ts = [threading.Thread(target=worker, args=(b, rng.random() * 0.002,
                                                    rng.choice(["none", "written", "durable"])))
              for b in jobs]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        log.flush()
    want = [(first + k, t, p) for first, batch in sorted(expected)
            for k, (t, p) in enumerate(batch)]
    assert _stored(store_dir) == want


def test_the_non_waiting_append_keeps_the_gil_and_still_reports_errors(store_dir):
    from aurora_log.local._binding import append_now1_keeping_gil
    assert append_now1_keeping_gil is not None      # the fast path is what runs here
    log = Log.open(store_dir, segment_bytes=SEG)
    first = log.reserve(2)
    log.append_reserved(first + 1, [(1, b"second")])             # parked, GIL kept
    log.append_reserved(first, [(1, b"first")], wait="durable")
    lsn = log.reserve()
    log.append_reserved(lsn, [(1, b"third")])
    with pytest.raises(ValueError):
        log.append_reserved(lsn, [(1, b"again")])                # refused: fails the writer
    with pytest.raises(DurabilityError):
        log.append_reserved(lsn + 1, [(1, b"after")])            # C says: failed
    with pytest.raises(DurabilityError):
        log.close()
    stored = [p for _, _, p in _stored(store_dir)]
    # "third" was never acknowledged: the failure may have come before a round wrote it
    assert stored in ([b"first", b"second"], [b"first", b"second", b"third"])


def test_close_waits_for_a_range_reserved_before_it(store_dir):
    log = Log.open(store_dir, segment_bytes=SEG)
    lsn = log.reserve()
    t = threading.Timer(0.2, lambda: log.append_reserved(lsn, [(1, b"in flight")]))
    t.start()
    t0 = time.monotonic()
    log.close()                       # must not refuse the in-flight range (nor stall 30 s)
    t.join()
    assert time.monotonic() - t0 < 10
    assert _stored(store_dir) == [(1, 1, b"in flight")]


@pytest.mark.parametrize("bad", [(300, b"x"), (1, "str"), (0, b"x"), 5, ()])
def test_a_bad_single_reserved_record_fails_the_writer_at_once(store_dir, bad):
    """A refused one-record range must not leave a hole that stalls every later commit
    for the hole timeout, nor reach C with its type cut to 8 bits (300 -> 44)."""
    log = Log.open(store_dir, segment_bytes=SEG)
    log.commit([(1, b"before")])
    lsn = log.reserve()
    with pytest.raises((TypeError, ValueError)):
        log.append_reserved(lsn, [bad], wait="written")
    assert log.failed
    with pytest.raises(DurabilityError):
        log.close()
    assert _stored(store_dir) == [(1, 1, b"before")]
