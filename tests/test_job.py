"""Job model: the seed's own tests ported, plus validation (bad input raises at once)."""

from datetime import datetime, timedelta, timezone, UTC

import pytest

from aurora_log.job import (Job, JobPriority, JobStatus, MAX_SECONDS, encode_payload,
                            from_ms, new_id, retry_delay_ms, to_ms)

UTC = UTC
T0 = datetime(2030, 1, 1, tzinfo=UTC)


# ---------------------------------------------------------------- seed parity

def test_defaults_match_the_seed():
    j = Job.new("send_email")
    assert j.job_type == "send_email"
    assert j.priority is JobPriority.NORMAL
    assert j.status is JobStatus.PENDING
    assert j.max_retries == 3
    assert j.retry_count == 0
    assert j.timeout_seconds == 300
    assert j.lease_duration == 30
    assert j.payload == {}
    assert j.scheduled_at is None and j.started_at is None and j.completed_at is None
    assert j.queue == "default" and j.unique_key is None
    assert j.created_at.tzinfo is not None


def test_ids_are_unique_uuid4_strings():
    import uuid
    ids = {new_id() for _ in range(2000)}
    assert len(ids) == 2000
    for i in list(ids)[:50]:
        u = uuid.UUID(i)
        assert str(u) == i and u.version == 4


def test_batch_ids_are_uuid7_strings_in_batch_order():
    import uuid
    from aurora_log.job import new_ids
    ids = new_ids(3000)
    assert len(set(ids)) == 3000 and ids == sorted(ids)
    for i in ids[:50] + ids[-50:]:
        u = uuid.UUID(i)
        assert str(u) == i and u.version == 7 and u.variant == uuid.RFC_4122
    # the 48-bit time field is the wall clock's milliseconds
    import time
    ms = int(ids[0][:8] + ids[0][9:13], 16)
    assert abs(ms - time.time() * 1000) < 60_000
    assert new_ids(0) == []


def test_batch_ids_of_the_same_millisecond_differ():
    # one random draw per batch: two batches in the same ms (same time field) share no id,
    # and differ in their random prefix, not only in the counter
    from aurora_log.job import new_ids
    batches = [new_ids(1000) for _ in range(200)]
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == len(flat)
    assert len({b[0][14:28] for b in batches}) == len(batches)


def test_batch_ids_differ_in_a_forked_child():
    import os
    from aurora_log.job import new_ids
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                      # pragma: no cover - the child
        os.close(r)
        os.write(w, "\n".join(new_ids(100)).encode())
        os._exit(0)
    os.close(w)
    mine = new_ids(100)
    with os.fdopen(r) as f:
        theirs = f.read().split("\n")
    os.waitpid(pid, 0)
    assert len(theirs) == 100 and not set(mine) & set(theirs)


def test_builders_chain_like_the_seed_example():
    at = T0 + timedelta(hours=1)
    j = (Job.new("process_video").add_field("video_id", "vid-123")
         .add_field("resolution", "1080p").with_priority(JobPriority.HIGH)
         .with_max_retries(5).with_timeout(600).schedule_at(at).with_lease_duration(60)
         .with_queue("video").with_unique_key("vid-123"))
    assert j.payload == {"video_id": "vid-123", "resolution": "1080p"}
    assert (j.priority, j.max_retries, j.timeout_seconds, j.scheduled_at) == \
        (JobPriority.HIGH, 5, 600, at)
    assert (j.lease_duration, j.queue, j.unique_key) == (60, "video", "vid-123")


def test_with_payload_replaces_and_copies():
    src = {"user_id": "123", "amount": 99.99}
    j = Job.new("process_payment").add_field("x", 1).with_payload(src)
    assert j.payload == src
    src["user_id"] = "changed"
    assert j.payload["user_id"] == "123"


def test_keyword_constructor():
    j = Job("send", {"a": [1, 2, {"b": None}]}, priority=JobPriority.CRITICAL, max_retries=0,
            queue="mail", timeout_seconds=None)
    assert j.payload == {"a": [1, 2, {"b": None}]} and j.timeout_seconds is None
    assert j.priority == 4 and j.max_retries == 0 and j.queue == "mail"


def test_priority_order_critical_high_normal_low():
    assert JobPriority.CRITICAL > JobPriority.HIGH > JobPriority.NORMAL > JobPriority.LOW
    assert [p.value for p in JobPriority] == [1, 2, 3, 4]


