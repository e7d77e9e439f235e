"""The exception tree lives in errors.py: every public exception class of the package is
defined there, derives from AuroraLogError, and stays importable from where users found it."""

import ast
import importlib
from pathlib import Path

import pytest

import aurora_log
from aurora_log import errors

PACKAGE = Path(aurora_log.__file__).parent

# Control flow inside the package, never raised to a user: allowed beside its one user.
INTERNAL = {
    # carries a handler's SystemExit/KeyboardInterrupt out of the worker's event loop
    ("runtime/event_loop.py", "HandlerExit"),
}


def _exception_classes_outside_errors() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "errors.py" and path.parent == PACKAGE:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
                continue
            if (str(path.relative_to(PACKAGE)), node.name) in INTERNAL:
                continue
            bases = [ast.unparse(b) for b in node.bases]
            if any(b.endswith(("Error", "Exception")) or b in ("JobCancelled",) for b in bases):
                found.append(f"{path.relative_to(PACKAGE)}: class {node.name}({', '.join(bases)})")
    return found


def test_no_public_exception_is_defined_outside_errors_py():
    assert _exception_classes_outside_errors() == []


def test_every_public_exception_derives_from_aurora_log_error():
    for name in dir(errors):
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, errors.AuroraLogError), name


@pytest.mark.parametrize("module, names", [
    ("aurora_log", ["JobCancelled", "JobTimeout", "TaskFailed", "TaskCancelled"]),
    ("aurora_log.runtime.worker", ["JobCancelled", "JobTimeout"]),
    ("aurora_log.runtime.tasks", ["TaskFailed", "TaskCancelled"]),
    ("aurora_log.tools.cli", ["CliError"]),
    ("aurora_log.local.records", ["RecordError"]),
])
def test_old_import_paths_name_the_same_classes(module, names):
    mod = importlib.import_module(module)
    for name in names:
        assert getattr(mod, name) is getattr(errors, name), f"{module}.{name}"


def test_the_runtime_and_tool_errors_keep_their_fields():
    assert errors.JobTimeout().reason == "timeout"
    assert issubclass(errors.JobTimeout, errors.JobCancelled)
    assert errors.TaskFailed("j1", "boom").error == "boom"
    assert errors.TaskCancelled("j1").job_id == "j1"
    assert errors.CliError("bad", 2).code == 2
    assert issubclass(errors.RecordError, errors.CorruptionError)
