"""The dashboard: ``GET /`` and its two static files, a page with no build step.

The page (``static/dashboard.html``, ``.css``, ``.js``; vanilla JavaScript, nothing from a
CDN) asks once for an API key and keeps it in the browser's local storage. It lists jobs
a page at a time with ``GET /api/v1/jobs`` (``limit``/``offset``, the status filter too),
applies the ``job`` events of ``GET /api/v1/stream`` as they come (the job count with
them), and shows a job's history from ``GET /api/v1/jobs/{id}/events`` as a chart (inline
SVG built by the script) and as a list grouped by stage. Below 900 px wide each job is a
card. The routes here need no key (the files hold no data) and stay out of the OpenAPI
schema.

A strict Content-Security-Policy allows only this server's own scripts, styles and API:
job names and messages are inserted as text, and the policy is a second line of defence
should that ever slip. No inline styles either: the script sets SVG attributes and CSSOM
properties (a bar's width), never a ``style`` attribute.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from typing import Final

from fastapi import APIRouter, HTTPException, Request, Response

__all__ = ["router"]

STATIC: Final = Path(__file__).with_name("static")
ASSETS: Final = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
}
HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the stream URL carries the key as ?access_token=
    "Cache-Control": "no-cache",  # revalidate (cheap, by ETag) so an upgrade shows at once
}

router = APIRouter(include_in_schema=False)


@cache
def _asset(name: str) -> tuple[bytes, str]:
    """A packaged file's bytes and its ETag."""
    content = (STATIC / name).read_bytes()
    return content, f'"{hashlib.sha256(content).hexdigest()[:32]}"'


def _serve(request: Request, name: str, media_type: str) -> Response:
    content, etag = _asset(name)
    headers = {**HEADERS, "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(content, media_type=media_type, headers=headers)


@router.get("/")
def dashboard(request: Request) -> Response:
    """The dashboard page."""
    return _serve(request, "dashboard.html", "text/html; charset=utf-8")


@router.get("/static/{name}")
def static(name: str, request: Request) -> Response:
    """The page's stylesheet and script; nothing else is served from here."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, f"no static file {name!r}; the dashboard ships only "
                                 f"{', '.join(ASSETS)}")
    return _serve(request, name, media_type)
