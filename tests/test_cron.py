"""Cron schedules (aurora_log.local.cron): parsing, time zones, DST, the missed-run policy."""

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from aurora_log.local.cron import CronSchedule, Periodic

PARIS = ZoneInfo("Europe/Paris")
UTC = ZoneInfo("UTC")


def ms(*args, tz=UTC) -> int:
    return round(datetime(*args, tzinfo=tz).timestamp() * 1000)


def test_next_and_latest_due_times():
    c = CronSchedule("*/5 * * * *")
    assert c.next_after(ms(2026, 1, 1, 0, 5)) == ms(2026, 1, 1, 0, 10)    # strictly after
    assert c.next_after(ms(2026, 1, 1, 0, 7)) == ms(2026, 1, 1, 0, 10)
    assert c.latest_at_or_before(ms(2026, 1, 1, 0, 5)) == ms(2026, 1, 1, 0, 5)  # at counts
    assert c.latest_at_or_before(ms(2026, 1, 1, 0, 9, 59)) == ms(2026, 1, 1, 0, 5)


def test_time_zone_is_applied():
    c = CronSchedule("0 9 * * *", tz="Europe/Paris")
    # 09:00 in Paris in winter is 08:00 UTC, in summer 07:00 UTC
    assert c.next_after(ms(2026, 1, 10, 12)) == ms(2026, 1, 11, 8)
    assert c.next_after(ms(2026, 7, 10, 12)) == ms(2026, 7, 11, 7)


def test_dst_gap_and_overlap_fire_once():
    c = CronSchedule("30 2 * * *", tz="Europe/Paris")
    # 2026-03-29 02:30 does not exist in Paris: fires at 03:00 local (01:00 UTC)
    assert c.next_after(ms(2026, 3, 28, 12)) == ms(2026, 3, 29, 3, 0, tz=PARIS)
    # 2026-10-25 02:30 happens twice: once only (the first, +02:00)
    first = c.next_after(ms(2026, 10, 24, 12))
    assert first == ms(2026, 10, 25, 0, 30)
    assert c.next_after(first) == ms(2026, 10, 26, 1, 30)


def test_aliases():
    assert CronSchedule("@hourly").next_after(ms(2026, 1, 1, 0, 1)) == ms(2026, 1, 1, 1)
    assert CronSchedule("@daily").next_after(ms(2026, 1, 1, 0, 1)) == ms(2026, 1, 2)


@pytest.mark.parametrize("expr", ["", "* * *", "61 * * * *", "0 0 30 2 *", "@sometimes",
                                  "a b c d e"])
def test_bad_expressions_are_value_errors(expr):
    with pytest.raises(ValueError):
        CronSchedule(expr)


def test_bad_zone_and_types():
    with pytest.raises(ValueError):
        CronSchedule("* * * * *", tz="Mars/Olympus")
    with pytest.raises(TypeError):
        CronSchedule(5)
    with pytest.raises(TypeError):
        CronSchedule("* * * * *", tz=1)


def _p(missed="skip", grace_ms=60_000):
    return Periodic("p", CronSchedule("0 * * * *"), template=None, missed=missed,
                    grace_ms=grace_ms)


def test_on_time_firing_and_no_second_firing():
    p = _p()
    due = ms(2026, 1, 1, 10)
    assert p.due_to_fire(None, due) == due
    assert p.due_to_fire(None, due + 59_000) == due
    assert p.due_to_fire(due, due + 1_000) is None       # already fired
    assert p.due_to_fire(due, due + 3_600_000) == due + 3_600_000


def test_skip_policy_skips_missed_runs():
    p = _p("skip")
    last = ms(2026, 1, 1, 10)
    now = ms(2026, 1, 1, 13, 20)              # 11:00, 12:00, 13:00 missed
    assert p.due_to_fire(last, now) is None
    assert p.due_to_fire(last, ms(2026, 1, 1, 14)) == ms(2026, 1, 1, 14)


def test_once_policy_catches_up_the_latest_missed_run_once():
    p = _p("once")
    last = ms(2026, 1, 1, 10)
    now = ms(2026, 1, 1, 13, 20)
    assert p.due_to_fire(last, now) == ms(2026, 1, 1, 13)
    assert p.due_to_fire(ms(2026, 1, 1, 13), now) is None
    # a schedule that never fired has nothing to catch up
    assert p.due_to_fire(None, now) is None


def test_bad_policy_and_grace():
    with pytest.raises(ValueError):
        _p("always")
    with pytest.raises(ValueError):
        _p(grace_ms=-1)
