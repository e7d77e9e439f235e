"""Where native/FORMAT.md and the code used to part ways (issue 14, spec items): the
segment .tmp is created O_EXCL, every directory goes through the syscall table, leftover
.broken temporaries are cleaned up, names are matched exactly (ASCII digits, no trailing
newline), stray directories are left alone or named in a clear error, and a writable open
on a read-only file system raises the package's error with the path."""

import errno
import os

import pytest

import aurora_log
from aurora_log import Job
from aurora_log.testing import faults
from aurora_log.errors import CorruptionError, ReadOnlyError
from aurora_log.local.log import Log


def _open_q(path, **kw):
    return aurora_log.open(path, reaper_interval=None, auto_compact=False, **kw)


def test_a_new_segment_tmp_is_created_exclusively(store_dir):
    rec = faults.Recorder()
    with faults.installed(rec):
        Log.open(store_dir, segment_bytes=4096).close()
    opens = [o for o in rec.ops if o.name == "open" and (o.path or "").endswith(".seg.tmp")]
    assert opens and all(o.flags & os.O_EXCL for o in opens)


def test_store_and_snapshot_directories_go_through_the_syscall_table(store_dir):
    rec = faults.Recorder()
    with faults.installed(rec), _open_q(store_dir) as q:
        q.enqueue(Job.new("x"))
        q.compact()
    made = {o.path for o in rec.ops if o.name == "mkdir" and o.errno == 0}
    assert {str(store_dir), str(store_dir / "wal"), str(store_dir / "snap")} <= made
    for d in (store_dir, store_dir / "wal", store_dir / "snap"):
        assert oct(os.stat(d).st_mode & 0o777) == "0o700"


def test_leftover_broken_temporaries_are_removed_at_open(store_dir):
    with _open_q(store_dir) as q:
        q.enqueue(Job.new("x"))
        q.compact()
    seg_tmp = store_dir / "wal" / "00000000000000000001.seg.broken-1.tmp"
    snap_tmp = store_dir / "snap" / "00000000000000000001.snap.broken.tmp"
    seg_tmp.write_bytes(b"half a kept tail")
    snap_tmp.write_bytes(b"half a set-aside snapshot")
    with _open_q(store_dir) as q:
        assert seg_tmp.name in q.log.report.removed_tmp
        assert snap_tmp.name in q.snapshot_report.removed_tmp
        assert len(q.list()) == 1
    assert not seg_tmp.exists() and not snap_tmp.exists()


@pytest.mark.parametrize("name", ["0000000000000000000\u0661.seg", "00000000000000000099.seg\n"])
def test_names_that_only_look_like_segments_are_not_segments(store_dir, name):
    with Log.open(store_dir) as log:
        log.commit([(1, b"a")])
    (store_dir / "wal" / name).write_bytes(b"junk")
    with Log.open(store_dir) as log:
        assert [bytes(p) for _, _, p in log.scan()] == [b"a"]
        assert log.report.segments == 1


@pytest.mark.parametrize("name", ["00000000000000000007.seg.tmp",
                                  "00000000000000000003.seg.unsynced",
                                  "00000000000000000001.seg.unsynced.tmp"])
def test_stray_directories_with_temporary_names_are_left_alone(store_dir, name):
    with Log.open(store_dir) as log:
        log.commit([(1, b"a")])
    os.mkdir(store_dir / "wal" / name)
    with Log.open(store_dir) as log:
        assert [bytes(p) for _, _, p in log.scan()] == [b"a"]
    assert (store_dir / "wal" / name).is_dir()


def test_a_directory_where_the_newest_segment_s_marker_goes_is_named(store_dir):
    with Log.open(store_dir) as log:
        log.commit([(1, b"a")])
    marker = store_dir / "wal" / "00000000000000000001.seg.unsynced"
    os.mkdir(marker)
    with pytest.raises(CorruptionError) as ei:
        Log.open(store_dir)
    assert ei.value.file == str(marker) and "not a regular file" in ei.value.reason


def test_a_stray_directory_named_like_a_snapshot_tmp_is_left_alone(store_dir):
    with _open_q(store_dir) as q:
        q.enqueue(Job.new("x"))
        q.compact()
    os.mkdir(store_dir / "snap" / "00000000000000000009.snap.tmp")
    with _open_q(store_dir) as q:
        assert len(q.list()) == 1
    assert (store_dir / "snap" / "00000000000000000009.snap.tmp").is_dir()


@pytest.mark.parametrize("where", ["wal/00000000000000000005.seg",
                                   "snap/00000000000000000005.snap"])
def test_a_directory_named_like_a_segment_or_snapshot_is_named_in_the_error(store_dir, where):
    with _open_q(store_dir) as q:
        q.enqueue(Job.new("x"))
    os.makedirs(store_dir / where)
    with pytest.raises(CorruptionError) as ei:
        _open_q(store_dir)
    assert ei.value.file == str(store_dir / where) and "regular file" in ei.value.reason


def test_a_writable_open_on_a_read_only_file_system_is_a_read_only_error(store_dir):
    Log.open(store_dir).close()
    with faults.installed(faults.FailNth(1, err=errno.EROFS, ops={"open"})), \
            pytest.raises(ReadOnlyError) as ei:
        Log.open(store_dir)
    assert str(store_dir) in str(ei.value) and "read_only=True" in str(ei.value)
    with Log.open(store_dir, read_only=True) as ro:
        assert list(ro.scan()) == []
