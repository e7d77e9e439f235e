"""I/O-error loops over a whole-queue workload (RELIABILITY.md "I/O errors" lines, the
SQLite "fail the Nth I/O call for every N" method).

The workload opens an existing store (recovery I/O), enqueues (single and batched),
claims, completes, fails, cancels, flushes, rolls 4 KiB segments and closes. A clean run
counts its syscalls (N_total). Then for EVERY N in 1..N_total, for EIO and ENOSPC, transient
(only call N fails) and persistent (N and every call after it fail):

* every operation either returns or raises a typed error (AuroraLogError or OSError) -
  never another exception, never a hang (timeout);
* the operation during which an fsync/fdatasync failed is not acknowledged, and once the
  log has failed nothing more is acknowledged until reopen (I9);
* after removing the fault and reopening: every acknowledged enqueue is there, every
  acknowledged complete is COMPLETED, no phantom, payloads byte-identical;
* no file descriptor leaks (/proc/self/fd counted before and after each case).

Reproduce:  pytest tests/test_ioerrors.py -q -s
"""

from __future__ import annotations

import errno
import os
import shutil

import pytest

import aurora_log
from aurora_log import faults
from aurora_log.errors import AuroraLogError, ClosedError, DurabilityError
from aurora_log.job import Job

from checker import canon
from test_powerloss_support import Clock, T0, cleanup_fast_dirs, fast_dir

SEG = 4096
MUTATING = ("enqueue", "complete", "fail", "cancel")


@pytest.fixture
def tmp_path(tmp_path):
    yield fast_dir(tmp_path)
    cleanup_fast_dirs()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _job(i: int) -> Job:
    return Job("io", {"i": i, "pad": "p" * (300 + 37 * (i % 11))}, id=f"io{i:04d}",
               max_retries=1)


def _open(store):
    return aurora_log.open(store, clock=Clock(T0), reaper_interval=None, segment_bytes=SEG,
                           retry_base=0.0, retry_cap=0.0)


def _seed_store(store):
    with _open(store) as q:
        q.enqueue_many([_job(i) for i in range(4)])
        j = q.claim("seed")                # left running: the reopen reaps it
        assert j is not None


class Trace:
    """What the workload saw: each op with the call count at invocation and return."""

    def __init__(self, counter):
        self.counter = counter
        self.ops = []          # (kind, ids, invoked, acked|None, error|None)
        self.intents = {}      # id -> canonical payload
        self.rolls = 0
        self.log_failed = None  # q.log.failed when the first error surfaced (queue open)

    def run(self, kind, ids, fn):
        inv = self.counter()
        try:
            r = fn()
        except (AuroraLogError, OSError) as e:
            self.ops.append((kind, ids, inv, None, e))
            raise
        self.ops.append((kind, ids, inv, self.counter(), None))
        return r


class _Count(faults.Hook):
    def __init__(self):
        self.calls = 0
        self.names = []

    def before(self, op):
        self.calls += 1
        self.names.append(op.name)


