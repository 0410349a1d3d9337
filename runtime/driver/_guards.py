"""Determinism guards: inside run() (or an entry point), calls that would not replay the same
way raise `NondeterminismError` naming the call and pointing at a task.

Design. The guards are active only in the context of the coroutine running run(): a contextvar
(`ACTIVE`) is set in that task's context, and copied into the tasks it gathers. The runtime's
own code turns it off while it works (`runtime_code()`), so dispatching, journaling and the
recorded helpers (`now()`, `uuid4()`, `random()`) are unaffected, and so is every other
coroutine and thread of the driver.

Two mechanisms, measured against a `sys.setprofile` hook (rejected: a profile function runs on
every call of every Python function in the driver's thread, costing far more than the 5%
budget of the 300-sequential-task benchmark, since dispatch itself is Python):
- process-wide wrappers, installed once, on module attributes and Python classes: `time.time`,
  `uuid.uuid1/uuid4`, `random.*`, `os.urandom`, `open`, `socket.socket`, `subprocess.Popen`,
  `os.system`, `threading.Thread.start`, `__import__` and `asyncio.sleep`. Each costs one
  contextvar read when called, nothing otherwise.
- the app module's globals: names bound at import to the originals (`from datetime import
  datetime`, `from uuid import uuid4`, `from time import time`) are rebound to the guarded
  versions; `datetime.datetime` is a C type whose `now` cannot be patched, so the name gets a
  subclass whose `now`/`utcnow`/`today` are guarded (and isinstance still accepts real
  datetimes).

`asyncio.sleep(d)` in run() is a durable timer: the wake-up time is recorded on first
execution, and a replay sleeps only what is left of it (nothing, if it passed).

Imports: inside run(), `import x` of a module outside the standard library, application_sdk,
the app's own package and `passthrough_modules` raises. Only imports made by the app's own
module are checked (an import a library makes internally is that library's business).

Set CONNECTOR_RUNTIME_GUARDS=0 to disable the guards (to measure their cost).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import contextvars
import datetime as _dt
import functools
import os
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from application_sdk import _context
from application_sdk.errors import NondeterminismError

__all__ = ["ACTIVE", "activate", "enabled", "install", "runtime_code", "runtime_code_sync"]

ACTIVE: contextvars.ContextVar[frozenset[str] | None] = contextvars.ContextVar(
    "connector_runtime_guards", default=None
)
"""While run() executes: the module prefixes its code may import (else None)."""

_sync = threading.local()
"""`off` > 0 while the runtime runs a synchronous stretch of its own code (runtime_code_sync)."""


def _active() -> frozenset[str] | None:
    """What ACTIVE holds, unless the runtime's own synchronous code is running."""
    allowed = ACTIVE.get()
    if allowed is not None and getattr(_sync, "off", 0):
        return None
    return allowed


_real_time = time.time
_real_sleep = asyncio.sleep
_installed = False
_swapped: dict[int, Any] = {}


def enabled() -> bool:
    return os.environ.get("CONNECTOR_RUNTIME_GUARDS", "1") not in ("0", "false", "no")


def _refuse(call: str, hint: str = "") -> None:
    raise NondeterminismError(
        f"{call} called inside run(): run() is replayed after a failure and must be "
        f"deterministic; move it into a @task{hint}"
    )


_HINTS = {
    "now": " (or use application_sdk.app.now(), recorded and replay-stable)",
    "uuid": " (or use application_sdk.app.uuid4(), recorded and replay-stable)",
    "random": " (or use application_sdk.app.random(), recorded and replay-stable)",
}


def _guard_fn(name: str, original: Any, hint: str = "") -> Any:
    if getattr(original, "__guard_original__", None) is not None:
        return original

    @functools.wraps(original)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if _active() is not None:
            _refuse(f"{name}()", hint)
        return original(*args, **kwargs)

    guarded.__guard_original__ = original  # type: ignore[attr-defined]
    return guarded


