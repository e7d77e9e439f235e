"""The order in which one reap pass ends attempts, on every backend.

Each end of an attempt that retries takes the next position in the FIFO (the LSN that made
the job wait again), so jobs of one priority reaped in the same pass, due at the same time
after the same backoff, are claimed in the order the reap ended them: timeouts first, by
``started + timeout``, then expired leases, by deadline; ties by job id (the local
engine's timeout and lease heaps, docs/INTERNALS.md). The hypothesis model test found the
PostgreSQL backend ending them by lease deadline alone (tests/conformance/model.py).
"""

from aurora_log.job import Job


def job(job_id, **kw):
    kw.setdefault("queue", "q")
    return Job("t", id=job_id, max_retries=1, **kw)


def reaped_then_claimed(q, clock, ids, *, after):
    """Claim ``ids`` in that order at the same instant, move ``after`` seconds on, reap
    them all in one pass; returns each one's reason and the order the queue hands them
    out again."""
    for job_id in ids:
        assert q.claim("w").id == job_id
    clock.advance(after)
    assert q.reap() == len(ids)
    reasons = {job_id: q.get(job_id).error for job_id in ids}
    clock.advance(5)                        # the first backoff: every one of them is due
    order = []
    while (j := q.claim("w")) is not None:
        assert j.retry_count == 1
        order.append(j.id)
    return reasons, order


def test_timeouts_end_in_the_order_they_fired(q, clock):
    # the saved hypothesis example: A's lease ends first, B's timeout fires first
    q.enqueue(job("a", lease_duration=5, timeout_seconds=60))
    q.enqueue(job("b", lease_duration=10, timeout_seconds=15))
    assert reaped_then_claimed(q, clock, ["a", "b"], after=61) == (
        {"a": "timeout", "b": "timeout"}, ["b", "a"])


def test_a_timeout_ends_before_an_expired_lease(q, clock):
    q.enqueue(job("a", lease_duration=5))                          # lease ends at 5 s
    q.enqueue(job("b", lease_duration=20, timeout_seconds=15))     # times out at 15 s
    assert reaped_then_claimed(q, clock, ["a", "b"], after=21) == (
        {"a": "lease expired", "b": "timeout"}, ["b", "a"])


def test_expired_leases_end_by_deadline_then_by_id(q, clock):
    q.enqueue(job("z", lease_duration=5))
    q.enqueue(job("m", lease_duration=10))
    q.enqueue(job("a", lease_duration=5))
    reasons, order = reaped_then_claimed(q, clock, ["z", "m", "a"], after=11)
    assert order == ["a", "z", "m"]


def test_timeouts_at_the_same_instant_end_by_id(q, clock):
    q.enqueue(job("y", lease_duration=20, timeout_seconds=10))
    q.enqueue(job("x", lease_duration=30, timeout_seconds=10))
    reasons, order = reaped_then_claimed(q, clock, ["y", "x"], after=11)
    assert order == ["x", "y"]
