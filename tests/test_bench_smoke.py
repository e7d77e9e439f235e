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
    # s1 pairs the floor with aurora-log's sync peer round by round
    s1 = data["scenarios"]["s1"]
    assert s1["paired_by_system"].get("aurora-sync"), s1
    assert s1["paired_median"] == s1["paired_medians"]["aurora-sync"]


@pytest.mark.timeout(120)
def test_s1_budget_runs_every_row(tmp_path):
    p = subprocess.run(
        [sys.executable, str(REPO / "bench" / "s1_budget.py"), "--rounds", "1", "--ops", "3",
         "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=110, cwd=REPO)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for row in ("floor + Job()", "floor + enqueue", "aurora shared", "aurora excl",
                "after a 100 us sleep"):
        assert row in p.stdout, p.stdout
    assert not any(tmp_path.iterdir())          # its files are removed
