"""The claim order (order.py): one key, live heads, a decision that only reads."""

import copy
from array import array
import random

from aurora_log.local import records as R
from aurora_log.local.order import MAX_DUE_MS, claim_key, enqueue_due, timer_key
from aurora_log.local.state import State
from aurora_log.local.table import LSN, PRIO, WAITING, Rec, unpack_head

T0 = 1_800_000_000_000


def _enqueue(s, job_id, at, prio=2, sched=None, queue="q", job_type="t"):
    s.apply(s.last_lsn + 1, R.ENQUEUE, R.Enqueue(job_id, job_type, queue, prio, 3, at, at, sched,
                                                 None, 30_000, None, b"{}"))


def test_claim_key_orders_priority_then_due_then_fifo():
    keys = [claim_key(prio, due, seq) for prio, due, seq in
            [(4, 10, 9), (4, 10, 10), (4, 11, 1), (3, 0, 0), (1, 0, 0)]]
    assert keys == sorted(keys)
    assert claim_key(4, MAX_DUE_MS, (1 << 64) - 1) < claim_key(3, 0, 0)   # fields do not overlap
    assert timer_key(5, 7) == claim_key(4, 5, 7)         # a timer key has no priority bits


def _heads_live(s):
    order = s.order
    for heap in order.ready + order.lanes + [order.timers]:
        if heap:
            assert order.live(*heap[0]), "a dead entry at a head"


def _best_by_scan(s, now):
    """The job a claim must take, from the job table alone (no heaps)."""
    best = None
    for job_id, v in s.jobs.items():
        if type(v) is Rec:
            if v.status not in WAITING:
                continue
            h = unpack_head(v.blob)
            # due: the retry's time, else the time of the record that made it wait
            seq, due = v.seq, v.due or v.hist[-1][2]
        else:
            h = unpack_head(v)
            seq, due = h[LSN], enqueue_due(h)
        if due > now:
            continue
        key = claim_key(h[PRIO], due, seq)
        if best is None or key < best[0]:
            best = (key, job_id)
    return best[1] if best else None


def test_heads_stay_live_and_the_decision_only_reads():
    rnd = random.Random(7)
    s = State()
    now = T0
    tokens = {}
    n = 0
    for _ in range(1500):
        now += rnd.randrange(0, 50)
        op = rnd.random()
        if op < 0.4:
            n += 1
            sched = now + rnd.randrange(-100, 300) if rnd.random() < 0.3 else None
            _enqueue(s, f"j{n}", now, prio=rnd.randrange(1, 5), sched=sched,
                     queue=rnd.choice("ab"))
        elif op < 0.7:
            s.order.promote(now)
            before = (copy.deepcopy(s.order.ready), copy.deepcopy(s.order.lanes),
                      list(s.order.timers), s.fingerprint())
            cands = s.order.candidates(None, None)
            job_id = s.order.best(cands)
            assert (s.order.ready, s.order.lanes, s.order.timers, s.fingerprint()) == \
                before                                                      # a pure read
            assert job_id == _best_by_scan(s, now)
            if job_id is not None:
                tok = rnd.randbytes(8)
                s.apply(s.last_lsn + 1, R.CLAIM, s.plan_claim(job_id, now, tok, "w"))
                tokens[job_id] = tok
        elif op < 0.8 and n:
            job_id = f"j{rnd.randrange(1, n + 1)}"
            try:
                rec = s.plan_cancel(job_id, now)
            except Exception:
                rec = None
            if rec is not None:
                s.apply(s.last_lsn + 1, R.CANCEL if type(rec) is R.Cancel else R.CANCEL_REQUEST,
                        rec)
        elif tokens:
            job_id, tok = tokens.popitem()
            if s.status_of(job_id).value == "running":
                s.apply(s.last_lsn + 1, R.FAIL, s.plan_fail(job_id, tok, now, "x",
                                                          lambda r: rnd.randrange(0, 200)))
        _heads_live(s)
    assert not s.anomalies


