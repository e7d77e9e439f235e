"""verify(path): read-only; finds damaged segments and snapshots, LSN gaps, invariant breaks."""

import hashlib
import os

import aurora_log
from aurora_log import Job
from aurora_log.local import records as R
from aurora_log.local import snapshot as S
from aurora_log.local.log import Log
from aurora_log.local.verify import verify

T0 = 1_700_000_000.0


def _open(d, **kw):
    kw.setdefault("auto_compact", False)
    return aurora_log.open(d, clock=lambda: T0, reaper_interval=None, durability="os",
                           segment_bytes=8192, **kw)


def _tree(d):
    out = {}
    for root, _, files in os.walk(d):
        for f in files:
            p = os.path.join(root, f)
            out[p] = (hashlib.sha256(open(p, "rb").read()).hexdigest(), os.stat(p).st_mtime_ns)
    return out


def _make(d, archive=False, compactions=3):
    q = _open(d, archive=archive)
    for k in range(compactions):
        for i in range(40):
            q.enqueue(Job(job_type="t", payload={"k": k, "i": i, "pad": "v" * 30}),
                      durable=False)
        for i in range(15):
            j = q.claim("w")
            if i % 4:
                q.complete(j.id, j.token, durable=False)
            else:
                q.fail(j.id, j.token, "e", durable=False)
        q.compact()
    q.enqueue(Job(job_type="t", payload={}))
    q.claim("w")                      # a live lease at the end is fine
    q.flush()
    return q


def test_clean_store_is_ok_and_untouched(store_dir):
    q = _make(store_dir)
    before = _tree(store_dir)
    rep = verify(store_dir)           # while the queue holds the store
    assert rep.ok, str(rep)
    assert rep.valid_snapshots == rep.snapshots == 2
    assert rep.records > 0 and rep.jobs == len(q._state.jobs)
    assert rep.next_lsn == q._state.last_lsn + 1
    assert _tree(store_dir) == before
    q.close()
    assert verify(store_dir).ok
    assert "OK" in str(verify(store_dir))


def test_archive_store_checks_from_lsn_1(store_dir):
    q = _make(store_dir, archive=True)
    q.close()
    rep = verify(store_dir)
    assert rep.ok, str(rep)
    assert rep.first_lsn == 1 and rep.base_lsn == 0 and rep.archived_segments > 0


def test_flipped_segment_byte_is_a_problem_with_location(store_dir):
    _make(store_dir).close()
    segs = sorted((store_dir / "wal").glob("*.seg"))
    p = segs[0]
    b = bytearray(p.read_bytes())
    b[100] ^= 0x04
    p.write_bytes(bytes(b))
    before = _tree(store_dir)
    rep = verify(store_dir)
    assert not rep.ok
    (prob,) = [x for x in rep.problems if x.kind == "checksum"]
    assert prob.file == str(p) and prob.offset is not None
    assert _tree(store_dir) == before


def test_damaged_snapshot_is_reported(store_dir):
    _make(store_dir).close()
    lsn, p = S.list_snapshots(store_dir / "snap")[-1]
    b = bytearray(p.read_bytes())
    b[-10] ^= 0xFF
    p.write_bytes(bytes(b))
    before = _tree(store_dir)
    rep = verify(store_dir)
    assert not rep.ok and rep.valid_snapshots == 1
    assert any(x.kind == "snapshot" and x.file == str(p) for x in rep.problems)
    assert _tree(store_dir) == before         # not moved aside: verify changes nothing


def test_torn_tail_is_a_warning_and_is_not_cut(store_dir):
    q = _make(store_dir)
    q.flush()
    newest = sorted((store_dir / "wal").glob("*.seg"))[-1]
    q.close()
    # garbage right after the end of data, as a crash mid-write leaves
    data = bytearray(newest.read_bytes())
    end = len(data.rstrip(b"\0"))
    end = (end + 7) & ~7
    data[end:end + 16] = b"\x99" * 16
    newest.write_bytes(bytes(data))
    before = _tree(store_dir)
    rep = verify(store_dir)
    assert rep.ok, str(rep)
    assert [w.kind for w in rep.warnings] == ["torn-tail"]
    assert _tree(store_dir) == before


def test_missing_snapshots_with_retired_log(store_dir):
    _make(store_dir).close()
    for _, p in S.list_snapshots(store_dir / "snap"):
        p.unlink()
    rep = verify(store_dir)
    assert not rep.ok and rep.problems[0].kind == "continuity"


def _raw_store(d, recs):
    with Log.open(d, durability="os", segment_bytes=8192) as lg:
        lg.append_many([R.encode(r) for r in recs])


def _enq(jid):
    return R.Enqueue(jid, "t", "q", 2, 3, 1000, 1000, None, None, 30_000, None, b"{}")


def test_two_live_leases_and_stale_token_are_invariant_problems(store_dir):
    a, b = b"A" * 8, b"B" * 8
    _raw_store(store_dir, [
        _enq("j1"), _enq("j2"),
        R.Claim("j1", 2000, a, 40_000, "w1"),
        R.Claim("j1", 2001, b, 40_000, "w2"),            # second live lease
        R.Complete("j2", 2002, a, None),                  # ends a lease that is not live
        R.Heartbeat("j1", 2003, b, 50_000),
    ])
    rep = verify(store_dir)
    kinds = [(p.kind, p.lsn) for p in rep.problems]
    assert ("invariant", 4) in kinds and ("invariant", 5) in kinds
    assert any("two leases" in p.message for p in rep.problems)
    assert any("names an attempt token" in p.message for p in rep.problems)


def test_good_raw_history_is_ok(store_dir):
    a = b"A" * 8
    _raw_store(store_dir, [
        _enq("j1"), R.Claim("j1", 2000, a, 40_000, "w1"),
        R.Fail("j1", 2001, a, R.OUTCOME_RETRY, 3000, "x"),
        R.Claim("j1", 3001, b"C" * 8, 40_000, "w1"),
        R.Complete("j1", 3002, b"C" * 8, None),
    ])
    rep = verify(store_dir)
    assert rep.ok, str(rep)


def test_released_attempts_end_their_lease(store_dir):
    a, b, c = b"A" * 8, b"B" * 8, b"C" * 8
    _raw_store(store_dir, [
        _enq("j1"), R.Claim("j1", 2000, a, 40_000, "w1"),
        R.Release("j1", 2001, a, R.OUTCOME_RETRY),            # a worker hands it back
        R.Claim("j1", 2002, b, 40_000, "w2"),                 # one live lease again, not two
        R.Release("j1", 2003, b, R.OUTCOME_RETRY),
        R.Release("j1", 2004, c, R.OUTCOME_RETRY),            # no live lease to release
    ])
    rep = verify(store_dir)
    assert {(p.kind, p.lsn) for p in rep.problems} == {("invariant", 6)}, str(rep)
    assert "release of job j1 names an attempt token" in rep.problems[0].message


def test_not_a_store(tmp_path):
    rep = verify(tmp_path / "nope")
    assert not rep.ok and rep.problems[0].kind == "missing"
