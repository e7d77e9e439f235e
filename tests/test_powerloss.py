"""Simulated power loss at EVERY I/O operation of the canonical workloads (RELIABILITY.md,
"power loss"). Each workload runs once with every syscall recorded; for each crash point the
directory is rebuilt as a power cut would leave it (tests/crashsim.py: unsynced data dropped,
a random subset kept, or the last write torn; directory entries not yet fsynced undone),
recovered with aurora_log.open, and checked (tests/checker.py): lost 0, phantom 0,
resurrected 0, and the state is a prefix of the history containing everything acknowledged.

Reproduce one line of the README table:  pytest tests/test_powerloss.py -q -k mix_sync
"""

import functools
import os

import pytest

from aurora_log.testing import faults
from checker import Checker, History
from crashsim import DiskModel, FsRecorder
from test_powerloss_support import (COMPACTION_OPTIONS, Summary, cleanup_fast_dirs,
                                    compaction, dead_letter, fast_dir, mix, record, replay,
                                    rolls)

ALL = ("drop", "torn", "subset", "keep")


@pytest.fixture
def tmp_path(tmp_path):
    """Crash images live on tmpfs when available (hundreds of opens + fsyncs each)."""
    yield fast_dir(tmp_path)
    cleanup_fast_dirs()


def _report(name, s: Summary):
    print(f"\n[powerloss] {name}: {s.points} crash points, {s.images} images, "
          f"{s.distinct} distinct recovered, {s.cut_tails} tails cut, lost {s.lost}, "
          f"phantom {s.phantom}, resurrected {s.resurrected}, duplicated {s.duplicated}, "
          f"holes {s.holes}, {s.seconds:.1f}s")
    assert not s.failures, "\n".join(s.failures[:20])
    assert s.lost == s.phantom == s.resurrected == s.duplicated == s.holes == 0


# ------------------------------------------------------------------ the four workloads

def test_mix_sync_every_op(tmp_path):
    """300-op mix in sync mode, crashed at every op, 4 ways: nothing acknowledged lost."""
    rc = record(tmp_path / "rec", mix, durability="sync", seed=1, segment_bytes=64 << 10)
    assert len(rc.hist.ops) == 300
    s = replay(tmp_path, rc, ALL, seed=1)
    assert s.points == len(rc.rec.ops) + 1 > 300
    assert s.cut_tails > 0          # torn tails really were produced and cut
    _report("mix/sync", s)


@pytest.mark.parametrize("durability", ["interval", "os"])
def test_mix_relaxed_every_op(tmp_path, durability):
    """interval/os: only what came after the last flush() may be lost, as a clean prefix."""
    rc = record(tmp_path / "rec", functools.partial(mix, relaxed=True), durability=durability,
                seed=2, segment_bytes=64 << 10)
    assert sum(op.kind == "flush" for op in rc.hist.ops) >= 5
    s = replay(tmp_path, rc, ("drop", "torn"), seed=2)
    _report(f"mix/{durability}", s)


def test_three_rolls_every_op(tmp_path):
    """~1 KiB jobs through 4 KiB segments: three rolls (seal, create .tmp, rename, dir fsync)
    crashed at every op, with a drain after each recovery."""
    rc = record(tmp_path / "rec", rolls, durability="sync", seed=3, segment_bytes=4096)
    names = [op.name for op in rc.rec.ops]
    assert names.count("rename") >= 4      # first segment + three rolls
    s = replay(tmp_path, rc, ALL, seed=3, drain=True)
    _report("rolls/sync", s)


def test_dead_letter_every_op(tmp_path):
    """Jobs failed through every retry into dead-letter, re-driven, cancelled, crashed at
    every op, with a drain after each recovery."""
    rc = record(tmp_path / "rec", dead_letter, durability="sync", seed=4,
                segment_bytes=64 << 10)
    s = replay(tmp_path, rc, ALL, seed=4, drain=True)
    _report("dead_letter/sync", s)


def test_compaction_every_op(tmp_path):
    """Three compactions over 4 KiB segments: snapshot writes (tmp/fsync/rename/dir fsync),
    the oldest snapshot removed, WAL segments retired (unlink + dir fsync) - crashed at
    every op, with a drain after each recovery."""
    rc = record(tmp_path / "rec", compaction, durability="sync", seed=6, **COMPACTION_OPTIONS)
    unlinks = [op.path for op in rc.rec.ops if op.name == "unlink" and op.errno == 0]
    assert sum(p.endswith(".seg") for p in unlinks) >= 3     # segments retired
    assert any(p.endswith(".snap") for p in unlinks)          # an old snapshot removed
    s = replay(tmp_path, rc, ALL, seed=6, drain=True)
    _report("compaction/sync", s)


@pytest.mark.parametrize("durability", ["interval", "os"])
def test_compaction_relaxed_every_op(tmp_path, durability):
    rc = record(tmp_path / "rec", compaction, durability=durability, seed=7,
                **COMPACTION_OPTIONS)
    s = replay(tmp_path, rc, ("drop", "torn"), seed=7)
    _report(f"compaction/{durability}", s)


@pytest.mark.parametrize("workload", ["rolls", "dead_letter"])
def test_short_writes_torn_at_every_piece(tmp_path, workload):
    """Every pwrite cut to 61 bytes (the core loops): a crash between any two pieces is a
    tear at every 61-byte step of every batch, header and segment preallocation; "keep"
    leaves the half-written record in place for recovery to cut."""
    wl = {"rolls": rolls, "dead_letter": dead_letter}[workload]
    rc = record(tmp_path / "rec", wl, durability="sync", seed=8,
                hooks=(faults.ShortWrites(61),), segment_bytes=4096)
    writes = [op for op in rc.rec.ops if op.name == "pwrite"]
    assert all(op.result <= 61 for op in writes) and len(writes) > 200
    s = replay(tmp_path, rc, ("drop", "keep"), seed=8, drain=True)
    assert s.cut_tails > 50
    _report(f"{workload}/short writes", s)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("seed", [101, 102, 103])
