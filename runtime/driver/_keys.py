"""Call keys: the identity of each task call in a run, stable across replays.

key = task name + digest of the canonical input + occurrence number of that (name, digest) pair
in this run. It does not depend on the order tasks complete in, so `asyncio.gather` replays
correctly: coroutines passed to gather start in argument order.

The canonical input leaves out every field whose value is its default (key scheme 2): a field
added to an Input later, with a default, changes neither a recorded call's identity nor the
run's input digest; only a value that differs from the default does. Runs recorded before
(scheme 1, every field digested) keep their scheme, so upgrading does not re-run their tasks.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any

from pydantic import BaseModel

from application_sdk.app import EntrypointSpec
from application_sdk.contracts import Input
from storage import RunRecord

from .._errors import RunConflictError

__all__ = ["CallKeys", "canonical_json", "check_same_run", "digest", "input_digest"]


KEY_SCHEME = 2
"""The scheme new runs are recorded with (see the module docstring)."""


def identity_data(value: BaseModel, scheme: int = KEY_SCHEME) -> dict[str, Any]:
    """What a model's identity digests: its non-default fields (scheme 2) or all (scheme 1)."""
    return value.model_dump(mode="json", exclude_defaults=scheme >= 2)


def canonical_json(value: BaseModel | dict[str, Any], scheme: int = KEY_SCHEME) -> bytes:
    data = identity_data(value, scheme) if isinstance(value, BaseModel) else value
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=10).hexdigest()


class CallKeys:
    """Hands out keys in call order; one instance per execution of run()."""

    def __init__(self) -> None:
        self._seen: Counter[str] = Counter()

    def next(self, prefix: str, name: str, input_digest: str) -> str:
        base = f"{prefix}{name}:{input_digest}"  # one string per distinct call, not a tuple
        n = self._seen[base]
        self._seen[base] = n + 1
        return f"{base}:{n}"


def input_digest(inp: Input, scheme: int = KEY_SCHEME) -> str:
    """The run input's identity: what `--run-id` compares when a run is started again."""
    return digest(canonical_json(inp, scheme))


def check_same_run(existing: RunRecord | None, ep: EntrypointSpec, inp: Input) -> None:
    """A run id names one run: RunConflictError if `existing` has another input or entry
    point (digested the way that run was recorded, so an upgrade does not refuse it)."""
    if existing is None:
        return
    if existing.entrypoint != ep.name:
        what = f"entry point {existing.entrypoint!r} (not {ep.name!r})"
    elif existing.input_digest != input_digest(inp, existing.key_scheme):
        what = "a different input"
    else:
        return
    raise RunConflictError(f"run {existing.run_id} exists with {what}: a run id names one "
                           "run; choose a new run id to start another")
