"""aurora_log.testing: prove your own tasks survive crashes and redelivery.

    from aurora_log.testing import FakeClock, open_queue, drain, crash_test, exactly_once

Installing aurora-log registers the pytest plugin (aurora_log.testing.plugin) with the
fixtures ``aurora_clock`` and ``aurora_queue``; hypothesis strategies are in
``aurora_log.testing.strategies`` and ``benchmark_tasks`` in ``aurora_log.testing.bench``.

Names are loaded on first use, so importing this package pulls in neither pytest nor
hypothesis (and the lead's fault-injection module, ``aurora_log.testing.faults``, stays
independent of the kit).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FakeClock": "clock",
    "drain": "runner", "RunResult": "runner", "next_due": "runner",
    "crash_test": "crash", "CrashPoint": "crash", "CrashAt": "crash", "CrashReport": "crash",
    "crash_and_reopen": "crash", "open_queue": "crash", "exactly_once": "crash",
    "benchmark_tasks": "bench", "BenchReport": "bench",
}

__all__ = [  # noqa: RUF022 - kept in _EXPORTS' order
    "FakeClock", "drain", "RunResult", "next_due", "crash_test", "CrashPoint", "CrashAt",
    "CrashReport", "crash_and_reopen", "open_queue", "exactly_once", "benchmark_tasks",
    "BenchReport",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'aurora_log.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
