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


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_compare_s8_many_processes_runs(tmp_path):
    """bench/compare.py --quick --only s8: issue 19's many-process scenario end to end at a
    tiny size (every system at every count, the ratios and the targets computed)."""
    out = tmp_path / "out"
    p = subprocess.run(
        [sys.executable, str(REPO / "bench" / "compare.py"), "--quick", "--only", "s8",
         "--peers", "aurora-sync,sqlite-full", "--dir", str(tmp_path / "work"),
         "--out", str(out)],
        check=False, capture_output=True, text=True, timeout=290, cwd=REPO)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    s8 = json.loads((out / "compare-latest.json").read_text())["scenarios"]["s8"]
    assert {(r["system"], r["procs"]) for r in s8["enqueue"]} == {
        (s, n) for s in ("bare", "aurora", "sqlite") for n in (1, 2)}
    assert {(r["system"], r["procs"]) for r in s8["claim"]} == {
        (s, n) for s in ("aurora", "sqlite") for n in (1, 2)}
    for r in s8["enqueue"] + s8["claim"]:
        assert r["ops_s"] > 0 and r["cpu_us"] > 0 and r["rec_per_sync"] > 0, r
    aurora = [r for r in s8["enqueue"] + s8["claim"] if r["system"] == "aurora"]
    assert all(r["fdatasyncs_counted"] and r["fdatasyncs_s"] > 0 for r in aurora)
    assert set(s8["ratios"]["enqueue_vs_bare"]) == {"1", "2"}    # JSON keys
    assert "s8 claim+complete" in p.stdout
