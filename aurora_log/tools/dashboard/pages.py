"""The page handlers: read the store through the dashboard's reads (readers.StoreReads: the
local engine's or PostgreSQL's, the same methods), render a template (autoescaped Jinja2).

Every page is a base layout around one "live" template; a request carrying the header
``X-Live: 1`` (the page's own polling script) gets only that part, which the script swaps
in, so a page updates without a reload.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from aurora_log import AuroraLogError, InvalidStateError, JobNotFoundError, JobStatus

from . import csrf, readers
from .source import ActionsLockedError
from .state import Dashboard

__all__ = ["Pages"]

TEMPLATES = Path(__file__).with_name("templates")


def _fmt_time(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min"


def _fmt_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["time"] = _fmt_time
    env.filters["secs"] = _fmt_seconds
    env.filters["json"] = _fmt_json
    return env


_HEADERS = {
    # scripts and styles only from this server: an injected <script> would not run even
    # if escaping ever failed
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" on the
    # POSTs, which the CSRF check refuses
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _status_param(text: str | None) -> JobStatus | None:
    if not text:
        return None
    try:
        return JobStatus(text)
    except ValueError:
        raise ValueError(f"unknown status {text!r}") from None


class Pages:
    """The handlers, bound to one Dashboard."""

    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash
        self.env = _environment()

    # ---------------------------------------------------------------- rendering

    def render(self, request: Request, page: str, title: str, status_code: int = 200,
               **context: Any) -> Response:
        self.dash.ensure_started()
        token, new = csrf.token_for(request)
        q = self.dash.queue()
        context.update(request=request, root=request.scope.get("root_path", ""), page=page,
                       title=title, csrf_token=token, csrf_field=csrf.FIELD,
                       allow_actions=self.dash.allow_actions,
                       store_read_only=self.dash.source.read_only, store_path=str(q.path),
                       now=datetime.now(UTC), statuses=[s.value for s in JobStatus])
        live = f"{page}_live.html"
        if request.headers.get("x-live") == "1":
            html = self.env.get_template(live).render(context)
        else:
            html = self.env.get_template("base.html").render(context, live_template=live)
        response = HTMLResponse(html, status_code=status_code, headers=_HEADERS)
        if new:
            csrf.set_cookie(response, request, token)
        return response

    def error(self, request: Request, message: str, status_code: int) -> Response:
        return self.render(request, "error", "Error", status_code=status_code, message=message)

    # ---------------------------------------------------------------- pages

    async def overview(self, request: Request) -> Response:
        stats = self.dash.reads.stats()
        activity = self.dash.fresh_activity()
        peak = max([max(m[1:]) for m in activity.minutes] + [1])
        return self.render(request, "overview", "Overview", stats=stats, activity=activity,
                           peak=peak)

    async def queues(self, request: Request) -> Response:
        return self.render(request, "queues", "Queues", rows=self.dash.reads.queue_rows())

    async def jobs(self, request: Request, *, dead_letter: bool = False) -> Response:
        params = request.query_params
        q = self.dash.queue()
        find = (params.get("id") or "").strip()
        if find:
            try:
                found = q.get(find)
            except (TypeError, ValueError) as exc:       # not a possible job id
                return self.error(request, str(exc), 400)
            if found is None:
                return self.error(request, f"no job with id {find!r} in this store", 404)
            return RedirectResponse(f"{request.scope.get('root_path', '')}/jobs/{find}", 303)
        try:
            status = JobStatus.DEAD_LETTER if dead_letter else _status_param(params.get("status"))
            flt = readers.JobFilter(status, params.get("queue") or None,
                                    params.get("type") or None)
            cursor = params.get("cursor") or None
            limit = int(params.get("limit") or readers.DEFAULT_PAGE)
            if not 1 <= limit <= 500:
                raise ValueError("limit must be between 1 and 500")
            page = self.dash.reads.job_page(flt, cursor, limit)
        except ValueError as exc:
            return self.error(request, str(exc), 400)
        keep = {k: v for k, v in (("status", flt.status.value if flt.status and not dead_letter
                                   else None), ("queue", flt.queue), ("type", flt.job_type),
                                  ("limit", params.get("limit"))) if v}
        next_url = None
        if page.next_cursor is not None:
            next_url = "?" + urlencode({**keep, "cursor": page.next_cursor})
        first_url = "?" + urlencode(keep) if keep else "?"
        name = "dead" if dead_letter else "jobs"
        return self.render(request, name, "Dead letter" if dead_letter else "Jobs", flt=flt,
                           jobs_page=page, next_url=next_url, first_url=first_url,
                           at_start=cursor is None, queues=self.dash.reads.queue_names())

    async def dead(self, request: Request) -> Response:
        return await self.jobs(request, dead_letter=True)

    async def job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            found = self.dash.reads.job_detail(job_id)
        except (TypeError, ValueError) as exc:           # not a possible job id
            return self.error(request, str(exc), 400)
        if found is None:
            return self.error(request, f"no job with id {job_id!r} in this store", 404)
        job, history = found
        return self.render(request, "job", f"Job {job_id}", job=job, history=history)

    async def workers(self, request: Request) -> Response:
        return self.render(request, "workers", "Workers", workers=self.dash.reads.workers())

    async def storage(self, request: Request) -> Response:
        return self.render(request, "storage", "Storage",
                           view=self.dash.reads.storage(), run=self.dash.verify_run)

    async def purge_confirm(self, request: Request) -> Response:
        self.dash.reads.refresh(force=True)            # the number asked about: exact
        count = self.dash.reads.stats()["dead_letter"]
        return self.render(request, "purge", "Purge dead letter", count=count)

    # ---------------------------------------------------------------- actions (POST)

    async def _guard(self, request: Request, *, needs_actions: bool = True) -> Response | None:
        """None if the POST may go on, else the refusal to send."""
        if needs_actions and not self.dash.allow_actions:
            return self.error(request, "this dashboard is read-only: start it with "
                              "--allow-actions (or allow_actions=True) to change jobs", 403)
        try:
            await csrf.check(request)
        except csrf.CsrfError as exc:
            return self.error(request, str(exc), 403)
        return None

    def _done(self, request: Request, where: str) -> Response:
        return RedirectResponse(f"{request.scope.get('root_path', '')}{where}", status_code=303)

    def _act(self, request: Request, action, where: str) -> Response:
        try:
            self.dash.source.run_action(action)
        except ActionsLockedError as exc:
            return self.error(request, str(exc), 409)
        except JobNotFoundError as exc:
            return self.error(request, str(exc), 404)
        except InvalidStateError as exc:
            return self.error(request, str(exc), 409)
        except AuroraLogError as exc:
            return self.error(request, f"{type(exc).__name__}: {exc}", 500)
        self.dash.reads.refresh(force=True)
        self.dash.reads.catch_up()
        return self._done(request, where)

    async def retry(self, request: Request) -> Response:
        refused = await self._guard(request)
        if refused is not None:
            return refused
        job_id = request.path_params["job_id"]
        return self._act(request, lambda q: q.retry_dead(job_id), f"/jobs/{job_id}")

    async def cancel(self, request: Request) -> Response:
        refused = await self._guard(request)
        if refused is not None:
            return refused
        job_id = request.path_params["job_id"]
        return self._act(request, lambda q: q.cancel(job_id), f"/jobs/{job_id}")

    async def purge(self, request: Request) -> Response:
        refused = await self._guard(request)
        if refused is not None:
            return refused
        form = await request.form()
        if form.get("confirm") != "yes":
            return self.error(request, "purging needs the confirmation (confirm=yes)", 400)
        return self._act(request, lambda q: q.purge(status=JobStatus.DEAD_LETTER), "/dead")

    async def verify(self, request: Request) -> Response:
        # verify reads only: allowed on a read-only dashboard, but still a POST with a token
        refused = await self._guard(request, needs_actions=False)
        if refused is not None:
            return refused
        if not self.dash.reads.can_verify:
            return self.error(request, "this store has no verify run (PostgreSQL checks its "
                              "own pages)", 404)
        self.dash.start_verify()
        return self._done(request, "/storage")
