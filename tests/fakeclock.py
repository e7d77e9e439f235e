"""The fake clock tests pass as ``aurora_log.open(..., clock=...)``: the testing kit's
clock (aurora_log.testing.FakeClock), started at a fixed time so runs are reproducible."""

from aurora_log.testing.clock import FakeClock as _KitClock

T0 = 1_700_000_000.0   # seconds since the epoch (2023-11-14)


class FakeClock(_KitClock):
    def __init__(self, t: float = T0):
        super().__init__(t)
