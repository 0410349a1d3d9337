"""Which Handler serves an app: `--handler module:Class`, else `{AppClass}Handler` in the app's
module, else the one Handler subclass there, else `DefaultHandler`."""

from __future__ import annotations

import importlib
import inspect
import sys

from application_sdk.app import App
from application_sdk.handler import DefaultHandler, Handler

from ._config import ServiceConfigError

__all__ = ["find_handler", "load_handler"]


def load_handler(target: str) -> type[Handler]:
    """Import `module:Class` (from the current directory, as apps are) and check it."""
    module_name, sep, qualname = target.partition(":")
    if not sep or not module_name or not qualname:
        raise ServiceConfigError(
            f"--handler {target!r}: expected module:Class, e.g. my_app:MyHandler")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ServiceConfigError(f"--handler {target!r}: cannot import {module_name!r}: "
                                 f"{exc}") from exc
    obj: object = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ServiceConfigError(f"--handler {target!r}: {module_name!r} has no {qualname!r}")
    if not (isinstance(obj, type) and issubclass(obj, Handler)):
        raise ServiceConfigError(
            f"--handler {target!r} is not an application_sdk.handler.Handler subclass")
    _check_concrete(obj, f"--handler {target!r}")
    return obj


def find_handler(app_cls: type[App], override: str | None = None) -> type[Handler]:
    if override:
        return load_handler(override)
    module = sys.modules.get(app_cls.__module__)
    if module is None:
        return DefaultHandler
    named = getattr(module, f"{app_cls.__name__}Handler", None)
    if isinstance(named, type) and issubclass(named, Handler):
        _check_concrete(named, f"{app_cls.__module__}.{named.__name__}")
        return named
    found = sorted({obj for obj in vars(module).values()
                    if isinstance(obj, type) and issubclass(obj, Handler)
                    and obj not in (Handler, DefaultHandler) and not inspect.isabstract(obj)},
                   key=lambda c: c.__qualname__)
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        names = ", ".join(c.__qualname__ for c in found)
        raise ServiceConfigError(
            f"module {app_cls.__module__} has several Handler subclasses ({names}) and none is "
            f"named {app_cls.__name__}Handler: name one so, or pass --handler "
            f"{app_cls.__module__}:{found[0].__qualname__}")
    return DefaultHandler


def _check_concrete(cls: type[Handler], where: str) -> None:
    if inspect.isabstract(cls):
        missing = sorted(getattr(cls, "__abstractmethods__", ()))
        raise ServiceConfigError(
            f"handler {where} does not implement {', '.join(missing)}: implement them, or "
            "subclass application_sdk.handler.DefaultHandler to keep its answers")
