"""Smoke for bench/xproc/xproc.py (issue 19's measured prototypes): it runs end to end at a
tiny size and reports every variant. Only that it runs is checked, never the numbers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
XPROC = REPO / "bench" / "xproc" / "xproc.py"
VARIANTS = ["shm", "shm-fold", "flock", "owner", "owner-fold", "sqlite", "gil-naive",
            "gil-aware"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_xproc_runs_every_variant(tmp_path):
    p = subprocess.run(
        [sys.executable, str(XPROC), "--seconds", "0.2", "--procs", "2", "--kills", "2",
         "--only", ",".join(VARIANTS), "--dir", str(tmp_path), "--json"],
        check=False, capture_output=True, text=True, timeout=290, cwd=REPO)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    data = json.loads(p.stdout.strip().splitlines()[-1])
    got = {(r["variant"], r["procs"]) for r in data["rows"]}
    assert got == {("floor", 1)} | {(v, 2) for v in VARIANTS}
    assert all(r["commits_s"] > 0 for r in data["rows"])
    assert len(data["stall_ms"]["append"]) == len(data["stall_ms"]["sync"]) == 2
    assert data["fold"]["records"] > 0
    assert not list(tmp_path.iterdir())          # its work directory is gone
