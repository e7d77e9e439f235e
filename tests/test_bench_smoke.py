"""CI smoke for bench/compare.py: it runs end to end at tiny sizes and writes its JSON.

Only that it runs is checked, never the numbers: they depend on the machine. Peers that are
not installed are skipped by compare.py itself, so this passes with or without them.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COMPARE = REPO / "bench" / "compare.py"


@pytest.mark.timeout(180)
def test_compare_quick_runs_and_writes_json(tmp_path):
    out = tmp_path / "results"
    env = dict(os.environ, MPLBACKEND="Agg")
    p = subprocess.run(
        [sys.executable, str(COMPARE), "--quick", "--out", str(out),
         "--dir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=170, cwd=REPO, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    latest = out / "compare-latest.json"
    assert latest.exists(), p.stdout[-3000:]
    data = json.loads(latest.read_text())
    for key in ("machine", "floors", "scenarios", "targets", "config"):
        assert key in data
    assert data["config"]["quick"] is True
    assert data["machine"]["cores"] >= 1
    # every scenario ran (whatever systems were available)
    assert set(data["scenarios"]) == {"s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8"}
    # the work directories are cleaned up
    assert not any((tmp_path / "work").glob("run-*/*"))
