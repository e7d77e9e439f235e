"""Crash at every step of a compaction: recovery gives the same state as before it.

Two crash kinds:
* kill -9 at every syscall of a compaction (a forked child exits inside the syscall hook
  before the call runs: tmp written or not, renamed or not, directory fsynced or not, each
  snapshot and segment deletion done or not; the page cache survives);
* power loss at every syscall (tests/crashsim.py's disk model: unsynced bytes and
  undurable directory entries are lost), when that helper is present.
"""

import os
import shutil

import pytest

import aurora_log
from aurora_log import Job
from aurora_log.testing import faults
from aurora_log.errors import DurabilityError

T0 = 1_700_000_000.0


def _open(d, **kw):
    # exclusive=True: the kills and power cuts are injected at the exclusive writer's
    # syscalls (testing/faults.py) and the reopened fingerprint (with its last LSN) is
    # compared with the live one; the default mode adds ATTACH/DETACH records on every
    # reopen. Shared mode killed mid-compaction: test_multiprocess.py
    return aurora_log.open(d, clock=lambda: T0, reaper_interval=None, durability="sync",
                           segment_bytes=8192, auto_compact=False, exclusive=True, **kw)


def _work(q, n, tag):
    for i in range(n):
        q.enqueue(Job(job_type="t", payload={"tag": tag, "i": i, "pad": "y" * 30}),
                  durable=False)
    for _ in range(n // 2):
        j = q.claim("w")
        q.complete(j.id, j.token, tag, durable=False)
    q.flush()


def _pristine(d, archive):
    q = _open(d, archive=archive)
    for k in range(2):
        _work(q, 50, k)
        q.compact()
    _work(q, 50, "tail")
    q.close()
    q = _open(d, archive=archive)
    fp = q._state.fingerprint()
    q.close()
    return fp


class _Count(faults.Hook):
    def __init__(self):
        self.n = 0
        self.armed = False
        self.names = []

    def before(self, op):
        if self.armed:
            self.n += 1
            self.names.append(op.name)


class _KillAt(faults.Hook):
    def __init__(self, k):
        self.k = k
        self.n = 0
        self.armed = False

    def before(self, op):
        if self.armed:
            self.n += 1
            if self.n == self.k:
                os._exit(0)


def _compact_ops(d, archive):
    hook = _Count()
    with faults.installed(hook):
        q = _open(d, archive=archive)
        hook.armed = True
        res = q.compact()
        hook.armed = False
        q.close()
    return hook.n, hook.names, res


@pytest.mark.parametrize("archive", [False, True])
def test_kill_at_every_step_of_a_compaction(tmp_path, archive):
    base = tmp_path / "base"
    fp = _pristine(base, archive)
    probe = tmp_path / "probe"
    shutil.copytree(base, probe)
    n, names, res = _compact_ops(probe, archive)
    assert res.removed_snapshots and res.retired_segments       # the interesting case
    for op in ("rename", "fsync", "unlink"):
        assert op in names
    for k in range(1, n + 1):
        d = tmp_path / f"k{k}"
        shutil.copytree(base, d)
        pid = os.fork()
        if pid == 0:                                            # child: compact, die at op k
            try:
                hook = _KillAt(k)
                with faults.installed(hook):
                    q = _open(d, archive=archive)
                    hook.armed = True
                    q.compact()
            finally:
                os._exit(3)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0, f"child did not die at op {k}"
        q = _open(d, archive=archive)
        assert q._state.fingerprint() == fp, f"state differs after a kill at op {k} " \
                                             f"({names[k - 1]})"
        assert not q.snapshot_report.problems
        q.compact()                                             # and compaction resumes
        q.close()
        q = _open(d, archive=archive)
        assert q._state.fingerprint() == fp
        q.close()
        shutil.rmtree(d)


def test_power_loss_at_every_step_of_a_compaction(tmp_path):
    crashsim = pytest.importorskip("crashsim")
    base = tmp_path / "base"
    fp = _pristine(base, False)
    rec = crashsim.FsRecorder(base)
    with faults.installed(rec):
        q = _open(base)
        start = rec.done
        q.compact()
        end = rec.done
        q.close()
    for i, mode, img in crashsim.crash_images(rec, modes=("drop", "torn"), seed=1,
                                              points=range(start, end + 1)):
        d = crashsim.materialize(img, tmp_path / "img")
        q = _open(d)
        assert q._state.fingerprint() == fp, f"power loss at op {i} ({mode})"
        q.close()


def test_failed_compaction_io_leaves_state_and_queue_usable(tmp_path):
    """EIO at each file op of the snapshot write: compaction raises, the queue goes on."""
    base = tmp_path / "base"
    fp = _pristine(base, False)
    probe = tmp_path / "probe"
    shutil.copytree(base, probe)
    rec = faults.Recorder()
    q = _open(probe)
    with faults.installed(rec):
        q.compact()
    q.close()
    snap_ops = [o for o in rec.ops if "/snap/" in (o.path or "")]
    assert len(snap_ops) >= 5
    for n in range(1, len(snap_ops) + 1):
        d = tmp_path / f"f{n}"
        shutil.copytree(base, d)
        hook = faults.FailNth(n, path_contains="/snap/")
        q = _open(d)
        with faults.installed(hook):
            with pytest.raises((OSError, DurabilityError)):
                q.compact()
        assert hook.fired == 1, snap_ops[n - 1]
        q.enqueue(Job(job_type="t", payload={}))
        q.close()
        q = _open(d)
        assert len(q._state.jobs) == len(fp[0]) + 1
        q.close()
        assert not [x for x in os.listdir(d / "snap") if x.endswith(".tmp")]
