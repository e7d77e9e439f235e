"""asyncio producers: q.enqueue_async / enqueue_many_async, task.enqueue_async, await handle.

The event loop must keep running while a commit's fdatasync is in flight: the tests hold
that fdatasync (fault hook) and watch a ticker task advance meanwhile. No timed asserts."""

import asyncio
import threading

import pytest

import aurora_log
from aurora_log.job import Job, JobStatus
from aurora_log.testing import faults


class HeldSync(faults.Hook):
    """Holds the first segment fdatasync after arm() until release() (or 20 s)."""

    def __init__(self):
        self.armed = False
        self.started = threading.Event()
        self._release = threading.Event()

    def arm(self):
        self.armed = True

    def release(self):
        self._release.set()

    def before(self, op):
        if op.name != "fdatasync" or ".seg" not in (op.path or ""):
            return None
        if not self.armed or self.started.is_set():
            return None
        self.started.set()
        self._release.wait(20)
        return None


async def _loop_runs_while_held(hook, start_producer):
    """Start the producer with the fdatasync held; returns (ticks seen while it was held,
    whether the producer was still waiting then, its result)."""
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    t = asyncio.create_task(ticker())
    hook.arm()
    producer = asyncio.create_task(start_producer())
    while not hook.started.is_set():
        await asyncio.sleep(0.001)
    before = ticks
    while ticks < before + 20:       # the loop keeps turning while the fdatasync is held
        await asyncio.sleep(0.001)
    waiting = not producer.done()
    hook.release()
    result = await producer
    t.cancel()
    return ticks - before, waiting, result


def test_enqueue_async_does_not_block_the_loop(store_dir):
    hook = HeldSync()
    with faults.installed(hook):
        q = aurora_log.open(store_dir, reaper_interval=None, durability="sync",
                            auto_compact=False)
        try:
            ticked, waiting, job_id = asyncio.run(_loop_runs_while_held(
                hook, lambda: q.enqueue_async(Job("email", {"to": "x"}))))
        finally:
            hook.release()
            q.close()
    assert ticked >= 20
    assert waiting, "enqueue_async returned before its record was durable"
    with aurora_log.open(store_dir, read_only=True) as q:
        assert q.get(job_id).status is JobStatus.PENDING


def test_enqueue_many_async_is_atomic_and_durable(store_dir):
    hook = HeldSync()
    with faults.installed(hook):
        q = aurora_log.open(store_dir, reaper_interval=None, durability="sync",
                            auto_compact=False)
        try:
            jobs = [Job("t", {"i": i}) for i in range(5)]
            ticked, waiting, ids = asyncio.run(_loop_runs_while_held(
                hook, lambda: q.enqueue_many_async(jobs)))
        finally:
            hook.release()
            q.close()
    assert waiting and ticked >= 20
    assert ids == [j.id for j in jobs]
    with aurora_log.open(store_dir, read_only=True) as q:
        assert [j.id for j in q.list()] == ids


def test_enqueue_async_refuses_bad_input_before_writing(store_dir):
    with aurora_log.open(store_dir, reaper_interval=None, auto_compact=False) as q:
        lsn = q.log.next_lsn        # after the default mode's ATTACH record
        with pytest.raises(TypeError):
            asyncio.run(q.enqueue_async("not a job"))
        with pytest.raises(TypeError):
            asyncio.run(q.enqueue_many_async(Job("t", {})))
        assert q.stats()["total"] == 0 and q.log.next_lsn == lsn     # nothing written


def test_unique_key_owner_is_returned(store_dir):
    with aurora_log.open(store_dir, reaper_interval=None, auto_compact=False) as q:
        first = asyncio.run(q.enqueue_async(Job("t", {}, unique_key="k")))
        again = asyncio.run(q.enqueue_async(Job("t", {}, unique_key="k")))
        assert first == again and q.stats()["total"] == 1


def test_task_enqueue_async_and_await_handle(store_dir):
    with aurora_log.open(store_dir, reaper_interval=None, auto_compact=False) as q:
        @q.task
        def add(a, b):
            return a + b

        def work():
            j = q.claim("w", wait=10)
            q.complete(j.id, j.token, add(*j.payload["args"]))

        async def main():
            handle = await add.enqueue_async(2, 3)
            assert q.get(handle.id).payload == {"args": [2, 3], "kwargs": {}}
            worker = threading.Thread(target=work)
            worker.start()
            value = await handle
            worker.join()
            second = await add.enqueue_async(1, 1)
            with pytest.raises(TimeoutError):
                await second.result_async(timeout=0.05)
            return value

        assert asyncio.run(main()) == 5
