"""The pure fold: replay determinism, export/import, lease edges, tolerance, memory shape."""

import random

import pytest

from aurora_log.local import records as R
from aurora_log.errors import InvalidStateError, JobNotFoundError, StaleLeaseError
from aurora_log.job import JobStatus
from aurora_log.local.state import State

T0 = 1_800_000_000_000


class Driver:
    """Runs planners against a State and keeps the encoded log, like queue.py does."""

    def __init__(self):
        self.s = State()
        self.log = []
        self.lsn = 0

    def write(self, rec):
        rtype, payload = R.encode(rec)
        self.lsn += 1
        self.log.append((self.lsn, rtype, payload))
        self.s.apply(self.lsn, rtype, rec)

    def enqueue(self, job_id, at, prio=2, sched=None, max_retries=3, lease=30_000,
                timeout=None, ukey=None, queue="default", job_type="t"):
        if ukey is not None and self.s.unique_owner(ukey) is not None:
            return  # as queue.enqueue does: the live owner's id, nothing written
        self.write(R.Enqueue(job_id, job_type, queue, prio, max_retries, at, at, sched, timeout,
                             lease, ukey, b'{"x":1}'))

    def claim(self, now, worker="w"):
        job_id = self.s.pick(now)
        if job_id is None:
            return None
        tok = random.randbytes(8)
        self.write(self.s.plan_claim(job_id, now, tok, worker))
        return job_id, tok


def replay(log):
    s = State()
    for lsn, rtype, payload in log:
        s.apply(lsn, rtype, payload)
    return s


def drain_order(s, now):
    out = []
    while True:
        job_id = s.pick(now)
        if job_id is None:
            return out
        s.apply(s.last_lsn + 1, R.CLAIM, s.plan_claim(job_id, now, b"\0" * 8, "x"))
        out.append(job_id)


def random_history(seed):
    rnd = random.Random(seed)
    d = Driver()
    now = T0
    held = []
    for i in range(300):
        op = rnd.random()
        now += rnd.choice([0, 1, 10, 1000, 7000])
        if op < 0.4:
            d.enqueue(f"j{i}", now, prio=rnd.randint(1, 4), max_retries=rnd.randint(0, 2),
                      sched=rnd.choice([None, None, now + 5000, now - 5]),
                      timeout=rnd.choice([None, 20_000]), ukey=rnd.choice([None, "u1", "u2"]),
                      queue=rnd.choice(["a", "b"]), lease=rnd.choice([5000, 30000]))
        elif op < 0.6:
            c = d.claim(now)
            if c:
                held.append(c)
        elif op < 0.75 and held:
            job_id, tok = held.pop(rnd.randrange(len(held)))
            try:
                d.write(d.s.plan_fail(job_id, tok, now, "e") if rnd.random() < 0.5
                        else d.s.plan_complete(job_id, tok, now, b"1"))
            except StaleLeaseError:
                pass
        elif op < 0.85:
            for rec in d.s.plan_reap(now):
                d.write(rec)
        elif op < 0.9 and d.s.jobs:
            job_id = rnd.choice(list(d.s.jobs))
            try:
                rec = d.s.plan_cancel(job_id, now)
                if rec:
                    d.write(rec)
            except InvalidStateError:
                pass
        elif held:
            job_id, tok = rnd.choice(held)
            try:
                d.write(d.s.plan_heartbeat(job_id, tok, now))
            except StaleLeaseError:
                pass
    return d, now


@pytest.mark.parametrize("seed", range(5))
def test_replay_twice_gives_the_same_state_and_claim_order(seed):
    d, now = random_history(seed)
    a, b = replay(d.log), replay(d.log)
    assert a.fingerprint() == b.fingerprint() == d.s.fingerprint()
    later = now + 10**7
    assert drain_order(a, later) == drain_order(b, later) == drain_order(d.s, later)
    assert a.anomalies == []


@pytest.mark.parametrize("seed", range(5))
def test_export_import_gives_the_same_state_and_claim_order(seed):
    d, now = random_history(seed)
    items = list(d.s.export())
    assert all(isinstance(i, bytes) for i in items)
    c = State.from_export(items)
    assert c.fingerprint() == d.s.fingerprint()
    assert c.plan_reap(now + 10**6) == d.s.plan_reap(now + 10**6)
    later = now + 10**7
    assert drain_order(c, later) == drain_order(replay(d.log), later)
    # the tail folds on top of an imported state as on a full replay
    d2 = State.from_export(items)
    d.enqueue("tail", now)
    d2.apply(d.lsn, *d.log[-1][1:])
    full = replay(d.log)
    assert d2.fingerprint() == full.fingerprint()
    assert drain_order(d2, later) == drain_order(full, later)


