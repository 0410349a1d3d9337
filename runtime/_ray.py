"""Connecting to Ray: reuse an initialized one, else RAY_ADDRESS, else start a local one."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator

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
    else:
        ray.init(include_dashboard=False, **kwargs)
