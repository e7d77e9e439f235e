"""A store with one job in every state, for the dashboard tests (unit and browser)."""

from __future__ import annotations

from aurora_log import Job

XSS = "<script>window.__pwned = 1</script>"


def fill(q) -> dict[str, str]:
    """Enqueue and drive jobs through every status; returns their ids by role."""
    ids: dict[str, str] = {}
    ids["done"] = q.enqueue(Job("email", {"to": "a@b.c"}, priority="HIGH"))
    ids["dead"] = q.enqueue(Job("thumb", {"html": XSS}, max_retries=0))
    ids["retry"] = q.enqueue(Job("flaky", {}, max_retries=3))
    ids["running"] = q.enqueue(Job("report", {"month": 5}, queue="reports"))
    ids["cancelled"] = q.enqueue(Job("email", {"to": "x@y.z"}))
    for n in range(5):
        ids[f"pending{n}"] = q.enqueue(Job("email", {"n": n}, queue="mail"))
    done = q.claim("worker-a", job_types=["email"])
    assert done.id == ids["done"]
    q.complete(done.id, done.token, {"sent": True, "note": XSS})
    dead = q.claim("worker-a", job_types=["thumb"])
    q.fail(dead.id, dead.token, f"ValueError: bad image {XSS}")
    flaky = q.claim("worker-b", job_types=["flaky"])
    q.fail(flaky.id, flaky.token, "TimeoutError: upstream")
    running = q.claim("worker-b", queues=["reports"])
    q.progress(running.id, running.token, 0.4, "page 4 of 10")
    q.cancel(ids["cancelled"])
    return ids
