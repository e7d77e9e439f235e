"""Queue-control records (types 20..24): encode/decode round trips and malformed payloads."""

import pytest

from aurora_log.local import records as R

SAMPLES = [
    R.Pause("emails", 5), R.Resume("emails", 6),
    R.Limit(R.SCOPE_QUEUE, "reports", 7, 3, 10, 60_000),
    R.Limit(R.SCOPE_JOB_TYPE, "resize", 8, 0, 0, 0),
    R.PeriodicFire("nightly", 9, 1_800_000_000_000, "job-1"),
    R.Depends("child", 10, ("a", "b"), R.ON_FAILURE_CANCEL),
    R.Depends("child", 11, ("é",), R.ON_FAILURE_IGNORE),
]


@pytest.mark.parametrize("rec", SAMPLES, ids=lambda r: type(r).__name__)
def test_round_trip(rec):
    rtype, data = R.encode(rec)
    assert rtype in R.CONTROL_TYPES
    assert R.decode(rtype, data) == rec
    # every truncation is a RecordError, never another exception
    for cut in range(len(data)):
        with pytest.raises(R.RecordError):
            R.decode(rtype, data[:cut])
    with pytest.raises(R.RecordError):
        R.decode(rtype, data + b"x")


def test_bad_enums_are_refused():
    rtype, data = R.encode(R.Limit(R.SCOPE_QUEUE, "q", 1, 1, 0, 0))
    with pytest.raises(R.RecordError):
        R.decode(rtype, data[:1] + b"\x09" + data[2:])          # unknown scope
    rtype, data = R.encode(R.Limit(R.SCOPE_QUEUE, "q", 1, 1, 5, 0))
    with pytest.raises(R.RecordError):
        R.decode(rtype, data)                                  # a rate without a period
    rtype, data = R.encode(R.Depends("c", 1, ("p",), R.ON_FAILURE_CANCEL))
    with pytest.raises(R.RecordError):
        R.decode(rtype, data[:1] + b"\x07" + data[2:])          # unknown policy
