"""After a failed write or fdatasync the log leaves <segment>.unsynced (the offset the last
successful fdatasync reached), and the next open cuts the newest segment there: Linux may
have marked the failed pages clean ("fsyncgate"), so bytes a reopen reads from the page
cache may not be on the disk. native/FORMAT.md, recovery rule 3."""

import errno

import pytest

from aurora_log.testing import faults
from aurora_log.local._binding import lib
from aurora_log.errors import CorruptionError, DurabilityError
from aurora_log.local.log import UNSYNCED, Log

SEG = 1 << 20


def _markers(d):
    return sorted(p.name for p in (d / "wal").iterdir() if p.name.endswith(UNSYNCED))


def _fail_next_fdatasync(d):
    """Open, commit two records, then fail the fdatasync of the third. Returns the log."""
    log = Log.open(d, segment_bytes=SEG)
    log.commit([(1, b"one")])
    log.commit([(1, b"two")])
    with faults.installed(faults.FailNth(1, err=errno.EIO, ops={"fdatasync"})):
        with pytest.raises(DurabilityError):
            log.commit([(1, b"three, never acknowledged")])
    return log


def test_a_failed_fdatasync_leaves_a_marker_and_the_reopen_cuts_there(store_dir):
    log = _fail_next_fdatasync(store_dir)
    assert _markers(store_dir) == ["00000000000000000001.seg" + UNSYNCED]
    marked = int((store_dir / "wal" / _markers(store_dir)[0]).read_text())
    with pytest.raises(DurabilityError):
        log.close()
    with Log.open(store_dir, segment_bytes=SEG) as log:
        (cut,) = log.report.cuts
        assert cut.offset == marked and "fdatasync" in cut.reason and cut.kept_as
        assert cut.bytes > 0 and cut.lsn == 3
        assert [bytes(p) for _, _, p in log.scan()] == [b"one", b"two"]
        assert log.commit([(1, b"three again")]) == 3
    assert _markers(store_dir) == []                   # removed once the cut was durable
    with Log.open(store_dir, segment_bytes=SEG) as log:
        assert not log.report.cuts
        assert [bytes(p) for _, _, p in log.scan()] == [b"one", b"two", b"three again"]


def test_a_read_only_open_honours_the_marker_and_keeps_it(store_dir):
    log = _fail_next_fdatasync(store_dir)
    with pytest.raises(DurabilityError):
        log.close()
    with Log.open(store_dir, read_only=True) as ro:
        assert [bytes(p) for _, _, p in ro.scan()] == [b"one", b"two"]
        assert ro.report.cuts and ro.report.cuts[0].kept_as is None
    assert len(_markers(store_dir)) == 1


def test_a_marker_past_the_data_cuts_nothing_and_is_removed(store_dir):
    with Log.open(store_dir, segment_bytes=SEG) as log:
        log.commit([(1, b"a")])
    (store_dir / "wal" / ("00000000000000000001.seg" + UNSYNCED)).write_text("1000000\n")
    with Log.open(store_dir, segment_bytes=SEG) as log:
        assert not log.report.cuts
        assert [bytes(p) for _, _, p in log.scan()] == [b"a"]
    assert _markers(store_dir) == []


@pytest.mark.parametrize("text", ["", "garbage\n", "-5\n", "7\n"])
def test_an_unreadable_marker_is_corruption_naming_it(store_dir, text):
    with Log.open(store_dir, segment_bytes=SEG) as log:
        log.commit([(1, b"a")])
    marker = store_dir / "wal" / ("00000000000000000001.seg" + UNSYNCED)
    marker.write_text(text)
    with pytest.raises(CorruptionError) as ei:
        Log.open(store_dir, segment_bytes=SEG)
    assert ei.value.file == str(marker)


def test_a_failure_that_lost_no_write_leaves_no_marker(store_dir):
    log = Log.open(store_dir, segment_bytes=SEG)
    lib.au_writer_set_hole_timeout(log._w, 100)
    log.commit([(1, b"a")])
    log.reserve()                                       # never appended: the writer times out
    with pytest.raises(DurabilityError):
        log.append_reserved(log.reserve(), [(1, b"b")], wait="durable")
    with pytest.raises(DurabilityError):
        log.close()
    assert _markers(store_dir) == []


def test_a_marker_that_cannot_be_written_changes_nothing_else(store_dir):
    log = Log.open(store_dir, segment_bytes=SEG)
    log.commit([(1, b"a")])
    with faults.installed(faults.FailNth(1, err=errno.ENOSPC, persistent=True)):
        with pytest.raises(DurabilityError):
            log.commit([(1, b"b")])
        with pytest.raises(DurabilityError):
            log.close()
    assert _markers(store_dir) == []
    assert not [p for p in (store_dir / "wal").iterdir() if p.name.endswith(".tmp")]
    with Log.open(store_dir, segment_bytes=SEG) as log:
        assert [bytes(p) for _, _, p in log.scan()][0] == b"a"
