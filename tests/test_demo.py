"""The README's main job runs end to end (small size) and proves its claims."""

import os
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_end_to_end(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "aurora_log.tools.demo", "--jobs", "300",
                          "--workers", "2", "--dir", str(tmp_path / "demo"), "--seed", "7"],
                         env=env, capture_output=True, text=True, timeout=120)
    text = out.stdout
    assert out.returncode == 0, text + out.stderr
    assert "kill -9" in text
    assert "lost 0, phantom 0, resurrected 0, started early 0" in text
    assert "-> all good" in text
    assert "dead_letter 1" in text
    assert "aurora-log history" in text or "-m aurora_log history" in text
    # the web app, the CLI and a second producer used the store while the workers ran
    assert "dashboard process" in text and "the dashboard served through the kill" in text
    assert "`aurora-log stats` (another process) at the same moment" in text
    assert "this process enqueued 30 more jobs into the store the worker is running" in text
    assert "acknowledged  330 jobs" in text
    assert len(text.splitlines()) < 60            # a few progress lines, not thousands
    # the directory it made and the worker's log are private to the user
    assert stat.S_IMODE((tmp_path / "demo").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "demo" / "worker.log").stat().st_mode) == 0o600
    store = tmp_path / "demo" / "store"
    stats = subprocess.run([sys.executable, "-m", "aurora_log", "stats", str(store), "--json"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert stats.returncode == 0 and '"total": 330' in stats.stdout


def test_demo_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "x").write_text("mine")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "aurora_log.tools.demo", "--dir", str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "not empty" in out.stderr