def test_should_run_past_and_future():
    j = Job.new("x")
    assert j.should_run(T0)
    j.schedule_at(T0 + timedelta(seconds=10))
    assert not j.should_run(T0)
    assert not j.should_run(T0 + timedelta(seconds=9, milliseconds=999))
    assert j.should_run(T0 + timedelta(seconds=10))
    j.schedule_at(T0 - timedelta(hours=1))
    assert j.should_run(T0)
    j.mark_running(T0)
    assert not j.should_run(T0)


def test_should_run_with_wall_clock():
    assert Job.new("x").schedule_at(datetime.now(UTC) - timedelta(seconds=1)).should_run()
    assert not Job.new("x").schedule_at(datetime.now(UTC) + timedelta(hours=1)).should_run()


def test_mark_running_touch_and_heartbeat_expiry():
    j = Job.new("x").with_lease_duration(30)
    assert not j.is_heartbeat_expired(T0)          # not running
    j.mark_running(T0)
    assert j.status is JobStatus.RUNNING and j.started_at == T0 and j.last_heartbeat == T0
    assert not j.is_heartbeat_expired(T0 + timedelta(seconds=30))       # holds through the deadline
    assert j.is_heartbeat_expired(T0 + timedelta(seconds=30, milliseconds=1))
    j.touch(T0 + timedelta(seconds=20))
    assert not j.is_heartbeat_expired(T0 + timedelta(seconds=50))
    assert j.is_heartbeat_expired(T0 + timedelta(seconds=50, milliseconds=1))


def test_mark_completed():
    j = Job.new("x").mark_running(T0).mark_completed(T0 + timedelta(seconds=1))
    assert j.status is JobStatus.COMPLETED and j.completed_at == T0 + timedelta(seconds=1)


def test_retry_logic_max_retries_is_retries_after_first_attempt():
    j = Job.new("x").with_max_retries(2)
    statuses = []
    for _ in range(3):
        j.mark_running(T0)
        j.mark_failed("boom", T0)
        statuses.append(j.status)
    assert statuses == [JobStatus.FAILED, JobStatus.FAILED, JobStatus.DEAD_LETTER]
    assert j.retry_count == 2 and j.error == "boom"


def test_max_retries_zero_never_retries():
    j = Job.new("x").with_max_retries(0).mark_running(T0).mark_failed("no", T0)
    assert j.status is JobStatus.DEAD_LETTER and j.retry_count == 0


def test_failed_job_is_rescheduled_after_backoff():
    j = Job.new("x").mark_running(T0).mark_failed("boom", T0)
    assert j.scheduled_at == T0 + timedelta(seconds=5)
    assert not j.should_run(T0 + timedelta(seconds=4))
    assert j.should_run(T0 + timedelta(seconds=5))


def test_backoff_values():
    j = Job.new("x")
    got = []
    for n in range(6):
        j.retry_count = n
        got.append(j.next_retry_delay().total_seconds())
    assert got == [5, 10, 20, 40, 80, 160]
    j.retry_count = 20
    assert j.next_retry_delay() == timedelta(hours=1)           # capped
    assert j.next_retry_delay(cap=60) == timedelta(seconds=60)
    j.retry_count = 10**6
    assert j.next_retry_delay() == timedelta(hours=1)           # no overflow


def test_backoff_jitter_stays_in_range():
    import random
    rng = random.Random(7)
    vals = [retry_delay_ms(3, jitter=0.5, rng=rng) for _ in range(200)]
    assert all(20_000 <= v <= 40_000 for v in vals) and len(set(vals)) > 50
    with pytest.raises(ValueError):
        retry_delay_ms(1, jitter=1.5)


