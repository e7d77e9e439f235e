"""The conformance suite's fixtures: every test here runs once per backend ("local": a
store directory; "postgres": a fresh schema on the test server). A backend that does not
pass this suite is not done."""

import pytest
from fakeclock import FakeClock

import aurora_log

T0 = 1_800_000_000.0   # seconds

# options only the local store has (its log and files); the PostgreSQL opener drops them
LOCAL_ONLY = {"durability", "segment_bytes", "interval_ms", "auto_compact", "retain_seconds",
              "retain_count", "archive", "max_snapshot_bytes"}

BACKENDS = ["local", "postgres"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def clock():
    return FakeClock(T0)


@pytest.fixture
def store_target(backend, request, tmp_path):
    """(target, extra options) naming one empty store of the backend."""
    if backend == "local":
        return str(tmp_path / "store"), {}
    server = request.getfixturevalue("pg_server")
    schema = request.getfixturevalue("pg_schema")
    return server.dsn, {"schema": schema}


@pytest.fixture
def opener(backend, store_target, clock):
    """open(**options) -> a queue on the test's store (the same store on every call), with
    the fake clock and no reaper thread unless the test says otherwise."""
    opened = []
    target, extra = store_target

    def _open(**kw):
        kw.setdefault("clock", clock)
        kw.setdefault("reaper_interval", None)
        if backend == "local":
            kw.setdefault("durability", "os")
            kw.setdefault("segment_bytes", 1 << 20)
        else:
            kw = {k: v for k, v in kw.items() if k not in LOCAL_ONLY}
        q = aurora_log.open(target, **extra, **kw)
        opened.append(q)
        return q
    yield _open
    for q in opened:
        q.close()


@pytest.fixture
def q(opener):
    return opener()
