"""A producer or worker process of the many-processes kill -9 test (not a test module: run
as a script by tests/test_multiprocess_kill9.py).

    python tests/mp_kill9_child.py producer|worker STORE NAME SEED

Opens the shared store (``aurora_log.open``, durability sync) and reports on stdout one line
per event with ONE write() each (under PIPE_BUF: lines never interleave or tear), in the
single-process child's terms (tests/test_kill9_child.py) plus a last field, the
system-wide monotonic clock in ns taken after the call returned, so the test can merge the
lines of every process in the order things happened:

    READY <ns>                the queue is open
    I <id> <ns>               an enqueue is about to be called (the intent)
    E <id> <ns>               enqueue(<id>) returned (acknowledged)
    D <id> <retry> <ns>       claim() delivered <id>
    C <id> <ns>               complete(<id>) returned (acknowledged)
    F <id> <status> <ns>      fail(<id>) returned <status>
    S <n> <ns>                a producer's compact() returned (a snapshot was written)

Jobs carry a 300 s lease: a killed worker's jobs that come back within seconds came back
because its death was noticed, not because a lease ran out.
"""

from __future__ import annotations

import os
import random
import sys
import time

from mp_support import shared_options
from test_kill9_child import payload

LEASE_SECONDS = 300.0
COMPACT_EVERY = 100          # a producer writes a snapshot every this many enqueue calls


def say(*fields: object) -> None:
    os.write(1, (" ".join(map(str, fields)) + f" {time.monotonic_ns()}\n").encode())


def produce(q, name: str, rng: random.Random) -> None:
    from aurora_log import Job
    from aurora_log.errors import LockedError
    n = 0
    while True:
        n += 1
        if n % 7 == 0:
            ids = [f"{name}-{n}-{k}" for k in range(3)]
            for i in ids:
                say("I", i)
            q.enqueue_many([Job("k", payload(i), id=i, max_retries=8,
                                lease_duration=LEASE_SECONDS) for i in ids])
            for i in ids:
                say("E", i)
        else:
            i = f"{name}-{n}"
            say("I", i)
            q.enqueue(Job("k", payload(i), id=i, max_retries=8, priority=rng.randrange(1, 5),
                          lease_duration=LEASE_SECONDS))
            say("E", i)
        if n % COMPACT_EVERY == 0:
            try:
                q.compact()      # snapshots others open from; a kill may land mid-way
            except LockedError:  # another producer is compacting right now (documented:
                pass             # compact.lock is never waited on); the next round will
            else:
                say("S", n)
        time.sleep(rng.uniform(0.005, 0.025))     # about the workers' pace: no endless backlog


def work(q, name: str, rng: random.Random) -> None:
    while True:
        j = q.claim(name, wait=0.05)
        if j is None:
            continue
        say("D", j.id, j.retry_count)
        if j.payload != payload(j.id):
            say("X", j.id)
        time.sleep(rng.uniform(0.0, 0.01))       # a handler: the job runs for a while
        if rng.random() < 0.15:
            st = q.fail(j.id, j.token, "transient")
            say("F", j.id, st.value)
        else:
            q.complete(j.id, j.token, {"by": name})
            say("C", j.id)


def main(argv: list[str]) -> None:
    role, store, name, seed = argv[1], argv[2], argv[3], int(argv[4])
    import aurora_log
    q = aurora_log.open(store, **shared_options(), durability="sync", retry_base=0.0, retry_cap=0.0,
                        reaper_interval=0.2)
    say("READY")
    (produce if role == "producer" else work)(q, name, random.Random(seed))


if __name__ == "__main__":
    main(sys.argv)
