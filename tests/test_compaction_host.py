"""The Compactor needs nothing of a queue but snapshot.CompactionHost."""

import contextlib
import threading

from aurora_log.local import records as R
from aurora_log.local import snapshot as S
from aurora_log.local.log import Log
from aurora_log.local.state import State

T0 = 1_800_000_000_000


class Host:
    """A bare CompactionHost: a log, a state and a lock, no Queue."""

    def __init__(self, log: Log):
        self.log = log
        self.closed = False
        self.state = State()
        self.lock = threading.Lock()
        self.touched = None
        self.max_at = -1
        self.calls = []

    def now_ms(self):
        return T0 + 10**7

    @contextlib.contextmanager
    def locked(self):
        self.calls.append("locked")
        with self.lock:
            yield self.state

    def track_touched(self):
        assert self.lock.locked()
        self.touched = {}

    def untrack_touched(self):
        assert self.lock.locked()
        touched, self.touched = self.touched, None
        return touched or {}

    def append_apply(self, recs):
        assert self.lock.locked()
        for r in recs:
            rtype, payload = R.encode(r)
            lsn = self.log.append(rtype, payload)
            self.state.apply(lsn, rtype, r)
            if self.touched is not None:        # the contract: every job a record touches
                self.touched.update(dict.fromkeys(r.ids if type(r) is R.Purge else (r.id,)))
            self.max_at = max(self.max_at, r.at_ms)
        return lsn

    def max_at_ms(self):
        return self.max_at


def test_a_compactor_on_a_bare_host_writes_the_hosts_state(tmp_path):
    log = Log.open(tmp_path / "s", durability="os")
    host = Host(log)
    with host.locked():
        for i in range(50):
            host.append_apply([R.Enqueue(f"j{i}", "t", "q", 2, 3, T0 + i, T0 + i, None, None,
                                         30_000, None, b"{}")])
        for i in range(0, 50, 5):
            host.append_apply([R.Cancel(f"j{i}", T0 + 100)])
    comp = S.Compactor(host, tmp_path / "s", retain_seconds=None, retain_count=3)
    res = comp.compact()
    assert res.jobs == 43 and res.purged == 7            # retention: 3 of 10 cancelled kept
    info, snap = S.load_snapshot(res.path)
    assert snap.fingerprint() == host.state.fingerprint()
    assert info.max_at_ms == host.max_at
    comp.stop()
    log.close()
