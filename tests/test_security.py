"""The security rows of the reliability matrix: untrusted payloads stay inert data, hostile
names are refused before anything is written, and every file and directory is private."""

import os
import stat

import pytest

import aurora_log
from aurora_log import Job

# A classic pickle payload that runs a shell command when unpickled. We never unpickle;
# it must come back as the exact string that went in, through the WAL and a snapshot.
PICKLE_BOMB = "cos\nsystem\n(S'touch /tmp/aurora-log-pwned'\ntR."


def _open(path, **kw):
    return aurora_log.open(path, reaper_interval=None, segment_bytes=1 << 20,
                           auto_compact=False, **kw)


def test_pickle_bomb_payload_is_stored_and_returned_as_inert_data(store_dir, tmp_path):
    marker = "/tmp/aurora-log-pwned"
    if os.path.exists(marker):
        os.unlink(marker)
    with _open(store_dir) as q:
        wal_id = q.enqueue(Job.new("x").add_field("blob", PICKLE_BOMB))
    with _open(store_dir) as q:
        assert q.get(wal_id).payload == {"blob": PICKLE_BOMB}      # replayed from the WAL
        snap_id = q.enqueue(Job.new("x").add_field("blob", PICKLE_BOMB))
        q.compact()
    with _open(store_dir) as q:
        assert q.snapshot_report.path is not None                   # loaded from a snapshot
        for job_id in (wal_id, snap_id):
            assert q.get(job_id).payload == {"blob": PICKLE_BOMB}
        job = q.claim("w")
        assert job.payload == {"blob": PICKLE_BOMB}
    assert not os.path.exists(marker)


@pytest.mark.parametrize("name", ["../escape", "a/b", "a\x00b", "x" * 10_000, ""])
def test_hostile_names_are_refused_before_anything_is_written(store_dir, tmp_path, name):
    with _open(store_dir) as q:
        before = q.log.next_lsn
        with pytest.raises(ValueError):
            q.enqueue(Job.new("ok").with_queue(name))
        with pytest.raises(ValueError):
            q.enqueue(Job.new(name))
        assert q.log.next_lsn == before
    outside = {p.name for p in tmp_path.iterdir()}
    assert outside == {"store"}                                      # nothing written beside it


def test_oversized_payload_is_refused_before_anything_is_written(store_dir):
    with _open(store_dir, max_payload_bytes=1024) as q:
        before = q.log.next_lsn
        with pytest.raises(ValueError):
            q.enqueue(Job.new("x").add_field("big", "y" * 2048))
        assert q.log.next_lsn == before


def test_every_file_and_directory_is_private_under_umask_000(store_dir):
    old = os.umask(0)
    try:
        with _open(store_dir, archive=True) as q:
            for i in range(200):
                q.enqueue(Job.new("x").add_field("i", i).add_field("pad", "p" * 2000))
            q.compact()
            for i in range(200):
                q.enqueue(Job.new("x").add_field("i", i).add_field("pad", "p" * 2000))
            q.compact()
    finally:
        os.umask(old)
    seen = 0
    for root, _dirs, files in os.walk(store_dir):
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o700, root
        for f in files:
            path = os.path.join(root, f)
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
            seen += 1
    assert seen >= 4          # LOCK, segments, snapshots (and archived files) were checked
