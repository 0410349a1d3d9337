"""Connecting to Ray: reuse an initialized one, else RAY_ADDRESS, else start a local one."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

import ray

__all__ = ["after_init", "ensure_ray"]

_after_init: list[Callable[[], None]] = []


def after_init(hook: Callable[[], None]) -> None:
    """Run `hook` once Ray is connected (Ray's init installs signal handlers of its own: a
    handler that must win, like the CLI's SIGTERM handling, is installed after it)."""
    _after_init.append(hook)


def ensure_ray() -> None:
    try:
        _connect()
    finally:
        while _after_init:
            _after_init.pop(0)()


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
    else:
        ray.init(include_dashboard=False, **kwargs)
