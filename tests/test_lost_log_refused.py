"""A store whose log is gone (or ends before a valid snapshot) is refused, never opened
empty, and its snapshots stay where they are. Issue 14, item 3, and the "past the end of
the log" rule of native/FORMAT.md (snapshot checks)."""

import os
import shutil

import pytest

import aurora_log
from aurora_log import Job
from aurora_log.errors import CorruptionError


def _open(path, **kw):
    return aurora_log.open(path, reaper_interval=None, auto_compact=False, **kw)


def _store_with_snapshots(d, jobs=300):
    with _open(d) as q:
        q.enqueue_many(Job.new("x").add_field("i", i) for i in range(jobs))
        q.compact()
        q.enqueue(Job.new("x").add_field("i", -1))
        q.compact()
    return sorted(os.listdir(d / "snap"))


@pytest.mark.parametrize("how", ["segments deleted", "wal removed"])
@pytest.mark.parametrize("read_only", [False, True])
def test_snapshots_without_a_log_are_refused_and_kept(store_dir, how, read_only):
    snaps = _store_with_snapshots(store_dir)
    assert len(snaps) == 2
    if how == "wal removed":
        shutil.rmtree(store_dir / "wal")
    else:
        for name in os.listdir(store_dir / "wal"):
            os.unlink(store_dir / "wal" / name)
    with pytest.raises(CorruptionError) as ei:
        _open(store_dir, read_only=read_only)
    assert "wal" in str(ei.value) and "snapshot" in str(ei.value)
    assert sorted(os.listdir(store_dir / "snap")) == snaps       # nothing renamed .broken
    wal = store_dir / "wal"
    assert not wal.exists() or os.listdir(wal) == []            # no empty log was created


def test_a_valid_snapshot_past_the_end_of_the_log_is_refused_not_set_aside(tmp_path):
    big, small = tmp_path / "big", tmp_path / "small"
    with _open(big) as q:
        q.enqueue_many(Job.new("x").add_field("i", i) for i in range(50))
        q.compact()
    with _open(small) as q:
        q.enqueue(Job.new("x"))
    (name,) = os.listdir(big / "snap")
    os.makedirs(small / "snap", mode=0o700, exist_ok=True)
    shutil.copy(big / "snap" / name, small / "snap" / name)
    with pytest.raises(CorruptionError) as ei:
        _open(small)
    assert "lost records" in str(ei.value) and name in str(ei.value)
    assert os.listdir(small / "snap") == [name]


@pytest.mark.parametrize("bad", ["0000000000000000000\u0663.snap", "00000000000000000001.snap\n"])
def test_names_that_only_look_like_snapshots_are_not_snapshots(store_dir, bad):
    with _open(store_dir) as q:
        q.enqueue(Job.new("x"))
    os.makedirs(store_dir / "snap", mode=0o700, exist_ok=True)
    (store_dir / "snap" / bad).write_bytes(b"junk")
    with _open(store_dir) as q:
        assert q.snapshot_report.problems == []
        assert len(q.list()) == 1
    assert (store_dir / "snap" / bad).exists()
