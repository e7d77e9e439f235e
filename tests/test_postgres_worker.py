"""The Worker on a PostgreSQL queue: thread, async and process handlers, and a cooperative
cancel that reaches a running handler through the heartbeat (as on a local store)."""

import sys
import textwrap
import time

import pytest

from aurora_log import JobStatus, Worker

APP = textwrap.dedent('''
    import asyncio, os
    import aurora_log
    from aurora_log.runtime.worker import current_context

    q = aurora_log.open(os.environ["PGW_DSN"], schema=os.environ["PGW_SCHEMA"])

    @q.task()
    def add(a, b):
        current_context().progress(0.5, "adding")
        return a + b

    @q.task()
    async def aadd(a, b):
        await asyncio.sleep(0.01)
        return a + b

    @q.task(lease=1)
    def wait_for_cancel():
        ctx = current_context()
        for _ in range(3000):
            ctx.check()                  # raises JobCancelled once the cancel arrived
            ctx.sleep(0.01)
        return "never cancelled"
''')


@pytest.fixture
def app(pg_server, pg_schema, tmp_path, monkeypatch):
    (tmp_path / "pgw_app.py").write_text(APP)
    monkeypatch.setenv("PGW_DSN", pg_server.dsn)
    monkeypatch.setenv("PGW_SCHEMA", pg_schema)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    sys.modules.pop("pgw_app", None)
    import pgw_app
    yield pgw_app
    pgw_app.q.close()
    sys.modules.pop("pgw_app", None)


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_worker_runs_thread_and_async_handlers(app, isolation):
    handles = [app.add.enqueue(i, 1) for i in range(4)] + [app.aadd.enqueue(i, 2)
                                                          for i in range(4)]
    worker = Worker(app.q, concurrency=2, poll_interval=0.2, isolation=isolation,
                    import_path="pgw_app").start()
    try:
        assert [h.result(timeout=60) for h in handles] == [1, 2, 3, 4, 2, 3, 4, 5]
    finally:
        assert worker.stop(timeout=30) == 0
    done = app.q.get(handles[0].id)
    assert done.status is JobStatus.COMPLETED and done.progress == 0.5
    assert [t.kind for t in app.q.history(done.id)] == ["enqueue", "claim", "progress",
                                                         "complete"]


def test_cancel_reaches_a_running_handler(app):
    h = app.wait_for_cancel.enqueue()
    worker = Worker(app.q, concurrency=1, poll_interval=0.2, cancel_poll=0.05).start()
    try:
        for _ in range(3000):                     # bounded wait until it runs
            if app.q.get(h.id).status is JobStatus.RUNNING:
                break
            time.sleep(0.01)
        assert app.q.cancel(h.id) is JobStatus.RUNNING
        for _ in range(3000):
            if app.q.get(h.id).status is JobStatus.CANCELLED:
                break
            time.sleep(0.01)
    finally:
        worker.stop(timeout=30)
    assert app.q.get(h.id).status is JobStatus.CANCELLED
    kinds = [t.kind for t in app.q.history(h.id)]
    assert kinds[:3] == ["enqueue", "claim", "cancel_request"] and kinds[-1] == "fail"
