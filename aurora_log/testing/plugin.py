"""The pytest plugin of aurora_log.testing, registered through the ``pytest11`` entry point
(installing aurora-log is enough). Fixtures:

``aurora_clock``  a :class:`~aurora_log.testing.FakeClock` (``clock.advance(seconds)``).
``aurora_queue``  a queue in a temporary directory, on ``aurora_clock``, sync durability, no
                  background threads; closed after the test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .clock import FakeClock
from .crash import open_queue


@pytest.fixture
def aurora_clock() -> FakeClock:
    """A fake clock, starting at the real time now (whole seconds); moves only when told."""
    return FakeClock()


@pytest.fixture
def aurora_queue(tmp_path_factory, aurora_clock) -> Iterator:
    """A fresh queue on ``aurora_clock`` in a temporary directory (closed afterwards).
    ``drain(aurora_queue)`` runs its jobs; ``crash_and_reopen(aurora_queue)`` kills it."""
    q = open_queue(tmp_path_factory.mktemp("aurora") / "queue", aurora_clock)
    try:
        yield q
    finally:
        q.close()
