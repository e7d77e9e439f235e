"""aurora_log.local._gilkept (native/gilkept.c): the hot GIL-keeping calls as a CPython
extension that calls the SAME functions of the cffi core (one syscall table), and the
ctypes.PyDLL fallback used when the extension is not importable."""

from __future__ import annotations

import errno
import subprocess
import sys
import textwrap

import pytest

from aurora_log.local import _binding
from aurora_log.local._binding import lib
from aurora_log.local.log import Log
from aurora_log.local.sharedlog import SharedLog
from aurora_log.errors import DurabilityError
from aurora_log.testing import faults


def test_the_extension_is_built_and_serves_the_hot_calls():
    g = _binding.gilkept
    assert g is not None, "native/gilkept.c was not built (setup.py ext_modules)"
    assert _binding.shm_append_try1_keeping_gil is g.shm_append_try1
    assert _binding.shm_next_lsn_keeping_gil is g.shm_next_lsn
    assert _binding.append_now1_keeping_gil is g.append_now1
    lock = _binding.shm_gil_kept          # the locking path's calls (under append_mu)
    assert lock is not None
    assert (lock.trylock, lock.unlock, lock.write_batch, lock.next_lsn) == (
        g.trylock, g.unlock, g.write_batch, g.shm_next_lsn)


def test_the_locking_path_through_the_extension(tmp_path):
    """locked() + write_locked() (a batch of two records) take, use and release append_mu
    through the extension's calls; a held lock is refused by its trylock."""
    g = _binding.gilkept
    assert g is not None
    log = SharedLog.open(tmp_path)
    try:
        last = log.append_many([(7, b"a"), (7, b"")])       # an empty payload too
        assert last == 2 and log.next_lsn == 3
        with log.locked() as nxt:
            assert nxt == 3
            assert g.trylock(log._h_addr) == lib.AU_SHM_BUSY    # robust mutex: held
            assert g.write_end(log._h_addr) == log.published
            assert g.roll_seq(log._h_addr) == log._roll_seq
            assert g.failed(log._h_addr) == 0
        assert g.trylock(log._h_addr) == 0
        g.unlock(log._h_addr)
        assert [(t, p) for _, t, p in log.read_from((1, 32, 1))[0]] == [(7, b"a"), (7, b"")]
        with pytest.raises(ValueError):
            g.write_batch(log._h_addr, 3, 3, 1, 1, 1, 1, 0, 0)     # no place for the end
    finally:
        log.close()


def test_bad_arguments_are_refused_before_the_core_runs(tmp_path):
    g = _binding.gilkept
    assert g is not None
    log = SharedLog.open(tmp_path)
    try:
        fd, first, size, roll = log._seg_state
        h = log._h_addr
        with pytest.raises(ValueError):
            g.shm_next_lsn(0)                                   # a null handle
        with pytest.raises(TypeError):
            g.shm_append_try1(h, fd, first, size, roll, 0, 7, "text")   # not bytes
        with pytest.raises(TypeError):
            g.shm_append_try1(h, fd, first, size, roll, 0, 7, bytearray(b"x"))
        for rtype in (0, 256, -1):
            with pytest.raises(ValueError):
                g.shm_append_try1(h, fd, first, size, roll, 0, rtype, b"x")
        with pytest.raises(OverflowError):
            g.shm_append_try1(h, fd, first, size, roll, -1, 7, b"x")     # expect_lsn < 0
        with pytest.raises(ValueError):
            g.shm_append_try1(h, -1, first, size, roll, 0, 7, b"x")      # no fd
        with pytest.raises(ValueError):
            g.shm_append_try1(h, fd, first, size, 1 << 32, 0, 7, b"x")   # roll_seq: u32
        with pytest.raises(TypeError):
            g.shm_append_try1(h, fd, first, size, roll, 0, 7)            # an argument short
        with pytest.raises(TypeError):
            g.append_now1(1, 1, 7, b"x")
        with pytest.raises(ValueError):
            g.bind(0, 1, 1)
        # nothing of the above reached the log
        assert log.tail_hint() == log.next_lsn == 1
        got = g.shm_append_try1(h, fd, first, size, roll, 0, 7, b"x")
        assert got == (1, log.published)
        assert g.shm_append_try1(h, fd, first, size, roll, 1, 7, b"y") == lib.AU_SHM_MOVED
        assert g.shm_next_lsn(h) == 2
    finally:
        log.close()


