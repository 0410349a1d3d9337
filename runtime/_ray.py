"""Connecting to Ray: reuse an initialized one, else RAY_ADDRESS, else start a local one."""

from __future__ import annotations

import logging
import os
import sys

import ray

__all__ = ["ensure_ray"]


def ensure_ray() -> None:
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
