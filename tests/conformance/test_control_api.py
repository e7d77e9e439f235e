"""Queue control through the public API, on every backend: pause/resume, concurrency and
rate limits, periodic schedules, dependencies (chain, group, Job.after). Each test names
the failure it guards against; a fake clock drives time, and the reaper thread is off
unless a test is about it. Engine-internal control tests (crash copies, compaction, the
CLI on a directory, verify) stay in tests/test_queue_control.py."""

import threading
import time

import pytest

from aurora_log import chain, group
from aurora_log.errors import DependencyCycleError, UnknownParentError
from aurora_log.job import Job, JobStatus, from_ms

T0 = 1_800_000_000.0          # conftest's fake-clock start: a multiple of 300 s


def _claim_all(q, **kw):
    out = []
    while (j := q.claim("w", **kw)) is not None:
        out.append(j)
    return out


def _written(q):
    """What a refused call must leave unchanged."""
    s = q.stats()
    return s["last_lsn"], s["total"], s["control"]


# ---------------------------------------------------------------- pause / resume

def test_paused_queue_is_skipped_and_survives_restart(opener):
    q = opener()
    e = q.enqueue(Job("send", {}, queue="emails"))
    r = q.enqueue(Job("build", {}, queue="reports"))
    q.pause("emails")
    assert [j.id for j in _claim_all(q)] == [r]
    q.close()
    q = opener()
    assert q.stats()["control"]["paused"] == ["emails"]
    assert q.claim("w") is None
    assert q.get(e).status is JobStatus.PENDING and q.get(e).retry_count == 0
    q.resume("emails")
    assert q.claim("w").id == e
    q.close()
    q = opener()
    assert q.stats()["control"]["paused"] == []


def test_pause_seen_by_another_queue_object(opener):
    """Another process (here: another queue object on the same store) sees the pause."""
    q = opener()
    q.enqueue(Job("send", {}, queue="emails"))
    other = opener()        # a local store: shared by default, as between processes
    q.pause("emails")
    assert other.claim("w") is None
    q.resume("emails")
    assert other.claim("w") is not None


def test_resume_wakes_a_waiting_claim(opener):
    q = opener(clock=time.time)
    q.pause("emails")
    q.enqueue(Job("send", {}, queue="emails"))
    got = []
    t = threading.Thread(target=lambda: got.append(q.claim("w", wait=30)))
    t.start()
    time.sleep(0.05)
    q.resume("emails")
    t.join(30)
    assert got and got[0] is not None


def test_pause_refuses_bad_names_before_writing(q):
    before = _written(q)
    for bad in ("", None, 5):
        with pytest.raises((TypeError, ValueError)):
            q.pause(bad)
    assert _written(q) == before


# ---------------------------------------------------------------- concurrency limits

def test_concurrency_limit_per_queue(q):
    for _ in range(5):
        q.enqueue(Job("r", {}, queue="reports"))
    q.enqueue(Job("x", {}, queue="other"))
    q.set_limit(queue="reports", concurrency=2)
    claimed = _claim_all(q, queues="reports")
    assert len(claimed) == 2
    assert q.claim("w", queues="other") is not None        # other queues unaffected
    q.complete(claimed[0].id, claimed[0].token)
    assert q.claim("w", queues="reports") is not None
    assert q.claim("w", queues="reports") is None
    lim = q.stats()["control"]["limits"]
    assert lim == [{"scope": "queue", "name": "reports", "concurrency": 2, "running": 2}]


def test_concurrency_limit_skips_to_another_queue(q):
    """A full key does not hide the jobs behind it (the best job is blocked, the next
    one of another queue is handed out)."""
    from aurora_log.job import JobPriority
    for _ in range(3):
        q.enqueue(Job("r", {}, queue="reports", priority=JobPriority.HIGH))
    low = q.enqueue(Job("x", {}, queue="other", priority=JobPriority.LOW))
    q.set_limit(queue="reports", concurrency=1)
    assert q.claim("w").queue == "reports"
    assert q.claim("w").id == low
    assert q.claim("w") is None


