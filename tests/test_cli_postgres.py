"""The CLI on PostgreSQL: migrate, every DIR command with a DSN, and `copy` between a local
store and PostgreSQL (and back) with the jobs' history."""

import json
import os
import subprocess
import sys
from pathlib import Path

import aurora_log
from aurora_log.tools import cli
from aurora_log.job import Job, JobStatus

ROOT = Path(__file__).resolve().parent.parent


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _fill(q):
    """One job in each interesting state; returns their ids by name."""
    ids = {"done": q.enqueue(Job("email", {"to": "a@b.c"}, priority="HIGH")),
           "dead": q.enqueue(Job("thumb", {"img": 1}, max_retries=0)),
           "retry": q.enqueue(Job("flaky", {}, max_retries=2, unique_key="flaky-1")),
           "pending": q.enqueue(Job("report", {"month": 5}, queue="reports", priority="LOW")),
           "running": q.enqueue(Job("long", {"n": 1}, lease_duration=60))}
    j = q.claim("w1", job_types=["email"])
    q.progress(j.id, j.token, 0.5, "half way")
    q.complete(j.id, j.token, {"sent": True})
    j = q.claim("w1", job_types=["thumb"])
    q.fail(j.id, j.token, "ValueError: bad image")
    j = q.claim("w1", job_types=["flaky"])
    q.fail(j.id, j.token, "ConnectionError: 503")
    j = q.claim("w2", job_types=["long"])
    q.progress(j.id, j.token, 0.25, "a quarter")
    q.cancel(j.id)                                     # a cancel requested while running
    return ids


def test_migrate_creates_then_reports_current(pg_server, pg_schema, capsys):
    from aurora_log.postgres import LATEST_VERSION
    every = ", ".join(str(v) for v in range(1, LATEST_VERSION + 1))
    code, out, _ = run(capsys, "migrate", pg_server.dsn, "--schema", pg_schema)
    assert code == 0 and f"applied migration(s) {every}; now at version {LATEST_VERSION}" in out
    code, out, _ = run(capsys, "migrate", pg_server.dsn, "--schema", pg_schema)
    assert code == 0 and f"already at version {LATEST_VERSION}" in out
    code, _, err = run(capsys, "migrate", pg_server.dsn, "--schema", "Bad-Name")
    assert code != 0 and "lower-case SQL identifier" in err


def test_commands_take_a_dsn(pg_server, pg_schema, capsys):
    dsn = pg_server.dsn
    code, _, err = run(capsys, "stats", dsn, "--schema", pg_schema)
    assert code == 1 and "aurora-log migrate" in err          # not created by a reader
    with aurora_log.open(dsn, schema=pg_schema, reaper_interval=None) as q:
        ids = _fill(q)
    code, out, _ = run(capsys, "stats", dsn, "--schema", pg_schema, "--json")
    stats = json.loads(out)
    assert code == 0 and (stats["total"], stats["completed"], stats["running"]) == (5, 1, 1)
    code, out, _ = run(capsys, "enqueue", dsn, "--schema", pg_schema, "email",
                       "--payload", '{"to": "x@y.z"}')
    new_id = out.strip()
    assert code == 0
    code, out, _ = run(capsys, "jobs", dsn, "--schema", pg_schema, "--status", "pending",
                       "--json")
    assert code == 0 and {json.loads(line)["id"] for line in out.splitlines()} == \
        {ids["pending"], new_id}
    code, out, _ = run(capsys, "show", dsn, "--schema", pg_schema, ids["done"], "--json")
    assert code == 0 and json.loads(out)["result"] == {"sent": True}
    code, out, _ = run(capsys, "history", dsn, "--schema", pg_schema, ids["done"], "--json")
    assert code == 0 and [json.loads(line)["kind"] for line in out.splitlines()] == \
        ["enqueue", "claim", "progress", "complete"]
    code, out, _ = run(capsys, "retry", dsn, "--schema", pg_schema, ids["dead"])
    assert code == 0 and "back to pending" in out
    code, out, _ = run(capsys, "cancel", dsn, "--schema", pg_schema, ids["pending"])
    assert code == 0 and "cancelled" in out
    code, out, _ = run(capsys, "purge", dsn, "--schema", pg_schema, "--status", "completed",
                       "--older-than", "0")
    assert code == 0 and out.strip() == "purged 1 job(s)"
    for command in ("dump", "verify", "compact"):
        code, _, err = run(capsys, command, dsn, "--schema", pg_schema)
        assert code == 1 and "PostgreSQL DSN" in err and "Traceback" not in err


