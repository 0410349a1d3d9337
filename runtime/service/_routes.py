"""The framework's routes under `/workflows/v1`: the handler's three, and the runs'.

Each answers the envelope `{"success", "message", "data"}`. Handler inputs are typed bodies
(their schemas show on the OpenAPI page); a start's body is the entry point's Input, chosen by
`?entrypoint=`, so it is read and validated here with the driver's own `validate_input`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from application_sdk.errors import DefinitionError
from application_sdk.handler import AuthStatus, PreflightStatus
from storage import CorruptRecordError, StoreError

from .._errors import InputValidationError
from ..driver import validate_input
from ._invoke import HandlerFailed, HandlerRunner, HandlerTimeout
from ._metrics import note_store_error
from ._runs import Answer, RunService

__all__ = ["envelope", "handler_router", "runs_router"]

PREFIX = "/workflows/v1"
MAX_WAIT = 300.0


def envelope(answer: Answer) -> JSONResponse:
    data = answer.data.model_dump(mode="json") if isinstance(answer.data, BaseModel) \
        else answer.data
    return JSONResponse({"success": answer.success, "message": answer.message, "data": data},
                        status_code=answer.status_code)


# ---- the handler -----------------------------------------------------------------------------

_ROUTES = {"auth": "test_auth", "check": "preflight_check", "metadata": "fetch_metadata"}


def handler_router(runner: HandlerRunner, schemas: dict[str, Any]) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["handler"])
    for path, method in _ROUTES.items():
        in_t = runner.handler_cls.contracts[method][0]
        router.add_api_route(f"/{path}", _handler_endpoint(runner, method, in_t),
                             methods=["POST"], name=method,
                             summary=f"{runner.handler_cls.__qualname__}.{method}",
                             openapi_extra=_body_doc([in_t], schemas, in_t.__name__))
    return router


def _handler_endpoint(runner: HandlerRunner, method: str, in_t: type[BaseModel]) -> Any:
    async def endpoint(request: Request) -> JSONResponse:
        # Read here rather than as a typed FastAPI body: a body is JSON whatever its
        # Content-Type (curl -d sends a form type), and a validation error must name the
        # field without echoing the value, which may be a credential.
        payload = await _json_object(request)
        if isinstance(payload, Answer):
            return envelope(payload)
        try:
            inp = in_t.model_validate(payload)
        except ValidationError as exc:
            return envelope(Answer(422, False, f"invalid {in_t.__name__}: {_fields(exc)}"))
        try:
            output = await runner.call(method, inp)
        except HandlerTimeout as exc:
            return envelope(Answer(504, False, str(exc)))
        except HandlerFailed as exc:
            return envelope(Answer(500, False, str(exc)))
        return envelope(_handler_answer(method, output, inp))

    endpoint.__name__ = method
    endpoint.__doc__ = getattr(runner.handler_cls, method).__doc__
    return endpoint


def _fields(exc: ValidationError) -> str:
    return "; ".join(f"field {'.'.join(str(p) for p in e['loc']) or '(body)'!r}: {e['msg']}"
                     for e in exc.errors())


def _handler_answer(method: str, output: Any, inp: Any) -> Answer:
    if method == "test_auth":
        if output.status is AuthStatus.SUCCESS:
            return Answer(200, True, output.message or "authenticated", output)
        return Answer(401, False, output.message or f"authentication {output.status.value}",
                      output)
    if method == "preflight_check":
        data = output.model_dump(mode="json")
        if output.status is PreflightStatus.NOT_READY:
            data["failed_checks"] = [c for c in data["checks"] if not c["passed"]]
            return Answer(200, False, output.message or "not ready", data)
        return Answer(200, True, output.message or output.status.value.lower(), data)
    found = len(output.objects)
    if found > inp.max_objects:
        output = output.model_copy(update={"objects": output.objects[:inp.max_objects]})
        return Answer(200, True, f"{inp.max_objects} of {found} object(s) (max_objects)",
                      output)
    return Answer(200, True, f"{found} object(s)", output)


# ---- runs ------------------------------------------------------------------------------------


def runs_router(service: RunService, schemas: dict[str, Any]) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["runs"])
    app_cls = service.app
    eps = app_cls.entrypoints()
    names = ", ".join(f"{n} ({ep.input_type.__qualname__})" for n, ep in sorted(eps.items()))
    start_doc = _body_doc([ep.input_type for ep in eps.values()], schemas,
                          f"The Input of the entry point (?entrypoint=): {names}")

    @router.post("/start", openapi_extra=start_doc)
    async def start(request: Request, entrypoint: str | None = None,
                    run_id: str | None = None) -> JSONResponse:
        """Start (or resume, or report) a run; the body is the entry point's Input."""
        try:
            ep = app_cls.entrypoint_spec(entrypoint)
        except DefinitionError as exc:
            return envelope(Answer(422, False, f"entrypoint: {exc}"))
        payload = await _json_object(request)
        if isinstance(payload, Answer):
            return envelope(payload)
        try:
            inp = validate_input(ep, payload)
        except InputValidationError as exc:
            return envelope(Answer(422, False, str(exc)))
        try:
            return envelope(await service.start(ep, inp, run_id))
        except StoreError as exc:
            return envelope(_store_error(exc))

    @router.get("/status/{run_id}")
    async def status(run_id: str) -> JSONResponse:
        """What `connector-runtime status RUN_ID --json` shows."""
        return envelope(await _read(service.status, run_id))

    @router.post("/stop/{run_id}")
    async def stop(run_id: str, reason: str = "stopped over HTTP") -> JSONResponse:
        """Cancel the run, as `connector-runtime cancel` does."""
        return envelope(await _read(service.stop, run_id, reason[:500]))

    @router.get("/result/{run_id}")
    async def result(run_id: str, wait: float = Query(0, ge=0, le=MAX_WAIT)) -> JSONResponse:
        """The Output once COMPLETED (waiting up to `wait` seconds); 202 while running."""
        try:
            return envelope(await service.result(run_id, wait))
        except StoreError as exc:
            return envelope(_store_error(exc))

    @router.get("/runs")
    async def runs(limit: int = Query(100, ge=1, le=10_000),
                   state: str | None = None) -> JSONResponse:
        """The app's runs, newest first."""
        return envelope(await _read(service.runs, limit, state))

    return router


