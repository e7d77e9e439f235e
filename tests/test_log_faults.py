"""I/O errors through the syscall table: EIO/ENOSPC at the Nth syscall (every N, transient
and persistent), failed fdatasync, short writes and EINTR."""

import errno
import threading

import pytest

from aurora_log.testing import faults
from aurora_log.errors import DurabilityError, LockedError
from aurora_log.local.log import Log, read_file, write_file_durably

from test_log_support import payload

SEG = 1 << 20  # small segments: a default 64 MiB one costs a zero-fill + fsync


def workload(d, acked):
    """A small workload touching every kind of op: create, commits, a roll, close, reopen."""
    log = Log.open(d, segment_bytes=4096)
    try:
        for i in range(3):
            lsn = log.append(1, payload(i))
            log.sync(lsn)
            acked.append((lsn, 1, payload(i)))
        many = [(2, payload(10 + i, 150)) for i in range(20)]   # over the segment: a roll
        last = log.append_many(many)
        log.sync(last)
        acked.extend((last - len(many) + 1 + k, t, p) for k, (t, p) in enumerate(many))
        log.flush()
    finally:
        log.close()
    with Log.open(d, segment_bytes=4096) as log:
        lsn = log.append(3, b"again")
        log.sync(lsn)
        acked.append((lsn, 3, b"again"))


def count_ops(tmp_path):
    rec = faults.Recorder()
    with faults.installed(rec):
        workload(tmp_path / "count", [])
    return len(rec.ops)


@pytest.fixture(scope="module")
def n_ops(tmp_path_factory):
    return count_ops(tmp_path_factory.mktemp("count"))


@pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC])
@pytest.mark.parametrize("persistent", [False, True], ids=["transient", "persistent"])
def test_error_at_every_nth_syscall(tmp_path, n_ops, err, persistent):
    assert 40 < n_ops < 400
    outcomes = {"raised": 0, "completed": 0}
    for n in range(1, n_ops + 1):
        d = tmp_path / f"s{n}"
        acked = []
        hook = faults.FailNth(n, err=err, persistent=persistent)
        with faults.installed(hook):
            try:
                workload(d, acked)
                outcomes["completed"] += 1
            except (DurabilityError, OSError, LockedError) as e:
                outcomes["raised"] += 1
                if isinstance(e, DurabilityError):
                    assert e.errno in (err, None)
        assert hook.fired >= 1
        if not d.exists():
            continue
        # recovery without faults: opens (never CorruptionError), keeps every acknowledged
        # record, and what it has is an exact prefix of what was issued (no phantoms)
        with Log.open(d, segment_bytes=4096) as log:
            got = list(log.scan())
        assert got[:len(acked)] == acked, n
        issued_prefix = acked + got[len(acked):]
        assert [r[0] for r in got] == list(range(1, len(got) + 1))
        assert got == issued_prefix[:len(got)]
    print(f"{n_ops} ops x err={err} persistent={persistent}: {outcomes}")
    assert outcomes["raised"] >= n_ops // 2


def test_failed_fdatasync_acknowledges_nobody_in_its_batch(store_dir):
    Log.open(store_dir, segment_bytes=SEG).close()
    # the writer's opening fdatasync is the first; fail the second = the first commit
    hook = faults.FailNth(2, ops={"fdatasync"}, path_contains=".seg")
    with faults.installed(hook):
        log = Log.open(store_dir, segment_bytes=SEG)
        a = log.append(1, b"a")
        b = log.append(1, b"b")
        c = log.append(1, b"c")
        with pytest.raises(DurabilityError) as ei:
            log.sync(c)
        assert ei.value.errno == errno.EIO
        for lsn in (a, b, c):   # nobody in the batch is acknowledged, not even on retry
            with pytest.raises(DurabilityError):
                log.sync(lsn)
        with pytest.raises(DurabilityError):
            log.append(1, b"d")
        with pytest.raises(DurabilityError):
            log.flush()
        assert log.failed
        assert hook.fired == 1      # never retried: exactly one failed fdatasync
        with pytest.raises(DurabilityError):
            log.close()
    with Log.open(store_dir, segment_bytes=SEG) as log:
        assert not log.failed
        log.sync(log.append(1, b"e"))


def test_failed_fdatasync_fails_every_thread_of_the_batch(store_dir):
    Log.open(store_dir, segment_bytes=SEG).close()
    n = 8
    hook = faults.FailNth(2, ops={"fdatasync"}, path_contains=".seg")
    results = [None] * n
    barrier = threading.Barrier(n, timeout=60)
    with faults.installed(hook):
        # a long interval keeps the background thread from committing the pending records
        # on its own before the threads do
        log = Log.open(store_dir, segment_bytes=SEG, interval_ms=60_000)

        def worker(i):
            lsn = log.append(1, b"t%d" % i)
            barrier.wait()           # all appended before anyone commits: one batch
            try:
                log.sync(lsn)
                results[i] = "ok"
            except DurabilityError:
                results[i] = "error"

        ts = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        with pytest.raises(DurabilityError):
            log.close()
    assert results == ["error"] * n and hook.fired == 1


def test_fdatasync_eintr_is_final_not_retried(store_dir):
    Log.open(store_dir, segment_bytes=SEG).close()
    hook = faults.FailNth(2, err=errno.EINTR, ops={"fdatasync"}, path_contains=".seg")
    with faults.installed(hook):
        log = Log.open(store_dir, segment_bytes=SEG)
        with pytest.raises(DurabilityError):
            log.sync(log.append(1, b"x"))
        with pytest.raises(DurabilityError):
            log.close()
    assert hook.fired == 1


def test_short_writes_and_eintr_are_retried(store_dir):
    rec = faults.Recorder()
    short = faults.ShortWrites(7)
    eintr = faults.Eintr(3, ops=("pwrite", "pread", "open", "flock", "ftruncate"))
    acked = []
    with faults.installed(faults.Chain(short, eintr, rec)):
        workload(store_dir, acked)
        write_file_durably(store_dir / "blob", b"0123456789" * 10)
        assert read_file(store_dir / "blob") == b"0123456789" * 10
    assert short.shortened > 10 and eintr.fired > 10
    with Log.open(store_dir, segment_bytes=4096) as log:
        assert list(log.scan()) == acked
        assert not log.report.truncated


def test_enospc_on_every_write_then_space_returns(store_dir):
    Log.open(store_dir, segment_bytes=SEG).close()
    with faults.installed(faults.FailNth(1, err=errno.ENOSPC, ops={"pwrite"}, persistent=True)):
        log = Log.open(store_dir, segment_bytes=SEG)
        with pytest.raises(DurabilityError) as ei:
            log.sync(log.append(1, b"x"))
        assert ei.value.errno == errno.ENOSPC
        assert list(log.scan()) == []       # reads keep working
        with pytest.raises(DurabilityError):
            log.close()
    with Log.open(store_dir, segment_bytes=SEG) as log:
        assert list(log.scan()) == []
        log.sync(log.append(1, b"y"))


def test_recorder_sees_every_kind_of_op(store_dir):
    rec = faults.Recorder()
    with faults.installed(rec):
        workload(store_dir, [])
    names = set(rec.names())
    assert {"open", "close", "pwrite", "pread", "fdatasync", "fsync", "rename", "mkdir",
            "flock"} <= names
    writes = [o for o in rec.ops if o.name == "pwrite"]
    assert all(o.path and o.data is not None and o.offset is not None for o in writes)
    assert any(o.name == "fsync" and o.is_dir for o in rec.ops)   # directory fsync
    assert [o.seq for o in rec.ops] == sorted(o.seq for o in rec.ops)
