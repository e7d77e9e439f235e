"""archive=True: DIR/archive and everything under it is created 0700 through the syscall
table, and each new directory is fsynced in its parent before a file is moved into it, so
a power cut cannot lose the archive once the removal from wal/ is durable. Issue 14, item 6."""

import os
import stat

import aurora_log
from aurora_log import Job
from aurora_log.testing import faults


def _fill_and_compact(q, rounds=3):
    for _ in range(rounds):
        for i in range(60):
            q.enqueue(Job.new("x").add_field("i", i).add_field("pad", "p" * 2000))
        q.compact()


def test_archive_directories_are_private_and_durable(store_dir):
    rec = faults.Recorder()
    with faults.installed(rec), aurora_log.open(
            store_dir, reaper_interval=None, segment_bytes=1 << 16, auto_compact=False,
            archive=True) as q:
        _fill_and_compact(q)
    archive = store_dir / "archive"
    assert sorted(os.listdir(archive / "wal")), "nothing was archived"
    for d in (archive, archive / "wal", archive / "snap"):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
    ops = rec.ops
    for d in (archive, archive / "wal", archive / "snap"):
        made = [o.seq for o in ops if o.name == "mkdir" and o.path == str(d) and o.errno == 0]
        assert len(made) == 1, f"{d} not created through the syscall table"
        parent_synced = [o.seq for o in ops if o.name == "fsync" and o.is_dir
                         and o.path == str(d.parent) and o.seq > made[0]]
        first_in = [o.seq for o in ops if o.name in ("rename", "open") and
                    (o.path2 or o.path or "").startswith(str(d) + "/")]
        assert parent_synced and first_in and parent_synced[0] < min(first_in), d
    # every rename into archive/wal is followed by an fsync of archive/wal
    for o in ops:
        if o.name == "rename" and (o.path2 or "").startswith(str(archive / "wal") + "/"):
            assert any(x.name == "fsync" and x.is_dir and x.path == str(archive / "wal")
                       and x.seq > o.seq for x in ops)
