"""The PostgreSQL schema: versioned migrations, concurrent migrators, the schema name, and
the test fixture's CI rule."""

import threading

import pytest

import aurora_log
from aurora_log.errors import AuroraLogError, InvalidStateError


def _connect(dsn):
    import psycopg
    return psycopg.connect(dsn, autocommit=True)


def test_concurrent_migrators_apply_each_version_once(pg_server, pg_schema):
    from aurora_log.postgres import LATEST_VERSION, migrate
    applied, errors = [], []
    barrier = threading.Barrier(4)

    def run():
        try:
            with _connect(pg_server.dsn) as conn:
                barrier.wait()
                applied.append(migrate(conn, pg_schema))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(applied) == [[], [], [], list(range(1, LATEST_VERSION + 1))]
    with _connect(pg_server.dsn) as conn:
        rows = conn.execute(f"SELECT version FROM {pg_schema}.aurora_migrations").fetchall()
    assert [r[0] for r in rows] == list(range(1, LATEST_VERSION + 1))


def test_a_schema_newer_than_this_library_is_refused(pg_server, pg_schema):
    aurora_log.open(pg_server.dsn, schema=pg_schema, reaper_interval=None).close()
    with _connect(pg_server.dsn) as conn:
        conn.execute(f"INSERT INTO {pg_schema}.aurora_migrations VALUES (999, 0)")
    with pytest.raises(AuroraLogError, match="newer than this aurora-log"):
        aurora_log.open(pg_server.dsn, schema=pg_schema, reaper_interval=None)
    with pytest.raises(InvalidStateError, match="aurora-log migrate"):
        aurora_log.open(pg_server.dsn, schema=pg_schema, reaper_interval=None, migrate=False)


def test_migrate_false_refuses_an_unmigrated_schema(pg_server, pg_schema):
    with pytest.raises(InvalidStateError, match="aurora-log migrate"):
        aurora_log.open(pg_server.dsn, schema=pg_schema, migrate=False)
    with _connect(pg_server.dsn) as conn:        # and created nothing
        assert conn.execute("SELECT to_regnamespace(%s)", (pg_schema,)).fetchone()[0] is None


@pytest.mark.parametrize("schema, exc", [("Upper", ValueError), ("a-b", ValueError),
                                         ("1abc", ValueError), ("x" * 49, ValueError),
                                         ("a; drop", ValueError), (5, TypeError)])
def test_bad_schema_names_raise_before_connecting(schema, exc):
    # an unroutable DSN: the error must come before any connection attempt
    with pytest.raises(exc):
        aurora_log.open("postgresql://nobody@127.0.0.1:1/none", schema=schema)


def test_in_ci_a_missing_server_fails_instead_of_skipping(monkeypatch):
    from pgserver import pg_unavailable
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="required in CI"):
        pg_unavailable("no server")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        pg_unavailable("no server")


def test_the_claim_walks_the_claim_index_in_order(pg_server, pg_schema):
    """The claim's ORDER BY is the index's order: an index scan with no sort step."""
    q = aurora_log.open(pg_server.dsn, schema=pg_schema, reaper_interval=None)
    try:
        q.enqueue_many([aurora_log.Job("t", {"i": i}) for i in range(50)])
        sql = q._sql.claim("")
        with _connect(pg_server.dsn) as conn:
            conn.execute("SET enable_seqscan = off")      # a 50-row table: make it choose
            conn.execute(f"ANALYZE {pg_schema}.jobs")
            plan = "\n".join(r[0] for r in conn.execute(
                "EXPLAIN " + sql, {"now": 1 << 50, "tok": "00" * 8, "w": "w"}).fetchall())
    finally:
        q.close()
    assert "jobs_claim" in plan and "Sort" not in plan and "LockRows" in plan, plan


def test_migrating_keeps_a_version_1_history_and_indexes_it_once_by_job(pg_server, pg_schema):
    """A schema made at version 1, with jobs and history in it, migrates to the latest: the
    history is kept and read the same; history carries one index by job, (job_id, lsn), as
    its primary key (version 3), beside the dashboard's time index (version 2)."""
    from psycopg import sql

    from aurora_log import Job
    from aurora_log.postgres import schema as S
    with _connect(pg_server.dsn) as conn:         # version 1 only, as an old release made it
        ident = sql.Identifier(pg_schema)
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
        conn.execute(sql.SQL("CREATE TABLE {}.aurora_migrations (version int PRIMARY KEY, "
                             "applied_ms bigint NOT NULL)").format(ident))
        for statement in S.MIGRATIONS[0]:
            conn.execute(sql.SQL(statement.replace("{s}", "{}")).format(
                *([ident] * statement.count("{s}"))))
        conn.execute(sql.SQL("INSERT INTO {}.aurora_migrations VALUES (1, 0)").format(ident))
        conn.execute(sql.SQL(
            "INSERT INTO {}.history VALUES (nextval({}), 'old', 'enqueue', 5, 1, NULL, 1, NULL)"
        ).format(ident, sql.Literal(f"{pg_schema}.lsn")))
    with aurora_log.open(pg_server.dsn, schema=pg_schema, reaper_interval=None) as q:
        jid = q.enqueue(Job("t"))
        q.complete(jid, q.claim("w").token)
        assert [t.kind for t in q.history(jid)] == ["enqueue", "claim", "complete"]
    with _connect(pg_server.dsn) as conn:
        assert conn.execute(sql.SQL("SELECT lsn, kind FROM {}.history WHERE job_id = 'old'")
                            .format(ident)).fetchall() == [(1, "enqueue")]
        indexes = conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND "
                               "tablename = 'history'", (pg_schema,)).fetchall()
    defs = sorted(d for (d,) in indexes)
    assert len(defs) == 2, defs
    assert any("history_pkey" in d and "(job_id, lsn)" in d for d in defs), defs
    assert any("history_at" in d and "(at_ms)" in d for d in defs), defs
