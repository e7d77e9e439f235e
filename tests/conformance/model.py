"""A small pure-Python reference model of the queue's observable behaviour, written from the
spec (not from state.py): a dict of jobs and linear scans, with a fake clock in ms.

Rules it encodes (docs/INTERNALS.md, issue 3):
* order: priority desc, then due time, then FIFO (the order in which jobs became waiting);
* due: scheduled_at if given, else the enqueue time; a retry is due at now + backoff with
  backoff = min(3600 s, 5 s * 2**retry_count) (retry_count before the increment);
* a lease holds through its deadline (expired when now > deadline); a timeout fires when
  now > started + timeout; a timeout is reported before a lease expiry;
* max_retries = retries after the first attempt; a spent job goes to dead_letter; a job
  with a pending cancel request goes to cancelled instead of retrying;
* one reap ends timeouts first (by started + timeout, then id), then expired leases (by
  deadline, then id); each retry, release or retry_dead takes the next FIFO position, so
  jobs retried at the same due time are claimed in the order they were ended;
* reopen: every running job is reaped with "process died" (by start time, then id);
* unique keys: held while pending / running / failed.

Queue control (issue 17):
* a paused queue hands out nothing until resumed;
* a concurrency limit (per queue or per job type) of N: no claim while N jobs of that scope
  are running;
* a rate limit of C per P ms (per queue or per job type): no claim while C claims of that
  scope happened in the last P ms (only the last C claim times are remembered; setting
  a limit keeps the last C of the ones remembered, removing it forgets them);
* a job with parents is claimable once every parent completed; a parent that ends
  dead-lettered or cancelled cancels it (error "parent job X was dead-lettered/cancelled",
  transition "cancel") with on_parent_failure="cancel", or counts as finished with
  "ignore"; a cancelled child settles its own children the same way;
* a periodic schedule "every 5 minutes" fires once per due time (multiples of 300 s),
  only while now - due <= grace (60 s) for missed="skip"; missed="once" fires the latest
  missed one once after a gap (a schedule that never fired catches nothing up).
"""

from __future__ import annotations

from dataclasses import dataclass, field

WAITING = ("pending", "failed")
LIVE = ("pending", "running", "failed")
FINISHED = ("completed", "dead_letter", "cancelled")


def backoff_ms(retry_count: int) -> int:
    return min(3_600_000, 5_000 * 2 ** min(retry_count, 62))


class Stale(Exception):
    pass


class NotFound(Exception):
    pass


class Invalid(Exception):
    pass


@dataclass
class MJob:
    id: str
    job_type: str
    queue: str
    priority: int
    max_retries: int
    lease_ms: int
    timeout_ms: int | None
    unique_key: str | None
    payload: dict
    status: str = "pending"
    retry_count: int = 0
    due: int = 0
    scheduled: int | None = None       # what Job.scheduled_at shows (ms)
    seq: int = 0
    token: str | None = None
    worker: str | None = None
    lease_deadline: int | None = None
    started: int | None = None
    error: str | None = None
    result: object = None
    cancel_requested: bool = False
    transitions: list = field(default_factory=list)
    parents: tuple = ()
    on_parent_failure: str = "cancel"
    waiting: set = field(default_factory=set)   # parents not finished yet


class UnknownParent(Exception):
    pass


