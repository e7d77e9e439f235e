"""Transition records: round trips, and malformed payloads rejected with RecordError only."""

import pytest
from hypothesis import given, settings, strategies as st

from aurora_log.local import records as R
from aurora_log.errors import CorruptionError

TOKEN = b"\x01\x02\x03\x04\x05\x06\x07\x08"

SAMPLES = [
    R.Enqueue("id-1", "send_email", "default", 2, 3, 1_000, 2_000, None, 300_000, 30_000, None,
              b'{"to":"a@b"}'),
    R.Enqueue("é-2", "t", "q", 4, 0, -5, 0, 9_999_999, None, 1, "uniq", b"{}"),
    R.Claim("id-1", 5, TOKEN, 30_005, "worker-1"),
    R.Heartbeat("id-1", 6, TOKEN, 30_006),
    R.Progress("id-1", 7, TOKEN, 0.5, "half"),
    R.Progress("id-1", 7, TOKEN, 1.0, None),
    R.Complete("id-1", 8, TOKEN, b'{"ok":true}'),
    R.Complete("id-1", 8, TOKEN, None),
    R.Fail("id-1", 9, TOKEN, R.OUTCOME_RETRY, 5_009, "Traceback ... é"),
    R.Fail("id-1", 9, TOKEN, R.OUTCOME_DEAD, 0, ""),
    R.Reap("id-1", 10, TOKEN, R.REASON_TIMEOUT, R.OUTCOME_CANCELLED, 0),
    R.Cancel("id-1", 11),
    R.CancelRequest("id-1", 12),
    R.RetryDead("id-1", 13),
    R.Purge(14, ("a", "bb", "ccc")),
    R.Purge(15, ()),
    R.Release("id-1", 16, TOKEN, R.OUTCOME_RETRY),
    R.Release("id-1", 17, TOKEN, R.OUTCOME_CANCELLED),
    R.Claim("id-1", 5, TOKEN, 30_005, "worker-1", 42),        # CLAIM v2: the attach LSN
    R.Attach(18, 1234, "host-é"),
    R.Detach(19, 42),
    R.ProcGone(20, 42, 43),
]


@pytest.mark.parametrize("rec", SAMPLES, ids=lambda r: type(r).__name__)
def test_round_trip(rec):
    rtype, payload = R.encode(rec)
    assert 1 <= rtype <= 255
    assert payload[0] == (2 if getattr(rec, "proc", 0) and type(rec) is R.Claim else R.VERSION)
    assert R.decode(rtype, payload) == rec
    assert R.decode(rtype, memoryview(payload)) == rec


def test_type_bytes_are_stable():
    assert [R.ENQUEUE, R.CLAIM, R.HEARTBEAT, R.PROGRESS, R.COMPLETE, R.FAIL, R.REAP, R.CANCEL,
            R.CANCEL_REQUEST, R.RETRY_DEAD, R.PURGE, R.RELEASE, R.ATTACH, R.DETACH,
            R.PROC_GONE] == list(range(1, 16))


@pytest.mark.parametrize("rec", SAMPLES, ids=lambda r: type(r).__name__)
def test_every_truncation_and_extension_is_rejected(rec):
    rtype, payload = R.encode(rec)
    for n in range(len(payload)):
        with pytest.raises(R.RecordError):
            R.decode(rtype, payload[:n])
    with pytest.raises(R.RecordError):
        R.decode(rtype, payload + b"\x00")


@pytest.mark.parametrize("rec", SAMPLES, ids=lambda r: type(r).__name__)
def test_unknown_layout_version_is_rejected(rec):
    rtype, payload = R.encode(rec)
    with pytest.raises(R.RecordError, match="version"):
        R.decode(rtype, bytes([3]) + payload[1:])


def test_unknown_type_is_rejected():
    for rtype in (0, 12, 255):
        with pytest.raises(R.RecordError):
            R.decode(rtype, b"\x01")


def test_record_error_is_a_corruption_error():
    assert issubclass(R.RecordError, CorruptionError)


def test_bad_enum_values_are_rejected():
    rtype, payload = R.encode(SAMPLES[0])
    bad = bytearray(payload)
    bad[2] = 9                       # priority
    with pytest.raises(R.RecordError, match="priority"):
        R.decode(rtype, bytes(bad))
    rtype, payload = R.encode(SAMPLES[8])
    bad = bytearray(payload)
    bad[1] = 7                       # outcome
    with pytest.raises(R.RecordError, match="outcome"):
        R.decode(rtype, bytes(bad))
    rtype, payload = R.encode(R.Release("id-1", 16, TOKEN, R.OUTCOME_RETRY))
    bad = bytearray(payload)
    bad[1] = R.OUTCOME_DEAD          # a release never dead-letters
    with pytest.raises(R.RecordError, match="outcome"):
        R.decode(rtype, bytes(bad))


def test_invalid_utf8_is_rejected():
    rtype, payload = R.encode(R.Cancel("ab", 1))
    with pytest.raises(R.RecordError, match="UTF-8"):
        R.decode(rtype, payload[:-2] + b"\xff\xfe")


def test_encode_rejects_values_that_do_not_fit():
    with pytest.raises(ValueError):
        R.encode(R.Cancel("x" * 70_000, 1))
    with pytest.raises(ValueError):
        R.encode(R.Claim("x", 2**63, TOKEN, 0, "w"))
    with pytest.raises(TypeError):
        R.encode(("not", "a", "record"))


@settings(max_examples=1000, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_decoder(rtype, data):
    try:
        R.decode(rtype, data)
    except R.RecordError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SAMPLES), st.data())
def test_mutated_records_decode_or_raise_record_error(rec, data):
    rtype, payload = R.encode(rec)
    buf = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    try:
        R.decode(rtype, bytes(buf))
    except R.RecordError:
        pass


def test_claim_v1_decodes_with_no_process_and_v2_carries_it():
    _, v1 = R.encode(R.Claim("id-1", 5, TOKEN, 30_005, "w"))
    _, v2 = R.encode(R.Claim("id-1", 5, TOKEN, 30_005, "w", 7))
    assert v1[0] == 1 and v2[0] == 2 and v2[:1] + v2[1:-8] != v1
    assert R.decode(R.CLAIM, v1).proc == 0
    assert R.decode(R.CLAIM, v2).proc == 7
    assert R.decode(R.CLAIM, v2)._replace(proc=0) == R.decode(R.CLAIM, v1)