def test_its_writes_go_through_the_core_syscall_table(tmp_path):
    """The extension is bound to _native's functions, not a copy: an injected pwrite
    failure (native/sys.c's table, faults.py) reaches its one-record appends, shared and
    exclusive."""
    assert _binding.gilkept is not None
    rec = faults.Recorder()
    fail = faults.FailNth(2, ops={"pwrite"})
    log = SharedLog.open(tmp_path / "shared")
    try:
        with faults.installed(faults.Chain(rec, fail)):
            assert log.try_append([(7, b"one")]) is not None
            with pytest.raises(DurabilityError) as e:
                log.try_append([(7, b"two")])
            assert e.value.errno == errno.EIO
    finally:
        log.close()
    assert fail.fired == 1
    # the append, the failed append, then the core zeroing what may have landed
    assert [op.name for op in rec.ops][:2] == ["pwrite", "pwrite"]
    assert not rec.ops[0].injected and rec.ops[1].injected

    fail = faults.FailNth(1, ops={"pwrite"}, persistent=True)
    log2 = Log.open(tmp_path / "excl", durability="interval", interval_ms=0)
    try:
        with faults.installed(fail):
            lsn = log2.reserve()
            with pytest.raises(DurabilityError):
                log2.append_reserved(lsn, [(7, b"x")], wait="written")
        assert fail.fired >= 1
    finally:
        with pytest.raises(DurabilityError):
            log2.close()


_FALLBACK = textwrap.dedent("""
    import sys, tempfile
    sys.modules["aurora_log.local._gilkept"] = None        # as if it was never built
    import aurora_log
    from aurora_log import Job
    from aurora_log.local import _binding
    assert _binding.gilkept is None
    assert _binding.shm_append_try1_keeping_gil is not None      # the ctypes wrappers
    assert _binding.append_now1_keeping_gil is not None
    assert _binding.shm_gil_kept is not None
    assert type(_binding.shm_gil_kept.trylock).__name__ != "builtin_function_or_method"
    out = []
    for exclusive in (False, True):
        with tempfile.TemporaryDirectory() as d:
            q = aurora_log.open(d, exclusive=exclusive, durability="interval",
                                reaper_interval=None, auto_compact=False)
            ids = [q.enqueue(Job("t", {"i": i})) for i in range(20)]
            done = []
            while (j := q.claim("w")) is not None:
                q.complete(j.id, j.token, {"ok": j.payload["i"]})
                done.append(j.id)
            assert done == ids, (exclusive, done, ids)
            if not exclusive:
                s = q.log.stats()
                assert s["fast_appends"] >= 40, s
            q.close()
            q = aurora_log.open(d, exclusive=exclusive, reaper_interval=None,
                                auto_compact=False)
            assert [q.get(i).status.value for i in ids] == ["completed"] * 20
            q.close()
    print("FALLBACK OK")
""")


def test_without_the_extension_the_ctypes_calls_do_the_same_work():
    r = subprocess.run([sys.executable, "-c", _FALLBACK], capture_output=True, text=True,
                       timeout=120)
    assert "FALLBACK OK" in r.stdout, r.stderr


def test_an_unbound_extension_refuses_to_call():
    """Loaded on its own (no _binding: no core addresses), every call raises instead of
    calling a null pointer."""
    path = _binding.gilkept.__file__
    code = textwrap.dedent(f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("_gilkept", {path!r})
        m = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(m)
        for call in (lambda: m.shm_next_lsn(1), lambda: m.append_now1(1, 1, 7, b"x", 0),
                     lambda: m.shm_append_try1(1, 3, 1, 4096, 0, 0, 7, b"x"),
                     lambda: m.trylock(1), lambda: m.unlock(1),
                     lambda: m.write_batch(1, 3, 1, 1, 1, 1, 1, 0, 1)):
            try:
                call()
            except RuntimeError as e:
                assert "not bound" in str(e)
            else:
                raise SystemExit("called unbound")
        print("UNBOUND OK")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert "UNBOUND OK" in r.stdout, r.stderr
