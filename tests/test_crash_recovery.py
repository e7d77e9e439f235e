"""Crash during recovery (I8, idempotent recovery): take damaged stores as a power cut leaves
them (a torn tail to cut, a leftover segment .tmp, jobs left running), record the recovery of
each (open + close: copy the tail aside, zero it, fdatasync, reap the running jobs, seal),
crash THAT at every one of its own I/O ops (unsynced data dropped / torn / kept), recover
again, and require the same end state as an uninterrupted recovery. One store also gets a
second crash inside the second recovery, at every op.

Reproduce:  pytest tests/test_crash_recovery.py -q
"""

import functools
import random

import pytest

import aurora_log
from aurora_log.testing import faults
from aurora_log.local.log import Log
from checker import all_jobs, queue_fingerprint
from crashsim import FsRecorder, crash_images, image_digest, materialize
from test_powerloss_support import (COMPACTION_OPTIONS, Clock, T0, cleanup_fast_dirs,
                                    compaction, fast_dir, mix, record, rolls)

MODES = ("drop", "torn", "keep")


@pytest.fixture
def tmp_path(tmp_path):
    yield fast_dir(tmp_path)
    cleanup_fast_dirs()


def _open(store):
    return aurora_log.open(store, clock=Clock(T0 + 10**6), reaper_interval=None,
                           **COMPACTION_OPTIONS)


def _recover_fp(store):
    q = _open(store)
    try:
        return queue_fingerprint(all_jobs(q)), q.log.report, q.recovered
    finally:
        q.close()


def _damaged_images(tmp, rc, want, seed, mode="torn", need_tmp=False):
    """Crash images of a recording whose recovery has work to do: a tail to cut, a .tmp to
    delete, running jobs to reap. Up to `want` of them, spread over the recording."""
    out = {}
    rng = random.Random(seed)
    for i, _, img in crash_images(rc.rec, (mode,), seed=seed):
        if len(out) >= want * 4:
            break
        if need_tmp and not any(k.endswith(".seg.tmp") for k in img):
            continue
        if not any(k.startswith("store/wal/") and k.endswith(".seg") for k in img):
            continue
        probe = materialize(img, tmp / "probe")
        try:
            rep = Log.open(probe / "store", read_only=True).report
        except Exception:  # noqa: BLE001 - the power-loss suite reports these
            continue
        tmp_left = any(k.endswith(".seg.tmp") for k in img)
        if rep.cuts or tmp_left:
            out[image_digest(img)] = (i, img, bool(rep.cuts), tmp_left)
    picks = list(out.values())
    rng.shuffle(picks)
    picks.sort(key=lambda p: (not p[3],))   # keep any .tmp cases
    return picks[:want]


def _crash_the_recovery(tmp, img, *, nested=False):
    """Returns (crash points, images, nested images) checked."""
    ref_store = materialize(img, tmp / "ref") / "store"
    ref_fp, ref_rep, _ = _recover_fp(ref_store)
    assert ref_rep.cuts or ref_rep.removed_tmp

    root = materialize(img, tmp / "rec")
    rec = FsRecorder(root)
    with faults.installed(rec):
        q = _open(root / "store")
        q.close()
    assert any(op.name == "fdatasync" for op in rec.ops)
    n_img = n_nested = 0
    for j, mode, cimg in crash_images(rec, MODES, seed=j_seed(img)):
        n_img += 1
        store = materialize(cimg, tmp / "again") / "store"
        fp, _, _ = _recover_fp(store)
        assert fp == ref_fp, f"recovery crashed ({mode}) after its op {j}/{len(rec.ops)} " \
                             "then re-run ends in a different state"
        if nested and mode == "drop" and j % 3 == 0:
            root2 = materialize(cimg, tmp / "rec2")
            rec2 = FsRecorder(root2)
            with faults.installed(rec2):
                _open(root2 / "store").close()
            for k, mode2, cimg2 in crash_images(rec2, ("drop", "torn"), seed=k_seed(j)):
                n_nested += 1
                fp2, _, _ = _recover_fp(materialize(cimg2, tmp / "again2") / "store")
                assert fp2 == ref_fp, f"double crash: op {j} then op {k} ({mode2})"
    return len(rec.ops) + 1, n_img, n_nested


def j_seed(img):
    return int(image_digest(img)[:8], 16)


def k_seed(j):
    return 1000 + j


def test_crash_during_recovery_of_torn_tails(tmp_path):
    rc = record(tmp_path / "w", functools.partial(mix, steps=120), durability="sync", seed=11,
                segment_bytes=4096)
    picks = _damaged_images(tmp_path, rc, want=6, seed=11)
    assert len(picks) >= 4
    points = images = nested = 0
    for n, (_i, img, _cut, _tmp_left) in enumerate(picks):
        p, im, ne = _crash_the_recovery(tmp_path, img, nested=(n == 0))
        points, images, nested = points + p, images + im, nested + ne
    assert nested > 0
    print(f"\n[crash-recovery] {len(picks)} damaged stores, {points} crash points in their "
          f"recoveries, {images} images + {nested} double-crash images: same end state")


def test_crash_during_recovery_after_roll_crash(tmp_path):
    """Damaged stores from a crash during segment rolls (a .seg.tmp left behind: only a
    process crash leaves one, as its directory entry is never fsynced before the rename)."""
    rc = record(tmp_path / "w", rolls, durability="sync", seed=12, segment_bytes=4096)
    picks = _damaged_images(tmp_path, rc, want=8, seed=12, mode="keep", need_tmp=True)
    assert picks, "no crash image left a .seg.tmp behind"
    points = images = 0
    for _i, img, _cut, _tmp_left in picks[:3]:
        p, im, _ = _crash_the_recovery(tmp_path, img)
        points, images = points + p, images + im
    print(f"\n[crash-recovery] {len(picks[:3])} stores with a leftover .seg.tmp, {points} "
          f"crash points, {images} images: same end state")


def test_crash_during_recovery_with_snapshots(tmp_path):
    """Damaged stores from the compaction workload: recovery = newest snapshot + the WAL
    after it + a torn tail to cut; crashed at each op of that recovery, re-run."""
    rc = record(tmp_path / "w", compaction, durability="sync", seed=13, **COMPACTION_OPTIONS)
    picks = [p for p in _damaged_images(tmp_path, rc, want=40, seed=13)
             if any(k.endswith(".snap") for k in p[1])][:4]
    assert picks, "no damaged image with a snapshot"
    points = images = 0
    for _i, img, _cut, _tmp_left in picks:
        p, im, _ = _crash_the_recovery(tmp_path, img)
        points, images = points + p, images + im
    print(f"\n[crash-recovery] {len(picks)} damaged stores with snapshots, {points} crash "
          f"points, {images} images: same end state")
