"""The directory lock and file permissions."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from aurora_log.errors import LockedError
from aurora_log.local.log import Log, write_file_durably

from test_log_support import mode

SEG = 1 << 20  # small segments: a default 64 MiB one costs a zero-fill + fsync


def test_second_opener_in_process_gets_locked_error(store_dir):
    with Log.open(store_dir, segment_bytes=SEG):
        with pytest.raises(LockedError):
            Log.open(store_dir, segment_bytes=SEG)
    Log.open(store_dir, segment_bytes=SEG).close()   # released on close


def test_reopen_succeeds_at_once_after_sigkill_of_owner(store_dir):
    code = textwrap.dedent(f"""
        import sys, time
        from aurora_log.local.log import Log
        log = Log.open({str(store_dir)!r})
        log.sync(log.append(1, b"from the child"))
        print("ready", flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(LockedError):
            Log.open(store_dir, segment_bytes=SEG)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    # no waiting, no stale-lock cleanup needed
    with Log.open(store_dir, segment_bytes=SEG) as log:
        assert list(log.scan()) == [(1, 1, b"from the child")]


def test_permissions_under_umask_000(tmp_path):
    old = os.umask(0)
    try:
        d = tmp_path / "new" / "store"
        with Log.open(d, segment_bytes=8192) as log:
            log.sync(log.append(1, b"x"))
            for _ in range(100):
                log.sync(log.append(1, b"y" * 200))   # rolls: new segments too
        # a torn tail kept aside is private too
        seg = sorted((d / "wal").glob("*.seg"))[-1]
        with open(seg, "r+b") as f:
            f.seek(os.path.getsize(seg) - 100)
            f.write(b"\x01garbage")
        with Log.open(d, segment_bytes=8192) as log:
            assert log.report.truncated
        write_file_durably(d / "snap", b"data")
    finally:
        os.umask(old)
    assert mode(d) == 0o700 and mode(d / "wal") == 0o700
    files = [d / "LOCK", d / "snap"] + list((d / "wal").iterdir())
    assert any(".broken-" in f.name for f in files) and len(files) > 4
    for f in files:
        assert mode(f) == 0o600, f
