"""The Jepsen-style checker now lives in the testing kit (aurora_log.testing.checker), where
the crash harness uses it too; the project's power-loss tests import it from here."""

from aurora_log.testing.checker import (  # noqa: F401
    ALWAYS_BARRIERS,
    SYNC_BARRIERS,
    Checker,
    History,
    HOp,
    MJob,
    RefModel,
    Verdict,
    all_jobs,
    canon,
    fp_sum,
    queue_fingerprint,
)
