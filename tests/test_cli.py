"""Every ``aurora-log`` command on a prepared store, with its error paths."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import aurora_log
from aurora_log.tools import cli
from aurora_log.job import Job, JobStatus

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(store_dir):
    """completed (with progress and result), dead_letter, pending (queue "reports"),
    failed-awaiting-retry, scheduled."""
    ids = {}
    with aurora_log.open(store_dir, segment_bytes=1 << 20) as q:   # small: fast opens
        ids["done"] = q.enqueue(Job("email", {"to": "a@b.c"}, priority="HIGH"))
        ids["dead"] = q.enqueue(Job("thumb", {"img": 1}, max_retries=0))
        ids["retry"] = q.enqueue(Job("flaky", {}, max_retries=2))
        ids["pending"] = q.enqueue(Job("report", {"month": 5}, queue="reports", priority="LOW"))
        j = q.claim("w1", job_types=["email"])
        q.progress(j.id, j.token, 0.5, "half way")
        q.complete(j.id, j.token, {"sent": True})
        j = q.claim("w1", job_types=["thumb"])
        q.fail(j.id, j.token, "ValueError: bad image")
        j = q.claim("w1", job_types=["flaky"])
        q.fail(j.id, j.token, "ConnectionError: 503")
    return store_dir, ids


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("aurora-log: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_stats_table_and_json(store, capsys):
    path, _ = store
    code, out, _ = run(capsys, "stats", path)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["QUEUE", "PENDING", "RUNNING"]
    assert any(line.startswith("reports") for line in lines)
    total_row = next(line for line in lines if line.startswith("(all)"))
    assert total_row.split()[-1] == "4"
    code, out, _ = run(capsys, "stats", path, "--json")
    stats = json.loads(out)
    assert stats["total"] == 4 and stats["completed"] == 1 and stats["dead_letter"] == 1


def test_jobs_lists_and_filters(store, capsys):
    path, ids = store
    code, out, _ = run(capsys, "jobs", path)
    assert code == 0
    assert all(i in out for i in ids.values())
    code, out, _ = run(capsys, "jobs", path, "--status", "dead_letter")
    assert ids["dead"] in out and ids["done"] not in out
    assert "ValueError: bad image" in out
    code, out, _ = run(capsys, "jobs", path, "--queue", "reports", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["id"] for r in rows] == [ids["pending"]]
    code, out, _ = run(capsys, "jobs", path, "--limit", "1", "--json")
    assert len(out.splitlines()) == 1
    code, out, _ = run(capsys, "jobs", path, "--job-type", "nothing")
    assert out.strip() == "no jobs"


def test_jobs_bad_status_is_one_line(store, capsys):
    code, _, err = run(capsys, "jobs", store[0], "--status", "bogus")
    assert code == 1
    assert "unknown status 'bogus'" in one_line_error(err)


def test_show(store, capsys):
    path, ids = store
    code, out, _ = run(capsys, "show", path, ids["done"])
    assert code == 0
    assert "status:" in out and "completed" in out
    assert '{"sent": true}' in out and "half way" in out
    code, out, _ = run(capsys, "show", path, ids["done"], "--json")
    data = json.loads(out)
    assert data["result"] == {"sent": True} and data["progress"] == 0.5


def test_history(store, capsys):
    path, ids = store
    code, out, _ = run(capsys, "history", path, ids["dead"])
    assert code == 0
    kinds = [line.split()[3] for line in out.splitlines()]
    assert kinds == ["enqueue", "claim", "fail"]
    assert "ValueError: bad image" in out
    code, out, _ = run(capsys, "history", path, ids["dead"], "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows[-1]["kind"] == "fail" and rows[-1]["status"] == "dead_letter"


@pytest.mark.parametrize("command", ["show", "history", "retry", "cancel"])
def test_unknown_job_id(store, capsys, command):
    code, _, err = run(capsys, command, store[0], "no-such-id")
    assert code == 1
    assert "no-such-id" in one_line_error(err)


def test_retry_dead_letter(store, capsys):
    path, ids = store
    code, out, _ = run(capsys, "retry", path, ids["dead"])
    assert code == 0 and "back to pending" in out
    with aurora_log.open(path) as q:
        job = q.get(ids["dead"])
        assert job.status is JobStatus.PENDING and job.retry_count == 0


def test_retry_of_a_job_that_is_not_dead_is_one_line(store, capsys):
    code, _, err = run(capsys, "retry", store[0], store[1]["pending"])
    assert code == 1
    assert "not dead_letter" in one_line_error(err)


def test_cancel(store, capsys):
    path, ids = store
    code, out, _ = run(capsys, "cancel", path, ids["pending"])
    assert code == 0 and "cancelled" in out
    code, _, err = run(capsys, "cancel", path, ids["done"])      # finished: cannot
    assert code == 1
    one_line_error(err)
    with aurora_log.open(path) as q:
        assert q.get(ids["pending"]).status is JobStatus.CANCELLED


def test_enqueue(store, capsys):
    path, _ = store
    code, out, _ = run(capsys, "enqueue", path, "send_email", "--payload", '{"to": "x@y.z"}',
                       "--priority", "critical", "--delay", "1h", "--max-retries", "5",
                       "--timeout", "30", "--queue", "mail", "--unique-key", "k")
    assert code == 0
    job_id = out.strip()
    with aurora_log.open(path) as q:
        job = q.get(job_id)
    assert job.payload == {"to": "x@y.z"} and job.priority.name == "CRITICAL"
    assert job.max_retries == 5 and job.timeout_seconds == 30 and job.queue == "mail"
    assert job.scheduled_at is not None and job.unique_key == "k"


def test_enqueue_creates_a_new_store(tmp_path, capsys):
    code, out, _ = run(capsys, "enqueue", tmp_path / "new", "hello")
    assert code == 0
    with aurora_log.open(tmp_path / "new") as q:
        assert q.get(out.strip()).job_type == "hello"


@pytest.mark.parametrize("argv, message", [
    (["--payload", "[1, 2]"], "must be a JSON object"),
    (["--priority", "urgent"], "unknown priority"),
    (["--max-retries", "-1"], "max_retries"),
])
def test_enqueue_bad_input_is_one_line(store, capsys, argv, message):
    code, _, err = run(capsys, "enqueue", store[0], "t", *argv)
    assert code == 1
    assert message in one_line_error(err)


def test_enqueue_hostile_job_type(store, capsys):
    code, _, err = run(capsys, "enqueue", store[0], "../../etc")
    assert code == 1
    assert "job_type" in one_line_error(err)


def test_usage_errors_exit_2(store, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["enqueue", str(store[0]), "t", "--payload", "{nope"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["jobs"])
    assert e.value.code == 2
    capsys.readouterr()


@pytest.mark.parametrize("command", ["stats", "jobs", "dump"])
def test_missing_or_foreign_directory(tmp_path, capsys, command):
    code, _, err = run(capsys, command, tmp_path / "nope")
    assert code == 1 and "no store at" in one_line_error(err)
    (tmp_path / "plain").mkdir()
    code, _, err = run(capsys, command, tmp_path / "plain")
    assert code == 1 and "not an aurora-log directory" in one_line_error(err)
    assert not (tmp_path / "nope").exists()          # reading never creates a store


def test_reading_and_writing_work_while_the_store_is_open(store, capsys):
    path, ids = store
    with aurora_log.open(path) as q:     # as a running worker (the default mode) would
        code, out, _ = run(capsys, "stats", path, "--json")
        assert code == 0 and json.loads(out)["total"] == 4
        code, _, err = run(capsys, "retry", path, ids["dead"])
        assert code == 0, err
        assert q.get(ids["dead"]).status.value == "pending"    # the worker sees it
        code, out, err = run(capsys, "enqueue", path, "t")
        assert code == 0, err
        assert q.get(out.strip()) is not None


def test_writing_says_in_use_beside_an_exclusive_process(store, capsys):
    path, ids = store
    with aurora_log.open(path, exclusive=True):       # it holds the store alone
        code, out, _ = run(capsys, "stats", path, "--json")
        assert code == 0 and json.loads(out)["total"] == 4
        code, _, err = run(capsys, "retry", path, ids["dead"])
        assert code == cli.EXIT_LOCKED
        line = one_line_error(err)
        assert "in use" in line and "opened it with exclusive=True" in line, line
        code, _, err = run(capsys, "enqueue", path, "t")
        assert code == cli.EXIT_LOCKED
        one_line_error(err)


def test_dump_is_json_lines_of_every_record(store, capsys):
    path, ids = store
    code, out, _ = run(capsys, "dump", path)
    assert code == 0
    recs = [json.loads(line) for line in out.splitlines()]
    assert [r["lsn"] for r in recs] == list(range(1, len(recs) + 1))
    types = [r["type"] for r in recs]
    assert types.count("enqueue") == 4 and "progress" in types and "complete" in types
    enq = next(r for r in recs if r["type"] == "enqueue" and r["id"] == ids["done"])
    assert enq["payload"] == {"to": "a@b.c"}
    done = next(r for r in recs if r["type"] == "complete")
    assert done["result"] == {"sent": True}
    code, out, _ = run(capsys, "dump", path, "--from-lsn", "5")
    assert json.loads(out.splitlines()[0])["lsn"] == 5


def test_env_defaults(store, capsys, monkeypatch):
    path, _ = store
    monkeypatch.setenv("AURORA_LOG_LIMIT", "2")
    monkeypatch.setenv("AURORA_LOG_JSON", "1")
    code, out, _ = run(capsys, "jobs", path)
    assert len(out.splitlines()) == 2 and json.loads(out.splitlines()[0])
    monkeypatch.setenv("AURORA_LOG_STATUS", "dead_letter")
    code, out, _ = run(capsys, "jobs", path)
    assert [json.loads(line)["status"] for line in out.splitlines()] == ["dead_letter"]
    monkeypatch.setenv("AURORA_LOG_LIMIT", "many")
    with pytest.raises(SystemExit) as e:
        cli.main(["jobs", str(path)])
    assert e.value.code == 2
    capsys.readouterr()


def test_every_flag_names_its_environment_variable(capsys):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, sp in sub.choices.items():
        for action in sp._actions:
            if action.option_strings and action.dest not in ("help",):
                env = f"AURORA_LOG_{action.dest.upper()}"
                assert env in (action.help or ""), (name, action.dest)


@pytest.mark.parametrize("target, message", [
    ("nomodule", "MODULE:QUEUE"),
    ("no_such_module_xyz:q", "cannot import no_such_module_xyz"),
    ("json:nothing", "has no attribute"),
    ("json:dumps", "is not a queue"),
])
def test_worker_target_errors(capsys, target, message):
    code, _, err = run(capsys, "worker", target)
    assert code != 0
    assert message in one_line_error(err)


def test_entry_points_as_subprocesses(store, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "aurora_log", "stats", str(store[0]), "--json"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and json.loads(out.stdout)["total"] == 4
    # a user module that raises on import: one line, no traceback
    (tmp_path / "broken_app.py").write_text("raise RuntimeError('config missing')\n")
    out = subprocess.run([sys.executable, "-m", "aurora_log", "worker", "broken_app:q"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "RuntimeError: config missing" in out.stderr and "Traceback" not in out.stderr


def test_worker_on_a_store_an_exclusive_process_holds(store, tmp_path):
    (tmp_path / "held_app.py").write_text(
        f"import aurora_log\nq = aurora_log.open({str(store[0])!r})\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with aurora_log.open(store[0], exclusive=True):
        out = subprocess.run([sys.executable, "-m", "aurora_log", "worker", "held_app:q"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == cli.EXIT_LOCKED
    assert "in use" in out.stderr and f"process {os.getpid()}" in out.stderr
    assert "Traceback" not in out.stderr


def test_purge(store, capsys):
    if cli._compaction_api("purge") is None:
        pytest.skip("Queue.purge not available")
    path, ids = store
    code, out, _ = run(capsys, "purge", path, "--status", "completed", "--older-than", "0")
    assert code == 0 and out.strip() == "purged 1 job(s)"
    with aurora_log.open(path, read_only=True) as q:
        assert q.get(ids["done"]) is None and q.get(ids["dead"]) is not None
    with pytest.raises(SystemExit):          # both flags are required
        cli.main(["purge", str(path), "--status", "completed"])
    capsys.readouterr()


def test_verify_ok_then_corrupt(store, capsys):
    if cli._compaction_api("verify") is None:
        pytest.skip("verify not available")
    path, _ = store
    code, out, _ = run(capsys, "verify", path)
    assert code == 0 and "OK" in out.splitlines()[0]
    code, out, _ = run(capsys, "verify", path, "--json")
    assert json.loads(out)["ok"] is True
    seg = sorted((path / "wal").glob("*.seg"))[0]
    data = bytearray(seg.read_bytes())
    data[data.index(b"a@b.c")] ^= 0x40        # inside an early record, valid ones follow
    seg.write_bytes(bytes(data))
    code, out, _ = run(capsys, "verify", path)
    assert code == 1 and "PROBLEMS" in out


def test_dump_progress_goes_to_stderr_not_into_the_data(tmp_path, capsys, monkeypatch):
    path = tmp_path / "big"
    with aurora_log.open(path, durability="os", segment_bytes=4 << 20) as q:
        for start in range(0, 12000, 2000):
            q.enqueue_many([Job("x", {"i": i}) for i in range(start, start + 2000)])
    code, out, err = run(capsys, "dump", path)          # not a terminal: plain lines
    # every record: the 12000 enqueues, and the store's ATTACH/DETACH of the default mode
    types = [json.loads(line)["type"] for line in out.splitlines()]
    assert code == 0 and types.count("enqueue") == 12000
    assert len(types) == json.loads(out.splitlines()[-1])["lsn"]
    assert "dump: " in err and "(100%)" in err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    code, out2, err = run(capsys, "dump", path)         # "terminal": a rich bar on stderr
    assert code == 0 and out2 == out
    assert all(line.startswith('{"lsn": ') for line in out.splitlines())


def test_compact(store, capsys):
    if cli._compaction_api("compact") is None:
        pytest.skip("Queue.compact not available")
    path, ids = store
    code, out, err = run(capsys, "compact", path)
    assert code == 0 and "lsn:" in out and "jobs:" in out
    assert list((path / "snap").glob("*.snap"))
    code, out, _ = run(capsys, "show", path, ids["done"], "--json")   # still readable
    assert json.loads(out)["result"] == {"sent": True}
    with aurora_log.open(path):
        code, _, err = run(capsys, "compact", path)      # beside a default-mode process: fine
        assert code == 0, err
    with aurora_log.open(path, exclusive=True):
        code, _, err = run(capsys, "compact", path)
    line = one_line_error(err)
    assert code == cli.EXIT_LOCKED and "in use" in line, line
    assert f"this process ({os.getpid()})" in line and "exclusive=True" in line


@pytest.mark.parametrize("command", ["dump", "verify", "compact"])
def test_file_commands_refuse_a_dsn_without_echoing_its_password(capsys, command):
    code, _, err = run(capsys, command, "postgresql://app:s3cret@db.example/app")
    line = one_line_error(err)
    assert code != 0 and "PostgreSQL DSN" in line and "s3cret" not in line
