"""aurora-log on PostgreSQL beside the PostgreSQL queues Python users know, on one server.

    python bench/compare_pg.py [--dsn postgresql://...] [--jobs 1000] [--procs 1,4,8]
                               [--json out.json]

Systems (each in its own database on the same server, created fresh):
  aurora-pg      aurora_log.open(DSN): PostgresQueue
  skip-locked    a plain table: INSERT; UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP
                 LOCKED) RETURNING; UPDATE status (the floor any PostgreSQL queue pays:
                 one row, one statement, one durable commit per operation, like the
                 others; it skips what SKIP_LOCKED_SKIPS lists)
  procrastinate  its JobManager: defer / batch_defer, fetch_job + finish_job
  pgqueuer       its Queries: enqueue (scalar / lists), dequeue(batch_size=1) + log_jobs
  aurora-local   a local store beside them (not on the server; claim+complete with N
                 threads in one process: a local store belongs to one process)

Workloads, each timed on its own (workload by workload; within a workload the systems take
turns, --repeat rounds of them, the best run of each kept): "enqueue" (one job per call,
one process), "enqueue_many" (batches of 100), "claim+complete N" (N processes drain a
pre-filled queue, claiming one job and completing it per round trip; the time from the
start until the queue is empty).
Without --dsn a throwaway server is started (initdb, unix socket, fsync on and
synchronous_commit on, the default: every acknowledged operation is on disk) and removed;
if PostgreSQL is not installed, a line says so and the exit status is 0 (for make compare).
Peers that are not installed are skipped with a line saying so (pip install -r
bench/requirements.txt). Keep --jobs small: this runs on shared machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
import urllib.parse
import uuid
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

BATCH = 100


def dsn_for(dsn: str, dbname: str) -> str:
    """The same server, another database (URI form)."""
    u = urllib.parse.urlsplit(dsn)
    return f"{u.scheme}://{u.netloc}/{dbname}" + (f"?{u.query}" if u.query else "")


def create_db(dsn: str, dbname: str) -> str:
    import psycopg
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {dbname}")
        conn.execute(f"CREATE DATABASE {dbname}")
    return dsn_for(dsn, dbname)


# ------------------------------------------------------------------ systems
# Each system: setup(target) once; enqueue(target, n); enqueue_many(target, n);
# fill(target, n) untimed; drain(target) in each worker process until empty -> count.

class AuroraPg:
    name = "aurora-pg"

    def warm(self, target):
        self._open(target).close()

    @staticmethod
    def _open(target):
        import aurora_log
        return aurora_log.open(target, schema="bench", reaper_interval=None, pool_size=2)

    def setup(self, target):
        self._open(target).close()

    def enqueue(self, target, n):
        from aurora_log import Job
        with self._open(target) as q:
            t = time.perf_counter()
            for i in range(n):
                q.enqueue(Job("t", {"i": i}))
            return time.perf_counter() - t

    def enqueue_many(self, target, n):
        from aurora_log import Job
        with self._open(target) as q:
            t = time.perf_counter()
            for s in range(0, n, BATCH):
                q.enqueue_many([Job("t", {"i": i}) for i in range(s, min(n, s + BATCH))])
            return time.perf_counter() - t

    fill = enqueue_many

    def drain(self, target):
        with self._open(target) as q:
            n = 0
            while (j := q.claim("w")) is not None:
                q.complete(j.id, j.token)
                n += 1
            return n


# What the plain table does not do per job, and the queues do (printed with the table):
SKIP_LOCKED_SKIPS = (
    "skip-locked does per job one row write and one commit per operation, but no history "
    "row, no attempt token (a late complete is not fenced), no lease deadline or attempt "
    "count, no NOTIFY to wake waiting workers, no due time or unique key, and its claim "
    "returns (id, payload) only")


class SkipLocked:
    name = "skip-locked"

    def warm(self, target):
        import psycopg
        psycopg.connect(target).close()

    CLAIM = ("UPDATE jobs SET status = 1 WHERE id = (SELECT id FROM jobs WHERE status = 0 "
             "ORDER BY priority DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id, payload")

    def setup(self, target):
        import psycopg
        with psycopg.connect(target, autocommit=True) as c:
            c.execute("CREATE TABLE jobs (id bigserial PRIMARY KEY, payload jsonb NOT NULL, "
                      "priority smallint NOT NULL DEFAULT 2, status smallint NOT NULL "
                      "DEFAULT 0)")
            c.execute("CREATE INDEX jobs_claim ON jobs (priority DESC, id) WHERE status = 0")

    def enqueue(self, target, n):
        import psycopg
        with psycopg.connect(target, autocommit=True) as c:
            t = time.perf_counter()
            for i in range(n):
                c.execute("INSERT INTO jobs (payload) VALUES (%s)", (json.dumps({"i": i}),))
            return time.perf_counter() - t

    def enqueue_many(self, target, n):
        import psycopg
        with psycopg.connect(target, autocommit=True) as c:
            t = time.perf_counter()
            for s in range(0, n, BATCH):
                c.execute("INSERT INTO jobs (payload) SELECT unnest(%s::jsonb[])",
                          ([json.dumps({"i": i}) for i in range(s, min(n, s + BATCH))],))
            return time.perf_counter() - t

    fill = enqueue_many

    def drain(self, target):
        import psycopg
        with psycopg.connect(target, autocommit=True) as c:
            n = 0
            while (row := c.execute(self.CLAIM).fetchone()) is not None:
                c.execute("UPDATE jobs SET status = 2 WHERE id = %s", (row[0],))
                n += 1
            return n


class Procrastinate:
    name = "procrastinate"

    def warm(self, target):
        import procrastinate.jobs  # noqa: F401
        app, _ = self._app(target)
        with app.open():
            pass

    @staticmethod
    def _app(target):
        import procrastinate
        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=target))

        @app.task(name="t")
        def t(i):   # never run: the bench claims and finishes jobs itself
            return i
        return app, t

    def setup(self, target):
        app, _ = self._app(target)
        with app.open():
            app.schema_manager.apply_schema()

    def enqueue(self, target, n):
        app, task = self._app(target)
        with app.open():
            t = time.perf_counter()
            for i in range(n):
                task.defer(i=i)
            return time.perf_counter() - t

    def enqueue_many(self, target, n):
        app, task = self._app(target)
        with app.open():
            t = time.perf_counter()
            for s in range(0, n, BATCH):
                task.batch_defer(*[{"i": i} for i in range(s, min(n, s + BATCH))])
            return time.perf_counter() - t

    fill = enqueue_many

    def drain(self, target):
        from procrastinate.jobs import Status
        app, _ = self._app(target)

        async def run():
            async with app.open_async():
                jm = app.job_manager
                wid = await jm.register_worker()
                n = 0
                while (job := await jm.fetch_job(None, wid)) is not None:
                    await jm.finish_job(job, Status.SUCCEEDED, delete_job=False)
                    n += 1
                await jm.unregister_worker(wid)
                return n
        return asyncio.run(run())


class PgQueuer:
    name = "pgqueuer"

    def warm(self, target):
        import pgqueuer.queries  # noqa: F401

        async def run():
            conn, _ = await self._queries(target)
            await conn.close()
        asyncio.run(run())

    @staticmethod
    async def _queries(target):
        import psycopg
        from pgqueuer.db import PsycopgDriver
        from pgqueuer.queries import Queries
        conn = await psycopg.AsyncConnection.connect(target, autocommit=True)
        return conn, Queries(PsycopgDriver(conn))

    def setup(self, target):
        async def run():
            conn, q = await self._queries(target)
            await q.install()
            await conn.close()
        asyncio.run(run())

    def enqueue(self, target, n):
        async def run():
            conn, q = await self._queries(target)
            t = time.perf_counter()
            for i in range(n):
                await q.enqueue("t", json.dumps({"i": i}).encode(), 0)
            dt = time.perf_counter() - t
            await conn.close()
            return dt
        return asyncio.run(run())

    def enqueue_many(self, target, n):
        async def run():
            conn, q = await self._queries(target)
            t = time.perf_counter()
            for s in range(0, n, BATCH):
                k = min(n, s + BATCH) - s
                await q.enqueue(["t"] * k, [json.dumps({"i": s + i}).encode() for i in range(k)],
                                [0] * k)
            dt = time.perf_counter() - t
            await conn.close()
            return dt
        return asyncio.run(run())

    fill = enqueue_many

    def drain(self, target):
        from pgqueuer.queries import EntrypointExecutionParameter

        async def run():
            conn, q = await self._queries(target)
            eps = {"t": EntrypointExecutionParameter(concurrency_limit=0)}
            qm_id = uuid.uuid4()
            n = 0
            while jobs := await q.dequeue(batch_size=1, entrypoints=eps, queue_manager_id=qm_id,
                                          global_concurrency_limit=None,
                                          heartbeat_timeout=timedelta(seconds=30)):
                await q.log_jobs([(j, "successful", None) for j in jobs])
                n += len(jobs)
            await conn.close()
            return n
        return asyncio.run(run())


SYSTEMS = {c.name: c for c in (AuroraPg, SkipLocked, Procrastinate, PgQueuer)}


def _drain_child(name, target, out, ready, go):
    system = SYSTEMS[name]()
    system.warm(target)                 # imports and a first connection, before the clock
    ready.put(1)
    go.wait()
    out.put(system.drain(target))


def claim_complete(system, target, n, procs) -> float:
    """Fill n jobs, then time ``procs`` processes draining them."""
    system.fill(target, n)
    ctx = mp.get_context("spawn")
    out, ready, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    ps = [ctx.Process(target=_drain_child, args=(system.name, target, out, ready, go))
          for _ in range(procs)]
    for p in ps:
        p.start()
    for _ in ps:
        ready.get(timeout=120)
    t = time.perf_counter()
    go.set()
    got = sum(out.get(timeout=600) for _ in ps)
    dt = time.perf_counter() - t
    for p in ps:
        p.join()
    if got != n:
        raise RuntimeError(f"{system.name}: drained {got} of {n}")
    return dt


def local_figures(n, procs_list) -> dict:
    """The local store on this machine's disk: enqueue, enqueue_many, claim+complete with
    N threads in one process (the store is one process's)."""
    import threading

    import aurora_log
    from aurora_log import Job
    res = {}
    d = tempfile.mkdtemp(prefix="aurora-bench-")
    try:
        with aurora_log.open(d + "/a", reaper_interval=None) as q:
            t = time.perf_counter()
            for i in range(n):
                q.enqueue(Job("t", {"i": i}))
            res["enqueue"] = n / (time.perf_counter() - t)
        with aurora_log.open(d + "/b", reaper_interval=None) as q:
            t = time.perf_counter()
            for s in range(0, n, BATCH):
                q.enqueue_many([Job("t", {"i": i}) for i in range(s, min(n, s + BATCH))])
            res["enqueue_many"] = n / (time.perf_counter() - t)
        for procs in procs_list:
            with aurora_log.open(f"{d}/c{procs}", reaper_interval=None) as q:
                for s in range(0, n, BATCH):
                    q.enqueue_many([Job("t", {"i": i}) for i in range(s, min(n, s + BATCH))])

                def drain():
                    while (j := q.claim("w")) is not None:
                        q.complete(j.id, j.token)
                ths = [threading.Thread(target=drain) for _ in range(procs)]
                t = time.perf_counter()
                for th in ths:
                    th.start()
                for th in ths:
                    th.join()
                res[f"claim+complete {procs}"] = n / (time.perf_counter() - t)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return res


def _version(mod: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(mod)
    except PackageNotFoundError:
        return "?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dsn", default=None, help="a server to use (default: a throwaway one)")
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--procs", default="1,4,8")
    ap.add_argument("--only", default=None, help="comma-separated systems")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per figure, the best kept (the disk is shared: fsync rates vary)")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args(argv)
    procs_list = [int(x) for x in args.procs.split(",")]
    server = None
    dsn = args.dsn
    if dsn is None:
        import pgserver
        try:
            server = pgserver.Server(fsync=True)
        except pgserver.Unavailable as e:
            print(f"compare_pg: skipped, no PostgreSQL server to run on: {e}")
            return 0
        dsn = server.dsn
    results: dict[str, dict[str, float]] = {}
    notes = []
    try:
        names = args.only.split(",") if args.only else list(SYSTEMS)
        systems = {n: SYSTEMS[n]() for n in names if n in SYSTEMS}
        # workload-major, the systems taking turns within each repeat: the disk's fsync
        # rate drifts with the machine's load, and interleaving spreads a drift over all
        # systems instead of handing it to whichever ran during it
        for wl in ["enqueue", "enqueue_many"] + [f"claim+complete {p}" for p in procs_list]:
            for _ in range(args.repeat):
                for name, system in list(systems.items()):
                    try:
                        target = create_db(dsn, "bench_" + name.replace("-", "_"))
                        system.setup(target)
                        if wl.startswith("claim"):
                            dt = claim_complete(system, target, args.jobs, int(wl.split()[1]))
                        else:
                            dt = getattr(system, wl)(target, args.jobs)
                    except ImportError as e:
                        notes.append(f"{name}: skipped, not installed ({e})")
                        print(f"  {name}: skipped, not installed ({e})", flush=True)
                        del systems[name]
                        continue
                    row = results.setdefault(name, {})
                    row[wl] = max(row.get(wl, 0.0), args.jobs / dt)
            for name in systems:
                print(f"  {name:<14} {wl:<20} {results[name][wl]:>9.0f} jobs/s", flush=True)
        if "aurora-local" in names or not args.only:
            local = [local_figures(args.jobs, procs_list) for _ in range(args.repeat)]
            results["aurora-local"] = {k: max(r[k] for r in local) for k in local[0]}
    finally:
        if server is not None:
            server.destroy()
    workloads = ["enqueue", "enqueue_many"] + [f"claim+complete {p}" for p in procs_list]
    print(f"\n{args.jobs} jobs per run; jobs/s (higher is better); ratio = aurora-pg / best "
          "PostgreSQL peer")
    print(f"{'workload':<20}" + "".join(f"{n:>15}" for n in results) + f"{'ratio':>8}")
    for wl in workloads:
        peers = [results[n][wl] for n in results
                 if n not in ("aurora-pg", "aurora-local") and wl in results[n]]
        mine = results.get("aurora-pg", {}).get(wl)
        ratio = f"{mine / max(peers):.2f}x" if mine and peers else "-"
        print(f"{wl:<20}" + "".join(f"{results[n].get(wl, float('nan')):>15.0f}"
                                    for n in results) + f"{ratio:>8}")
    if "skip-locked" in results:
        notes.append(SKIP_LOCKED_SKIPS)
    for note in notes:
        print(note)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "jobs": args.jobs, "results": results, "notes": notes,
            "versions": {m: _version(m) for m in ("procrastinate", "pgqueuer", "psycopg")},
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
