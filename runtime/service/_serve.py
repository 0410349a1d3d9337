"""`connector-runtime serve`: settings from the command line, checked, then uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from application_sdk.app import App
from storage import Store

from ._config import (
    ServiceConfig,
    ServiceConfigError,
    default_working_dir,
    describe_config,
    load_token,
    refuse_secret_store_options,
    resolve_launcher,
)
from ._discovery import find_handler

__all__ = ["config_from_args", "serve"]

log = logging.getLogger("connector_runtime.service")


def config_from_args(args: argparse.Namespace, app_cls: type[App], store: Store) -> ServiceConfig:
    """Every check before anything listens; ServiceConfigError (exit 2) says what to change."""
    if store.protocol == "memory":
        raise ServiceConfigError(
            "a memory:// store lives in one process, and each run's driver is a process of its "
            "own: use a folder, file:// or s3:// store")
    token = load_token(args.token_file, args.host)
    refuse_secret_store_options(args.store_option)
    if args.max_body_bytes < 1024:
        raise ServiceConfigError("--max-body-bytes must be at least 1024")
    launcher = resolve_launcher(args.launcher, args.ray_address)
    working_dir = None
    if launcher == "ray-job":
        working_dir = args.working_dir or default_working_dir(app_cls)
        if working_dir and not Path(working_dir).is_dir():
            raise ServiceConfigError(f"--working-dir {working_dir}: no such folder")
        if args.ray_address:
            _use_ray_address(args.ray_address)
    return ServiceConfig(
        app_path=args.app, app_cls=app_cls, handler_cls=find_handler(app_cls, args.handler),
        store=store, store_option_args=list(args.store_option), token=token, host=args.host,
        port=args.port, launcher=launcher, ray_address=args.ray_address,
        working_dir=working_dir,
        log_dir=Path(args.log_dir) if args.log_dir else Path.cwd() / ".connector-runtime-logs",
        max_body_bytes=args.max_body_bytes, resume_orphans=args.resume_orphans)


def _use_ray_address(address: str) -> None:
    """Ray's job client prefers $RAY_API_SERVER_ADDRESS, then $RAY_ADDRESS, to its argument:
    an explicit --ray-address must win, so it becomes the variable the client reads first (this
    process launches no local driver in this mode, so nothing else inherits it)."""
    if address.startswith(("http://", "https://")):
        os.environ["RAY_API_SERVER_ADDRESS"] = address
    else:
        os.environ.pop("RAY_API_SERVER_ADDRESS", None)
        os.environ["RAY_ADDRESS"] = address


def serve(args: argparse.Namespace, app_cls: type[App], store: Store) -> int:
    import uvicorn

    from ._app import create_app

    cfg = config_from_args(args, app_cls, store)
    logging.getLogger("connector_runtime.service").setLevel(logging.INFO)
    info = describe_config(cfg)
    log.warning("serving %s on http://%s:%d (handler %s, store %s, runs as %s, auth: %s)",
                info["app"], cfg.host, cfg.port, info["handler"], info["store"],
                info["launcher"], info["auth"])
    app = create_app(cfg)
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="info",
                            access_log=True, server_header=False, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run()
    return 0
