"""The spare segment file (native/FORMAT.md, "The spare"): the next segment's file is
zero-filled and fsynced off the commit path, and a roll only writes its header, fsyncs,
renames it and fsyncs the directory.

Covered here: a roll with a spare ready, still being prepared (the roll waits), or missing
(failed: EIO/ENOSPC/failed fsync at every step of preparing it; the roll falls back to
creating the segment inline and the log never fails); a failure while installing it (before
the rename: fallback; the directory fsync after it: the writer fails, as the inline path
does); permissions; SIGKILL of a child process while a spare is being prepared and right
after a roll; an I/O error at every syscall of a rolling workload; and power cuts at every
syscall of the queue's rolls workload (tests/crashsim.py).

Spares are off for segments under 2 MiB by default (so the rest of the suite, which uses
small segments, runs the deterministic inline path); these tests turn them on for every
size with au_set_spare_min_bytes(0).
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from aurora_log.testing import faults
from aurora_log.local._binding import lib
from aurora_log.errors import DurabilityError, LockedError
from aurora_log.local.log import Log

HERE = Path(__file__).resolve().parent
SPARE = "00000000000000000000.seg.tmp"
SEG = 64 << 10
REC = [(1, b"r" * 100)] * 50          # ~5.9 KiB a batch: ~11 batches a 64 KiB segment
NONE, WANTED, BUSY, READY = (lib.AU_SPARE_NONE, lib.AU_SPARE_WANTED, lib.AU_SPARE_BUSY,
                             lib.AU_SPARE_READY)


@pytest.fixture
def spares_on():
    lib.au_set_spare_min_bytes(0)
    yield
    lib.au_set_spare_min_bytes(2 << 20)


def _wait_state(log, states, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        s = lib.au_writer_spare_state(log._w)
        if s in states:
            return s
        time.sleep(0.002)
    raise AssertionError(f"spare state {lib.au_writer_spare_state(log._w)}, wanted {states}")


def _fill_until_spare_asked(log, acked):
    """Commit until a round asks for the spare (it may already have failed by then)."""
    st0 = log.stats()
    while lib.au_writer_spare_state(log._w) == NONE:
        st = log.stats()
        assert st["rolls"] == st0["rolls"]
        if st["spares"] > st0["spares"] or st["spare_errors"] > st0["spare_errors"]:
            break
        acked.append(log.commit(REC))


def _roll(log, acked):
    rolls = log.stats()["rolls"]
    while log.stats()["rolls"] == rolls:
        acked.append(log.commit(REC))


def _check_store(d, n_records, *, segment_bytes=SEG):
    with Log.open(d, segment_bytes=segment_bytes) as log:
        got = list(log.scan())
        report = log.report
    assert [r[0] for r in got] == list(range(1, len(got) + 1))
    assert len(got) >= n_records
    assert all(p == b"r" * 100 for _, _, p in got[:n_records])
    return report


def test_roll_installs_a_ready_spare(store_dir, spares_on):
    acked = []
    with Log.open(store_dir, segment_bytes=SEG) as log:
        _fill_until_spare_asked(log, acked)
        _wait_state(log, {READY})
        spare = store_dir / "wal" / SPARE
        assert spare.exists() and spare.stat().st_size == SEG
        assert stat.S_IMODE(spare.stat().st_mode) == 0o600
        assert spare.read_bytes() == bytes(SEG)          # zeros, no header yet
        _roll(log, acked)
        st = log.stats()
        assert st["rolls"] == 1 and st["spare_rolls"] == 1 and st["spare_errors"] == 0
        segs = log.segments()
        assert len(segs) == 2 and segs[1].size == SEG
        for s in segs:
            assert stat.S_IMODE(s.path.stat().st_mode) == 0o600
        # several more rolls, each with its spare (the next one is asked for at 1/4)
        for _ in range(3):
            _fill_until_spare_asked(log, acked)
            _wait_state(log, {READY})
            _roll(log, acked)
        assert log.stats()["spare_rolls"] == 4
    assert not (store_dir / "wal" / SPARE).exists()     # close removed the unused one
    assert stat.S_IMODE((store_dir / "wal").stat().st_mode) == 0o700
    rep = _check_store(store_dir, len(acked) * len(REC))
    assert rep.removed_tmp == [] and not rep.cuts


def test_roll_waits_for_a_spare_being_prepared(store_dir, spares_on):
    """The spare thread is held inside its open(); the roll waits for it, then uses it."""
    release = threading.Event()

    class Hold(faults.Hook):
        def before(self, op):
            if op.name == "open" and op.path and op.path.endswith(SPARE):
                release.wait(30)
            return None

    acked = []
    with faults.installed(Hold()):
        with Log.open(store_dir, segment_bytes=SEG) as log:
            _fill_until_spare_asked(log, acked)
            _wait_state(log, {BUSY})
            timer = threading.Timer(0.3, release.set)
            timer.start()
            t0 = time.monotonic()
            _roll(log, acked)
            assert time.monotonic() - t0 >= 0.2
            timer.join()
            st = log.stats()
            assert st["spare_rolls"] == 1 and st["spare_errors"] == 0
    _check_store(store_dir, len(acked) * len(REC))


@pytest.mark.parametrize("op,err,nth", [
    ("open", errno.EIO, 1), ("pwrite", errno.ENOSPC, 1), ("pwrite", errno.EIO, 1),
    ("fsync", errno.EIO, 1), ("fsync", errno.EINTR, 1),
])
def test_a_spare_that_fails_to_prepare_is_dropped_and_the_roll_falls_back(
        store_dir, spares_on, op, err, nth):
    hook = faults.FailNth(nth, err=err, ops={op}, path_contains=SPARE)
    acked = []
    with faults.installed(hook):
        with Log.open(store_dir, segment_bytes=SEG) as log:
            _fill_until_spare_asked(log, acked)
            _wait_state(log, {NONE})                   # failed and dropped
            assert log.stats()["spare_errors"] == 1
            assert not (store_dir / "wal" / SPARE).exists()   # unlinked (space back)
            _roll(log, acked)                          # inline creation
            st = log.stats()
            assert st["rolls"] == 1 and st["spare_rolls"] == 0 and not log.failed
            _roll(log, acked)                          # the next segment tries again
            assert log.stats()["spare_rolls"] == 1
    assert hook.fired == 1
    rep = _check_store(store_dir, len(acked) * len(REC))
    assert rep.removed_tmp == []


@pytest.mark.parametrize("op,nth", [("pwrite", 2), ("fsync", 2), ("rename", 1)])
def test_a_spare_that_fails_to_install_falls_back_before_the_rename(store_dir, spares_on,
                                                                     op, nth):
    """The header write (the 2nd pwrite on the spare's fd at 64 KiB: the first is its
    zeros), its fsync (the 2nd: the first ends the preparation) or the rename fail: nothing
    was renamed, so the spare is dropped and the segment created inline."""
    hook = faults.FailNth(nth, ops={op}, path_contains=SPARE)
    acked = []
    with faults.installed(hook):
        with Log.open(store_dir, segment_bytes=SEG) as log:
            _fill_until_spare_asked(log, acked)
            _wait_state(log, {READY})
            _roll(log, acked)
            st = log.stats()
            assert st["rolls"] == 1 and st["spare_rolls"] == 0 and st["spare_errors"] == 1
            assert not log.failed
            assert not (store_dir / "wal" / SPARE).exists() or \
                lib.au_writer_spare_state(log._w) != NONE
    assert hook.fired == 1
    rep = _check_store(store_dir, len(acked) * len(REC))
    assert rep.removed_tmp == [] and not rep.cuts


def test_a_failed_directory_fsync_after_installing_fails_the_writer(store_dir, spares_on):
    """After the rename the spare IS the segment: a failed directory fsync fails the writer,
    exactly as it does for an inline creation; reopening recovers everything acknowledged."""
    acked = []
    log = Log.open(store_dir, segment_bytes=SEG)
    _fill_until_spare_asked(log, acked)
    _wait_state(log, {READY})

    class FailDirSyncAfterSpareRename(faults.Hook):
        renamed = False
        fired = 0

        def before(self, op):
            if op.name == "rename" and op.path and op.path.endswith(SPARE):
                self.renamed = True
            elif op.name == "fsync" and op.is_dir and self.renamed and not self.fired:
                self.fired += 1
                return errno.EIO
            return None

    hook = FailDirSyncAfterSpareRename()
    with faults.installed(hook):
        with pytest.raises(DurabilityError):
            _roll(log, acked)
        assert log.failed and hook.fired == 1
        with pytest.raises(DurabilityError):
            log.close()
    _check_store(store_dir, len(acked) * len(REC))


def test_every_syscall_failing_in_a_rolling_workload_with_spares(tmp_path, spares_on):
    """EIO at the n-th syscall (transient, then persistent) of a workload that rolls 64 KiB
    segments with spares: recovery opens, keeps every acknowledged record, and has no
    phantoms. (The spare thread runs concurrently, so which call is n-th varies: only the
    invariants are checked.)"""
    def workload(d, acked):
        log = Log.open(d, segment_bytes=SEG)
        try:
            for _ in range(30):                 # ~3 rolls
                lsn = log.commit(REC)
                acked.extend(range(lsn - len(REC) + 1, lsn + 1))
        finally:
            log.close()

    rec = faults.Recorder()
    with faults.installed(rec):
        workload(tmp_path / "count", [])
    n_ops = len(rec.ops)
    assert any(o.name == "rename" and o.path.endswith(SPARE) for o in rec.ops)
    step = max(1, n_ops // 60)
    for persistent in (False, True):
        for n in range(1, n_ops + 1, step):
            d = tmp_path / f"s{n}-{persistent}"
            acked = []
            with faults.installed(faults.FailNth(n, persistent=persistent)):
                try:
                    workload(d, acked)
                except (DurabilityError, OSError, LockedError):
                    pass
            if not (d / "wal").exists():
                continue
            with Log.open(d, segment_bytes=SEG) as log:
                got = [r[0] for r in log.scan()]
            assert got == list(range(1, len(got) + 1)), n
            assert len(got) >= len(acked), (n, persistent)


CHILD = r"""
import os, sys, time
sys.path.insert(0, {tests!r})
from aurora_log.local.log import Log
from aurora_log.local._binding import lib
lib.au_set_spare_min_bytes(0)
log = Log.open({d!r}, segment_bytes={seg})
rec = [(1, b"r" * 100)] * 1000
rolls = log.stats()["rolls"]
while True:
    lsn = log.commit(rec)
    state = lib.au_writer_spare_state(log._w)
    r = log.stats()["rolls"]
    print(lsn, state, int(r != rolls), flush=True)
    rolls = r
