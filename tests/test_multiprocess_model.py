"""Model-based test of one store shared by 3 real processes (issue 19).

Each step of a hypothesis state machine runs in one of 3 helper processes
(tests/mp_queue_server.py), each holding its own ``aurora_log.open(path, clock=...)`` on the
same directory, driven over pipes with small JSON commands. The fake clock is shared: an
int64 of ms in a file every process maps. After every step, the reference model of the
single-process suite (tests/conformance/model.py, the same one) must equal what EVERY
process observes (get, history and stats: each process catches up before a read), so:

* at most one live lease per job over all processes (a claim anywhere takes the job the
  model says, and no other claim gets it while it runs);
* fencing tokens: a token from one process's claim works in any process while its lease
  holds, and a stale one is refused everywhere;
* priority, due time and FIFO order are global (claims in any process follow the model's
  order over jobs enqueued by all);
* unique keys are global; history is complete in every process.

Rules the single-process suite has and this one leaves out: ``crash`` (copying files under
live processes is no crash image; tests/test_multiprocess_kill9.py kills real processes)
and the whole-store ``reopen``. ``restart`` closes ONE process and opens it again while the
others stay open: its RUNNING jobs come back with "process died" at its close
(docs/MULTIPROCESS.md section 8), the others' are untouched.

Examples: 20 x 20 steps here; AURORA_MP_MODEL_EXAMPLES / AURORA_MP_MODEL_STEPS for more
(``python bench/soak.py mpmodel``).
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)
from mp_support import Helper, HelperError, SharedClock

sys.path.insert(0, str(Path(__file__).resolve().parent / "conformance"))
from model import Invalid, Model, NotFound, Stale  # noqa: E402

T0 = 1_800_000_000_000  # ms; a fixed start for the shared fake clock
PROCS = int(os.environ.get("AURORA_MP_MODEL_PROCS", "3"))  # 1: a self-check on today's store
OPTIONS = dict(durability="os", reaper_interval=None, segment_bytes=256 << 10,
               auto_compact=False, retain_seconds=None, retain_count=None)

job_specs = st.fixed_dictionaries({
    "job_type": st.sampled_from(["a", "b"]),
    "queue": st.sampled_from(["q1", "q2"]),
    "priority": st.integers(1, 4),
    "max_retries": st.integers(0, 2),
    "lease_ms": st.sampled_from([5_000, 10_000, 20_000]),
    "timeout_ms": st.sampled_from([None, 15_000, 60_000]),
    "unique_key": st.sampled_from([None, None, "k1", "k2"]),
    "sched": st.sampled_from([None, None, -1_000, 0, 3_000, 30_000]),
    "n": st.integers(0, 1000),
    "own_id": st.booleans(),      # False: the queue's new_id() (the enqueue path that
})                                # depends on no state)
names = st.none() | st.sets(st.sampled_from(["a", "b", "q1", "q2"]), min_size=1, max_size=2)
procs = st.integers(0, PROCS - 1)


def _nothing_to_reap(model: Model) -> bool:
    """No lease or timeout is due at the model's now (a reaper tick would do nothing)."""
    return copy.deepcopy(model).reap() == 0


class Pool:
    """The helper processes, kept across examples (one open/close per example)."""

    def __init__(self) -> None:
        self.helpers = [Helper() for _ in range(PROCS)]

    def respawn(self, i: int) -> Helper:
        self.helpers[i].stop()
        self.helpers[i] = Helper()
        return self.helpers[i]

    def stop(self) -> None:
        for h in self.helpers:
            h.stop()


def raises(kind: str, fn, *args, **kw) -> None:
    """fn must fail with the aurora_log exception class named `kind`."""
    try:
        got = fn(*args, **kw)
    except HelperError as e:
        assert e.kind == kind, e
        return
    raise AssertionError(f"expected {kind}, got {got!r}")


