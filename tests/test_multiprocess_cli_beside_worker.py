"""The CLI's writing commands beside a running ``aurora-log worker`` process on the same
store (issue 19): ``enqueue``, ``retry`` and ``cancel`` succeed (no "in use", exit 0) and
the running worker acts on what they wrote: a retried dead job runs again, a cancelled
running job stops, a cancelled pending job never runs.

Everything is a real process: the worker (``python -m aurora_log worker app:q``), each CLI
command, and the test's own reads through ``aurora_log.open``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import aurora_log
from mp_support import child_env

APP = textwrap.dedent('''
    import os, time
    from pathlib import Path
    import aurora_log

    MARKS = Path(os.environ["MP_MARKS"])
    q = aurora_log.open(os.environ["MP_STORE"], reaper_interval=0.2)   # the default mode

    def boom(job):
        (MARKS / f"boom-{job.id}-{job.retry_count}-{time.monotonic_ns()}").touch()
        raise RuntimeError("boom")

    def slow(job):
        (MARKS / f"slow-{job.id}").touch()
        ctx = aurora_log.current_context()
        end = time.monotonic() + 60
        while time.monotonic() < end:
            ctx.check()                 # raises once the job is cancelled
            time.sleep(0.02)
        return "finished"

    aurora_log.register_handler(q, "boom", boom)
    aurora_log.register_handler(q, "slow", slow)
''')


def cli(store: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aurora_log", *args[:1], str(store), *args[1:]],
                          env=child_env(), capture_output=True, text=True, timeout=60)


def wait_for(pred, what: str, worker: subprocess.Popen, log: Path, timeout: float = 30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        assert worker.poll() is None, f"the worker exited\n{log.read_text()[-3000:]}"
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}\n{log.read_text()[-3000:]}")


def job(store: Path, job_id: str):
    with aurora_log.open(store, read_only=True) as q:
        return q.get(job_id), [t.kind for t in q.history(job_id)]


def test_cli_retry_and_cancel_beside_a_running_worker(shared_store, tmp_path):
    store, marks = tmp_path / "store", tmp_path / "marks"
    marks.mkdir()
    (tmp_path / "mpapp.py").write_text(APP)
    env = dict(child_env(), MP_STORE=str(store), MP_MARKS=str(marks))
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "aurora_log", "worker", "mpapp:q",
                                   "-w", "2", "--poll-interval", "0.1"],
                                  cwd=tmp_path, env=env, stdout=out, stderr=out)
    try:
        wait_for(lambda: (store / "wal").is_dir(), "the worker's open", worker, log)

        # enqueue beside the worker; it runs the job, which dead-letters (no retries)
        r = cli(store, "enqueue", "boom", "--max-retries", "0")
        assert r.returncode == 0, r.stderr
        dead = r.stdout.strip()
        wait_for(lambda: job(store, dead)[0].status.value == "dead_letter", "dead letter",
                 worker, log)

        # retry beside the worker: back to pending, and the worker runs it again
        r = cli(store, "retry", dead)
        assert r.returncode == 0 and "back to pending" in r.stdout, r.stderr
        wait_for(lambda: job(store, dead)[1] == ["enqueue", "claim", "fail", "retry_dead",
                                                 "claim", "fail"], "the second run", worker,
                 log)
        assert job(store, dead)[0].status.value == "dead_letter"
        assert len(list(marks.glob(f"boom-{dead}-*"))) == 2

        # cancel a job the worker is running: it is asked to stop, and stops
        r = cli(store, "enqueue", "slow")
        assert r.returncode == 0, r.stderr
        running = r.stdout.strip()
        wait_for(lambda: (marks / f"slow-{running}").exists(), "the slow job's start",
                 worker, log)
        r = cli(store, "cancel", running)
        assert r.returncode == 0 and "cancel requested" in r.stdout, (r.stdout, r.stderr)
        wait_for(lambda: job(store, running)[0].status.value == "cancelled",
                 "the running job's cancel", worker, log)

        # cancel a job not yet due: cancelled at once, never runs
        r = cli(store, "enqueue", "slow", "--delay", "1h")
        assert r.returncode == 0, r.stderr
        later = r.stdout.strip()
        r = cli(store, "cancel", later)
        assert r.returncode == 0, r.stderr
        got, kinds = job(store, later)
        assert got.status.value == "cancelled" and kinds == ["enqueue", "cancel"]

        # a wrong request is an error (1), not "in use" (3)
        r = cli(store, "retry", running)
        assert r.returncode == 1 and "in use" not in r.stderr, (r.returncode, r.stderr)

        assert worker.poll() is None            # the worker ran through all of it
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            code = worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            code = worker.wait()
    assert code == 0, log.read_text()[-3000:]
    assert not (marks / f"slow-{later}").exists()
