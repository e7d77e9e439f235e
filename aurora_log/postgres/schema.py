"""The tables, in a schema the user names, and their versioned migrations.

Each migration is a list of statements applied in one transaction together with the row
that records its version in ``<schema>.aurora_migrations``; a transaction-level advisory
lock keyed on the schema name serialises concurrent migrators (two machines starting at
once). Migrations are append-only: never edit a released one, add the next version.

Times are epoch milliseconds (bigint) computed by the client from its clock (like the local
store's records), so several machines need synchronised clocks (NTP).

Status codes are aurora_log.job.JobStatus codes: 1 pending, 2 running, 3 completed,
4 failed (waiting for its retry), 5 dead_letter, 6 cancelled.
"""

from __future__ import annotations

import re
import zlib

from psycopg import sql

__all__ = [
    "LATEST_VERSION",
    "MIGRATIONS",
    "channel_name",
    "check_schema_name",
    "current_version",
    "migrate",
]

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")

# {s} is replaced by the quoted schema identifier.
MIGRATIONS: list[list[str]] = [
    # version 1: jobs, their history, the transition sequence
    [
        "CREATE SEQUENCE {s}.lsn",
        """CREATE TABLE {s}.jobs (
            id               text PRIMARY KEY,
            seq              bigint NOT NULL,         -- enqueue position: list() order
            job_type         text NOT NULL,
            queue            text NOT NULL,
            unique_key       text,
            payload          text NOT NULL,           -- the exact JSON the client encoded
            priority         smallint NOT NULL,
            max_retries      bigint NOT NULL,
            retry_count      bigint NOT NULL DEFAULT 0,
            status           smallint NOT NULL DEFAULT 1,
            created_ms       bigint NOT NULL,
            scheduled_ms     bigint,                  -- Job.scheduled_at
            due_ms           bigint NOT NULL,         -- claim order: due time ...
            order_seq        bigint NOT NULL,         -- ... then FIFO (lsn that made it pending)
            timeout_ms       bigint,
            lease_ms         bigint NOT NULL,
            started_ms       bigint,
            hb_ms            bigint,
            completed_ms     bigint,
            token            text,
            worker           text,
            lease_dl_ms      bigint,
            error            text,
            result           text,
            progress         double precision,
            progress_message text,
            cancel_requested boolean NOT NULL DEFAULT false
        )""",
        # the claim order, on waiting jobs only: SKIP LOCKED walks it from the front
        """CREATE INDEX jobs_claim ON {s}.jobs (priority DESC, due_ms, order_seq)
            WHERE status IN (1, 4)""",
        "CREATE INDEX jobs_seq ON {s}.jobs (seq)",
        # the reaper's scan: running jobs by lease deadline
        "CREATE INDEX jobs_running ON {s}.jobs (lease_dl_ms) WHERE status = 2",
        # at most one live job per unique key
        """CREATE UNIQUE INDEX jobs_unique_live ON {s}.jobs (unique_key)
            WHERE unique_key IS NOT NULL AND status IN (1, 2, 4)""",
        "CREATE INDEX jobs_finished ON {s}.jobs (completed_ms) WHERE status IN (3, 5, 6)",
        """CREATE TABLE {s}.history (
            lsn      bigint PRIMARY KEY,
            job_id   text NOT NULL,
            kind     text NOT NULL,
            at_ms    bigint NOT NULL,
            status   smallint NOT NULL,
            worker   text,
            attempt  bigint NOT NULL,
            note     text
        )""",
        "CREATE INDEX history_job ON {s}.history (job_id, lsn)",
    ],
    # version 2: the dashboard's activity view reads the last hour of history by time
    [
        "CREATE INDEX history_at ON {s}.history (at_ms)",
    ],
    # version 3: one index on history instead of two (every transition inserts a history
    # row, so each index costs every operation). It is read by job (history(), progress,
    # purge), never by lsn alone; lsn stays unique (one sequence hands it out).
    [
        "DROP INDEX {s}.history_job",
        "ALTER TABLE {s}.history DROP CONSTRAINT history_pkey",
        "ALTER TABLE {s}.history ADD CONSTRAINT history_pkey PRIMARY KEY (job_id, lsn)",
    ],
]
LATEST_VERSION = len(MIGRATIONS)


def check_schema_name(schema: object) -> str:
    """A lower-case SQL identifier (letters, digits, underscore; not starting with a digit;
    at most 48 characters, so the NOTIFY channel name derived from it fits)."""
    if not isinstance(schema, str):
        raise TypeError(f"schema must be a str, not {type(schema).__name__}")
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"schema {schema!r} must be a lower-case SQL identifier "
                         "(a-z, 0-9, _; not starting with a digit; at most 48 characters)")
    return schema


def channel_name(schema: str) -> str:
    """The LISTEN/NOTIFY channel of a schema's queue."""
    return f"aurora_log_{schema}"


def _lock_key(schema: str) -> int:
    return zlib.crc32(f"aurora-log migrate {schema}".encode()) - (1 << 31)


def current_version(conn, schema: str) -> int:
    """The schema's migration version (0 if it has none)."""
    row = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", (f"{schema}.aurora_migrations",)).fetchone()
    if not row[0]:
        return 0
    q = sql.SQL("SELECT coalesce(max(version), 0) FROM {}.aurora_migrations").format(
        sql.Identifier(schema))
    return int(conn.execute(q).fetchone()[0])


def migrate(conn, schema: str) -> list[int]:
    """Bring ``schema`` up to LATEST_VERSION (creating it if needed). Returns the versions
    applied now (empty when it was current). ``conn`` must be in autocommit mode."""
    check_schema_name(schema)
    ident = sql.Identifier(schema)
    applied = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(schema),))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.aurora_migrations ("
            "version int PRIMARY KEY, applied_ms bigint NOT NULL)").format(ident))
        have = current_version(conn, schema)
        if have > LATEST_VERSION:
            from ..errors import AuroraLogError
            raise AuroraLogError(f"schema {schema!r} is at version {have}, newer than this "
                                 f"aurora-log knows ({LATEST_VERSION}): upgrade aurora-log")
        for version in range(have + 1, LATEST_VERSION + 1):
            for statement in MIGRATIONS[version - 1]:
                conn.execute(sql.SQL(statement.replace("{s}", "{}")).format(
                    *([ident] * statement.count("{s}"))))
            conn.execute(sql.SQL(
                "INSERT INTO {}.aurora_migrations (version, applied_ms) "
                "VALUES (%s, (extract(epoch FROM clock_timestamp()) * 1000)::bigint)"
            ).format(ident), (version,))
            applied.append(version)
    return applied
