"""``aurora-log``: run workers and inspect a store from a shell.

    aurora-log worker myapp.jobs:q -w 4           # run the handlers registered on myapp.jobs.q
    aurora-log enqueue ./jobs send_email --payload '{"to": "a@b.c"}' --priority high
    aurora-log stats ./jobs
    aurora-log jobs ./jobs --status dead_letter
    aurora-log show ./jobs ID ; aurora-log history ./jobs ID
    aurora-log retry ./jobs ID ; aurora-log cancel ./jobs ID
    aurora-log purge ./jobs --status completed --older-than 7d
    aurora-log verify ./jobs ; aurora-log compact ./jobs
    aurora-log dump ./jobs > records.jsonl
    aurora-log dashboard ./jobs --port 8600      # the web UI (needs the dashboard extra)
    aurora-log dashboard postgresql://app@db/app --schema aurora   # ... on PostgreSQL
    aurora-log migrate postgresql://app@db/app --schema aurora
    aurora-log stats postgresql://app@db/app --schema aurora
    aurora-log copy ./jobs postgresql://app@db/app --dst-schema aurora

Wherever a command takes DIR it also takes a PostgreSQL DSN (postgresql://...), with
``--schema`` naming the schema (default aurora_log). dump, verify and compact are about a
local store's files and refuse a DSN.

Every flag has an environment default named AURORA_LOG_<FLAG> (for example
AURORA_LOG_WORKERS=8, AURORA_LOG_LOG_LEVEL=debug).

Every command opens the store as ``aurora_log.open(path)`` does, in the default shared
mode (docs/INTERNALS.md, "Shared mode"): the writing commands (enqueue, retry, cancel,
purge, compact, pause, resume, limit, copy) work beside running workers, web processes and
each other, and any number of ``aurora-log worker`` processes can serve one store. Only a
process that opened the store with ``exclusive=True`` holds it alone: beside it a writing
command answers "in use" (exit status 3) and names that process. The reading commands
(stats, jobs, show, history, tail, dump, verify) open it read-only and work beside either.

Errors are one line on stderr and a non-zero exit status: 1 for an error, 2 for a usage
error, 3 when the store is held by a process that opened it with exclusive=True. No
tracebacks (``--log-level debug`` logs one for an unexpected error).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import (AuroraLogError, CliError, InvalidStateError, JobNotFoundError,
                      LockedError, StaleLeaseError)

PROG = "aurora-log"
EXIT_ERROR, EXIT_USAGE, EXIT_LOCKED = 1, 2, 3

log = logging.getLogger("aurora_log.cli")


# ------------------------------------------------------------------------ env defaults

def _env_name(dest: str) -> str:
    return "AURORA_LOG_" + dest.upper()


def _truthy(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


def _add(parser: argparse.ArgumentParser, *flags: str, **kw) -> None:
    """add_argument whose default comes from AURORA_LOG_<DEST> when that is set."""
    dest = kw.get("dest") or flags[-1].lstrip("-").replace("-", "_")
    env = _env_name(dest)
    help_text = kw.get("help", "")
    kw["help"] = f"{help_text} [env {env}]".strip()
    if env in os.environ:
        raw = os.environ[env]
        action = kw.get("action")
        if action == "store_true":
            kw["default"] = _truthy(raw)
        elif action == "count":
            kw["default"] = int(raw) if raw.strip().isdigit() else int(_truthy(raw))
        else:
            kw["default"] = raw         # argparse applies `type` to string defaults
    parser.add_argument(*flags, **kw)


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    return n


def _port(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535: {text!r}")
    return n


def _seconds(text: str) -> float:
    """"30", "1.5", "500ms", "90s", "10m", "2h", "7d"."""
    t = text.strip().lower()
    units = (("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400))
    for suffix, factor in units:
        if t.endswith(suffix) and t[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(t[: -len(suffix)]) * factor
    try:
        value = float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (e.g. 30, 1.5s, 10m, 7d)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def _rate(text: str) -> tuple[int, float]:
    count, sep, period = text.partition("/")
    if not sep:
        raise argparse.ArgumentTypeError(f"not a rate: {text!r} (e.g. 10/60 or 5/1s)")
    try:
        n = int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count: {count!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"rate count must be >= 1: {text!r}")
    seconds = _seconds(period)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"rate period must be > 0: {text!r}")
    return n, seconds


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None


# ------------------------------------------------------------------------ the parser

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="An embedded, durable background-job queue: run workers and "
        "inspect a store.",
        epilog="Every command shares the store with running workers, web processes and other "
        "commands (the default mode of aurora_log.open). Exit status: 0 done, 1 error, "
        "2 usage error, 3 in use: a process opened the store with exclusive=True.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    common = argparse.ArgumentParser(add_help=False)
    _add(common, "-v", "--verbose", action="count", default=0,
         help="more log output (-v info, -vv debug)")
    _add(common, "--log-level", default=None,
         choices=["debug", "info", "warning", "error", "critical"], type=str.lower,
         help="log level (overrides -v)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def cmd(name, help_text, fn, *, needs_dir=True):
        sp = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        if needs_dir:
            sp.add_argument("dir", metavar="DIR",
                            help="the store directory, or a postgresql:// DSN")
            _add(sp, "--schema", default="aurora_log",
                 help="the PostgreSQL schema when DIR is a DSN (default aurora_log)")
        sp.set_defaults(func=fn)
        return sp

    sp = cmd("worker", "run the handlers registered on a queue", cmd_worker, needs_dir=False)
    sp.add_argument("target", metavar="MODULE:QUEUE",
                    help="where the queue is, e.g. myapp.jobs:q (the module is imported; "
                         "it opens the store and registers the handlers)")
    _add(sp, "-w", "--workers", type=_positive_int, default=None,
         help="worker threads (default: number of CPUs)")
    _add(sp, "--queues", default=None, help="claim only from these queues (a,b)")
    _add(sp, "--job-types", default=None, help="claim only these job types (a,b)")
    _add(sp, "--isolation", choices=["thread", "process"], default="thread",
         help="run handlers in the worker's threads or in a child process per job")
    _add(sp, "--shutdown-timeout", type=_seconds, default=30.0,
         help="seconds a graceful stop waits for running jobs (default 30)")
    _add(sp, "--poll-interval", type=_seconds, default=0.5,
         help="how long an idle claim waits (default 0.5 s)")
    _add(sp, "--metrics-port", type=_port, default=None,
         help="serve Prometheus metrics on 127.0.0.1:PORT/metrics (needs the dashboard extra)")

    sp = cmd("enqueue", "add a job", cmd_enqueue)
    sp.add_argument("job_type", metavar="JOB_TYPE")
    _add(sp, "--payload", type=_json_value, default="{}", help="a JSON object (default {})")
    _add(sp, "--priority", default=None, help="low, normal, high, critical (or 1-4)")
    _add(sp, "--delay", type=_seconds, default=None, help="run not before now + this")
    _add(sp, "--max-retries", type=int, default=None, help="retries after the first attempt")
    _add(sp, "--timeout", type=_seconds, default=None, help="the job's timeout in seconds")
    _add(sp, "--queue", default=None, help="the queue name (default: default)")
    _add(sp, "--unique-key", default=None, help="at most one live job per key")

    sp = cmd("stats", "counts by status, queue and job type", cmd_stats)
    _add(sp, "--json", action="store_true", help="print JSON")

    sp = cmd("jobs", "list jobs", cmd_jobs)
    _add(sp, "--status", default=None, help="pending, running, completed, failed, "
         "dead_letter or cancelled")
    _add(sp, "--queue", default=None, help="only this queue")
    _add(sp, "--job-type", default=None, help="only this job type")
    _add(sp, "--limit", type=_positive_int, default=50, help="at most this many (default 50)")
    _add(sp, "--json", action="store_true", help="print JSON lines")

    for name, help_text, fn in (("show", "one job, every field", cmd_show),
                                ("history", "every transition of one job", cmd_history)):
        sp = cmd(name, help_text, fn)
        sp.add_argument("job_id", metavar="ID")
        _add(sp, "--json", action="store_true", help="print JSON")

    sp = cmd("retry", "re-drive a dead-lettered job (back to pending, retries reset)", cmd_retry)
    sp.add_argument("job_id", metavar="ID")
    sp = cmd("cancel", "cancel a job (a running job is asked to stop)", cmd_cancel)
    sp.add_argument("job_id", metavar="ID")

    sp = cmd("pause", "stop handing out the jobs of a queue (survives restarts)", cmd_pause)
    sp.add_argument("queue", metavar="QUEUE")
    sp = cmd("resume", "hand out the jobs of a paused queue again", cmd_resume)
    sp.add_argument("queue", metavar="QUEUE")
    sp = cmd("limit", "set (or, with no limit given, remove) the limit of a queue or job type",
             cmd_limit)
    _add(sp, "--queue", default=None, help="the queue to limit")
    _add(sp, "--job-type", default=None, help="the job type to limit")
    _add(sp, "--concurrency", type=_positive_int, default=None,
         help="at most this many running at once")
    _add(sp, "--rate", type=_rate, default=None,
         help="at most N claims per period, as N/SECONDS (e.g. 10/60, 5/1s, 100/1h)")

    sp = cmd("dashboard", "serve the web dashboard for a store (read-only unless "
             "--allow-actions)", cmd_dashboard)
    _add(sp, "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    _add(sp, "--port", type=_port, default=8600, help="port (default 8600)")
    _add(sp, "--allow-actions", action="store_true",
         help="allow retry, cancel and purge from the web UI")

    sp = cmd("dump", "every record of the log as JSON lines", cmd_dump)
    _add(sp, "--from-lsn", type=int, default=1, help="start at this LSN")

    sp = cmd("tail", "print the store's transitions as they are committed (read-only, "
             "beside a running worker)", cmd_tail)
    _add(sp, "--from-lsn", type=_positive_int, default=None,
         help="start at this LSN (default: the oldest stored record)")
    _add(sp, "-f", "--follow", action="store_true", help="keep waiting for new transitions")
    _add(sp, "--poll", type=_seconds, default=0.2, help="with --follow: seconds between looks")
    _add(sp, "--json", action="store_true", help="print JSON lines")

    # Compaction-side commands exist only when the engine provides them.
    if _compaction_api("purge"):
        sp = cmd("purge", "drop finished jobs from the live state", cmd_purge)
        _add(sp, "--status", required="AURORA_LOG_STATUS" not in os.environ,
             help="completed, dead_letter or cancelled")
        _add(sp, "--older-than", type=_seconds, required="AURORA_LOG_OLDER_THAN" not in os.environ,
             help="finished more than this long ago (e.g. 7d)")
    if _compaction_api("verify"):
        sp = cmd("verify", "check every checksum, LSN and snapshot of a store (read-only)",
                 cmd_verify)
        _add(sp, "--json", action="store_true", help="print JSON")
    if _compaction_api("compact"):
        sp = cmd("compact", "write a snapshot and retire old segments", cmd_compact)

    sp = cmd("migrate", "create or upgrade the queue's tables in a PostgreSQL schema",
             cmd_migrate, needs_dir=False)
    sp.add_argument("dsn", metavar="DSN", help="postgresql://user@host/db")
    _add(sp, "--schema", default="aurora_log", help="the schema (default aurora_log)")

    sp = cmd("copy", "copy live jobs with their history between stores (a directory or a "
             "postgresql:// DSN each)", cmd_copy, needs_dir=False)
    sp.add_argument("src", metavar="SRC", help="the source: a store directory or a DSN")
    sp.add_argument("dst", metavar="DST", help="the destination: a store directory or a DSN")
    _add(sp, "--src-schema", default="aurora_log", help="the source's schema (a DSN)")
    _add(sp, "--dst-schema", default="aurora_log", help="the destination's schema (a DSN)")
    _add(sp, "--include-finished", action="store_true",
         help="also copy completed, dead-lettered and cancelled jobs")
    return p


def _version() -> str:
    from .. import __version__
    return __version__


def _compaction_api(name: str):
    """The engine function behind a compaction command, or None while it does not exist."""
    try:
        if name == "verify":
            from ..local.verify import verify
            return verify
        from ..local import queue as _queue
        return getattr(_queue.Queue, "compact" if name == "compact" else "purge", None)
    except Exception:
        return None


# ------------------------------------------------------------------------ helpers

def _configure_logging(args) -> None:
    if args.log_level:
        level = getattr(logging, args.log_level.upper())
    else:
        level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                                           "%H:%M:%S"))
    root = logging.getLogger("aurora_log")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # the worker announces start/stop at info even with no -v
    if level > logging.INFO and args.command == "worker":
        logging.getLogger("aurora_log.worker").setLevel(logging.INFO)


def _is_dsn(target: str) -> bool:
    return target.startswith(("postgresql://", "postgres://"))


def _open_pg(dsn: str, schema: str, *, create: bool = False):
    """A PostgreSQL queue for a one-shot command (no reaper). The schema must have been
    migrated (``aurora-log migrate``) unless ``create``."""
    try:
        from ..postgres import PostgresQueue
    except ImportError as exc:
        raise CliError(f"a DSN needs the PostgreSQL extra: pip install 'aurora-log[postgres]' "
                       f"({exc})") from None
    try:
        return PostgresQueue(dsn, schema=schema, reaper_interval=None, migrate=create,
                             pool_size=2, connect_timeout=10.0)
    except InvalidStateError as exc:
        raise CliError(str(exc)) from None


def _local_only(target: str, what: str) -> None:
    if _is_dsn(target):
        raise CliError(f"{what} works on a local store's files; {target.split('@')[-1]} "
                       "is a PostgreSQL DSN")


def _open_store(directory: str, *, write: bool = False, schema: str = "aurora_log"):
    """Open an existing store for a one-shot command. Reading commands open it read_only
    (no lock; they see what running workers have written); writing commands open it in
    the default shared mode, and fail with exit status 3 only beside a process that
    opened it with exclusive=True.
    A DSN opens that database's queue in ``schema`` (PostgreSQL has no such lock)."""
    import aurora_log
    if _is_dsn(directory):
        return _open_pg(directory, schema)
    path = Path(directory)
    if not path.exists():
        raise CliError(f"no store at {directory}: no such directory")
    if not path.is_dir():
        raise CliError(f"no store at {directory}: not a directory")
    if not (path / "wal").is_dir() and not (path / "LOCK").exists():
        raise CliError(f"no store at {directory}: not an aurora-log directory (no wal/)")
    try:
        with _busy(f"opening {directory} (replaying the log)"):
            if write:
                # one command: no reaper or compactor threads of its own
                return aurora_log.open(path, reaper_interval=None, auto_compact=False)
            return aurora_log.open(path, read_only=True, reaper_interval=None)
    except LockedError as exc:
        raise CliError(_in_use(directory, exc), EXIT_LOCKED) from None


