"""What every part of a run shares: its identity, its store, where its local files live.

A leaf module: the driver, the dispatcher and the worker all import it, and it imports only
`storage`. Keeping it apart is what lets `worker/` (attempt wrapper, files, cleanup) and
`dispatch/` (executor, heartbeats) depend on the run's context without depending on each other.

Scratch. Every node keeps a run's local files under `{scratch root}/{app}/{run_id}`: attempts'
scratch dirs and the object cache. The root is a predictable path (the temp dir's
`connector-runtime/scratch` unless $CONNECTOR_RUNTIME_SCRATCH says otherwise), so another local
user could create it first and plant files there. `ensure_scratch_root()` - called before every
attempt - creates it 0700 (missing parents too) and refuses it, with `PathRefusedError` naming
the folder, its owner and mode and the fix, when it or a folder above it is owned by another
user or writable by others (`storage.ensure_private_dir`). The check is done once per process;
after it, one lstat per attempt.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any

import msgpack

from storage import Store, ensure_private_dir, open_store

__all__ = [
    "NAMESPACE",
    "SCRATCH_VAR",
    "RunContext",
    "ensure_scratch_root",
    "safe_component",
    "scratch_dir",
    "scratch_root",
]

SCRATCH_VAR = "CONNECTOR_RUNTIME_SCRATCH"

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
    identity: dict[str, Any] | None = None
    """What a task's `self.context` reports beyond run id and app: workflow_id,
    correlation_id, started_at (epoch seconds), app_version; and secrets_dir (the run's secret
    folder, a path, never a secret) and cancel_after (a cancellation request no newer than
    this was honoured already)."""

    def packed(self) -> bytes | None:
        """The context as msgpack, packed once per run into every attempt's blob; None when
        the store options hold something msgpack cannot carry (then the object travels as a
        second, pickled argument)."""
        try:
            return msgpack.packb(
                [self.run_id, self.app_name, self.store_url, self.store_options,
                 self.identity], use_bin_type=True)
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
    return os.environ.get(SCRATCH_VAR) or os.path.join(
        tempfile.gettempdir(), "connector-runtime", "scratch"
    )


def ensure_scratch_root() -> str:
    """The scratch root, created 0700 or checked to be safe from other local users."""
    default = not os.environ.get(SCRATCH_VAR)
    return ensure_private_dir(
        scratch_root(), what="scratch folder", tighten=default,
        fix=f"remove it (it is not this user's), or set {SCRATCH_VAR} in the workers' "
            "environment to a folder of your own with mode 0700",
    )


def scratch_dir(app_name: str, run_id: str, call_key: str, attempt: int) -> str:
    """The scratch directory of one attempt."""
    return os.path.join(scratch_root(), app_name, run_id, safe_component(call_key),
                        f"attempt-{attempt}")