def test_concurrency_limit_per_job_type_across_queues(q):
    for qn in ("a", "b", "c"):
        q.enqueue(Job("resize", {}, queue=qn))
    q.set_limit(job_type="resize", concurrency=1)
    first = q.claim("w")
    assert first is not None and q.claim("w") is None
    q.fail(first.id, first.token, "boom")                   # a failed attempt frees it
    assert q.claim("w") is not None


def test_limit_survives_reopen(opener):
    q = opener()
    for _ in range(4):
        q.enqueue(Job("r", {}, queue="reports"))
    q.set_limit(queue="reports", concurrency=2)
    q.close()
    q = opener()
    assert len(_claim_all(q)) == 2


def test_set_limit_validation(q):
    before = _written(q)
    bad = [dict(concurrency=1), dict(queue="a", job_type="b", concurrency=1),
           dict(queue="a", concurrency=0), dict(queue="a", concurrency=True),
           dict(queue="a", rate=(0, 1)), dict(queue="a", rate=(1, 0)),
           dict(queue="a", rate=5), dict(queue="", concurrency=1)]
    for kw in bad:
        with pytest.raises((TypeError, ValueError)):
            q.set_limit(**kw)
    assert _written(q) == before


def test_removing_a_limit(q):
    for _ in range(3):
        q.enqueue(Job("r", {}))
    q.set_limit(queue="default", concurrency=1)
    assert len(_claim_all(q)) == 1
    q.set_limit(queue="default")                             # no limit any more
    assert len(_claim_all(q)) == 2
    assert q.stats()["control"]["limits"] == []


def test_completing_under_a_limit_wakes_a_waiting_claim(opener):
    q = opener(clock=time.time)
    for _ in range(2):
        q.enqueue(Job("r", {}, queue="reports"))
    q.set_limit(queue="reports", concurrency=1)
    first = q.claim("w")
    got = []
    t = threading.Thread(target=lambda: got.append(q.claim("w", wait=30)))
    t.start()
    time.sleep(0.1)
    assert not got
    q.complete(first.id, first.token)
    t.join(30)
    assert got and got[0] is not None


# ---------------------------------------------------------------- rate limits

def test_rate_limit_holds_back_without_charging_an_attempt(opener, clock):
    q = opener()
    ids = [q.enqueue(Job("api", {})) for _ in range(5)]
    q.set_limit(job_type="api", rate=(2, 10.0))
    a, b = q.claim("w"), q.claim("w")
    assert a and b and q.claim("w") is None
    held = q.get(ids[2])
    assert held.status is JobStatus.PENDING and held.retry_count == 0
    assert [t.kind for t in q.history(ids[2])] == ["enqueue"]
    clock.advance(9.999)
    assert q.claim("w") is None
    clock.advance(0.001)                             # a's and b's claims left the window
    assert q.claim("w").id == ids[2]
    assert q.claim("w").id == ids[3]
    assert q.claim("w") is None
    q.close()
    q = opener()                                     # the window survives a reopen
    assert q.claim("w") is None
    clock.advance(10)
    assert q.claim("w") is not None


def test_changing_a_rate_limit_keeps_the_newest_claims_counted(q, clock):
    for _ in range(8):
        q.enqueue(Job("api", {}))
    q.set_limit(job_type="api", rate=(3, 10.0))
    for _ in range(3):
        assert q.claim("w") is not None
        clock.advance(1)
    assert q.claim("w") is None                      # claims at +0, +1, +2
    q.set_limit(job_type="api", rate=(2, 10.0))      # keeps +1 and +2
    clock.advance(7.5)                               # now +10.5
    assert q.claim("w") is None
    clock.advance(0.5)                               # +11: the claim at +1 left the window
    assert q.claim("w") is not None
    assert q.claim("w") is None
    q.set_limit(job_type="api", concurrency=10)      # no rate limit any more
    assert q.claim("w") is not None
    q.set_limit(job_type="api", rate=(1, 10.0))      # a new window starts empty
    assert q.claim("w") is not None
    assert q.claim("w") is None


