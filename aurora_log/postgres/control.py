"""Queue control on PostgreSQL: pause/resume, concurrency and rate limits, periodic
firings, dependencies. The semantics are the local store's (aurora_log.local.control and
Queue); here every decision is taken in the database, so it holds across machines:

- a paused queue is a row of ``paused_queues``; a limit a row of ``limits``;
- while either table has a row, claims go through ``claim_controlled`` (schema.py), which
  serialises the claims of one limited key with a transaction advisory lock and counts
  its RUNNING jobs (and its rate window, ``rate_claims``) with a fresh snapshot; while both
  are empty the plain claim runs, guarded by NOT EXISTS on both (``claim_guarded``);
  pause() and set_limit() take a SHARE ROW EXCLUSIVE lock on the jobs table, so no plain
  claim that started before them commits after them;
- a job waiting for parents has its due time parked (schema.HELD_DUE_MS); the trigger
  ``settle_children`` releases or cancels it when a parent ends, in the parent's
  transaction;
- a periodic due time fires once: ``periodic_firings`` has the primary key (name, due).

The mixin is used by PostgresQueue only; it relies on its _tx/_conn/_now_ms/_row helpers.
"""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from ..errors import InvalidStateError, UnknownParentError
from ..interface import check_limit_args
from ..job import Job, check_name, check_seconds, from_ms, new_id, to_ms
from ..workflows import parents_first
from . import schema as S

__all__ = ["ControlStatements", "ControlMixin"]

_SCOPE_NAMES = {1: "queue", 2: "job_type"}
_POLICY_CODES = {"cancel": 0, "ignore": 1}
_FINISHED = (3, 5, 6)
_FAILED_END = (5, 6)