class MultiProcessMachine(RuleBasedStateMachine):
    tokens = Bundle("tokens")
    pool: Pool            # set by the test

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="aurora-mp-model-"))
        self.model = Model(T0)
        self.clock = SharedClock(self.dir / "clock", T0)
        self.counter = 0
        for i, h in enumerate(self.pool.helpers):
            if not h.alive():
                h = self.pool.respawn(i)
            h.call("close")
            h.call("open", path=str(self.dir / "store"), clock=str(self.clock.path),
                   options=OPTIONS)

    def teardown(self) -> None:
        try:
            for i, h in enumerate(self.pool.helpers):
                try:
                    h.call("close")
                except HelperError:
                    self.pool.respawn(i)
        finally:
            self.clock.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def h(self, p: int) -> Helper:
        return self.pool.helpers[p]

    def _set_now(self, ms: int) -> None:
        self.model.now = ms
        self.clock.now_ms = ms

    # ------------------------------------------------------------ helpers
    def _spec(self, spec: dict) -> dict:
        self.counter += 1
        out = {k: spec[k] for k in ("job_type", "queue", "priority", "max_retries",
                                    "lease_ms", "timeout_ms", "unique_key")}
        out["payload"] = {"n": spec["n"], "c": self.counter}
        out["id"] = f"job-{self.counter}" if spec["own_id"] else None
        out["sched_ms"] = None if spec["sched"] is None else self.model.now + spec["sched"]
        return out

    def _model_enqueue(self, job_id: str, s: dict) -> str:
        return self.model.enqueue(job_id, s["job_type"], s["queue"], s["priority"],
                                  s["max_retries"], s["lease_ms"], s["timeout_ms"],
                                  s["unique_key"], s["payload"], s["sched_ms"])

    @staticmethod
    def _split(filters):
        if filters is None:
            return None, None
        types = sorted(f for f in filters if f in ("a", "b")) or None
        queues = sorted(f for f in filters if f.startswith("q")) or None
        return types, queues

    def _holders(self) -> list[int]:
        """The processes with RUNNING jobs."""
        return sorted({int(j.worker[1:]) for j in self.model.jobs.values()
                       if j.status == "running"})

    def _reap_process(self, worker: str) -> int:
        """The model of one process's clean close: its RUNNING jobs end as "process died"
        (the model's own reopen(), restricted to the jobs that process claimed)."""
        mine = sorted((j for j in self.model.jobs.values()
                       if j.status == "running" and j.worker == worker),
                      key=lambda j: (j.started, j.id))
        for j in mine:
            j.error = "process died"
            self.model._end_attempt(j, "pending", "reap")
        return len(mine)

    # ------------------------------------------------------------ rules
    @rule(p=procs, spec=job_specs)
    def enqueue(self, p, spec):
        s = self._spec(spec)
        got = self.h(p).call("enqueue", jobs=[s])
        assert got["result"] == self._model_enqueue(got["ids"][0], s)

    @rule(p=procs, specs=st.lists(job_specs, min_size=1, max_size=4))
    def enqueue_many(self, p, specs):
        built = [self._spec(s) for s in specs]
        got = self.h(p).call("enqueue", jobs=built, many=True)
        want = [self._model_enqueue(i, s) for i, s in zip(got["ids"], built, strict=True)]
        assert got["result"] == want

    @rule(target=tokens, p=procs, filters=names)
    def claim(self, p, filters):
        types, queues = self._split(filters)
        expected = self.model.best(None if types is None else set(types),
                                   None if queues is None else set(queues))
        job = self.h(p).call("claim", worker=f"w{p}", types=types, queues=queues)
        if expected is None:
            assert job is None
            return multiple()
        assert job is not None and job["id"] == expected, (job, expected)
        self.model.claim(job["id"], job["token"], f"w{p}")
        assert job["lease_deadline_ms"] == self.model.jobs[job["id"]].lease_deadline
        return (job["id"], job["token"])

    @rule(p=procs, t=tokens)
    def heartbeat(self, p, t):
        try:
            want = self.model.heartbeat(*t)
        except Stale:
            raises("StaleLeaseError", self.h(p).call, "heartbeat", id=t[0], token=t[1])
            return
        assert self.h(p).call("heartbeat", id=t[0], token=t[1]) == want

    @rule(p=procs, t=tokens, result=st.sampled_from([None, 1, {"r": [1, "x"]}]))
    def complete(self, p, t, result):
        try:
            self.model.complete(*t, result)
        except Stale:
            raises("StaleLeaseError", self.h(p).call, "complete", id=t[0], token=t[1],
                   result=result)
            return
        self.h(p).call("complete", id=t[0], token=t[1], result=result)

    @rule(p=procs, t=tokens)
    def fail(self, p, t):
        try:
            want = self.model.fail(*t, "boom")
        except Stale:
            raises("StaleLeaseError", self.h(p).call, "fail", id=t[0], token=t[1],
                   error="boom")
            return
        assert self.h(p).call("fail", id=t[0], token=t[1], error="boom") == want

    @rule(p=procs, data=st.data())
    def cancel(self, p, data):
        if not self.model.jobs:
            return
        # by enqueue order, not by id: new_id() ids differ from run to run
        job_id = data.draw(st.sampled_from(list(self.model.jobs)))
        try:
            want = self.model.cancel(job_id)
        except Invalid:
            raises("InvalidStateError", self.h(p).call, "cancel", id=job_id)
            return
        assert self.h(p).call("cancel", id=job_id) == want

    @rule(p=procs, data=st.data())
    def retry_dead(self, p, data):
        if not self.model.jobs:
            return
        # by enqueue order, not by id: new_id() ids differ from run to run
        job_id = data.draw(st.sampled_from(list(self.model.jobs)))
        try:
            self.model.retry_dead(job_id)
        except Invalid:
            raises("InvalidStateError", self.h(p).call, "retry_dead", id=job_id)
            return
        self.h(p).call("retry_dead", id=job_id)

    @rule(ms=st.sampled_from([0, 1, 999, 2_000, 5_000, 10_001, 30_000, 61_000]))
    def advance(self, ms):
        self._set_now(self.model.now + ms)

    @precondition(lambda self: any(j.status == "running" for j in self.model.jobs.values()))
    @rule(data=st.data(), delta=st.sampled_from([-1, 0, 1]))
    def advance_to_a_lease_edge(self, data, delta):
        running = [j.id for j in self.model.jobs.values() if j.status == "running"]
        j = self.model.jobs[data.draw(st.sampled_from(running))]
        edge = data.draw(st.sampled_from(
            [j.lease_deadline] + ([j.started + j.timeout_ms] if j.timeout_ms else [])))
        self._set_now(max(self.model.now, edge + delta))

    @rule(p=procs)
    def reap(self, p):
        assert self.h(p).call("reap") == self.model.reap()

    @rule(p=procs)
    def restart(self, p):
        """One process closes and opens again while the others stay open."""
        self.h(p).call("close")
        reaped = self._reap_process(f"w{p}")
        got = self.h(p).call("open", path=str(self.dir / "store"), clock=str(self.clock.path),
                             options=OPTIONS)
        # the others are open: nothing left to recover (alone, the open recovers it all)
        assert got["recovered"] == (reaped if PROCS == 1 else 0)

    @precondition(lambda self: self._holders() and _nothing_to_reap(self.model))
    @rule(data=st.data())
    def kill9(self, data):
        """SIGKILL one process; a new one opens in its place. The dead process's RUNNING
        jobs come back ("process died") as soon as a live process notices the death: the
        new one runs a reaper thread (ticks of 50 ms) until they are back, then reopens
        without one. While it runs no lease or timeout may be due (precondition), so the
        thread can only act on the death. The victim is a process that holds jobs."""
        p = data.draw(st.sampled_from(self._holders()))
        h = self.h(p)
        h.proc.kill()
        h.proc.wait()
        gone = [j.id for j in self.model.jobs.values()
                if j.status == "running" and j.worker == f"w{p}"]
        self._reap_process(f"w{p}")
        h = self.pool.respawn(p)
        got = h.call("open", path=str(self.dir / "store"), clock=str(self.clock.path),
                     options=dict(OPTIONS, reaper_interval=0.05))
        assert got["recovered"] == 0      # the others are open: they recover, not the open
        end = time.monotonic() + 10
        while True:
            jobs = h.call("view", ids=gone)["jobs"]
            if all(jobs[i]["history"] == self.model.jobs[i].transitions for i in gone):
                break
            assert time.monotonic() < end, "the dead process's jobs did not come back"
            time.sleep(0.02)
        h.call("close")
        h.call("open", path=str(self.dir / "store"), clock=str(self.clock.path),
               options=OPTIONS)

    @rule(p=procs)
    def compact(self, p):
        """A snapshot written by one process while the others append changes nothing any
        process observes."""
        self.h(p).call("compact")

    @rule(p=procs)
    def unknown_id(self, p):
        view = self.h(p).call("view", ids=["nope"])
        assert view["jobs"]["nope"] is None
        raises("JobNotFoundError", self.h(p).call, "cancel", id="nope")
        try:
            self.model.cancel("nope")
        except NotFound:
            pass

    # ------------------------------------------------------------ observables
    @invariant()
    def every_process_sees_the_model(self):
        m = self.model
        ids = sorted(m.jobs)
        want_stats = m.stats()
        for p in range(PROCS):
            view = self.h(p).call("view", ids=ids)
            for job_id in ids:
                mj, j = m.jobs[job_id], view["jobs"][job_id]
                assert j is not None, (p, job_id)
                got = (j["status"], j["retry_count"], j["priority"], j["queue"],
                       j["job_type"], j["error"], j["cancel_requested"], j["payload"],
                       j["unique_key"], j["scheduled_ms"])
                want = (mj.status, mj.retry_count, mj.priority, mj.queue, mj.job_type,
                        mj.error, mj.cancel_requested, mj.payload, mj.unique_key,
                        mj.scheduled)
                assert got == want, (p, job_id)
                if mj.status == "running":
                    assert (j["token"], j["lease_deadline_ms"]) == \
                        (mj.token, mj.lease_deadline), (p, job_id)
                else:
                    assert j["token"] is None and j["lease_deadline_ms"] is None, (p, job_id)
                if mj.status == "completed":
                    assert j["result"] == mj.result, (p, job_id)
                assert j["history"] == mj.transitions, (p, job_id)
            stats = view["stats"]
            assert {k: stats[k] for k in want_stats} == want_stats, p


def model_settings() -> settings:
    return settings(
        max_examples=int(os.environ.get("AURORA_MP_MODEL_EXAMPLES", "20")),
        stateful_step_count=int(os.environ.get("AURORA_MP_MODEL_STEPS", "20")),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def run_model(examples: int | None = None, steps: int | None = None) -> None:
    """Run the state machine (bench/soak.py calls this with larger counts)."""
    s = model_settings()
    if examples is not None or steps is not None:
        s = settings(s, max_examples=examples or s.max_examples,
                     stateful_step_count=steps or s.stateful_step_count)
    pool = Pool()
    try:
        machine = type("MultiProcessMachine_run", (MultiProcessMachine,), {"pool": pool})
        run_state_machine_as_test(machine, settings=s)
    finally:
        pool.stop()


def test_three_processes_against_the_model(shared_store):
    run_model()


@pytest.mark.slow
@pytest.mark.timeout(1800)      # 100 examples of three processes: minutes on a loaded machine
def test_three_processes_against_the_model_long(shared_store):
    run_model(examples=100, steps=50)
