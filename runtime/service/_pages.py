"""The run pages: `GET /` (the runs), `GET /runs/{run_id}` (one run), and what they need.

Server-rendered with Jinja2 (`templates/`, autoescaped) from what `_runpage` reads in the
store; a little script of our own (`static/run.js`) adds hover details and live updates. No
CDN and no external asset, so the pages work on a cluster with no internet; every page answers
with a Content-Security-Policy that allows this origin's script and styles only.

Routes (not in the OpenAPI document: they are for people):

- `GET /?state=&app=`: the runs in the store, newest first;
- `GET /runs/{run_id}?app=`: summary, input and output, timeline, tasks, errors with
  tracebacks, heartbeat details, files;
- `GET /runs/{run_id}/live.json?since=N&origin=T`: attempts after the N the page drew, placed
  against its origin T (what the page polls while the run is live);
- `GET /runs/{run_id}/trace.json`: the Chrome/Perfetto trace (`connector-runtime trace`);
- `GET /login`, `POST /login`: the token once, then a page cookie (`_security`);
- `GET /static/{name}`: the script, the styles, the icon.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from storage import CorruptRecordError, StoreError

from ..views import load_timeline, trace_json
from ._config import ServiceConfig
from ._metrics import note_store_error
from ._runpage import find_run, live_update, run_list, run_page
from ._security import PAGE_COOKIE, page_session

__all__ = ["pages_router"]

log = logging.getLogger("connector_runtime.service")

HERE = Path(__file__).resolve().parent
STATIC = {"run.js": "text/javascript", "pages.css": "text/css", "icon.svg": "image/svg+xml"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
COOKIE_MAX_AGE = 12 * 3600
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
            "X-Frame-Options": "DENY"}


def _environment() -> Environment:
    return Environment(loader=FileSystemLoader(str(HERE / "templates")),
                       autoescape=select_autoescape(["html"]), trim_blocks=True,
                       lstrip_blocks=True)


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a path of this service only (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


class _Pages:
    """What every page route needs: the templates, the store, and the answers to problems."""

    def __init__(self, cfg: ServiceConfig) -> None:
        self.env = _environment()
        self.store = cfg.store
        self.common = {"service_app": cfg.app_cls.name, "store_url": cfg.store.url}

    def html(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        text = self.env.get_template(template).render(**self.common, **context)
        return HTMLResponse(text, status_code=status, headers=_HEADERS)

    def problem(self, status: int, message: str) -> HTMLResponse:
        return self.html("problem.html", status, message=message)

    async def read(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` in a thread; a store error becomes the page that explains it."""
        try:
            return await asyncio.to_thread(fn, *args)
        except StoreError as exc:
            text = str(exc)
            if text.startswith("invalid"):
                return self.problem(422, text)
            note_store_error("page")
            log.error("page: reading the store failed: %s", text)
            if isinstance(exc, CorruptRecordError):
                return self.problem(500, f"the store holds a corrupt record: {text}")
            return self.problem(503, f"the store did not answer: {text}")

    async def record_of(self, run_id: str, app: str | None) -> Any:
        found = await self.read(find_run, self.store, run_id, app)
        if found is None:
            return self.problem(404, f"no run {run_id!r}{f' of {app}' if app else ''} in "
                                f"{self.store.url} (or several apps have one: add ?app=)")
        return found


def pages_router(cfg: ServiceConfig) -> APIRouter:
    pages = _Pages(cfg)
    router = APIRouter(include_in_schema=False)
    static = {name: (HERE / "static" / name).read_bytes() for name in STATIC}

    @router.get("/")
    async def runs_page(state: str | None = None, app: str | None = None) -> Response:
        listing = await pages.read(run_list, pages.store, state or None, app or None)
        return listing if isinstance(listing, Response) else pages.html("runs.html", **listing)

    @router.get("/static/{name}")
    async def asset(name: str) -> Response:
        if name not in STATIC:
            return Response("not found", status_code=404, media_type="text/plain")
        return Response(static[name], media_type=STATIC[name],
                        headers={"Cache-Control": "max-age=300",
                                 "X-Content-Type-Options": "nosniff"})

    _run_routes(router, pages)
    _login_routes(router, cfg, pages.html)
    return router


def _run_routes(router: APIRouter, pages: _Pages) -> None:
    store = pages.store

    @router.get("/runs/{run_id}")
    async def run_view(run_id: str, app: str | None = None) -> Response:
        record = await pages.record_of(run_id, app)
        if isinstance(record, Response):
            return record
        page = await pages.read(run_page, store, record)
        return page if isinstance(page, Response) else pages.html("run.html", **page)

    @router.get("/runs/{run_id}/live.json")
    async def live(run_id: str, app: str | None = None, since: int = Query(0, ge=0),
                   origin: float = Query(...)) -> Response:
        record = await pages.record_of(run_id, app)
        if isinstance(record, Response):
            return JSONResponse({"error": "no such run"}, status_code=record.status_code)
        update = await pages.read(live_update, store, record, since, origin)
        if isinstance(update, Response):
            return JSONResponse({"error": "the store did not answer"},
                                status_code=update.status_code)
        return JSONResponse(update, headers={"Cache-Control": "no-store"})

    @router.get("/runs/{run_id}/trace.json")
    async def trace(run_id: str, app: str | None = None) -> Response:
        record = await pages.record_of(run_id, app)
        if isinstance(record, Response):
            return record
        tl = await pages.read(load_timeline, store, record)
        if isinstance(tl, Response):
            return tl
        return Response(trace_json(tl, record), media_type="application/json", headers={
            "Content-Disposition": f'attachment; filename="{record.run_id}.trace.json"',
            "Cache-Control": "no-store"})


def _login_routes(router: APIRouter, cfg: ServiceConfig, html: Callable[..., HTMLResponse]) -> None:
    @router.get("/login")
    async def login_form(next: str | None = None) -> Response:
        return html("login.html", token_set=bool(cfg.token), next=_safe_next(next),
                    failed=False)

    @router.post("/login")
    async def login(request: Request) -> Response:
        # a form body, parsed here: FastAPI's Form() would need python-multipart for one field
        fields = parse_qs((await request.body()).decode("utf-8", "replace"))
        given = (fields.get("token") or [""])[0].strip()
        target = _safe_next((fields.get("next") or ["/"])[0])
        if not cfg.token:
            return RedirectResponse(target, status_code=303)
        if not hmac.compare_digest(given.encode(), cfg.token.encode()):
            log.warning("login to the run pages refused: wrong token")
            return html("login.html", 401, token_set=True, next=target, failed=True)
        answer = RedirectResponse(target, status_code=303)
        answer.set_cookie(PAGE_COOKIE, page_session(cfg.token), max_age=COOKIE_MAX_AGE,
                          path="/", httponly=True, samesite="strict",
                          secure=request.url.scheme == "https")
        return answer
