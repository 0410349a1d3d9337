"""The rules of durable app state (`AppContext.save_state` / `load_state`), shared by every
engine that keeps it: what a key may be, what a value may be, how big.

State is small JSON per app - a watermark, a cursor, a schema version - kept across runs. A key
names one object in the store, so it is one plain name (letters, digits, `.`, `_`, `-`), never a
path; a value is a JSON object of at most `MAX_STATE_BYTES` encoded. Bigger data goes to a file
(a PERSISTENT `FileReference`) whose reference the state may keep.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import StateError

__all__ = ["MAX_STATE_BYTES", "check_state"]

MAX_STATE_BYTES = 256 * 1024
"""Largest state value, JSON-encoded."""

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def check_state(key: str, value: Any = None, *, saving: bool = False) -> bytes:
    """Refuse a bad key (and, when saving, a bad value) with StateError; the value as JSON."""
    if not isinstance(key, str) or not _KEY.match(key) or ".." in key:
        raise StateError(
            f"state key {key!r}: use one plain name of letters, digits, '.', '_' and '-' (at "
            "most 128 characters, not starting with a symbol), e.g. 'watermark'")
    if not saving:
        return b""
    if not isinstance(value, dict):
        raise StateError(f"state {key!r}: the value must be a dict (a JSON object), got "
                         f"{type(value).__name__}")
    try:
        data = json.dumps(value, sort_keys=True, separators=(",", ":"),
                          allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise StateError(f"state {key!r}: the value is not plain JSON ({exc}); convert "
                         "datetimes and other objects to strings or numbers first") from None
    if len(data) > MAX_STATE_BYTES:
        raise StateError(
            f"state {key!r} is {len(data) / 1024:.0f} KiB, over the {MAX_STATE_BYTES // 1024} "
            "KiB limit of app state: keep large data in a file (a PERSISTENT FileReference) "
            "and save its reference")
    return data
