"""Connections: a psycopg_pool pool of autocommit connections, and the mapping of a cut
connection to ConnectionLostError.

Every queue operation is one transaction on one pooled connection. The pool checks a
connection before handing it out (``check_quiet``), so after a server restart the stale
connections are replaced instead of failing the next operation; a connection that breaks
during an operation is discarded by the pool when it is returned.

The check costs no round trip: a server that ends a session (restart, admin shutdown,
pg_terminate_backend) sends a FATAL message and closes the socket, so a dead idle
connection has something to read, and a live idle one has nothing (pool connections never
LISTEN). Only a connection with something to read gets the full round-trip
check (psycopg_pool's ``check_connection``), which fails for a dead one and makes the pool
take another. A peer that vanished without closing the socket (a host power cut) is not
seen by either check: the operation then fails with ConnectionLostError, as before.
"""

from __future__ import annotations

import contextlib
import select
from collections.abc import Iterator

import psycopg
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from ..errors import ClosedError, ConnectionLostError

__all__ = ["check_quiet", "connect", "is_dsn", "lost", "make_pool"]

_DSN_PREFIXES = ("postgresql://", "postgres://")


def is_dsn(target: object) -> bool:
    """True for a PostgreSQL URI (``postgresql://...`` or ``postgres://...``)."""
    return isinstance(target, str) and target.startswith(_DSN_PREFIXES)


def make_pool(dsn: str, *, min_size: int = 1, max_size: int = 10,
              timeout: float = 30.0) -> ConnectionPool:
    """An open pool of autocommit connections to ``dsn``."""
    pool = ConnectionPool(dsn, min_size=min_size, max_size=max_size, timeout=timeout,
                          kwargs={"autocommit": True}, check=check_quiet,
                          open=False, name="aurora-log")
    try:
        pool.open(wait=True, timeout=timeout)
    except PoolTimeout as e:
        pool.close()
        raise ConnectionLostError(f"cannot connect to PostgreSQL at {redact(dsn)}: {e}") from None
    return pool


def check_quiet(conn: psycopg.Connection) -> None:
    """The pool's check before handing out ``conn``: no round trip while its socket is
    quiet; the full check (a round trip, raises for a dead connection) when the server has
    sent something, which for an idle pooled connection means it ended the session."""
    if conn.closed:
        raise psycopg.OperationalError("the connection is closed")
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN | select.POLLPRI)
    if poller.poll(0):
        ConnectionPool.check_connection(conn)


def connect(dsn: str) -> psycopg.Connection:
    """One autocommit connection (for the listener and the CLI's migrate)."""
    try:
        return psycopg.connect(dsn, autocommit=True)
    except psycopg.OperationalError as e:
        raise ConnectionLostError(f"cannot connect to PostgreSQL at {redact(dsn)}: "
                                  f"{str(e).strip()}") from None


def redact(dsn: str) -> str:
    """The DSN without its password (for messages)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    info.pop("password", None)
    return psycopg.conninfo.make_conninfo("", **info)


@contextlib.contextmanager
def lost() -> Iterator[None]:
    """Turn a cut connection (OperationalError: server gone, admin shutdown, pool timeout)
    into ConnectionLostError (the transaction it was in is rolled back by the server), and
    a pool closed under a running operation into ClosedError."""
    try:
        yield
    except PoolClosed:              # close() ran while this operation waited for a connection
        raise ClosedError("the queue is closed") from None
    except (psycopg.OperationalError, psycopg.InterfaceError) as e:
        raise ConnectionLostError(f"the PostgreSQL connection was lost: {str(e).strip()}") from e
    except PoolTimeout as e:
        raise ConnectionLostError(f"no PostgreSQL connection available: {e}") from e
