"""replay's bulk fold of ENQUEUE runs (native/enqrun.c + replay._fold_enqueue_run): the
state it builds is the record-by-record fold's, whatever the log holds, on an empty state
and over a lazily loaded snapshot."""

import pytest

from aurora_log.local import records as R
from aurora_log.local import replay as RP
from aurora_log.local import snapfile as S
from aurora_log.local.log import Log
from aurora_log.local.replay import replay
from aurora_log.local.state import State
from aurora_log.local.table import LazyJobs

T0 = 1_800_000_000_000


def _enq(i, *, job_type="t", queue="q", prio=2, sched=None, timeout=None, ukey=None,
         at=None, job_id=None, payload=None):
    at = T0 + i if at is None else at
    return R.Enqueue(job_id or f"{i:08x}-0000-4000-8000-{i:012x}", job_type, queue, prio, 3,
                     at, at, sched, timeout, 30_000, ukey,
                     payload or b'{"i": %d}' % i)


def _batches():
    """Batches as the queue writes them, with everything the bulk path must hand back to
    the one-by-one fold somewhere in a run."""
    b = []
    b.append([_enq(i) for i in range(40)])                          # one plain run
    b.append([_enq(40 + i, job_type="u" if i % 3 else "t", prio=1 + i % 4)
              for i in range(30)])                                  # pairs and priorities
    b.append([_enq(70, sched=T0 + 10_000), _enq(71, sched=T0 - 5),   # due later / earlier
              _enq(72, sched=-7), _enq(73, sched=(1 << 47) + 5), _enq(74, timeout=5_000),
              _enq(75, at=T0 - 1_000)])                             # clock went backwards
    b.append([_enq(76, ukey="k1"), _enq(77), _enq(78, ukey="k1")])   # unique keys
    b.append([_enq(79, job_id="jöb-79"), _enq(80, job_id="a\nb"), _enq(81)])  # odd ids
    b.append([_enq(82), _enq(83), _enq(84, job_id=_enq(82).id)])     # a repeat in a run
    b.append([_enq(85, job_id=_enq(3).id), _enq(86)])                # a repeat of old
    b.append([R.Claim(_enq(5).id, T0 + 90, b"%08d" % 5, T0 + 30_090, "w"),
              R.Purge(T0 + 91, (_enq(6).id,))])
    b.append([R.Depends(_enq(87).id, T0 + 92, (_enq(7).id,), 1), _enq(87), _enq(88)])
    b.append([_enq(89, job_type="é"), _enq(90, queue="q2"), _enq(91, payload=b"{}")])
    b.append([_enq(92 + i) for i in range(20)])
    return b


def _write(path, batches):
    with Log.open(path, durability="os") as lg:
        for recs in batches:
            lg.append_many([R.encode(r) for r in recs])
        lg.flush()


def _one_by_one(path, base=None, base_lsn=0):
    s = base if base is not None else State()
    with Log.open(path, read_only=True) as lg:
        for lsn, rtype, payload in lg.scan(base_lsn + 1):
            s.apply(lsn, rtype, payload)
    return s


def _drained(s, now):
    out = []
    while (j := s.pick(now)) is not None:
        s.apply(s.last_lsn + 1, R.CLAIM, s.plan_claim(j, now, b"%08d" % len(out), "w"))
        out.append(j)
    return out


def _same(a, b):
    assert a.pairs == b.pairs
    assert a.applied == b.applied and a.anomalies == b.anomalies
    assert a.next_due_ms() == b.next_due_ms()
    assert list(a.jobs) == list(b.jobs)
    assert a.fingerprint() == b.fingerprint()
    now = T0 + 1_000_000
    assert _drained(a, now) == _drained(b, now)
    assert a.fingerprint() == b.fingerprint()


@pytest.fixture
def spy(monkeypatch):
    runs = []
    real = RP._fold_enqueue_run

    def counting(*args):
        out = real(*args)
        runs.append(out[0])
        return out
    monkeypatch.setattr(RP, "_fold_enqueue_run", counting)
    return runs


def test_bulk_replay_equals_the_fold_of_every_record(tmp_path, spy):
    _write(tmp_path / "s", _batches())
    with Log.open(tmp_path / "s", read_only=True) as lg:
        done = replay(lg)
    ref = _one_by_one(tmp_path / "s")
    assert done.next_lsn == ref.last_lsn + 1
    assert max(spy) >= 40 and min(spy) < 0 and 0 in spy   # bulk, handed back, not taken
    assert any(a for a in ref.anomalies)                  # the repeats were refused
    _same(done.state, ref)


