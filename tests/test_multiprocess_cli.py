"""The CLI beside running workers (issue 19): two ``aurora-log worker`` processes serve
one store while ``aurora-log retry`` and ``aurora-log cancel`` (separate processes) change
it; nobody gets "in use"."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, UTC
from pathlib import Path

import aurora_log
from aurora_log import Job, JobStatus

ROOT = Path(__file__).resolve().parent.parent

APP = textwrap.dedent('''
    import os, time
    from pathlib import Path
    import aurora_log
    from aurora_log.runtime import tasks

    MARKS = Path(os.environ["MP_MARKS"])
    q = aurora_log.open(os.environ["MP_STORE"], retry_base=0.05,   # the default mode
                        reaper_interval=0.2)

    def flaky(job):
        (MARKS / f"ran-{job.id}-{os.getpid()}-{job.retry_count}").write_text("")
        if not (MARKS / "fixed").exists():
            raise RuntimeError("not fixed yet")
        return {"pid": os.getpid()}

    def hello(job):
        time.sleep(0.05)
        return {"pid": os.getpid()}

    tasks.register_handler(q, "flaky", flaky)
    tasks.register_handler(q, "hello", hello)
''')


def _cli(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aurora_log", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=60)


def _wait(pred, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_cli_retry_and_cancel_beside_two_running_workers(tmp_path):
    store, marks = tmp_path / "store", tmp_path / "marks"
    marks.mkdir()
    (tmp_path / "mpapp.py").write_text(APP)
    env = dict(os.environ, MP_STORE=str(store), MP_MARKS=str(marks),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    aurora_log.open(store).close()
    log = open(tmp_path / "workers.log", "ab")
    workers = [subprocess.Popen([sys.executable, "-m", "aurora_log", "worker", "mpapp:q",
                                 "-w", "2", "--poll-interval", "0.1"],
                                cwd=tmp_path, env=env, stdout=log, stderr=log)
               for _ in range(2)]
    try:
        with aurora_log.open(store, reaper_interval=None) as q:
            # both workers attached (each holds its liveness file), then the jobs
            _wait(lambda: len(list((store / "procs").glob("*.live"))) == 3)
            dead = q.enqueue(Job("flaky", {}, max_retries=0))
            later = q.enqueue(Job("hello", {}, scheduled_at=datetime.now(UTC)
                                  + timedelta(hours=1)))
            many = q.enqueue_many([Job("hello", {"i": i}) for i in range(20)])
            _wait(lambda: q.get(dead).status is JobStatus.DEAD_LETTER)
            _wait(lambda: all(q.get(j).status is JobStatus.COMPLETED for j in many))
            # both workers served the store
            pids = {q.get(j).result["pid"] for j in many}
            assert pids <= {w.pid for w in workers} and len(pids) == 2, pids

            (marks / "fixed").write_text("")
            out = _cli(env, "retry", store, dead)
            assert out.returncode == 0, out.stderr
            _wait(lambda: q.get(dead).status is JobStatus.COMPLETED)

            out = _cli(env, "cancel", store, later)
            assert out.returncode == 0, out.stderr
            assert q.get(later).status is JobStatus.CANCELLED

            out = _cli(env, "enqueue", store, "hello")
            assert out.returncode == 0, out.stderr
            new = out.stdout.strip()
            _wait(lambda: q.get(new) is not None and q.get(new).status is JobStatus.COMPLETED)
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            w.wait(timeout=60)
        log.close()
    assert [w.returncode for w in workers] == [0, 0], (tmp_path / "workers.log").read_text()
    with aurora_log.open(store) as q:     # after everyone left
        assert q.stats()["running"] == 0
        assert q.get(dead).status is JobStatus.COMPLETED
        assert q.get(later).status is JobStatus.CANCELLED
