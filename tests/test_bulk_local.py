"""The local store's bulk enqueue (enqueue_many(job_type, payloads, ...)): the records it
packs in one pass are byte for byte the ENQUEUE records of the Job path, and its one-pass
fold leaves the state that folding those records one by one (replay) leaves. The
behaviour both backends share is in tests/conformance/test_bulk_enqueue.py."""

import heapq
from datetime import UTC, datetime, timedelta

import pytest
from fakeclock import FakeClock

import aurora_log
from aurora_log.job import JobPriority, new_ids
from aurora_log.local import records as R
from aurora_log.local.state import State
from aurora_log.local.table import Rec

T0 = 1_800_000_000.0


def payloads(n, start=0):
    return [{"i": i, "email": f"user{i}@example.com", "tags": ["a", i]}
            for i in range(start, start + n)]


def _open(path, **kw):
    # these tests hold the bulk fold against the record-by-record fold and the log's bytes
    # record by record: the exclusive mode folds a batch as it writes it (the default,
    # shared mode writes a batch of fresh ids unfolded and folds it at the next catch-up,
    # with ATTACH/DETACH records around; test_bulk_in_shared_mode_* covers it)
    kw.setdefault("reaper_interval", None)
    kw.setdefault("auto_compact", False)
    if not kw.get("shared"):
        kw.setdefault("exclusive", True)
    return aurora_log.open(path, **kw)


# ------------------------------------------------------------------ record bytes

@pytest.mark.parametrize("sched, timeout, job_type, queue", [
    (None, 300_000, "mail", "default"),
    (T0 * 1000 + 5000, None, "rapport-é", "file-ü"),
    (0, 1, "t", "q"),
])
def test_packed_run_is_the_job_paths_records(sched, timeout, job_type, queue):
    ids = new_ids(7)
    pls = [b"{}", b'{"a":1}', b"", b'{"x":"' + b"y" * 300 + b'"}'] + [b'{"i":%d}' % i
                                                                     for i in range(3)]
    sched = None if sched is None else int(sched)
    lens, data = R.pack_enqueue_run([i.encode() for i in ids], job_type.encode(),
                                    queue.encode(), 3, 9, 111, 222, sched, timeout, 30_000, pls)
    one_by_one = [R.pack_enqueue(i.encode(), job_type.encode(), queue.encode(), None, 3, 9,
                                 111, 222, sched, timeout, 30_000, p)
                  for i, p in zip(ids, pls, strict=True)]
    assert list(lens) == [len(r) for r in one_by_one]
    assert data == b"".join(one_by_one)
    for i, p, rec in zip(ids, pls, one_by_one, strict=True):
        assert rec == R.encode_enqueue(R.Enqueue(i, job_type, queue, 3, 9, 111, 222, sched,
                                                 timeout, 30_000, None, p))


def test_packed_run_refuses_ids_of_different_lengths():
    with pytest.raises(ValueError):
        R.pack_enqueue_run([b"ab", b"abc"], b"t", b"q", 2, 3, 0, 0, None, None, 1, [b"{}"] * 2)


def test_the_log_holds_the_records_a_job_would_have_written(tmp_path):
    clock = FakeClock(T0)
    q = _open(tmp_path / "s", clock=clock)
    pls = payloads(20)
    ids = q.enqueue_many("mail", pls, priority=JobPriority.HIGH, queue="out", max_retries=5,
                         timeout_seconds=None, lease_duration=7)
    q.flush()
    got = list(q.log.scan(1))
    q.close()
    now = int(T0 * 1000)
    assert [(lsn, rt) for lsn, rt, _ in got] == [(k + 1, R.ENQUEUE) for k in range(20)]
    for (_, _, data), jid, p in zip(got, ids, pls, strict=True):
        want = R.encode_enqueue(R.Enqueue(jid, "mail", "out", 3, 5, now, now, None, None, 7000,
                                          None, aurora_log.job.encode_payload(p)))
        assert bytes(data) == want


# ------------------------------------------------------------------ the fold

def _state_view(st: State):
    """Everything the fold decides, comparable between two states."""
    jobs = {k: v if isinstance(v, bytes) else tuple(getattr(v, f) for f in Rec.__slots__)
            for k, v in st.jobs.items()}
    ready = [sorted([*h, *lane]) for h, lane in zip(st.order.ready, st.order.lanes, strict=True)]
    return (jobs, st.pairs, ready, sorted(st.order.timers),
            st._counts, st._qcounts, st.last_lsn, st.applied, st._unique)