class _BoundsScanAlone(Log):
    """A log that bounds scan() its own way but leaves scan_chunks as Log's."""

    def scan(self, from_lsn=1):
        return super().scan(from_lsn)


def test_a_log_bounding_only_its_scan_is_replayed_record_by_record(tmp_path, spy):
    _write(tmp_path / "s", _batches())
    with Log.open(tmp_path / "s", read_only=True) as lg:
        lg.__class__ = _BoundsScanAlone
        done = replay(lg)
    assert spy == []                   # the bulk path's bound would not be the log's
    _same(done.state, _one_by_one(tmp_path / "s"))


@pytest.mark.parametrize("form", ["uuid", "fixed"])
def test_bulk_replay_over_a_lazy_snapshot(tmp_path, spy, form):
    batches = _batches()
    if form == "fixed":      # every id 12 bytes: the snapshot's fixed-width id form
        batches = [[r._replace(id=f"id{r.id[-10:]}") if type(r) is R.Enqueue
                    and "-" in r.id else r for r in b] for b in batches[:3]] + \
            [[_enq(200 + i, job_id=f"id{200 + i:010d}") for i in range(10)]]
    _write(tmp_path / "s", batches)
    cut = sum(len(b) for b in batches[:2])                 # snapshot after two batches
    src = _one_by_one_until(tmp_path / "s", cut)
    data = S.encode_state(src, cut, T0)
    _, lazy = S.decode_snapshot(data, "x.snap")
    _, lazy2 = S.decode_snapshot(data, "x.snap")
    assert type(lazy.jobs) is LazyJobs and lazy.jobs._base.uuid == (form == "uuid")
    with Log.open(tmp_path / "s", read_only=True) as lg:
        done = replay(lg, lazy, cut)
    assert done.state is lazy and type(lazy.jobs) is LazyJobs   # still lazy
    assert max(spy) > 1
    _same(lazy, _one_by_one(tmp_path / "s", lazy2, cut))


def test_a_run_repeating_a_snapshot_id_is_refused_like_one_by_one(tmp_path, spy):
    first = [_enq(i) for i in range(20)]
    _write(tmp_path / "s", [first, [_enq(20), _enq(21, job_id=first[4].id), _enq(22)]])
    src = _one_by_one_until(tmp_path / "s", 20)
    data = S.encode_state(src, 20, T0)
    _, lazy = S.decode_snapshot(data, "x.snap")
    _, lazy2 = S.decode_snapshot(data, "x.snap")
    with Log.open(tmp_path / "s", read_only=True) as lg:
        replay(lg, lazy, 20)
    assert spy == [-3]                                   # handed back whole
    assert [a[0] for a in lazy.anomalies] == [22]
    _same(lazy, _one_by_one(tmp_path / "s", lazy2, 20))


def _one_by_one_until(path, last):
    s = State()
    with Log.open(path, read_only=True) as lg:
        for lsn, rtype, payload in lg.scan(1):
            if lsn > last:
                break
            s.apply(lsn, rtype, payload)
    return s


def test_the_newest_segment_open_read_is_let_go_after_replay(tmp_path):
    """open() keeps the newest segment's verified batch boundaries for the first scan;
    replay lets go of them whether it scanned (records after the snapshot) or not (none)."""
    import aurora_log
    from aurora_log import Job
    for tail in (False, True):
        d = tmp_path / f"s{tail}"
        q = aurora_log.open(d)
        q.enqueue_many([Job("t", {"i": i}) for i in range(50)])
        q.compact()
        if tail:
            q.enqueue(Job("t", {"i": 50}))
        q.close()
        with Log.open(d, read_only=True) as lg:
            assert lg._open_marks is None             # read-only opens keep nothing
        q = aurora_log.open(d)
        assert q._log._open_marks is None and len(q.list()) == 50 + tail
        q.close()


def test_a_shared_store_is_replayed_in_bulk_up_to_its_bound(tmp_path, spy, shared_store):
    """The shared log bounds its scans by the control page; its scan_chunks keeps the same
    bound, so the default mode's reopen takes the bulk path too, to the same state."""
    import aurora_log
    from aurora_log import Job
    from mp_support import shared_options
    d = tmp_path / "s"
    q = aurora_log.open(d, **shared_options())
    ids = q.enqueue_many([Job("t", {"i": i}) for i in range(30)])
    q.close()
    q = aurora_log.open(d, **shared_options())
    try:
        assert [j.id for j in q.list()] == ids and spy == [30]
        assert q.claim("w").id == ids[0]
    finally:
        q.close()
