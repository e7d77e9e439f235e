"""Zero-filling ahead (native/FORMAT.md "Preallocation, rolling, end of data"): a segment
bigger than the initial fill gets its size with ftruncate (the rest is a hole, read as
zeros) and only its first step + ahead bytes as written zeros; every batch that moves the
end of data past a step boundary writes zeros up to `ahead` bytes beyond it. So the disk
holds the data plus a few MiB, not whole preallocated segments, while fdatasyncs still land
on blocks an earlier fdatasync allocated.

Covered here, in both store modes (exclusive writer, shared append path): the created file
(size, header, zeros, holes, the ftruncate before the fsync), the zeros kept ahead after
every batch and never over data, a failed zero-fill write (ENOSPC, EIO) that does not fail
the writer, a failed ftruncate at a segment's creation (the writer fails, as a failed
zero-fill write did before) and at a spare's (the spare is dropped, the log carries on),
and power cuts at every syscall of a rolling workload with holes in every segment.

The tests shrink step and ahead (au_set_fill_ahead) so that small segments have holes.
"""

from __future__ import annotations

import errno
import os
import struct

import pytest

from aurora_log.errors import DurabilityError
from aurora_log.local._binding import lib
from aurora_log.local.log import Log
from aurora_log.local.sharedlog import SharedLog
from aurora_log.testing import faults

STEP, AHEAD = 4096, 8192
SEG = 256 << 10
REC = (1, b"p" * 983)              # one record a batch: 32 + 17 + 983 = 1032 bytes
BATCH = 1032                       # never a multiple of 4096: zero fills are the only
                                   # segment pwrites whose size is


@pytest.fixture
def small_fill():
    lib.au_set_fill_ahead(STEP, AHEAD)
    yield
    lib.au_set_fill_ahead(0, lib.AU_FILL_AHEAD)


def _open(d, shared: bool, **kw):
    return (SharedLog if shared else Log).open(d, segment_bytes=SEG, **kw)


def _up(x: int) -> int:
    return (x + STEP - 1) // STEP * STEP


def _segments(d):
    return sorted((d / "wal").glob("*.seg"))


class _FailZeroFills(faults.Hook):
    """Fails every zero-fill-ahead pwrite of a live segment (size a multiple of 4096) with
    `err`; a batch (1032 bytes) or a header is never such a write."""

    def __init__(self, err: int):
        self.err = err
        self.fired = 0

    def before(self, op):
        if (op.name == "pwrite" and (op.path or "").endswith(".seg") and op.size and
                op.size % STEP == 0):
            self.fired += 1
            return self.err
        return None


def test_default_fill_sizes_are_the_documented_ones():
    assert lib.AU_FILL_STEP == 1 << 20 and lib.AU_FILL_AHEAD == 4 << 20
    assert lib.au_fill_initial() == 5 << 20


def test_segment_create_sizes_by_ftruncate_and_writes_only_the_initial_zeros(tmp_path,
                                                                              small_fill):
    wal = tmp_path / "wal"
    wal.mkdir()
    rec = faults.Recorder()
    with faults.installed(rec):
        assert lib.au_segment_create(os.fsencode(str(wal)), 7, SEG, 4096) == 0
    path = wal / f"{7:020d}.seg"
    data = path.read_bytes()
    assert len(data) == SEG and data[32:] == bytes(SEG - 32)
    assert data[:8] != bytes(8)                              # the header
    names = [o.name for o in rec.ops if (o.path or "").endswith(".seg.tmp")]
    assert names.index("ftruncate") < names.index("fsync")   # size durable with the fsync
    trunc = [o for o in rec.ops if o.name == "ftruncate"]
    assert len(trunc) == 1 and trunc[0].size == SEG
    written = sum(o.size for o in rec.ops if o.name == "pwrite")
    assert written == STEP + AHEAD                           # header + zeros to 12 KiB
    with open(path, "rb") as f:
        assert os.lseek(f.fileno(), 0, os.SEEK_HOLE) == STEP + AHEAD
    assert path.stat().st_blocks * 512 < SEG // 2


def test_a_segment_no_bigger_than_the_initial_fill_is_written_whole(tmp_path):
    wal = tmp_path / "wal"
    wal.mkdir()
    rec = faults.Recorder()
    with faults.installed(rec):
        assert lib.au_segment_create(os.fsencode(str(wal)), 1, 64 << 10, 4096) == 0
    assert rec.count("ftruncate") == 0
    assert sum(o.size for o in rec.ops if o.name == "pwrite") == 64 << 10


