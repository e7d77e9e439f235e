"""The PostgreSQL backend: the same queue API on a database several machines share.

    q = aurora_log.open("postgresql://app@db/app", schema="aurora")

Needs the optional extra: ``pip install aurora-log[postgres]`` (psycopg 3 + psycopg_pool).
A local store never imports this package.
"""

from .connection import is_dsn
from .queue import PostgresQueue
from .schema import LATEST_VERSION, migrate

__all__ = ["LATEST_VERSION", "PostgresQueue", "is_dsn", "migrate"]
