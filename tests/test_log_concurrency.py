"""Many threads committing at once: nothing lost, and group commit really batches."""

import contextlib
import errno
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from aurora_log.testing import faults
from aurora_log.errors import DurabilityError
from aurora_log.local.log import Log

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


class HeldCall(faults.Hook):
    """Holds the first segment call named `name` after arm() until release(err): the test
    then acts while that call is in flight."""

    def __init__(self, name="fdatasync"):
        self.name = name
        self.armed = False
        self.started = threading.Event()
        self._release = threading.Event()
        self._err = None
        self.calls = 0

    def arm(self):
        self.armed = True

    def release(self, err=None):
        self._err = err
        self._release.set()

    @property
    def released(self):
        return self._release.is_set()

    def before(self, op):
        if op.name != self.name or ".seg" not in (op.path or ""):
            return None
        self.calls += 1
        if not self.armed or self.started.is_set():
            return None
        self.started.set()
        assert self._release.wait(30), "the test never released the held call"
        return self._err


def _sync_in_thread(log, lsn):
    out = {}

    def run():
        try:
            log.sync(lsn)
            out["ok"] = True
        except BaseException as e:  # reported by the caller
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    return t, out


def test_write_through_does_not_wait_for_the_fdatasync_in_flight(store_dir):
    """The write stage and the sync stage overlap: while one fdatasync runs, the next
    records are written (a claim's write-through returns) and their own fdatasync follows."""
    hook = HeldCall()
    with faults.installed(hook):
        log = Log.open(store_dir, segment_bytes=SEG, interval_ms=60_000)
        hook.arm()
        a = log.append(1, b"a")
        ta, out_a = _sync_in_thread(log, a)
        assert hook.started.wait(30)
        b = log.append(1, b"b")
        log.write_through(b)                  # returns with A's fdatasync still held
        assert not out_a and ta.is_alive()
        c = log.append(1, b"c")
        tc, out_c = _sync_in_thread(log, c)
        tc.join(0.2)
        assert not out_c                      # a sync waiter still waits for the disk
        syncs_before = hook.calls
        hook.release()
        ta.join(30)
        tc.join(30)
        assert out_a == {"ok": True} and out_c == {"ok": True}
        assert hook.calls > syncs_before      # B and C needed an fdatasync of their own
        log.close()
    with Log.open(store_dir, segment_bytes=SEG) as log:
        assert [r[2] for r in log.scan()] == [b"a", b"b", b"c"]


def test_records_written_during_a_failed_fdatasync_are_never_acknowledged(store_dir):
    """A sync waiter whose records were written while an earlier fdatasync ran fails with
    it: a later fdatasync is never trusted after one failed (fsyncgate)."""
    hook = HeldCall()
    with faults.installed(hook):
        log = Log.open(store_dir, segment_bytes=SEG, interval_ms=60_000)
        hook.arm()
        ta, out_a = _sync_in_thread(log, log.append(1, b"a"))
        assert hook.started.wait(30)
        b = log.append(1, b"b")
        log.write_through(b)
        tb, out_b = _sync_in_thread(log, b)
        hook.release(errno.EIO)
        ta.join(30)
        tb.join(30)
        for out in (out_a, out_b):
            assert isinstance(out.get("error"), DurabilityError), out
            assert out["error"].errno == errno.EIO
        with pytest.raises(DurabilityError):
            log.append(1, b"c")
        with pytest.raises(DurabilityError):
            log.close()


@contextlib.contextmanager
def _first_commit_held(store_dir, hook, *, segment_bytes=SEG, first=b"a"):
    """A log whose first commit (of `first`, from another thread) is held in the hook's
    call. The body must release it; on exit that commit has succeeded and the log is closed."""
    with faults.installed(hook):
        log = Log.open(store_dir, segment_bytes=segment_bytes, interval_ms=60_000)
        hook.arm()
        ta, out_a = _sync_in_thread(log, log.append(1, first))
        assert hook.started.wait(30)
        yield log, ta
        ta.join(30)
        assert out_a == {"ok": True}
        log.close()


def _payloads(store_dir, segment_bytes=SEG):
    with Log.open(store_dir, segment_bytes=segment_bytes) as log:
        return [r[2] for r in log.scan()]


