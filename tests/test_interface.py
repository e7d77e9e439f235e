"""QueueInterface lists the public API every backend implements, with the same signatures."""

import inspect

from aurora_log.interface import QueueInterface
from aurora_log.local.queue import Queue


def _api():
    return sorted(QueueInterface.__abstractmethods__)


def _params(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def test_the_interface_names_the_queue_api():
    assert set(_api()) >= {"enqueue", "enqueue_many", "claim", "heartbeat", "progress",
                           "complete", "fail", "cancel", "retry_dead", "purge", "reap", "get",
                           "list", "stats", "history", "flush", "close", "closed"}


def test_the_local_queue_has_every_method_with_the_same_signature():
    for name in _api():
        mine = getattr(QueueInterface, name)
        theirs = getattr(Queue, name)
        if isinstance(mine, property):
            assert isinstance(theirs, property), name
            continue
        assert _params(theirs) == _params(mine), name
    for name in ("task", "register_handler", "__enter__", "__exit__"):
        assert callable(getattr(Queue, name))


def test_the_postgres_queue_implements_the_interface():
    import pytest
    pytest.importorskip("psycopg")
    from aurora_log.postgres import PostgresQueue
    assert issubclass(PostgresQueue, QueueInterface) and not PostgresQueue.__abstractmethods__
    for name in _api():
        mine = getattr(QueueInterface, name)
        if not isinstance(mine, property):
            assert _params(getattr(PostgresQueue, name)) == _params(mine), name
