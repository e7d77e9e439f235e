"""The control fold (aurora_log.local.control), on its own: pause, limits, rate windows,
periodic firings, dependencies, export/import."""

import pytest

from aurora_log.local import records as R
from aurora_log.local.control import Control

Q, T = R.SCOPE_QUEUE, R.SCOPE_JOB_TYPE
COMPLETED, DEAD, CANCELLED, PENDING = 3, 5, 6, 1


def test_pause_and_resume():
    c = Control()
    assert not c.blocked("emails", "send", 0)
    c.apply_pause(R.Pause("emails", 1))
    assert c.blocked("emails", "send", 0) and not c.blocked("other", "send", 0)
    c.apply_resume(R.Resume("emails", 2))
    assert not c.blocked("emails", "send", 0) and not c.active


def test_concurrency_limit_per_queue_and_per_type():
    c = Control()
    c.apply_limit(R.Limit(Q, "reports", 1, 2, 0, 0))
    c.apply_limit(R.Limit(T, "resize", 1, 1, 0, 0))
    c.on_running(("reports", "pdf"), +1)
    assert not c.blocked("reports", "pdf", 0)
    c.on_running(("reports", "csv"), +1)
    assert c.blocked("reports", "pdf", 0)          # 2 running in the queue
    assert not c.blocked("default", "pdf", 0)
    c.on_running(("default", "resize"), +1)
    assert c.blocked("other", "resize", 0)          # 1 resize running anywhere
    c.on_running(("reports", "csv"), -1)
    assert not c.blocked("reports", "pdf", 0)
    c.apply_limit(R.Limit(T, "resize", 2, 0, 0, 0))  # removed
    assert not c.blocked("other", "resize", 0)


def test_rate_limit_sliding_window():
    c = Control()
    c.apply_limit(R.Limit(Q, "api", 1, 0, 2, 1000))
    c.on_claim(("api", "call"), 100)
    assert not c.blocked("api", "call", 100)
    c.on_claim(("api", "call"), 500)
    assert c.blocked("api", "call", 600)
    assert c.rate_free_ms("api", "call", 600) == 1100
    assert c.blocked("api", "call", 1099)
    assert not c.blocked("api", "call", 1100)
    c.on_claim(("api", "call"), 1100)
    assert c.blocked("api", "call", 1200) and c.rate_free_ms("api", "call", 1200) == 1500


def test_periodic_fired_keeps_the_latest_due():
    c = Control()
    c.apply_fire(R.PeriodicFire("n", 1, 600, "a"))
    c.apply_fire(R.PeriodicFire("n", 2, 300, "b"))
    assert c.fired == {"n": 600} and c.fired_jobs == {"n": "a"}


def test_dependencies_release_when_all_parents_complete():
    c = Control()
    st = {"a": PENDING, "b": PENDING}
    c.apply_depends(R.Depends("c", 1, ("a", "b"), R.ON_FAILURE_CANCEL), st.get)
    assert c.hold("c")
    assert c.on_finished("a", COMPLETED) == ([], [])
    assert c.hold("c")
    assert c.on_finished("b", COMPLETED) == (["c"], [])
    assert not c.hold("c")


def test_failed_parent_cancels_or_is_ignored():
    c = Control()
    st = {"a": PENDING}
    c.apply_depends(R.Depends("c1", 1, ("a",), R.ON_FAILURE_CANCEL), st.get)
    c.apply_depends(R.Depends("c2", 1, ("a",), R.ON_FAILURE_IGNORE), st.get)
    release, cancel = c.on_finished("a", DEAD)
    assert release == ["c2"]
    assert cancel == [("c1", "parent job a was dead-lettered")]


def test_parent_already_finished_at_enqueue():
    c = Control()
    st = {"done": COMPLETED, "gone": CANCELLED}
    c.apply_depends(R.Depends("x", 1, ("done",), R.ON_FAILURE_CANCEL), st.get)
    assert not c.hold("x") and c.settled_reason("x") is None
    c.apply_depends(R.Depends("y", 1, ("gone",), R.ON_FAILURE_CANCEL), st.get)
    assert not c.hold("y")
    assert c.settled_reason("y") == "parent job gone was cancelled"


def test_export_round_trip():
    c = Control()
    c.apply_pause(R.Pause("p", 1))
    c.apply_limit(R.Limit(Q, "api", 1, 3, 2, 1000))
    c.on_claim(("api", "t"), 10)
    c.apply_fire(R.PeriodicFire("n", 1, 600, "a"))
    c.apply_depends(R.Depends("c", 1, ("a", "b"), R.ON_FAILURE_IGNORE), {}.get)
    d = Control.from_export(c.export())
    assert d.export() == c.export()
    assert d.blocked("p", "t", 0) and d.hold("c")
    with pytest.raises(ValueError):
        Control.from_export({"limits": [[1, "q"]]})
    assert Control.from_export({}).export() == Control().export()