def test_a_claim_style_append_writes_on_its_own_thread_under_a_held_fdatasync(store_dir):
    """append_reserved(wait="written") with nobody writing writes the record itself,
    keeping the GIL, even while an fdatasync is in flight."""
    hook = HeldCall()
    with _first_commit_held(store_dir, hook) as (log, ta):
        lsn = log.reserve()
        writes = log.stats()["writes"]
        log.append_reserved(lsn, [(1, b"claim")], wait="written")
        assert log.stats()["writes"] == writes + 1 and ta.is_alive()
        hook.release()
    assert _payloads(store_dir) == [b"a", b"claim"]


def test_a_claim_style_append_waits_for_the_write_in_flight_without_the_gil(store_dir):
    """Another thread's write stage is in its pwrite: the append is queued behind it and
    waits with the GIL dropped (the thread that releases the pwrite must be able to run)."""
    hook = HeldCall("pwrite")
    with _first_commit_held(store_dir, hook) as (log, ta):
        releaser = threading.Timer(0.3, hook.release)
        releaser.start()
        lsn = log.reserve()
        log.append_reserved(lsn, [(1, b"claim")], wait="written")
        assert hook.released                 # it could not have been written before
        releaser.join()
    assert _payloads(store_dir) == [b"a", b"claim"]


def test_a_claim_style_append_that_needs_a_roll_leaves_it_to_a_gil_free_wait(store_dir):
    """A roll waits for the fdatasync in flight: a claim-style append that would roll must
    not do it holding the GIL (the thread releasing the fdatasync could never run, and
    nothing in that process could either: so it runs in a child with a deadline)."""
    code = ("import pathlib, sys; sys.path.insert(0, sys.argv[1]); "
            "import test_log_concurrency as t; "
            "t.roll_under_a_held_fdatasync(pathlib.Path(sys.argv[2]))")
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent),
                               str(store_dir)], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("deadlock: the append rolled while holding the GIL")
    assert proc.returncode == 0, proc.stderr


def roll_under_a_held_fdatasync(store_dir):
    seg = 4096
    hook = HeldCall()
    with _first_commit_held(store_dir, hook, segment_bytes=seg, first=b"a" * 1000) as (log, _):
        for i in range(2):            # fill the segment without writing
            log.append(1, bytes([i]) * 1000)
        releaser = threading.Timer(0.3, hook.release)
        releaser.start()
        lsn = log.reserve()
        log.append_reserved(lsn, [(1, b"c" * 1000)], wait="written")
        releaser.join()
        assert log.stats()["rolls"] >= 1
    assert [len(p) for p in _payloads(store_dir, seg)] == [1000] * 4


def test_a_roll_waiting_for_a_failed_fdatasync_does_no_fdatasync_of_its_own(store_dir):
    """A write stage that must roll waits for the fdatasync in flight; if that one fails,
    the roll must not fdatasync the old segment (a success after a failure proves nothing
    on Linux) nor start a new one: its committer fails too."""
    seg = 4096
    rec, hook = faults.Recorder(), HeldCall()
    with faults.installed(faults.Chain(rec, hook)):
        log = Log.open(store_dir, segment_bytes=seg, interval_ms=60_000)
        hook.arm()
        ta, out_a = _sync_in_thread(log, log.append(1, b"a" * 1000))
        assert hook.started.wait(30)
        for i in range(3):            # over the segment: the next write stage rolls
            last = log.append(1, bytes([i]) * 1000)
        tb, out_b = _sync_in_thread(log, last)
        tb.join(0.3)                  # B's roll waits for A's fdatasync
        hook.release(errno.EIO)
        ta.join(30)
        tb.join(30)
        for out in (out_a, out_b):
            assert isinstance(out.get("error"), DurabilityError), out
        with pytest.raises(DurabilityError):
            log.close()
    syncs = [op for op in rec.ops if op.name == "fdatasync" and op.path.endswith(".seg")]
    failed_at = next(i for i, op in enumerate(syncs) if op.errno)
    assert syncs[failed_at + 1:] == []
    assert log.stats()["rolls"] == 0
