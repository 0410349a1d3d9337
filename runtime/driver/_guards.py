"""Determinism guards: inside run() (or an entry point), calls that would not replay the same
way raise `NondeterminismError` naming the call and pointing at a task.

Design. While a step of run()'s code executes - the coroutine running run(), and every task it
creates (gathered branches) - a profile function (`sys.setprofile`) is installed on the
driver's thread. It looks at two kinds of events only:

- `c_call`: the callable is compared (one dict lookup) with the clock, randomness, file and
  process functions of the standard library: `time.time/monotonic/perf_counter/...` (and their
  `_ns` forms), `datetime.now/utcnow/today`, `date.today`, `os.urandom/getrandom/system`,
  `open`, the module-level `random` functions (bound to `random`'s hidden instance).
  A C function is the same object however it was reached: through a
  function-local `import datetime`, a helper module of the app, `from time import monotonic`
  done before the runtime started - all are caught.
- `call` of a Python function: its code object is compared with those of `uuid.uuid1/uuid4`,
  `random.Random.__init__` without a seed and `random.SystemRandom`, `os.popen`,
  `socket.socket.__init__`, `socket.create_connection`, `socket.getaddrinfo`,
  `subprocess.Popen.__init__`,
  `threading.Thread.start`.

Calls made by `asyncio` (the event loop reads its clock inside a step: `call_later`) and by
`logging` (a log record takes the time) are allowed: the check looks at the calling frame only
when a forbidden callable is hit, so it costs nothing otherwise.

The profile function is switched on and off, not left on: a task factory installed on the
driver's event loop wraps the coroutine of every task created while run()'s context is active
(`_GuardedStep`), which installs the profile function around each `send()`/`throw()` and
removes it after; the runtime's own code called from run() (`runtime_code()`,
`runtime_code_sync()`: dispatch, journaling, the recorded helpers) removes it while it works.
So the driver's own code, the group committer, the heartbeat watch and every other coroutine
of the loop run without it, and run()'s code pays one dict lookup per call it makes.

Rejected: process-wide wrappers on module attributes and rebinding names in the app module's
globals (the previous design). They missed every reference taken before they were installed
(a helper module's `from time import monotonic`), a function-local `import datetime` (its
`datetime.now` is a C method of a C type that cannot be patched), and instances
(`random.Random()`); and they cost a contextvar read on every call of `time.time` anywhere in
the process. A profile function left on for the driver's whole thread was measured at several
times the 5% budget of the 300-sequential-task benchmark (dispatch itself is Python).
Caveat: if run() catches a NondeterminismError and goes on, the rest of that step runs
unguarded (CPython removes a profile function that raised); the next step is guarded again.

Imports: inside run(), `import x` of a module outside the standard library, application_sdk,
the app's own package and `passthrough_modules` raises (a wrapper on `builtins.__import__`;
only imports made by the app's own modules are checked).

`asyncio.sleep(d)` in run() is a durable timer: the wake-up time is recorded on first execution,
and a replay sleeps only what is left of it. It is made durable at the function itself (its code
object is swapped for a trampoline), so `from asyncio import sleep` in any module is durable too.
`CONNECTOR_RUNTIME_GUARDS=0` turns the refusals off (to measure their cost, or for a run()
known to be deterministic); durable timers stay.
"""

from __future__ import annotations

import asyncio
import asyncio.tasks
import builtins
import collections.abc
import contextlib
import contextvars
import datetime as _dt
import functools
import gc
import io
import logging
import os
import random
import socket
import subprocess
import sys
import threading
import time
import types
import uuid
from collections.abc import Iterator
from typing import Any

from application_sdk import _context
from application_sdk.errors import NondeterminismError

__all__ = ["ACTIVE", "activate", "deactivate", "enabled", "runtime_code", "runtime_code_sync"]

ACTIVE: contextvars.ContextVar[frozenset[str] | None] = contextvars.ContextVar(
    "connector_runtime_guards", default=None
)
"""While run()'s own code executes: the module prefixes it may import (else None)."""

