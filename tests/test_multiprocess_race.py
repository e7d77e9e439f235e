"""16 worker processes race for one job on a shared store (issue 19): exactly one wins, and
each of the others takes exactly one of the jobs enqueued after.

Black-box: every racer is a separate Python program (spawned, not forked) that opens the
store with ``aurora_log.open`` and calls ``claim``; they are released at once by a line on
their stdin, with the job already pending, so 16 processes decide at the same moment.
"""

from __future__ import annotations

import select
import subprocess
import sys
import time

import aurora_log
from aurora_log import Job
from mp_support import child_env, shared_options

RACERS = 16

RACER = """
import sys
import aurora_log
from mp_support import shared_options
q = aurora_log.open(sys.argv[1], reaper_interval=None, auto_compact=False, **shared_options())
print("READY", flush=True)
sys.stdin.readline()                              # the start signal
job = q.claim("racer", wait=60)
print("GOT", None if job is None else job.id, flush=True)
if job is not None:
    q.complete(job.id, job.token, {"by": sys.argv[2]})
q.close()
"""


def _lines_within(procs: list[subprocess.Popen], seconds: float, want: int | None = None
                  ) -> dict[int, str]:
    """The next line of each racer that writes one within `seconds` (index -> line); returns
    early once `want` lines are in."""
    got: dict[int, str] = {}
    fds = {p.stdout.fileno(): n for n, p in enumerate(procs) if p.stdout is not None}
    end = time.monotonic() + seconds
    while fds and time.monotonic() < end and (want is None or len(got) < want):
        r, _, _ = select.select(list(fds), [], [], max(0.0, end - time.monotonic()))
        for fd in r:
            n = fds.pop(fd)
            got[n] = procs[n].stdout.readline().strip()
    return got


def test_sixteen_processes_race_for_one_job(shared_store, tmp_path):
    store = tmp_path / "store"
    with aurora_log.open(store, reaper_interval=None) as q:
        first = q.enqueue(Job("t", {"n": 0}))
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(store), str(n)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=child_env()) for n in range(RACERS)]
    try:
        started = time.monotonic()
        ready = _lines_within(procs, 120, want=RACERS)
        assert sorted(ready) == list(range(RACERS)) and set(ready.values()) == {"READY"}
        print(f"\n[race] {RACERS} racers ready in {time.monotonic() - started:.1f}s")
        for p in procs:                       # the start: as close together as we can
            p.stdin.write("go\n")
        for p in procs:
            p.stdin.flush()
        won = _lines_within(procs, 30, want=1)
        assert list(won.values()) == [f"GOT {first}"], won          # exactly one winner
        winner = next(iter(won))
        others = [p for n, p in enumerate(procs) if n != winner]
        assert _lines_within(others, 0.5) == {}   # the others are still waiting, empty-handed
        with aurora_log.open(store, reaper_interval=None, **shared_options()) as q:
            rest = q.enqueue_many([Job("t", {"n": n}) for n in range(1, RACERS)])
            got = _lines_within(others, 60, want=len(others))
            assert sorted(line.split()[1] for line in got.values()) == sorted(rest)
            print(f"[race] all {RACERS} jobs taken in {time.monotonic() - started:.1f}s")
            for p in procs:
                assert p.wait(60) == 0
            assert q.stats()["completed"] == RACERS
            for job_id in [first, *rest]:
                kinds = [t.kind for t in q.history(job_id)]
                assert kinds == ["enqueue", "claim", "complete"], (job_id, kinds)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            for f in (p.stdin, p.stdout):
                if f is not None:
                    f.close()
