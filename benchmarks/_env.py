"""The benchmark's surroundings: one Ray instance, a moto S3 server, machine and versions."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

__all__ = ["Environment", "machine_info", "moto_server", "ray_for_benchmarks"]

REPO = Path(__file__).resolve().parent.parent
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class Environment:
    """Where the runtime's stores live during a benchmark run."""

    work_dir: str
    """Scratch folder (file:// store, DBOS SQLite file, probe outputs)."""
    file_store: str
    s3_endpoint: str | None = None
    s3_store: str | None = None
    """s3://bucket/prefix on the moto server, or None when S3 is unavailable."""
    ray_address: str = ""
    """GCS address of the Ray instance (subprocess drivers attach to it)."""
    notes: list[str] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP status means the server is up
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def moto_server(endpoint: str | None = None, log_path: str | None = None) -> Iterator[str]:
    """An S3 endpoint: `endpoint` if given (already running), else a moto server we start.

    The AWS_* variables are set in this process, so a Ray started afterwards hands them to its
    workers, and s3fs/boto3 clients of this process and its children find the endpoint.
    `log_path`: keep the server's request log there (one line per request).
    """
    for key, value in S3_ENV.items():
        os.environ.setdefault(key, value)
    if endpoint:
        os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
        yield endpoint
        return
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = (open(log_path, "wb") if log_path else
           tempfile.NamedTemporaryFile(prefix="bench-moto-", suffix=".log", delete=False))
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not _answers(endpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start on {endpoint}; see {log.name}")
            time.sleep(0.2)
        os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        if not log_path:
            with contextlib.suppress(OSError):
                os.unlink(log.name)


def new_bucket(endpoint: str) -> str:
    import boto3

    name = f"bench-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return name


@contextlib.contextmanager
def ray_for_benchmarks(num_cpus: int = 2) -> Iterator[str]:
    """The Ray instance of the whole run: an initialized one is reused and left running."""
    import ray

    if ray.is_initialized():
        yield ray.get_runtime_context().gcs_address
        return
    if os.environ.get("RAY_ADDRESS"):  # a running cluster (the test session's, a real one)
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False,
                 logging_level="WARNING")
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()  # disconnects this driver; the cluster keeps running
        return
    # workers inherit the driver's environment: the repo on their path, AWS_* for S3
    path = os.environ.get("PYTHONPATH", "")
    if str(REPO) not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), path) if p)
    # address="local": a new instance of our own, never another Ray found on this machine
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@contextlib.contextmanager
def work_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="connector-runtime-bench-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _ram_gib() -> float:
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def _git_commit() -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                             capture_output=True, check=True)
        return out.stdout.strip()
    return "unknown"


def _dirty() -> str:
    """Uncommitted changes in the code being measured (others may be mid-change)."""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(
            ["git", "status", "--porcelain", "--", "runtime", "storage", "application_sdk"],
            cwd=REPO, text=True, capture_output=True, check=True)
        files = [line[3:] for line in out.stdout.splitlines()]
        return (f"yes, {len(files)} file(s): " + ", ".join(files[:8])) if files else "no"
    return "unknown"


def code_state() -> str:
    """Fingerprint of the measured code (tree hashes plus uncommitted diff), to notice a
    change made while the benchmark ran (other engineers share the working tree)."""
    parts = []
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        for folder in ("runtime", "storage", "application_sdk"):
            out = subprocess.run(["git", "rev-parse", f"HEAD:{folder}"], cwd=REPO, text=True,
                                 capture_output=True, check=True)
            parts.append(out.stdout.strip())
        diff = subprocess.run(["git", "diff", "HEAD", "--", "runtime", "storage",
                               "application_sdk"], cwd=REPO, capture_output=True, check=True)
        import hashlib

        parts.append(hashlib.sha1(diff.stdout).hexdigest())
    return "/".join(parts)


def machine_info() -> dict[str, str]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "ram": f"{_ram_gib():.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "load average at start": " / ".join(f"{x:.2f}" for x in load),
        "commit": _git_commit(),
        "uncommitted changes in runtime/, storage/, application_sdk/": _dirty(),
        "python": platform.python_version(),
        "ray": _version("ray"),
        "pydantic": _version("pydantic"),
        "pyarrow": _version("pyarrow"),
        "msgpack": _version("msgpack"),
        "fsspec": _version("fsspec"),
        "s3fs": _version("s3fs"),
        "moto": _version("moto"),
        "dbos": _version("dbos"),
        "sqlalchemy": _version("sqlalchemy"),
    }
