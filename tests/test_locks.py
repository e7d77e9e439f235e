"""YieldingLock: a Lock that yields the GIL to its holder instead of sleeping on it."""

import threading
import time

from aurora_log.local.locks import YieldingLock


def test_mutual_exclusion_under_many_threads():
    lock = YieldingLock()
    inside = [0]
    worst = [0]
    total = [0]

    def body():
        for _ in range(2000):
            with lock:
                inside[0] += 1
                worst[0] = max(worst[0], inside[0])
                total[0] += 1
                inside[0] -= 1

    ts = [threading.Thread(target=body) for _ in range(16)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert worst[0] == 1 and total[0] == 32000


def test_non_blocking_and_timeout_acquire_fail_while_held():
    lock = YieldingLock()
    assert lock.acquire()
    got = []
    t = threading.Thread(target=lambda: got.append((lock.acquire(False),
                                                    lock.acquire(timeout=0.05))))
    t.start()
    t.join()
    assert got == [(False, False)] and lock.locked()
    lock.release()
    assert not lock.locked()


def test_a_long_holder_makes_waiters_block_not_spin_forever():
    lock = YieldingLock()
    lock.acquire()
    acquired = threading.Event()
    t = threading.Thread(target=lambda: (lock.acquire(), acquired.set(), lock.release()))
    t.start()
    time.sleep(0.2)                 # far past the spins: the waiter now blocks for real
    assert not acquired.is_set()
    lock.release()
    assert acquired.wait(5)
    t.join()


def test_works_as_the_lock_of_a_condition():
    lock = YieldingLock()
    cond = threading.Condition(lock)
    box = []

    def waiter():
        with cond:
            while not box:
                cond.wait(5)
            box.append("seen")

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.05)
    with cond:
        box.append("item")
        cond.notify_all()
    t.join(5)
    assert box == ["item", "seen"]
