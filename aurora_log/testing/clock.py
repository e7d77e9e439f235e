"""A fake clock for ``aurora_log.open(..., clock=...)``: time moves only when a test moves
it, so schedules, retry backoff, leases and timeouts can be hit to the millisecond without
sleeping."""

from __future__ import annotations

import math
import time
from datetime import datetime

from aurora_log.job import from_ms

__all__ = ["FakeClock"]


class FakeClock:
    """A callable returning seconds since the epoch, moved only by ``advance``/``set``.

    ``start``: the first reading (default: the real time now, whole seconds, so that times a
    task computes from the wall clock, e.g. ``enqueue_with(delay=60)``, land near it)."""

    def __init__(self, start: float | None = None):
        if start is None:
            start = float(math.floor(time.time()))
        self.t = _seconds(start, "start")

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (>= 0)."""
        seconds = _seconds(seconds, "seconds")
        if seconds < 0:
            raise ValueError(f"a clock only moves forward; got advance({seconds!r})")
        self.t += seconds

    def set(self, when: float | datetime) -> None:
        """Move time forward to ``when`` (epoch seconds or an aware datetime); never back."""
        t = when.timestamp() if isinstance(when, datetime) else _seconds(when, "when")
        if t < self.t:
            raise ValueError(f"a clock only moves forward: {t} is before {self.t}")
        self.t = t

    @property
    def now(self) -> datetime:
        """The current fake time as the queue's API shows times (UTC datetime, ms)."""
        return from_ms(round(self.t * 1000))

    def __repr__(self) -> str:
        return f"<FakeClock {self.now.isoformat()}>"


def _seconds(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{what} must be a finite number of seconds, not {value!r}")
    return float(value)
