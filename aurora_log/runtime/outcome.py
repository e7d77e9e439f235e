"""What running a handler produced, however it ran (thread, event loop, child process)."""

from __future__ import annotations

import dataclasses
import os
import traceback
from typing import Any

__all__ = ["Outcome", "format_error", "MAX_ERROR_CHARS"]

MAX_ERROR_CHARS = 4000

# Frames of the modules that call handlers are left out of the error text: the user's
# frames matter (a task's own frames, e.g. a payload that does not fit, stay).
_RUNNER_FILES = frozenset(os.path.join(os.path.dirname(__file__), name)
                          for name in ("worker.py", "event_loop.py", "isolation.py"))


@dataclasses.dataclass
class Outcome:
    kind: str                   # "complete" | "fail"
    value: Any = None           # result or error text
    cancelled: bool = False     # the handler stopped because of a cancel request


def format_error(exc: BaseException) -> str:
    """The error text stored on the job: "Type: message" and the innermost frames."""
    head = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    tb = [f for f in traceback.extract_tb(exc.__traceback__)
          if f.filename not in _RUNNER_FILES][-3:]
    where = "".join(f"\n  at {f.filename}:{f.lineno} in {f.name}" for f in tb)
    return (head + where)[:MAX_ERROR_CHARS]
