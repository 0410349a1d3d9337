"""The FastAPI application: routes, probes, metrics, the envelope on every answer, the guards.

Errors are answered in the envelope too: an unknown route 404, a bad query parameter 422
naming it (never echoing the value: it could be a credential), anything unexpected 500 with a
message and no traceback (the traceback goes to the service's log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from importlib import metadata
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from ._config import ServiceConfig
from ._invoke import HandlerRunner
from ._launcher import make_launcher
from ._metrics import note_store_error, registry_for
from ._pages import pages_router
from ._routes import envelope, handler_router, runs_router
from ._runs import Answer, RunService
from ._security import BearerTokenGuard, BodyLimit

__all__ = ["create_app"]

log = logging.getLogger("connector_runtime.service")

_UPKEEP_EVERY = 1.0
_PROBE_TIMEOUT = 5.0


def _version() -> str:
    try:
        return metadata.version("connector-runtime")
    except metadata.PackageNotFoundError:
        return "0"


def create_app(cfg: ServiceConfig) -> FastAPI:
    """The service for `cfg`; it keeps no state of its own (the store has it all)."""
    service = RunService(cfg, make_launcher(cfg))
    runner = HandlerRunner(cfg.handler_cls)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(_upkeep(service))]
        if cfg.resume_orphans:
            tasks.append(asyncio.create_task(_resume_orphans(service)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            runner.close()

    app = FastAPI(title=f"connector-runtime: {cfg.app_cls.name}", version=_version(),
                  lifespan=lifespan)
    app.state.runs = service
    schemas: dict[str, Any] = {}
    app.include_router(handler_router(runner, schemas))
    app.include_router(runs_router(service, schemas))
    app.include_router(pages_router(cfg))
    _document_bodies(app, schemas)
    _add_probes(app, cfg, service)
    _add_error_answers(app)
    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)
    if cfg.token:
        app.add_middleware(BearerTokenGuard, token=cfg.token)  # outermost: before the body
    return app


def _document_bodies(app: FastAPI, schemas: dict[str, Any]) -> None:
    """Bodies are read by the routes themselves (see _routes): their schemas are added to the
    OpenAPI document's components here, so the OpenAPI page still shows them."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = plain()
            document.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_probes(app: FastAPI, cfg: ServiceConfig, service: RunService) -> None:
    registry = registry_for(cfg.store, cfg.app_cls.name)

    @app.get("/health", tags=["probes"])
    async def health() -> JSONResponse:
        """The process answers."""
        return envelope(Answer(200, True, "ok", {"status": "ok"}))

    @app.get("/ready", tags=["probes"])
    async def ready() -> JSONResponse:
        """The store and Ray are reachable."""
        store, ray = await asyncio.gather(_probe_store(service), _probe(service.launcher.ready))
        ok = store["ok"] and ray["ok"]
        return envelope(Answer(200 if ok else 503, ok, "ready" if ok else "not ready",
                               {"store": store, "ray": ray, "launcher": service.launcher.kind}))

    @app.get("/metrics", tags=["probes"])
    async def metrics() -> Response:
        """Prometheus: runs by state, attempts by outcome, attempt durations."""
        try:
            text = await asyncio.to_thread(generate_latest, registry)
        except Exception as exc:
            note_store_error("metrics")
            log.error("metrics: reading the store failed: %s: %s", type(exc).__name__, exc)
            return envelope(Answer(503, False, f"the store did not answer: "
                                   f"{type(exc).__name__}"))
        return Response(text, media_type=CONTENT_TYPE_LATEST)


async def _probe(fn) -> dict:
    try:
        result = await asyncio.wait_for(asyncio.to_thread(fn), _PROBE_TIMEOUT)
    except Exception as exc:
        result = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
    if not result["ok"]:
        log.warning("ready: %s", result["detail"])
    return {"ok": result["ok"]}  # details go to the log: /ready answers without a token


async def _probe_store(service: RunService) -> dict:
    def check() -> dict:
        service.store.list_dirs("runs")
        return {"ok": True, "detail": "the store answers"}

    return await _probe(check)


def _add_error_answers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path} (the routes: /docs)"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return JSONResponse({"success": False, "message": message, "data": None},
                            status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"field {'.'.join(str(p) for p in err['loc'] if p != 'body') or '(body)'!r}: "
            f"{err['msg']}" for err in exc.errors())
        return JSONResponse({"success": False, "message": f"invalid request: {problems}",
                             "data": None}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"success": False, "message": f"internal error "
                             f"({type(exc).__name__}); the service's log has the details",
                             "data": None}, status_code=500)


async def _upkeep(service: RunService) -> None:
    while True:
        await asyncio.sleep(_UPKEEP_EVERY)
        try:
            await asyncio.to_thread(service.forget_finished)
        except Exception as exc:  # a Ray job status that did not answer: next time
            log.warning("upkeep: %s: %s", type(exc).__name__, exc)


async def _resume_orphans(service: RunService) -> None:
    try:
        resumed = await service.resume_orphans()
    except Exception as exc:
        log.error("--resume-orphans failed: %s: %s", type(exc).__name__, exc)
        return
    log.warning("--resume-orphans: %d run(s) resumed%s", len(resumed),
                f": {', '.join(resumed)}" if resumed else "")
