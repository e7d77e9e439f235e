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

# A job waiting for its parents keeps its own due time in held_due_ms; its due_ms is
# HELD_DUE_MS (past any real due time), so the claim index and every claim statement pass
# it over without knowing about dependencies. Its parents' ends put due_ms back.
HELD_DUE_MS = 1 << 62

CONTROL_MIGRATION: list[str] = [
    "CREATE TABLE {s}.paused_queues (queue text PRIMARY KEY, at_ms bigint NOT NULL)",
    # scope 1 = queue, 2 = job type (aurora_log.local.records SCOPE_*); 0 = no such limit
    """CREATE TABLE {s}.limits (
        scope          smallint NOT NULL,
        name           text NOT NULL,
        concurrency    bigint NOT NULL,
        rate_count     bigint NOT NULL,
        rate_period_ms bigint NOT NULL,
        rate_next      bigint NOT NULL DEFAULT 0,   -- claims charged: the next ring slot
        PRIMARY KEY (scope, name))""",
    # A rate-limited key's last rate_count claim times, a ring: claim n writes slot
    # n % rate_count, so slot rate_next % rate_count holds the oldest of them and the
    # check is one lookup (the local store's deque(maxlen=rate_count), in a table).
    """CREATE TABLE {s}.rate_claims (
        scope smallint NOT NULL, name text NOT NULL, slot bigint NOT NULL,
        at_ms bigint NOT NULL,
        PRIMARY KEY (scope, name, slot))""",
    # running jobs per queue / job type: a concurrency limit counts them under its lock
    "CREATE INDEX jobs_running_queue ON {s}.jobs (queue) WHERE status = 2",
    "CREATE INDEX jobs_running_type ON {s}.jobs (job_type) WHERE status = 2",
    # dependencies: the child's row says how many parents it still waits for
    "ALTER TABLE {s}.jobs ADD COLUMN parents text[]",
    "ALTER TABLE {s}.jobs ADD COLUMN on_parent_failure smallint",   # 0 cancel, 1 ignore
    "ALTER TABLE {s}.jobs ADD COLUMN waiting_parents bigint NOT NULL DEFAULT 0",
    "ALTER TABLE {s}.jobs ADD COLUMN held_due_ms bigint",
    "ALTER TABLE {s}.jobs ADD COLUMN has_children boolean NOT NULL DEFAULT false",
    """CREATE TABLE {s}.deps (
        child  text NOT NULL,
        parent text NOT NULL,
        done   boolean NOT NULL DEFAULT false,
        PRIMARY KEY (parent, child))""",
    # a due time of a schedule fires once: the primary key decides, across machines
    """CREATE TABLE {s}.periodic_firings (
        name   text NOT NULL,
        due_ms bigint NOT NULL,
        job_id text NOT NULL,
        at_ms  bigint NOT NULL,
        PRIMARY KEY (name, due_ms))""",
    # A parent reached a final status (3 completed, 5 dead-letter, 6 cancelled): settle
    # the children still waiting for it, in the same transaction. Cancelling a child
    # fires this again for its own children.
    """CREATE FUNCTION {s}.settle_children() RETURNS trigger LANGUAGE plpgsql AS $f$
    DECLARE
        kids text[];
        why text;
    BEGIN
        UPDATE {s}.deps SET done = true WHERE parent = NEW.id AND NOT done;
        SELECT array_agg(child) INTO kids FROM {s}.deps WHERE parent = NEW.id;
        IF kids IS NULL THEN
            RETURN NULL;
        END IF;
        IF NEW.status <> 3 THEN
            why := 'parent job ' || NEW.id || CASE WHEN NEW.status = 5
                THEN ' was dead-lettered' ELSE ' was cancelled' END;
            WITH u AS (
                UPDATE {s}.jobs c SET status = 6, completed_ms = NEW.completed_ms,
                    error = why, due_ms = c.held_due_ms, held_due_ms = NULL,
                    waiting_parents = 0
                WHERE c.id = ANY(kids) AND c.status = 1 AND c.held_due_ms IS NOT NULL
                  AND c.on_parent_failure = 0
                RETURNING c.id, c.retry_count
            )
            INSERT INTO {s}.history (lsn, job_id, kind, at_ms, status, worker, attempt, note)
            SELECT nextval('{s}.lsn'), id, 'cancel', NEW.completed_ms, 6, NULL,
                   retry_count + 1, why FROM u;
        END IF;
        WITH r AS (
            UPDATE {s}.jobs c SET waiting_parents = c.waiting_parents - 1,
                due_ms = CASE WHEN c.waiting_parents = 1 THEN c.held_due_ms ELSE c.due_ms END,
                held_due_ms = CASE WHEN c.waiting_parents = 1 THEN NULL ELSE c.held_due_ms END
            WHERE c.id = ANY(kids) AND c.status = 1 AND c.held_due_ms IS NOT NULL
            RETURNING c.held_due_ms
        )
        SELECT array_agg(1) INTO kids FROM r WHERE r.held_due_ms IS NULL;
        IF kids IS NOT NULL THEN
            PERFORM pg_notify('aurora_log_' || TG_TABLE_SCHEMA, '');
        END IF;
        RETURN NULL;
    END $f$""",
    # set by the controlled claim when the job's queue or type had a concurrency limit:
    # its end wakes waiting claims (the trigger below), other jobs' ends cost nothing
    "ALTER TABLE {s}.jobs ADD COLUMN limited boolean NOT NULL DEFAULT false",
    """CREATE FUNCTION {s}.limit_full(p_scope smallint, p_name text, p_conc bigint,
                                      p_rate bigint, p_period bigint, p_now bigint)
    RETURNS boolean LANGUAGE plpgsql AS $f$
    BEGIN
        -- one query per scope, so each walks its partial index of running jobs
        IF p_conc > 0 AND p_scope = 1 AND (SELECT count(*) FROM {s}.jobs
                WHERE status = 2 AND queue = p_name) >= p_conc THEN
            RETURN true;
        END IF;
        IF p_conc > 0 AND p_scope = 2 AND (SELECT count(*) FROM {s}.jobs
                WHERE status = 2 AND job_type = p_name) >= p_conc THEN
            RETURN true;
        END IF;
        -- full when the oldest of the last p_rate claims is still inside the period
        RETURN p_rate > 0 AND coalesce((
            SELECT r.at_ms FROM {s}.rate_claims r JOIN {s}.limits l
                ON l.scope = r.scope AND l.name = r.name
            WHERE r.scope = p_scope AND r.name = p_name AND r.slot = l.rate_next % p_rate),
            p_now - p_period) > p_now - p_period;
    END $f$""",
    # The claim when a queue is paused or a limit exists. The best due job of a queue not
    # paused and of no full key is taken (SKIP LOCKED); each limited key of it is then
    # locked (a transaction advisory lock: claims of one key are serialised across every
    # process) and checked again with a fresh snapshot; a key found full is left out and
    # the next job tried. The first iteration may wait for its locks (queue key, then
    # type key); later ones, holding locks already, only try them (no deadlock).
    """CREATE FUNCTION {s}.claim_controlled(p_now bigint, p_tok text, p_worker text,
                                            p_qs text[], p_ts text[])
    RETURNS SETOF {s}.jobs LANGUAGE plpgsql
    -- walk the claim index in order (LIMIT 1), never sort every waiting job: a young
    -- table's statistics made the planner pick a bitmap scan and a sort
    SET enable_sort = off AS $f$
    DECLARE
        bq text[] := ARRAY[]::text[];
        bt text[] := ARRAY[]::text[];
        cand record;
        lim record;
        ok boolean;
        is_first boolean := true;
        k bigint;
        conc_limited boolean;
    BEGIN
        -- paused queues are left out like full ones: plain filters keep the candidate
        -- query a walk of the claim index (an anti-join made the planner sort them all)
        SELECT coalesce(array_agg(queue), ARRAY[]::text[]) INTO bq FROM {s}.paused_queues;
        FOR lim IN SELECT * FROM {s}.limits LOOP
            IF {s}.limit_full(lim.scope, lim.name, lim.concurrency, lim.rate_count,
                              lim.rate_period_ms, p_now) THEN
                IF lim.scope = 1 THEN bq := bq || lim.name; ELSE bt := bt || lim.name; END IF;
            END IF;
        END LOOP;
        LOOP
            SELECT j.id, j.queue, j.job_type INTO cand FROM {s}.jobs j
            WHERE j.status IN (1, 4) AND j.due_ms <= p_now
              AND (p_qs IS NULL OR j.queue = ANY(p_qs))
              AND (p_ts IS NULL OR j.job_type = ANY(p_ts))
              AND j.queue <> ALL(bq) AND j.job_type <> ALL(bt)
            ORDER BY j.priority DESC, j.due_ms, j.order_seq
            LIMIT 1 FOR UPDATE SKIP LOCKED;
            IF NOT FOUND THEN
                RETURN;
            END IF;
            ok := true;
            conc_limited := false;
            FOR lim IN SELECT * FROM {s}.limits l
                       WHERE (l.scope = 1 AND l.name = cand.queue)
                          OR (l.scope = 2 AND l.name = cand.job_type)
                       ORDER BY l.scope LOOP
                k := hashtextextended('{s}:' || lim.scope || ':' || lim.name, 0);
                IF is_first THEN
                    PERFORM pg_advisory_xact_lock(k);
                ELSIF NOT pg_try_advisory_xact_lock(k) THEN
                    ok := false;
                END IF;
                IF ok AND {s}.limit_full(lim.scope, lim.name, lim.concurrency,
                                         lim.rate_count, lim.rate_period_ms, p_now) THEN
                    ok := false;
                END IF;
                IF NOT ok THEN
                    IF lim.scope = 1 THEN bq := bq || lim.name; ELSE bt := bt || lim.name; END IF;
                    EXIT;
                END IF;
                conc_limited := conc_limited OR lim.concurrency > 0;
            END LOOP;
            is_first := false;
            IF ok THEN
                -- charge the rate windows of the keys (the next slot of each ring)
                WITH l AS (
                    UPDATE {s}.limits l SET rate_next = l.rate_next + 1
                    WHERE l.rate_count > 0 AND ((l.scope = 1 AND l.name = cand.queue)
                                                OR (l.scope = 2 AND l.name = cand.job_type))
                    RETURNING l.scope, l.name, (l.rate_next - 1) % l.rate_count AS slot
                )
                INSERT INTO {s}.rate_claims (scope, name, slot, at_ms)
                SELECT l.scope, l.name, l.slot, p_now FROM l
                ON CONFLICT (scope, name, slot) DO UPDATE SET at_ms = EXCLUDED.at_ms;
                RETURN QUERY
                WITH u AS (
                    UPDATE {s}.jobs j SET status = 2, token = p_tok, worker = p_worker,
                        started_ms = p_now, hb_ms = p_now, lease_dl_ms = p_now + j.lease_ms,
                        progress = NULL, progress_message = NULL, cancel_requested = false,
                        limited = conc_limited
                    WHERE j.id = cand.id
                    RETURNING j.*
                ), i AS (
                    INSERT INTO {s}.history (lsn, job_id, kind, at_ms, status, worker,
                                             attempt, note)
                    SELECT nextval('{s}.lsn'), u.id, 'claim', p_now, 2, p_worker,
                           u.retry_count + 1, NULL FROM u
                )
                SELECT * FROM u;
                RETURN;
            END IF;
        END LOOP;
    END $f$""",
    # a job claimed under a concurrency limit ended: a slot is free, wake waiting claims
    """CREATE FUNCTION {s}.limit_freed() RETURNS trigger LANGUAGE plpgsql AS $f$
    BEGIN
        PERFORM pg_notify('aurora_log_' || TG_TABLE_SCHEMA, '');
        RETURN NULL;
    END $f$""",
    """CREATE TRIGGER jobs_limit_freed AFTER UPDATE OF status ON {s}.jobs
        FOR EACH ROW WHEN (OLD.limited AND OLD.status = 2 AND NEW.status <> 2)
        EXECUTE FUNCTION {s}.limit_freed()""",
    """CREATE TRIGGER jobs_settle_children AFTER UPDATE OF status ON {s}.jobs
        FOR EACH ROW WHEN (NEW.has_children AND NEW.status IN (3, 5, 6)
                           AND OLD.status IS DISTINCT FROM NEW.status)
        EXECUTE FUNCTION {s}.settle_children()""",
]

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
    # version 4: queue control (issue 17): pause, limits, rate windows, dependencies, periodic
    # firings. Self-contained: only its own objects and
    # added columns.
    CONTROL_MIGRATION,
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
