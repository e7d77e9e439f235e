"""The shared control page (native/shm.c): exclusion and group commit across real processes,
holders and leaders killed with SIGKILL, stale and damaged pages rebuilt (issue 19 phase 1;
docs/MULTIPROCESS.md is the protocol).

Every test uses forked processes, each attaching its own handle (a handle never crosses a
fork: see test_handle_used_after_fork_is_refused)."""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import select
import signal
import struct
import threading
import time

import pytest

from aurora_log.testing import faults
from aurora_log.local._binding import ffi, lib

CTX = mp.get_context("fork")
LOG_BYTES = 1 << 20
REC = 64


# ------------------------------------------------------------------ helpers

@pytest.fixture
def store(tmp_path):
    """A preallocated (zero-filled, fsynced) log file and the page path beside it."""
    log = tmp_path / "log"
    with open(log, "wb") as f:
        f.write(bytes(LOG_BYTES))
        f.flush()
        os.fsync(f.fileno())
    return str(log), str(tmp_path / "shm")


class Attached:
    """One process's attach: its own log fd and page handle."""

    def __init__(self, log: str, page: str, log_end: int = 0, poll_ms: int | None = None):
        self.fd = os.open(log, os.O_RDWR)
        h = ffi.new("au_shm **")
        r = lib.au_shm_open(h, page.encode(), self.fd, log_end)
        if r != 0:
            os.close(self.fd)
            raise OSError(r, f"au_shm_open -> {r}")
        self.h = h[0]
        if poll_ms is not None:
            lib.au_shm_set_poll_ms(self.h, poll_ms)

    def append(self, data: bytes) -> int:
        end = ffi.new("uint64_t *")
        r = lib.au_shm_append(self.h, self.fd, data, len(data), end)
        assert r == 0, r
        return end[0]

    def commit(self, data: bytes) -> int:
        end = ffi.new("uint64_t *")
        r = lib.au_shm_commit(self.h, self.fd, data, len(data), end)
        assert r == 0, r
        return end[0]

    def stats(self) -> dict:
        s = ffi.new("au_shm_stats *")
        lib.au_shm_info(self.h, s)
        return {k: getattr(s, k) for k in dir(s)}

    def close(self) -> None:
        lib.au_shm_close(self.h)
        os.close(self.fd)


def record(tag: int, seq: int) -> bytes:
    """A self-checking record: who wrote it, its number, and a digest of both."""
    body = struct.pack("<II", tag, seq)
    return body + bytes([(tag * 31 + seq) & 0xFF]) * (REC - len(body))


def parse(data: bytes) -> list[tuple[int, int]]:
    out = []
    for off in range(0, len(data), REC):
        chunk = data[off:off + REC]
        tag, seq = struct.unpack_from("<II", chunk)
        assert chunk[8:] == bytes([(tag * 31 + seq) & 0xFF]) * (REC - 8), f"torn at {off}"
        out.append((tag, seq))
    return out


def read_within(fd: int, n: int, timeout: float = 10.0) -> bytes:
    """os.read that fails the test instead of hanging when nothing comes."""
    ready, _, _ = select.select([fd], [], [], timeout)
    assert ready, f"nothing to read within {timeout} s"
    return os.read(fd, n)


_started: list = []


@pytest.fixture(autouse=True)
def _no_child_outlives_its_test():
    yield
    while _started:
        p = _started.pop()
        if p.is_alive():
            p.kill()
        p.join(10)


def run(target, *args):
    p = CTX.Process(target=target, args=args)
    p.start()
    _started.append(p)
    return p


def child_exit(fn):
    """Run fn in a forked child: exit 0 on success, 1 with the error printed."""
    def wrapper(*args):
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - reported through the exit code
            print("child failed:", repr(exc), flush=True)
            os._exit(1)
        os._exit(0)
    return wrapper


