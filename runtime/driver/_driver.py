"""`run_app`: validate a run's input, return a completed run's output, or start a driver session.

The run, as data flows through it (DESIGN.md "The run"): validate the input before anything is
written; take the run's lease; load the journal in one batched read; execute run() with the
orchestrator installed; run on_complete(); write the final status once; release the lease.
The session (claim to final record) is `_session.DriverSession`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import msgpack
import ray
from pydantic import ValidationError

from application_sdk._appcontext import AppContext
from application_sdk.app import App, EntrypointSpec
from application_sdk.contracts import Input, Output
from storage import RunRecord, RunStatus, RunStore, Store, open_store

from .._errors import InputValidationError, UsageError
from .._ray import ensure_ray
from .._secrets import SECRETS_VAR
from ._keys import KEY_SCHEME, check_same_run, input_digest
from ._session import Continued, DriverSession, app_path_of, recorded_output

__all__ = ["app_path_of", "check_same_run", "input_digest", "new_run_id", "run_app",
           "run_app_async", "validate_input"]

log = logging.getLogger("connector_runtime")


def validate_input(ep: EntrypointSpec, value: Any) -> Input:
    """The run's input as `ep.input_type`; InputValidationError names every bad field."""
    if isinstance(value, ep.input_type):
        return value
    if isinstance(value, Input):
        value = value.model_dump(mode="json")
    if not isinstance(value, dict):
        raise InputValidationError(
            f"input of {ep.name} must be a JSON object matching {ep.input_type.__qualname__}, "
            f"got {type(value).__name__}"
        )
    try:
        return ep.input_type.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"field {'.'.join(str(p) for p in e['loc']) or '(root)'!r}: {e['msg']}"
            for e in exc.errors()
        )
        raise InputValidationError(
            f"invalid input for {ep.input_type.__qualname__}: {problems}"
        ) from None


def new_run_id(app_cls: type[App]) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{app_cls.name.lower()}-{stamp}-{os.urandom(3).hex()}"


async def run_app_async(
    app_cls: type[App],
    input: Input | dict[str, Any],
    *,
    run_id: str | None = None,
    store: str | Store | None = None,
    entrypoint: str | None = None,
    store_options: dict[str, Any] | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    context: AppContext | None = None,
    secrets_dir: str | None = None,
) -> Output:
    """Run (or resume, or return the recorded output of) one run of `app_cls`.

    `context`: an AppContext whose workflow id and correlation id a new run keeps (and whose
    run id names it when `run_id` is not given). `secrets_dir`: the folder `get_secret` reads
    (default $CONNECTOR_RUNTIME_SECRETS_DIR). A run that continue_with()s is followed to the
    end of its chain: the output returned is the last run's.
    """
    ep = app_cls.entrypoint_spec(entrypoint)
    inp = validate_input(ep, input)
    _check_input_size(app_cls, ep, inp)  # before anything is written: the record holds it
    origin = _origin(app_cls, context)
    st = store if isinstance(store, Store) else open_store(store, store_options)
    runs = RunStore(st, app_cls.name, run_id or (context.run_id if context else "")
                    or new_run_id(app_cls))
    existing = await asyncio.to_thread(runs.read_run)
    check_same_run(existing, ep, inp)
    runs, existing = await asyncio.to_thread(_chain_end, runs, existing)
    secrets = secrets_dir or os.environ.get(SECRETS_VAR) or None
    while True:
        if existing is not None:
            inp = validate_input(ep, existing.input) if existing.continued_from else inp
            if existing.status is RunStatus.COMPLETED:
                return recorded_output(ep, existing)
        ensure_ray()
        _refuse_local_store_on_a_cluster(st)
        scheme = existing.key_scheme if existing is not None else KEY_SCHEME
        session = DriverSession(app_cls, ep, inp, input_digest(inp, scheme), scheme, runs,
                                on_progress, origin=origin, secrets_dir=secrets,
                                fresh=existing is None)
        try:
            return await session.execute(functools.partial(check_same_run, ep=ep, inp=inp))
        except Continued as cont:
            runs = RunStore(st, app_cls.name, cont.run_id)
            existing = await asyncio.to_thread(runs.read_run)


def _origin(app_cls: type[App], context: AppContext | None) -> dict[str, Any]:
    """What a new run takes from a given AppContext (its workflow and correlation ids)."""
    if context is None:
        return {}
    if not isinstance(context, AppContext):
        raise UsageError(f"context= takes an application_sdk.app.AppContext, got "
                         f"{type(context).__qualname__}")
    if context.app_name and context.app_name != app_cls.name:
        raise UsageError(
            f"context= names app {context.app_name!r}, but the app run is {app_cls.name!r}: "
            f"build it with AppContext(app_name={app_cls.__qualname__}._app_name, ...)")
    return {"workflow_id": context.workflow_id or None,
            "correlation_id": context.correlation_id or None}


def _chain_end(runs: RunStore, record: RunRecord | None) -> tuple[RunStore, RunRecord | None]:
    """The last run of a continue_with chain that starts at `runs` (itself when it has not
    continued)."""
    seen = {runs.run_id}
    while record is not None and record.status is RunStatus.CONTINUED and record.continued_as:
        nxt = RunStore(runs.store, runs.app, record.continued_as)
        found = nxt.read_run()
        if found is None or nxt.run_id in seen:
            raise UsageError(f"run {record.run_id} continued as {record.continued_as}, whose "
                             "record is missing or loops back: the chain is broken")
        seen.add(nxt.run_id)
        runs, record = nxt, found
    return runs, record


def _check_input_size(app_cls: type[App], ep: EntrypointSpec, inp: Input) -> None:
    """The run's input, serialized as its run record keeps it, within the app's payload
    limit; InputValidationError (nothing written) otherwise."""
    size = len(msgpack.packb(inp.model_dump(mode="json"), use_bin_type=True))
    limit = app_cls.payload_limit_bytes
    if size > limit:
        raise InputValidationError(
            f"input of {ep.name} ({ep.input_type.__qualname__}) is {size / 2**20:.1f} MiB "
            f"serialized, over the {limit / 2**20:.1f} MiB payload limit of "
            f"{app_cls.__qualname__}: pass large data by reference (a FileReference, or a "
            "path or URL read inside a task)")


def _refuse_local_store_on_a_cluster(store: Store) -> None:
    if store.protocol != "file" or os.environ.get("CONNECTOR_RUNTIME_ALLOW_LOCAL_STORE") == "1":
        return
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1:
        raise UsageError(
            f"store {store.url} is a local folder, but the Ray cluster has {len(nodes)} nodes: "
            "tasks on other nodes could not read or write it. Use shared storage, e.g. "
            "--store s3://bucket/prefix (or set CONNECTOR_RUNTIME_ALLOW_LOCAL_STORE=1 when "
            "every node shares this filesystem)"
        )


def run_app(
    app_cls: type[App],
    input: Input | dict[str, Any],
    *,
    run_id: str | None = None,
    store: str | Store | None = None,
    entrypoint: str | None = None,
    store_options: dict[str, Any] | None = None,
    context: AppContext | None = None,
    secrets_dir: str | None = None,
) -> Output:
    """Synchronous `run_app_async`."""
    return asyncio.run(
        run_app_async(app_cls, input, run_id=run_id, store=store, entrypoint=entrypoint,
                      store_options=store_options, context=context, secrets_dir=secrets_dir)
    )