def test_a_claim_removes_the_job_from_the_order():
    s = State()
    for i in range(5):
        _enqueue(s, f"k{i}", T0 + i)
    s.order.promote(T0 + 10)
    first = s.pick(T0 + 10)
    assert first == "k0" and s.order.head(0)[1] == "k0"
    s.apply(s.last_lsn + 1, R.CLAIM, s.plan_claim(first, T0 + 10, b"t" * 8, "w"))
    assert s.order.ready_count(0) == 4 and s.order.head(0)[1] == "k1"
    # a cancel of the head drops it too, and a cancel below the head leaves it for later
    s.apply(s.last_lsn + 1, R.CANCEL, s.plan_cancel("k3", T0 + 11))
    assert s.order.ready_count(0) == 4
    s.apply(s.last_lsn + 1, R.CANCEL, s.plan_cancel("k1", T0 + 11))
    assert s.order.head(0)[1] == "k2" and s.order.ready_count(0) == 3
    assert [s.pick(T0 + 20)] == ["k2"]


def test_in_order_keys_ride_the_lane_and_the_rest_the_heap():
    """A key above the lane's last goes to the lane (a deque: a claim pops it in O(1)),
    any other to the heap; claims take the smaller head of the two, so the order is the
    same as one heap's."""
    s = State()
    for i in range(4):
        _enqueue(s, f"n{i}", T0 + i)                  # NORMAL, FIFO: increasing keys
    _enqueue(s, "h", T0 + 5, prio=3)                   # HIGH: a smaller key
    _enqueue(s, "n4", T0 + 6)                          # above the lane's last again
    s.apply(s.last_lsn + 1, R.CANCEL, s.plan_cancel("n2", T0 + 7))   # dead below the head
    assert [e[1] for e in s.order.lanes[0]] == ["n0", "n1", "n2", "n3", "n4"]
    assert [e[1] for e in s.order.ready[0]] == ["h"]
    got = []
    while (job_id := s.pick(T0 + 10)) is not None:
        s.apply(s.last_lsn + 1, R.CLAIM, s.plan_claim(job_id, T0 + 10, b"t" * 8, "w"))
        got.append(job_id)
        _heads_live(s)
    assert got == ["h", "n0", "n1", "n3", "n4"]
    assert not s.order.lanes[0] and not s.order.ready[0] and not s.anomalies


def test_add_many_is_add_one_by_one_in_every_case():
    """add_many (replay's bulk fold) takes a loop-free path when a run has one priority,
    no timer and due times that do not decrease; every case, taken or not, leaves the
    heaps and lanes exactly as ``add`` job by job does."""
    rnd = random.Random(21)
    cases = {
        "fifo": lambda i: (3, T0 + i // 3, T0 + i // 3),
        "mixed priorities": lambda i: (1 + i % 4, T0, T0),
        "a timer": lambda i: (2, T0 + (5_000 if i == 7 else 0), T0),
        "due times decrease": lambda i: (2, T0 - i, T0),
        "random": lambda i: (rnd.choice((2, 2, 3)), T0 + rnd.randrange(-5, 5), T0),
    }
    for name, job in cases.items():
        for lane_ahead in (None, T0 - 10, T0 + 10 ** 6):
            bulk, one = State(), State()
            for s in (bulk, one):
                s.pair_index("q", "t")
                if lane_ahead is not None:       # the lane already holds a key
                    s.order.add("x", 0, 3, lane_ahead, 1, lane_ahead)
            rows = [job(i) for i in range(40)]
            ids = [f"j{i}" for i in range(40)]
            bulk.order.add_many(ids, 0, bytearray(p for p, _, _ in rows),
                                array("q", [d for _, d, _ in rows]), 100,
                                array("q", [a for _, _, a in rows]))
            for i, (p, d, a) in enumerate(rows):
                one.order.add(ids[i], 0, p, d, 100 + i, a)
            for attr in ("ready", "lanes"):
                assert [list(x) for x in getattr(bulk.order, attr)] == \
                    [list(x) for x in getattr(one.order, attr)], (name, lane_ahead, attr)
            assert bulk.order.timers == one.order.timers, (name, lane_ahead)