class Model:
    def __init__(self, now_ms: int):
        self.now = now_ms
        self.jobs: dict[str, MJob] = {}
        self._seq = 0
        self.paused: set[str] = set()
        self.limits: dict[tuple[str, str], tuple[int, int, int]] = {}   # (scope, name) ->
        self.claims: dict[tuple[str, str], list[int]] = {}              # (conc, count, period)
        self.fired: dict[str, int] = {}

    # ---------------------------------------------------------------- control
    def pause(self, queue):
        self.paused.add(queue)

    def resume(self, queue):
        self.paused.discard(queue)

    def set_limit(self, scope, name, concurrency=0, rate_count=0, rate_period=0):
        key = (scope, name)
        if not concurrency and not rate_count:
            self.limits.pop(key, None)
            self.claims.pop(key, None)
            return
        self.limits[key] = (concurrency, rate_count, rate_period)
        if rate_count:
            self.claims[key] = self.claims.get(key, [])[-rate_count:]
        else:
            self.claims.pop(key, None)

    def _blocked(self, j: MJob) -> bool:
        if j.queue in self.paused:
            return True
        for key in (("queue", j.queue), ("job_type", j.job_type)):
            lim = self.limits.get(key)
            if lim is None:
                continue
            conc, count, period = lim
            if conc:
                field_ = "queue" if key[0] == "queue" else "job_type"
                running = sum(1 for o in self.jobs.values() if o.status == "running"
                              and getattr(o, field_) == key[1])
                if running >= conc:
                    return True
            if count:
                recent = self.claims[key][-count:]
                if len(recent) >= count and recent[0] > self.now - period:
                    return True
        return False

    def _held(self, j: MJob) -> bool:
        return bool(j.waiting)

    def _parent_finished(self, parent: MJob) -> None:
        """``parent`` just reached a final status: its waiting children stop waiting for
        it; with "cancel", a failed parent cancels them (and so on down)."""
        failed = parent.status in ("dead_letter", "cancelled")
        what = "was dead-lettered" if parent.status == "dead_letter" else "was cancelled"
        for c in sorted(self.jobs.values(), key=lambda c: c.seq):
            if parent.id not in c.waiting:
                continue
            if failed and c.on_parent_failure == "cancel":
                c.waiting = set()
                if c.status == "pending":
                    c.status = "cancelled"
                    c.error = f"parent job {parent.id} {what}"
                    c.transitions.append("cancel")
                    self._parent_finished(c)
            else:
                c.waiting.discard(parent.id)

    def check_parents(self, parents, batch_ids=()):
        for p in parents:
            if p not in self.jobs and p not in batch_ids:
                raise UnknownParent(p)

    def fire_every_5_min(self, name, missed, now_ids):
        """The ids the queue reported for this firing are adopted (`now_ids`): returns
        the due time fired or None."""
        due = self.now - self.now % 300_000
        last = self.fired.get(name)
        if last is not None and due <= last:
            return None
        if self.now - due > 60_000 and (missed == "skip" or last is None):
            return None
        self.fired[name] = due
        return due

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # ---------------------------------------------------------------- producers
    def unique_owner(self, key):
        for j in self.jobs.values():
            if j.unique_key == key and j.status in LIVE:
                return j.id
        return None

    def enqueue(self, job_id, job_type, queue, priority, max_retries, lease_ms, timeout_ms,
                unique_key, payload, scheduled_ms=None, parents=(), on_failure="cancel") -> str:
        if unique_key is not None:
            owner = self.unique_owner(unique_key)
            if owner is not None:
                return owner
        j = MJob(job_id, job_type, queue, priority, max_retries, lease_ms, timeout_ms,
                 unique_key, payload, parents=tuple(parents), on_parent_failure=on_failure)
        j.due = scheduled_ms if scheduled_ms is not None else self.now
        j.scheduled = scheduled_ms
        j.seq = self._next_seq()
        j.transitions.append("enqueue")
        self.jobs[job_id] = j
        for p in parents:
            pj = self.jobs[p]
            if pj.status in ("dead_letter", "cancelled") and on_failure == "cancel":
                # a parent that already failed settles the child at once
                what = "was dead-lettered" if pj.status == "dead_letter" else "was cancelled"
                j.status = "cancelled"
                j.error = f"parent job {p} {what}"
                j.transitions.append("cancel")
                j.waiting = set()
                break
            if pj.status not in FINISHED:
                j.waiting.add(p)
        return job_id

    # ---------------------------------------------------------------- workers
    def best(self, job_types=None, queues=None) -> str | None:
        cands = [j for j in self.jobs.values()
                 if j.status in WAITING and j.due <= self.now
                 and (job_types is None or j.job_type in job_types)
                 and (queues is None or j.queue in queues)
                 and not self._held(j) and not self._blocked(j)]
        if not cands:
            return None
        return min(cands, key=lambda j: (-j.priority, j.due, j.seq)).id

    def claim(self, job_id: str, token: str, worker: str) -> None:
        j = self.jobs[job_id]
        j.status = "running"
        j.token = token
        j.worker = worker
        j.started = self.now
        j.lease_deadline = self.now + j.lease_ms
        j.cancel_requested = False
        j.transitions.append("claim")
        for key in (("queue", j.queue), ("job_type", j.job_type)):
            if key in self.claims:
                self.claims[key].append(self.now)
                self.claims[key] = self.claims[key][-self.limits[key][1]:]

    def _running(self, job_id, token) -> MJob:
        j = self.jobs.get(job_id)
        if j is None:
            raise NotFound(job_id)
        if j.status != "running" or j.token != token:
            raise Stale(job_id)
        return j

    def heartbeat(self, job_id, token) -> bool:
        j = self._running(job_id, token)
        j.lease_deadline = max(j.lease_deadline, self.now + j.lease_ms)
        return j.cancel_requested

    def complete(self, job_id, token, result=None) -> None:
        j = self._running(job_id, token)
        j.status = "completed"
        j.token = j.lease_deadline = None
        j.result = result
        j.error = None
        j.transitions.append("complete")
        self._parent_finished(j)

    def _end_attempt(self, j: MJob, retry_status: str, kind: str) -> str:
        j.token = j.lease_deadline = None
        if j.cancel_requested:
            j.status = "cancelled"
        elif j.retry_count < j.max_retries:
            j.due = j.scheduled = self.now + backoff_ms(j.retry_count)
            j.retry_count += 1
            j.status = retry_status
            j.seq = self._next_seq()
        else:
            j.status = "dead_letter"
        j.transitions.append(kind)
        if j.status in FINISHED:
            self._parent_finished(j)
        return j.status

    def fail(self, job_id, token, error) -> str:
        j = self._running(job_id, token)
        j.error = error
        return self._end_attempt(j, "failed", "fail")

    def cancel(self, job_id) -> str:
        j = self.jobs.get(job_id)
        if j is None:
            raise NotFound(job_id)
        if j.status in WAITING:
            j.status = "cancelled"
            j.transitions.append("cancel")
            self._parent_finished(j)
            return "cancelled"
        if j.status == "running":
            if not j.cancel_requested:
                j.transitions.append("cancel_request")
            j.cancel_requested = True
            return "running"
        raise Invalid(job_id)

    def retry_dead(self, job_id) -> None:
        j = self.jobs.get(job_id)
        if j is None:
            raise NotFound(job_id)
        if j.status != "dead_letter":
            raise Invalid(job_id)
        if j.unique_key is not None and self.unique_owner(j.unique_key) is not None:
            raise Invalid(job_id)
        j.status = "pending"
        j.retry_count = 0
        j.due = self.now
        j.scheduled = None
        j.cancel_requested = False
        j.seq = self._next_seq()
        j.transitions.append("retry_dead")

    # ---------------------------------------------------------------- reaper / restart
    def reap(self) -> int:
        running = [j for j in self.jobs.values() if j.status == "running"]
        timed = sorted((j for j in running if j.timeout_ms is not None
                        and self.now > j.started + j.timeout_ms),
                       key=lambda j: (j.started + j.timeout_ms, j.id))
        done = {j.id for j in timed}
        leased = sorted((j for j in running if j.id not in done
                         and self.now > j.lease_deadline),
                        key=lambda j: (j.lease_deadline, j.id))
        for j, reason in [(j, "timeout") for j in timed] + [(j, "lease expired") for j in leased]:
            j.error = reason
            self._end_attempt(j, "pending", "reap")
        return len(timed) + len(leased)

    def reopen(self) -> int:
        running = sorted((j for j in self.jobs.values() if j.status == "running"),
                         key=lambda j: (j.started, j.id))
        for j in running:
            j.error = "process died"
            self._end_attempt(j, "pending", "reap")
        return len(running)

    # ---------------------------------------------------------------- observables
    def stats(self) -> dict:
        out = {s: 0 for s in ("pending", "running", "completed", "failed", "dead_letter",
                              "cancelled")}
        for j in self.jobs.values():
            out[j.status] += 1
        out["total"] = len(self.jobs)
        return out
