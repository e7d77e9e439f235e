"""archive=True keeps retired segments and snapshots; open(as_of=LSN|datetime, read_only=True)
rebuilds the state as it was then, equal to the state recorded at that moment."""

from datetime import datetime, UTC

import pytest

import aurora_log
from aurora_log import Job, ReadOnlyError
from aurora_log.local import snapshot as S
from fakeclock import FakeClock as Clock

T0 = 1_700_000_000.0




def _open(d, clock, **kw):
    # exclusive=True: the history fixture reads q._state after each write to record the
    # state at that LSN; the default mode folds plain enqueues lazily (at the next read),
    # and its ATTACH/DETACH records move every LSN the points name
    kw.setdefault("auto_compact", False)
    return aurora_log.open(d, clock=clock, reaper_interval=None, durability="os",
                           segment_bytes=8192, exclusive=True, **kw)


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    d = tmp_path_factory.mktemp("asof") / "store"
    clock = Clock()
    q = _open(d, clock, archive=True, retain_seconds=60, retain_count=None)
    points = []                       # (lsn, time, fingerprint) after some operations

    def mark():
        points.append((q._state.last_lsn, clock.t, q._state.fingerprint()))

    for rnd in range(4):
        for i in range(40):
            clock.t += 1
            q.enqueue(Job(job_type="t", payload={"r": rnd, "i": i, "pad": "z" * 30}),
                      durable=False)
        mark()
        for i in range(25):
            clock.t += 1
            j = q.claim("w")
            if i % 5 == 0:
                q.fail(j.id, j.token, "nope", durable=False)
            else:
                q.complete(j.id, j.token, i, durable=False)
        mark()
        clock.t += 1
        q.compact()                   # retention purges jobs finished > 60 s ago
        mark()
    clock.t += 1
    q.enqueue(Job(job_type="t", payload={"last": True}))
    mark()
    final = q._state.fingerprint()
    q.close()
    return d, clock, points, final


def test_archive_layout(history):
    d, _, _, _ = history
    assert S.list_snapshots(d / "archive" / "snap")
    assert list((d / "archive" / "wal").glob("*.seg"))
    q = _open(d, Clock(), read_only=True)
    assert q.log.first_lsn > 1
    q.close()


def test_as_of_lsn_equals_recorded_state(history):
    d, clock, points, final = history
    for lsn, _, fp in points:
        q = aurora_log.open(d, as_of=lsn, read_only=True, reaper_interval=None)
        assert q._state.fingerprint() == fp, lsn
        q.close()


def test_as_of_datetime_equals_recorded_state(history):
    d, clock, points, final = history
    for lsn, t, fp in points:
        when = datetime.fromtimestamp(t, UTC)
        q = aurora_log.open(d, as_of=when, read_only=True, reaper_interval=None)
        assert q._state.fingerprint() == fp, (lsn, when)
        q.close()


def test_as_of_intermediate_lsns_match_a_full_replay(history):
    """Every 37th LSN: as_of == folding the archived + live records from LSN 1."""
    d, _, points, _ = history
    from aurora_log.local.log import Log
    from aurora_log.local.state import State
    recs = []
    for root in (d / "archive", d):
        # the archive's newest segment announces its successor, which is in DIR/wal
        with Log.open(root, read_only=True, continued=root.name == "archive") as lg:
            recs.extend(lg.scan(lg.first_lsn))
    assert [r[0] for r in recs] == list(range(1, len(recs) + 1))
    st = State()
    want = {}
    for lsn, rt, p in recs:
        st.apply(lsn, rt, p)
        if lsn % 37 == 0:
            want[lsn] = st.fingerprint()
    for lsn, fp in want.items():
        q = aurora_log.open(d, as_of=lsn, read_only=True, reaper_interval=None)
        assert q._state.fingerprint() == fp, lsn
        q.close()


def test_as_of_is_read_only_and_validated(history):
    d, _, points, _ = history
    with pytest.raises(ValueError):
        aurora_log.open(d, as_of=5)
    q = aurora_log.open(d, as_of=points[0][0], read_only=True, reaper_interval=None)
    with pytest.raises(ReadOnlyError):
        q.enqueue(Job(job_type="t", payload={}))
    q.close()
    with pytest.raises(TypeError):
        aurora_log.open(d, as_of="yesterday", read_only=True)


def test_before_anything_and_after_everything(history):
    d, clock, points, final = history
    q = aurora_log.open(d, as_of=0, read_only=True, reaper_interval=None)
    assert len(q._state.jobs) == 0
    q.close()
    q = aurora_log.open(d, as_of=datetime.fromtimestamp(clock.t + 10**6, UTC),
                        read_only=True, reaper_interval=None)
    assert q._state.fingerprint() == final
    q.close()
