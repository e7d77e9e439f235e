"""The claim order: which waiting job a claim takes next.

(Moved verbatim from state.py; see the following commits.)
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .table import _Base

_M64 = (1 << 64) - 1
MAX_DUE_MS = (1 << 47) - 1             # year ~6429; keeps heap keys inside their bit fields


class _Run:
    """One claim-order run of a version-2 snapshot: the ranks (positions among the
    snapshot's never-touched pending jobs) of one pair's ready jobs, or of the timer jobs,
    sorted by heap key. Consumed front to back like a sorted heap; ``head`` caches the
    current entry ``(key, id)``, ``last`` the last key handed out (order check)."""
    __slots__ = ("base", "pair", "ranks", "head", "last")

    def __init__(self, base: "_Base", pair: int | None, segments) -> None:
        self.base = base
        self.pair = pair                      # None: the timer run
        self.ranks = itertools.chain.from_iterable(
            itertools.starmap(range, ((a, a + c) for a, c in segments)))
        self.head = None
        self.last = -1