def _in_use(target: str, exc: LockedError) -> str:
    """The "in use" message: the store's LockedError names the holder and what to do."""
    return f"store {target} is in use: {exc}"


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _jsonable(value):
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "_asdict"):
        return value._asdict()
    if hasattr(value, "value"):
        return value.value
    if hasattr(value, "__dict__"):
        return {k: v for k, v in vars(value).items() if not k.startswith("_")}
    if hasattr(value, "__slots__"):
        return {k: getattr(value, k) for k in value.__slots__ if hasattr(value, k)}
    return str(value)


def _dumps(value) -> str:
    return json.dumps(value, default=_jsonable, ensure_ascii=False)


def _fmt_time(value) -> str:
    if isinstance(value, _dt.datetime):
        return value.astimezone(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
    return "" if value is None else str(value)


def _status(value) -> str:
    return str(getattr(value, "value", value))


def _get_job(q, job_id: str):
    job = q.get(job_id)
    if job is None:
        raise CliError(f"no job {job_id} in this store")
    return job


@contextlib.contextmanager
def _busy(description: str):
    """For an operation without a progress count (replaying a large store on open, verify,
    compact): a rich spinner on a terminal; otherwise a plain line every 5 s while it runs
    (nothing at all for the usual quick case)."""
    if sys.stderr.isatty():
        try:
            from rich.console import Console
            have_rich = True
        except ImportError:
            have_rich = False
        if have_rich:
            with Console(stderr=True).status(description):
                yield
            return
    done = threading.Event()
    t0 = time.monotonic()

    def tick():
        while not done.wait(5.0):
            sys.stderr.write(f"{description} ({time.monotonic() - t0:.0f} s)\n")
            sys.stderr.flush()

    threading.Thread(target=tick, daemon=True).start()
    try:
        yield
    finally:
        done.set()


def _progress_bar(total: int | None, description: str):
    """A rich progress bar on a terminal (stderr), else a plain stderr line every 10%.
    Returns update(n, total=None) and done() callables; total may arrive with an update."""
    if sys.stderr.isatty():
        try:
            from rich.console import Console
            from rich.progress import Progress
            have_rich = True
        except ImportError:
            have_rich = False
        if have_rich:                      # on stderr: stdout may be the data (dump)
            prog = Progress(transient=True, console=Console(stderr=True),
                            redirect_stdout=False, redirect_stderr=False)
            prog.start()
            task = prog.add_task(description, total=total)

            def bar_update(n: int, new_total: int | None = None) -> None:
                if new_total is not None:
                    prog.update(task, completed=n, total=new_total)
                else:
                    prog.update(task, completed=n)

            return bar_update, prog.stop
    shown = [0]                            # tenths already reported
    known = [total]

    def update(n: int, new_total: int | None = None) -> None:
        if new_total is not None:
            known[0] = new_total
        if not known[0]:
            return
        tenth = min(10, 10 * n // known[0])
        if tenth > shown[0]:
            shown[0] = tenth
            sys.stderr.write(f"{description}: {n}/{known[0]} ({100 * n // known[0]}%)\n")

    return update, (lambda: None)


# ------------------------------------------------------------------------ commands

def cmd_worker(args) -> int:
    from ..runtime.worker import Worker
    module_name, sep, attr = args.target.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"worker target must look like MODULE:QUEUE, not {args.target!r}",
                       EXIT_USAGE)
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except LockedError as exc:
        raise CliError(f"importing {module_name}: its store is in use ({exc})",
                       EXIT_LOCKED) from None
    except ImportError as exc:
        raise CliError(f"cannot import {module_name}: {exc}") from None
    except Exception as exc:            # the user's module raised while importing
        log.debug("importing %s", module_name, exc_info=True)
        raise CliError(f"importing {module_name} raised {type(exc).__name__}: {exc} "
                       "(--log-level debug shows the traceback)") from None
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(f"module {module_name} has no attribute {attr!r}") from None
    queue = obj
    if not hasattr(queue, "claim"):
        raise CliError(f"{args.target} is not a queue (got {type(queue).__name__})")
    worker = Worker(queue, concurrency=args.workers, queues=args.queues,
                    job_types=args.job_types, isolation=args.isolation,
                    shutdown_timeout=args.shutdown_timeout, poll_interval=args.poll_interval,
                    import_path=module_name, metrics_port=args.metrics_port)
    try:
        code = worker.run()
    finally:
        try:
            queue.close()
        except Exception as exc:          # closing is best effort after a forced stop
            log.warning("closing the queue: %s", exc)
    return code


def cmd_enqueue(args) -> int:
    from ..runtime.tasks import build_job
    if not isinstance(args.payload, dict):
        raise CliError("--payload must be a JSON object, e.g. '{\"to\": \"a@b.c\"}'")
    try:
        job = build_job(args.job_type, args.payload, priority=args.priority,
                        max_retries=args.max_retries, timeout=args.timeout, queue=args.queue,
                        delay=args.delay, unique_key=args.unique_key)
    except (TypeError, ValueError) as exc:
        raise CliError(str(exc)) from None
    if _is_dsn(args.dir):
        with _open_pg(args.dir, args.schema, create=True) as q:
            _out(q.enqueue(job))
        return 0
    path = Path(args.dir)
    if path.exists() and not path.is_dir():
        raise CliError(f"{args.dir} is not a directory")
    import aurora_log
    try:
        q = aurora_log.open(path)       # enqueue may create a new store
    except LockedError as exc:
        raise CliError(_in_use(args.dir, exc), EXIT_LOCKED) from None
    with q:
        job_id = q.enqueue(job)
    _out(job_id)
    return 0


def cmd_stats(args) -> int:
    with _open_store(args.dir, schema=args.schema) as q:
        stats = q.stats()
    if args.json:
        _out(_dumps(stats))
        return 0
    _print_stats(stats)
    return 0


_STATUS_COLUMNS = ("pending", "running", "failed", "completed", "dead_letter", "cancelled", "total")


def _print_stats(stats: dict) -> None:
    """A table: one row per queue and one for all of them; other keys below it."""
    if not all(isinstance(stats.get(c), int) for c in _STATUS_COLUMNS):
        _print_mapping(stats)
        return
    queues = stats["queues"] if isinstance(stats.get("queues"), dict) else {}
    rows = [("QUEUE",) + tuple(c.upper() for c in _STATUS_COLUMNS)]
    for name, counts in sorted(queues.items()):
        rows.append((name,) + tuple(str(counts.get(c, 0)) for c in _STATUS_COLUMNS))
    rows.append(("(all)",) + tuple(str(stats[c]) for c in _STATUS_COLUMNS))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        _out("  ".join([r[0].ljust(widths[0])] + cells))
    rest = {k: v for k, v in stats.items() if k not in _STATUS_COLUMNS and k != "queues"}
    if rest:
        _out()
        _print_mapping(rest)


def _print_mapping(data, indent: int = 0) -> None:
    pad = "  " * indent
    if not isinstance(data, dict):
        _out(f"{pad}{data}")
        return
    width = max((len(str(k)) for k in data), default=0)
    for key, value in data.items():
        if isinstance(value, dict):
            _out(f"{pad}{key}:")
            _print_mapping(value, indent + 1)
        else:
            if isinstance(value, float):
                value = f"{value:.3f}"
            _out(f"{pad}{str(key) + ':':<{width + 1}} {_fmt_value(value)}")


def _fmt_value(value) -> str:
    if isinstance(value, _dt.datetime):
        return _fmt_time(value)
    if isinstance(value, (list, dict)):
        return _dumps(value)
    return _status(value) if value is not None else "-"


def cmd_jobs(args) -> int:
    status = None
    if args.status:
        from ..job import JobStatus
        try:
            status = JobStatus(args.status.lower())
        except ValueError:
            raise CliError(f"unknown status {args.status!r} (pending, running, completed, "
                           "failed, dead_letter, cancelled)") from None
    with _open_store(args.dir, schema=args.schema) as q:
        jobs = q.list(status=status, queue=args.queue, job_type=args.job_type, limit=args.limit)
    if args.json:
        for job in jobs:
            _out(_dumps(job))
        return 0
    if not jobs:
        _out("no jobs")
        return 0
    rows = [("ID", "TYPE", "STATUS", "PRI", "QUEUE", "TRY", "CREATED", "ERROR")]
    for j in jobs:
        err = (j.error or "").splitlines()[0][:40] if getattr(j, "error", None) else ""
        priority = getattr(j.priority, "name", str(j.priority))
        rows.append((j.id, j.job_type, _status(j.status), priority, j.queue,
                     f"{j.retry_count}/{j.max_retries}", _fmt_time(j.created_at), err))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        _out("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def cmd_show(args) -> int:
    with _open_store(args.dir, schema=args.schema) as q:
        job = _get_job(q, args.job_id)
    data = job.to_dict() if hasattr(job, "to_dict") else _jsonable(job)
    if args.json:
        _out(_dumps(data))
        return 0
    width = max(len(k) for k in data)
    for key, value in data.items():
        if key == "token":
            continue
        _out(f"{key + ':':<{width + 1}} {_fmt_value(value)}")
    return 0


def cmd_history(args) -> int:
    with _open_store(args.dir, schema=args.schema) as q:
        _get_job(q, args.job_id)
        transitions = q.history(args.job_id)
    if args.json:
        for t in transitions:
            _out(_dumps(t._asdict() if hasattr(t, "_asdict") else t))
        return 0
    for t in transitions:
        data = _jsonable(t) if not isinstance(t, dict) else t
        if not isinstance(data, dict):
            _out(str(t))
            continue
        when = data.pop("at", None) or data.pop("time", None) or data.pop("at_ms", None)
        kind = data.pop("kind", None) or data.pop("event", None) or data.pop("type", None) or ""
        lsn = data.pop("lsn", None)
        data.pop("id", None)
        data.pop("job_id", None)
        if isinstance(data.get("error"), str):          # the first line; `show` has it all
            data["error"] = data["error"].splitlines()[0] if data["error"] else ""
        rest = " ".join(f"{k}={_fmt_value(v)}" for k, v in data.items() if v not in (None, ""))
        head = f"{_fmt_time(when) if isinstance(when, _dt.datetime) else when or ''}"
        _out(f"{'#' + str(lsn) + ' ' if lsn is not None else ''}{head}  {kind:<14} {rest}".strip())
    return 0


def cmd_tail(args) -> int:
    from ..local.follow import follow
    path = Path(args.dir)
    if not (path / "wal").is_dir():
        raise CliError(f"no store at {args.dir}: not an aurora-log directory (no wal/)")
    for entry in follow(path, args.from_lsn, poll=args.poll, wait=args.follow):
        if args.json:
            _out(_dumps(entry.to_json()))
            continue
        rest = " ".join(f"{k}={_fmt_value(v)}" for k, v in entry.fields.items()
                        if v not in (None, "") and k != "payload")
        _out(f"#{entry.lsn} {_fmt_time(entry.at)}  {entry.type:<14} {entry.job_id or ''} "
             f"{rest}".rstrip())
        sys.stdout.flush()
    return 0


def cmd_retry(args) -> int:
    with _open_store(args.dir, write=True, schema=args.schema) as q:
        _get_job(q, args.job_id)
        q.retry_dead(args.job_id)
    _out(f"{args.job_id}: back to pending")
    return 0


def cmd_cancel(args) -> int:
    with _open_store(args.dir, write=True, schema=args.schema) as q:
        _get_job(q, args.job_id)
        status = q.cancel(args.job_id)
    if _status(status) == "running":
        _out(f"{args.job_id}: cancel requested (the job is running; its worker will stop it)")
    else:
        _out(f"{args.job_id}: {_status(status)}")
    return 0


def cmd_pause(args) -> int:
    with _open_store(args.dir, write=True, schema=args.schema) as q:
        q.pause(args.queue)
    _out(f"queue {args.queue}: paused")
    return 0


def cmd_resume(args) -> int:
    with _open_store(args.dir, write=True, schema=args.schema) as q:
        q.resume(args.queue)
    _out(f"queue {args.queue}: resumed")
    return 0


def cmd_limit(args) -> int:
    if (args.queue is None) == (args.job_type is None):
        raise CliError("give exactly one of --queue or --job-type")
    with _open_store(args.dir, write=True, schema=args.schema) as q:
        q.set_limit(queue=args.queue, job_type=args.job_type, concurrency=args.concurrency,
                    rate=args.rate)
    what = f"queue {args.queue}" if args.queue is not None else f"job type {args.job_type}"
    parts = []
    if args.concurrency is not None:
        parts.append(f"at most {args.concurrency} running")
    if args.rate is not None:
        parts.append(f"at most {args.rate[0]} claims per {args.rate[1]:g} s")
    _out(f"{what}: {', '.join(parts) if parts else 'no limit'}")
    return 0


def cmd_dashboard(args) -> int:
    schema = getattr(args, "schema", "aurora_log")
    if _is_dsn(args.dir):
        # open once here: a wrong DSN or an unmigrated schema is a clear error now, not
        # a traceback from the server's startup
        _open_pg(args.dir, schema).close()
    elif not (Path(args.dir) / "wal").is_dir():
        raise CliError(f"no store at {args.dir}: not an aurora-log directory (no wal/)")
    try:
        from .dashboard import serve
    except ImportError as exc:
        raise CliError(f"the dashboard needs its extra: pip install 'aurora-log[dashboard]' "
                       f"({exc})") from None
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("dashboard bound to %s: anyone who can reach it sees every job", args.host)
    where = args.dir
    if _is_dsn(args.dir):
        from ..postgres.connection import redact
        where = f"{redact(args.dir)} schema {schema}"
    _out(f"aurora-log dashboard for {where} on http://{args.host}:{args.port}/ "
         f"({'actions allowed' if args.allow_actions else 'read-only'})")
    serve(args.dir, host=args.host, port=args.port, allow_actions=args.allow_actions,
          schema=schema)
    return 0


def cmd_dump(args) -> int:
    from ..local import records
    from ..local.log import Log
    _local_only(args.dir, "dump")
    path = Path(args.dir)
    if not (path / "wal").is_dir():
        raise CliError(f"no store at {args.dir}: not an aurora-log directory (no wal/)")
    try:
        wal = Log.open(path, read_only=True)
    except LockedError as exc:
        raise CliError(_in_use(args.dir, exc), EXIT_LOCKED) from None
    try:
        total = max(0, wal.next_lsn - max(args.from_lsn, wal.first_lsn))
        update, done = _progress_bar(total if total > 10000 else None, "dump")
        n = 0
        for lsn, rtype, payload in wal.scan(args.from_lsn):
            rec = records.decode(rtype, payload)
            data = {"lsn": lsn, "type": records.RECORD_NAMES.get(rtype, rtype)}
            for key, value in rec._asdict().items():
                if key in ("payload", "result") and isinstance(value, bytes):
                    value = json.loads(value)
                data[key] = value
            _out(_dumps(data))
            n += 1
            if n % 5000 == 0:
                update(n)
        update(n)
        done()
    finally:
        wal.close()
    return 0


def cmd_purge(args) -> int:
    with _open_store(args.dir, write=True, schema=args.schema) as q:
        n = q.purge(status=args.status, older_than=args.older_than)
    _out(f"purged {n} job(s)")
    return 0


def cmd_verify(args) -> int:
    """Read-only (no lock): works beside a running worker. Exit 1 when a problem is found."""
    verify = _compaction_api("verify")
    _local_only(args.dir, "verify")
    path = Path(args.dir)
    if not path.is_dir():
        raise CliError(f"no store at {args.dir}: no such directory")
    if not (path / "wal").is_dir():
        raise CliError(f"no store at {args.dir}: not an aurora-log directory (no wal/)")
    with _busy(f"verifying {args.dir}"):
        report = verify(path)
    if args.json:
        _out(_dumps({"ok": report.ok, **{k: v for k, v in vars(report).items()}}))
    else:
        _out(str(report))
    return 0 if report.ok else EXIT_ERROR


def cmd_compact(args) -> int:
    _local_only(args.dir, "compact")
    with _open_store(args.dir, write=True, schema=args.schema) as q:
        update, done = _progress_bar(None, "compact")
        try:
            report = q.compact(on_progress=lambda n, total: update(n, total))
        finally:
            done()
    if report is not None:
        _print_mapping(_jsonable(report) if not isinstance(report, dict) else report)
    return 0


def cmd_migrate(args) -> int:
    if not _is_dsn(args.dsn):
        raise CliError(f"migrate takes a postgresql:// DSN, not {args.dsn!r}", EXIT_USAGE)
    try:
        from ..postgres import schema as pg_schema
        from ..postgres.connection import connect
    except ImportError as exc:
        raise CliError(f"migrate needs the PostgreSQL extra: pip install "
                       f"'aurora-log[postgres]' ({exc})") from None
    pg_schema.check_schema_name(args.schema)
    with connect(args.dsn) as conn:
        applied = pg_schema.migrate(conn, args.schema)
    if applied:
        _out(f"schema {args.schema}: applied migration(s) {', '.join(map(str, applied))}; "
             f"now at version {pg_schema.LATEST_VERSION}")
    else:
        _out(f"schema {args.schema}: already at version {pg_schema.LATEST_VERSION}")
    return 0


def _open_for_copy(target: str, schema: str, *, source: bool):
    import aurora_log
    if _is_dsn(target):
        return _open_pg(target, schema, create=not source)
    if source:
        return _open_store(target)
    path = Path(target)
    if path.exists() and not path.is_dir():
        raise CliError(f"{target} is not a directory")
    try:
        return aurora_log.open(path, reaper_interval=None)
    except LockedError as exc:
        raise CliError(_in_use(target, exc), EXIT_LOCKED) from None


def cmd_copy(args) -> int:
    from .transfer import copy_jobs
    if args.src == args.dst and (not _is_dsn(args.src) or args.src_schema == args.dst_schema):
        raise CliError("SRC and DST are the same store", EXIT_USAGE)
    with _open_for_copy(args.src, args.src_schema, source=True) as src, \
            _open_for_copy(args.dst, args.dst_schema, source=False) as dst:
        update, done = _progress_bar(None, "copy")
        try:
            report = copy_jobs(src, dst, include_finished=args.include_finished,
                               on_progress=update)
        finally:
            done()
    _out(str(report))
    return 0


# ------------------------------------------------------------------------ entry point

def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        _error(str(exc))
        return exc.code
    except LockedError as exc:
        _error(f"store is in use by another process: {exc}")
        return EXIT_LOCKED
    except JobNotFoundError as exc:
        _error(str(exc))
        return EXIT_ERROR
    except (InvalidStateError, StaleLeaseError) as exc:
        _error(str(exc))
        return EXIT_ERROR
    except AuroraLogError as exc:
        _error(f"{type(exc).__name__}: {exc}")
        return EXIT_ERROR
    except BrokenPipeError:             # `aurora-log dump DIR | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except (ValueError, TypeError, OSError) as exc:
        _error(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except Exception as exc:            # a bug: still one line, the traceback on request
        log.debug("unexpected error", exc_info=True)
        _error(f"unexpected {type(exc).__name__}: {exc} (--log-level debug shows the traceback)")
        return EXIT_ERROR


def _error(message: str) -> None:
    sys.stderr.write(f"{PROG}: error: {message}\n")


if __name__ == "__main__":
    sys.exit(main())
