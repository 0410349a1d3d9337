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

__all__ = ["CallKeys", "canonical_json", "digest"]


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