class _RealInstanceCheck(type):
    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, cls.__bases__[0])

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, cls.__bases__[0])


class GuardedDatetime(_dt.datetime, metaclass=_RealInstanceCheck):
    @classmethod
    def now(cls, tz: Any = None) -> _dt.datetime:
        if _active() is not None:
            _refuse("datetime.now()", _HINTS["now"])
        return _dt.datetime.now(tz)

    @classmethod
    def utcnow(cls) -> _dt.datetime:
        if _active() is not None:
            _refuse("datetime.utcnow()", _HINTS["now"])
        return _dt.datetime.utcnow()

    @classmethod
    def today(cls) -> _dt.datetime:
        if _active() is not None:
            _refuse("datetime.today()", _HINTS["now"])
        return _dt.datetime.today()


class GuardedDate(_dt.date, metaclass=_RealInstanceCheck):
    @classmethod
    def today(cls) -> _dt.date:
        if _active() is not None:
            _refuse("date.today()", _HINTS["now"])
        return _dt.date.today()


class _GuardedDatetimeModule:
    """Stands for the `datetime` module in an app module's globals."""

    datetime = GuardedDatetime
    date = GuardedDate

    def __getattr__(self, name: str) -> Any:
        return getattr(_dt, name)


_RANDOM_FUNCS = ("random", "randint", "randrange", "choice", "choices", "shuffle", "sample",
                 "uniform", "getrandbits", "gauss", "normalvariate", "randbytes", "triangular",
                 "betavariate", "expovariate")


def _patch_module_functions() -> None:
    time.time = _guard_fn("time.time", time.time, _HINTS["now"])
    time.time_ns = _guard_fn("time.time_ns", time.time_ns, _HINTS["now"])
    uuid.uuid1 = _guard_fn("uuid.uuid1", uuid.uuid1, _HINTS["uuid"])
    uuid.uuid4 = _guard_fn("uuid.uuid4", uuid.uuid4, _HINTS["uuid"])
    for name in _RANDOM_FUNCS:
        if hasattr(random, name):
            setattr(random, name, _guard_fn(f"random.{name}", getattr(random, name),
                                            _HINTS["random"]))
    os.urandom = _guard_fn("os.urandom", os.urandom, _HINTS["random"])
    os.system = _guard_fn("os.system", os.system)
    os.popen = _guard_fn("os.popen", os.popen)
    builtins.open = _guard_fn("open", builtins.open)
    socket.create_connection = _guard_fn("socket.create_connection",
                                         socket.create_connection)
    socket.getaddrinfo = _guard_fn("socket.getaddrinfo", socket.getaddrinfo)


def _patch_init(cls: type, call: str) -> None:
    original = cls.__init__
    if getattr(original, "__guard_original__", None) is not None:
        return

    @functools.wraps(original)
    def guarded_init(self: Any, *args: Any, **kwargs: Any) -> None:
        if _active() is not None:
            _refuse(call)
        original(self, *args, **kwargs)

    guarded_init.__guard_original__ = original  # type: ignore[attr-defined]
    cls.__init__ = guarded_init  # type: ignore[misc]


def _patch_thread_start() -> None:
    original = threading.Thread.start
    if getattr(original, "__guard_original__", None) is not None:
        return

    @functools.wraps(original)
    def guarded_start(self: threading.Thread) -> None:
        if _active() is not None:
            _refuse("starting a thread")
        original(self)

    guarded_start.__guard_original__ = original  # type: ignore[attr-defined]
    threading.Thread.start = guarded_start  # type: ignore[method-assign]


