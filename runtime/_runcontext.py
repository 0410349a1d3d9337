"""What every part of a run shares: its identity, its store, where its local files live.

A leaf module: the driver, the dispatcher and the worker all import it, and it imports only
`storage`. Keeping it apart is what lets `worker/` (attempt wrapper, files, cleanup) and
`dispatch/` (executor, heartbeats) depend on the run's context without depending on each other.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any

import msgpack

from storage import Store, open_store

__all__ = ["NAMESPACE", "RunContext", "safe_component", "scratch_dir", "scratch_root"]

NAMESPACE = "connector_runtime"
"""Ray namespace of the runtime's named actors (the heartbeat monitor)."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def safe_component(text: str) -> str:
    """`text` as one path component: anything but letters, digits, `_.-` becomes `_`."""
    return _UNSAFE.sub("_", text)


@dataclass(frozen=True)
class RunContext:
    """What every attempt of a run shares."""

    run_id: str
    app_name: str
    store_url: str
    """Where the run's store is (never carries credentials)."""
    store_options: dict[str, Any] | None = None
    """fsspec options of the store (endpoint, profile); travel in memory only, never stored."""

    def packed(self) -> bytes | None:
        """The context as msgpack, packed once per run into every attempt's blob; None when
        the store options hold something msgpack cannot carry (then the object travels as a
        second, pickled argument)."""
        try:
            return msgpack.packb(
                [self.run_id, self.app_name, self.store_url, self.store_options],
                use_bin_type=True)
        except (TypeError, ValueError):
            return None

    @classmethod
    def unpacked(cls, data: bytes) -> RunContext:
        context = _contexts.get(data)
        if context is None:
            context = _contexts[data] = cls(*msgpack.unpackb(data, raw=False))
        return context

    def store(self) -> Store:
        key = (self.store_url, repr(sorted((self.store_options or {}).items())))
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = open_store(self.store_url, self.store_options)
        return store

    @property
    def scratch(self) -> str:
        """This node's folder of the run: attempts' scratch dirs and the object cache."""
        return os.path.join(scratch_root(), self.app_name, self.run_id)


_stores: dict[tuple[str, str], Store] = {}
_contexts: dict[bytes, RunContext] = {}


def scratch_root() -> str:
    """The folder under which every attempt's scratch directory lives on this node."""
    return os.environ.get("CONNECTOR_RUNTIME_SCRATCH") or os.path.join(
        tempfile.gettempdir(), "connector-runtime", "scratch"
    )


def scratch_dir(app_name: str, run_id: str, call_key: str, attempt: int) -> str:
    """The scratch directory of one attempt."""
    return os.path.join(scratch_root(), app_name, run_id, safe_component(call_key),
                        f"attempt-{attempt}")
