"""The service's settings, checked before anything listens: token, bind address, store, launcher.

Every refusal here is a `ServiceConfigError` (the CLI's exit 2) whose message says what to
change. Nothing is written and no port is opened before these checks pass.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from application_sdk.app import App
from application_sdk.handler import Handler
from storage import Store

from .._errors import UsageError

__all__ = ["DEFAULT_MAX_BODY", "ServiceConfig", "ServiceConfigError", "is_loopback",
           "load_token", "refuse_secret_store_options", "resolve_launcher"]

TOKEN_ENV = "CONNECTOR_RUNTIME_API_TOKEN"
MIN_TOKEN_CHARS = 16
DEFAULT_MAX_BODY = 1024 * 1024
LAUNCHERS = ("auto", "process", "ray-job")
# Store options whose value is a credential: a driver gets store options on its command line
# (visible to `ps` and in `ray job list`), so the service refuses them.
_SECRET_OPTION_WORDS = ("secret", "password", "token", "credential", "key")
_NOT_SECRET_OPTIONS = {"endpoint_url", "profile", "region", "region_name", "anon",
                       "use_ssl", "requester_pays", "default_block_size", "version_aware"}


class ServiceConfigError(UsageError):
    """The service cannot start with these settings (exit 2); the message says why."""


@dataclass
class ServiceConfig:
    """Everything the service needs, resolved and checked."""

    app_path: str
    """`module:Class` as given: drivers import the app the same way."""
    app_cls: type[App]
    handler_cls: type[Handler]
    store: Store
    store_option_args: list[str] = field(default_factory=list)
    """`--store-option K=V` items, passed on to each driver unchanged."""
    token: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    launcher: str = "process"
    """`process` (a detached local driver) or `ray-job` (Ray's job submission API)."""
    ray_address: str | None = None
    working_dir: str | None = None
    """Ray job mode: the folder uploaded as the job's working dir (None: nothing uploaded)."""
    log_dir: Path = field(default_factory=lambda: Path.cwd() / ".connector-runtime-logs")
    """Local drivers' stdout/stderr, one file per launch (never in the store)."""
    max_body_bytes: int = DEFAULT_MAX_BODY
    resume_orphans: bool = False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def load_token(token_file: str | None, host: str) -> str | None:
    """The API token (`--token-file` wins over $CONNECTOR_RUNTIME_API_TOKEN), checked."""
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ServiceConfigError(f"--token-file {token_file}: {exc.strerror}") from exc
        source = f"--token-file {token_file}"
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
        source = f"${TOKEN_ENV}"
    if not token:
        if not is_loopback(host):
            raise ServiceConfigError(
                f"refusing to listen on {host} without an API token: anyone who reaches it "
                f"could start runs and read their results. Set {TOKEN_ENV} or --token-file "
                "(a random string of 16+ characters), or bind to 127.0.0.1")
        return None
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ServiceConfigError(
            f"the API token from {source} must be at least {MIN_TOKEN_CHARS} characters without "
            "spaces (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    return token


def refuse_secret_store_options(items: list[str]) -> None:
    for item in items:
        key = item.partition("=")[0].strip().lower()
        if key in _NOT_SECRET_OPTIONS:
            continue
        if any(word in key for word in _SECRET_OPTION_WORDS):
            raise ServiceConfigError(
                f"--store-option {key}=... looks like a credential: the service passes store "
                "options to every driver on its command line (visible to `ps` and `ray job "
                "list`). Give drivers credentials through their environment instead (AWS_* "
                "variables, AWS_PROFILE, an instance role)")


def resolve_launcher(choice: str, ray_address: str | None) -> str:
    """`auto`: a Ray job when attached to a cluster (--ray-address, $RAY_ADDRESS or
    $RAY_API_SERVER_ADDRESS), else a local driver process."""
    if choice not in LAUNCHERS:
        raise ServiceConfigError(f"--launcher {choice!r}: choose one of {', '.join(LAUNCHERS)}")
    if choice != "auto":
        return choice
    attached = ray_address or os.environ.get("RAY_ADDRESS") or os.environ.get(
        "RAY_API_SERVER_ADDRESS")
    return "ray-job" if attached else "process"


def default_working_dir(app_cls: type[App]) -> str | None:
    """The folder a Ray job must get to import the app: the one holding the app's top-level
    module or package, unless that is installed (site-packages), where nothing is uploaded."""
    top = sys.modules.get(app_cls.__module__.split(".")[0])
    file = getattr(top, "__file__", None)
    if not file:
        return None
    path = Path(file).resolve().parent
    if Path(file).name == "__init__.py":
        path = path.parent
    if any(part in ("site-packages", "dist-packages") for part in path.parts):
        return None
    return str(path)


def describe_config(cfg: ServiceConfig) -> dict[str, Any]:
    """What the service says about itself at start (no token, no store options)."""
    return {"app": cfg.app_path, "handler": f"{cfg.handler_cls.__module__}:"
            f"{cfg.handler_cls.__qualname__}", "store": cfg.store.url, "launcher": cfg.launcher,
            "auth": "bearer token" if cfg.token else "none (loopback only)"}