def test_rate_limited_claim_wait_wakes_when_allowed(opener):
    q = opener(clock=time.time)
    for _ in range(2):
        q.enqueue(Job("api", {}, queue="api"))
    q.set_limit(queue="api", rate=(1, 0.2))
    assert q.claim("w") is not None
    assert q.claim("w", wait=30) is not None         # woken by the window, not a poll


# ---------------------------------------------------------------- periodic

def _template():
    return Job("tick", {"k": 1}, queue="cron")


def test_periodic_fires_once_per_due_time_across_restarts(opener, clock):
    q = opener()
    q.schedule_periodic("tick", "*/5 * * * *", _template())
    fired = q.run_periodic()
    assert len(fired) == 1
    job = q.get(fired[0])
    assert job.job_type == "tick" and job.payload == {"k": 1} and job.queue == "cron"
    assert q.run_periodic() == []
    q.close()
    for _ in range(3):                                       # restarts at the same moment
        q = opener()
        q.schedule_periodic("tick", "*/5 * * * *", _template())
        assert q.run_periodic() == []
        q.close()
    q = opener()
    q.schedule_periodic("tick", "*/5 * * * *", _template())
    clock.advance(300)
    assert len(q.run_periodic()) == 1
    assert q.stats()["control"]["periodic"] == {"tick": round((T0 + 300) * 1000)}
    assert q.stats()["total"] == 2


def test_missed_runs_skip_by_default_or_catch_up_once(q, clock):
    q.schedule_periodic("s", "*/5 * * * *", _template())
    q.schedule_periodic("o", "*/5 * * * *", _template(), missed="once")
    assert len(q.run_periodic()) == 2
    clock.advance(3 * 3600 + 120)                            # down for 3 h, 2 min past due
    fired = q.run_periodic()
    assert len(fired) == 1                                   # "o" catches up once
    assert q.stats()["control"]["periodic"]["o"] == round((T0 + 3 * 3600) * 1000)
    assert q.run_periodic() == []


def test_schedule_validation(q):
    before = _written(q)
    with pytest.raises(ValueError):
        q.schedule_periodic("x", "not cron", _template())
    with pytest.raises(ValueError):
        q.schedule_periodic("x", "* * * * *", _template(), tz="Nowhere/Land")
    with pytest.raises(ValueError):
        q.schedule_periodic("x", "* * * * *", _template(), missed="sometimes")
    with pytest.raises(TypeError):
        q.schedule_periodic("x", "* * * * *", {"not": "a job"})
    assert _written(q) == before
    assert q.run_periodic() == []


def test_periodic_task_decorator_with_time_zone(q):
    @q.periodic("0 9 * * *", tz="Europe/Paris")
    def morning():
        return "good morning"

    assert morning() == "good morning"
    # T0 is 2027-01-15 08:00 UTC = 09:00 in Paris
    assert from_ms(round(T0 * 1000)).hour == 8
    fired = q.run_periodic()
    assert len(fired) == 1 and q.get(fired[0]).job_type == morning.job_type


def test_the_reaper_thread_fires_schedules(opener):
    q = opener(clock=time.time, reaper_interval=0.02)
    q.schedule_periodic("every-minute", "* * * * *", _template(), missed="once")
    deadline = time.monotonic() + 30
    while q.stats()["total"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)                                          # a few more rounds: no second
    assert q.stats()["total"] == 1


# ---------------------------------------------------------------- dependencies

def test_chain_runs_in_order(q):
    a, b, c = Job("a", {}), Job("b", {}), Job("c", {})
    q.enqueue_many(chain(a, b, c))
    assert b.depends_on == (a.id,)
    first = q.claim("w")
    assert first.id == a.id and q.claim("w") is None
    assert q.get(b.id).status is JobStatus.PENDING
    q.complete(first.id, first.token)
    second = q.claim("w")
    assert second.id == b.id and q.claim("w") is None
    q.complete(second.id, second.token)
    assert q.claim("w").id == c.id
    assert q.stats()["control"]["waiting_for_parents"] == 0


