"""The default mode is shared (issue 19): plain ``aurora_log.open(path)`` twice on one store,
in one process and in two, and both use the whole API at once; each sees the other's
writes. (The refusal messages between the modes: test_multiprocess.py and test_cli.py.)"""

from __future__ import annotations

import multiprocessing as mp
import threading

import aurora_log
from aurora_log import Job, JobPriority, JobStatus

CTX = mp.get_context("fork")
OPTS = dict(reaper_interval=None, retry_base=3600.0)     # a failed job stays FAILED


def _exercise(q, tag: str) -> dict[str, str]:
    """Every call of the API on jobs of type w-<tag>; returns {job id: expected status}."""
    kind = f"w-{tag}"
    dead = q.enqueue(Job(kind, {"n": -1}, priority=JobPriority.HIGH, max_retries=0))
    ids = q.enqueue_many([Job(kind, {"n": n}) for n in range(5)])
    once = q.enqueue(Job(kind, {"u": 1}, unique_key=f"u-{tag}", priority=JobPriority.LOW))
    assert q.enqueue(Job(kind, {"u": 2}, unique_key=f"u-{tag}")) == once
    want = {}

    j = q.claim(f"{tag}-1", job_types=[kind])            # the HIGH one first
    assert j.id == dead
    assert q.fail(j.id, j.token, "boom") is JobStatus.DEAD_LETTER

    j = q.claim(f"{tag}-1", job_types=[kind])
    assert j.id == ids[0]                                   # FIFO among equals
    assert q.heartbeat(j.id, j.token) is False
    q.progress(j.id, j.token, 0.5, "half")
    q.complete(j.id, j.token, {"by": tag})
    want[ids[0]] = "completed"

    j = q.claim(f"{tag}-2", job_types=[kind])
    assert q.fail(j.id, j.token, "later") is JobStatus.FAILED
    want[j.id] = "failed"

    j = q.claim(f"{tag}-2", job_types=[kind])
    assert q.release(j.id, j.token) is JobStatus.PENDING
    want[j.id] = "pending"

    assert q.cancel(ids[4]) is JobStatus.CANCELLED
    want[ids[4]] = "cancelled"
    running = q.claim(f"{tag}-3", job_types=[kind])
    assert running.id == ids[3]
    want[ids[3]] = "running"
    want[once] = "pending"
    q.retry_dead(dead)                     # (after the claims: it is HIGH priority)
    want[dead] = "pending"

    q.compact()
    for jid, status in want.items():
        assert q.get(jid).status.value == status, (jid, status)
    assert {j.id for j in q.list(job_type=kind, limit=100)} == set(want)
    assert [t.kind for t in q.history(ids[0])] == ["enqueue", "claim", "progress", "complete"]
    assert q.stats()["total"] >= len(want)
    return want


def _check_seen(q, want: dict[str, str]) -> None:
    for jid, status in want.items():
        got = q.get(jid)
        assert got is not None and got.status.value == status, (jid, status, got)


def test_two_default_opens_in_one_process_use_the_whole_api_at_once(store_dir):
    q1 = aurora_log.open(store_dir, **OPTS)
    q2 = aurora_log.open(store_dir, **OPTS)             # no LockedError: the default shares
    try:
        assert q1._shared and q2._shared
        results: dict[str, dict] = {}
        errors: list[BaseException] = []

        def run(q, tag):
            try:
                results[tag] = _exercise(q, tag)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        ts = [threading.Thread(target=run, args=(q, tag)) for q, tag in ((q1, "a"), (q2, "b"))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        assert not errors, errors
        _check_seen(q1, results["b"])                  # each sees the other's writes
        _check_seen(q2, results["a"])
        assert q1.stats() == q2.stats()
        cancelled = [jid for w in results.values() for jid, s in w.items() if s == "cancelled"]
        assert q1.purge(status="cancelled", older_than=0) == len(cancelled) == 2
        assert all(q2.get(jid) is None for jid in cancelled)
        ids = [j.id for j in q1.list(limit=1000)]
        assert ids == [j.id for j in q2.list(limit=1000)] and not set(ids) & set(cancelled)
    finally:
        q1.close()
        q2.close()
    # the RUNNING jobs each handed back on close are pending for the next open
    with aurora_log.open(store_dir, read_only=True) as ro:
        assert ro.stats()["running"] == 0


def _child(path, out) -> None:
    try:
        q = aurora_log.open(path, **OPTS)
        want = _exercise(q, "child")
        out.put(("ok", want))
        other = out_wait(q)
        _check_seen(q, other)
        q.close()
        out.put(("done", None))
    except BaseException as e:  # noqa: BLE001 - sent to the test
        out.put(("error", repr(e)))


_to_child: mp.Queue | None = None


def out_wait(q):
    assert _to_child is not None
    return _to_child.get(timeout=120)


def test_two_processes_with_default_opens_use_the_whole_api_at_once(store_dir):
    global _to_child
    _to_child = CTX.Queue()
    out = CTX.Queue()
    p = CTX.Process(target=_child, args=(str(store_dir), out))
    p.start()                      # the child opens the store itself, after the fork
    try:
        q = aurora_log.open(store_dir, **OPTS)
        try:
            mine = _exercise(q, "parent")
            kind, theirs = out.get(timeout=120)
            assert kind == "ok", theirs
            _check_seen(q, theirs)                     # the child's writes, seen here
            _to_child.put(mine)                        # and ours, checked there
            kind, err = out.get(timeout=120)
            assert kind == "done", err
        finally:
            q.close()
    finally:
        p.join(60)
        _to_child = None
    assert p.exitcode == 0