def test_export_import_rejects_garbage():
    d, _ = random_history(1)
    items = list(d.s.export())
    for bad in ([], [b"nope"], items[:1] + [b"Zxx"], items[:-1], items[:1] + [b"B\x05"]):
        with pytest.raises(ValueError):
            State.from_export(bad)


def test_order_priority_then_due_then_fifo():
    d = Driver()
    d.enqueue("low", T0, prio=1)
    d.enqueue("normal", T0, prio=2)
    d.enqueue("critical", T0, prio=4)
    d.enqueue("high", T0, prio=3)
    d.enqueue("high-earlier-due", T0 + 5, prio=3, sched=T0 - 100)
    d.enqueue("high-later", T0, prio=3)
    assert drain_order(d.s, T0 + 10) == ["critical", "high-earlier-due", "high", "high-later",
                                        "normal", "low"]


def test_scheduled_job_runs_when_due_and_not_before():
    d = Driver()
    d.enqueue("s", T0, sched=T0 + 1000)
    assert d.s.pick(T0 + 999) is None
    assert d.s.next_due_ms() == T0 + 1000
    assert d.s.pick(T0 + 1000) == "s"


@pytest.mark.parametrize("delta, expired", [(-1, False), (0, False), (1, True)])
def test_lease_edges(delta, expired):
    d = Driver()
    d.enqueue("j", T0, lease=10_000)
    d.claim(T0)
    assert len(d.s.plan_reap(T0 + 10_000 + delta)) == int(expired)


@pytest.mark.parametrize("delta, expired", [(-1, False), (0, False), (1, True)])
def test_timeout_edges(delta, expired):
    d = Driver()
    d.enqueue("j", T0, lease=100_000, timeout=10_000)
    d.claim(T0)
    recs = d.s.plan_reap(T0 + 10_000 + delta)
    assert len(recs) == int(expired)
    if expired:
        assert recs[0].reason == R.REASON_TIMEOUT


def test_heartbeat_moves_the_lease_and_old_deadline_is_ignored():
    d = Driver()
    d.enqueue("j", T0, lease=10_000)
    job_id, tok = d.claim(T0)
    d.write(d.s.plan_heartbeat(job_id, tok, T0 + 5_000))
    assert d.s.plan_reap(T0 + 10_001) == []
    assert len(d.s.plan_reap(T0 + 15_001)) == 1


def test_planners_change_nothing():
    d, now = random_history(3)
    before = d.s.fingerprint()
    d.s.plan_reap(now + 10**9)
    d.s.plan_recover(now)
    d.s.plan_purge(now + 10**9, now)
    d.s.pick(now)
    assert d.s.fingerprint() == before


def test_pending_jobs_are_compact_blobs():
    d = Driver()
    for i in range(100):
        d.enqueue(f"j{i}", T0)
    assert all(type(v) is bytes for v in d.s.jobs.values())
    d.claim(T0)
    assert sum(type(v) is not bytes for v in d.s.jobs.values()) == 1


def test_records_that_do_not_apply_are_noted_not_raised():
    s = State()
    s.apply(1, R.CLAIM, R.Claim("ghost", T0, b"\0" * 8, T0 + 1, "w"))
    s.apply(2, R.COMPLETE, R.Complete("ghost", T0, b"\0" * 8, None))
    s.apply(3, R.CANCEL, R.encode(R.Cancel("ghost", T0))[1])
    assert [lsn for lsn, _ in s.anomalies] == [1, 2, 3]
    assert len(s) == 0


def test_purge_drops_finished_jobs_only():
    d = Driver()
    d.enqueue("a", T0)
    d.enqueue("b", T0)
    job_id, tok = d.claim(T0)
    d.write(d.s.plan_complete(job_id, tok, T0 + 1, None))
    rec = d.s.plan_purge(T0 + 2, T0 + 2)
    assert rec.ids == (job_id,)
    d.write(rec)
    assert job_id not in d.s and len(d.s) == 1
    assert d.s.stats()["completed"] == 0 and d.s.stats()["total"] == 1


def test_unknown_ids_and_wrong_states():
    d = Driver()
    with pytest.raises(JobNotFoundError):
        d.s.plan_cancel("x", T0)
    with pytest.raises(JobNotFoundError):
        d.s.history("x")
    d.enqueue("a", T0)
    with pytest.raises(InvalidStateError):
        d.s.plan_retry_dead("a", T0)
    with pytest.raises(StaleLeaseError):
        d.s.plan_complete("a", b"\0" * 8, T0, None)
    assert d.s.status_of("a") is JobStatus.PENDING


