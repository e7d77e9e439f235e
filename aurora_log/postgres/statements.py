"""The PostgreSQL backend's SQL, one string per operation, with the schema's name in it.

Every statement that changes a job appends its history row in the same statement (a
data-modifying CTE) where the operation is one statement; see queue.py for which
operations take a row lock first and decide in Python. Status codes: 1 pending, 2 running,
3 completed, 4 failed (waiting for its retry), 5 dead_letter, 6 cancelled.
"""

from __future__ import annotations

from psycopg import sql

from . import schema as S

__all__ = ["COLS", "Statements"]

COLS = ("id, job_type, queue, unique_key, payload, priority, max_retries, retry_count, "
         "status, created_ms, scheduled_ms, timeout_ms, lease_ms, started_ms, hb_ms, "
         "completed_ms, token, worker, lease_dl_ms, error, result, progress, "
         "progress_message, cancel_requested")


class Statements:
    """The queue's SQL, with the schema's name in it (a checked identifier)."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        s = sql.Identifier(schema).as_string(None)
        j, h, lsn = f"{s}.jobs", f"{s}.history", f"'{schema}.lsn'"
        self._j, self._h, self._lsn = j, h, lsn
        self.notify = sql.SQL("SELECT pg_notify({}, '')").format(
            sql.Literal(S.channel_name(schema))).as_string(None)
        self.existing_ids = f"SELECT id FROM {j} WHERE id = ANY(%s) LIMIT 1"
        self.owners = (f"SELECT unique_key, id FROM {j} WHERE unique_key = ANY(%s) "
                       "AND status IN (1, 2, 4)")
        # one row per job in input order; seq = order_seq = the enqueue's lsn
        self.enqueue = f"""
            WITH r AS (
                SELECT u.*, nextval({lsn}) AS n FROM unnest(
                    %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
                    %s::smallint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[],
                    %s::bigint[], %s::bigint[])
                AS u(id, job_type, queue, unique_key, payload, priority, max_retries,
                     created_ms, scheduled_ms, due_ms, timeout_ms, lease_ms)
            ), ins AS (
                INSERT INTO {j} (id, seq, order_seq, job_type, queue, unique_key, payload,
                                 priority, max_retries, created_ms, scheduled_ms, due_ms,
                                 timeout_ms, lease_ms)
                SELECT id, n, n, job_type, queue, unique_key, payload, priority, max_retries,
                       created_ms, scheduled_ms, due_ms, timeout_ms, lease_ms FROM r
                ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND status IN (1, 2, 4)
                DO NOTHING
                RETURNING id, seq
            ), hist AS (
                INSERT INTO {h} (lsn, job_id, kind, at_ms, status, worker, attempt, note)
                SELECT seq, id, 'enqueue', %s, 1, NULL, 1, NULL FROM ins
            )
            SELECT id FROM ins"""
        # the fast path (no unique keys): nothing is inserted, and no lsn drawn, when an id
        # exists; the NOTIFY rides in the same statement
        self.enqueue_notify = self.enqueue.replace(
            "created_ms, scheduled_ms, due_ms, timeout_ms, lease_ms)\n            ), ins AS",
            "created_ms, scheduled_ms, due_ms, timeout_ms, lease_ms)\n"
            f"                WHERE NOT EXISTS (SELECT 1 FROM {j} WHERE id = ANY(%s::text[]))\n"
            "            ), ins AS", 1).replace(
            "SELECT id FROM ins", f"""SELECT count(*), (SELECT count(*) FROM (
                    SELECT pg_notify({sql.Literal(S.channel_name(schema)).as_string(None)}, '')
                    FROM (SELECT 1 FROM ins LIMIT 1) one) n) FROM ins""")
        assert "NOT EXISTS" in self.enqueue_notify
        # the same for one job, with scalar parameters: no twelve one-element arrays to
        # encode and unnest (Queue.enqueue's common case)
        self.enqueue_one_notify = f"""
            WITH r AS (
                SELECT nextval({lsn}) AS n
                WHERE NOT EXISTS (SELECT 1 FROM {j} WHERE id = %(id)s::text)
            ), ins AS (
                INSERT INTO {j} (id, seq, order_seq, job_type, queue, payload, priority,
                                 max_retries, created_ms, scheduled_ms, due_ms, timeout_ms,
                                 lease_ms)
                SELECT %(id)s::text, n, n, %(job_type)s::text, %(queue)s::text,
                       %(payload)s::text, %(priority)s::smallint, %(max_retries)s::bigint,
                       %(created)s::bigint, %(sched)s::bigint, %(due)s::bigint,
                       %(timeout)s::bigint, %(lease)s::bigint FROM r
                RETURNING id, seq
            ), hist AS (
                INSERT INTO {h} (lsn, job_id, kind, at_ms, status, worker, attempt, note)
                SELECT seq, id, 'enqueue', %(now)s::bigint, 1, NULL, 1, NULL FROM ins
            )
            SELECT count(*), (SELECT count(*) FROM (
                    SELECT pg_notify({sql.Literal(S.channel_name(schema)).as_string(None)}, '')
                    FROM (SELECT 1 FROM ins LIMIT 1) one) n) FROM ins"""
        self.status_of = f"SELECT status FROM {j} WHERE id = %s"
        self.heartbeat = f"""
            UPDATE {j} SET hb_ms = %(now)s,
                lease_dl_ms = GREATEST(%(now)s + lease_ms, lease_dl_ms)
            WHERE id = %(id)s AND status = 2 AND token = %(tok)s RETURNING cancel_requested"""
        self.progress = f"""
            WITH u AS (
                UPDATE {j} SET hb_ms = %(now)s, progress = %(f)s, progress_message = %(m)s
                WHERE id = %(id)s AND status = 2 AND token = %(tok)s
                RETURNING id, worker, retry_count
            ), d AS (   -- history keeps the attempt's latest progress report only
                DELETE FROM {h} WHERE job_id = %(id)s AND kind = 'progress'
                  AND EXISTS (SELECT 1 FROM u)
                  AND lsn = (SELECT max(lsn) FROM {h} WHERE job_id = %(id)s)
            ), i AS (
                INSERT INTO {h} (lsn, job_id, kind, at_ms, status, worker, attempt, note)
                SELECT nextval({lsn}), id, 'progress', %(now)s, 2, worker, retry_count + 1,
                       %(note)s FROM u
            )
            SELECT count(*) FROM u"""
        self.complete = f"""
            WITH u AS (
                UPDATE {j} SET status = 3, completed_ms = %(now)s, result = %(res)s,
                       error = NULL, token = NULL, lease_dl_ms = NULL
                WHERE id = %(id)s AND status = 2 AND token = %(tok)s
                RETURNING id, worker, retry_count
            ), i AS (
                INSERT INTO {h} (lsn, job_id, kind, at_ms, status, worker, attempt, note)
                SELECT nextval({lsn}), id, 'complete', %(now)s, 3, worker, retry_count + 1,
                       NULL FROM u
            )
            SELECT count(*) FROM u"""
        # a claimed job handed back (Queue.release): pending and due now with its retry count
        # unchanged, or cancelled if a cancel had been requested; fenced by the token
        self.release = f"""
            WITH u AS (
                UPDATE {j} SET
                    status = CASE WHEN cancel_requested THEN 6 ELSE 1 END,
                    token = NULL, lease_dl_ms = NULL,
                    due_ms = CASE WHEN cancel_requested THEN due_ms ELSE %(now)s END,
                    -- as a retry shows its due time (and the local store the release's)
                    scheduled_ms = CASE WHEN cancel_requested THEN scheduled_ms
                                        ELSE %(now)s END,
                    order_seq = CASE WHEN cancel_requested THEN order_seq
                                     ELSE nextval({lsn}) END,
                    completed_ms = CASE WHEN cancel_requested THEN %(now)s
                                        ELSE completed_ms END
                WHERE id = %(id)s AND status = 2 AND token = %(tok)s
                RETURNING id, worker, retry_count, status
            ), i AS (
                INSERT INTO {h} (lsn, job_id, kind, at_ms, status, worker, attempt, note)
                SELECT nextval({lsn}), id, 'release', %(now)s, status, worker, retry_count + 1,
                       NULL FROM u
            )
            SELECT status FROM u"""
        self.lock_running = (f"SELECT retry_count, max_retries, cancel_requested FROM {j} "
                             "WHERE id = %s AND status = 2 AND token = %s FOR UPDATE")
        # ends of attempts, fenced by the token; due NULL = finished (dead/cancelled)
        self.end_attempts = f"""
            WITH e AS (
                -- lsns in the order given (the reap's order: FIFO positions of retries)
                SELECT e.*, nextval({lsn}) AS n FROM unnest(
                    %(ids)s::text[], %(toks)s::text[], %(sts)s::smallint[],
                    %(dues)s::bigint[], %(errs)s::text[]) WITH ORDINALITY
                    AS e(id, tok, st, due, err, ord)
                ORDER BY e.ord
            ), u AS (
                UPDATE {j} j SET
                    status = e.st, error = e.err, token = NULL, lease_dl_ms = NULL,
                    retry_count = j.retry_count + (e.due IS NOT NULL)::int,
                    scheduled_ms = CASE WHEN e.due IS NOT NULL THEN e.due ELSE j.scheduled_ms END,
                    due_ms = CASE WHEN e.due IS NOT NULL THEN e.due ELSE j.due_ms END,
                    order_seq = e.n,
                    completed_ms = CASE WHEN e.due IS NULL THEN %(now)s ELSE j.completed_ms END
                FROM e WHERE j.id = e.id AND j.status = 2 AND j.token = e.tok
                RETURNING j.id, j.worker, j.retry_count - (e.due IS NOT NULL)::int AS retry,
                          e.n, e.st, e.err
            ), i AS (
                INSERT INTO {h} (lsn, job_id, kind, at_ms, status, worker, attempt, note)
                SELECT n, id, %(kind)s, %(now)s, st, worker, retry + 1, err FROM u
            )
            SELECT count(*) FROM u"""
        # the order a reap pass ends them in, as the local engine's heaps: timeouts first
        # by started + timeout, then expired leases by deadline, ties by id (byte order,
        # as Python compares str). Each end takes the next lsn as its FIFO position, so
        # this order is the claim order of jobs it retries at the same due time.
        timed_out = "(timeout_ms IS NOT NULL AND started_ms + timeout_ms < %(at)s)"
        self.expired = f"""
            SELECT id, token, retry_count, max_retries, cancel_requested,
                   {timed_out} AS timed_out
            FROM {j}
            WHERE status = 2 AND (lease_dl_ms < %(at)s OR {timed_out})
            ORDER BY {timed_out} DESC,
                     CASE WHEN {timed_out} THEN started_ms + timeout_ms ELSE lease_dl_ms END,
                     id COLLATE "C"
            LIMIT %(limit)s FOR UPDATE SKIP LOCKED"""
        self.lock_job = (f"SELECT status, cancel_requested, unique_key FROM {j} "
                         "WHERE id = %s FOR UPDATE")
        self.cancel_waiting = f"""
            WITH u AS (
                UPDATE {j} SET status = 6, completed_ms = %(now)s WHERE id = %(id)s
                RETURNING id, retry_count
            )
            INSERT INTO {h} (lsn, job_id, kind, at_ms, status, worker, attempt, note)
            SELECT nextval({lsn}), id, 'cancel', %(now)s, 6, NULL, retry_count + 1, NULL
            FROM u"""
        self.cancel_request = f"""
            WITH u AS (
                UPDATE {j} SET cancel_requested = true WHERE id = %(id)s
                RETURNING id, worker, retry_count
            )
            INSERT INTO {h} (lsn, job_id, kind, at_ms, status, worker, attempt, note)
            SELECT nextval({lsn}), id, 'cancel_request', %(now)s, 2, worker,
                   retry_count + 1, NULL FROM u"""
        self.retry_dead = f"""
            WITH n AS (SELECT nextval({lsn}) AS n), u AS (
                UPDATE {j} SET status = 1, retry_count = 0, scheduled_ms = NULL,
                       due_ms = %(now)s, order_seq = (SELECT n FROM n), completed_ms = NULL,
                       cancel_requested = false
                WHERE id = %(id)s RETURNING id
            )
            INSERT INTO {h} (lsn, job_id, kind, at_ms, status, worker, attempt, note)
            SELECT (SELECT n FROM n), id, 'retry_dead', %(now)s, 1, NULL, 1, NULL FROM u"""
        self.purge = f"""
            WITH d AS (
                DELETE FROM {j} WHERE status = ANY(%s::smallint[]) AND completed_ms < %s
                RETURNING id
            ), dh AS (
                DELETE FROM {h} WHERE job_id IN (SELECT id FROM d)
            )
            SELECT count(*) FROM d"""
        self.bump_lsn = f"SELECT nextval({lsn})"
        self.last_lsn = f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {s}.lsn"
        self.get = f"SELECT {COLS} FROM {j} WHERE id = %s"
        self.seq_of = f"SELECT seq FROM {j} WHERE id = %s"
        self.list_jobs = f"""
            SELECT {COLS} FROM {j}
            WHERE seq > %(after)s
              AND (%(st)s::smallint IS NULL OR status = %(st)s)
              AND (%(q)s::text IS NULL OR queue = %(q)s)
              AND (%(t)s::text IS NULL OR job_type = %(t)s)
            ORDER BY seq LIMIT %(limit)s"""
        self.stats = f"SELECT queue, status, count(*) FROM {j} GROUP BY queue, status"
        self.history = (f"SELECT lsn, kind, at_ms, status, worker, attempt, note FROM {h} "
                        "WHERE job_id = %s ORDER BY lsn")
        self.import_job = f"""
            WITH n AS (SELECT nextval({lsn}) AS n)
            INSERT INTO {j} (id, seq, order_seq, job_type, queue, unique_key, payload,
                priority, max_retries, retry_count, status, created_ms, scheduled_ms, due_ms,
                timeout_ms, lease_ms, started_ms, hb_ms, completed_ms, token, worker,
                lease_dl_ms, error, result, progress, progress_message, cancel_requested)
            SELECT %(id)s, n, n, %(job_type)s, %(queue)s, %(ukey)s, %(payload)s, %(prio)s,
                %(max_retries)s, %(retry)s, %(status)s, %(created)s, %(sched)s, %(due)s,
                %(timeout)s, %(lease)s, %(started)s, %(hb)s, %(completed)s, %(token)s,
                %(worker)s, %(lease_dl)s, %(error)s, %(result)s, %(progress)s, %(pmsg)s,
                %(cancel)s FROM n"""
        self.import_history = (f"INSERT INTO {h} (lsn, job_id, kind, at_ms, status, worker, "
                               f"attempt, note) VALUES (nextval({lsn}), %s, %s, %s, %s, %s, "
                               "%s, %s)")
        self._claims: dict[str, str] = {}
        self._dues: dict[str, str] = {}

    def claim(self, filters: str) -> str:
        """The claim statement for a filter clause (cached per clause)."""
        q = self._claims.get(filters)
        if q is None:
            j, h, lsn = self._j, self._h, self._lsn
            q = self._claims[filters] = f"""
                WITH c AS (
                    SELECT id FROM {j}
                    WHERE status IN (1, 4) AND due_ms <= %(now)s{filters}
                    ORDER BY priority DESC, due_ms, order_seq
                    LIMIT 1 FOR UPDATE SKIP LOCKED
                ), u AS (
                    UPDATE {j} j SET status = 2, token = %(tok)s, worker = %(w)s,
                           started_ms = %(now)s, hb_ms = %(now)s,
                           lease_dl_ms = %(now)s + j.lease_ms, progress = NULL,
                           progress_message = NULL, cancel_requested = false
                    FROM c WHERE j.id = c.id
                    RETURNING {", ".join("j." + c.strip() for c in COLS.split(","))}
                ), i AS (
                    INSERT INTO {h} (lsn, job_id, kind, at_ms, status, worker, attempt, note)
                    SELECT nextval({lsn}), id, 'claim', %(now)s, 2, %(w)s, retry_count + 1,
                           NULL FROM u
                )
                SELECT * FROM u"""
        return q

    def claim_guarded(self, filters: str) -> str:
        """The claim statement that takes nothing while a queue is paused or a limit
        exists (queue control, postgres/control.py: the controlled claim runs then)."""
        key = "guarded" + filters
        q = self._claims.get(key)
        if q is None:
            s = self._j.rsplit(".", 1)[0]
            plain = self.claim(filters)
            anchor = f"WHERE status IN (1, 4) AND due_ms <= %(now)s{filters}"
            assert anchor in plain
            q = self._claims[key] = plain.replace(anchor, anchor + (
                f" AND NOT EXISTS (SELECT 1 FROM {s}.paused_queues)"
                f" AND NOT EXISTS (SELECT 1 FROM {s}.limits)"), 1)
        return q

    def next_due(self, filters: str) -> str:
        """The earliest due time among waiting jobs (bounds a blocked claim's sleep)."""
        q = self._dues.get(filters)
        if q is None:
            q = self._dues[filters] = (f"SELECT min(due_ms) FROM {self._j} "
                                       f"WHERE status IN (1, 4){filters}")
        return q
