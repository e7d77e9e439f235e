"""``aurora_log.dashboard``: the web dashboard (its code lives in aurora_log/tools/dashboard).

Importing this module imports Starlette, Jinja2 and prometheus_client (the ``dashboard``
extra); ``import aurora_log`` alone never does.
"""

from .tools.dashboard import app, create_app, directory_app, postgres_app, serve

__all__ = ["app", "create_app", "directory_app", "postgres_app", "serve"]
