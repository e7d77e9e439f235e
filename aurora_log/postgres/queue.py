"""PostgresQueue: the queue API on PostgreSQL, with the local store's semantics.

Every operation is one transaction (mostly one statement: data-modifying CTEs update the
job and append its history row together). Claims take the best due job with
``SELECT ... ORDER BY priority DESC, due_ms, order_seq LIMIT 1 FOR UPDATE SKIP LOCKED`` on
the partial index ``jobs_claim`` (waiting jobs only), so many workers on many machines claim
without blocking each other. Every UPDATE of a running job is fenced by its attempt token
(``WHERE status = 2 AND token = ...``): a late complete, a second reaper, a worker whose
lease expired all find no row and raise StaleLeaseError (or skip it, for the reaper).

Times are epoch milliseconds from the client's ``clock`` (like the local store's records):
machines sharing a database need synchronised clocks. History positions (``lsn``) come from
one sequence per schema; they order a job's transitions, and ``stats()["last_lsn"]`` is the
newest one handed out.

Retry backoff and every decision the local store's planner makes (lease deadline, the
verdict after a failed attempt: retry / dead letter / cancelled) are made here in Python
with aurora_log.job's functions, inside the transaction that holds the row lock.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

import psycopg

from ..errors import (
    ClosedError,
    ConnectionLostError,
    InvalidStateError,
    JobNotFoundError,
    StaleLeaseError,
)
from ..interface import (QueueInterface, Transition, check_progress, error_text,
                         check_job_id, check_names, check_queue_options, token_bytes)
from ..bulk import BulkRequest, bulk_request, check_bulk_call
from ..job import (payload_bytes, scheduled_ms, check_new_job, new_ids,
    MAX_DUE_MS,
    STATUS_CODES,
    MAX_NAME_CHARS,
    Job,
    JobPriority,
    JobStatus,
    check_text,
    decode_json,
    encode_json,
    encode_payload,
    from_ms,
    retry_delay_ms,
    to_ms,
)
from . import schema as S
from .connection import is_dsn, lost, make_pool, redact
from .control import ControlMixin, ControlStatements
from .listener import Listener
from .statements import Statements

__all__ = ["PostgresQueue"]

log = logging.getLogger("aurora_log.postgres")

PENDING, RUNNING, COMPLETED, FAILED, DEAD_LETTER, CANCELLED = STATUS_CODES
_FINISHED = (COMPLETED, DEAD_LETTER, CANCELLED)
_STATUS = {s.code: s for s in JobStatus}
_PRIO = (None,) + tuple(JobPriority)
_REASON_LEASE, _REASON_TIMEOUT = "lease expired", "timeout"


def _scalar(cur: psycopg.Cursor) -> Any:
    """The first column of the one row a statement returns."""
    row = cur.fetchone()
    assert row is not None, "the statement returns one row"
    return row[0]


def _secs(ms: int) -> float:
    return ms // 1000 if ms % 1000 == 0 else ms / 1000


def _job_from_row(row: tuple) -> Job:
    """A Job as the local store shows it (same fields set, same None rules)."""
    (job_id, job_type, queue, ukey, payload, prio, max_retries, retry, status, created,
     sched, timeout, lease, started, hb, completed, token, worker, lease_dl, error, result,
     progress, pmsg, cancel_req) = row
    j = Job._raw()
    j.id, j.job_type, j.queue, j.unique_key = job_id, job_type, queue, ukey
    j.payload = decode_json(payload.encode())
    j.priority = _PRIO[prio]
    j.max_retries = max_retries
    j.created_at = from_ms(created)
    j.timeout_seconds = _secs(timeout) if timeout else None
    j.lease_duration = _secs(lease)
    j.status = _STATUS[status]
    j.retry_count = retry
    j.scheduled_at = from_ms(sched) if sched is not None else None
    j.started_at = from_ms(started) if started is not None else None
    j.completed_at = from_ms(completed) if completed is not None and status in _FINISHED \
        else None
    j.last_heartbeat = from_ms(hb) if hb is not None else None
    running = status == RUNNING
    j.token = token if running else None
    j.lease_deadline = from_ms(lease_dl) if running else None
    j.worker_id = worker
    j.error = error
    j.result = decode_json(result.encode()) if result is not None else None
    j.progress = progress
    j.progress_message = pmsg
    j.cancel_requested = bool(cancel_req)
    return j


class PostgresQueue(ControlMixin, QueueInterface):
    """A job queue stored in PostgreSQL (schema ``schema``, default "aurora_log").

    Options: ``clock`` (seconds since the epoch; every machine's clock must agree),
    ``reaper_interval`` (seconds; None disables the background reaper, ``reap()`` still
    works; running it on many machines at once is safe), ``max_payload_bytes`` (also bounds
    results), ``retry_base`` / ``retry_cap`` / ``retry_jitter`` (the backoff, see
    aurora_log.job), ``pool_size`` (connections), ``migrate`` (create/upgrade the schema
    on open; with False, open fails unless ``aurora-log migrate`` ran).
    """

    recovered = 0   # the local store's open-time recovery; here leases and the reaper do it

    def __init__(self, dsn: str, *, schema: str = "aurora_log",
                 clock: Callable[[], float] = time.time, reaper_interval: float | None = 1.0,
                 max_payload_bytes: int = 1 << 20, retry_base: float = 5.0,
                 retry_cap: float = 3600.0, retry_jitter: float = 0.0, pool_size: int = 10,
                 migrate: bool = True, connect_timeout: float = 30.0):
        if not is_dsn(dsn):
            raise ValueError("dsn must be a postgresql:// (or postgres://) URI")
        self.schema = S.check_schema_name(schema)
        check_queue_options(clock, reaper_interval, max_payload_bytes, retry_base, retry_cap,
                            retry_jitter)
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size must be an int >= 1, got {pool_size!r}")
        self._dsn = dsn
        self._clock = clock
        self._max_payload = max_payload_bytes
        self._retry = (retry_base, retry_cap, retry_jitter)
        self._closed = False
        self._channel = S.channel_name(self.schema)
        self._sql = Statements(self.schema)
        self._ctl = ControlStatements(self.schema)
        self._schedules = {}                # name -> local.cron.Periodic (this process)
        self._controls_seen = False         # the last claim met a pause or a limit
        self._listener: Listener | None = None
        self._listener_lock = threading.Lock()
        self._pool = make_pool(dsn, max_size=pool_size, timeout=connect_timeout)
        try:
            with lost(), self._pool.connection() as conn:
                if migrate:
                    S.migrate(conn, self.schema)
                elif S.current_version(conn, self.schema) != S.LATEST_VERSION:
                    raise InvalidStateError(
                        f"schema {self.schema!r} is not at version {S.LATEST_VERSION}: "
                        "run `aurora-log migrate DSN`")
        except BaseException:
            self._pool.close()
            raise
        self._stop = threading.Event()
        self._reaper = None
        if reaper_interval is not None:
            self._reaper = threading.Thread(target=self._reaper_loop, args=(reaper_interval,),
                                            name="aurora-log-pg-reaper", daemon=True)
            self._reaper.start()

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Stop the reaper and the listener (blocked claims return None), close the pool.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        with self._listener_lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.close(poke=self._poke_listener)
        if self._reaper is not None and self._reaper is not threading.current_thread():
            self._reaper.join()
        self._pool.close()

    def _poke_listener(self) -> None:
        with self._pool.connection(timeout=1.0) as conn:
            conn.execute(self._sql.notify)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def path(self) -> str:
        """Where the queue lives (the DSN without its password, and the schema)."""
        return f"{redact(self._dsn)} schema={self.schema}"

    def flush(self) -> None:
        """Nothing to do: every acknowledged operation was committed (synchronous_commit)."""
        self._check_open()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the queue is closed")

    def _now_ms(self) -> int:
        return round(self._clock() * 1000)

    def _delay(self, retry_count: int) -> int:
        base, cap, jitter = self._retry
        return retry_delay_ms(retry_count, base=base, cap=cap, jitter=jitter)

    @contextlib.contextmanager
    def _tx(self, durable: bool = True) -> Iterator[psycopg.Cursor]:
        """A pooled connection, one transaction, a cursor. A cut connection raises
        ConnectionLostError (the server rolls the transaction back); the pool drops the
        broken connection. ``durable=False``: synchronous_commit off for this one."""
        with lost(), self._pool.connection() as conn, conn.transaction():
            cur = conn.cursor()
            if not durable:
                cur.execute("SET LOCAL synchronous_commit = off")
            yield cur

    @contextlib.contextmanager
    def _conn(self) -> Iterator[psycopg.Cursor]:
        """A pooled connection in autocommit, for an operation whose write is ONE
        statement (atomic on its own: no BEGIN/COMMIT round trips) or that only reads."""
        with lost(), self._pool.connection() as conn:
            yield conn.cursor()

    # ------------------------------------------------------------------ producers

    def _row(self, job: Job, now: int) -> tuple:
        """Validate a Job (its attributes may have been set directly) and return its row
        values. TypeError/ValueError; nothing is written."""
        check_new_job(job)
        prio, timeout, lease = job.priority, job.timeout_seconds, job.lease_duration
        created = to_ms(job.created_at, "created_at")
        sched = scheduled_ms(job)
        payload = payload_bytes(job, self._max_payload)
        timeout_ms = None if timeout is None else round(timeout * 1000)
        due = now if sched is None else sched
        return (job.id, job.job_type, job.queue, job.unique_key, payload.decode("utf-8"),
                int(prio), job.max_retries, created, sched, due, timeout_ms,
                round(lease * 1000))

    def enqueue(self, job: Job, *, durable: bool = True) -> str:
        """Add a job; returns its id. With a unique_key held by a live job, returns that
        job's id and adds nothing. Returns after the commit (``durable=False``: with
        synchronous_commit off for this transaction)."""
        return self.enqueue_many((job,), durable=durable)[0]

    def enqueue_many(self, jobs: Any, payloads: Any = None, /, *, durable: bool = True,
                     **options: Any) -> list[str]:
        """Add many jobs atomically (all or none, one transaction). Returns their ids in
        order (an existing live job's id for a unique_key already taken, also within the
        batch). ``enqueue_many(jobs)`` takes Jobs; ``enqueue_many(job_type, payloads,
        **options)`` is the bulk form (see QueueInterface.enqueue_many): its rows are made
        straight from the payloads, then written as the Job form's are."""
        if check_bulk_call(jobs, payloads, options):
            req = bulk_request(jobs, payloads, self._max_payload, **options)
            now = self._now_ms()
            return self._insert_rows(None, self._bulk_rows(req, now), now, durable)
        if isinstance(jobs, Job):
            raise TypeError("enqueue_many takes an iterable of Jobs; use enqueue for one")
        jobs = list(jobs)
        now = self._now_ms()
        return self._insert_rows(jobs, [self._row(j, now) for j in jobs], now, durable)

    @staticmethod
    def _bulk_rows(req: BulkRequest, now: int) -> list[tuple]:
        """The rows of a bulk request (as _row makes them from Jobs): ids drawn for the
        whole batch, created and enqueued at ``now``."""
        ids = new_ids(len(req.payloads))
        keys = req.unique_keys if req.unique_keys is not None else [None] * len(ids)
        due = now if req.scheduled_ms is None else req.scheduled_ms
        fixed = (req.priority, req.max_retries, now, req.scheduled_ms, due, req.timeout_ms,
                 req.lease_ms)
        return [(job_id, req.job_type, req.queue, key, payload.decode("utf-8")) + fixed
                for job_id, key, payload in zip(ids, keys, req.payloads, strict=True)]

    def _insert_rows(self, jobs: list[Job] | None, rows: list[tuple], now: int,
                     durable: bool) -> list[str]:
        """Write checked rows atomically (``jobs``: the Jobs they came from, for their
        parents; None for the bulk form, which has none). Returns the ids, as
        enqueue_many."""
        seen: set[str] = set()
        for r in rows:
            if r[0] in seen:
                raise ValueError(f"a job with id {r[0]!r} already exists")
            seen.add(r[0])
        self._check_open()
        if not rows:
            return []
        if jobs is not None and any(j.depends_on for j in jobs):
            return self._enqueue_with_deps(jobs, rows, now, durable)
        if durable and all(r[3] is None for r in rows):
            # the common case, one statement (insert, history, NOTIFY): atomic by itself
            ids = [r[0] for r in rows]
            try:
                with self._conn() as cur:
                    if len(rows) == 1:
                        n = _scalar(cur.execute(self._sql.enqueue_one_notify,
                                                _one_row_args(rows[0], now)))
                    else:
                        columns = [builtins.list(c) for c in zip(*rows, strict=True)]
                        n = _scalar(cur.execute(self._sql.enqueue_notify,
                                                columns + [ids, now]))
                    if n != len(rows):
                        dup = cur.execute(self._sql.existing_ids, (ids,)).fetchone()
                        raise ValueError(f"a job with id {dup[0] if dup else '?'!r} "
                                         "already exists")
            except psycopg.errors.UniqueViolation as e:   # a concurrent enqueue of that id
                raise ValueError(f"a job with that id already exists "
                                 f"({e.diag.message_detail})") from None
            return ids
        inserted: set[str] = set()
        with self._tx(durable) as cur:
            dup = cur.execute(self._sql.existing_ids, ([r[0] for r in rows],)).fetchone()
            if dup is not None:
                raise ValueError(f"a job with id {dup[0]!r} already exists")
            for _round in range(100):
                keys = list({r[3] for r in rows if r[3] is not None and r[0] not in inserted})
                owners = dict(cur.execute(self._sql.owners, (keys,)).fetchall()) if keys else {}
                todo, first = [], {}
                for r in rows:
                    k = r[3]
                    if r[0] in inserted:
                        continue
                    if k is not None:
                        if k in owners or k in first:
                            continue
                        first[k] = r[0]
                    todo.append(r)
                if not todo:
                    break
                columns = [list(c) for c in zip(*todo, strict=True)]
                got = {x[0] for x in cur.execute(self._sql.enqueue, columns + [now]).fetchall()}
                inserted |= got
                if len(got) == len(todo):
                    break
                # a concurrent enqueuer took a unique key after we looked: look again
            else:  # pragma: no cover - a hundred lost races in a row
                raise ConnectionLostError("unique-key races did not settle; try again")
            if inserted:
                cur.execute(self._sql.notify)
        owner_of = {**owners, **first}
        return [r[0] if r[0] in inserted else owner_of[r[3]] for r in rows]

    # ------------------------------------------------------------------ workers

    def claim(self, worker_id: str, *, job_types=None, queues=None,
              wait: float | None = None) -> Job | None:
        """The best due job (priority desc, due time, FIFO) as RUNNING, with ``job.token``
        and ``job.lease_deadline``; or None. ``wait`` (seconds) blocks until a NOTIFY says
        a job became claimable, the next scheduled/retry time comes, or the wait ends."""
        check_text(worker_id, "worker_id", MAX_NAME_CHARS)
        types = check_names(job_types, "job_types")
        qs = check_names(queues, "queues")
        end = None
        if wait is not None:
            if isinstance(wait, bool) or not isinstance(wait, (int, float)) or wait < 0:
                raise ValueError(f"wait must be a number of seconds >= 0, got {wait!r}")
            end = time.monotonic() + wait
        self._check_open()
        filters, args = self._filters(types, qs)
        listener = self._get_listener() if end is not None and wait else None
        waited = False
        while True:
            if self._closed:
                if waited:
                    return None          # closed while we waited: a clean shutdown
                raise ClosedError("the queue is closed")
            gen = listener.generation if listener is not None else 0
            now = self._now_ms()
            token = os.urandom(8).hex()
            with self._conn() as cur:
                row = self._claim_row(cur, filters,
                                      {"now": now, "tok": token, "w": worker_id, **args})
            if row is not None:
                return _job_from_row(row)
            if end is None or listener is None:
                return None
            remaining = end - time.monotonic()
            if remaining <= 0:
                return None
            with self._conn() as cur:   # past due times a pause or a limit holds: not here
                due = _scalar(cur.execute(self._ctl.next_due, {
                    "now": now, "qs": args.get("qs"), "ts": args.get("ts")}))
            if due is not None:
                remaining = min(remaining, max((due - now) / 1000.0, 0.001))
            listener.wait(gen, remaining)
            waited = True

    @staticmethod
    def _filters(types, qs) -> tuple[str, dict]:
        parts, args = [], {}
        if qs is not None:
            parts.append(" AND queue = ANY(%(qs)s)")
            args["qs"] = sorted(qs)
        if types is not None:
            parts.append(" AND job_type = ANY(%(ts)s)")
            args["ts"] = sorted(types)
        return "".join(parts), args

    def _get_listener(self) -> Listener:
        with self._listener_lock:
            if self._listener is None:
                self._check_open()
                self._listener = Listener(self._dsn, self._channel)
            listener = self._listener
        listener.wait_ready(10.0)
        return listener

    def _stale(self, cur, job_id: str) -> Exception:
        """The error for a fenced UPDATE that found no row."""
        row = cur.execute(self._sql.status_of, (job_id,)).fetchone()
        if row is None:
            return JobNotFoundError(f"no job with id {job_id!r}")
        return StaleLeaseError(f"job {job_id} is {_STATUS[row[0]].value}; the attempt token "
                               "does not hold its lease")

    def heartbeat(self, job_id: str, token: str) -> bool:
        """Extend the lease (to now + lease_duration). Returns True if a cancel was
        requested. StaleLeaseError if the token no longer holds the job."""
        job_id, tok = check_job_id(job_id), token_bytes(token).hex()
        self._check_open()
        with self._conn() as cur:
            row = cur.execute(self._sql.heartbeat,
                              {"now": self._now_ms(), "id": job_id, "tok": tok}).fetchone()
            if row is None:
                raise self._stale(cur, job_id)
        return bool(row[0])

    def progress(self, job_id: str, token: str, fraction: float,
                 message: str | None = None) -> None:
        """Report progress (0.0..1.0, optional message); history keeps the attempt's latest
        report. Does not extend the lease."""
        job_id, tok = check_job_id(job_id), token_bytes(token).hex()
        check_progress(fraction, message)
        note = f"{fraction:.0%}" + (f" {message}" if message else "")
        self._check_open()
        with self._conn() as cur:
            n = _scalar(cur.execute(self._sql.progress, {"now": self._now_ms(), "id": job_id,
                                                 "tok": tok, "f": float(fraction),
                                                 "m": message, "note": note}))
            if not n:
                raise self._stale(cur, job_id)

    def complete(self, job_id: str, token: str, result: Any = None, *,
                 durable: bool = True) -> None:
        """Mark the attempt's job COMPLETED with an optional JSON ``result``."""
        job_id, tok = check_job_id(job_id), token_bytes(token).hex()
        res = None if result is None else encode_json(result, "result")
        if res is not None and len(res) > self._max_payload:
            raise ValueError(f"result is {len(res)} bytes encoded; the limit is "
                             f"{self._max_payload} (max_payload_bytes)")
        self._check_open()
        with (self._conn() if durable else self._tx(False)) as cur:
            n = _scalar(cur.execute(self._sql.complete, {
                "now": self._now_ms(), "id": job_id, "tok": tok,
                "res": None if res is None else res.decode("utf-8")}))
            if not n:
                raise self._stale(cur, job_id)

    def _verdict(self, retry: int, max_retries: int, cancel_req: bool,
                 now: int) -> tuple[int, int | None]:
        """(new status, next due) after a failed or reaped attempt: the local planner's rule."""
        if cancel_req:
            return CANCELLED, None
        if retry < max_retries:
            return FAILED, min(now + self._delay(retry), MAX_DUE_MS)
        return DEAD_LETTER, None

    def fail(self, job_id: str, token: str, error: str, *, durable: bool = True) -> JobStatus:
        """Record a failed attempt. Returns FAILED (a retry is scheduled after the backoff),
        DEAD_LETTER (retries spent) or CANCELLED (a cancel had been requested). Errors over
        64 KiB are truncated."""
        job_id, tok = check_job_id(job_id), token_bytes(token).hex()
        error = error_text(error).replace("\x00", "\ufffd")    # PostgreSQL text holds no NUL
        self._check_open()
        now = self._now_ms()
        with self._tx(durable) as cur:
            row = cur.execute(self._sql.lock_running, (job_id, tok)).fetchone()
            if row is None:
                raise self._stale(cur, job_id)
            retry, max_retries, cancel_req = row
            status, due = self._verdict(retry, max_retries, cancel_req, now)
            self._end_attempts(cur, [(job_id, tok, status, due, error)], now, "fail")
        return _STATUS[status]

    def release(self, job_id: str, token: str) -> JobStatus:
        """Hand a claimed job back: RUNNING -> PENDING, due now, without spending an attempt
        (its retry count is unchanged), recorded in the history as "release"; CANCELLED
        instead if a cancel had been requested. StaleLeaseError if the token no longer
        holds the job's lease. Durable when it returns."""
        job_id, tok = check_job_id(job_id), token_bytes(token).hex()
        self._check_open()
        with self._tx(True) as cur:
            row = cur.execute(self._sql.release,
                              {"now": self._now_ms(), "id": job_id, "tok": tok}).fetchone()
            if row is None:
                raise self._stale(cur, job_id)
            if row[0] == PENDING:
                cur.execute(self._sql.notify)
        return _STATUS[row[0]]

    def _end_attempts(self, cur, ends: list[tuple], now: int, kind: str) -> int:
        """Apply fenced ends of attempts (job id, token, status, due, error): a retry
        (FAILED for fail, PENDING for reap) waits until due; history rows; NOTIFY if a job
        became waiting. Returns how many applied."""
        cols = list(zip(*ends, strict=True))
        n = _scalar(cur.execute(self._sql.end_attempts, {
            "ids": list(cols[0]), "toks": list(cols[1]), "sts": list(cols[2]),
            "dues": list(cols[3]), "errs": list(cols[4]), "now": now, "kind": kind}
        ))
        if any(st in (FAILED, PENDING) for st in cols[2]):
            cur.execute(self._sql.notify)
        return n

    # ------------------------------------------------------------------ operators

    def cancel(self, job_id: str) -> JobStatus:
        """Cancel a pending, scheduled or failed (retry-waiting) job -> CANCELLED. For a
        running job, request cancellation (its next heartbeat returns True; a fail or an
        expired lease then ends it CANCELLED) and return RUNNING. InvalidStateError for a
        finished job."""
        job_id = check_job_id(job_id)
        self._check_open()
        with self._tx() as cur:
            row = cur.execute(self._sql.lock_job, (job_id,)).fetchone()
            if row is None:
                raise JobNotFoundError(f"no job with id {job_id!r}")
            status, cancel_req, _ukey = row
            now = self._now_ms()
            if status in (PENDING, FAILED):
                cur.execute(self._sql.cancel_waiting, {"now": now, "id": job_id})
                return JobStatus.CANCELLED
            if status == RUNNING:
                if not cancel_req:
                    cur.execute(self._sql.cancel_request, {"now": now, "id": job_id})
                return JobStatus.RUNNING
        raise InvalidStateError(f"job {job_id} is {_STATUS[status].value}; only pending, "
                                "scheduled, failed or running jobs can be cancelled")

    def retry_dead(self, job_id: str) -> None:
        """Re-drive a dead-lettered job: PENDING now, retry_count reset to 0."""
        job_id = check_job_id(job_id)
        self._check_open()
        with self._tx() as cur:
            row = cur.execute(self._sql.lock_job, (job_id,)).fetchone()
            if row is None:
                raise JobNotFoundError(f"no job with id {job_id!r}")
            status, _cancel, ukey = row
            if status != DEAD_LETTER:
                raise InvalidStateError(f"job {job_id} is {_STATUS[status].value}, "
                                        "not dead_letter")
            if ukey is not None:
                owner = cur.execute(self._sql.owners, ([ukey],)).fetchone()
                if owner is not None:
                    raise InvalidStateError(f"job {owner[1]} with the same unique_key "
                                            f"{ukey!r} is live; cannot re-drive {job_id}")
            try:
                cur.execute(self._sql.retry_dead, {"now": self._now_ms(), "id": job_id})
            except psycopg.errors.UniqueViolation:
                raise InvalidStateError(f"a job with the same unique_key {ukey!r} became "
                                        f"live; cannot re-drive {job_id}") from None
            cur.execute(self._sql.notify)

    def purge(self, status: JobStatus | str | None = None, older_than: float | None = None,
              *, before: datetime | None = None) -> int:
        """Drop finished jobs (completed, dead-lettered, cancelled; or only ``status``) that
        finished more than ``older_than`` seconds ago (or before ``before``), with their
        history. Returns how many."""
        statuses = [COMPLETED, DEAD_LETTER, CANCELLED]
        if status is not None:
            st = JobStatus(status)
            if not st.is_finished:
                raise ValueError(f"only finished jobs can be purged, not {st.value}")
            statuses = [st.code]
        if older_than is not None and before is not None:
            raise ValueError("give older_than or before, not both")
        if older_than is not None and (isinstance(older_than, bool) or
                                       not isinstance(older_than, (int, float)) or
                                       older_than < 0 or not math.isfinite(older_than)):
            raise ValueError(f"older_than must be seconds >= 0, got {older_than!r}")
        before_ms = to_ms(before, "before") if before is not None else None
        self._check_open()
        now = self._now_ms()
        cut = before_ms if before_ms is not None else \
            now - int((older_than or 0) * 1000) + (0 if older_than else 1)
        with self._tx() as cur:
            n = _scalar(cur.execute(self._sql.purge, (statuses, cut)))
            if n:
                cur.execute(self._sql.bump_lsn)     # like the local PURGE record
        return int(n)

    def reap(self, now: datetime | float | None = None) -> int:
        """Expire leases (now > deadline) and timeouts (now > started + timeout): each job
        goes back to pending after the backoff with retry_count + 1, or to dead-letter when
        its retries are spent (CANCELLED if a cancel was requested). Returns how many.
        Safe on many machines at once: rows are taken with SKIP LOCKED and every update
        is fenced by the attempt token."""
        if now is None:
            now_ms = None
        elif isinstance(now, datetime):
            now_ms = to_ms(now, "now")
        elif isinstance(now, (int, float)) and not isinstance(now, bool):
            now_ms = round(now * 1000)
        else:
            raise TypeError("now must be a datetime, epoch seconds or None")
        self._check_open()
        total = 0
        while True:
            at = self._now_ms() if now_ms is None else now_ms
            with self._tx() as cur:
                rows = cur.execute(self._sql.expired, {"at": at, "limit": 1000}).fetchall()
                if not rows:
                    return total
                ends = []
                for job_id, tok, retry, max_retries, cancel_req, timed_out in rows:
                    status, due = self._verdict(retry, max_retries, cancel_req, at)
                    if status == FAILED:
                        status = PENDING          # a reaped attempt waits as pending
                    ends.append((job_id, tok, status, due,
                                 _REASON_TIMEOUT if timed_out else _REASON_LEASE))
                total += self._end_attempts(cur, ends, at, "reap")

    def _reaper_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.reap()
                if self._schedules:
                    self.run_periodic()
            except ClosedError:
                return
            except ConnectionLostError:
                continue          # the server restarts: the next round reconnects
            except Exception:
                log.exception("reaping failed")

    # ------------------------------------------------------------------ reads

    def get(self, job_id: str) -> Job | None:
        job_id = check_job_id(job_id)
        self._check_open()
        with self._conn() as cur:
            row = cur.execute(self._sql.get, (job_id,)).fetchone()
            return None if row is None else self._with_deps(cur, _job_from_row(row))

    def list(self, status: JobStatus | str | None = None, queue: str | None = None,
             job_type: str | None = None, limit: int = 100,
             after: str | None = None) -> builtins.list[Job]:
        """Jobs in enqueue order, filtered; ``after`` = the last id of the previous page."""
        st = None if status is None else JobStatus(status)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be an int >= 0, got {limit!r}")
        self._check_open()
        with self._tx() as cur:
            after_seq = 0
            if after is not None:
                row = cur.execute(self._sql.seq_of, (after,)).fetchone()
                if row is None:
                    raise JobNotFoundError(f"no job with id {after!r} (the 'after' cursor)")
                after_seq = row[0]
            rows = cur.execute(self._sql.list_jobs, {
                "st": None if st is None else st.code, "q": queue, "t": job_type,
                "after": after_seq, "limit": limit}).fetchall()
        return [_job_from_row(r) for r in rows]

    def stats(self) -> dict:
        """Counts per status (pending, running, completed, failed, dead_letter, cancelled,
        total), the same per queue under "queues", and "last_lsn"."""
        self._check_open()
        with self._tx() as cur:
            rows = cur.execute(self._sql.stats).fetchall()
            last = _scalar(cur.execute(self._sql.last_lsn))
            control = self._describe(cur)
        per: dict[str, list[int]] = {}
        for queue, status, n in rows:
            per.setdefault(queue, [0] * 7)[status] += n

        def block(c: builtins.list[int]) -> dict:
            d: dict[str, int] = {s.value: c[s.code] for s in JobStatus}
            d["total"] = sum(c)
            return d
        totals = [sum(c[i] for c in per.values()) for i in range(7)]
        out: dict[str, Any] = block(totals)
        out["queues"] = {q: block(c) for q, c in sorted(per.items()) if sum(c)}
        out["last_lsn"] = last
        out["control"] = control
        return out

    def history(self, job_id: str) -> builtins.list[Transition]:
        job_id = check_job_id(job_id)
        self._check_open()
        with self._conn() as cur:
            rows = cur.execute(self._sql.history, (job_id,)).fetchall()
            if not rows and cur.execute(self._sql.status_of, (job_id,)).fetchone() is None:
                raise JobNotFoundError(f"no job with id {job_id!r}")
        return [Transition(lsn, kind, from_ms(at), _STATUS[st], w, a, note)
                for lsn, kind, at, st, w, a, note in rows]

    # ------------------------------------------------------------------ copy

    def import_jobs(self, items: Iterable[tuple[Job, builtins.list[Any]]]
                    ) -> builtins.list[tuple[str, str]]:
        """Insert jobs as they are (status, retry count, token, lease, result, ...) with
        their history (new lsns, same order): the destination side of ``aurora-log copy``.
        Returns (id, "copied" | "exists" | "unique") per job; each job is its own savepoint
        in one transaction."""
        self._check_open()
        out = []
        with self._tx() as cur:
            for job, history in items:
                exists = cur.execute(self._sql.status_of, (job.id,)).fetchone()
                if exists is not None:
                    out.append((job.id, "exists"))
                    continue
                try:
                    with cur.connection.transaction():
                        cur.execute(self._sql.import_job, _import_row(job))
                        for t in history:
                            cur.execute(self._sql.import_history, (
                                job.id, t.kind, to_ms(t.at), t.status.code, t.worker,
                                t.attempt, t.error))
                except psycopg.errors.UniqueViolation:
                    out.append((job.id, "unique"))
                    continue
                out.append((job.id, "copied"))
            cur.execute(self._sql.notify)
        return out

    def __repr__(self) -> str:
        return f"<aurora_log.PostgresQueue {self.path!r}{' closed' if self._closed else ''}>"


