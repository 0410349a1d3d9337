"""Connecting to Ray: reuse an initialized one, else RAY_ADDRESS, else start a local one.

The local Ray is one of our own (``address="local"``): Ray's default would attach to the latest
cluster `ray start` left running on the machine, even another user's. It gets two settings
``ray.init()`` has no argument for (`_ray_params_defaults`): a dashboard agent port chosen by
the system, and no autoscaler monitor. Measured (issue 17, start-up; benchmarks/PROFILE.md):
``ray.init()`` 5.4 -> 2.2 s when another Ray runs on the machine, ``ray.shutdown()`` 1.46 ->
0.1-0.3 s.

Rejected (measured with ``benchmarks/bench_startup.py``, 5 launches each, interleaved):
prewarming workers when a driver connects, with no-op tasks importing the app's module (in
the task, or in a thread of the worker), 1 or 2 of them, and attaching to ``RAY_ADDRESS``
before the CLI imports the app so that those imports overlap. Time to the first task was
0.93 s without any of it and 1.08-1.31 s with it: the first task waits for a worker process
of its job either way, and the extra processes only compete for the two cores. In the demo
(a fresh local Ray, whose first driver finds workers Ray prestarted) it made no difference.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import ray

__all__ = ["after_init", "ensure_ray"]

_after_init: list[Callable[[], None]] = []


def after_init(hook: Callable[[], None]) -> None:
    """Run `hook` once Ray is connected (Ray's init installs signal handlers of its own: a
    handler that must win, like the CLI's SIGTERM handling, is installed after it)."""
    _after_init.append(hook)


def ensure_ray() -> None:
    try:
        with _no_token_notice(local=not os.environ.get("RAY_ADDRESS")):
            _connect()
    finally:
        while _after_init:
            _after_init.pop(0)()


class _DropTokenNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Token authentication is enabled" not in record.getMessage()


@contextlib.contextmanager
def _no_token_notice(local: bool) -> Iterator[None]:
    """Ray 2.5x warns "Token authentication is enabled for this Ray cluster" on every local
    ray.init(): a Ray of the runtime's own, on this machine, where the notice tells an author
    nothing they can act on. It is dropped for a local start only; attaching to a cluster
    (RAY_ADDRESS) keeps Ray's notices."""
    if not local:
        yield
        return
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    notice = _DropTokenNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


def _connect() -> None:
    if ray.is_initialized():
        return
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    kwargs = {"logging_level": logging.WARNING, "log_to_driver": True}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kwargs)
        return
    # "local": a Ray of our own, never one that `ray start` left running on this machine
    # (Ray's default attaches to the latest one it finds, even another user's).
    with _ray_params_defaults(dashboard_agent_listen_port=0, no_monitor=True):
        ray.init(address="local", include_dashboard=False, **kwargs)


@contextlib.contextmanager
def _ray_params_defaults(**overrides: Any) -> Iterator[None]:
    """Settings for the local Ray that ``ray.init()`` has no argument for (``ray start`` has).

    * ``dashboard_agent_listen_port=0``: Ray's dashboard agent listens on port 52365 unless told
      otherwise. With a second Ray on the machine (a test session, a benchmark, a colleague's
      cluster, one `connector-runtime run` per terminal) the agent retried that port for 3.3 s
      and the raylet, which waits for its agents' ports, registered only after: ``ray.init()``
      took 5.4 s instead of 2.2 s here. 0 = bind, then report (Ray's scheme for its other
      ports; ``ray start --dashboard-agent-listen-port 0``).
    * ``no_monitor=True``: no autoscaler monitor process. A local single-node Ray has nothing
      to scale, the runtime does not use it (an unschedulable task is detected from
      ``ray.nodes()``), and it ignores SIGTERM: ``ray.shutdown()`` waited 1 s for it before
      killing it (1.46 s of shutdown, 0.45 s without it).

    They reach ``ray.init()`` only through the defaults of ``RayParams``, changed for the
    duration of the call. A setting the installed Ray does not have is left alone: the cost is
    then only time.
    """
    try:
        from ray._private import parameter

        init = parameter.RayParams.__init__
        names = init.__code__.co_varnames[1:init.__code__.co_argcount]
        defaults = init.__defaults__ or ()
    except (ImportError, AttributeError):
        yield
        return
    patched = list(defaults)
    first = len(names) - len(defaults)
    for name, value in overrides.items():
        if name in names and names.index(name) >= first:
            patched[names.index(name) - first] = value
    init.__defaults__ = tuple(patched)
    try:
        yield
    finally:
        init.__defaults__ = defaults