class _Fail(faults.FailNth):
    """FailNth that remembers which calls it failed."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.fired_names = []
        self.first_at = None

    def before(self, op):
        r = super().before(op)
        if r is not None:
            if self.first_at is None:
                self.first_at = self.calls
            self.fired_names.append(op.name)
        return r


def workload(store, tr: Trace):
    """Runs until the first error (re-raised after recording). Returns the queue state."""
    q = tr.run("open", (), lambda: _open(store))
    try:
        n = 100
        for step in range(14):
            i = n + step * 4
            if step % 3 == 0:
                jobs = [_job(i + k) for k in range(3)]
                for j in jobs:
                    tr.intents[j.id] = canon(j.payload)
                tr.run("enqueue", tuple(j.id for j in jobs), lambda: q.enqueue_many(jobs))
            else:
                j = _job(i)
                tr.intents[j.id] = canon(j.payload)
                tr.run("enqueue", (j.id,), lambda: q.enqueue(j))
            c = q.claim("w")
            if c is not None:
                if step % 4 == 1:
                    tr.run("fail", (c.id,), lambda: q.fail(c.id, c.token, "x"))
                elif step % 5 == 2:
                    tr.run("cancel", (c.id,), lambda: q.cancel(c.id))
                    tr.run("fail", (c.id,), lambda: q.fail(c.id, c.token, "cancelled"))
                else:
                    tr.run("complete", (c.id,), lambda: q.complete(c.id, c.token, {"s": step}))
            if step % 6 == 5:
                tr.run("flush", (), q.flush)
        tr.rolls = q.log.stats()["rolls"]
    except (AuroraLogError, OSError):
        tr.log_failed = q.log.failed
        _after_failure(q, tr)
        raise
    finally:
        try:
            tr.run("close", (), q.close)
        except (AuroraLogError, OSError):
            pass


def _after_failure(q, tr: Trace):
    """Once the log has failed, nothing more is acknowledged: probe with an enqueue."""
    if not q.log.failed:
        return
    j = Job("io", {"probe": 1}, id="probe-after-failure")
    tr.intents[j.id] = canon(j.payload)
    try:
        tr.run("enqueue", (j.id,), lambda: q.enqueue(j))
    except (AuroraLogError, OSError) as e:
        assert isinstance(e, (DurabilityError, ClosedError)), repr(e)
    else:
        raise AssertionError("an enqueue was acknowledged after the log failed")


def _check_after(store, tr: Trace, fail: _Fail | None, where: str):
    problems = []
    # I9: the op during which an fsync failed was not acknowledged
    if fail is not None and fail.first_at is not None and \
            fail.fired_names[0] in ("fsync", "fdatasync"):
        for kind, ids, inv, acked, err in tr.ops:
            if kind in MUTATING and acked is not None and inv < fail.first_at <= acked:
                problems.append(f"{kind} {ids} acknowledged across a failed "
                                f"{fail.fired_names[0]} (call {fail.first_at})")
        opened = any(k == "open" and a is not None for k, _, _, a, _ in tr.ops)
        if opened and fail.fired_names[0] == "fdatasync" and tr.log_failed is False:
            problems.append("an fdatasync failed but the log did not enter the failed state")
    q = _open(store)
    try:
        jobs = {j.id: j for j in q.list(limit=1 << 20)}
    finally:
        q.close()
    acked = [(k, ids) for k, ids, inv, a, err in tr.ops if a is not None]
    for kind, ids in acked:
        if kind == "enqueue":
            problems += [f"lost {i}" for i in ids if i not in jobs]
        elif kind == "complete":
            problems += [f"resurrected {i} ({jobs[i].status.value})" for i in ids
                         if i in jobs and jobs[i].status.value != "completed"]
    for jid, j in jobs.items():
        if not jid.startswith("io0") and jid not in tr.intents:
            problems.append(f"phantom {jid}")
        elif jid in tr.intents and canon(j.payload) != tr.intents[jid]:
            problems.append(f"payload differs {jid}")
    return [f"{where}: {p}" for p in problems]


def _clean_run(tmp_path):
    store = tmp_path / "clean"
    _seed_store(store)
    cnt = _Count()
    tr = Trace(lambda: cnt.calls)
    with faults.installed(cnt):
        workload(store, tr)
    assert all(err is None for *_, err in tr.ops)
    assert tr.rolls >= 2, tr.rolls
    return cnt


@pytest.mark.timeout(600)
@pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC], ids=["EIO", "ENOSPC"])
def test_fail_every_nth_call(tmp_path, err):
    cnt = _clean_run(tmp_path)
    total = cnt.calls
    assert total > 100
    problems = []
    raised = {True: 0, False: 0}
    cases = 0
    fd0 = _fds()
    for persistent in (False, True):
        for n in range(1, total + 1):
            store = tmp_path / f"s-{int(persistent)}-{n}"
            _seed_store(store)
            fail = _Fail(n, err=err, persistent=persistent)
            tr = Trace(lambda: fail.calls)
            unexpected = None
            with faults.installed(fail):
                try:
                    workload(store, tr)
                except (AuroraLogError, OSError):
                    raised[persistent] += 1
                except Exception as e:  # noqa: BLE001 - any other type is a finding
                    unexpected = e
            where = f"{errno.errorcode[err]} {'persistent' if persistent else 'transient'} " \
                    f"at call {n} ({cnt.names[n - 1]})"
            if unexpected is not None:
                problems.append(f"{where}: untyped {type(unexpected).__name__}: {unexpected}")
            problems += _check_after(store, tr, fail, where)
            if _fds() != fd0:
                problems.append(f"{where}: fd leak ({_fds()} open, {fd0} before)")
                fd0 = _fds()
            cases += 1
            shutil.rmtree(store)
    print(f"\n[ioerrors] {errno.errorcode[err]}: {cases} cases over {total} calls, raised "
          f"{raised[False]} transient / {raised[True]} persistent; problems {len(problems)}")
    assert not problems, "\n".join(problems[:30])
