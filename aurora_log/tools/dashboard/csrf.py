"""CSRF protection for the dashboard's POST actions: a double-submit token.

The first page a browser loads sets a random token in a cookie (HttpOnly, SameSite=Strict)
and every form carries the same token in a hidden field. A POST is accepted only when
both are present and equal (another site can make a browser send the cookie, but cannot
read it to put it in the form) and, when the browser names an Origin, it is this one.
"""

from __future__ import annotations

import hmac
import secrets

from starlette.requests import Request
from starlette.responses import Response

from aurora_log.errors import CsrfError

__all__ = ["COOKIE", "FIELD", "CsrfError", "check", "set_cookie", "token_for"]

COOKIE = "aurora_csrf"
FIELD = "csrf"


def token_for(request: Request) -> tuple[str, bool]:
    """The request's token and whether it is new (then set it with set_cookie)."""
    token = request.cookies.get(COOKIE, "")
    if len(token) == 43 and token.replace("-", "").replace("_", "").isalnum():
        return token, False
    return secrets.token_urlsafe(32), True


def set_cookie(response: Response, request: Request, token: str) -> None:
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict",
                        path=request.scope.get("root_path") or "/")


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    own = f"{request.url.scheme}://{request.url.netloc}"
    return origin == own


async def check(request: Request) -> None:
    """Raise CsrfError unless the POST's form token matches its cookie."""
    cookie = request.cookies.get(COOKIE, "")
    form = await request.form()
    sent = form.get(FIELD)
    if not cookie or not isinstance(sent, str) or not hmac.compare_digest(cookie, sent):
        raise CsrfError("missing or wrong CSRF token: reload the page and try again")
    if not _same_origin(request):
        raise CsrfError("the request came from another origin")