def test_long_mix_every_op(tmp_path, seed):
    """RELIABILITY.md: 3 iterations x 2,000 ops, unsynced data and undurable directory
    entries lost, every op index (drop / subset / torn)."""
    rc = record(tmp_path / "rec", functools.partial(mix, steps=2000), durability="sync",
                seed=seed, segment_bytes=16 << 10)
    s = replay(tmp_path, rc, ("drop", "subset", "torn"), seed=seed)
    _report(f"mix2000/sync seed {seed}", s)


# ------------------------------------------------------------------ the harness itself

def test_harness_sees_a_loss(tmp_path):
    """Negative control: an "os"-mode run judged by sync-mode rules must show lost jobs, so
    a zero above means something."""
    rc = record(tmp_path / "rec", mix, durability="os", seed=5, segment_bytes=64 << 10)
    rc.hist.mode = "sync"
    for op in rc.hist.ops:
        op.barrier = op.ok and op.kind in ("enqueue", "complete", "fail", "cancel",
                                           "retry_dead")
    s = replay(tmp_path, rc, ("drop",), seed=5, points=range(0, len(rc.rec.ops) + 1, 25))
    assert s.lost > 0 and s.holes > 0


def test_harness_sees_a_missing_directory_fsync(tmp_path):
    """Negative control: the same rolls recording with every directory fsync erased (as if
    the code forgot them) must lose acknowledged jobs: the renamed segments vanish."""
    rc = record(tmp_path / "rec", rolls, durability="sync", seed=3, segment_bytes=4096)
    dirs = {op.fd for op in rc.rec.ops if op.name == "open" and op.is_dir}
    keep = []
    for kind, op in rc.rec.events:
        if op.name == "fsync" and op.is_dir:
            op = type(op)(**{**op.__dict__, "errno": 5, "result": -1})   # never happened
        keep.append((kind, op))
    assert dirs
    rc.rec.events = keep
    s = replay(tmp_path, rc, ("drop",), seed=3)
    assert s.lost > 0 and s.holes > 0, s.failures[:3]


def test_checker_classifies(tmp_path):
    """The checker names each anomaly on a hand-made recovered state."""
    from aurora_log.job import Job

    clock = iter(range(1000))
    h = History(lambda: next(clock))

    class Q:  # a stand-in queue that accepts everything
        def enqueue(self, job):
            return job.id

        def complete(self, *a):
            return None
    a, b = Job("t", {"x": 1}, id="a"), Job("t", {"x": 2}, id="b")
    h.enqueue(Q(), [a])
    h.enqueue(Q(), [b])
    op = h.ops[1]
    chk = Checker(h)
    point = op.acked + 1

    def job(id, status, payload, rc=0):
        return Job("t", payload, id=id, status=status, retry_count=rc)
    assert chk.check(point, [job("a", "pending", {"x": 1}), job("b", "pending", {"x": 2})]).ok
    v = chk.check(point, [job("a", "pending", {"x": 1})])
    assert v.lost == ["b"] and v.hole
    v = chk.check(point, [job("a", "pending", {"x": 1}), job("b", "pending", {"x": 3})])
    assert v.phantom == ["b"]
    v = chk.check(point, [job("a", "pending", {"x": 1}), job("b", "pending", {"x": 2}),
                          job("c", "pending", {})])
    assert v.phantom == ["c"]
    # before b's enqueue returned, a state without b is a valid prefix
    assert chk.check(op.invoked, [job("a", "pending", {"x": 1})]).ok


def test_crashsim_page_cache_rules(tmp_path):
    """Unsynced bytes vanish in "drop", survive in "keep"; an entry created after the last
    directory fsync vanishes; a synced file in a synced directory survives."""
    from aurora_log.local.log import remove_file, write_file_durably
    from aurora_log.local._binding import lib
    root = tmp_path / "r"
    root.mkdir()
    rec = FsRecorder(root)
    with faults.installed(rec):
        write_file_durably(root / "a", b"durable")
        fd = lib.au_open(os.fsencode(str(root / "b")), os.O_WRONLY | os.O_CREAT, 0o600)
        lib.au_pwrite_full(fd, b"volatile", 8, 0)
        lib.au_close(fd)
        p1 = rec.done
        fd = lib.au_open(os.fsencode(str(root / "a")), os.O_WRONLY, 0o600)
        lib.au_pwrite_full(fd, b"D", 1, 0)
        p2 = rec.done
        lib.au_fdatasync(fd)
        lib.au_close(fd)
        p3 = rec.done
        remove_file(root / "a", fsync_dir=False)
        p4 = rec.done
        lib.au_fsync_dir(os.fsencode(str(root)))
    m = DiskModel(rec)
    m.advance_to(p1)
    assert m.crash_image("drop") == {"a": b"durable"}
    assert m.crash_image("keep") == {"a": b"durable", "b": b"volatile"}
    m.advance_to(p2)
    assert m.crash_image("drop")["a"] == b"durable"
    assert m.crash_image("keep")["a"] == b"Durable"
    m.advance_to(p3)
    assert m.crash_image("drop")["a"] == b"Durable"
    m.advance_to(p4)
    assert m.crash_image("drop")["a"] == b"Durable"      # the unlink is not durable yet
    m.advance_to(len(rec.ops))
    # the directory fsync made the unlink of a and the creation of b durable, not b's bytes
    assert m.crash_image("drop") == {"b": b""}
