"""The web dashboard and Prometheus metrics (needs the ``dashboard`` extra:
``pip install 'aurora-log[dashboard]'``).

    from aurora_log.dashboard import app
    asgi = app(q)                      # mount it in Starlette / FastAPI

or from a shell: ``aurora-log dashboard DIR_OR_DSN [--schema S] [--host 127.0.0.1]
[--port 8600]``. ``q`` may be a local Queue or a PostgresQueue (``aurora_log.open(dsn)``).
"""

from .app import app, create_app, directory_app, postgres_app, serve

__all__ = ["app", "create_app", "directory_app", "postgres_app", "serve"]