def test_apply_many_equals_apply_one_by_one():
    d, _ = random_history(4)
    a = replay(d.log)
    b = State()
    decoded = [(rtype, R.decode(rtype, payload)) for _, rtype, payload in d.log]
    b.apply_many(1, decoded[:100])
    b.apply_many(101, decoded[100:])
    assert a.fingerprint() == b.fingerprint() and (a.applied, a.last_lsn) == (b.applied, b.last_lsn)


def test_fused_enqueue_replay_equals_the_decoder_path():
    d, _ = random_history(2)
    a, b = State(), State()
    for lsn, rtype, payload in d.log:
        a.apply(lsn, rtype, payload)
        if rtype == R.ENQUEUE:
            assert b.apply_enqueue_bytes(lsn, payload) == R.decode(rtype, payload).at_ms
        else:
            b.apply(lsn, rtype, payload)
    assert a.fingerprint() == b.fingerprint()


def test_fused_enqueue_rejects_exactly_what_the_decoder_rejects():
    rnd = random.Random(5)
    _, good = R.encode(R.Enqueue("id-1", "t", "q", 2, 3, 1, 2, 5, 300, 30, "u", b'{"a":1}'))
    for i in range(3000):
        buf = bytearray(good)
        for _ in range(rnd.randint(1, 3)):
            buf[rnd.randrange(len(buf))] = rnd.randrange(256)
        data = bytes(buf[:rnd.randint(len(buf) - 3, len(buf))] if i % 7 == 0 else buf)
        try:
            want = R.decode(R.ENQUEUE, data)
        except R.RecordError:
            with pytest.raises(R.RecordError):
                State().apply_enqueue_bytes(1, data)
            continue
        a, b = State(), State()
        a.apply(1, R.ENQUEUE, want)
        assert b.apply_enqueue_bytes(1, data) == want.at_ms
        # (no fingerprint: a mutated payload need not be valid JSON; compare the internals)
        assert (a.jobs, a.order.ready, a.order.lanes, a.order.timers, a._unique, a.stats(),
                a.pairs) == (b.jobs, b.order.ready, b.order.lanes, b.order.timers, b._unique,
                             b.stats(), b.pairs)


def test_a_stored_payload_that_is_not_json_is_a_typed_error_on_read():
    s = State()
    s.apply(1, R.ENQUEUE, R.Enqueue("j", "t", "q", 2, 3, 1, 2, None, None, 30, None, b"{\xff"))
    with pytest.raises(R.RecordError, match="not valid JSON"):
        s.get("j")


def test_stored_json_decodes_as_decode_json_does():
    """The claim path's direct scanner call (state._stored_json) gives decode_json's
    value for every stored form, and its error for bytes that are not JSON."""
    from aurora_log.job import decode_json
    from aurora_log.local.state import _stored_json
    good = [b'{"a":1,"b":[1,2.5,"x"],"c":{"d":null}}', b' {"a":1}', b'{"a":1} ', b'[1,2]',
            b'"\\u00e9t\\u00e9"', b'1', b'null', b'{"a":NaN}', '{"é":"ü"}'.encode()]
    for data in good:
        assert repr(_stored_json(data)) == repr(decode_json(data))
    for data in (b'{"a":1}x', b'{"a":', b'', b'  ', b'{\xff}'):
        with pytest.raises(ValueError) as ours:
            _stored_json(data)
        with pytest.raises(ValueError) as theirs:
            decode_json(data)
        assert type(ours.value) is type(theirs.value)


def test_plan_claim_carries_the_claiming_process():
    """plan_claim's proc (shared mode's ATTACH LSN) lands in the record and, folded, in
    proc_of, as the record's _replace(proc=...) did."""
    s = State()
    s.apply(1, R.ENQUEUE, R.Enqueue("j", "t", "q", 2, 3, 1, 1, None, None, 30_000, None, b"{}"))
    rec = s.plan_claim("j", 5, b"12345678", "w", proc=7)
    assert rec == s.plan_claim("j", 5, b"12345678", "w")._replace(proc=7)
    assert R.decode(*R.encode(rec)) == rec
    s.apply(2, R.CLAIM, rec)
    assert s.proc_of == {"j": 7} and s.jobs_of_proc(7) == ["j"]
