"""Cron schedules: parsing (cronsim), time zones (zoneinfo), and which due time to fire.

Pure: no clock, no I/O. The queue reads its clock and asks ``Periodic.due_to_fire(last,
now)``; the firing itself is a record (PERIODIC_FIRE, in the same batch as the enqueue it
makes), so "fired once per due time" is a fact of the log, not of any process's memory.

Missed runs (due times that passed while nothing was running), per schedule:

- ``missed="skip"`` (the default, as cron does): a due time is fired only while it is
  recent, ``now - due <= grace`` (default 60 s, so a scheduler that looks every second
  never misses one); older ones are skipped.
- ``missed="once"``: after downtime, the latest missed due time is fired once (the ones
  before it are not run); a run that is merely late is fired as in "skip".

A schedule that never fired has no "missed" runs: its history before it first ran is not
caught up, whatever the option.

Times are integer milliseconds since the epoch, like every time in the records. Cron
expressions have five fields (minute resolution) or are one of the aliases @yearly
(@annually), @monthly, @weekly, @daily (@midnight), @hourly. Daylight
saving time follows cronsim: a local time that does not exist (spring forward) fires at
the first existing minute after it, an ambiguous one (fall back) fires once, at its first
occurrence.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

__all__ = ["CronSchedule", "Periodic", "MISSED_POLICIES", "DEFAULT_GRACE_MS"]

MISSED_POLICIES = ("skip", "once")
DEFAULT_GRACE_MS = 60_000
_MS = timedelta(milliseconds=1)
_ALIASES = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
            "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
            "@hourly": "0 * * * *"}


def _zone(tz) -> ZoneInfo:
    if isinstance(tz, ZoneInfo):
        return tz
    if not isinstance(tz, str):
        raise TypeError(f"tz must be a zone name such as 'Europe/Paris', not {type(tz).__name__}")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {tz!r}") from None


class CronSchedule:
    """A cron expression in a time zone. ValueError for an expression or zone that does
    not parse (checked at construction)."""

    __slots__ = ("expr", "tz", "_fields")

    def __init__(self, expr: str, tz: str | ZoneInfo = "UTC"):
        if not isinstance(expr, str):
            raise TypeError(f"cron expression must be a str, not {type(expr).__name__}")
        self.expr = expr.strip()
        self._fields = _ALIASES.get(self.expr.lower(), self.expr)
        self.tz = _zone(tz)
        try:
            next(CronSim(self._fields, datetime(2000, 1, 1, tzinfo=self.tz)))
        except CronSimError as e:
            raise ValueError(f"invalid cron expression {expr!r}: {e}") from None
        except StopIteration:
            raise ValueError(f"cron expression {expr!r} never fires") from None

    def _at(self, ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, UTC).astimezone(self.tz)

    def next_after(self, ms: int) -> int:
        """The first due time strictly after ``ms``."""
        return _to_ms(next(CronSim(self._fields, self._at(ms))))

    def latest_at_or_before(self, ms: int) -> int | None:
        """The latest due time <= ``ms`` (None if there is none, e.g. "Feb 30")."""
        try:
            return _to_ms(next(CronSim(self._fields, self._at(ms) + _MS, reverse=True)))
        except StopIteration:
            return None

    def __repr__(self) -> str:
        return f"CronSchedule({self.expr!r}, tz={self.tz.key!r})"


def _to_ms(dt: datetime) -> int:
    return round(dt.timestamp() * 1000)


@dataclass(frozen=True)
class Periodic:
    """One named schedule: fire ``template`` (a Job, copied with a new id per firing) at
    every due time of ``cron``."""
    name: str
    cron: CronSchedule
    template: object            # aurora_log.Job (kept untyped: this module is pure)
    missed: str = "skip"
    grace_ms: int = DEFAULT_GRACE_MS

    def __post_init__(self) -> None:
        if self.missed not in MISSED_POLICIES:
            raise ValueError(f"missed must be one of {MISSED_POLICIES}, not {self.missed!r}")
        if isinstance(self.grace_ms, bool) or not isinstance(self.grace_ms, int) \
                or self.grace_ms < 0:
            raise ValueError(f"grace must be >= 0, got {self.grace_ms!r}")

    def due_to_fire(self, last_due_ms: int | None, now_ms: int) -> int | None:
        """The due time to fire now, or None. ``last_due_ms``: the due time this schedule
        last fired (from the log), None if it never fired."""
        due = self.cron.latest_at_or_before(now_ms)
        if due is None or (last_due_ms is not None and due <= last_due_ms):
            return None
        if now_ms - due <= self.grace_ms:
            return due                       # on time (or late within the grace)
        if self.missed == "once" and last_due_ms is not None:
            return due                       # catch up once: the latest missed run
        return None
