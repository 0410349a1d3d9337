"""Call keys: the identity of each task call in a run, stable across replays.

key = task name + digest of the canonical input + occurrence number of that (name, digest) pair
in this run. It does not depend on the order tasks complete in, so `asyncio.gather` replays
correctly: coroutines passed to gather start in argument order.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any

from pydantic import BaseModel

__all__ = ["CallKeys", "canonical_json", "digest"]


def canonical_json(value: BaseModel | dict[str, Any]) -> bytes:
    data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
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
