"""The child process of the kill -9 test (not a test module: run as a script).

    python tests/test_kill9_child.py STORE CYCLE SEED DURABILITY

STORE may be a postgresql:// DSN (schema from AURORA_KILL9_SCHEMA; DURABILITY is ignored).

Opens the store, starts producer and worker threads, and reports on stdout, one line per
event, each with ONE write() (under PIPE_BUF, so lines never interleave):
    READY                 the queue is open
    I <id>                an enqueue is about to be called (the intent; phantoms are checked
                          against these)
    E <id>                enqueue(<id>) returned (acknowledged)
    D <id> <retry>        claim() delivered <id>
    C <id>                complete(<id>) returned (acknowledged)
    F <id> <status>       fail(<id>) returned <status>
Nothing is reported before the call it acknowledges has returned. The parent SIGKILLs this
process at a random moment.
"""

import hashlib
import os
import random
import sys
import threading
import time


def payload(job_id: str) -> dict:
    """The payload of a job is a function of its id, so the parent can check every byte."""
    h = hashlib.sha256(job_id.encode()).hexdigest()
    return {"id": job_id, "h": h, "pad": h * (int(h[:2], 16) % 9)}


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def main(argv):
    store, cycle, seed, durability = argv[1], int(argv[2]), int(argv[3]), argv[4]
    import aurora_log
    from aurora_log.job import Job

    lease = {}
    if store.startswith("postgresql://"):
        # several children share the database; their reapers must not take live jobs
        # from each other on a loaded machine, so leases are longer than any handler here
        q = aurora_log.open(store, schema=os.environ["AURORA_KILL9_SCHEMA"], retry_base=0.0,
                            retry_cap=0.0, reaper_interval=0.2, pool_size=4)
        lease = {"lease_duration": 5}
    else:
        q = aurora_log.open(store, durability=durability, retry_base=0.0, retry_cap=0.0,
                            reaper_interval=0.2)
    say("READY")

    def producer(t):
        rng = random.Random(seed * 100 + t)
        n = 0
        while True:
            n += 1
            if n % 7 == 0:
                ids = [f"c{cycle}-p{t}-{n}-{k}" for k in range(3)]
                for i in ids:
                    say("I " + i)
                q.enqueue_many([Job("k", payload(i), id=i, max_retries=8, **lease) for i in ids])
                for i in ids:
                    say("E " + i)
            else:
                i = f"c{cycle}-p{t}-{n}"
                say("I " + i)
                q.enqueue(Job("k", payload(i), id=i, max_retries=8,
                              priority=rng.randrange(1, 5), **lease))
                say("E " + i)
            if rng.random() < 0.3:
                time.sleep(0.001)

    def worker(t):
        rng = random.Random(seed * 100 + 50 + t)
        while True:
            j = q.claim(f"w{t}", wait=0.05)
            if j is None:
                continue
            say(f"D {j.id} {j.retry_count}")
            if j.payload != payload(j.id):
                say(f"X {j.id}")
            if rng.random() < 0.15:
                st = q.fail(j.id, j.token, "transient")
                say(f"F {j.id} {st.value}")
            else:
                q.complete(j.id, j.token, {"by": t})
                say("C " + j.id)

    for t in range(2):
        threading.Thread(target=producer, args=(t,), daemon=True).start()
        threading.Thread(target=worker, args=(t,), daemon=True).start()
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main(sys.argv)
