"""The bulk form of enqueue_many, ``enqueue_many(job_type, payloads, **options)``, run
against every backend: the same jobs, order, atomicity and errors as the Job form."""

import uuid
from datetime import timedelta

import pytest

from aurora_log.job import Job, JobPriority, JobStatus


def payloads(n, start=0):
    return [{"i": i, "email": f"user{i}@example.com", "ok": True, "none": None}
            for i in range(start, start + n)]


def test_bulk_jobs_are_the_jobs_the_job_form_makes(q, clock):
    ids = q.enqueue_many("mail", payloads(5))
    assert len(ids) == 5 and len(set(ids)) == 5
    for k, jid in enumerate(ids):
        j = q.get(jid)
        ref = Job("mail", payloads(5)[k])
        assert j.payload == ref.payload and j.job_type == "mail"
        assert (j.priority, j.status, j.max_retries, j.retry_count, j.timeout_seconds,
                j.lease_duration, j.queue, j.unique_key, j.scheduled_at) == \
            (ref.priority, JobStatus.PENDING, ref.max_retries, 0, ref.timeout_seconds,
             ref.lease_duration, "default", None, None)
        assert j.created_at == clock.now
        assert [t.kind for t in q.history(jid)] == ["enqueue"]
    # ids are UUIDs (version 7 layout), ascending through the batch
    assert all(uuid.UUID(i).version == 7 for i in ids) and ids == sorted(ids)
    assert q.stats()["pending"] == 5


def test_bulk_options_apply_to_every_job(q, clock):
    at = clock.now + timedelta(minutes=5)
    ids = q.enqueue_many("report", payloads(3), priority=JobPriority.HIGH, queue="reports",
                         max_retries=7, timeout_seconds=None, lease_duration=12.5,
                         scheduled_at=at)
    for jid in ids:
        j = q.get(jid)
        assert (j.priority, j.queue, j.max_retries, j.timeout_seconds, j.lease_duration,
                j.scheduled_at) == (JobPriority.HIGH, "reports", 7, None, 12.5, at)
    assert q.claim("w") is None                       # scheduled: not due yet
    clock.advance(300)
    got = [q.claim("w", queues="reports").id for _ in range(3)]
    assert got == ids


def test_bulk_priority_spellings(q):
    a = q.enqueue_many("t", [{}], priority="critical")
    b = q.enqueue_many("t", [{}], priority=1)
    assert q.get(a[0]).priority is JobPriority.CRITICAL
    assert q.get(b[0]).priority is JobPriority.LOW


def test_fifo_across_bulk_and_job_forms(q):
    first = q.enqueue(Job("t"))
    bulk = q.enqueue_many("t", payloads(4))
    last = q.enqueue_many([Job("t"), Job("t")])
    hi = q.enqueue_many("t", payloads(2), priority=JobPriority.HIGH)
    order = [q.claim("w").id for _ in range(9)]
    assert order == hi + [first] + bulk + last


def test_bulk_from_a_generator_and_an_empty_batch(q):
    assert q.enqueue_many("t", ({"i": i} for i in range(3))) != []
    assert q.enqueue_many("t", []) == []
    assert q.enqueue_many("t", [], durable=False) == []
    assert q.stats()["pending"] == 3


def test_bulk_not_durable_is_still_enqueued(q):
    ids = q.enqueue_many("t", payloads(3), durable=False)
    q.flush()
    assert [q.claim("w").id for _ in range(3)] == ids


def test_bulk_survives_reopen(opener):
    q = opener(durability="sync")
    ids = q.enqueue_many("t", payloads(50), priority=JobPriority.LOW, queue="q2")
    before = [q.get(i) for i in ids]
    q.close()
    q2 = opener()
    assert [q2.get(i) for i in ids] == before
    assert [q2.claim("w").id for _ in range(50)] == ids