def _patch_import() -> None:
    original = builtins.__import__
    if getattr(original, "__guard_original__", None) is not None:
        return

    @functools.wraps(original)
    def guarded_import(name: str, globals: Any = None, locals: Any = None,
                       fromlist: Any = (), level: int = 0) -> Any:
        allowed = _active()
        if allowed is not None and level == 0 and globals is not None:
            importer = globals.get("__name__", "")
            if _is_allowed(importer, allowed) and not _is_allowed(name, allowed):
                raise NondeterminismError(
                    f"import of {name!r} inside run(): only the standard library, "
                    "application_sdk and the app's own modules may be used there; move the "
                    f"code using it into a @task, or list {name.split('.')[0]!r} in the "
                    "app's passthrough_modules"
                )
        return original(name, globals, locals, fromlist, level)

    guarded_import.__guard_original__ = original  # type: ignore[attr-defined]
    builtins.__import__ = guarded_import


def _is_allowed(module: str, allowed: frozenset[str]) -> bool:
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top in allowed:
        return True
    return any(module == p or module.startswith(p + ".") for p in allowed)


def _patch_sleep() -> None:
    if getattr(asyncio.sleep, "__guard_original__", None) is not None:
        return

    @functools.wraps(_real_sleep)
    async def durable_sleep(delay: float, result: Any = None) -> Any:
        orchestrator = _context.orchestrator.get()
        if _active() is None or orchestrator is None or delay <= 0:
            return await _real_sleep(delay, result)
        with runtime_code():
            wake = orchestrator.recorded_value("sleep", lambda: _real_time() + delay)
            left = wake - _real_time()
        return await _real_sleep(max(0.0, left), result)

    durable_sleep.__guard_original__ = _real_sleep  # type: ignore[attr-defined]
    asyncio.sleep = durable_sleep


def install() -> None:
    """Install the process-wide wrappers (idempotent)."""
    global _installed
    if _installed or not enabled():
        return
    _patch_module_functions()
    _patch_init(socket.socket, "socket.socket()")
    _patch_init(subprocess.Popen, "subprocess.Popen()")
    _patch_thread_start()
    _patch_import()
    _patch_sleep()
    _installed = True


def guard_module_globals(module_name: str) -> None:
    """Rebind names the app's module imported from time/uuid/random/os/datetime/... to the
    guarded versions (they hold the originals since import)."""
    module = sys.modules.get(module_name)
    if module is None or not enabled():
        return
    replacements = {id(_dt.datetime): GuardedDatetime, id(_dt.date): GuardedDate,
                    id(_dt): _GuardedDatetimeModule()}
    for mod, names in ((time, ("time", "time_ns")), (uuid, ("uuid1", "uuid4")),
                       (random, _RANDOM_FUNCS), (os, ("urandom", "system", "popen"))):
        for name in names:
            current = getattr(mod, name, None)
            original = getattr(current, "__guard_original__", None)
            if original is not None:
                replacements[id(original)] = current
    for name, value in list(vars(module).items()):
        new = replacements.get(id(value))
        if new is not None:
            setattr(module, name, new)


def activate(ctx: contextvars.Context, app_cls: type) -> None:
    """Turn the guards on in `ctx`, the context run() will execute in."""
    if not enabled():
        return
    install()
    guard_module_globals(app_cls.__module__)
    allowed = {"application_sdk", app_cls.__module__.split(".")[0], app_cls.__module__,
               *app_cls.passthrough_modules}
    ctx.run(ACTIVE.set, frozenset(allowed))


@contextlib.contextmanager
def runtime_code_sync() -> Iterator[None]:
    """Guards off for a synchronous stretch of the runtime's code (no await inside it).

    A thread-local flag, so the context is left untouched: each task of an
    `asyncio.gather` has a context of its own, and setting a contextvar in it (as
    `runtime_code` does) gives that task a private copy of the context's mapping, about
    150 bytes per gathered call kept until the gather ends.
    """
    _sync.off = getattr(_sync, "off", 0) + 1
    try:
        yield
    finally:
        _sync.off -= 1


@contextlib.contextmanager
def runtime_code() -> Iterator[None]:
    """The runtime's own work, called from run()'s context: guards off (may span awaits)."""
    token = ACTIVE.set(None)
    try:
        yield
    finally:
        ACTIVE.reset(token)