_HINTS = {
    "now": " (or use application_sdk.app.now(), recorded and replay-stable)",
    "uuid": " (or use application_sdk.app.uuid4(), recorded and replay-stable)",
    "random": " (or use application_sdk.app.random(), recorded and replay-stable)",
    "": "",
}


def enabled() -> bool:
    return os.environ.get("CONNECTOR_RUNTIME_GUARDS", "1") not in ("0", "false", "no")


def _refuse(call: str, hint: str = "") -> None:
    raise NondeterminismError(
        f"{call} called inside run(): run() is replayed after a failure and must be "
        f"deterministic; move it into a @task{hint}"
    )


# ---- what is refused ------------------------------------------------------------------------

def _c_forbidden() -> dict[Any, tuple[str, str]]:
    clock = ("time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns",
             "process_time", "process_time_ns", "thread_time", "thread_time_ns")
    found: dict[Any, tuple[str, str]] = {}
    for name in clock:
        if hasattr(time, name):
            found[getattr(time, name)] = (f"time.{name}()", _HINTS["now"])
    for cls, names in ((_dt.datetime, ("now", "utcnow", "today")), (_dt.date, ("today",))):
        for name in names:
            found[getattr(cls, name)] = (f"{cls.__name__}.{name}()", _HINTS["now"])
    for name in ("urandom", "getrandom"):
        if hasattr(os, name):
            found[getattr(os, name)] = (f"os.{name}()", _HINTS["random"])
    found[os.system] = ("os.system()", "")
    found[io.open] = ("open()", "")
    inst = random._inst  # type: ignore[attr-defined]
    found[inst.random] = ("random.random()", _HINTS["random"])
    found[inst.getrandbits] = ("a module-level random function (random.choice, randint, "
                               "shuffle, ...)", _HINTS["random"])
    return found


def _unseeded(frame: types.FrameType) -> bool:
    return frame.f_locals.get("x") is None


def _py_forbidden() -> dict[types.CodeType, tuple[str, str, Any]]:
    """Code object -> (what, hint, condition on the callee's frame or None)."""
    code = {
        uuid.uuid4: ("uuid.uuid4()", _HINTS["uuid"], None),
        uuid.uuid1: ("uuid.uuid1()", _HINTS["uuid"], None),
        random.Random.__init__: ("random.Random() without a seed", _HINTS["random"], _unseeded),
        os.popen: ("os.popen()", "", None),
        socket.socket.__init__: ("socket.socket()", "", None),
        socket.create_connection: ("socket.create_connection()", "", None),
        socket.getaddrinfo: ("socket.getaddrinfo()", "", None),
        subprocess.Popen.__init__: ("subprocess.Popen()", "", None),
        threading.Thread.start: ("starting a thread", "", None),
    }
    return {getattr(fn, "__code__", None): what for fn, what in code.items()
            if getattr(fn, "__code__", None) is not None}


_C_FORBIDDEN = _c_forbidden()
_PY_FORBIDDEN = _py_forbidden()
_TRUSTED_CALLERS = tuple(os.path.dirname(m.__file__) + os.sep for m in (asyncio, logging))
"""Packages whose own calls are allowed: the event loop's clock, a log record's time."""


def _on_behalf_of_trusted(frame: types.FrameType | None) -> bool:
    """Whether this call was made by `asyncio` or `logging` on the app's behalf: walking up the
    stack, one of their frames comes before any frame of the app's own modules (a log record
    factory - Ray installs one - reading the clock is logging's business)."""
    app = ACTIVE.get() or frozenset()
    collector = _gc_callback_codes()
    for _ in range(_TRUSTED_DEPTH):
        if frame is None:
            return False
        if frame.f_code.co_filename.startswith(_TRUSTED_CALLERS) or frame.f_code in collector:
            return True
        name = frame.f_globals.get("__name__", "")
        if any(name == p or name.startswith(p + ".") for p in app):
            return False
        frame = frame.f_back
    return False


_TRUSTED_DEPTH = 12


