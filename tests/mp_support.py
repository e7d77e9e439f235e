"""Support for the many-processes tests (issue 19): the probe for a shared store, a shared
fake clock, and a driver for tests/mp_queue_server.py helper processes.

Everything here goes through the public API (``aurora_log.open`` in real processes), so the
tests hold whatever the shared store's internals are.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SERVER = HERE / "mp_queue_server.py"


def child_env() -> dict[str, str]:
    """The environment for a child Python: this checkout first on sys.path, tests/ next."""
    extra = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), str(HERE)] + ([extra] if extra else [])))


SHARED_ENV = "AURORA_TEST_SHARED_OPTIONS"     # JSON: the open options of a shared store


def shared_options() -> dict[str, Any]:
    """The options that make ``aurora_log.open`` share a store between processes: ``{}``,
    since sharing is the default (the probe checks it). Children inherit them through the
    environment."""
    return json.loads(os.environ.get(SHARED_ENV, "{}"))


_PROBE = """
import json, sys
import aurora_log
try:
    aurora_log.open(sys.argv[1], reaper_interval=None, **json.loads(sys.argv[2])).close()
except aurora_log.LockedError as e:
    print(e)
    sys.exit(3)
"""


def second_open_refused() -> str | None:
    """Why this build cannot share a store between processes (a second process's plain
    ``aurora_log.open`` of a directory another process holds raises LockedError), or None
    if it can: then shared_options() names the options that made it work (none)."""
    import aurora_log
    refusals = []
    for opts in ({},):
        d = tempfile.mkdtemp(prefix="aurora-mp-probe-")
        try:
            try:
                first = aurora_log.open(Path(d) / "store", reaper_interval=None, **opts)
            except TypeError as e:          # a build without the option
                refusals.append(f"open(**{opts}): {e}")
                continue
            with first:
                out = subprocess.run([sys.executable, "-c", _PROBE, str(Path(d) / "store"),
                                      json.dumps(opts)], env=child_env(), capture_output=True,
                                     text=True, timeout=60)
            if out.returncode == 0:
                os.environ[SHARED_ENV] = json.dumps(opts)
                return None
            if out.returncode != 3:
                raise AssertionError(f"the probe's second open failed: {out.stderr[-2000:]}")
            refusals.append(f"open(**{opts}): LockedError ({out.stdout.strip()})")
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return ("a second process cannot open a store another process holds: no shared store in "
            "this build (issue 19 phase 2): " + "; ".join(refusals))


class SharedClock:
    """The test's side of the shared fake clock: an int64 of ms in a file every helper maps
    (mp_queue_server.SharedClock reads it)."""

    def __init__(self, path: Path, now_ms: int):
        self.path = path
        path.write_bytes(struct.pack("<q", now_ms))
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, 8)
        finally:
            os.close(fd)

    @property
    def now_ms(self) -> int:
        return struct.unpack_from("<q", self._map)[0]

    @now_ms.setter
    def now_ms(self, ms: int) -> None:
        struct.pack_into("<q", self._map, 0, ms)

    def close(self) -> None:
        self._map.close()


class HelperError(Exception):
    """A helper's reply was an exception: ``kind`` is its class name."""

    def __init__(self, kind: str, msg: str, trace: str | None = None):
        super().__init__(f"{kind}: {msg}" + (f"\n{trace}" if trace else ""))
        self.kind = kind
        self.trace = trace


class Helper:
    """One helper process (tests/mp_queue_server.py) driven over its stdin/stdout."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(SERVER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=child_env(), text=True,
                                     bufsize=1)

    def call(self, op: str, **args: Any) -> Any:
        """Send one command; return its value or raise HelperError (a dead helper: EOF)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise HelperError("EOF", f"helper {self.proc.pid} died (exit {self.proc.wait()})")
        reply = json.loads(line)
        if "err" in reply:
            raise HelperError(reply["err"], reply["msg"], reply.get("trace"))
        return reply["ok"]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            try:
                self.call("quit")
            except (HelperError, OSError, ValueError):
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()
