"""Queue.enqueue of one Job in the default (shared) mode: the direct path (build, one-record
fast append, fold, durable wait) behaves exactly as enqueue_many of one job did."""

from __future__ import annotations

import pytest

from aurora_log.job import Job, JobStatus


@pytest.fixture
def opener(open_store):
    return open_store


def _synced_and_published(q) -> tuple[int, int]:
    write, _, _, synced = q._sl._position()
    return synced, write


def test_a_durable_enqueue_returns_after_an_fdatasync_covering_it(opener):
    q = opener(durability="sync")
    before = q._sl.stats()["fdatasyncs"]
    jid = q.enqueue(Job("t", {"i": 1}))
    synced, published = _synced_and_published(q)
    assert synced >= published
    assert q._sl.stats()["fdatasyncs"] == before + 1
    assert q.get(jid).status is JobStatus.PENDING


def test_a_non_durable_enqueue_does_not_wait_for_the_disk(opener):
    q = opener(durability="sync")
    q.enqueue(Job("t", {"i": 0}))
    before = q._sl.stats()["fdatasyncs"]
    jid = q.enqueue(Job("t", {"i": 1}), durable=False)
    synced, published = _synced_and_published(q)
    assert synced < published
    assert q._sl.stats()["fdatasyncs"] == before
    assert q.get(jid).status is JobStatus.PENDING


def test_a_busy_fast_path_falls_back_to_the_append_lock(opener, monkeypatch):
    """try_append answers None (a busy lock, a roll): the record is written under the
    append lock instead, folded, and waited for."""
    q = opener(durability="sync")
    monkeypatch.setattr(q._sl, "try_append", lambda *a, **k: None)
    jid = q.enqueue(Job("t", {"i": 1}))
    synced, published = _synced_and_published(q)
    assert synced >= published
    assert q.claim("w").id == jid


def test_what_enqueue_refuses_writes_nothing(opener):
    q = opener()
    q.enqueue(Job("t"))
    last = q.stats()["last_lsn"]
    with pytest.raises(TypeError):
        q.enqueue({"job_type": "t"})
    bad = Job("t")
    bad.priority = "high"
    with pytest.raises((TypeError, ValueError)):
        q.enqueue(bad)
    assert q.stats()["last_lsn"] == last


def test_a_unique_key_and_a_child_take_the_deciding_path(opener):
    q = opener()
    first = q.enqueue(Job("t", unique_key="k"))
    assert q.enqueue(Job("t", unique_key="k")) == first
    child = Job("t").after(first)
    cid = q.enqueue(child)
    assert q.stats()["total"] == 2
    parent = q.claim("w")
    assert parent.id == first
    assert q.claim("w") is None          # the child waits for its parent
    q.complete(parent.id, parent.token)
    assert q.claim("w").id == cid


def test_the_enqueued_job_is_seen_by_another_handle_and_after_reopen(opener, store_dir):
    a = opener()
    b = opener()
    jid = a.enqueue(Job("t", {"x": 1}))
    assert b.claim("w").id == jid
    a.close()
    b.close()
    again = opener()
    assert again.get(jid).payload == {"x": 1}