@pytest.mark.parametrize("shared", [False, True], ids=["exclusive", "shared"])
def test_zeros_stay_ahead_of_every_batch_and_never_cover_data(store_dir, small_fill, shared):
    log = _open(store_dir, shared)
    try:
        seg = _segments(store_dir)[0]
        with open(seg, "rb") as f:
            for k in range(1, 200):
                log.commit([REC])
                end = 32 + k * BATCH
                want = min(SEG, _up(end) + AHEAD)
                hole = os.lseek(f.fileno(), end, os.SEEK_HOLE)
                assert hole >= want, (k, end, hole, want)
                # and not much more: the file is not filled to its size
                assert hole <= _up(end) + AHEAD + STEP, (k, end, hole)
        # allocated: the data and the zeros ahead, not the segment's size
        assert seg.stat().st_blocks * 512 <= _up(end) + AHEAD + STEP < SEG
    finally:
        log.close()
    with _open(store_dir, shared) as log:
        got = list(log.scan())
    assert [r[0] for r in got] == list(range(1, 200))
    assert all(p == REC[1] for _, _, p in got)


@pytest.mark.parametrize("shared", [False, True], ids=["exclusive", "shared"])
def test_a_batch_longer_than_the_zeros_ahead_keeps_its_bytes(store_dir, small_fill, shared):
    """A batch that lands past the zeros ahead (bigger than `ahead`) crosses several steps:
    the zeros written after it start at its end, never inside it."""
    sizes = [983, 20_000, 983, 983, 30_001, 5_000, 983, 41_000, 983]
    recs = [(1, bytes([i % 251 + 1]) * n) for i, n in enumerate(sizes)]
    with _open(store_dir, shared) as log:
        for r in recs:
            log.commit([r])
    with _open(store_dir, shared) as log:
        got = [p for _, _, p in log.scan()]
    assert got == [p for _, p in recs]


@pytest.mark.parametrize("shared", [False, True], ids=["exclusive", "shared"])
@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
def test_a_failed_zero_fill_does_not_fail_the_writer(store_dir, small_fill, shared, err):
    """Every fill-ahead write fails: batches land in holes (rolls included), and all of them
    are acknowledged and read back."""
    hook = _FailZeroFills(err)
    with faults.installed(hook):
        log = _open(store_dir, shared)
        try:
            n = 3 * SEG // BATCH            # about three segments: rolls into holes too
            for _ in range(n):
                log.commit([REC])
            assert not log.failed
        finally:
            log.close()
    assert hook.fired > 10
    assert len(_segments(store_dir)) >= 3
    with _open(store_dir, shared) as log:
        got = list(log.scan())
        assert not log.report.cuts
    assert [r[0] for r in got] == list(range(1, n + 1))


