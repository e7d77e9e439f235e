"""Recovery = newest valid snapshot + WAL tail; damaged snapshots fall back, never empty."""

import os

import pytest

import aurora_log
from aurora_log import Job
from aurora_log.local import snapshot as S
from aurora_log.errors import CorruptionError
from aurora_log.local.state import State
from fakeclock import FakeClock as Clock

T0 = 1_700_000_000.0




def _open(d, clock, **kw):
    # exclusive=True: snapshot + tail is compared with the live fingerprint (with its last
    # LSN) across reopens, which the default mode's ATTACH/DETACH records move
    kw.setdefault("exclusive", True)
    kw.setdefault("auto_compact", False)
    return aurora_log.open(d, clock=clock, reaper_interval=None, durability="os",
                           segment_bytes=8192, **kw)


def _work(q, clock, n, tag):
    for i in range(n):
        q.enqueue(Job(job_type="t", payload={"tag": tag, "i": i, "pad": "x" * 40},
                      priority=1 + i % 4), durable=False)
    for _ in range(n // 3):
        clock.t += 1
        j = q.claim("w")
        q.complete(j.id, j.token, {"ok": tag}, durable=False)
    j = q.claim("w")
    q.fail(j.id, j.token, "boom", durable=False)


def _claim_order(state, now_ms=10**13):
    st = State.from_export(state.export())
    out = []
    while (jid := st.pick(now_ms)) is not None:
        st.apply(st.last_lsn + 1, 2, st.plan_claim(jid, now_ms, b"o" * 8, "x"))
        out.append(jid)
    return out


def _full_replay(d):
    st = State()
    from aurora_log.local.log import Log
    with Log.open(d, read_only=True) as lg:
        assert lg.first_lsn == 1
        for lsn, rt, p in lg.scan(1):
            st.apply(lsn, rt, p)
    return st


@pytest.fixture
def store(store_dir):
    """A store with three snapshots' worth of history (two kept) and a WAL tail."""
    clock = Clock()
    q = _open(store_dir, clock)
    for k in range(3):
        _work(q, clock, 60, k)
        q.compact()
    _work(q, clock, 30, "tail")
    fp = q._state.fingerprint()
    order = _claim_order(q._state)
    q.close()
    return store_dir, clock, fp, order


def test_snapshot_plus_tail_equals_state(store):
    d, clock, fp, order = store
    snaps = S.list_snapshots(d / "snap")
    assert len(snaps) == 2
    q = _open(d, clock)
    assert q.snapshot_report.lsn == snaps[-1][0] and not q.snapshot_report.problems
    assert q._state.fingerprint() == fp
    assert _claim_order(q._state) == order
    q.close()


def test_snapshot_plus_tail_equals_full_replay(store_dir):
    clock = Clock()
    # one big segment: nothing gets retired, so the full log is there to compare with
    q = aurora_log.open(store_dir, clock=clock, reaper_interval=None, durability="os",
                        exclusive=True,       # see _open
                        auto_compact=False, segment_bytes=1 << 20)
    for k in range(3):
        _work(q, clock, 50, k)
        q.compact()
    _work(q, clock, 20, "tail")
    q.close()
    full = _full_replay(store_dir)
    q = _open(store_dir, clock)
    assert q.snapshot_report.lsn > 0
    assert q._state.fingerprint() == full.fingerprint()
    assert _claim_order(q._state) == _claim_order(full)
    q.close()


def _damage_newest(d, how):
    lsn, p = S.list_snapshots(d / "snap")[-1]
    data = p.read_bytes()
    if how == "delete":
        p.unlink()
    elif how == "truncate":
        p.write_bytes(data[:len(data) // 2])
    elif how == "flip":
        b = bytearray(data)
        b[len(b) // 2] ^= 0x10
        p.write_bytes(bytes(b))
    elif how == "empty":
        p.write_bytes(b"")
    return lsn, p


@pytest.mark.parametrize("how", ["delete", "truncate", "flip", "empty"])
def test_damaged_newest_falls_back_to_older(store, how):
    d, clock, fp, order = store
    older = S.list_snapshots(d / "snap")[0][0]
    lsn, p = _damage_newest(d, how)
    q = _open(d, clock)
    assert q.snapshot_report.lsn == older
    if how != "delete":
        (prob,) = q.snapshot_report.problems
        assert prob.file == str(p) and prob.moved_to == str(p) + ".broken"
        assert os.path.exists(prob.moved_to) and not p.exists()
    assert q._state.fingerprint() == fp
    assert _claim_order(q._state) == order
    # the next compaction keeps two good snapshots; reopen still equal
    q.compact()
    q.close()
    q = _open(d, clock)
    assert q._state.fingerprint() == fp
    q.close()


def test_read_only_reports_but_does_not_move(store):
    d, clock, fp, _ = store
    lsn, p = _damage_newest(d, "flip")
    before = sorted(os.listdir(d / "snap"))
    q = _open(d, clock, read_only=True)
    assert q.snapshot_report.problems and q._state.fingerprint() == fp
    q.close()
    assert sorted(os.listdir(d / "snap")) == before


def test_no_usable_snapshot_and_log_not_at_1_is_an_error(store):
    d, clock, _, _ = store
    from aurora_log.local.log import Log
    with Log.open(d, read_only=True) as lg:
        assert lg.first_lsn > 1           # the fixture retired segments
    for _lsn, p in S.list_snapshots(d / "snap"):
        b = bytearray(p.read_bytes())
        b[-3] ^= 1
        p.write_bytes(bytes(b))
    with pytest.raises(CorruptionError) as ei:
        _open(d, clock)
    assert "no usable snapshot" in str(ei.value) and ".snap" in str(ei.value)


def test_all_snapshots_deleted_and_log_not_at_1_is_an_error(store):
    d, clock, _, _ = store
    for _, p in S.list_snapshots(d / "snap"):
        p.unlink()
    with pytest.raises(CorruptionError, match="no usable snapshot"):
        _open(d, clock)


def test_bad_snapshot_with_full_log_replays_everything(store_dir):
    clock = Clock()
    q = aurora_log.open(store_dir, clock=clock, reaper_interval=None, durability="os",
                        exclusive=True,       # see _open
                        auto_compact=False, segment_bytes=1 << 20)
    _work(q, clock, 40, 0)
    q.compact()
    fp = q._state.fingerprint()
    q.close()
    _damage_newest(store_dir, "flip")
    q = _open(store_dir, clock)
    assert q.snapshot_report.lsn == 0 and len(q.snapshot_report.problems) == 1
    assert q._state.fingerprint() == fp and len(q._state.jobs) == 40
    q.close()


def test_leftover_tmp_removed_and_reported(store):
    d, clock, fp, _ = store
    (d / "snap" / ("9" * 20 + ".snap.tmp")).write_bytes(b"partial")
    q = _open(d, clock)
    assert q.snapshot_report.removed_tmp == ["9" * 20 + ".snap.tmp"]
    assert q._state.fingerprint() == fp
    q.close()


def test_snapshot_files_are_private(store):
    d, _, _, _ = store
    for _, p in S.list_snapshots(d / "snap"):
        assert (p.stat().st_mode & 0o777) == 0o600


def test_history_survives_compaction(store_dir):
    clock = Clock()
    q = _open(store_dir, clock)
    jid = q.enqueue(Job(job_type="t", payload={}, max_retries=2))
    clock.t += 1
    j = q.claim("w")
    q.fail(j.id, j.token, "first")
    clock.t += 100
    j = q.claim("w")
    q.complete(j.id, j.token, 7)
    hist = q.history(jid)
    for k in range(3):
        _work(q, clock, 30, k)
        q.compact()
    q.close()
    q = _open(store_dir, clock)
    assert q.log.first_lsn > 1                    # the job's records are gone from the WAL
    assert q.history(jid) == hist
    assert [t.kind for t in hist] == ["enqueue", "claim", "fail", "claim", "complete"]
    q.close()
