"""Shared test fixtures. Module-specific fixtures live in their own test files."""

import os

import pytest
from pgserver import pg_unavailable  # skip a PostgreSQL test, or fail it in CI


@pytest.fixture
def store_dir(tmp_path):
    """A path for a new store directory (not yet created)."""
    return tmp_path / "store"


@pytest.fixture
def open_store(store_dir):
    """open(**options) -> a queue on the test's store directory (the same store on every
    call), closed at the end; no reaper thread and 1 MiB segments unless told otherwise."""
    import aurora_log
    opened = []

    def _open(**kw):
        kw.setdefault("reaper_interval", None)
        kw.setdefault("segment_bytes", 1 << 20)
        q = aurora_log.open(store_dir, **kw)
        opened.append(q)
        return q
    yield _open
    for q in opened:
        q.close()


@pytest.fixture(autouse=True)
def _private_umask():
    """Tests run under the default umask; permission tests set their own."""
    old = os.umask(0o022)
    yield
    os.umask(old)


# ------------------------------------------------------------------ PostgreSQL

class _ExternalServer:
    """AURORA_TEST_PG_DSN: a server the tests use but do not own (no restart)."""

    def __init__(self, dsn: str):
        self.dsn = dsn

    def restart(self, pause: float = 0.0):
        pytest.skip("AURORA_TEST_PG_DSN names a server these tests may not restart")


@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL server for the session: AURORA_TEST_PG_DSN, or a throwaway cluster
    (initdb + pg_ctl on a unix socket in a temporary directory, see tests/pgserver.py)."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        pg_unavailable("psycopg / psycopg_pool are not installed "
                       "(pip install aurora-log[postgres])")
    dsn = os.environ.get("AURORA_TEST_PG_DSN")
    if dsn:
        yield _ExternalServer(dsn)
        return
    import pgserver
    try:
        server = pgserver.Server()
    except pgserver.Unavailable as e:
        pg_unavailable(str(e))
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_schema(pg_server):
    """A fresh schema name for one test; dropped afterwards."""
    import uuid

    import psycopg
    name = "t_" + uuid.uuid4().hex[:12]
    yield name
    try:
        with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
    except psycopg.OperationalError:
        pass


# ------------------------------------------------------------------ many processes

@pytest.fixture(scope="session")
def shared_store():
    """Several processes open one store at once with the default options (issue 19):
    checked once per session by a second process opening a store this one holds; a
    refusal fails the test (it used to skip while sharing was opt-in)."""
    from mp_support import second_open_refused
    why = second_open_refused()
    if why is not None:
        pytest.fail(why)