def wait_for(pred, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def join_ok(procs, timeout: float = 20.0) -> None:
    for p in procs:
        p.join(timeout)
        assert p.exitcode == 0, f"child exit code {p.exitcode}"


# ------------------------------------------------------------------ exclusion

@child_exit
def _counter_child(log, page, counter_path, n):
    a = Attached(log, page)
    fd = os.open(counter_path, os.O_RDWR)
    for _ in range(n):
        r = lib.au_shm_lock(a.h)
        assert r == 0, r
        v = struct.unpack("<Q", os.pread(fd, 8, 0))[0]
        time.sleep(0)                          # invite a race if the lock does not exclude
        os.pwrite(fd, struct.pack("<Q", v + 1), 0)
        lib.au_shm_unlock(a.h)
    a.close()


def test_append_lock_excludes_across_processes(store, tmp_path):
    log, page = store
    counter = tmp_path / "counter"
    counter.write_bytes(bytes(8))
    first = Attached(log, page)
    procs = [run(_counter_child, log, page, str(counter), 300) for _ in range(4)]
    join_ok(procs)
    assert struct.unpack("<Q", counter.read_bytes())[0] == 4 * 300
    first.close()


@child_exit
def _commit_child(log, page, tag, n):
    a = Attached(log, page)
    for seq in range(n):
        end = a.commit(record(tag, seq))
        assert a.stats()["synced_end"] >= end      # acknowledged = fdatasynced
    a.close()


def test_commits_from_many_processes_land_whole_in_order(store):
    log, page = store
    first = Attached(log, page)
    procs = [run(_commit_child, log, page, tag, 150) for tag in range(1, 7)]
    join_ok(procs)
    st = first.stats()
    assert st["write_end"] == 6 * 150 * REC
    assert st["synced_end"] == st["write_end"]
    assert st["appends"] == 6 * 150
    assert 1 <= st["fdatasyncs"] <= 6 * 150
    with open(log, "rb") as f:
        data = f.read(st["write_end"] + REC)
    recs = parse(data[:st["write_end"]])
    assert data[st["write_end"]:] == bytes(REC)
    for tag in range(1, 7):                    # each process's records, all, in its order
        assert [s for t, s in recs if t == tag] == list(range(150))
    assert st["waiting"] == 0                  # every waiter slot given back
    first.close()


@child_exit
def _commit_many_no_poll(log, page, tag, n):
    a = Attached(log, page, poll_ms=60_000)   # a lost wake-up would hang for a minute
    for seq in range(n):
        a.commit(record(tag, seq))
        if seq % 7 == 0:
            time.sleep(0.0002 * (tag % 3))     # vary the interleavings
    a.close()


def test_no_waiter_depends_on_its_poll_to_get_out(store):
    log, page = store
    first = Attached(log, page)
    procs = [run(_commit_many_no_poll, log, page, tag, 150) for tag in range(16)]
    join_ok(procs, timeout=30)
    st = first.stats()
    assert st["appends"] == 16 * 150 and st["timeouts"] == 0
    assert st["synced_end"] == st["write_end"] == 16 * 150 * REC
    first.close()


# ------------------------------------------------------------------ a holder killed

@child_exit
def _die_mid_write(log, page, garbage, ready_w):
    a = Attached(log, page)
    assert lib.au_shm_lock(a.h) == 0
    off = ffi.new("uint64_t *")
    lib.au_shm_reserve(a.h, len(garbage), off)
    os.pwrite(a.fd, garbage[: len(garbage) // 2], off[0])   # a torn write...
    os.write(ready_w, b"x")
    time.sleep(60)                                          # ...then SIGKILL


@child_exit
def _blocked_appender(log, page, data, done_w):
    a = Attached(log, page)
    a.append(data)                     # blocks on the lock the dying child holds
    os.write(done_w, b"x")
    a.close()


def test_holder_killed_mid_write_is_noticed_and_tail_repaired(store):
    log, page = store
    first = Attached(log, page)
    first.commit(record(9, 0))
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    holder = run(_die_mid_write, log, page, b"\xee" * 600, ready_w)
    assert read_within(ready_r, 1) == b"x"
    waiter = run(_blocked_appender, log, page, record(7, 1), done_w)
    time.sleep(0.2)
    assert waiter.is_alive()           # it really waits for the holder
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    t0 = time.monotonic()
    assert read_within(done_r, 1) == b"x"  # released by the kernel's robust-list cleanup
    stall = time.monotonic() - t0
    join_ok([waiter])
    st = first.stats()
    assert st["owner_died"] == 1
    assert st["write_end"] == 2 * REC and st["writing_end"] == 2 * REC
    with open(log, "rb") as f:
        data = f.read(REC + 600)
    assert parse(data[:2 * REC]) == [(9, 0), (7, 1)]
    assert data[2 * REC:] == bytes(600 - REC)   # the dead holder's torn bytes are zeros
    assert stall < 5.0
    first.close()


def test_lock_reports_a_dead_holder_to_the_next_locker(store):
    log, page = store
    first = Attached(log, page)
    ready_r, ready_w = os.pipe()
    holder = run(_die_mid_write, log, page, b"\xee" * 100, ready_w)
    assert read_within(ready_r, 1) == b"x"
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    assert lib.au_shm_lock(first.h) == lib.AU_SHM_OWNER_DIED
    st = first.stats()
    assert (st["write_end"], st["writing_end"]) == (0, 100)   # what the repair must undo
    lib.au_shm_set_tail(first.h, 0)                            # rebuilt from "the log"
    lib.au_shm_unlock(first.h)
    assert lib.au_shm_lock(first.h) == 0                       # consistent again
    lib.au_shm_unlock(first.h)
    first.close()


# ------------------------------------------------------------------ the GIL-aware lock

@child_exit
def _hold_until_told(log, page, ready_w, go_r):
    a = Attached(log, page)
    assert lib.au_shm_lock(a.h) == 0
    os.write(ready_w, b"x")
    read_within(go_r, 1, 30)
    lib.au_shm_unlock(a.h)
    a.close()


def test_trylock_and_wait_unlock_hand_the_lock_over_across_processes(store):
    log, page = store
    me = Attached(log, page)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    holder = run(_hold_until_told, log, page, ready_w, go_r)
    read_within(ready_r, 1)
    seen = lib.au_shm_unlock_seq(me.h)
    assert lib.au_shm_trylock(me.h) == lib.AU_SHM_BUSY
    result = {}
    t = threading.Thread(target=lambda: result.setdefault(
        "r", lib.au_shm_wait_unlock(me.h, seen, 60_000)), daemon=True)
    t.start()
    time.sleep(0.1)
    assert t.is_alive()                        # asleep while the other process holds it
    os.write(go_w, b"x")
    t.join(10)
    assert not t.is_alive() and result["r"] == 0   # woken by the unlock, not the minute
    assert lib.au_shm_trylock(me.h) == 0
    lib.au_shm_unlock(me.h)
    join_ok([holder])
    me.close()


def test_wait_unlock_after_the_holder_died_times_out_and_trylock_reports_it(store):
    log, page = store
    me = Attached(log, page)
    ready_r, ready_w = os.pipe()
    holder = run(_die_holding_lock, log, page, ready_w)
    read_within(ready_r, 1)
    seen = lib.au_shm_unlock_seq(me.h)
    assert lib.au_shm_trylock(me.h) == lib.AU_SHM_BUSY
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    assert lib.au_shm_wait_unlock(me.h, seen, 50) == -errno.ETIMEDOUT   # nobody unlocked
    assert lib.au_shm_trylock(me.h) == lib.AU_SHM_OWNER_DIED
    lib.au_shm_unlock(me.h)
    me.close()


def test_wait_unlock_returns_at_once_when_the_lock_moved_since_seen(store):
    log, page = store
    me = Attached(log, page)
    seen = lib.au_shm_unlock_seq(me.h)
    assert lib.au_shm_lock(me.h) == 0
    lib.au_shm_unlock(me.h)
    t0 = time.monotonic()
    assert lib.au_shm_wait_unlock(me.h, seen, 60_000) == 0
    assert time.monotonic() - t0 < 5
    me.close()


def test_trylock_works_called_keeping_the_gil(store):
    """The phase-2 caller keeps the GIL through ctypes.PyDLL, as for au_append_now1."""
    import ctypes

    from aurora_log.local import _native
    fn = ctypes.PyDLL(_native.__file__).au_shm_trylock
    fn.argtypes, fn.restype = [ctypes.c_void_p], ctypes.c_int
    log, page = store
    me = Attached(log, page)
    assert fn(int(ffi.cast("uintptr_t", me.h))) == 0
    assert lib.au_shm_trylock(me.h) == lib.AU_SHM_BUSY     # it really took the lock
    lib.au_shm_unlock(me.h)
    assert fn(int(ffi.cast("uintptr_t", me.h))) == 0
    lib.au_shm_unlock(me.h)
    me.close()


# ------------------------------------------------------------------ leaders and waiters

@child_exit
def _hold_sync_forever(log, page, ready_w):
    a = Attached(log, page)
    assert lib.au_shm_test_hold_sync(a.h) == 0
    os.write(ready_w, b"x")
    time.sleep(60)


def test_leader_killed_mid_sync_stalls_others_at_most_a_poll(store):
    log, page = store
    first = Attached(log, page, poll_ms=20)
    ready_r, ready_w = os.pipe()
    leader = run(_hold_sync_forever, log, page, ready_w)
    assert read_within(ready_r, 1) == b"x"
    end = first.append(record(1, 0))
    result = {}
    t = threading.Thread(target=lambda: result.setdefault(
        "r", lib.au_shm_wait_synced(first.h, first.fd, end)), daemon=True)
    t.start()
    time.sleep(0.2)
    assert t.is_alive()                         # nobody synced: the leader is "slow"
    os.kill(leader.pid, signal.SIGKILL)
    leader.join(10)
    t.join(5)
    assert not t.is_alive() and result["r"] == 0
    st = first.stats()
    assert st["leader_died"] == 1 and st["synced_end"] >= end
    first.close()


def test_dead_leader_is_noticed_at_once_by_the_standby(store):
    """With a one-minute poll, only the standby (blocked on the sync lock, handed it by
    the kernel with EOWNERDEAD) can notice the dead leader in time."""
    log, page = store
    first = Attached(log, page, poll_ms=60_000)
    ready_r, ready_w = os.pipe()
    leader = run(_hold_sync_forever, log, page, ready_w)
    read_within(ready_r, 1)
    end = first.append(record(1, 0))
    result = {}
    t = threading.Thread(target=lambda: result.setdefault(
        "r", lib.au_shm_wait_synced(first.h, first.fd, end)), daemon=True)
    t.start()
    wait_for(lambda: first.stats()["standby_pid"] == os.getpid())
    os.kill(leader.pid, signal.SIGKILL)
    leader.join(10)
    t.join(10)
    assert not t.is_alive() and result["r"] == 0
    st = first.stats()
    assert st["leader_died"] == 1 and st["timeouts"] == 0 and st["standby_pid"] == 0
    first.close()


@child_exit
def _standby_then_killed(log, page, ready_w):
    a = Attached(log, page, poll_ms=60_000)
    os.write(ready_w, b"x")
    a.commit(record(8, 0))             # blocks as the standby until SIGKILL


def test_dead_standby_is_replaced_after_a_poll(store):
    log, page = store
    leader = Attached(log, page, poll_ms=60_000)
    assert lib.au_shm_test_hold_sync(leader.h) == 0
    ready_r, ready_w = os.pipe()
    a = run(_standby_then_killed, log, page, ready_w)
    read_within(ready_r, 1)
    wait_for(lambda: leader.stats()["standby_pid"] == a.pid)
    os.kill(a.pid, signal.SIGKILL)
    a.join(10)
    done_r, done_w = os.pipe()
    b = run(_commit_one_polling, log, page, 2, done_w)
    wait_for(lambda: leader.stats()["standby_pid"] == b.pid)   # took the dead one's place
    assert leader.stats()["timeouts"] >= 1
    end = leader.stats()["write_end"]
    assert lib.au_shm_test_finish_sync(leader.h, leader.fd, end) == 0
    assert read_within(done_r, 1) == b"\x02"
    join_ok([b])
    assert leader.stats()["standby_pid"] == 0
    leader.close()


@child_exit
def _commit_one_polling(log, page, tag, done_w):
    a = Attached(log, page, poll_ms=50)
    a.commit(record(tag, 0))
    os.write(done_w, bytes([tag]))
    a.close()


@child_exit
def _commit_one(log, page, tag, done_w):
    a = Attached(log, page, poll_ms=60_000)   # only a leader's wake-up can release it
    a.commit(record(tag, 0))
    os.write(done_w, bytes([tag]))
    a.close()


def test_only_covered_waiters_are_released_and_one_uncovered_leads(store):
    log, page = store
    leader = Attached(log, page, poll_ms=60_000)
    assert lib.au_shm_test_hold_sync(leader.h) == 0     # a sync "in progress"
    done_r, done_w = os.pipe()
    procs = []
    for tag in (1, 2, 3):                               # three waiters, in this order
        procs.append(run(_commit_one, log, page, tag, done_w))
        wait_for(lambda n=tag: leader.stats()["waiting"] == n)
    st = leader.stats()
    assert st["write_end"] == 3 * REC and st["synced_end"] == 0
    # the "leader" finishes a sync that covered the first two records only
    assert lib.au_shm_test_finish_sync(leader.h, leader.fd, 2 * REC) == 0
    got = sorted(read_within(done_r, 1)[0] for _ in range(3))
    assert got == [1, 2, 3]
    join_ok(procs)
    st = leader.stats()
    assert st["timeouts"] == 0                   # nobody needed its poll to get out
    # ours, then the uncovered waiter's own: the covered ones did not sync, the uncovered
    # one was not let out as covered
    assert st["fdatasyncs"] == 2
    assert st["synced_end"] == 3 * REC and st["waiting"] == 0
    leader.close()


def test_slots_left_by_dead_waiters_are_taken_back(store):
    """Waiters killed while asleep leave their slots taken; a waiter that finds no free
    slot takes back the ones whose process is gone."""
    log, page = store
    leader = Attached(log, page, poll_ms=60_000)
    dead = CTX.Process(target=os._exit, args=(0,))
    dead.start()
    dead.join(10)                                   # a pid that no longer exists
    with open(page, "r+b") as f:                    # every slot held by it
        for i in range(lib.AU_SHM_SLOTS):
            f.seek(1024 + 16 * i)
            f.write(struct.pack("<IIQ", 0, dead.pid, 1 << 40))
    assert leader.stats()["waiting"] == lib.AU_SHM_SLOTS
    assert lib.au_shm_test_hold_sync(leader.h) == 0
    done_r, done_w = os.pipe()
    p = run(_commit_one, log, page, 1, done_w)
    wait_for(lambda: leader.stats()["slot_reclaims"] == 1)
    assert lib.au_shm_test_finish_sync(leader.h, leader.fd, REC) == 0
    assert read_within(done_r, 1) == b"\x01"       # released by the wake-up, not a poll
    join_ok([p])
    assert leader.stats()["timeouts"] == 0
    leader.close()


@child_exit
def _commit_expect_eio(log, page, done_w):
    a = Attached(log, page)
    end = ffi.new("uint64_t *")
    r = lib.au_shm_commit(a.h, a.fd, record(5, 0), REC, end)
    os.write(done_w, struct.pack("<i", r))
    a.close()


def test_failed_fdatasync_fails_every_committer_and_is_not_retried(store):
    log, page = store
    first = Attached(log, page)
    with faults.installed(faults.FailNth(1, ops={"fdatasync"})):
        end = ffi.new("uint64_t *")
        r = lib.au_shm_commit(first.h, first.fd, record(1, 0), REC, end)
    assert r == -errno.EIO
    assert first.stats()["failed"] == errno.EIO
    done_r, done_w = os.pipe()
    p = run(_commit_expect_eio, log, page, done_w)
    assert struct.unpack("<i", read_within(done_r, 4))[0] == -errno.EIO   # another process too
    join_ok([p])
    first.close()


# ------------------------------------------------------------------ stale and damaged pages

def test_first_attach_rebuilds_a_stale_page_from_the_log(store):
    log, page = store
    a = Attached(log, page)
    assert lib.au_shm_rebuilt(a.h) == 1
    a.commit(record(1, 0))
    gen = a.stats()["generation"]
    a.close()
    # a page left by a crash claims more than the log confirms
    with open(page, "r+b") as f:
        f.seek(192)
        f.write(struct.pack("<QQ", 10_000, 10_000))
    b = Attached(log, page, log_end=REC)          # alone: nobody else holds the page
    st = b.stats()
    assert lib.au_shm_rebuilt(b.h) == 1
    assert st["generation"] == gen + 1
    assert (st["write_end"], st["writing_end"], st["synced_end"]) == (REC, REC, REC)
    assert b.commit(record(1, 1)) == 2 * REC
    b.close()


@child_exit
def _die_holding_lock(log, page, ready_w):
    a = Attached(log, page)
    assert lib.au_shm_lock(a.h) == 0
    os.write(ready_w, b"x")
    time.sleep(60)


def test_page_of_a_killed_lone_process_is_rebuilt_with_fresh_locks(store):
    log, page = store
    ready_r, ready_w = os.pipe()
    p = run(_die_holding_lock, log, page, ready_w)
    assert read_within(ready_r, 1) == b"x"
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    a = Attached(log, page)
    assert lib.au_shm_rebuilt(a.h) == 1
    assert lib.au_shm_lock(a.h) == 0            # re-initialised, not EOWNERDEAD
    lib.au_shm_unlock(a.h)
    a.close()


@pytest.mark.parametrize("offset,value", [(0, b"XURSHM01"), (8, b"\x02\x00\x00\x00"),
                                          (32, b"\x00\x00\x00\x00"), (36, b"\x00")])
def test_damaged_page_is_rebuilt_when_alone(store, offset, value):
    log, page = store
    a = Attached(log, page)
    a.commit(record(1, 0))
    a.close()
    with open(page, "r+b") as f:
        f.seek(offset)
        f.write(value)
    b = Attached(log, page, log_end=REC)
    assert lib.au_shm_rebuilt(b.h) == 1
    assert b.stats()["write_end"] == REC
    b.close()


def test_damaged_page_is_refused_while_others_are_attached(store):
    log, page = store
    a = Attached(log, page)
    with open(page, "r+b") as f:
        f.write(b"XURSHM01")
    with pytest.raises(OSError) as exc:
        Attached(log, page)
    assert exc.value.errno == lib.AU_E_SHM_CORRUPT
    a.close()


def test_later_attach_validates_and_never_rebuilds(store):
    log, page = store
    a = Attached(log, page)
    a.commit(record(1, 0))
    b = Attached(log, page, log_end=0)           # its scan is older than the page: fine
    assert lib.au_shm_rebuilt(b.h) == 0
    assert b.stats()["write_end"] == REC
    c = Attached(log, page, log_end=3 * REC)     # the log confirms more than the page says
    assert c.stats()["write_end"] == 3 * REC
    for x in (a, b, c):
        x.close()


def test_page_file_is_private(store):
    log, page = store
    a = Attached(log, page)
    assert os.stat(page).st_mode & 0o777 == 0o600
    assert os.stat(page + ".open").st_mode & 0o777 == 0o600
    a.close()


# ------------------------------------------------------------------ fork

def test_handle_used_after_fork_is_refused(store):
    log, page = store
    a = Attached(log, page)
    r_, w_ = os.pipe()
    pid = os.fork()
    if pid == 0:
        end = ffi.new("uint64_t *")
        codes = (lib.au_shm_lock(a.h),
                 lib.au_shm_append(a.h, a.fd, record(1, 0), REC, end),
                 lib.au_shm_wait_synced(a.h, a.fd, 0))
        os.write(w_, struct.pack("<3i", *codes))
        lib.au_shm_close(a.h)                      # closes the child's copies only
        os._exit(0)
    os.waitpid(pid, 0)
    codes = struct.unpack("<3i", os.read(r_, 12))
    assert codes == (lib.AU_E_SHM_FORKED,) * 3
    assert a.stats()["write_end"] == 0             # the child wrote nothing
    a.commit(record(1, 0))                         # the parent's handle still works
    b = Attached(log, page)                        # the parent is still attached:
    assert lib.au_shm_rebuilt(b.h) == 0            # validated, not rebuilt
    assert b.stats()["write_end"] == REC
    b.close()
    a.close()