"""


@pytest.mark.parametrize("when", ["preparing", "after_roll"])
def test_sigkill_while_a_spare_is_prepared_or_right_after_a_roll(tmp_path, spares_on, when):
    """A child commits 1,000-record batches into 8 MiB segments and prints every
    acknowledged LSN with the spare's state; the parent SIGKILLs it while the spare is being
    prepared (state 2) or right after a roll. Reopening keeps every acknowledged record,
    removes a leftover spare (reported in removed_tmp), and the log goes on rolling."""
    d = tmp_path / "store"
    seg = 8 << 20
    leftovers = 0
    for cycle in range(3):
        code = CHILD.format(tests=str(HERE), d=str(d), seg=seg)
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        acked = 0
        hit = False
        deadline = time.monotonic() + 60
        try:
            for line in p.stdout:
                lsn, state, rolled = map(int, line.split())
                acked = lsn
                if (when == "preparing" and state == BUSY) or \
                        (when == "after_roll" and rolled):
                    hit = True
                    break
                if time.monotonic() > deadline:
                    break
        finally:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            p.stdout.close()
        assert hit, f"cycle {cycle}: never saw the moment ({when})"
        leftover = (d / "wal" / SPARE).exists()
        leftovers += leftover
        with Log.open(d, segment_bytes=seg) as log:
            assert log.next_lsn > acked
            assert not log.report.cuts or log.report.cuts[0].lsn > acked
            assert log.report.removed_tmp == ([SPARE] if leftover else [])
            assert not (d / "wal" / SPARE).exists()
        _check_store(d, 0, segment_bytes=seg)
    if when == "preparing":
        assert leftovers == 3          # killed mid-preparation: a partial spare every time


def test_power_cuts_at_every_syscall_of_the_rolls_workload_with_spares(tmp_path, spares_on):
    """tests/crashsim.py over the queue's rolls workload (4 KiB segments, every roll through
    a spare when one is ready): a power cut after every call, four ways; recovery loses
    nothing acknowledged, invents nothing, and deletes any leftover spare."""
    sys.path.insert(0, str(HERE))
    from test_powerloss_support import (cleanup_fast_dirs, fast_dir, record, replay,
                                        rolls)
    work = fast_dir(tmp_path)
    try:
        # exclusive=True: spare segments belong to the exclusive writer (the default
        # shared mode creates each segment inline under its append lock)
        rc = record(work / "rec", rolls, durability="sync", seed=13, segment_bytes=4096,
                    exclusive=True)
        names = [(op.name, os.path.basename(op.path or "")) for op in rc.rec.ops]
        assert names.count(("rename", SPARE)) >= 2, "rolls did not go through spares"
        from crashsim import crash_images
        with_spare = sum(any(k.endswith(SPARE) for k in img)
                         for _, _, img in crash_images(rc.rec, ("keep",)))
        assert with_spare >= 10, with_spare    # recovery really met leftover spares
        s = replay(work, rc, ("drop", "torn", "subset", "keep"), seed=13, drain=True)
        print(f"\n[spare powerloss] {s.points} points, {s.images} images, {s.distinct} "
              f"distinct, lost {s.lost}, phantom {s.phantom}, {s.seconds:.1f}s")
        assert not s.failures, "\n".join(s.failures[:20])
        assert s.lost == s.phantom == s.resurrected == s.duplicated == s.holes == 0
    finally:
        cleanup_fast_dirs()


# ------------------------------------------------------------------ packing (issue 2)

def test_append_reserved_refusing_a_batch_fails_the_writer_at_once(store_dir):
    """A reserved range whose records fail validation used to raise before reaching C and
    leave a hole that stalled every later commit for the hole timeout; now it fails the
    writer at once."""
    log = Log.open(store_dir, segment_bytes=SEG)
    first = log.reserve(2)
    with pytest.raises(ValueError):
        log.append_reserved(first, [(1, b"ok"), (0, b"type 0")])
    assert log.failed
    with pytest.raises(DurabilityError):
        log.commit([(1, b"x"), (1, b"y")])
    with pytest.raises(DurabilityError):
        log.close()


@pytest.mark.parametrize("records", [
    [(1, b"a"), (2, b"bb")],
    [[3, b"list"], (4, bytearray(b"ba"))],
    [(5, b"x", "extra ignored, as before"), (6, b"")],
    [(7, memoryview(b"mv")), (8, b"z")],
])
def test_fast_pack_agrees_with_the_checked_pack(store_dir, records):
    with Log.open(store_dir, segment_bytes=SEG) as log:
        assert log._pack(records) == log._pack_checked(records)
        last = log.commit(records)
        assert [(t, p) for _, t, p in log.scan()] == [(r[0], bytes(r[1])) for r in records]
        assert last == len(records)


@pytest.mark.parametrize("bad,exc", [
    ([], ValueError), ([(0, b"x"), (1, b"y")], ValueError), ([(1, b"x"), (256, b"y")],
                                                              ValueError),
    ([(1, b"x"), (1, "str")], TypeError), ([(1, b"x"), (1, b"y" * 2048)], ValueError),
    ([(1, b"x"), (1, memoryview(b"abcd").cast("I"))], TypeError),
    ([(1, b"x"), (1.0, b"y")], ValueError), ([(1, b"x"), (True, b"y")], None),
])
def test_fast_pack_refuses_what_the_checked_pack_refuses(store_dir, bad, exc):
    with Log.open(store_dir, segment_bytes=SEG, max_record_bytes=1024) as log:
        if exc is None:
            assert log._pack(bad) == log._pack_checked(bad)
            return
        with pytest.raises(exc):
            log._pack_checked(bad)
        with pytest.raises(exc):
            log._pack(bad)
        with pytest.raises(exc):
            log.commit(bad) if bad else log.check_records(bad)
        assert log.next_lsn == 1 and not log.failed


def test_fused_frame_crc_matches_the_scanners_reference_crc(store_dir):
    """The writer copies and crc's each payload in one pass (au_crc32c_frame_copy); the
    scanner verifies with the plain au_record_crc. Every length 0..80 at every alignment of
    the source buffer, high LSNs (all 8 bytes of the LSN in the crc) and every type."""
    payloads = [bytes((i * 7 + k) & 0xFF for k in range(n)) for i, n in enumerate(range(81))]
    (store_dir / "wal").mkdir(parents=True, mode=0o700)
    base = 0x0123456789AB                            # a log that starts at a high LSN
    assert lib.au_segment_create(os.fsencode(str(store_dir / "wal")), base, 1 << 20, 16 << 20) == 0
    with Log.open(store_dir, segment_bytes=1 << 20) as log:
        assert log.next_lsn == base
        for shift in range(8):
            batch = [((i + shift) % 255 + 1, b"\xa5" * shift + p) for i, p in enumerate(payloads)]
            log.commit(batch)
            log.commit(batch[shift:shift + 1])          # the one-record path too
        got = list(log.scan())
    assert [r[0] for r in got] == list(range(base, base + 8 * 82))
    with Log.open(store_dir, segment_bytes=1 << 20) as log:
        assert list(log.scan()) == got and not log.report.cuts