def _fold_both(ids, job_type, queue, prio, maxr, created, at, sched, tmo, lease, pls,
               prepare=None):
    a, b = State(), State()
    for st in (a, b):
        if prepare:
            prepare(st)
    first = a.last_lsn + 1
    a.apply_enqueue_run(first, ids, job_type, queue, prio, maxr, created, at, sched, tmo,
                        lease, pls)
    for k, (i, p) in enumerate(zip(ids, pls, strict=True)):
        b.apply(first + k, R.ENQUEUE, R.encode_enqueue(R.Enqueue(
            i, job_type, queue, prio, maxr, created, at, sched, tmo, lease, None, p)))
    return a, b


@pytest.mark.parametrize("sched", [None, 500, 10**6])
def test_run_fold_equals_record_by_record(sched):
    ids = new_ids(50)
    pls = [b'{"i":%d}' % i for i in range(50)]

    def prepare(st):          # some jobs and pairs there already
        st.apply(1, R.ENQUEUE, R.Enqueue("x1", "other", "q9", 4, 3, 0, 1, None, 1, 1, "k",
                                         b"{}"))
        st.apply(2, R.ENQUEUE, R.Enqueue("x2", "t", "q", 1, 3, 0, 2, None, 1, 1, None, b"{}"))
    a, b = _fold_both(ids, "t", "q", 2, 4, 900, 1000, sched, None, 30_000, pls, prepare)
    assert _state_view(a) == _state_view(b)


def test_run_fold_defers_to_the_record_path_for_a_job_a_depends_waits_for():
    ids = new_ids(3)
    pls = [b"{}"] * 3

    def prepare(st):
        st.apply(1, R.ENQUEUE, R.Enqueue("parent", "t", "q", 2, 3, 0, 1, None, 1, 1, None,
                                         b"{}"))
        st.apply(2, R.DEPENDS, R.Depends(ids[1], 2, ("parent",), R.ON_FAILURE_CANCEL))
    a, b = _fold_both(ids, "t", "q", 2, 3, 5, 5, None, 1000, 1000, pls, prepare)
    assert _state_view(a) == _state_view(b)
    assert a.control.waiting and ids[1] in a.control.waiting
    # the waiting child is not claimable; its siblings are
    pair = a._pair_ix[("q", "t")]
    ready = [i for _, i in [*a.order.ready[pair], *a.order.lanes[pair]]]
    assert ids[1] not in ready and ids[0] in ready and ids[2] in ready


def test_live_state_after_bulk_equals_the_replayed_state(tmp_path):
    clock = FakeClock(T0)
    q = _open(tmp_path / "s", clock=clock)
    q.enqueue_many("a", payloads(30))
    q.enqueue_many("b", payloads(10), queue="other", priority="low",
                   scheduled_at=datetime.fromtimestamp(T0 + 60, UTC))
    q.enqueue_many("a", payloads(5), unique_keys=["u1", "u2", "u1", None, None])
    j = q.claim("w")
    q.complete(j.id, j.token)
    live = _state_view(q._state)
    q.close()
    q2 = _open(tmp_path / "s", clock=clock)
    assert _state_view(q2._state)[:7] == live[:7]
    q2.close()


def test_a_duplicate_id_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    import aurora_log.local.queue as Q
    q = _open(tmp_path / "s")
    ids = q.enqueue_many("t", payloads(3))
    lsn = q.stats()["last_lsn"]
    monkeypatch.setattr(Q, "new_ids", lambda n: [ids[1]] + new_ids(n - 1))
    with pytest.raises(ValueError, match="already exists"):
        q.enqueue_many("t", payloads(3))
    assert q.stats()["last_lsn"] == lsn and q.stats()["pending"] == 3
    q.close()


def test_a_compaction_capturing_notes_the_bulk_jobs(tmp_path):
    q = _open(tmp_path / "s")
    q._touched = {}                       # as Compactor.track_touched leaves it
    ids = q.enqueue_many("t", payloads(4))
    assert list(q._touched) == ids
    q._touched = None
    q.close()


def test_bulk_after_a_lazy_snapshot_load(tmp_path):
    q = _open(tmp_path / "s")
    old = q.enqueue_many("t", payloads(300))
    q.compact()
    q.close()
    q = _open(tmp_path / "s")
    assert type(q._state.jobs).__name__ == "LazyJobs"
    new = q.enqueue_many("t", payloads(5))
    assert q.stats()["pending"] == 305
    assert [q.claim("w").id for _ in range(305)] == old + new
    q.close()


