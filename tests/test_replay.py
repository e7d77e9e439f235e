"""replay.py: the one loop recovery, as_of and verify share."""

import pytest

from aurora_log.errors import CorruptionError
from aurora_log.local import records as R
from aurora_log.local.log import REC_HDR, Log
from aurora_log.local.replay import replay
from aurora_log.local.state import State

T0 = 1_800_000_000_000


def _records(n):
    out = []
    for i in range(n):
        out.append(R.Enqueue(f"j{i}", "t", "q", 2, 3, T0 + i, T0 + i, None, None, 30_000, None,
                             b"{}"))
        if i % 3 == 0:
            out.append(R.Claim(f"j{i}", T0 + i, b"%08d" % i, T0 + i + 30_000, "w"))
    return out


@pytest.fixture
def store(tmp_path):
    recs = _records(30)
    with Log.open(tmp_path / "s", durability="os") as lg:
        for r in recs:
            lg.append(*R.encode(r))
        lg.flush()
    return tmp_path / "s", recs


def _folded(recs, upto=None):
    s = State()
    for lsn, r in enumerate(recs, 1):
        if upto is not None and lsn > upto:
            break
        s.apply(lsn, R.encode(r)[0], r)
    return s


def test_replay_equals_the_fold_of_every_record(store):
    path, recs = store
    with Log.open(path, read_only=True) as lg:
        done = replay(lg)
    assert done.state.fingerprint() == _folded(recs).fingerprint()
    assert done.next_lsn == len(recs) + 1
    assert done.max_at_ms == max(r.at_ms for r in recs)
    assert done.bytes == sum(len(R.encode(r)[1]) + REC_HDR for r in recs)


def test_replay_from_a_base_state_and_until_an_lsn_or_a_time(store):
    path, recs = store
    with Log.open(path, read_only=True) as lg:
        base = _folded(recs, 10)
        done = replay(lg, base, 10, until_lsn=20)
        assert done.state is base and done.next_lsn == 21
        assert done.state.fingerprint() == _folded(recs, 20).fingerprint()
        # until a time: stops before the first record later than it
        cut = recs[14].at_ms
        last = max(i for i, r in enumerate(recs, 1) if r.at_ms <= cut and
                   all(x.at_ms <= cut for x in recs[:i]))
        done = replay(lg, until_ms=cut)
        assert done.state.fingerprint() == _folded(recs, last).fingerprint()


def test_a_gap_before_the_log_is_corruption(store):
    path, recs = store
    with Log.open(path, read_only=True) as lg:
        with pytest.raises(CorruptionError, match="not stored"):
            replay(lg, State(), -5)          # asks for LSN -4 on: the log starts at 1


class _Seen:
    """A ReplayCheck that writes down what it is shown."""

    def __init__(self):
        self.seen_before, self.seen_after, self.bad = [], [], []

    def before(self, state, lsn, rtype, rec):
        self.seen_before.append((lsn, state.last_lsn))

    def after(self, state, lsn, rtype, rec):
        self.seen_after.append((lsn, state.last_lsn))

    def undecodable(self, lsn, error):
        self.bad.append(lsn)


def test_a_check_sees_every_record_around_its_fold(store):
    path, recs = store
    seen = _Seen()
    with Log.open(path, read_only=True) as lg:
        replay(lg, check=seen)
    n = len(recs)
    assert seen.seen_before == [(lsn, lsn - 1) for lsn in range(1, n + 1)]   # before its fold
    assert seen.seen_after == [(lsn, lsn) for lsn in range(1, n + 1)]        # after it
    assert seen.bad == []


def test_a_record_that_does_not_decode_raises_unless_a_check_takes_it(tmp_path):
    with Log.open(tmp_path / "s", durability="os") as lg:
        lg.append(*R.encode(_records(1)[0]))
        lg.append(R.CLAIM, b"\x01not a claim")
        lg.append(*R.encode(_records(2)[2]))
        lg.flush()
    with Log.open(tmp_path / "s", read_only=True) as lg:
        with pytest.raises(R.RecordError):
            replay(lg)
        seen = _Seen()
        done = replay(lg, check=seen)
    assert seen.bad == [2] and [lsn for lsn, _ in seen.seen_after] == [1, 3]
    assert done.next_lsn == 4 and set(done.state.jobs) == {"j0", "j1"}
