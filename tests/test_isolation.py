"""Process isolation (runtime/isolation.py): the flag that aurora_log.open consults in a
handler child, and the child protocol run directly (the CLI-driven runs are in
test_worker_process.py)."""

import ast
import sys
import textwrap
from pathlib import Path

import pytest

import aurora_log
from aurora_log.job import Job
from aurora_log.runtime import isolation, tasks
from aurora_log.runtime.context import Context

PACKAGE = Path(aurora_log.__file__).parent


@pytest.fixture
def in_child(monkeypatch):
    monkeypatch.setattr(isolation, "_in_handler_child", True)


def test_open_outside_a_child_opens_the_store(store_dir):
    assert not isolation.in_handler_child()
    q = aurora_log.open(store_dir, segment_bytes=1 << 20)
    try:
        assert isinstance(q, aurora_log.Queue)
    finally:
        q.close()


def test_open_inside_a_child_only_registers_handlers(in_child, tmp_path):
    target = tmp_path / "store"
    q = aurora_log.open(target, segment_bytes=1 << 20)
    assert isinstance(q, isolation.HandlerOnlyQueue)
    assert not target.exists()                      # the store is the worker's: untouched

    @q.task
    def double(x):
        return 2 * x

    q.register_handler("seed", lambda job: job.payload)
    assert double(4) == 8
    assert tasks.find_handler("seed") is not None
    assert tasks.find_handler(double.job_type).fn is double.fn
    with q:                                          # `with aurora_log.open(...) as q:` too
        pass
    with pytest.raises(RuntimeError, match="not available in a handler child"):
        q.enqueue(Job("x"))


def test_nothing_in_the_package_assigns_to_an_open_function():
    """No monkeypatching: `aurora_log.open = ...` / `queue.open = ...` nowhere."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
            for t in targets:
                if isinstance(t, ast.Attribute) and t.attr == "open":
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "setattr" and \
                    len(node.args) > 1 and ast.unparse(node.args[1]) in ("'open'", '"open"'):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []


APP = textwrap.dedent('''
    import os
    import aurora_log

    # what a user's module does at import: open "its" queue and register on it
    q = aurora_log.open(os.environ.get("ISO_STORE", "unused"), segment_bytes=1 << 20)

    @q.task(context=True)
    def add(ctx, a, b):
        ctx.progress(1, 2, "half")
        print("to stderr, not the protocol")
        return {"sum": a + b, "attempt": ctx.attempt}

    @q.task
    def boom():
        raise ValueError("no good")
''')


@pytest.fixture
def app(tmp_path, monkeypatch, store_dir):
    (tmp_path / "isoapp.py").write_text(APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("ISO_STORE", str(store_dir))
    q = aurora_log.open(store_dir, segment_bytes=1 << 20)   # held (and locked) by "the worker"
    yield q
    q.close()
    sys.modules.pop("isoapp", None)


def _job(q, job_type, args):
    job = Job(job_type, {"args": args, "kwargs": {}})
    q.enqueue(job)
    return q.claim("w1")


def test_child_runs_the_handler_while_the_parent_holds_the_store(app):
    handler = tasks.Handler("isoapp.add", lambda: None, "args", True)
    job = _job(app, "isoapp.add", [2, 3])
    seen = []
    ctx = Context(job, sink=lambda f, m: seen.append((f, m)))
    outcome = isolation.run_in_child(ctx, handler, "isoapp")
    assert (outcome.kind, outcome.value) == ("complete", {"sum": 5, "attempt": 1})
    ctx._flush_progress()
    assert seen == [(0.5, "half")]
    assert ctx._child is not None and ctx._child.returncode == 0


def test_child_reports_the_handlers_error(app):
    handler = tasks.Handler("isoapp.boom", lambda: None, "args")
    outcome = isolation.run_in_child(Context(_job(app, "isoapp.boom", [])), handler, "isoapp")
    assert outcome.kind == "fail"
    assert outcome.value.startswith("ValueError: no good")
    assert "isoapp.py" in outcome.value and "isolation.py" not in outcome.value


def test_child_without_the_handler_says_so(app):
    handler = tasks.Handler("isoapp.nothing", lambda: None, "args")
    outcome = isolation.run_in_child(Context(_job(app, "isoapp.nothing", [])), handler, "isoapp")
    assert (outcome.kind, outcome.value) == ("fail", "no handler registered for 'isoapp.nothing'")
