"""Stateful: a store that compacts and crashes behaves exactly like one that never compacts.

Two stores get the same operations with the same fake clock and the same attempt tokens:
A compacts (snapshot + retirement) whenever hypothesis says so, B never does (full replay
is its recovery). Both "crash" together: their directories are copied while open (what
kill -9 leaves: written bytes survive, nothing was closed or sealed) and the copies are
reopened. After every step the states are equal (fingerprint: every job, history, counts,
unique keys, last LSN) and the next claim picks the same job (claim order).
(tests/test_queue_model.py, the reference-model machine, belongs to the engine engineer;
this machine checks compaction against the engine itself.)
"""

import shutil
import struct
import tempfile
from datetime import datetime, UTC
from pathlib import Path

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import aurora_log
from aurora_log import Job
import aurora_log.local.queue as _queue_mod

T0 = 1_700_000_000.0


class _Tokens:
    """Deterministic attempt tokens: both stores get the same token for the same claim."""
    def __init__(self):
        self.token = 0

    def __call__(self):
        return struct.pack("<Q", self.token)


class CompactionMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp())
        self.t = T0
        self.gen = 0
        self.os = _Tokens()
        self._orig_new_token = _queue_mod._new_token
        _queue_mod._new_token = self.os
        self.a = self._open(self.tmp / "a0", compacting=True)
        self.b = self._open(self.tmp / "b0", compacting=False)
        self.n = 0
        self.tok = 0
        self.running: dict[str, str] = {}

    def _open(self, d, compacting):
        return aurora_log.open(d, clock=lambda: self.t, reaper_interval=None,
                               durability="os", segment_bytes=4096, auto_compact=False,
                               retain_seconds=None, retain_count=None,
                               retry_base=1.0, retry_cap=4.0)

    def teardown(self):
        _queue_mod._new_token = self._orig_new_token
        for q in (self.a, self.b):
            q.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def both(self, fn):
        ra = fn(self.a)
        rb = fn(self.b)
        return ra, rb

    # ------------------------------------------------------------------ rules
    @rule(prio=st.integers(1, 4), retries=st.integers(0, 2),
          delay=st.sampled_from([None, 0, 3, 20]), unique=st.sampled_from([None, "u1", "u2"]))
    def enqueue(self, prio, retries, delay, unique):
        self.n += 1
        sched = None if delay is None else datetime.fromtimestamp(self.t + delay, UTC)
        job = Job("t", {"n": self.n}, id=f"j{self.n}", priority=prio, max_retries=retries,
                  scheduled_at=sched, lease_duration=10, unique_key=unique,
                  created_at=datetime.fromtimestamp(T0, UTC))
        ia, ib = self.both(lambda q: q.enqueue(job, durable=False))
        assert ia == ib

    @rule()
    def claim(self):
        self.tok += 1

        def go(q):
            self.os.token = self.tok
            return q.claim("w")
        ja, jb = self.both(go)
        assert (ja and ja.id) == (jb and jb.id)
        if ja is not None:
            assert ja.token == jb.token
            self.running[ja.id] = ja.token

    @precondition(lambda self: self.running)
    @rule(data=st.data(), ok=st.booleans())
    def finish(self, data, ok):
        jid = data.draw(st.sampled_from(sorted(self.running)))
        tok = self.running.pop(jid)

        def go(q):
            try:
                if ok:
                    q.complete(jid, tok, {"r": 1}, durable=False)
                    return "done"
                return q.fail(jid, tok, "err", durable=False)
            except aurora_log.StaleLeaseError:
                return "stale"
        ra, rb = self.both(go)
        assert ra == rb

    @precondition(lambda self: self.n)
    @rule(data=st.data())
    def cancel(self, data):
        jid = f"j{data.draw(st.integers(1, self.n))}"

        def go(q):
            try:
                return q.cancel(jid)
            except (aurora_log.InvalidStateError, aurora_log.JobNotFoundError) as e:
                return type(e).__name__
        ra, rb = self.both(go)
        assert ra == rb

    @rule(secs=st.sampled_from([1, 5, 11, 30]))
    def advance(self, secs):
        self.t += secs

    @rule()
    def reap(self):
        ra, rb = self.both(lambda q: q.reap())
        assert ra == rb

    @rule()
    def purge(self):
        ra, rb = self.both(lambda q: q.purge(older_than=20))
        assert ra == rb

    @rule()
    def compact(self):
        self.a.compact()

    @rule()
    def crash(self):
        self.gen += 1
        new = []
        for name, q in (("a", self.a), ("b", self.b)):
            src = Path(q.path)
            q.flush()      # what was acknowledged is written (durable=False calls too)
            dest = self.tmp / f"{name}{self.gen}"
            shutil.copytree(src, dest)          # the files as a kill -9 leaves them
            q.close()
            new.append(self._open(dest, name == "a"))
        self.a, self.b = new
        self.running.clear()                    # "process died": leases were reaped

    # ------------------------------------------------------------------ checks
    @invariant()
    def same_state(self):
        fa, fb = self.a._state.fingerprint(), self.b._state.fingerprint()
        assert fa == fb
        now = round(self.t * 1000)
        assert self.a._state.pick(now) == self.b._state.pick(now)


CompactionMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=30,
                                               deadline=None)
TestCompaction = CompactionMachine.TestCase