def test_bulk_unique_keys_within_the_batch_and_against_live_jobs(q):
    held = q.enqueue(Job("t", unique_key="k1"))
    ids = q.enqueue_many("t", payloads(4), unique_keys=["k1", "k2", None, "k2"])
    assert ids[0] == held                 # taken by a live job: its id, nothing added
    assert ids[3] == ids[1]               # taken within the batch
    assert len({ids[1], ids[2], held}) == 3
    assert q.get(ids[1]).unique_key == "k2" and q.get(ids[2]).unique_key is None
    assert q.stats()["pending"] == 3
    # all keys taken: nothing new, the owners' ids
    assert q.enqueue_many("t", payloads(2), unique_keys=["k1", "k2"]) == [held, ids[1]]
    assert q.stats()["pending"] == 3


def test_bulk_jobs_work_like_any_job(q):
    ids = q.enqueue_many("t", payloads(3), max_retries=0)
    j = q.claim("w")
    q.complete(j.id, j.token, {"done": 1})
    j2 = q.claim("w")
    assert q.fail(j2.id, j2.token, "boom") is JobStatus.DEAD_LETTER
    assert q.cancel(ids[2]) is JobStatus.CANCELLED
    assert [t.kind for t in q.history(ids[0])] == ["enqueue", "claim", "complete"]
    assert q.get(ids[0]).result == {"done": 1}


def _bad_calls(q):
    ok = payloads(3)
    return [
        (TypeError, lambda: q.enqueue_many("t")),                        # no payloads
        (TypeError, lambda: q.enqueue_many("t", {"a": 1})),              # one dict
        (TypeError, lambda: q.enqueue_many("t", "abc")),
        (TypeError, lambda: q.enqueue_many("t", 5)),
        (TypeError, lambda: q.enqueue_many([Job("t")], ok)),             # forms mixed
        (TypeError, lambda: q.enqueue_many([Job("t")], priority=3)),
        (TypeError, lambda: q.enqueue_many("t", ok, bogus=1)),
        (ValueError, lambda: q.enqueue_many("", ok)),
        (ValueError, lambda: q.enqueue_many("../x", ok)),
        (TypeError, lambda: q.enqueue_many(5, ok)),
        (TypeError, lambda: q.enqueue_many("t", [{"a": 1}, {"a": {1, 2}}])),
        (TypeError, lambda: q.enqueue_many("t", [{"a": 1}, [1]])),
        (TypeError, lambda: q.enqueue_many("t", [{"a": 1}, {2: 1}])),
        (ValueError, lambda: q.enqueue_many("t", [{"a": 1}, {"a": float("inf")}])),
        (ValueError, lambda: q.enqueue_many("t", [{"a": 1}, {"a": "\ud800"}])),
        (ValueError, lambda: q.enqueue_many("t", [{}, {"x": "y" * 2000}])),  # over the limit
        (ValueError, lambda: q.enqueue_many("t", ok, priority=9)),
        (TypeError, lambda: q.enqueue_many("t", ok, priority=2.0)),
        (ValueError, lambda: q.enqueue_many("t", ok, queue="a/b")),
        (ValueError, lambda: q.enqueue_many("t", ok, max_retries=-1)),
        (ValueError, lambda: q.enqueue_many("t", ok, timeout_seconds=0)),
        (ValueError, lambda: q.enqueue_many("t", ok, lease_duration=-1)),
        (TypeError, lambda: q.enqueue_many("t", ok, scheduled_at="tomorrow")),
        (ValueError, lambda: q.enqueue_many("t", ok, unique_keys=["a"])),   # wrong length
        (TypeError, lambda: q.enqueue_many("t", ok, unique_keys="abc")),
        (ValueError, lambda: q.enqueue_many("t", ok, unique_keys=["a", "", None])),
    ]


def test_bad_bulk_input_raises_before_anything_is_written(opener):
    from datetime import datetime
    q = opener(max_payload_bytes=1024)
    q.enqueue(Job("t"))
    before = q.stats()
    calls = _bad_calls(q) + [
        (ValueError, lambda: q.enqueue_many("t", [{}], scheduled_at=datetime(2030, 1, 1))),
    ]
    for k, (err, call) in enumerate(calls):
        with pytest.raises(err):
            call()
            pytest.fail(f"bad call {k} did not raise")
    assert q.stats() == before
    assert len(q.list(limit=10)) == 1


def test_bulk_after_close_raises(q):
    from aurora_log.errors import ClosedError
    q.close()
    with pytest.raises(ClosedError):
        q.enqueue_many("t", payloads(2))
