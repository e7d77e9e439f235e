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
import fcntl
import gc
import os
import shutil

import pytest

import aurora_log
from aurora_log.testing import faults
from aurora_log.errors import AuroraLogError, ClosedError, DurabilityError
from aurora_log.job import Job, JobStatus

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


# Both store modes: the exclusive C writer and the default shared mode (the page's `failed`
# word, the fast append, the liveness files) have their own failure paths.
MODES = pytest.mark.parametrize("exclusive", [True, False], ids=["exclusive", "shared"])


def _open(store, exclusive=True):
    return aurora_log.open(store, clock=Clock(T0), reaper_interval=None, segment_bytes=SEG,
                           retry_base=0.0, retry_cap=0.0, auto_compact=False,
                           exclusive=exclusive)


def _seed_store(store, exclusive=True):
    with _open(store, exclusive) as q:
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
    """FailNth that remembers which calls it failed. flock(LOCK_UN) is never failed (nor
    counted): Linux cannot fail it on an open descriptor, and an injected failure would keep
    a shared store attached (the control page's mapping holds its lock) until exit."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.fired_names = []
        self.first_at = None

    def before(self, op):
        if op.name == "flock" and op.flags is not None and op.flags & fcntl.LOCK_UN:
            return None
        r = super().before(op)
        if r is not None:
            if self.first_at is None:
                self.first_at = self.calls
            self.fired_names.append(op.name)
        return r


def workload(store, tr: Trace, compact=False, exclusive=True):
    """Runs until the first error (re-raised after recording). Returns the queue state."""
    q = tr.run("open", (), lambda: _open(store, exclusive))
    try:
        n = 100
        for step in range(14):
            i = n + step * 4
            if step % 3 == 0:
                jobs = [_job(i + k) for k in range(3)]
                for j in jobs:
                    tr.intents[j.id] = canon(j.payload)
                tr.run("enqueue", tuple(j.id for j in jobs), lambda: q.enqueue_many(jobs))  # noqa: B023 - called at once
            else:
                j = _job(i)
                tr.intents[j.id] = canon(j.payload)
                tr.run("enqueue", (j.id,), lambda: q.enqueue(j))  # noqa: B023 - called at once
            c = q.claim("w")
            if c is not None:
                if step % 4 == 1:
                    tr.run("fail", (c.id,), lambda: q.fail(c.id, c.token, "x"))  # noqa: B023 - called at once
                elif step % 5 == 2:
                    tr.run("cancel", (c.id,), lambda: q.cancel(c.id))  # noqa: B023 - called at once
                    tr.run("fail", (c.id,), lambda: q.fail(c.id, c.token, "cancelled"))  # noqa: B023 - called at once
                else:
                    tr.run("complete", (c.id,), lambda: q.complete(c.id, c.token, {"s": step}))  # noqa: B023 - called at once
            if step % 6 == 5:
                tr.run("flush", (), q.flush)
            if compact and step % 4 == 3:
                tr.run("compact", (), q.compact)
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


def _check_after(store, tr: Trace, fail: _Fail | None, where: str, exclusive=True):
    problems = []
    # I9: the op during which an fsync failed was not acknowledged
    if fail is not None and fail.first_at is not None and \
            fail.fired_names[0] in ("fsync", "fdatasync"):
        for kind, ids, inv, acked, _err in tr.ops:
            if kind in MUTATING and acked is not None and inv < fail.first_at <= acked:
                problems.append(f"{kind} {ids} acknowledged across a failed "
                                f"{fail.fired_names[0]} (call {fail.first_at})")
        opened = any(k == "open" and a is not None for k, _, _, a, _ in tr.ops)
        if opened and fail.fired_names[0] == "fdatasync" and tr.log_failed is False:
            problems.append("an fdatasync failed but the log did not enter the failed state")
    q = _open(store, exclusive)
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


def _clean_run(tmp_path, compact, exclusive):
    store = tmp_path / "clean"
    _seed_store(store, exclusive)
    cnt = _Count()
    tr = Trace(lambda: cnt.calls)
    with faults.installed(cnt):
        workload(store, tr, compact, exclusive)
    assert all(err is None for *_, err in tr.ops)
    assert tr.rolls >= 2, tr.rolls
    if compact:
        assert "unlink" in cnt.names          # segments were retired
    shutil.rmtree(store)
    return cnt


@pytest.mark.timeout(600)
@pytest.mark.parametrize("compact", [False, True], ids=["plain", "compaction"])
@pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC], ids=["EIO", "ENOSPC"])
@MODES
def test_fail_every_nth_call(tmp_path, err, compact, exclusive):
    cnt = _clean_run(tmp_path, compact, exclusive)
    total = cnt.calls
    assert total > 100
    problems = []
    raised = {True: 0, False: 0}
    cases = 0
    gc.collect()
    fd0 = _fds()
    for persistent in (False, True):
        for n in range(1, total + 1):
            store = tmp_path / f"s-{int(persistent)}-{n}"
            _seed_store(store, exclusive)
            fail = _Fail(n, err=err, persistent=persistent)
            tr = Trace(lambda: fail.calls)  # noqa: B023 - called at once
            unexpected = None
            with faults.installed(fail):
                try:
                    workload(store, tr, compact, exclusive)
                except (AuroraLogError, OSError):
                    raised[persistent] += 1
                except Exception as e:  # noqa: BLE001 - any other type is a finding
                    unexpected = e
            where = f"{errno.errorcode[err]} {'persistent' if persistent else 'transient'} " \
                    f"at call {n} ({cnt.names[n - 1]})"
            if unexpected is not None:
                problems.append(f"{where}: untyped {type(unexpected).__name__}: {unexpected}")
            problems += _check_after(store, tr, fail, where, exclusive)
            if not exclusive:
                # a shared log's segment fds close with the object, not at close() (a
                # thread of ours may still lead a group commit with them): drop the
                # trace (its tracebacks hold the queue) and collect
                del tr, fail
                gc.collect()
            if _fds() != fd0:
                problems.append(f"{where}: fd leak ({_fds()} open, {fd0} before)")
                fd0 = _fds()
            cases += 1
            shutil.rmtree(store)
    print(f"\n[ioerrors] {'exclusive' if exclusive else 'shared'} {errno.errorcode[err]} "
          f"{'with' if compact else 'without'} "
          f"compaction: {cases} cases over {total} calls, raised "
          f"{raised[False]} transient / {raised[True]} persistent; problems {len(problems)}")
    assert not problems, "\n".join(problems[:30])


# ------------------------------------------------------------------ a failed fdatasync
# under concurrent committers (group commit): no waiter of the failed batch acknowledged

def _threaded_commit_run(root, k: int | None, threads=4, per_thread=25, exclusive=True):
    """4 threads enqueue concurrently (group commit) while every syscall is recorded and
    (if k) the k-th fdatasync of a segment fails. Returns (recorder, acks, point_before_close)."""
    import threading
    from crashsim import FsRecorder
    rec = FsRecorder(root)
    hooks = [rec] + ([_Fail(k, err=errno.EIO, ops={"fdatasync"}, path_contains=".seg")]
                     if k else [])
    acks, errors = [], []
    lock = threading.Lock()
    with faults.installed(faults.Chain(*hooks)):
        try:
            q = _open(root / "store", exclusive)
        except DurabilityError as e:          # the k-th fdatasync was the writer's first
            return rec, [], [("open", e)], rec.done, True
        start = threading.Barrier(threads)

        def producer(t):
            start.wait()
            for i in range(per_thread):
                j = Job("io", {"t": t, "i": i, "pad": "z" * (50 * (i % 5))},
                        id=f"t{t}-{i:03d}", max_retries=0)
                try:
                    q.enqueue(j)
                except (AuroraLogError, OSError) as e:
                    with lock:
                        errors.append((j.id, e))
                    continue
                with lock:
                    acks.append((j.id, rec.done))
        ts = [threading.Thread(target=producer, args=(t,)) for t in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        before_close = rec.done
        failed = q.log.failed
        try:
            q.close()
        except (AuroraLogError, OSError):
            pass
    return rec, acks, errors, before_close, failed


@pytest.mark.parametrize("exclusive", [True, False])
def test_failed_fdatasync_acknowledges_no_waiter(tmp_path, exclusive):
    """For every k: fail the k-th segment fdatasync under 4 concurrent committers. Rebuild
    the disk as a power cut right after the run would leave it (only what an fdatasync that
    RETURNED 0 covered survives; the failed one made nothing durable) and recover: every
    acknowledged enqueue must be there - so no waiter whose batch rode the failed
    fdatasync was acknowledged - and nothing is acknowledged after the failure."""
    from crashsim import DiskModel, materialize
    clean_rec, acks, errors, _, _ = _threaded_commit_run(tmp_path / "clean", None,
                                                         exclusive=exclusive)
    assert not errors and len(acks) == 100
    n_sync = sum(1 for op in clean_rec.ops if op.name == "fdatasync" and ".seg" in op.path)
    assert n_sync >= 5
    problems, cases, raised = [], 0, 0
    for k in range(1, n_sync + 1):
        root = tmp_path / f"k{k}"
        rec, acks, errors, before_close, failed = _threaded_commit_run(root, k,
                                                                       exclusive=exclusive)
        raised += len(errors)
        fail_at = next((i + 1 for i, op in enumerate(rec.ops)
                        if op.name == "fdatasync" and op.errno), None)
        if fail_at is not None and fail_at <= before_close:
            # an ack is late if a segment fdatasync succeeded after the failed one and
            # before it (the .unsynced marker's own syscalls also advance the counter, so
            # an ack of an earlier round may be recorded after them: that one is fine)
            synced_after = [i + 1 for i, op in enumerate(rec.ops[fail_at:], fail_at)
                            if op.name == "fdatasync" and ".seg" in op.path
                            and ".unsynced" not in op.path and not op.errno]
            late = [jid for jid, at in acks if synced_after and at >= synced_after[0]]
            if late:
                problems.append(f"k={k}: acknowledged after the failed fdatasync: {late[:3]}")
            if not failed:
                problems.append(f"k={k}: the log is not in the failed state")
        m = DiskModel(rec)
        m.advance_to(before_close)
        store = materialize(m.crash_image("drop"), tmp_path / f"img{k}") / "store"
        q = _open(store)
        try:
            have = {j.id for j in q.list(limit=1 << 20)}
        finally:
            q.close()
        lost = [jid for jid, at in acks if jid not in have]
        if lost:
            problems.append(f"k={k}: {len(lost)} acknowledged enqueues not durable: {lost[:3]}")
        cases += 1
        shutil.rmtree(root)
    print(f"\n[ioerrors] failed fdatasync under 4 committers: {cases} cases, {raised} "
          f"enqueues raised, problems {len(problems)}")
    assert raised > 0
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------ disk full

def _full_store(tmp_path, exclusive=True):
    store = tmp_path / "full"
    q = _open(store, exclusive)
    q.enqueue_many([_job(i) for i in range(6)])
    q.compact()
    q.enqueue_many([_job(i) for i in range(6, 12)])
    return store, q


def _data_files(store) -> list[str]:
    """The store's files but the locks and the processes' liveness files (a process's own,
    removed when it closes: not data)."""
    return sorted(p.name for p in store.rglob("*") if p.is_file() and "LOCK" not in p.name
                  and not p.name.endswith(".live"))


@MODES
def test_disk_full_enqueue_raises_reads_work_nothing_lost(tmp_path, exclusive):
    """ENOSPC on every write from now on: enqueue raises a typed error, reads keep working,
    a compaction attempt neither succeeds nor deletes WAL or snapshot files, and after the
    disk has room again everything acknowledged is there."""
    store, q = _full_store(tmp_path, exclusive)
    before = _data_files(store)
    with faults.installed(faults.FailNth(1, err=errno.ENOSPC, persistent=True,
                                         ops={"pwrite", "ftruncate"})):
        with pytest.raises(DurabilityError):
            q.enqueue(_job(99))
        assert q.get("io0003") is not None
        assert q.stats()["total"] >= 12
        assert len(q.list(limit=100)) >= 12
        with pytest.raises((AuroraLogError, OSError)):
            q.compact()
        with pytest.raises(DurabilityError):
            q.close()
    after = _data_files(store)
    assert set(before) <= set(after), "a WAL segment or snapshot was deleted on a full disk"
    q = _open(store, exclusive)
    try:
        have = {j.id for j in q.list(limit=100)}
        assert {f"io{i:04d}" for i in range(12)} <= have
    finally:
        q.close()


def test_disk_full_claims_keep_working(tmp_path):
    """RELIABILITY.md: on a full disk enqueue raises, claims and reads keep working. The
    claims and heartbeats live only in memory (the log refuses writes until reopened);
    completes still raise; after the reopen every acknowledged job is there, pending."""
    store, q = _full_store(tmp_path)
    try:
        with faults.installed(faults.FailNth(1, err=errno.ENOSPC, persistent=True,
                                             ops={"pwrite"})):
            with pytest.raises(DurabilityError):
                q.enqueue(_job(99))
            j = q.claim("w")
            assert j is not None and q.get(j.id).status == JobStatus.RUNNING
            assert q.heartbeat(j.id, j.token) is False
            assert q.claim("w2").id != j.id
            with pytest.raises(DurabilityError):
                q.complete(j.id, j.token)
    finally:
        try:
            q.close()
        except AuroraLogError:
            pass
    q = _open(store)
    try:
        # the unlogged claims did not happen; the enqueue that raised is not there
        assert q.stats()["pending"] == q.stats()["total"] == 12
    finally:
        q.close()


def test_disk_full_shared_claims_raise_reads_work(tmp_path):
    """The shared mode on a full disk: enqueue raises, and so do claims (unlike the
    exclusive mode's unlogged claims: a claim another process cannot see would let it hand
    the same job out again); reads keep working, and after the reopen every acknowledged job
    is there, pending."""
    store, q = _full_store(tmp_path, exclusive=False)
    try:
        with faults.installed(faults.FailNth(1, err=errno.ENOSPC, persistent=True,
                                             ops={"pwrite", "ftruncate", "open"})):
            with pytest.raises(DurabilityError):
                q.enqueue(_job(99))
            with pytest.raises(DurabilityError):
                q.claim("w")
            assert q.stats()["pending"] == 12
            assert q.get("io0007").status == JobStatus.PENDING
    finally:
        try:
            q.close()
        except AuroraLogError:
            pass
    q = _open(store, exclusive=False)
    try:
        assert q.stats()["pending"] == q.stats()["total"] == 12
    finally:
        q.close()


class _Armed(faults.Hook):
    """Passes calls to `hook` only once armed (the shared mode's open syncs more often than
    the exclusive one's: the failure must hit the first fdatasync after the open)."""

    def __init__(self, hook):
        self.hook, self.armed = hook, False

    def before(self, op):
        return self.hook.before(op) if self.armed else None


@MODES
def test_reopen_after_failed_fdatasync_survives_power_loss_with_dropped_pages(tmp_path,
                                                                           exclusive):
    from crashsim import DiskModel, FsRecorder, materialize
    root = tmp_path / "r"
    root.mkdir()
    rec = FsRecorder(root)
    fail = _Armed(_Fail(1, err=errno.EIO, ops={"fdatasync"}, path_contains=".seg"))
    with faults.installed(faults.Chain(rec, fail)):
        q = _open(root / "store", exclusive)
        fail.armed = True
        with pytest.raises(DurabilityError):
            q.enqueue(_job(1))                      # its fdatasync fails: not acknowledged
        if exclusive:
            with pytest.raises(DurabilityError):
                q.close()
        else:
            q.close()       # the enqueue reported the failure; a shared close only detaches
        fail.armed = False
        q = _open(root / "store", exclusive)        # reopen: rereads the page cache
        q.enqueue(_job(2))                          # acknowledged (sync)
        point = rec.done
        q.close()
    m = DiskModel(rec, failed_fsync="drop_pages")
    m.advance_to(point)
    store = materialize(m.crash_image("drop"), tmp_path / "img") / "store"
    q = _open(store, exclusive)                     # must open ...
    try:
        assert q.get("io0002") is not None          # ... with the acknowledged job
    finally:
        q.close()
