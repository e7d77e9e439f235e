"""A helper process for the many-processes tests (not a test module: run as a script).

    python tests/mp_queue_server.py

It holds at most one queue, opened through the public API only, and answers one JSON
command per line on stdin with one JSON reply per line on stdout:

    {"op": "open", "path": P, "clock": F, "options": {...}}   open P; the clock reads the
                                                             int64 ms in file F (shared)
    {"op": "enqueue", "jobs": [spec...], "many": bool}      -> {"ids": [...], "ok": result}
    {"op": "claim", "worker": W, "types": [...]|null, "queues": [...]|null}
    {"op": "heartbeat" | "complete" | "fail", "id": I, "token": T, ...}
    {"op": "cancel" | "retry_dead", "id": I}
    {"op": "reap"} {"op": "compact"} {"op": "close"} {"op": "quit"}
    {"op": "view", "ids": [...]}     every job's observable fields, its history and stats()

A reply is {"ok": value} or {"err": "<exception class name>", "msg": "..."}. The shared
clock lets every helper and the test agree on "now" without any process owning time.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import sys
import traceback
from typing import Any

import aurora_log
from aurora_log.job import Job, from_ms, to_ms
from mp_support import shared_options


class SharedClock:
    """Seconds since the epoch read from an 8-byte little-endian int64 of ms in a file the
    test writes (every process maps the same page, so they all see one "now")."""

    def __init__(self, path: str):
        fd = os.open(path, os.O_RDONLY)
        try:
            self._map = mmap.mmap(fd, 8, prot=mmap.PROT_READ)
        finally:
            os.close(fd)

    def __call__(self) -> float:
        return struct.unpack_from("<q", self._map)[0] / 1000

    def ms(self) -> int:
        return struct.unpack_from("<q", self._map)[0]


def build_job(spec: dict, now_ms: int) -> Job:
    j = Job(spec["job_type"], spec["payload"], id=spec.get("id"),
            priority=spec["priority"], max_retries=spec["max_retries"],
            lease_duration=spec["lease_ms"] / 1000,
            timeout_seconds=None if spec["timeout_ms"] is None else spec["timeout_ms"] / 1000,
            queue=spec["queue"], unique_key=spec["unique_key"], created_at=from_ms(now_ms))
    if spec.get("sched_ms") is not None:
        j.schedule_at(from_ms(spec["sched_ms"]))
    return j


def job_view(q: Any, job_id: str) -> dict | None:
    j = q.get(job_id)
    if j is None:
        return None
    return {
        "status": j.status.value, "retry_count": j.retry_count, "priority": int(j.priority),
        "queue": j.queue, "job_type": j.job_type, "error": j.error,
        "cancel_requested": j.cancel_requested, "payload": j.payload,
        "unique_key": j.unique_key, "result": j.result, "token": j.token,
        "scheduled_ms": None if j.scheduled_at is None else to_ms(j.scheduled_at),
        "lease_deadline_ms": None if j.lease_deadline is None else to_ms(j.lease_deadline),
        "history": [t.kind for t in q.history(job_id)],
    }


class Server:
    def __init__(self) -> None:
        self.q: Any = None
        self.clock: SharedClock | None = None

    def handle(self, cmd: dict) -> Any:
        op = cmd["op"]
        if op == "open":
            self.clock = SharedClock(cmd["clock"])
            options = {**shared_options(), **cmd.get("options", {})}
            self.q = aurora_log.open(cmd["path"], clock=self.clock, **options)
            return {"recovered": self.q.recovered}
        if op == "close":
            if self.q is not None:
                self.q.close()
                self.q = None
            return None
        q = self.q
        if op == "enqueue":
            assert self.clock is not None
            jobs = [build_job(s, self.clock.ms()) for s in cmd["jobs"]]
            got = q.enqueue_many(jobs) if cmd.get("many") else q.enqueue(jobs[0])
            return {"ids": [j.id for j in jobs], "result": got}
        if op == "claim":
            types = None if cmd.get("types") is None else set(cmd["types"])
            queues = None if cmd.get("queues") is None else set(cmd["queues"])
            j = q.claim(cmd["worker"], job_types=types, queues=queues)
            if j is None:
                return None
            return {"id": j.id, "token": j.token, "lease_deadline_ms": to_ms(j.lease_deadline)}
        if op == "heartbeat":
            return q.heartbeat(cmd["id"], cmd["token"])
        if op == "complete":
            q.complete(cmd["id"], cmd["token"], cmd.get("result"))
            return None
        if op == "fail":
            return q.fail(cmd["id"], cmd["token"], cmd["error"]).value
        if op == "cancel":
            return q.cancel(cmd["id"]).value
        if op == "retry_dead":
            q.retry_dead(cmd["id"])
            return None
        if op == "reap":
            return q.reap()
        if op == "compact":
            q.compact()
            return None
        if op == "view":
            return {"jobs": {i: job_view(q, i) for i in cmd["ids"]}, "stats": q.stats()}
        raise ValueError(f"unknown op {op!r}")


def main() -> None:
    server = Server()
    out = sys.stdout
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        try:
            reply = {"ok": server.handle(cmd)}
        except aurora_log.AuroraLogError as e:
            reply = {"err": type(e).__name__, "msg": str(e)}
        except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
            reply = {"err": type(e).__name__, "msg": str(e), "trace": traceback.format_exc()}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    if server.q is not None:
        server.q.close()


if __name__ == "__main__":
    main()
