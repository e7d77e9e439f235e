"""Imports point down the layers, never up.

Layers, bottom to top (a module may import its own layer and the ones below):

  face-core  aurora_log.errors, aurora_log.job, aurora_log.interface, aurora_log.workflows,
             aurora_log.bulk (the bulk enqueue's checks, shared by both backends)
  backends   aurora_log.local.*, aurora_log.postgres.*
  runtime    aurora_log.runtime.*
  tools      aurora_log.tools.*, aurora_log.testing.*, aurora_log.dashboard, aurora_log.__main__

``aurora_log/__init__.py`` is the composition root: it may import anything, and only the top
layer may import it (below, ``import aurora_log`` would be an import of everything above).
Inside the engine, the C core has one door: only local/_binding.py imports ``_native``, and
only local/log.py, local/sharedlog.py (its shared mode), local/segscan.py (log.py's reads
of a segment by windows) and testing/faults.py import ``_binding`` -- they are the I/O side,
every syscall through the table faults.py replaces --
plus local/kernels.py, the pure-compute helpers (no syscall, no file: the snapshot's id
index, replay's bulk ENQUEUE fold, prefix sums), which the rest of the engine calls.

Every import is checked, at module level and inside functions (``if TYPE_CHECKING`` too), with
relative imports resolved. A new module that fits no layer fails the test until it is given one.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import NamedTuple

import aurora_log

PACKAGE_DIR = Path(aurora_log.__file__).parent
ROOT = "aurora_log"

LAYERS: list[tuple[str, tuple[str, ...]]] = [            # bottom to top
    ("face-core", ("aurora_log.errors", "aurora_log.job", "aurora_log.interface",
                   "aurora_log.workflows", "aurora_log.bulk")),
    ("backends", ("aurora_log.local", "aurora_log.postgres")),
    ("runtime", ("aurora_log.runtime",)),
    ("tools", ("aurora_log.tools", "aurora_log.testing", "aurora_log.dashboard",
               "aurora_log.__main__")),
]
TOP = len(LAYERS) - 1

# module -> the only modules allowed to import it
ONLY_IMPORTED_BY = {
    "aurora_log.local._native": {"aurora_log.local._binding"},
    "aurora_log.local._binding": {"aurora_log.local.log", "aurora_log.local.sharedlog",
                                  "aurora_log.local.segscan", "aurora_log.testing.faults",
                                  "aurora_log.local.kernels"},
}


class Edge(NamedTuple):
    path: str
    line: int
    importer: str
    imported: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} imports {self.imported}"


def module_name(path: Path, package_dir: Path, package: str) -> str:
    parts = list(path.relative_to(package_dir).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def imports_of(path: Path, package_dir: Path, package: str) -> list[Edge]:
    """Every import of a module of ``package`` made anywhere in the file at ``path``."""
    name = module_name(path, package_dir, package)
    is_package = path.name == "__init__.py"
    modules = {module_name(p, package_dir, package) for p in package_dir.rglob("*.py")}
    rel = str(path.relative_to(package_dir.parent))
    edges = []
    for node in ast.walk(ast.parse(path.read_text(), rel)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from pkg import mod` imports the submodule pkg.mod; `from mod import x`, mod
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules
                       or f"{source}.{a.name}" in ONLY_IMPORTED_BY else source
                       for a in node.names]
        else:
            continue
        for target in targets:
            if target == package or target.startswith(package + "."):
                edges.append(Edge(rel, node.lineno, name, target))
    return edges


def layer_of(module: str) -> int | None:
    if module == ROOT:
        return TOP
    for rank, (_name, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def violations(package_dir: Path = PACKAGE_DIR, package: str = ROOT) -> list[str]:
    """One line per import that points up a layer or through a closed door, and per
    module that fits no layer."""
    out = []
    for path in sorted(package_dir.rglob("*.py")):
        importer = module_name(path, package_dir, package)
        if layer_of(importer) is None and importer != package:
            out.append(f"{path.relative_to(package_dir.parent)}: {importer} is in no layer "
                       "(add it to LAYERS in tests/test_layers.py)")
        for edge in imports_of(path, package_dir, package):
            allowed = ONLY_IMPORTED_BY.get(edge.imported)
            if allowed is not None and edge.importer not in allowed:
                out.append(f"{edge}: only {', '.join(sorted(allowed))} may")
            if edge.importer == package:            # the composition root
                continue
            low, high = layer_of(edge.importer), layer_of(edge.imported)
            if low is not None and high is not None and high > low:
                out.append(f"{edge}: up from {_layer_name(edge.importer)} to "
                           f"{_layer_name(edge.imported)}")
    return out


def _layer_name(module: str) -> str:
    return "the composition root" if module == ROOT else LAYERS[layer_of(module) or 0][0]


def test_no_import_points_up_a_layer():
    found = violations()
    assert not found, "imports against the layers:\n" + "\n".join(found)


def test_the_check_sees_every_kind_of_import():
    # the package's own import count: the check reads files, it does not import them
    edges = [e for p in PACKAGE_DIR.rglob("*.py") for e in imports_of(p, PACKAGE_DIR, ROOT)]
    pairs = {(e.importer, e.imported) for e in edges}
    assert ("aurora_log.local.log", "aurora_log.local._binding") in pairs       # relative
    assert ("aurora_log.local._binding", "aurora_log.local._native") in pairs   # in a try
    assert ("aurora_log.tools.cli", "aurora_log.runtime.worker") in pairs       # in a function
    assert ("aurora_log.runtime.worker", "aurora_log.runtime.tasks") in pairs   # from . import


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    pkg = tmp_path / ROOT
    for rel, text in {"__init__.py": "", "errors.py": "", "job.py": "",
                      "local/__init__.py": "", "local/queue.py": "", "local/log.py": "",
                      "local/_binding.py": "", "local/_native.py": "",
                      "runtime/__init__.py": "", "runtime/tasks.py": "",
                      "tools/__init__.py": "", "tools/cli.py": "", **files}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    return pkg


def test_an_upward_import_is_reported_with_its_edge(tmp_path):
    pkg = _tree(tmp_path, {
        "local/queue.py": "def task():\n    from ..runtime.tasks import task\n",
        "job.py": "import aurora_log.local.queue\n",
        "runtime/tasks.py": "from .. import tools\nimport aurora_log\n",
    })
    found = violations(pkg, ROOT)
    assert "aurora_log/local/queue.py:2: aurora_log.local.queue imports aurora_log.runtime." \
           "tasks: up from backends to runtime" in found
    assert "aurora_log/job.py:1: aurora_log.job imports aurora_log.local.queue: up from " \
           "face-core to backends" in found
    assert "aurora_log/runtime/tasks.py:1: aurora_log.runtime.tasks imports aurora_log.tools: " \
           "up from runtime to tools" in found
    assert "aurora_log/runtime/tasks.py:2: aurora_log.runtime.tasks imports aurora_log: " \
           "up from runtime to the composition root" in found
    assert len(found) == 4


def test_the_c_core_doors_and_unplaced_modules_are_reported(tmp_path):
    pkg = _tree(tmp_path, {
        "local/queue.py": "from . import _native\nfrom ._binding import ffi\n",
        "misc.py": "",
        "__init__.py": "from .tools import cli\nfrom .local import _binding\n",
    })
    found = violations(pkg, ROOT)
    assert any(v.startswith("aurora_log/local/queue.py:1: aurora_log.local.queue imports "
                            "aurora_log.local._native: only") for v in found)
    assert any(v.startswith("aurora_log/local/queue.py:2: aurora_log.local.queue imports "
                            "aurora_log.local._binding: only") for v in found)
    assert any(v.startswith("aurora_log/__init__.py:2:") for v in found)   # the root too
    assert any("aurora_log.misc is in no layer" in v for v in found)
    assert len(found) == 4