def test_times_are_kept_at_millisecond_precision():
    at = datetime(2030, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
    j = Job.new("x").schedule_at(at)
    assert j.scheduled_at == datetime(2030, 1, 1, 0, 0, 0, 123000, tzinfo=UTC)
    assert from_ms(to_ms(j.scheduled_at)) == j.scheduled_at
    other_tz = timezone(timedelta(hours=5))
    assert Job.new("x").schedule_at(at.astimezone(other_tz)).scheduled_at == j.scheduled_at


def test_to_dict_round_trips_through_the_keyword_constructor():
    j = Job.new("x").add_field("k", "v").with_priority(JobPriority.LOW)
    d = j.to_dict()
    fields = dict(d)
    for name in ("created_at",):
        fields[name] = datetime.fromisoformat(fields[name])
    assert Job(fields.pop("job_type"), fields.pop("payload"), **fields) == j


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("bad, exc", [
    ("", ValueError), ("a" * 201, ValueError), ("a\x00b", ValueError), ("a\nb", ValueError),
    ("../etc", ValueError), ("a/b", ValueError), ("a\\b", ValueError), (".hidden", ValueError),
    (" padded", ValueError), (5, TypeError), (None, TypeError), ("\ud800", ValueError),
])
def test_bad_job_type_and_queue_names(bad, exc):
    with pytest.raises(exc):
        Job.new(bad)
    with pytest.raises(exc):
        Job.new("ok").with_queue(bad)


@pytest.mark.parametrize("payload, exc", [
    ({1: "x"}, TypeError), ({"a": {2: "x"}}, TypeError), ({"a": float("nan")}, ValueError),
    ({"a": float("inf")}, ValueError), ({"a": b"bytes"}, TypeError), ({"a": (1, 2)}, TypeError),
    ({"a": {1, 2}}, TypeError), ({"a": object()}, TypeError), ([1, 2], TypeError),
    ("str", TypeError), ({"a": [1, [datetime.now()]]}, TypeError),
])
def test_non_json_payloads_are_rejected(payload, exc):
    with pytest.raises(exc):
        Job("x", payload)


def test_add_field_validates():
    with pytest.raises(TypeError):
        Job.new("x").add_field(1, "v")
    with pytest.raises(ValueError):
        Job.new("x").add_field("k", float("nan"))


@pytest.mark.parametrize("builder, arg, exc", [
    ("with_timeout", -1, ValueError), ("with_timeout", 0, ValueError),
    ("with_timeout", float("inf"), ValueError), ("with_timeout", "10", TypeError),
    ("with_timeout", MAX_SECONDS + 1, ValueError),
    ("with_lease_duration", -5, ValueError), ("with_lease_duration", None, TypeError),
    ("with_max_retries", -1, ValueError), ("with_max_retries", 1.5, TypeError),
    ("with_max_retries", True, TypeError), ("with_max_retries", 2**32, ValueError),
    ("with_priority", 5, ValueError), ("with_priority", 0, ValueError),
    ("with_priority", 2.0, TypeError), ("schedule_at", datetime(2030, 1, 1), ValueError),
    ("schedule_at", "2030-01-01", TypeError), ("with_unique_key", "", ValueError),
    ("with_unique_key", "k" * 1025, ValueError),
])
def test_bad_builder_arguments(builder, arg, exc):
    with pytest.raises(exc):
        getattr(Job.new("x"), builder)(arg)


def test_with_timeout_none_disables_it():
    assert Job.new("x").with_timeout(None).timeout_seconds is None


def test_payload_encoding_is_compact_utf8_json():
    assert encode_payload({"a": 1, "b": "é", "c": [True, None]}) == \
        '{"a":1,"b":"é","c":[true,null]}'.encode()
    with pytest.raises(ValueError):
        encode_payload({"a": "\ud800"})


def test_status_codes_are_stable():
    assert [s.code for s in JobStatus] == [1, 2, 3, 4, 5, 6]
    assert all(JobStatus.from_code(s.code) is s for s in JobStatus)
    assert str(JobStatus.DEAD_LETTER) == "dead_letter"


def test_cycles_and_deep_nesting_are_rejected_with_a_short_message():
    a = []
    a.append(a)
    with pytest.raises(ValueError, match="cycle") as e:
        Job("x", {"a": a})
    assert len(str(e.value)) < 200
    deep = {}
    cur = deep
    for _ in range(600):
        cur["d"] = {}
        cur = cur["d"]
    with pytest.raises(ValueError, match="nested"):
        Job("x", deep)


def test_status_codes_are_written_once_in_job_order():
    from aurora_log.job import STATUS_CODES
    # the engine unpacks STATUS_CODES positionally: its fields follow JobStatus, in order
    assert STATUS_CODES._fields == tuple(s.name for s in JobStatus)
    assert tuple(s.code for s in JobStatus) == tuple(STATUS_CODES) == (1, 2, 3, 4, 5, 6)
    assert all(JobStatus.from_code(s.code) is s for s in JobStatus)
