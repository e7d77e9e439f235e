"""Arbitrary and mutated bytes into the scanner and into recovery: never a crash, never an
untyped error; only CorruptionError (or a report of a cut tail)."""

import shutil
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from aurora_log.local._binding import ffi, lib
from aurora_log.errors import CorruptionError
from aurora_log.local.log import Log, _scan_tail

from test_log_support import SEG_HDR, build, check_read_only, fast_dir, lay_out

HEADER = bytearray(SEG_HDR)
lib.au_segment_header_make(ffi.from_buffer(HEADER), 1, 4096, 1 << 20)
HEADER = bytes(HEADER)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=2048), st.integers(1, 1 << 20))
def test_scanner_on_arbitrary_bytes(body, max_record):
    ts = _scan_tail(HEADER + body, 1, max_record)
    assert SEG_HDR <= ts.end <= SEG_HDR + len(body)
    assert ts.next_lsn >= 1
    if ts.bad_off is not None:
        assert ts.reason and SEG_HDR <= ts.bad_off <= SEG_HDR + len(body)
    # the evidence search never runs off the buffer either
    buf = HEADER + body
    lib.au_find_durable_evidence(ffi.from_buffer(buf), len(buf), ts.end, max_record)


_valid = {}


def _valid_log(tmp_root: Path):
    if not _valid:
        recs, crash, final = build(tmp_root / "valid", 30, segment_bytes=4096, per_batch=2)
        _valid.update(recs=recs, final=final)
    return _valid["recs"], _valid["final"]


mutation = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 16), st.just(b"")),
    st.tuples(st.just("insert"), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("zero"), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=64)),
)


@settings(max_examples=1000, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 7), muts=st.lists(mutation, min_size=1, max_size=4))
def test_recovery_on_mutated_logs(tmp_path, which, muts):
    recs, final = _valid_log(tmp_path)
    names = sorted(final)
    name = names[which % len(names)]
    buf = bytearray(final[name])
    for kind, at, data in muts:
        at %= len(buf) + 1
        if kind == "set":
            buf[at:at + len(data)] = data
        elif kind == "truncate":
            del buf[at:]
        elif kind == "insert":
            buf[at:at] = data
        else:
            buf[at:at + len(data)] = bytes(len(data))
    base = fast_dir(tmp_path)
    try:
        _check_mutated(recs, lay_out(base / "m", {**final, name: bytes(buf)}))
    finally:
        if base != tmp_path:
            shutil.rmtree(base, ignore_errors=True)


def _check_mutated(recs, d):
    try:
        rep, got = check_read_only(d)
    except CorruptionError as e:
        assert e.reason
        return
    # if nothing was raised, what we read is an exact prefix of what was written
    assert got == recs[:len(got)]
    if len(got) < len(recs):
        assert rep.truncated
    # a writable open agrees and leaves a clean log behind
    try:
        with Log.open(d, segment_bytes=4096) as log:
            assert list(log.scan()) == got
    except CorruptionError as exc:
        raise AssertionError("read_only open accepted what a writable open refused") from exc
    rep2, got2 = check_read_only(d)
    assert not rep2.truncated and got2 == got
