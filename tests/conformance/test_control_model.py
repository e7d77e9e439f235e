"""Queue control joins the model-based test, on every backend: the conformance state machine
(tests/conformance/test_queue_model.py, every rule and invariant) plus pause/resume,
concurrency and rate limits, dependencies and periodic firing, against the reference
model (tests/conformance/model.py) with the fake clock.

The machine starts with a concurrency limit on q1 and a rate limit on job type b (the
set_limit rule changes or removes them): with thirty-odd rules, a limit set only by a
rule would rarely meet the claims that test it.
"""

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import rule, run_state_machine_as_test

from model import UnknownParent
from test_queue_model import QueueMachine, job_specs

from aurora_log.errors import UnknownParentError
from aurora_log.job import Job

SCHEDULES = (("s", "skip"), ("o", "once"))


class ControlMachine(QueueMachine):
    dsn = None

    def __init__(self):
        super().__init__()
        self.q.set_limit(queue="q1", concurrency=1)
        self.model.set_limit("queue", "q1", 1)
        self.q.set_limit(job_type="b", rate=(2, 10.0))
        self.model.set_limit("job_type", "b", 0, 2, 10_000)

    def _open(self):
        q = super()._open()
        for name, missed in SCHEDULES:        # registered at startup, as an app does
            q.schedule_periodic(name, "*/5 * * * *", Job("tick", {"s": name}, queue="cron"),
                                missed=missed)
        return q

    @rule(queue=st.sampled_from(["q1", "q2"]))
    def pause(self, queue):
        self.q.pause(queue)
        self.model.pause(queue)

    @rule(queue=st.sampled_from(["q1", "q2"]))
    def resume(self, queue):
        self.q.resume(queue)
        self.model.resume(queue)

    @rule(scope=st.sampled_from(["queue", "job_type"]), data=st.data(),
          concurrency=st.sampled_from([None, 1, 2]),
          rate=st.sampled_from([None, (1, 5_000), (2, 10_000)]))
    def set_limit(self, scope, data, concurrency, rate):
        name = data.draw(st.sampled_from(["q1", "q2"] if scope == "queue" else ["a", "b"]))
        self.q.set_limit(**{scope: name}, concurrency=concurrency,
                         rate=None if rate is None else (rate[0], rate[1] / 1000))
        self.model.set_limit(scope, name, concurrency or 0, rate[0] if rate else 0,
                             rate[1] if rate else 0)

    @rule(spec=job_specs, data=st.data(), policy=st.sampled_from(["cancel", "ignore"]))
    def enqueue_child(self, spec, data, policy):
        if not self.model.jobs:
            return
        parents = data.draw(st.lists(st.sampled_from(list(self.model.jobs)), min_size=1,
                                     max_size=2, unique=True))
        j, sched = self._job(spec)
        j.after(*parents, on_parent_failure=policy)
        got = self.q.enqueue(j)
        want = self.model.enqueue(
            j.id, j.job_type, j.queue, int(j.priority), j.max_retries,
            round(j.lease_duration * 1000),
            None if j.timeout_seconds is None else round(j.timeout_seconds * 1000),
            j.unique_key, j.payload, sched, parents=tuple(parents), on_failure=policy)
        assert got == want

    @rule()
    def enqueue_unknown_parent(self):
        lsn = self.q.stats()["last_lsn"]
        with pytest.raises(UnknownParentError):
            self.q.enqueue(Job("a", {}).after("no-such-parent"))
        with pytest.raises(UnknownParent):
            self.model.check_parents(["no-such-parent"])
        assert self.q.stats()["last_lsn"] == lsn

    @rule()
    def run_periodic(self):
        ids = self.q.run_periodic()
        want = [name for name, missed in SCHEDULES
                if self.model.fire_every_5_min(name, missed, ids) is not None]
        assert len(ids) == len(want)
        for job_id, name in zip(ids, want, strict=True):
            self.model.enqueue(job_id, "tick", "cron", 2, 3, 30_000, 300_000, None,
                               {"s": name})

    @rule(ms=st.sampled_from([240_000, 300_000, 3_600_000]))
    def advance_far(self, ms):
        self.model.now += ms


def test_control_model(backend, request):
    machine = type("ControlMachine_" + backend, (ControlMachine,), {})
    examples = 200
    if backend == "postgres":
        machine.dsn = request.getfixturevalue("pg_server").dsn
        examples = 40
    run_state_machine_as_test(machine, settings=settings(
        max_examples=examples, stateful_step_count=50, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