async def _read(fn: Any, *args: Any) -> Answer:
    try:
        return await asyncio.to_thread(fn, *args)
    except StoreError as exc:
        return _store_error(exc)


def _store_error(exc: StoreError) -> Answer:
    text = str(exc)
    if text.startswith("invalid run id"):
        return Answer(422, False, f"run_id: {text}")
    note_store_error("api")
    if isinstance(exc, CorruptRecordError):
        return Answer(500, False, f"the store holds a corrupt record: {text}")
    return Answer(503, False, f"the store did not answer: {text}")


async def _json_object(request: Request) -> dict[str, Any] | Answer:
    body = await request.body()
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(
            exc, json.JSONDecodeError) else ""
        return Answer(422, False, f"body: malformed JSON{where}")
    if not isinstance(value, dict):
        return Answer(422, False, f"body: the Input must be a JSON object, got "
                      f"{type(value).__name__}")
    return value


def _body_doc(types: list[type[BaseModel]], schemas: dict[str, Any],
              description: str) -> dict[str, Any]:
    """An OpenAPI request body of one of `types`; their definitions go into `schemas` (the
    app adds them to the document's components)."""
    refs = []
    for tp in types:
        schema = tp.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[tp.__name__] = schema
        refs.append({"$ref": f"#/components/schemas/{tp.__name__}"})
    body = refs[0] if len(refs) == 1 else {"oneOf": refs} if refs else {"type": "object"}
    return {"requestBody": {"required": False, "description": description,
                            "content": {"application/json": {"schema": body}}}}
