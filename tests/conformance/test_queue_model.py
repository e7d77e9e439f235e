"""Model-based test: random operation sequences against the reference model in model.py,
comparing every observable after each step, on every backend (local: 200 examples x 50
steps; PostgreSQL: 40 x 50, each example in a fresh schema).

Rules about the local store's files (compact, crash = a copy of the files a killed process
leaves, the open-time recovery of running jobs) run on the local backend only: on
PostgreSQL a reopen changes nothing (running jobs keep their leases; the reaper ends them).
"""

import shutil
import tempfile
import uuid

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
from model import Invalid, Model, Stale

import aurora_log
from aurora_log.errors import InvalidStateError, JobNotFoundError, StaleLeaseError
from aurora_log.job import Job, from_ms, to_ms

T0 = 1_800_000_000_000  # ms; a fixed start for the fake clock

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
})
names = st.none() | st.sets(st.sampled_from(["a", "b", "q1", "q2"]), min_size=1, max_size=2)


class QueueMachine(RuleBasedStateMachine):
    tokens = Bundle("tokens")

    dsn: str | None = None          # set per backend by the test below: None = local

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="aurora-model-")
        self.schema = "m_" + uuid.uuid4().hex[:12]
        self.model = Model(T0)
        self.q = self._open()
        self.counter = 0

    def _open(self):
        def clock():
            return self.model.now / 1000
        if self.dsn is not None:
            return aurora_log.open(self.dsn, schema=self.schema, clock=clock,
                                   reaper_interval=None, pool_size=2)
        return aurora_log.open(self.dir + "/store", durability="os",
                               clock=clock, reaper_interval=None,
                               segment_bytes=256 << 10,  # small: fast to create, rolls often
                               auto_compact=False, retain_seconds=None, retain_count=None)

    def teardown(self):
        try:
            self.q.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            if self.dsn is not None:
                import psycopg
                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")

    # ------------------------------------------------------------ helpers
    def _job(self, spec):
        self.counter += 1
        j = Job(spec["job_type"], {"n": spec["n"]}, id=f"job-{self.counter}",
                priority=spec["priority"], max_retries=spec["max_retries"],
                lease_duration=spec["lease_ms"] / 1000,
                timeout_seconds=None if spec["timeout_ms"] is None else spec["timeout_ms"] / 1000,
                queue=spec["queue"], unique_key=spec["unique_key"],
                created_at=from_ms(self.model.now))
        sched = None
        if spec["sched"] is not None:
            sched = self.model.now + spec["sched"]
            j.schedule_at(from_ms(sched))
        return j, sched

    def _model_enqueue(self, j, sched):
        return self.model.enqueue(j.id, j.job_type, j.queue, int(j.priority), j.max_retries,
                                  round(j.lease_duration * 1000),
                                  None if j.timeout_seconds is None
                                  else round(j.timeout_seconds * 1000),
                                  j.unique_key, j.payload, sched)

    @staticmethod
    def _split(filters):
        if filters is None:
            return None, None
        types = {f for f in filters if f in ("a", "b")} or None
        queues = {f for f in filters if f.startswith("q")} or None
        return types, queues

    # ------------------------------------------------------------ rules
    @rule(spec=job_specs)
    def enqueue(self, spec):
        j, sched = self._job(spec)
        assert self.q.enqueue(j) == self._model_enqueue(j, sched)

    @rule(specs=st.lists(job_specs, min_size=1, max_size=4))
    def enqueue_many(self, specs):
        built = [self._job(s) for s in specs]
        got = self.q.enqueue_many([j for j, _ in built])
        assert got == [self._model_enqueue(j, s) for j, s in built]

    @rule(target=tokens, filters=names)
    def claim(self, filters):
        types, queues = self._split(filters)
        expected = self.model.best(types, queues)
        job = self.q.claim("w1", job_types=types, queues=queues)
        if expected is None:
            assert job is None
            return multiple()
        assert job is not None and job.id == expected
        self.model.claim(job.id, job.token, "w1")
        assert to_ms(job.lease_deadline) == self.model.jobs[job.id].lease_deadline
        return (job.id, job.token)

    @rule(t=tokens)
    def heartbeat(self, t):
        try:
            want = self.model.heartbeat(*t)
        except Stale:
            with pytest.raises(StaleLeaseError):
                self.q.heartbeat(*t)
            return
        assert self.q.heartbeat(*t) == want

    @rule(t=tokens, result=st.sampled_from([None, 1, {"r": [1, "x"]}]))
    def complete(self, t, result):
        try:
            self.model.complete(*t, result)
        except Stale:
            with pytest.raises(StaleLeaseError):
                self.q.complete(*t, result)
            return
        self.q.complete(*t, result)

    @rule(t=tokens)
    def fail(self, t):
        try:
            want = self.model.fail(*t, "boom")
        except Stale:
            with pytest.raises(StaleLeaseError):
                self.q.fail(*t, "boom")
            return
        assert self.q.fail(*t, "boom").value == want

    @rule(data=st.data())
    def cancel(self, data):
        if not self.model.jobs:
            return
        job_id = data.draw(st.sampled_from(list(self.model.jobs)))
        try:
            want = self.model.cancel(job_id)
        except Invalid:
            with pytest.raises(InvalidStateError):
                self.q.cancel(job_id)
            return
        assert self.q.cancel(job_id).value == want

    @rule(data=st.data())
    def retry_dead(self, data):
        if not self.model.jobs:
            return
        job_id = data.draw(st.sampled_from(list(self.model.jobs)))
        try:
            self.model.retry_dead(job_id)
        except Invalid:
            with pytest.raises(InvalidStateError):
                self.q.retry_dead(job_id)
            return
        self.q.retry_dead(job_id)

    @rule(ms=st.sampled_from([0, 1, 999, 2_000, 5_000, 10_001, 30_000, 61_000]))
    def advance(self, ms):
        self.model.now += ms

    @precondition(lambda self: any(j.status == "running" for j in self.model.jobs.values()))
    @rule(data=st.data(), delta=st.sampled_from([-1, 0, 1]))
    def advance_to_a_lease_edge(self, data, delta):
        running = sorted(j.id for j in self.model.jobs.values() if j.status == "running")
        j = self.model.jobs[data.draw(st.sampled_from(running))]
        edge = data.draw(st.sampled_from(
            [j.lease_deadline] + ([j.started + j.timeout_ms] if j.timeout_ms else [])))
        self.model.now = max(self.model.now, edge + delta)

    @rule()
    def reap(self):
        assert self.q.reap() == self.model.reap()

    @rule()
    def reopen(self):
        self.q.close()
        # a shared store's clean close hands its RUNNING jobs back itself (DETACH)
        handed_back = getattr(self.q, "returned_on_close", 0)
        self.q = self._open()
        if self.dsn is None:
            assert handed_back + self.q.recovered == self.model.reopen()
        else:
            assert self.q.recovered == 0        # leases, not the open, end dead attempts

    @precondition(lambda self: self.dsn is None)
    @rule()
    def compact(self):
        """A snapshot (+ retirement of the WAL the older snapshot covers) changes nothing
        observable; recovery from it is checked by the reopen/crash rules after it."""
        self.q.compact()

    @precondition(lambda self: self.dsn is None)
    @rule()
    def crash(self):
        """kill -9: the files as the dead process leaves them (written bytes survive,
        nothing closed or sealed), reopened from a copy."""
        self.q.flush()
        self.gen = getattr(self, "gen", 0) + 1
        dest = f"{self.dir}/crash{self.gen}"
        shutil.copytree(str(self.q.path), dest)
        self.q.close()
        shutil.rmtree(self.dir + "/store")
        shutil.move(dest, self.dir + "/store")
        self.q = self._open()
        assert self.q.recovered == self.model.reopen()

    @rule()
    def unknown_id(self):
        assert self.q.get("nope") is None
        with pytest.raises(JobNotFoundError):
            self.q.cancel("nope")

    # ------------------------------------------------------------ observables
    @invariant()
    def same_observables(self):
        q, m = self.q, self.model
        for job_id, mj in m.jobs.items():
            j = q.get(job_id)
            assert j is not None, job_id
            got = (j.status.value, j.retry_count, int(j.priority), j.queue, j.job_type,
                   j.error, j.cancel_requested, j.payload, j.unique_key,
                   None if j.scheduled_at is None else to_ms(j.scheduled_at))
            want = (mj.status, mj.retry_count, mj.priority, mj.queue, mj.job_type, mj.error,
                    mj.cancel_requested, mj.payload, mj.unique_key, mj.scheduled)
            assert got == want, job_id
            if mj.status == "running":
                assert (j.token, to_ms(j.lease_deadline)) == (mj.token, mj.lease_deadline)
            else:
                assert j.token is None and j.lease_deadline is None
            if mj.status == "completed":
                assert j.result == mj.result
            assert [t.kind for t in q.history(job_id)] == mj.transitions
        stats = q.stats()
        assert {k: stats[k] for k in m.stats()} == m.stats()
        if self.dsn is None:
            # the next claim would pick the same job (pick() changes nothing observable)
            assert q._state.pick(m.now) == m.best()


def test_queue_model(backend, request):
    machine = type("QueueMachine_" + backend, (QueueMachine,), {})
    examples = 200
    if backend == "postgres":
        machine.dsn = request.getfixturevalue("pg_server").dsn
        examples = 40
    run_state_machine_as_test(machine, settings=settings(
        max_examples=examples, stateful_step_count=50, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
