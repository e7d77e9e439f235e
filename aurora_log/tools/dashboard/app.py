"""The Starlette application: routes to the pages, /metrics, the static files.

    from aurora_log.dashboard import app
    web = app(q)                                   # an ASGI app for your Queue (local or
                                                   # PostgreSQL: aurora_log.open(dsn))
    starlette_app.mount("/jobs-admin", web)        # or FastAPI: fastapi_app.mount(...)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ...runtime.metrics import CONTENT_TYPE, render
from .pages import Pages
from .source import DirectorySource, PostgresSource, QueueSource, StoreSource
from .state import Dashboard

__all__ = ["app", "create_app", "directory_app", "postgres_app", "serve"]

STATIC = Path(__file__).with_name("static")


def create_app(source: StoreSource, *, allow_actions: bool = False, poll_seconds: float = 2.0,
               owns_source: bool = False) -> Starlette:
    """The dashboard over ``source``; ``app.state.dashboard`` is its Dashboard."""
    dash = Dashboard(source, allow_actions=allow_actions, poll_seconds=poll_seconds,
                     owns_source=owns_source)
    pages = Pages(dash)

    async def metrics(request: Request) -> Response:
        return Response(render(dash.registry), media_type=CONTENT_TYPE)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        dash.ensure_started()
        try:
            yield
        finally:
            dash.close()

    routes = [
        Route("/", pages.overview, name="overview"),
        Route("/queues", pages.queues, name="queues"),
        Route("/jobs", pages.jobs, name="jobs"),
        Route("/jobs/{job_id:path}/retry", pages.retry, methods=["POST"], name="retry"),
        Route("/jobs/{job_id:path}/cancel", pages.cancel, methods=["POST"], name="cancel"),
        Route("/jobs/{job_id:path}", pages.job, name="job"),
        Route("/dead", pages.dead, name="dead"),
        Route("/dead/purge", pages.purge_confirm, name="purge_confirm"),
        Route("/dead/purge", pages.purge, methods=["POST"], name="purge"),
        Route("/workers", pages.workers, name="workers"),
        Route("/storage", pages.storage, name="storage"),
        Route("/storage/verify", pages.verify, methods=["POST"], name="verify"),
        Route("/metrics", metrics, name="metrics"),
        Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
    ]
    web = Starlette(routes=routes, lifespan=lifespan)
    web.state.dashboard = dash
    return web


def app(queue: Any, *, allow_actions: bool = False, poll_seconds: float = 2.0) -> Starlette:
    """An ASGI app showing ``queue`` (an open aurora_log.Queue or PostgresQueue, which stays
    yours to close). Read-only unless ``allow_actions``."""
    return create_app(QueueSource(queue), allow_actions=allow_actions, poll_seconds=poll_seconds)


def directory_app(path: str | os.PathLike, *, allow_actions: bool = False,
                  poll_seconds: float = 2.0, refresh_seconds: float = 2.0) -> Starlette:
    """An ASGI app for the store in ``path``, opened read_only and re-read as it changes
    (what ``aurora-log dashboard DIR`` serves)."""
    source = DirectorySource(path, refresh_seconds=refresh_seconds)
    return create_app(source, allow_actions=allow_actions, poll_seconds=poll_seconds,
                      owns_source=True)


def postgres_app(dsn: str, *, schema: str = "aurora_log", allow_actions: bool = False,
                 poll_seconds: float = 2.0) -> Starlette:
    """An ASGI app for the PostgreSQL queue at ``dsn`` in ``schema`` (what ``aurora-log
    dashboard postgresql://...`` serves); the app opens the queue and closes it on
    shutdown. The schema must be at the current migration (``aurora-log migrate``)."""
    return create_app(PostgresSource(dsn, schema=schema), allow_actions=allow_actions,
                      poll_seconds=poll_seconds, owns_source=True)


def serve(target: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8600,
          allow_actions: bool = False, log_level: str = "warning",
          schema: str = "aurora_log") -> None:
    """Run the dashboard with uvicorn until interrupted, for the store directory ``target``
    or the PostgreSQL queue at the DSN ``target`` (in ``schema``)."""
    import uvicorn
    if isinstance(target, str) and target.startswith(("postgresql://", "postgres://")):
        web = postgres_app(str(target), schema=schema, allow_actions=allow_actions)
    else:
        web = directory_app(target, allow_actions=allow_actions)
    uvicorn.run(web, host=host, port=port, log_level=log_level)