def _gc_callback_codes() -> set[types.CodeType]:
    """The code of every `gc.callbacks` entry: the collector calls them from whatever frame
    allocated last, so a callback timing collections (Hypothesis installs one) runs "inside"
    run() without being run()'s code. Read only when a forbidden call is seen."""
    codes = set()
    for cb in gc.callbacks:
        code = getattr(getattr(cb, "__func__", cb), "__code__", None)
        if code is not None:
            codes.add(code)
    return codes


def _profile(frame: types.FrameType, event: str, arg: Any) -> None:
    if event == "c_call":
        hit = _C_FORBIDDEN.get(arg)
        if hit is not None and _guarding() and not _on_behalf_of_trusted(frame):
            _refuse(*hit)
    elif event == "call":
        hit3 = _PY_FORBIDDEN.get(frame.f_code)
        if hit3 is not None and _guarding() and not _on_behalf_of_trusted(frame.f_back) and \
                (hit3[2] is None or hit3[2](frame)):
            _refuse(hit3[0], hit3[1])


# ---- switching the profile function on and off ---------------------------------------------

_sync = threading.local()
"""`off` > 0 while the runtime runs a synchronous stretch of its own code (runtime_code_sync)."""


def _guarding() -> bool:
    return ACTIVE.get() is not None and not getattr(_sync, "off", 0)


class _GuardedStep(collections.abc.Coroutine):
    """A task's coroutine, stepped with the profile function on (while run()'s context is)."""

    __slots__ = ("_coro",)

    def __init__(self, coro: Any) -> None:
        self._coro = coro

    # The profile function in place before the step is put back after it, guarded or not: a
    # step that starts inside runtime_code() (unguarded) and leaves it (which switches the
    # profile function on for run()'s code that follows) must not leave it on for whatever
    # the loop runs next - the driver's own code after run() was refused time.time().
    def send(self, value: Any) -> Any:
        previous = sys.getprofile()
        if _guarding():
            sys.setprofile(_profile)
        try:
            return self._coro.send(value)
        finally:
            sys.setprofile(previous)

    def throw(self, *args: Any) -> Any:
        previous = sys.getprofile()
        if _guarding():
            sys.setprofile(_profile)
        try:
            return self._coro.throw(*args)
        finally:
            sys.setprofile(previous)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Any:
        return self._coro.__await__()

    def __getattr__(self, name: str) -> Any:  # cr_frame, cr_code, ... for asyncio's repr
        return getattr(self._coro, name)


_factories: dict[asyncio.AbstractEventLoop, tuple[Any, int]] = {}


def _install_factory(loop: asyncio.AbstractEventLoop) -> None:
    """Wrap every task created while run()'s context is active (refcounted per loop)."""
    installed = _factories.get(loop)
    if installed is not None:
        _factories[loop] = (installed[0], installed[1] + 1)
        return
    previous = loop.get_task_factory()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future:
        context = kwargs.get("context")
        active = context.get(ACTIVE) if context is not None else ACTIVE.get()
        if active is not None and asyncio.iscoroutine(coro):
            coro = _GuardedStep(coro)
        if previous is not None:
            return previous(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)
    _factories[loop] = (previous, 1)


def _remove_factory(loop: asyncio.AbstractEventLoop) -> None:
    installed = _factories.get(loop)
    if installed is None:
        return
    previous, users = installed
    if users > 1:
        _factories[loop] = (previous, users - 1)
        return
    del _factories[loop]
    loop.set_task_factory(previous)


# ---- imports ---------------------------------------------------------------------------------

def _is_allowed(module: str, allowed: frozenset[str]) -> bool:
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top in allowed:
        return True
    return any(module == p or module.startswith(p + ".") for p in allowed)


def _patch_import() -> None:
    original = builtins.__import__
    if getattr(original, "__guard_original__", None) is not None:
        return

    @functools.wraps(original)
    def guarded_import(name: str, globals: Any = None, locals: Any = None,
                       fromlist: Any = (), level: int = 0) -> Any:
        allowed = ACTIVE.get() if _refusing else None
        if allowed is not None and level == 0 and globals is not None and \
                not getattr(_sync, "off", 0):
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


