"""The task API: @task / register_handler, enqueue options, handles and their results."""

import asyncio
import datetime as dt
import time

import pytest

import aurora_log
from aurora_log.runtime import tasks
from aurora_log.job import JobPriority, JobStatus
from aurora_log.runtime.worker import Worker


def _open(path):
    # small segments: opening a store reads its newest segment, 64 MiB by default
    return aurora_log.open(path, retry_base=0.05, segment_bytes=1 << 20)


@pytest.fixture
def q(store_dir):
    queue = _open(store_dir)
    yield queue
    queue.close()


@pytest.fixture
def worker(q):
    started = []

    def start(**kw):
        kw.setdefault("concurrency", 2)
        kw.setdefault("poll_interval", 0.1)
        w = Worker(q, **kw).start()
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop(timeout=2)


def test_decorated_function_stays_a_function(q):
    @tasks.task(q)
    def add(a, b=1):
        """Adds."""
        return a + b

    assert add(2, b=3) == 5
    assert add.__doc__ == "Adds."
    assert add.job_type.endswith("add")
    assert tasks.registry(q).get(add.job_type).fn is add.fn


def test_enqueue_stores_args_kwargs_and_options(q):
    @tasks.task(q, "resize", priority=JobPriority.HIGH, max_retries=7, timeout=12, queue="media",
                lease=4)
    def resize(path, width=800):
        return path

    h = resize.enqueue("a.png", width=640)
    job = q.get(h.id)
    assert job.job_type == "resize"
    assert job.payload == {"args": ["a.png"], "kwargs": {"width": 640}}
    assert job.priority == JobPriority.HIGH
    assert job.max_retries == 7
    assert job.timeout_seconds == 12
    assert job.queue == "media"
    assert job.lease_duration == 4
    assert h.status() == JobStatus.PENDING


def test_enqueue_with_overrides_and_schedules(q):
    @tasks.task(q, "later")
    def later():
        pass

    before = dt.datetime.now(dt.UTC)
    h = later.enqueue_with(priority="critical", delay=60)()
    job = q.get(h.id)
    assert job.priority == JobPriority.CRITICAL
    assert job.scheduled_at >= before + dt.timedelta(seconds=59)

    at = dt.datetime(2031, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert q.get(later.enqueue_with(at=at)().id).scheduled_at == at


def test_unique_key_reaches_the_job(q):
    @tasks.task(q, "once")
    def once(x):
        pass

    h1 = once.enqueue_with(unique_key="k1")(1)
    assert q.get(h1.id).unique_key == "k1"


@pytest.mark.parametrize("bad", [object(), {1, 2}, b"bytes", float("nan")])
def test_non_json_arguments_are_a_type_error_before_anything_is_written(q, bad):
    @tasks.task(q, "t")
    def t(x):
        pass

    with pytest.raises(TypeError, match="JSON"):
        t.enqueue(bad)
    with pytest.raises(TypeError, match="JSON"):
        t.enqueue(x=bad)
    assert q.list() == []


def test_unknown_option_is_a_type_error(q):
    with pytest.raises(TypeError, match="unknown task option"):
        tasks.task(q, "x", retries=3)


def test_register_handler_seed_style(q, worker):
    seen = []

    def handler(job):
        seen.append(job.payload)
        return {"to": job.payload["to"]}

    tasks.register_handler(q, "send_email", handler)
    from aurora_log.job import Job
    job_id = q.enqueue(Job.new("send_email").add_field("to", "a@b.c"))
    worker()
    assert tasks.TaskHandle(q, job_id).result(timeout=10) == {"to": "a@b.c"}
    assert seen == [{"to": "a@b.c"}]


def test_result_round_trip_and_context_argument(q, worker):
    @tasks.task(q, "mul", context=True)
    def mul(ctx, a, b):
        assert ctx.job.job_type == "mul"
        ctx.progress(1, 2, "half")
        return {"product": a * b, "attempt": ctx.attempt}

    worker()
    h = mul.enqueue(6, 7)
    assert h.result(timeout=10) == {"product": 42, "attempt": 1}
    job = q.get(h.id)
    assert job.status == JobStatus.COMPLETED
    assert job.result == {"product": 42, "attempt": 1}


def test_result_of_a_dead_letter_raises_task_failed(q, worker):
    @tasks.task(q, "boom", max_retries=1)
    def boom():
        raise ValueError("kaput")

    worker()
    h = boom.enqueue()
    with pytest.raises(tasks.TaskFailed, match="ValueError: kaput") as info:
        h.result(timeout=20)
    assert info.value.job_id == h.id
    job = q.get(h.id)
    assert job.status == JobStatus.DEAD_LETTER
    assert job.retry_count == 1


def test_result_times_out_while_not_finished(q):
    @tasks.task(q, "never")
    def never():
        pass

    h = never.enqueue()
    t = time.monotonic()
    with pytest.raises(TimeoutError):
        h.result(timeout=0.2)
    assert time.monotonic() - t < 5


def test_result_async(q, worker):
    @tasks.task(q, "aadd")
    async def aadd(a, b):
        await asyncio.sleep(0.01)
        return a + b

    worker()
    h = aadd.enqueue(1, 2)
    assert asyncio.run(h.result_async(timeout=10)) == 3


def test_cancelled_pending_job_result_raises(q):
    @tasks.task(q, "c")
    def c():
        pass

    h = c.enqueue()
    q.cancel(h.id)
    with pytest.raises(tasks.TaskCancelled):
        h.result(timeout=1)


def test_job_without_handler_fails_with_a_clear_error_and_follows_retries(q, worker):
    from aurora_log.job import Job
    job_id = q.enqueue(Job("nobody_home", max_retries=1))
    worker()
    with pytest.raises(tasks.TaskFailed, match="no handler registered for 'nobody_home'"):
        tasks.TaskHandle(q, job_id).result(timeout=20)
    assert q.get(job_id).retry_count == 1


def test_queue_methods_spelling(q, worker):
    @q.task(priority="high")
    def double(x):
        return 2 * x

    q.register_handler("seed", lambda job: job.payload["v"])
    from aurora_log.job import Job
    worker()
    assert double.enqueue(21).result(timeout=10) == 42
    assert tasks.TaskHandle(q, q.enqueue(Job("seed", {"v": "ok"}))).result(timeout=10) == "ok"