def test_group_then(q):
    a, b, then = Job("a", {}), Job("b", {}), Job("report", {})
    q.enqueue_many(group(a, b, then=then))
    assert q.stats()["control"]["waiting_for_parents"] == 1
    x, y = q.claim("w"), q.claim("w")
    assert {x.id, y.id} == {a.id, b.id} and q.claim("w") is None
    q.complete(x.id, x.token)
    assert q.claim("w") is None
    q.complete(y.id, y.token)
    assert q.claim("w").id == then.id


def test_released_child_keeps_its_place_in_the_order(q, clock):
    """A child freed by its parent enters the claim order at its own enqueue position."""
    parent = q.enqueue(Job("p", {}))
    child = q.enqueue(Job("c", {}).after(parent))
    clock.advance(1)
    later = q.enqueue(Job("l", {}))
    p = q.claim("w", job_types="p")
    q.complete(p.id, p.token)
    assert q.claim("w").id == child
    assert q.claim("w").id == later


def test_after_across_calls_and_unknown_parent(q):
    pid = q.enqueue(Job("p", {}))
    child = q.enqueue(Job("c", {}).after(pid))
    assert q.get(child).depends_on == (pid,)
    before = _written(q)
    with pytest.raises(UnknownParentError) as e:
        q.enqueue(Job("c", {}).after("no-such-job"))
    assert e.value.parent == "no-such-job"
    with pytest.raises(UnknownParentError):
        q.enqueue_many([Job("ok", {}), Job("c", {}).after("nope")])
    assert _written(q) == before and q.stats()["total"] == 2


def test_cycles_are_refused_before_writing(q):
    a, b = Job("a", {}), Job("b", {})
    a.after(b)
    b.after(a)
    before = _written(q)
    with pytest.raises(DependencyCycleError):
        q.enqueue_many([a, b])
    assert _written(q) == before
    # parents later in the same batch are fine (written parents first)
    x, y = Job("x", {}), Job("y", {})
    y.after(x)
    assert q.enqueue_many([y, x]) == [y.id, x.id]
    assert q.claim("w").id == x.id


def test_failed_parent_cancels_children_with_a_reason(opener):
    q = opener()
    a = Job("a", {}, max_retries=0)
    b, c = Job("b", {}), Job("c", {})
    q.enqueue_many(chain(a, b, c))
    j = q.claim("w")
    assert q.fail(j.id, j.token, "boom") is JobStatus.DEAD_LETTER
    for child, parent in ((b, a), (c, b)):
        got = q.get(child.id)
        assert got.status is JobStatus.CANCELLED
        assert parent.id in got.error
        assert [t.kind for t in q.history(child.id)] == ["enqueue", "cancel"]
    q.close()
    q = opener()
    assert q.get(c.id).status is JobStatus.CANCELLED


def test_ignore_policy_runs_after_a_failed_parent(q):
    a = q.enqueue(Job("a", {}))
    b = q.enqueue(Job("b", {}).after(a, on_parent_failure="ignore"))
    assert q.cancel(a) is JobStatus.CANCELLED
    assert q.claim("w").id == b


def test_child_of_an_already_failed_parent(q):
    a = q.enqueue(Job("a", {}))
    q.cancel(a)
    b = q.enqueue(Job("b", {}).after(a))
    assert q.get(b).status is JobStatus.CANCELLED
    assert q.claim("w") is None


def test_child_of_an_already_completed_parent_runs(q):
    a = q.enqueue(Job("a", {}))
    j = q.claim("w")
    q.complete(j.id, j.token)
    b = q.enqueue(Job("b", {}).after(a))
    assert q.claim("w").id == b


def test_completing_a_parent_wakes_a_waiting_claim(opener):
    q = opener(clock=time.time)
    a, b = Job("a", {}), Job("b", {})
    q.enqueue_many(chain(a, b))
    j = q.claim("w")
    got = []
    t = threading.Thread(target=lambda: got.append(q.claim("w", wait=30)))
    t.start()
    time.sleep(0.1)
    assert not got
    q.complete(j.id, j.token)
    t.join(30)
    assert got and got[0] is not None and got[0].id == b.id
