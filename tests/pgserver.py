"""A throwaway PostgreSQL server for the tests: initdb + pg_ctl in a temporary directory,
listening only on a unix socket there (no TCP, nothing shared with other processes).

As root, the server runs as the ``postgres`` user (PostgreSQL refuses to run as root).
``AURORA_TEST_PG_DSN`` points the tests at an existing server instead (then the tests that
restart the server skip: it is not theirs to restart).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time


def pg_unavailable(why: str):
    """Skip a test that needs PostgreSQL, with its reason; in CI (CI=true) fail instead:
    a CI run whose server did not start must not pass by skipping."""
    import pytest
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL is required in CI but unavailable: {why}", pytrace=False)
    pytest.skip(why)


class Unavailable(Exception):
    """No PostgreSQL server could be started; the message says why."""


def _bindir() -> str:
    for cand in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(cand, "pg_ctl")):
            return cand
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        return os.path.dirname(pg_ctl)
    raise Unavailable("PostgreSQL server binaries (pg_ctl, initdb) are not installed "
                      "(apt-get install postgresql)")


class Server:
    """One cluster in its own directory. ``dsn`` for clients; ``restart()`` / ``stop()``."""

    def __init__(self, *, fsync: bool = False) -> None:
        """``fsync=False`` (tests): commits are not flushed to disk - a killed server keeps
        them (the OS has them), a power cut would not. Benchmarks pass True."""
        self.bindir = _bindir()
        self.root = tempfile.mkdtemp(prefix="aurora-pg-")
        os.chmod(self.root, 0o700)
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "server.log")
        self.user = None
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise Unavailable("running as root and there is no 'postgres' user") from None
            self.user = "postgres"
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.dsn = f"postgresql:///postgres?host={self.root}&port=5433&user=postgres"
        self._run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync", "--locale=C.UTF-8")
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(f"\nlisten_addresses = ''\nunix_socket_directories = '{self.root}'\n"
                    "port = 5433\nmax_connections = 200\n"
                    + ("" if fsync else "fsync = off\nfull_page_writes = off\n") +
                    "shared_buffers = 32MB\n")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        cmd = [os.path.join(self.bindir, tool), *args]
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if r.returncode != 0:
            raise Unavailable(f"{tool} failed: {r.stderr.strip() or r.stdout.strip()}")

    def start(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, pause: float = 0.0) -> None:
        """Stop (fast: clients are disconnected) and start again after ``pause`` seconds."""
        self.stop()
        time.sleep(pause)
        self.start()

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except Unavailable:
            pass
        shutil.rmtree(self.root, ignore_errors=True)
