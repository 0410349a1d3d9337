"""Fixtures of the runtime's tests: one real local Ray for the session, CLI runner, stores."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray instance shared by the session (2 CPUs, like the machine)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",  # never attach to another Ray that happens to run here
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
        )
    yield ray.get_runtime_context().gcs_address


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(ray_session, tmp_path):
    """Run `connector-runtime ...` as users do, in a subprocess attached to the session's Ray."""

    def run(
        *args: str, timeout: float = 120, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> CliResult:
        full_env = {
            **os.environ,
            "RAY_ADDRESS": ray_session,
            "PYTHONPATH": str(REPO),
            **(env or {}),
        }
        proc = subprocess.run(
            [sys.executable, "-m", "runtime", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            cwd=str(cwd or REPO),
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run


@pytest.fixture
def file_store(tmp_path) -> str:
    return str(tmp_path / "store")