def _observable(q, job_id):
    j = q.get(job_id)
    hist = [(t.kind, t.at, t.status, t.worker, t.attempt, t.error) for t in q.history(job_id)]
    return (j.status, j.retry_count, j.error, j.scheduled_at, j.payload, j.priority, j.queue,
            j.unique_key, j.token, j.lease_deadline, j.worker_id, j.progress,
            j.progress_message, j.cancel_requested, j.result, j.created_at, hist)


def test_copy_local_to_postgres_and_back(pg_server, pg_schema, tmp_path, capsys):
    src = tmp_path / "src"
    # exclusive=True: its close leaves the running job RUNNING, as a worker that died
    # would (a default-mode close hands its RUNNING jobs back)
    with aurora_log.open(src, reaper_interval=None, exclusive=True) as q:
        ids = _fill(q)
        want = {name: _observable(q, i) for name, i in ids.items()}
    code, out, _ = run(capsys, "copy", src, pg_server.dsn, "--dst-schema", pg_schema)
    assert code == 0 and out.strip().startswith("copied 3 job(s)")   # live: retry, pending, running
    with aurora_log.open(pg_server.dsn, schema=pg_schema, reaper_interval=None) as pg:
        for name in ("retry", "pending", "running"):
            assert _observable(pg, ids[name]) == want[name], name
        assert pg.get(ids["done"]) is None
        assert pg.enqueue(Job("flaky", unique_key="flaky-1")) == ids["retry"]   # key held
    code, out, _ = run(capsys, "copy", src, pg_server.dsn, "--dst-schema", pg_schema,
                       "--include-finished")
    assert code == 0 and "copied 2 job(s); skipped 3 already in the destination" in out
    back = tmp_path / "back"
    code, out, _ = run(capsys, "copy", pg_server.dsn, back, "--src-schema", pg_schema,
                       "--include-finished")
    assert code == 0 and out.strip().startswith("copied 5 job(s)")
    with aurora_log.open(back, reaper_interval=None) as q:
        for name, job_id in ids.items():
            if name != "running":
                assert _observable(q, job_id) == want[name], name
        # a local store ends an attempt no process holds when it opens ("process died");
        # this one had a cancel requested, so it ends cancelled, its history copied before
        assert q.recovered == 1
        running = q.history(ids["running"])
        assert [(t.kind, t.at, t.status, t.worker, t.attempt, t.error)
                for t in running[:-1]] == want["running"][-1]
        assert (running[-1].kind, running[-1].error, running[-1].status) == \
            ("reap", "process died", JobStatus.CANCELLED)
    with aurora_log.open(pg_server.dsn, schema=pg_schema, reaper_interval=None) as pg:
        # on PostgreSQL the copied attempt goes on: its token still holds the lease
        j = pg.get(ids["running"])
        assert pg.heartbeat(j.id, j.token) is True               # the cancel request came too
        assert pg.fail(j.id, j.token, "stopped") is JobStatus.CANCELLED


def test_worker_runs_a_queue_opened_on_a_dsn(pg_server, pg_schema, tmp_path):
    app = tmp_path / "pg_app.py"
    app.write_text(
        "import aurora_log\n"
        f"q = aurora_log.open({pg_server.dsn!r}, schema={pg_schema!r})\n"
        "@q.task()\n"
        "def double(x):\n"
        "    return 2 * x\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import pg_app
        handles = [pg_app.double.enqueue(i) for i in range(5)]
    finally:
        sys.path.remove(str(tmp_path))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "aurora_log", "worker", "pg_app:q", "-w", "2"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert [h.result(timeout=60) for h in handles] == [0, 2, 4, 6, 8]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
        pg_app.q.close()
    assert proc.returncode == 0, err
