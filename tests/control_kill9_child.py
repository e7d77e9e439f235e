"""The child process of tests/test_control_kill9.py (run as a script, not collected).

    python tests/control_kill9_child.py STORE SCENARIO CYCLE

Opens the store, prints READY, and works until the parent SIGKILLs it:
    periodic      the clock is frozen at a due time shared by several cycles; the reaper
                  thread and a loop both fire the "*/5" schedule
    limits        producers enqueue into "reports" (concurrency limit 3, set by cycle 0)
                  and four workers claim; some complete, some hold their job
    deps          producers enqueue chains of three; two workers claim and complete
"""

import os
import sys
import threading
import time

T0 = 1_800_000_000.0


def main(argv):
    store, scenario, cycle = argv[1], argv[2], int(argv[3])
    import aurora_log
    from aurora_log import Job, chain

    if scenario == "periodic":
        now = T0 + (cycle // 3) * 300 + (cycle % 3) * 7      # 3 cycles share a due time
        q = aurora_log.open(store, clock=lambda: now, reaper_interval=0.001, durability="os")
        q.schedule_periodic("tick", "*/5 * * * *", Job("tick", {}), missed="once")
        os.write(1, b"READY\n")
        while True:
            q.run_periodic()
    q = aurora_log.open(store, reaper_interval=None, durability="os")
    if scenario == "limits" and cycle == 0:
        q.set_limit(queue="reports", concurrency=3)
    os.write(1, b"READY\n")

    def produce():
        while True:
            if scenario == "deps":
                q.enqueue_many(chain(Job("a", {}), Job("b", {}), Job("c", {})))
            else:
                q.enqueue(Job("r", {}, queue="reports"))
            time.sleep(0.001)

    def work(i):
        while True:
            j = q.claim(f"w{i}", wait=0.05)
            if j is None:
                continue
            if scenario == "limits" and i == 0:
                continue                 # holds its job: the limit must count it
            q.complete(j.id, j.token)

    threads = [threading.Thread(target=produce, daemon=True)]
    threads += [threading.Thread(target=work, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main(sys.argv)
