"""LISTEN/NOTIFY on the PostgreSQL backend: a waiting claim is woken by another machine's
enqueue (another queue object, its own connections), does not poll while it waits, and
keeps working after its LISTEN connection is cut."""

import threading

import pytest

import aurora_log
from aurora_log import Job


@pytest.fixture
def two(pg_server, pg_schema):
    """Two queue objects on one schema: two machines."""
    a = aurora_log.open(pg_server.dsn, schema=pg_schema, reaper_interval=None, pool_size=2)
    b = aurora_log.open(pg_server.dsn, schema=pg_schema, reaper_interval=None, pool_size=2)
    yield a, b
    a.close()
    b.close()


def _count_claims(q):
    """Count the claim statements ``q`` runs."""
    calls = []
    original = q._sql.claim

    def counting(filters):
        calls.append(filters)
        return original(filters)
    q._sql.claim = counting
    return calls


def _claim_in_thread(q, wait):
    got = []
    t = threading.Thread(target=lambda: got.append(q.claim("w", wait=wait)))
    t.start()
    return t, got


def _parked(q):
    listener = q._listener
    return listener is not None and bool(listener._cond._waiters)


def test_a_waiting_claim_is_woken_by_another_machines_enqueue(two):
    a, b = two
    calls = _count_claims(a)
    t, got = _claim_in_thread(a, 60)
    while not _parked(a):
        threading.Event().wait(0.005)
    jid = b.enqueue(Job("t"))
    t.join(60)
    assert got and got[0] is not None and got[0].id == jid
    assert len(calls) <= 3          # the first look, maybe one after LISTEN began, the wake


def test_a_waiting_claim_does_not_poll(two):
    a, _ = two
    calls = _count_claims(a)
    assert a.claim("w", wait=1.5) is None
    assert len(calls) <= 2, f"{len(calls)} claim statements in one idle wait"


def test_the_listener_reconnects_after_its_connection_is_cut(two, pg_server):
    import psycopg
    a, b = two
    a.claim("w", wait=0.01)                       # starts the listener
    pid = a._listener._conn.info.backend_pid
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    for _ in range(2000):                          # bounded wait for the reconnect
        conn_now = a._listener._conn
        if conn_now is not None and conn_now.info.backend_pid != pid:
            break
        threading.Event().wait(0.005)
    t, got = _claim_in_thread(a, 60)
    while not _parked(a):
        threading.Event().wait(0.005)
    jid = b.enqueue(Job("t"))
    t.join(60)
    assert got and got[0] is not None and got[0].id == jid
