"""The background trigger, progress reporting, and compaction racing live operations."""

import threading
import time

import aurora_log
from aurora_log import Job
from aurora_log.local import snapshot as S
from aurora_log.local.state import State


def _open(d, **kw):
    kw.setdefault("auto_compact", False)
    kw.setdefault("segment_bytes", 1 << 16)
    return aurora_log.open(d, reaper_interval=None, durability="os", **kw)


def _wait_for(cond, limit=60.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_size_bound_triggers_background_compaction(store_dir):
    # exclusive=True: compares fingerprints (with the last LSN) across a reopen, which the
    # default mode's ATTACH/DETACH records move (and its close hands RUNNING jobs back)
    q = _open(store_dir, auto_compact=True, compact_wal_bytes=64 << 10, compact_factor=None,
              exclusive=True)
    assert q._compactor._thread is not None
    q.enqueue_many([Job("t", {"i": i, "pad": "p" * 80}) for i in range(1500)])
    assert _wait_for(lambda: S.list_snapshots(store_dir / "snap"))
    assert _wait_for(lambda: q._compactor.last_result is not None)
    assert q._compactor.wal_since() < 64 << 10 or q._compactor.due()
    fp = q._state.fingerprint()
    q.close()
    q = _open(store_dir, exclusive=True)
    assert q.snapshot_report.lsn > 0 and q._state.fingerprint() == fp
    q.close()


def test_factor_of_snapshot_size_triggers(store_dir):
    q = _open(store_dir, auto_compact=False, compact_wal_bytes=None, compact_factor=2.0)
    c = q._compactor
    c.min_bytes = 1024
    q.enqueue_many([Job("t", {"i": i}) for i in range(200)])
    q.compact()
    assert not c.due()
    size = c.last_size
    while c.wal_since() < 2 * size:
        q.enqueue(Job("t", {"more": 1}), durable=False)
    q.flush()
    assert c.due()
    q.close()


def test_disabled_trigger_has_no_thread(store_dir):
    q = _open(store_dir, auto_compact=False)
    assert q._compactor._thread is None
    q.close()
    q = _open(store_dir, auto_compact=True, compact_wal_bytes=None, compact_factor=None)
    assert q._compactor._thread is None
    q.close()


def test_on_progress_reports_done_and_total(store_dir):
    q = _open(store_dir)
    q._compactor.progress_every = 300
    q.enqueue_many([Job("t", {"i": i}) for i in range(1000)], durable=False)
    seen = []
    res = q.compact(on_progress=lambda done, total: seen.append((done, total)))
    total = res.jobs + 1
    assert seen[-1] == (total, total)
    assert all(t == total for _, t in seen) and len(seen) >= 3
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    q.close()


def test_compaction_racing_live_operations(store_dir):
    """Producers and workers run while compactions capture the state: every snapshot is
    the state at its LSN, so reopening (snapshot + tail) gives exactly the live state."""
    # exclusive=True: compares fingerprints (with the last LSN) across a reopen, which the
    # default mode's ATTACH/DETACH records move (and its close hands RUNNING jobs back)
    q = _open(store_dir, retain_seconds=None, retain_count=None, exclusive=True)
    q.enqueue_many([Job("t", {"i": i}) for i in range(1000)], durable=False)
    stop = threading.Event()
    errors = []

    def producer(k):
        i = 0
        while not stop.is_set():
            q.enqueue(Job("t", {"p": k, "i": i}), durable=False)
            i += 1

    def worker(k):
        n = 0
        while not stop.is_set():
            j = q.claim(f"w{k}")
            if j is None:
                continue
            n += 1
            try:
                if n % 7 == 0:
                    q.fail(j.id, j.token, "again", durable=False)
                elif n % 11 == 0:
                    q.heartbeat(j.id, j.token)
                    q.progress(j.id, j.token, 0.5, "half")
                else:
                    q.complete(j.id, j.token, {"n": n}, durable=False)
            except Exception as e:  # noqa: BLE001
                errors.append(e)

    ths = [threading.Thread(target=producer, args=(k,)) for k in range(2)] + \
          [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in ths:
        t.start()
    try:
        results = [q.compact() for _ in range(3)]
    finally:
        stop.set()
        for t in ths:
            t.join()
    assert not errors
    # each snapshot equals the log replayed to its LSN (verify checks it), and reopen = live
    assert all(r.lsn > 0 for r in results)
    q.flush()
    fp = q._state.fingerprint()
    from aurora_log.local.verify import verify
    rep = verify(store_dir, deep_limit=10**9)
    assert rep.ok, str(rep)
    q.close()
    q = _open(store_dir, read_only=True)     # read_only: no "process died" recovery
    assert q.snapshot_report.lsn == results[-1].lsn
    assert q._state.fingerprint() == fp
    q.close()


def test_snapshot_at_its_lsn_equals_replay(store_dir):
    """Directly: load each kept snapshot and compare with a replay of the log to its LSN."""
    q = _open(store_dir, segment_bytes=1 << 22, retain_seconds=None, retain_count=None)
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            j = q.claim("w")
            if j is not None:
                q.complete(j.id, j.token, durable=False)
            q.enqueue(Job("t", {}), durable=False)

    q.enqueue_many([Job("t", {"i": i}) for i in range(2000)], durable=False)
    t = threading.Thread(target=churn)
    t.start()
    try:
        lsns = [q.compact().lsn for _ in range(2)]
    finally:
        stop.set()
        t.join()
    q.close()
    from aurora_log.local.log import Log
    st = State()
    want = {}
    with Log.open(store_dir, read_only=True) as lg:
        assert lg.first_lsn == 1
        for lsn, rt, p in lg.scan(1):
            st.apply(lsn, rt, p)
            if lsn in lsns:
                want[lsn] = st.fingerprint()
    for lsn, p in S.list_snapshots(store_dir / "snap"):
        _, snap = S.load_snapshot(p)
        assert snap.fingerprint() == want[lsn]
