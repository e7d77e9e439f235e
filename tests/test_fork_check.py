"""The queue notices a fork without a getpid() syscall per operation: a counter bumped by
the at-fork handler (queue._after_fork_in_child) says whether the pid must be compared.
A forked child's first use re-attaches whatever that use is: a claim, a complete, a
heartbeat (the hot paths, which no longer call getpid)."""

from __future__ import annotations

import multiprocessing as mp
import os

import aurora_log
from aurora_log import Job, JobStatus

CTX = mp.get_context("fork")
OPTS = dict(reaper_interval=None, auto_compact=False)     # the default mode: shared


def test_claim_and_complete_make_no_getpid_syscall(tmp_path, monkeypatch):
    calls = []
    real = os.getpid

    def counted() -> int:
        calls.append(1)
        return real()

    for exclusive in (False, True):
        with aurora_log.open(tmp_path / f"s{exclusive}", exclusive=exclusive, **OPTS) as q:
            q.enqueue_many("t", [{"i": i} for i in range(50)])
            q.stats()
            monkeypatch.setattr(os, "getpid", counted)
            for _ in range(50):
                job = q.claim("w")
                q.heartbeat(job.id, job.token)
                q.complete(job.id, job.token)
            monkeypatch.setattr(os, "getpid", real)
            assert q.stats()["completed"] == 50
    assert calls == []


def _child(q, first: str, job_id: str | None, token: str | None, out) -> None:
    try:
        if first == "claim":
            job = q.claim("child")
            q.complete(job.id, job.token, {"pid": os.getpid()})
            done = job.id
        elif first == "complete":
            q.complete(job_id, token, {"pid": os.getpid()})
            done = job_id
        else:
            assert q.heartbeat(job_id, token) is False
            q.complete(job_id, token, {"pid": os.getpid()})
            done = job_id
        out.put(("ok", done, q._pid == os.getpid(), q._liveness.attach_lsn))
        q.close()
    except BaseException as e:  # noqa: BLE001 - reported to the test
        out.put(("error", repr(e)))


def _fork_and_use(q, first: str, job_id=None, token=None):
    out = CTX.Queue()
    p = CTX.Process(target=_child, args=(q, first, job_id, token, out))
    p.start()
    reply = out.get(timeout=60)
    p.join(60)
    assert p.exitcode == 0 and reply[0] == "ok", reply
    return reply


def test_a_forked_childs_first_claim_reattaches(tmp_path):
    with aurora_log.open(tmp_path / "s", **OPTS) as q:
        jid = q.enqueue(Job("t", {}))
        q.stats()                                # folded before the fork
        _, done, own_pid, attach = _fork_and_use(q, "claim")
        assert done == jid and own_pid and attach != q._liveness.attach_lsn
        assert q.get(jid).status is JobStatus.COMPLETED      # the parent sees it
        assert q.get(jid).result["pid"] != os.getpid()
        # the parent's own hot path still works (and did not take the child's count)
        j2 = q.enqueue(Job("t", {}))
        job = q.claim("parent")
        assert job.id == j2
        q.complete(job.id, job.token)


def test_a_forked_childs_first_complete_or_heartbeat_reattaches(tmp_path):
    with aurora_log.open(tmp_path / "s", **OPTS) as q:
        for first in ("complete", "heartbeat"):
            jid = q.enqueue(Job("t", {}))
            job = q.claim("parent")
            assert job.id == jid
            _, done, own_pid, attach = _fork_and_use(q, first, job.id, job.token)
            assert done == jid and own_pid and attach != q._liveness.attach_lsn
            assert q.get(jid).status is JobStatus.COMPLETED