@pytest.mark.parametrize("shared", [False, True], ids=["exclusive", "shared"])
def test_a_failed_ftruncate_at_a_roll_fails_the_writer_and_loses_nothing(store_dir,
                                                                         small_fill, shared):
    # the 1st is the first segment's (at open), the 2nd the roll's
    fail = faults.FailNth(2, ops={"ftruncate"}, err=errno.ENOSPC, path_contains=".seg.tmp")
    acked = 0
    with faults.installed(fail):
        log = _open(store_dir, shared)
        try:
            with pytest.raises(DurabilityError):
                for _ in range(2 * SEG // BATCH):
                    log.commit([REC])
                    acked += 1
        finally:
            try:
                log.close()
            except DurabilityError:
                pass
    assert fail.fired == 1
    assert not list((store_dir / "wal").glob("*.tmp"))       # the unused .tmp is unlinked
    with _open(store_dir, shared) as log:
        got = list(log.scan())
    assert len(got) >= acked > 0
    assert all(p == REC[1] for _, _, p in got)


def test_a_failed_ftruncate_of_the_spare_drops_it_and_the_log_carries_on(store_dir,
                                                                         small_fill):
    lib.au_set_spare_min_bytes(0)
    try:
        spare = "00000000000000000000.seg.tmp"
        fail = faults.FailNth(1, ops={"ftruncate"}, err=errno.EIO, path_contains=spare)
        with faults.installed(fail):
            with Log.open(store_dir, segment_bytes=SEG) as log:
                n = 3 * SEG // BATCH
                for _ in range(n):
                    log.commit([REC])
                st = log.stats()
        assert fail.fired == 1
        assert st["spare_errors"] == 1 and st["rolls"] >= 2 and st["spare_rolls"] >= 1
        with Log.open(store_dir, segment_bytes=SEG) as log:
            assert len(list(log.scan())) == n
    finally:
        lib.au_set_spare_min_bytes(2 << 20)


def test_a_spare_gets_its_size_and_only_the_initial_zeros(store_dir, small_fill):
    lib.au_set_spare_min_bytes(0)
    try:
        with Log.open(store_dir, segment_bytes=SEG) as log:
            while lib.au_writer_spare_state(log._w) != lib.AU_SPARE_READY:
                log.commit([REC])
            spare = store_dir / "wal" / "00000000000000000000.seg.tmp"
            assert spare.stat().st_size == SEG and spare.read_bytes() == bytes(SEG)
            with open(spare, "rb") as f:
                assert os.lseek(f.fileno(), 0, os.SEEK_HOLE) == STEP + AHEAD
            while log.stats()["spare_rolls"] == 0:
                log.commit([REC])
        segs = _segments(store_dir)
        hdr = segs[1].read_bytes()[:32]
        assert hdr[:8] != bytes(8) and struct.unpack_from("<Q", hdr, 8) != (0,)
    finally:
        lib.au_set_spare_min_bytes(2 << 20)


@pytest.mark.parametrize("exclusive", [False, True], ids=["shared", "exclusive"])
def test_power_cut_at_every_syscall_with_holes_in_every_segment(tmp_path, exclusive):
    """The rolls workload (~1 KiB jobs, three rolls or more) with 16 KiB segments of which
    only the first 3 KiB are written at creation: every batch after that lands on zeros
    written ahead (or in a hole), and power cuts at every syscall (tests/crashsim.py models
    ftruncate: the size and its zeros are durable only after an fsync) lose nothing
    acknowledged."""
    from test_powerloss import _report
    from test_powerloss_support import fast_dir, cleanup_fast_dirs, record, replay, rolls

    root = fast_dir(tmp_path)
    lib.au_set_fill_ahead(1024, 2048)
    try:
        rc = record(root / "rec", rolls, durability="sync", seed=7, segment_bytes=16 << 10,
                    exclusive=exclusive)
        names = [op.name for op in rc.rec.ops]
        assert names.count("ftruncate") >= 4          # the first segment and three rolls
        s = replay(root, rc, ("drop", "torn", "subset"), seed=7, drain=True)
        _report(f"fill-ahead rolls/{'exclusive' if exclusive else 'shared'}", s)
    finally:
        lib.au_set_fill_ahead(0, lib.AU_FILL_AHEAD)
        cleanup_fast_dirs()


def test_crashsim_models_a_file_sized_by_ftruncate(tmp_path):
    """The power-cut model behind the test above: a size set by ftruncate is lost with an
    unsynced file (as are its zeros) and survives an fsync, as zeros up to that size; a
    write into the hole after it is lost until its own fdatasync."""
    from crashsim import DiskModel, FsRecorder

    root = tmp_path / "r"
    root.mkdir()
    rec = FsRecorder(root)
    path = os.fsencode(str(root / "s"))
    with faults.installed(rec):
        fd = lib.au_open(path, os.O_RDWR | os.O_CREAT, 0o600)
        lib.au_fsync_dir(os.fsencode(str(root)))
        lib.au_pwrite_full(fd, b"H" * 32, 32, 0)
        lib.au_ftruncate(fd, 1 << 16)
        p1 = rec.done
        lib.au_fsync(fd)
        p2 = rec.done
        lib.au_pwrite_full(fd, b"data", 4, 40_000)        # into the hole
        p3 = rec.done
        lib.au_fdatasync(fd)
        lib.au_close(fd)
    m = DiskModel(rec)
    m.advance_to(p1)
    assert m.crash_image("drop")["s"] == b""
    assert m.crash_image("keep")["s"] == b"H" * 32 + bytes((1 << 16) - 32)
    m.advance_to(p2)
    assert m.crash_image("drop")["s"] == b"H" * 32 + bytes((1 << 16) - 32)
    m.advance_to(p3)
    assert m.crash_image("drop")["s"] == b"H" * 32 + bytes((1 << 16) - 32)
    m.advance_to(len(rec.ops))
    img = m.crash_image("drop")["s"]
    assert len(img) == 1 << 16 and img[40_000:40_004] == b"data"
