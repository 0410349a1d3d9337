"""Where a run started over HTTP executes: never in the service, always in a driver of its own.

A driver is `connector-runtime run APP --input JSON --run-id ID --entrypoint EP --store URL`,
exactly what a user would type, so it validates, claims (the lease), runs and records as the
CLI does, and the store stays the one source of truth.

- `ProcessLauncher`: a local process in a session of its own (a SIGKILL of the service, or the
  terminal it ran in closing, leaves it running), stdout/stderr to a file under the log dir
  (never the store), the service's environment without its API token.
- `RayJobLauncher`: a Ray job through `ray.job_submission.JobSubmissionClient`, the entrypoint
  being that command, the app's folder as the job's working dir.

The input travels on the command line, as in `ray job submit`: an entrypoint is one argument of
`/bin/sh -c`, which Linux caps at 128 KiB, so inputs are limited to `MAX_INPUT_BYTES`.

Rejected: passing the input through a file (a local file is not on the cluster's nodes, and
writing it to the store would be the service writing state of its own); through stdin (only a
local process has one, and a service killed mid-write leaves a torn input).
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._config import TOKEN_ENV, ServiceConfig

__all__ = ["MAX_INPUT_BYTES", "Launch", "Launcher", "ProcessLauncher", "RayJobLauncher",
           "driver_args", "make_launcher"]

log = logging.getLogger("connector_runtime.service")

MAX_INPUT_BYTES = 96 * 1024
_TERMINAL_JOB_STATES = {"SUCCEEDED", "FAILED", "STOPPED"}


@dataclass
class Launch:
    """A driver this service started (kept in memory only to answer before it claims)."""

    run_id: str
    kind: str
    started_at: float
    log_path: str | None = None
    pid: int | None = None
    submission_id: str | None = None
    exit_code: int | None = None
    state: str = "RUNNING"
    """The launcher's view: RUNNING, or EXITED / the Ray job's terminal state."""
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"kind": self.kind, "started_at": self.started_at,
                                "state": self.state}
        for name in ("pid", "submission_id", "log_path", "exit_code"):
            if getattr(self, name) is not None:
                info[name] = getattr(self, name)
        return info


def driver_args(cfg: ServiceConfig, entrypoint: str, run_id: str, input_json: str) -> list[str]:
    """`connector-runtime` arguments of the driver of one run."""
    args = ["run", cfg.app_path, "--input", input_json, "--run-id", run_id,
            "--entrypoint", entrypoint, "--store", cfg.store.url]
    for item in cfg.store_option_args:
        args += ["--store-option", item]
    return args


class Launcher:
    """How drivers are started, watched and stopped; every method may block (call in a thread)."""

    kind = "?"

    def launch(self, run_id: str, args: list[str]) -> Launch:
        raise NotImplementedError

    def alive(self, launch: Launch) -> bool:
        raise NotImplementedError

    def stop(self, launch: Launch) -> None:
        raise NotImplementedError

    def ready(self) -> dict[str, Any]:
        """{"ok": bool, "detail": str}: can drivers reach Ray?"""
        raise NotImplementedError


class ProcessLauncher(Launcher):
    kind = "process"

    def __init__(self, cfg: ServiceConfig) -> None:
        self.log_dir = Path(cfg.log_dir)
        self.cwd = os.getcwd()

    def launch(self, run_id: str, args: list[str]) -> Launch:
        self.log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        path = self.log_dir / f"{run_id}.{stamp}.{os.urandom(2).hex()}.log"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "runtime", *args], cwd=self.cwd, env=env,
                stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, start_new_session=True)
        finally:
            os.close(fd)
        return Launch(run_id, self.kind, time.time(), log_path=str(path), pid=proc.pid,
                      proc=proc)

    def alive(self, launch: Launch) -> bool:
        if launch.proc is None or launch.exit_code is not None:
            return False
        code = launch.proc.poll()  # also reaps it: a zombie would look like a live lease holder
        if code is None:
            return True
        launch.exit_code, launch.state = code, "EXITED"
        return False

    def stop(self, launch: Launch) -> None:
        """SIGTERM, as Ctrl-C or `ray job stop` would: the driver cancels cleanly (exit 130)."""
        if launch.pid is not None and self.alive(launch):
            try:
                os.killpg(launch.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def ready(self) -> dict[str, Any]:
        address = os.environ.get("RAY_ADDRESS", "")
        if not address:
            return {"ok": True, "detail": "RAY_ADDRESS is unset: each driver starts a local Ray"}
        hostport = address.split("://", 1)[-1]
        host, sep, port = hostport.rpartition(":")
        if not sep or not port.isdigit():
            return {"ok": True, "detail": f"RAY_ADDRESS={address}: not checked"}
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
        except OSError as exc:
            return {"ok": False, "detail": f"Ray at {hostport} does not answer: {exc}"}
        return {"ok": True, "detail": f"Ray at {hostport} answers"}


class RayJobLauncher(Launcher):
    """Ray jobs. The client resolves the address as Ray does: RAY_API_SERVER_ADDRESS, then
    RAY_ADDRESS, then `address` (the service sets the first from --ray-address)."""

    kind = "ray-job"

    def __init__(self, cfg: ServiceConfig) -> None:
        self.address = cfg.ray_address
        self.working_dir = cfg.working_dir
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                from ray.job_submission import JobSubmissionClient

                self._client = JobSubmissionClient(self.address)
            return self._client

    def launch(self, run_id: str, args: list[str]) -> Launch:
        sid = f"{run_id}-{os.urandom(3).hex()}"
        runtime_env: dict[str, Any] = {
            # `ray job stop` SIGKILLs 3 s after SIGTERM by default: too soon for a driver to
            # cancel its attempts, run on_complete and record CANCELLED.
            "env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": "60"}}
        if self.working_dir:
            runtime_env["working_dir"] = self.working_dir
        self.client().submit_job(entrypoint="connector-runtime " + shlex.join(args),
                                 submission_id=sid, runtime_env=runtime_env,
                                 metadata={"connector_runtime_run_id": run_id})
        return Launch(run_id, self.kind, time.time(), submission_id=sid)

    def alive(self, launch: Launch) -> bool:
        if launch.state in _TERMINAL_JOB_STATES:
            return False
        info = self.client().get_job_info(launch.submission_id)
        launch.state = str(getattr(info.status, "value", info.status))
        if launch.state in _TERMINAL_JOB_STATES:
            launch.exit_code = info.driver_exit_code
            return False
        return True

    def stop(self, launch: Launch) -> None:
        if self.alive(launch):
            self.client().stop_job(launch.submission_id)

    def ready(self) -> dict[str, Any]:
        try:
            version = self.client().get_version()
        except Exception as exc:
            with self._lock:
                self._client = None  # make a new one next time (the head may come back)
            return {"ok": False, "detail": f"Ray jobs API does not answer: "
                    f"{type(exc).__name__}: {exc}"}
        return {"ok": True, "detail": f"Ray jobs API answers (version {version})"}


def make_launcher(cfg: ServiceConfig) -> Launcher:
    return RayJobLauncher(cfg) if cfg.launcher == "ray-job" else ProcessLauncher(cfg)
