"""Durable app state: small JSON objects per app, kept across runs (`AppContext.save_state`).

```
state/{app}/{key}.msgpack      one value, checksummed msgpack like every record
```

Written with the store's atomic `write` (temp file + fsync + rename on files, one PutObject on
S3): a reader sees the old value or the new one, never a torn one. Two tasks saving the same key
at once: the last write wins. The key and value rules (`application_sdk._state.check_state`)
are checked before anything is written.
"""

from __future__ import annotations

from typing import Any

from . import _codec
from ._runs import check_name
from ._store import Store

__all__ = ["load_app_state", "save_app_state", "state_key"]


def state_key(app: str, key: str) -> str:
    return f"state/{check_name('app name', app)}/{key}.msgpack"


def save_app_state(store: Store, app: str, key: str, value: dict[str, Any]) -> None:
    store.write(state_key(app, key), _codec.encode(value))


def load_app_state(store: Store, app: str, key: str) -> dict[str, Any] | None:
    where = state_key(app, key)
    data = store.read(where)
    return None if data is None else _codec.decode(data, where)