def _one_row_args(row: tuple, now: int) -> dict:
    """The parameters of Statements.enqueue_one_notify from a row of PostgresQueue._row
    (whose unique_key is None)."""
    (job_id, job_type, queue, _ukey, payload, prio, max_retries, created, sched, due,
     timeout_ms, lease_ms) = row
    return {"id": job_id, "job_type": job_type, "queue": queue, "payload": payload,
            "priority": prio, "max_retries": max_retries, "created": created,
            "sched": sched, "due": due, "timeout": timeout_ms, "lease": lease_ms, "now": now}


def _ms(dt: datetime | None) -> int | None:
    return None if dt is None else to_ms(dt)


def _import_row(job: Job) -> dict:
    """The jobs-table row of a Job read from another queue."""
    running = job.status is JobStatus.RUNNING
    sched = _ms(job.scheduled_at)
    return {
        "id": job.id, "job_type": job.job_type, "queue": job.queue, "ukey": job.unique_key,
        "payload": encode_payload(job.payload).decode("utf-8"), "prio": int(job.priority),
        "max_retries": job.max_retries, "retry": job.retry_count, "status": job.status.code,
        "created": to_ms(job.created_at), "sched": sched,
        "due": sched if sched is not None else to_ms(job.created_at),
        "timeout": None if job.timeout_seconds is None else round(job.timeout_seconds * 1000),
        "lease": round(job.lease_duration * 1000), "started": _ms(job.started_at),
        "hb": _ms(job.last_heartbeat), "completed": _ms(job.completed_at),
        "token": job.token if running else None, "worker": job.worker_id,
        "lease_dl": _ms(job.lease_deadline) if running else None, "error": job.error,
        "result": None if job.result is None else encode_json(job.result).decode("utf-8"),
        "progress": job.progress, "pmsg": job.progress_message,
        "cancel": bool(job.cancel_requested)}