# ---- durable timers --------------------------------------------------------------------------

_real_time = time.time
_real_sleep: Any = None


async def _durable_sleep(delay: float, result: Any = None) -> Any:
    orchestrator = _context.orchestrator.get()
    if orchestrator is None or delay <= 0 or ACTIVE.get() is None:
        return await _real_sleep(delay, result)
    with runtime_code():
        wake = orchestrator.recorded_value("sleep", lambda: _real_time() + delay)
        left = max(0.0, wake - _real_time())
    return await _real_sleep(left, result)  # the loop's own clock reads are allowed


def _install_durable_sleep() -> None:
    """Make `asyncio.sleep` durable inside run() however it is referenced: its code object is
    replaced by a trampoline (the function object every reference shares stays the same)."""
    global _real_sleep
    target = asyncio.tasks.sleep
    if getattr(target, "__durable__", False):
        return
    _real_sleep = types.FunctionType(target.__code__, target.__globals__, target.__name__,
                                     target.__defaults__, target.__closure__)
    _real_sleep.__kwdefaults__ = target.__kwdefaults__
    target.__globals__["_connector_runtime_durable_sleep"] = _durable_sleep
    namespace: dict[str, Any] = {}
    exec(compile("async def sleep(delay, result=None):\n"
                 "    return await _connector_runtime_durable_sleep(delay, result)\n",
                 target.__code__.co_filename, "exec"), target.__globals__, namespace)
    target.__code__ = namespace["sleep"].__code__
    target.__durable__ = True  # type: ignore[attr-defined]


# ---- activation ------------------------------------------------------------------------------

_refusing = False
"""True once guards were activated with CONNECTOR_RUNTIME_GUARDS on (import checks)."""


def activate(ctx: contextvars.Context, app_cls: type) -> None:
    """Run() will execute in `ctx`: mark it (durable timers), and unless the guards are turned
    off, refuse nondeterministic calls from its code. Call from the loop that runs run();
    `deactivate()` when it is done."""
    global _refusing
    _install_durable_sleep()
    allowed = {"application_sdk", app_cls.__module__.split(".")[0], app_cls.__module__,
               *app_cls.passthrough_modules}
    ctx.run(ACTIVE.set, frozenset(allowed))
    _refusing = enabled()
    if not _refusing:
        return
    _patch_import()
    _install_factory(asyncio.get_running_loop())


def deactivate() -> None:
    """run() is over on this loop (its task factory is removed when no run uses it)."""
    if enabled():
        _remove_factory(asyncio.get_running_loop())


@contextlib.contextmanager
def runtime_code_sync() -> Iterator[None]:
    """Guards off for a synchronous stretch of the runtime's code (no await inside it).

    A thread-local flag and the profile function removed, so the context is left untouched:
    each task of an `asyncio.gather` has a context of its own, and setting a contextvar in it
    (as `runtime_code` does) gives that task a private copy of the context's mapping, about
    150 bytes per gathered call kept until the gather ends.
    """
    previous = sys.getprofile()
    if previous is _profile:
        sys.setprofile(None)
    _sync.off = getattr(_sync, "off", 0) + 1
    try:
        yield
    finally:
        _sync.off -= 1
        if previous is _profile:
            sys.setprofile(_profile)


@contextlib.contextmanager
def runtime_code() -> Iterator[None]:
    """The runtime's own work, called from run()'s context: guards off (may span awaits)."""
    token = ACTIVE.set(None)
    previous = sys.getprofile()
    if previous is _profile:
        sys.setprofile(None)
    try:
        yield
    finally:
        ACTIVE.reset(token)
        # back in run()'s code: guarded again if this step is a guarded one
        if ACTIVE.get() is not None and _refusing and _in_guarded_step():
            sys.setprofile(_profile)


def _in_guarded_step() -> bool:
    task = asyncio.current_task()
    return task is not None and isinstance(task.get_coro(), _GuardedStep)