class ControlStatements:
    """The control SQL, with the schema's name in it."""

    def __init__(self, schema: str) -> None:
        s = sql.Identifier(schema).as_string(None)
        j, h, lsn = f"{s}.jobs", f"{s}.history", f"'{schema}.lsn'"
        self.fence = f"LOCK TABLE {j} IN SHARE ROW EXCLUSIVE MODE"
        self.pause = (f"INSERT INTO {s}.paused_queues (queue, at_ms) VALUES (%s, %s) "
                      "ON CONFLICT DO NOTHING")
        self.resume = f"DELETE FROM {s}.paused_queues WHERE queue = %s"
        self.set_limit = f"""
            INSERT INTO {s}.limits (scope, name, concurrency, rate_count, rate_period_ms)
            VALUES (%(scope)s, %(name)s, %(conc)s, %(count)s, %(period)s)
            ON CONFLICT (scope, name) DO UPDATE SET concurrency = EXCLUDED.concurrency,
                rate_count = EXCLUDED.rate_count, rate_period_ms = EXCLUDED.rate_period_ms"""
        self.drop_limit = f"DELETE FROM {s}.limits WHERE scope = %(scope)s AND name = %(name)s"
        self.drop_window = (f"DELETE FROM {s}.rate_claims WHERE scope = %(scope)s "
                            "AND name = %(name)s")
        # a key's ring, oldest claim first (before its limit changes)
        self.window = f"""
            SELECT r.at_ms FROM {s}.rate_claims r JOIN {s}.limits l
                ON l.scope = r.scope AND l.name = r.name
            WHERE r.scope = %(scope)s AND r.name = %(name)s AND l.rate_count > 0
            ORDER BY (r.slot - l.rate_next %% l.rate_count + l.rate_count) %% l.rate_count"""
        self.refill_window = f"""
            WITH w AS (
                INSERT INTO {s}.rate_claims (scope, name, slot, at_ms)
                SELECT %(scope)s, %(name)s, o - 1, t
                FROM unnest(%(times)s::bigint[]) WITH ORDINALITY AS u(t, o)
            )
            UPDATE {s}.limits SET rate_next = cardinality(%(times)s::bigint[])
            WHERE scope = %(scope)s AND name = %(name)s"""
        self.claim_controlled = (f"SELECT {_cols()} FROM {s}.claim_controlled("
                                 "%(now)s, %(tok)s, %(w)s, %(qs)s, %(ts)s)")
        # when something waiting can next become claimable: a future due time, or the end
        # of a full rate window (due jobs blocked by a pause or a concurrency limit are
        # woken by resume/set_limit's NOTIFY and the limit_freed trigger instead)
        self.next_due = f"""
            SELECT least(
                (SELECT min(due_ms) FROM {j} WHERE status IN (1, 4) AND due_ms > %(now)s
                   AND due_ms < {S.HELD_DUE_MS}
                   AND (%(qs)s::text[] IS NULL OR queue = ANY(%(qs)s))
                   AND (%(ts)s::text[] IS NULL OR job_type = ANY(%(ts)s))),
                (SELECT min(f) FROM (
                    SELECT (SELECT r.at_ms FROM {s}.rate_claims r
                            WHERE r.scope = l.scope AND r.name = l.name
                              AND r.slot = l.rate_next %% l.rate_count)
                           + l.rate_period_ms AS f
                    FROM {s}.limits l WHERE l.rate_count > 0) x WHERE f > %(now)s))"""
        self.lock_parents = f"SELECT id, status FROM {j} WHERE id = ANY(%s) FOR UPDATE"
        self.hold = f"""
            UPDATE {j} SET parents = %(parents)s, on_parent_failure = %(policy)s,
                waiting_parents = %(n)s,
                held_due_ms = CASE WHEN %(n)s > 0 THEN due_ms END,
                due_ms = CASE WHEN %(n)s > 0 THEN {S.HELD_DUE_MS} ELSE due_ms END
            WHERE id = %(id)s"""
        self.add_deps = f"""
            INSERT INTO {s}.deps (child, parent)
            SELECT %(id)s, p FROM unnest(%(pending)s::text[]) AS p"""
        self.mark_parents = f"UPDATE {j} SET has_children = true WHERE id = ANY(%s)"
        self.settle_now = f"""
            WITH u AS (
                UPDATE {j} SET status = 6, completed_ms = %(now)s, error = %(why)s,
                    parents = %(parents)s, on_parent_failure = %(policy)s
                WHERE id = %(id)s RETURNING id, retry_count
            )
            INSERT INTO {h} (lsn, job_id, kind, at_ms, status, worker, attempt, note)
            SELECT nextval({lsn}), id, 'cancel', %(now)s, 6, NULL, retry_count + 1, %(why)s
            FROM u"""
        self.deps_of = f"SELECT parents, on_parent_failure FROM {j} WHERE id = %s"
        self.last_fired = f"SELECT max(due_ms) FROM {s}.periodic_firings WHERE name = %s"
        self.fire = f"""
            INSERT INTO {s}.periodic_firings (name, due_ms, job_id, at_ms)
            VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1"""
        self.fired_owner = (f"UPDATE {s}.periodic_firings SET job_id = %s "
                            "WHERE name = %s AND due_ms = %s")
        self.describe = f"""
            SELECT (SELECT coalesce(array_agg(queue ORDER BY queue), ARRAY[]::text[])
                    FROM {s}.paused_queues),
                   (SELECT coalesce(json_agg(json_build_array(
                        l.scope, l.name, l.concurrency, l.rate_count, l.rate_period_ms,
                        (SELECT count(*) FROM {j} x WHERE x.status = 2 AND
                         CASE WHEN l.scope = 1 THEN x.queue ELSE x.job_type END = l.name))
                        ORDER BY l.scope, l.name), '[]'::json) FROM {s}.limits l),
                   (SELECT coalesce(json_object_agg(name, due ORDER BY name), '{{}}'::json)
                    FROM (SELECT name, max(due_ms) AS due FROM {s}.periodic_firings
                          GROUP BY name) f),
                   (SELECT count(*) FROM {j} WHERE status = 1 AND held_due_ms IS NOT NULL)"""


def _cols() -> str:
    from .statements import COLS
    return COLS


def _reason(parent: str, status: int) -> str:
    """The local store's wording (aurora_log.local.control)."""
    return f"parent job {parent} {'was dead-lettered' if status == 5 else 'was cancelled'}"


