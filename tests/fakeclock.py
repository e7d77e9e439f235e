"""The fake clock tests pass as ``aurora_log.open(..., clock=...)``: time moves only when a
test moves it, so lease, timeout and retry edges can be hit to the millisecond."""

from aurora_log.job import from_ms

T0 = 1_700_000_000.0   # seconds since the epoch (2023-11-14)


class FakeClock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    @property
    def now(self):
        """The current fake time as the queue's API shows times (UTC datetime, ms)."""
        return from_ms(round(self.t * 1000))
