"""Backend-specific probes the conformance tests need (kept out of the tests)."""


def parked(q) -> bool:
    """True when a claim(wait=...) on ``q`` is blocked waiting (for the close test)."""
    if getattr(q, "_parked", 0):                 # the local Queue, shared mode: the page
        return True
    if hasattr(q, "_cond"):                      # the local Queue's condition
        return bool(q._cond._waiters)
    listener = getattr(q, "_listener", None)     # PostgresQueue's LISTEN thread
    return listener is not None and bool(listener._cond._waiters)
