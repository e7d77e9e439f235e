"""The Worker in-process: outcomes, limits, filters, capacity, hooks, the Context API.
(Signals, crashes and the CLI are in test_worker_process.py.)"""

import threading
import time

import pytest

import aurora_log
from aurora_log.runtime import tasks
from aurora_log.job import Job, JobStatus
from aurora_log.testing import drain
from aurora_log.runtime.worker import Context, JobCancelled, JobTimeout, Worker, current_context


@pytest.fixture
def q(store_dir):
    # small segments: opening a store reads its newest segment, 64 MiB by default
    queue = aurora_log.open(store_dir, retry_base=0.05, segment_bytes=1 << 20)
    yield queue
    queue.close()


@pytest.fixture
def start(q):
    workers = []

    def start(**kw):
        kw.setdefault("concurrency", 2)
        kw.setdefault("poll_interval", 0.1)
        w = Worker(q, **kw).start()
        workers.append(w)
        return w

    yield start
    for w in workers:
        w.stop(timeout=3)


def wait_status(q, job_id, statuses, timeout=15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = q.get(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} is {q.get(job_id).status}, wanted {statuses}")


FINISHED = (JobStatus.COMPLETED, JobStatus.DEAD_LETTER, JobStatus.CANCELLED)


# Outcome rules do not need threads: drain (the testing kit) runs the worker's own dispatch
# and outcome code in the test's thread, on a fake clock.

def test_non_json_result_fails_the_job(aurora_queue):
    tasks.register_handler(aurora_queue, "bad_result", lambda job: {1, 2})
    job_id = aurora_queue.enqueue(Job("bad_result", max_retries=0))
    (run,) = drain(aurora_queue)
    assert run.outcome == "dead_letter"
    job = aurora_queue.get(job_id)
    assert job.status is JobStatus.DEAD_LETTER
    assert job.error.startswith("result is not JSON-encodable")


def test_oversized_result_fails_the_job(q, start):
    tasks.register_handler(q, "big", lambda job: "x" * 5000)
    job_id = q.enqueue(Job("big", max_retries=0))
    start(max_result_bytes=1000)
    job = wait_status(q, job_id, FINISHED)
    assert job.status is JobStatus.DEAD_LETTER
    assert "result too large" in job.error


def test_exception_text_names_type_message_and_place(aurora_queue):
    def handler(job):
        raise KeyError("missing")

    tasks.register_handler(aurora_queue, "raises", handler)
    job_id = aurora_queue.enqueue(Job("raises", max_retries=0))
    drain(aurora_queue)
    job = aurora_queue.get(job_id)
    assert job.error.startswith("KeyError: 'missing'")
    assert "in handler" in job.error


def test_failures_follow_the_retry_rules(aurora_queue, aurora_clock):
    attempts = []

    def handler(job):
        attempts.append((job.retry_count, aurora_clock()))
        if job.retry_count < 2:
            raise RuntimeError("not yet")
        return "ok"

    tasks.register_handler(aurora_queue, "third_time", handler)
    job_id = aurora_queue.enqueue(Job("third_time", max_retries=3))
    t0 = aurora_clock()
    runs = drain(aurora_queue)
    assert [r.outcome for r in runs] == ["failed", "failed", "completed"]
    job = aurora_queue.get(job_id)
    assert job.status is JobStatus.COMPLETED and job.result == "ok"
    # each retry waited out its backoff (5 s, then 10 s) and not a millisecond less
    assert attempts == [(0, t0), (1, t0 + 5), (2, t0 + 15)]


def test_job_types_and_queues_filters(q, start):
    ran = []
    for name in ("a", "b"):
        tasks.register_handler(q, name, lambda job: ran.append((job.job_type, job.queue)))
    ids = [q.enqueue(Job("a")), q.enqueue(Job("b")), q.enqueue(Job("a", queue="other"))]
    w = start(job_types=["a"], queues="default")
    wait_status(q, ids[0], FINISHED)
    time.sleep(0.3)
    assert ran == [("a", "default")]
    assert q.get(ids[1]).status is JobStatus.PENDING
    assert q.get(ids[2]).status is JobStatus.PENDING
    assert w.counts["completed"] == 1


def test_threads_run_in_parallel(q, start):
    gate = threading.Barrier(3, timeout=10)
    tasks.register_handler(q, "meet", lambda job: gate.wait() is not None)
    ids = [q.enqueue(Job("meet")) for _ in range(3)]
    start(concurrency=3)
    for i in ids:                   # all three must be inside the handler at once
        assert wait_status(q, i, FINISHED).status is JobStatus.COMPLETED


def test_a_timed_out_thread_is_replaced_so_capacity_stays(q, start):
    release = threading.Event()

    def stuck(job):
        release.wait(20)            # ignores ctx.cancelled on purpose

    tasks.register_handler(q, "stuck", stuck)
    tasks.register_handler(q, "quick", lambda job: "quick")
    stuck_id = q.enqueue(Job("stuck", timeout_seconds=0.3, max_retries=0, priority="HIGH"))
    w = start(concurrency=1)
    job = wait_status(q, stuck_id, FINISHED)
    assert job.status is JobStatus.DEAD_LETTER and job.error == "timeout"
    quick_id = q.enqueue(Job("quick"))
    assert wait_status(q, quick_id, FINISHED, timeout=10).result == "quick"
    assert w.counts["timeout"] == 1
    release.set()


def test_on_done_is_called_after_the_queue_acknowledged(q, start):
    seen = []

    def on_done(job, status, detail):
        seen.append((job.id, status, q.get(job.id).status))

    tasks.register_handler(q, "fine", lambda job: 1)
    tasks.register_handler(q, "broken", lambda job: 1 / 0)
    a = q.enqueue(Job("fine"))
    b = q.enqueue(Job("broken", max_retries=0))
    start(on_done=on_done)
    wait_status(q, a, FINISHED)
    wait_status(q, b, FINISHED)
    time.sleep(0.1)
    assert sorted(seen) == sorted([(a, "completed", JobStatus.COMPLETED),
                                   (b, "dead_letter", JobStatus.DEAD_LETTER)])


def test_cancel_reaches_a_running_handler_quickly(q, start):
    started = threading.Event()

    def patient(job):
        started.set()
        ctx = current_context()
        for _ in range(1000):
            ctx.sleep(0.05)          # raises JobCancelled once cancelled

    tasks.register_handler(q, "patient", patient)
    job_id = q.enqueue(Job("patient"))
    start(cancel_poll=0.1)
    assert started.wait(10)
    t = time.monotonic()
    assert q.cancel(job_id) is JobStatus.RUNNING
    job = wait_status(q, job_id, FINISHED)
    assert job.status is JobStatus.CANCELLED
    assert time.monotonic() - t < 5


def test_run_returns_0_after_request_stop(q):
    w = Worker(q, concurrency=1, poll_interval=0.1)
    result = []
    t = threading.Thread(target=lambda: result.append(w.run(install_signals=False)))
    t.start()
    time.sleep(0.3)
    w.request_stop()
    t.join(10)
    assert result == [0]


def test_invalid_options():
    with pytest.raises(ValueError, match="isolation"):
        Worker(object(), isolation="fork")
    with pytest.raises(ValueError, match="concurrency"):
        Worker(object(), concurrency=-1)
    with pytest.raises(ValueError, match="concurrency"):
        Worker(object(), concurrency=0)          # not "the default": 0 threads is a mistake


# ------------------------------------------------------------------ Context

def _ctx(sink=None):
    return Context(Job("x"), sink=sink)


def test_context_progress_forms_and_coalescing():
    sent = []
    ctx = _ctx(lambda f, m: sent.append((f, m)))
    ctx.progress(0.25)
    ctx.progress(3, 4, "three of four")       # within 0.1 s: kept, not sent
    assert sent == [(0.25, None)]
    ctx._flush_progress()
    assert sent[-1] == (0.75, "three of four")
    ctx.progress(0.5, "half")
    ctx._flush_progress()
    assert sent[-1] == (0.5, "half")
    with pytest.raises(ValueError):
        ctx.progress(5, 4)
    with pytest.raises(ValueError):
        ctx.progress(-0.1)
    with pytest.raises(ValueError):
        ctx.progress(1, 0)


def test_context_check_and_sleep():
    ctx = _ctx()
    ctx.check()
    assert not ctx.cancelled
    ctx._request_stop("timeout")
    assert ctx.cancelled and ctx.reason == "timeout"
    with pytest.raises(JobTimeout):
        ctx.check()
    with pytest.raises(JobCancelled):
        ctx.sleep(5)
    assert current_context() is None


def test_worker_stops_when_the_store_fails(store_dir):
    import errno
    from aurora_log.testing import faults
    class FsyncFails(faults.Hook):
        armed = False

        def before(self, op):
            return errno.EIO if self.armed and op.name == "fdatasync" else None

    hook = FsyncFails()
    with faults.installed(hook):
        q = aurora_log.open(store_dir, segment_bytes=1 << 20)
        try:
            ran = []
            tasks.register_handler(q, "t", lambda job: ran.append(job.id))
            q.enqueue(Job("t"))
            hook.armed = True
            w = Worker(q, concurrency=1, poll_interval=0.1)
            assert w.run(install_signals=False) == 1       # stopped by itself, not cleanly
            assert isinstance(w.failed, aurora_log.DurabilityError)
            # The claim is written (not fdatasynced), so the handler ran once; its completion
            # could not be made durable, so the worker stopped instead of going on.
            assert len(ran) == 1
            assert q.log.failed
        finally:
            try:
                q.close()
            except aurora_log.AuroraLogError:
                pass


def test_cancel_stops_an_async_handler_at_its_next_await(q, start):
    import asyncio
    started = threading.Event()

    async def waits(job):
        started.set()
        await asyncio.sleep(60)

    tasks.register_handler(q, "waits", waits)
    job_id = q.enqueue(Job("waits"))
    start(cancel_poll=0.1)
    assert started.wait(10)
    q.cancel(job_id)
    assert wait_status(q, job_id, FINISHED, timeout=10).status is JobStatus.CANCELLED


def test_async_handler_timeout(q, start):
    import asyncio

    async def slow(job):
        await asyncio.sleep(60)

    tasks.register_handler(q, "aslow", slow)
    job_id = q.enqueue(Job("aslow", timeout_seconds=0.3, max_retries=0))
    start()
    job = wait_status(q, job_id, FINISHED, timeout=10)
    assert job.status is JobStatus.DEAD_LETTER and "timeout" in job.error


def test_sys_exit_in_a_handler_fails_the_job_not_the_worker(q, start):
    import sys

    async def aexit(job):
        sys.exit(3)

    tasks.register_handler(q, "exit", lambda job: sys.exit(2))
    tasks.register_handler(q, "aexit", aexit)
    tasks.register_handler(q, "after", lambda job: "still here")
    a = q.enqueue(Job("exit", max_retries=0, priority="HIGH"))
    b = q.enqueue(Job("aexit", max_retries=0, priority="HIGH"))
    w = start(concurrency=1)
    assert wait_status(q, a, FINISHED).error.startswith("SystemExit: 2")
    assert wait_status(q, b, FINISHED).error.startswith("SystemExit: 3")
    c = q.enqueue(Job("after"))
    assert wait_status(q, c, FINISHED).result == "still here"
    assert w.counts["dead_letter"] == 2


def test_closing_the_queue_under_a_worker_stops_it(store_dir):
    q = aurora_log.open(store_dir, segment_bytes=1 << 20)
    w = Worker(q, concurrency=2, poll_interval=0.1)
    result = []
    t = threading.Thread(target=lambda: result.append(w.run(install_signals=False)))
    t.start()
    time.sleep(0.3)
    q.close()
    t.join(10)
    assert not t.is_alive() and result == [0]


PMOD = '''
import os
import aurora_log
from aurora_log.runtime.worker import current_context

q = aurora_log.open(os.environ["PMOD_STORE"], segment_bytes=1 << 20)

def coop(job):
    open(os.environ["PMOD_MARK"], "w").close()
    ctx = current_context()
    while True:
        ctx.sleep(0.05)

q.register_handler("coop", coop)
'''


def test_process_handler_sees_the_cancel_and_stops_cooperatively(tmp_path, monkeypatch):
    import importlib
    import sys
    (tmp_path / "pmod_cancel.py").write_text(PMOD)
    mark = tmp_path / "started"
    monkeypatch.setenv("PMOD_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("PMOD_MARK", str(mark))
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("pmod_cancel")
    q = mod.q
    try:
        job_id = q.enqueue(Job("coop"))
        w = Worker(q, concurrency=1, poll_interval=0.1, isolation="process",
                   import_path="pmod_cancel", cancel_poll=0.1, cancel_grace=60).start()
        end = time.monotonic() + 20
        while not mark.exists() and time.monotonic() < end:
            time.sleep(0.02)
        assert mark.exists()
        q.cancel(job_id)
        job = wait_status(q, job_id, FINISHED, timeout=10)    # well before the 60 s grace
        assert job.status is JobStatus.CANCELLED
        assert w.stop(timeout=5) == 0
    finally:
        q.close()
        sys.modules.pop("pmod_cancel", None)


def test_checkpoint_is_a_no_op_in_a_worker(q, start):
    def handler(ctx, job):
        ctx.checkpoint("charged")
        return "ok"

    tasks.register_handler(q, "marks", handler, context=True)
    job_id = q.enqueue(Job("marks", max_retries=0))
    start()
    job = wait_status(q, job_id, FINISHED)
    assert job.status is JobStatus.COMPLETED and job.result == "ok"
    assert Context(job).checkpoint("outside a worker") is None
