"""Real worker processes started with the CLI (``python -m aurora_log worker wapp:q``):
shutdown, SIGKILL and restart, timeouts, cancellation, heartbeats, async handlers,
results and progress.

The store is locked by whoever has it open, so every test fills the store, closes it,
runs a worker process, waits for marker files the handlers write, stops the worker, and
only then opens the store again to look.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import aurora_log
from aurora_log.job import Job, JobStatus

ROOT = Path(__file__).resolve().parent.parent

APP = textwrap.dedent('''
    import asyncio, os, time
    from pathlib import Path
    import aurora_log
    from aurora_log.runtime import tasks
    from aurora_log.runtime.worker import current_context

    MARKS = Path(os.environ["WAPP_MARKS"])
    q = aurora_log.open(os.environ["WAPP_STORE"], retry_base=0.05, segment_bytes=1 << 20)

    def mark(name, text=""):
        tmp = MARKS / (name + ".tmp")
        tmp.write_text(text)
        tmp.rename(MARKS / name)

    def sleepy(job):
        p = job.payload
        mark(f"start-{p['tag']}-{job.retry_count}", str(os.getpid()))
        ctx = current_context()
        end = time.monotonic() + p["seconds"]
        while time.monotonic() < end:
            if p.get("cooperative", True):
                ctx.check()
            time.sleep(0.02)
        mark(f"done-{p['tag']}")
        return {"slept": p["seconds"], "attempt": ctx.attempt}

    def steps(job):
        ctx = current_context()
        for i in range(4):
            ctx.progress(i + 1, 4, f"step {i + 1} of 4")
            time.sleep(0.15)
        mark(f"done-steps-{job.id}")
        return {"steps": 4, "echo": job.payload}

    async def aio(job):
        await asyncio.sleep(0.05)
        current_context().progress(0.5, "awaited")
        await asyncio.sleep(0.05)
        mark("done-aio")
        loop = type(asyncio.get_running_loop()).__name__
        return {"async": True, "x": job.payload["x"], "loop": loop}

    def canceller(job):
        # an operator's cancel from inside the process that owns the store
        target = job.payload["target"]
        while not (MARKS / f"start-{job.payload['tag']}-0").exists():
            time.sleep(0.02)
        status = str(q.cancel(target))
        mark(f"cancel-sent-{job.payload['tag']}")
        return status

    for name, fn in (("sleepy", sleepy), ("steps", steps), ("aio", aio),
                     ("canceller", canceller)):
        tasks.register_handler(q, name, fn)
''')


@pytest.fixture
def app(tmp_path, store_dir):
    (tmp_path / "wapp.py").write_text(APP)
    marks = tmp_path / "marks"
    marks.mkdir()
    env = dict(os.environ, WAPP_STORE=str(store_dir), WAPP_MARKS=str(marks),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return {"dir": tmp_path, "marks": marks, "env": env, "store": store_dir}


def _open(path):
    # small segments: opening a store reads its newest segment, 64 MiB by default
    return aurora_log.open(path, retry_base=0.05, segment_bytes=1 << 20)


def enqueue(app, *jobs):
    with _open(app["store"]) as q:
        return [q.enqueue(j) for j in jobs]


def sleepy(tag, seconds, **kw):
    cooperative = kw.pop("cooperative", True)
    return Job("sleepy", {"tag": tag, "seconds": seconds, "cooperative": cooperative}, **kw)


def start_worker(app, *extra):
    log = open(app["dir"] / "worker.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "aurora_log", "worker", "wapp:q", "-w", "2",
                             "--poll-interval", "0.1", *extra],
                            cwd=app["dir"], env=app["env"], stdout=log, stderr=log)


def wait_for(pred, timeout=20.0, what="condition", proc=None, app=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    logtext = (app["dir"] / "worker.log").read_text() if app else ""
    raise AssertionError(f"timed out waiting for {what}\n--- worker log ---\n{logtext}")


def marked(app, name):
    return (app["marks"] / name).exists()


def stop(proc, sig=signal.SIGTERM, timeout=20):
    proc.send_signal(sig)
    return proc.wait(timeout=timeout)


def look(app):
    return _open(app["store"])


def test_graceful_shutdown_lets_the_running_job_finish(app):
    (job_id,) = enqueue(app, sleepy("g", 1.0))
    proc = start_worker(app)
    wait_for(lambda: marked(app, "start-g-0"), proc=proc, app=app, what="job start")
    assert stop(proc) == 0
    assert marked(app, "done-g")
    with look(app) as q:
        job = q.get(job_id)
        assert job.status == JobStatus.COMPLETED
        assert job.result == {"slept": 1.0, "attempt": 1}


def test_second_signal_stops_at_once_and_the_job_returns_to_pending(app):
    (job_id,) = enqueue(app, sleepy("f", 30, cooperative=False))
    proc = start_worker(app)
    wait_for(lambda: marked(app, "start-f-0"), proc=proc, app=app, what="job start")
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    t = time.monotonic()
    assert stop(proc, signal.SIGTERM) == 1          # forced: not a clean stop
    assert time.monotonic() - t < 10
    assert not marked(app, "done-f")
    with look(app) as q:
        job = q.get(job_id)
        assert job.status in (JobStatus.PENDING, JobStatus.FAILED)   # waiting to run again
        assert job.status is not JobStatus.COMPLETED


def test_shutdown_timeout_forces_the_stop(app):
    enqueue(app, sleepy("t", 30, cooperative=False))
    proc = start_worker(app, "--shutdown-timeout", "0.5")
    wait_for(lambda: marked(app, "start-t-0"), proc=proc, app=app, what="job start")
    assert stop(proc) == 1


def test_sigkill_mid_job_then_restart_runs_it_again_as_a_new_attempt(app):
    (job_id,) = enqueue(app, sleepy("k", 1.0, max_retries=3))
    proc = start_worker(app)
    wait_for(lambda: marked(app, "start-k-0"), proc=proc, app=app, what="first attempt")
    proc.kill()
    proc.wait()
    assert not marked(app, "done-k")
    proc = start_worker(app)
    wait_for(lambda: marked(app, "done-k"), proc=proc, app=app, what="second attempt", timeout=30)
    assert stop(proc) == 0
    assert marked(app, "start-k-1")               # the rerun saw retry_count 1
    with look(app) as q:
        job = q.get(job_id)
        assert job.status == JobStatus.COMPLETED
        assert job.retry_count == 1
        assert job.result["attempt"] == 2


def test_thread_handler_timeout_fails_with_timeout_and_retries(app):
    # the first attempt ignores the stop request; the timeout still settles it
    (job_id,) = enqueue(app, sleepy("to", 2, cooperative=False, timeout_seconds=0.5, max_retries=1))
    proc = start_worker(app)
    wait_for(lambda: marked(app, "start-to-1"), proc=proc, app=app, what="the retry")
    assert stop(proc, signal.SIGTERM) == 0      # abandoned handler threads do not hold it up
    with look(app) as q:
        job = q.get(job_id)
        assert job.retry_count == 1
        assert "timeout" in (job.error or "")


def test_cooperative_timeout_goes_to_dead_letter_when_retries_are_spent(app):
    (job_id,) = enqueue(app, sleepy("c", 10, timeout_seconds=0.5, max_retries=0))
    proc = start_worker(app)
    wait_for(lambda: marked(app, "start-c-0"), proc=proc, app=app)
    time.sleep(1.5)
    assert stop(proc) == 0
    with look(app) as q:
        job = q.get(job_id)
        assert job.status == JobStatus.DEAD_LETTER
        assert job.error == "timeout"


def test_process_isolation_kills_the_handler_at_its_timeout(app):
    (job_id,) = enqueue(app, sleepy("p", 30, cooperative=False, timeout_seconds=1, max_retries=0))
    proc = start_worker(app, "--isolation", "process")
    wait_for(lambda: marked(app, "start-p-0"), proc=proc, app=app, what="child start")
    child_pid = int((app["marks"] / "start-p-0").read_text())
    assert child_pid != proc.pid
    wait_for(lambda: not _alive(child_pid), timeout=15, what="the child to be killed")
    assert stop(proc) == 0
    with look(app) as q:
        job = q.get(job_id)
        assert job.status == JobStatus.DEAD_LETTER
        assert job.error == "timeout"


def test_process_isolation_result_and_progress(app):
    (job_id,) = enqueue(app, Job("steps", {"n": 1}))
    proc = start_worker(app, "--isolation", "process")
    _wait_finished(app, proc, job_id)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:   # a zombie (not yet reaped by its parent) is dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def _wait_finished(app, proc, job_id):
    """The handler marks its end; a graceful stop then waits for the result to be stored."""
    wait_for(lambda: marked(app, f"done-steps-{job_id}"), proc=proc, app=app)
    assert stop(proc) == 0
    with look(app) as q:
        job = q.get(job_id)
        assert job.status == JobStatus.COMPLETED, job
        assert job.result == {"steps": 4, "echo": {"n": 1}}
        assert job.progress == 1.0
        assert job.progress_message == "step 4 of 4"


def test_cancel_of_a_running_job(app):
    target = sleepy("x", 30)
    (job_id, _) = enqueue(app, target, Job("canceller", {"target": target.id, "tag": "x"}))
    proc = start_worker(app)
    wait_for(lambda: marked(app, "cancel-sent-x"), proc=proc, app=app)
    t = time.monotonic()
    assert stop(proc) == 0      # graceful: waits for the job, which stops early when cancelled
    assert time.monotonic() - t < 20
    assert not marked(app, "done-x")
    with look(app) as q:
        job = q.get(job_id)
        assert job.status == JobStatus.CANCELLED


def test_heartbeats_keep_a_job_alive_for_three_leases(app):
    (job_id,) = enqueue(app, sleepy("hb", 2.2, lease_duration=0.6, max_retries=0))
    proc = start_worker(app)
    wait_for(lambda: marked(app, "done-hb"), proc=proc, app=app, timeout=20)
    assert stop(proc) == 0
    assert not marked(app, "start-hb-1")
    with look(app) as q:
        job = q.get(job_id)
        assert job.status == JobStatus.COMPLETED
        assert job.retry_count == 0


def test_async_handler_runs_on_the_workers_loop(app):
    (job_id,) = enqueue(app, Job("aio", {"x": 5}))
    proc = start_worker(app)
    wait_for(lambda: marked(app, "done-aio"), proc=proc, app=app)
    assert stop(proc) == 0
    with look(app) as q:
        job = q.get(job_id)
        assert job.status == JobStatus.COMPLETED
        assert job.result["async"] is True and job.result["x"] == 5
        assert job.progress == 0.5 and job.progress_message == "awaited"


def test_result_and_progress_round_trip(app):
    (job_id,) = enqueue(app, Job("steps", {"n": 1}))
    proc = start_worker(app)
    _wait_finished(app, proc, job_id)
    out = subprocess.run([sys.executable, "-m", "aurora_log", "dump", str(app["store"])],
                         env=app["env"], capture_output=True, text=True, check=True).stdout
    progress = [r for r in map(json.loads, out.splitlines())
                if r["type"] == "progress" and r["id"] == job_id]
    assert progress and progress[-1]["fraction"] == 1.0
    assert progress[-1]["message"] == "step 4 of 4"


def test_sigkill_of_a_process_isolated_worker_leaves_no_orphan_handler(app):
    enqueue(app, sleepy("o", 30, cooperative=False, max_retries=1))
    proc = start_worker(app, "--isolation", "process")
    wait_for(lambda: marked(app, "start-o-0"), proc=proc, app=app, what="child start")
    child_pid = int((app["marks"] / "start-o-0").read_text())
    proc.kill()
    proc.wait()
    wait_for(lambda: not _alive(child_pid), timeout=10, what="the orphan to die")


SCRIPT = textwrap.dedent('''
    import os, sys
    import aurora_log

    q = aurora_log.open(sys.argv[1] if __name__ == "__main__" else "unused")

    @q.task                              # default name: the same in the script's child
    def where(x):
        return {"pid": os.getpid(), "x": x}

    if __name__ == "__main__":
        w = aurora_log.Worker(q, concurrency=1, isolation="process", poll_interval=0.1).start()
        h = where.enqueue(41)
        r = h.result(timeout=30)
        print(r["pid"] != os.getpid(), r["x"])
        w.stop(timeout=5)
        q.close()
''')


def test_process_isolation_for_handlers_defined_in_a_script(tmp_path, store_dir):
    (tmp_path / "script.py").write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, str(tmp_path / "script.py"), str(store_dir)],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "41"]


def test_queues_flag_from_the_environment(app):
    a, b = enqueue(app, sleepy("qa", 0.01, queue="a"), sleepy("qb", 0.01, queue="b"))
    app["env"]["AURORA_LOG_QUEUES"] = "a,c"
    proc = start_worker(app)
    wait_for(lambda: marked(app, "done-qa"), proc=proc, app=app)
    time.sleep(0.5)
    assert stop(proc) == 0
    assert not marked(app, "start-qb-0")
    with look(app) as q:
        assert q.get(a).status is JobStatus.COMPLETED
        assert q.get(b).status is JobStatus.PENDING