class ControlMixin:
    """pause/resume, set_limit, schedule_periodic/run_periodic and dependencies for
    PostgresQueue (see the module docstring)."""

    _ctl: ControlStatements
    _schedules: dict[str, Any]
    _controls_seen: bool
    # PostgresQueue's own (queue.py): its statements and helpers
    _sql: Any
    _tx: Any
    _now_ms: Any
    _row: Any
    _check_open: Any

    # ------------------------------------------------------------------ pause, limits

    def pause(self, queue: str) -> None:
        """Stop handing out jobs of ``queue`` (enqueues still work; running jobs go on)
        until resume(). Stored in the database: every process and restart sees it."""
        check_name(queue, "queue")
        self._check_open()
        with self._tx() as cur:
            cur.execute(self._ctl.fence)
            cur.execute(self._ctl.pause, (queue, self._now_ms()))
        self._controls_seen = True

    def resume(self, queue: str) -> None:
        """Hand out jobs of ``queue`` again (wakes waiting claims)."""
        check_name(queue, "queue")
        self._check_open()
        with self._tx() as cur:
            cur.execute(self._ctl.resume, (queue,))
            cur.execute(self._sql.notify)

    def set_limit(self, *, queue: str | None = None, job_type: str | None = None,
                  concurrency: int | None = None,
                  rate: tuple[int, float] | None = None) -> None:
        """Limit one queue or one job type (give exactly one): at most ``concurrency``
        RUNNING at once over all workers and machines, and at most ``rate[0]`` claims per
        ``rate[1]`` seconds (a sliding window over the claims' times). A job held back
        stays pending and is not charged an attempt. Both None removes the limit."""
        scope, name, conc, count, period = check_limit_args(queue, job_type, concurrency, rate)
        self._check_open()
        args = {"scope": scope, "name": name, "conc": conc, "count": count, "period": period}
        with self._tx() as cur:
            cur.execute(self._ctl.fence)
            # the claims already in the window stay counted (the newest ``count`` of them,
            # as the local store's deque keeps them), renumbered for the new ring size
            times = [t for (t,) in cur.execute(self._ctl.window, args).fetchall()]
            cur.execute(self._ctl.drop_window, args)
            if not conc and not count:
                cur.execute(self._ctl.drop_limit, args)
            else:
                cur.execute(self._ctl.set_limit, args)
                if count:
                    cur.execute(self._ctl.refill_window, {**args, "times": times[-count:]})
            cur.execute(self._sql.notify)
        self._controls_seen = True

    def _claim_row(self, cur: psycopg.Cursor, filters: str, params: dict) -> tuple | None:
        """One claim: the plain statement (guarded: it takes nothing while a pause or a
        limit exists), then the controlled one when that found nothing."""
        if not self._controls_seen:
            row = cur.execute(self._sql.claim_guarded(filters),
                              params).fetchone()
            if row is not None:
                return row
        row = cur.execute(self._ctl.claim_controlled, {
            "qs": params.get("qs"), "ts": params.get("ts"), **params}).fetchone()
        self._controls_seen = row is not None
        return row

    # ------------------------------------------------------------------ dependencies

    def _enqueue_with_deps(self, jobs: list[Job], rows: list[tuple], now: int,
                           durable: bool) -> list[str]:
        """enqueue_many for a batch where some job has parents: one transaction, parents
        first; unknown parents and cycles refused before anything is written."""
        order = parents_first(jobs)                             # DependencyCycleError
        batch = {r[0] for r in rows}
        outside = sorted({p for j in jobs for p in j.depends_on if p not in batch})
        ids = [""] * len(jobs)
        seen: dict[str, str] = {}
        sq = self._sql
        with self._tx(durable) as cur:
            # locked: a parent cannot end between this look and the child's deps rows
            known = dict(cur.execute(self._ctl.lock_parents, (outside,)).fetchall()) \
                if outside else {}
            for j in jobs:
                for p in j.depends_on:
                    if p not in batch and p not in known:
                        raise UnknownParentError(j.id, p)
            dup = cur.execute(sq.existing_ids, ([r[0] for r in rows],)).fetchone()
            if dup is not None:
                raise ValueError(f"a job with id {dup[0]!r} already exists")
            for k in order:
                r, job = rows[k], jobs[k]
                got = cur.execute(sq.enqueue, [[v] for v in r] + [now]).fetchall()
                if not got:                                     # its unique key is taken
                    owner = cur.execute(sq.owners, ([r[3]],)).fetchone()
                    if owner is None:
                        raise InvalidStateError(f"unique key {r[3]!r} of job {r[0]} is "
                                                "changing hands; try again")
                    ids[k] = seen[r[0]] = owner[1]
                    continue
                ids[k] = seen[r[0]] = r[0]
                if job.depends_on:
                    self._add_parents(cur, job, [seen.get(p, p) for p in job.depends_on], now)
            cur.execute(sq.notify)
        return ids

    def _add_parents(self, cur: psycopg.Cursor, job: Job, parents: list[str],
                     now: int) -> None:
        status: dict[str, int] = dict(cur.execute(self._ctl.lock_parents,
                                                  (parents,)).fetchall())
        policy = _POLICY_CODES[job.on_parent_failure]
        if policy == 0:
            for p in parents:
                if status[p] in _FAILED_END:       # settled at once: waits for nothing
                    cur.execute(self._ctl.settle_now, {
                        "now": now, "why": _reason(p, status[p]), "parents": parents,
                        "policy": policy, "id": job.id})
                    return
        pending = [p for p in parents if status[p] not in _FINISHED]
        cur.execute(self._ctl.hold, {"parents": parents, "policy": policy,
                                     "n": len(pending), "id": job.id})
        if pending:
            cur.execute(self._ctl.add_deps, {"id": job.id, "pending": pending})
            cur.execute(self._ctl.mark_parents, (pending,))

    def _with_deps(self, cur: psycopg.Cursor, job: Job) -> Job:
        """``job`` with its parents (Job.depends_on) as the database has them."""
        row = cur.execute(self._ctl.deps_of, (job.id,)).fetchone()
        if row is not None and row[0]:
            job._deps = (tuple(row[0]), "ignore" if row[1] == 1 else "cancel")
        return job

    # ------------------------------------------------------------------ periodic

    def schedule_periodic(self, name: str, cron: str, job: Job, *, tz: str = "UTC",
                          missed: str = "skip", grace: float = 60.0) -> Any:
        """Enqueue a copy of ``job`` (a new id each time) at every due time of ``cron`` in
        time zone ``tz``; a due time fires once however many processes run the schedule
        (the firings table's primary key decides). ``missed``: "skip" (due times older
        than ``grace`` seconds are not run) or "once" (after downtime the latest missed
        one runs once). The schedule lives in this object (register it at startup, like a
        handler); the reaper thread fires it, or call run_periodic(). Replaces a
        schedule of the same name. Returns the schedule."""
        from ..local.cron import CronSchedule, Periodic
        check_name(name, "schedule name")
        if not isinstance(job, Job):
            raise TypeError(f"schedule_periodic takes a Job template, not {type(job).__name__}")
        check_seconds(grace, "grace")
        sched = Periodic(name, CronSchedule(cron, tz), job.copy(), missed,
                         round(grace * 1000))
        now = self._now_ms()
        self._row(_firing(sched, now), now)
        self._check_open()
        self._schedules[name] = sched
        return sched

    def unschedule_periodic(self, name: str) -> bool:
        """Forget the schedule ``name`` in this process; True if it existed."""
        return self._schedules.pop(name, None) is not None

    def run_periodic(self, now: datetime | float | None = None) -> builtins.list[str]:
        """Fire every registered schedule that is due; returns the ids of the jobs
        enqueued. The reaper thread calls this every reaper_interval."""
        fired: list[str] = []
        sq = self._sql
        for name in list(self._schedules):
            sched = self._schedules.get(name)
            if sched is None:
                continue
            now_ms = self._now_ms() if now is None else _ms(now)
            self._check_open()
            with self._tx() as cur:
                last = cur.execute(self._ctl.last_fired, (name,)).fetchone()[0]
                due = sched.due_to_fire(last, now_ms)
                if due is None:
                    continue
                job = _firing(sched, now_ms)
                row = self._row(job, now_ms)
                if cur.execute(self._ctl.fire, (name, due, job.id, now_ms)).fetchone() is None:
                    continue                    # another process fired this due time
                if cur.execute(sq.enqueue, [[v] for v in row] + [now_ms]).fetchall():
                    fired.append(job.id)
                    cur.execute(sq.notify)
                else:                           # its unique key is taken: fired, no job
                    owner = cur.execute(sq.owners, ([row[3]],)).fetchone()
                    if owner is not None:
                        cur.execute(self._ctl.fired_owner, (owner[1], name, due))
        return fired

    # ------------------------------------------------------------------ reads

    def _describe(self, cur: psycopg.Cursor) -> dict[str, Any]:
        """stats()["control"], as the local store shows it."""
        row = cur.execute(self._ctl.describe).fetchone()
        assert row is not None, "the statement returns one row"
        paused, limits, periodic, waiting = row
        out = []
        for scope, name, conc, count, period, running in limits:
            item: dict[str, Any] = {"scope": _SCOPE_NAMES[scope], "name": name}
            if conc:
                item["concurrency"] = conc
                item["running"] = running
            if count:
                item["rate"] = [count, period / 1000]
            out.append(item)
        return {"paused": list(paused), "limits": out,
                "periodic": {k: int(v) for k, v in periodic.items()},
                "waiting_for_parents": int(waiting)}


def _firing(sched: Any, now_ms: int) -> Job:
    """The job one firing enqueues: the template with a new id, created now."""
    j: Job = sched.template.copy()
    j.id = new_id()
    j.created_at = from_ms(now_ms)
    return j


def _ms(now: datetime | float) -> int:
    if isinstance(now, datetime):
        return to_ms(now, "now")
    if isinstance(now, (int, float)) and not isinstance(now, bool):
        return round(now * 1000)
    raise TypeError("now must be a datetime, epoch seconds or None")