def test_bulk_in_shared_mode_is_seen_by_every_process(tmp_path):
    a = _open(tmp_path / "s", shared=True)
    b = _open(tmp_path / "s", shared=True)
    ids = a.enqueue_many("t", payloads(20), priority=JobPriority.HIGH)
    more = b.enqueue_many("t", payloads(2), unique_keys=["k", "k"])
    assert b.get(ids[5]).payload == payloads(20)[5]
    assert [b.claim("w").id for _ in range(20)] == ids
    assert a.claim("w").id == more[0] == more[1]
    a.close()
    b.close()
    c = _open(tmp_path / "s")
    assert c.stats()["running"] == 0 and c.stats()["total"] == 21
    c.close()


def test_max_record_bytes_refuses_the_batch_before_writing(tmp_path):
    q = _open(tmp_path / "s", max_record_bytes=4096, max_payload_bytes=1 << 20)
    with pytest.raises(ValueError, match="max_record_bytes"):
        q.enqueue_many("t", [{}, {"x": "y" * 5000}])
    assert q.stats()["total"] == 0 and q.stats()["last_lsn"] == 0
    q.enqueue_many("t", [{}])
    q.close()


def test_async_bulk(tmp_path):
    import asyncio
    q = _open(tmp_path / "s")

    async def go():
        return await q.enqueue_many_async("t", payloads(3), durable=True)
    ids = asyncio.run(go())
    assert [q.claim("w").id for _ in range(3)] == ids
    q.close()


def test_timer_heap_takes_scheduled_bulk_jobs(tmp_path):
    clock = FakeClock(T0)
    q = _open(tmp_path / "s", clock=clock)
    at = datetime.fromtimestamp(T0, UTC) + timedelta(seconds=30)
    ids = q.enqueue_many("t", payloads(3), scheduled_at=at)
    assert [i for _, i in heapq.nsmallest(3, q._state.order.timers)] == ids
    assert q.claim("w") is None
    clock.advance(30)
    assert [q.claim("w").id for _ in range(3)] == ids
    q.close()


def test_add_run_keeps_every_heap_a_heap_and_the_order_of_single_adds():
    # the heaps hold what add() one by one would have, and pop in the same order
    import random
    from aurora_log.local.order import ClaimOrder
    rng = random.Random(21)
    for _ in range(300):
        a, b = ClaimOrder(None), ClaimOrder(None)
        a.add_pair()
        b.add_pair()
        for k in range(rng.randint(1, 6)):
            n = rng.randint(1, 40)
            prio, due = rng.randint(1, 4), rng.choice([5, 10, 10, 20])
            seq, at = rng.randint(1, 10**6) * 100, rng.choice([10, 10, 0])
            ids = [f"j{k}-{i}" for i in range(n)]
            a.add_run(ids, 0, prio, due, seq, at)
            for i, jid in enumerate(ids):
                b.add(jid, 0, prio, due, seq + i, at)
        for ha, hb in ((a.ready[0], b.ready[0]), (a.timers, b.timers)):
            assert all(ha[(i - 1) // 2] <= ha[i] for i in range(1, len(ha)))
            assert sorted(ha) == sorted(hb)
            assert [heapq.heappop(ha) for _ in range(len(ha))] == \
                [heapq.heappop(hb) for _ in range(len(hb))]


def test_job_batches_fold_by_runs_to_the_replayed_state(tmp_path, monkeypatch):
    # a list of Jobs without unique keys or parents is folded by runs of equal fields
    # (State.apply_enqueues): the live state is the state replay builds record by record
    from aurora_log import Job
    runs = []
    real = State.apply_enqueues
    monkeypatch.setattr(State, "apply_enqueues",
                        lambda self, first, recs: (runs.append(len(recs)),
                                                   real(self, first, recs)))
    clock = FakeClock(T0)
    q = _open(tmp_path / "s", clock=clock)
    t0 = datetime.fromtimestamp(T0, UTC)
    jobs = []
    for i in range(60):
        j = Job("t" if i % 7 else "u", {"i": i}, priority=1 + i // 20,
                created_at=t0 + timedelta(milliseconds=i // 9),
                queue="q" if i % 11 else "r", id=None if i % 5 else f"custom-{i}")
        if i % 13 == 0:
            j.schedule_at(t0 + timedelta(seconds=5))
        jobs.append(j)
    ids = q.enqueue_many(jobs)
    assert ids == [j.id for j in jobs] and runs == [60]
    more = q.enqueue_many([Job("t", unique_key="k"), Job("t")])   # a unique key: by record
    assert runs == [60]
    live = _state_view(q._state)
    q.close()
    q2 = _open(tmp_path / "s", clock=clock)
    assert _state_view(q2._state)[:7] == live[:7]
    clock.advance(10)
    got = [q2.claim("w").id for _ in range(62)]
    assert sorted(got) == sorted(ids + more) and q2.claim("w") is None
    q2.close()
