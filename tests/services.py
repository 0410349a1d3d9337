"""Real services for the test suite: a moto S3 server, PostgreSQL 15 and a Ray head node.

Loaded as a pytest plugin by the root ``conftest.py`` (``pytest_plugins = ["tests.services"]``).
Everything listens on 127.0.0.1 only; nothing here is a mock.

Fixtures
--------
``s3_server`` (session)    endpoint URL ``http://127.0.0.1:PORT`` of a moto S3 server.
``s3_bucket`` (function)   name of a fresh, empty bucket created on that server.
``s3_url`` (function)      ``"s3://<s3_bucket>/store"``.
``postgres_url`` (session) ``postgresql://postgres@127.0.0.1:PORT/connector_runtime_test``.
``postgres_db`` (function) URI of a fresh database, dropped after the test.
``ray_head`` (session)     :class:`RayHead` (``address``, ``dashboard_url``, ``env`` ...).

Helpers others may import: :func:`free_port`, :func:`free_ports`, :func:`s3_env`.

S3 configuration (how a bare ``fsspec.filesystem("s3")`` reaches moto)
---------------------------------------------------------------------
``pytest_configure`` runs before any test or fixture, so before any ``ray.init()`` or
``ray start``. It reserves a free port and writes into ``os.environ``::

    AWS_ACCESS_KEY_ID=testing  AWS_SECRET_ACCESS_KEY=testing  AWS_DEFAULT_REGION=us-east-1
    AWS_ENDPOINT_URL_S3=http://127.0.0.1:PORT  AWS_ENDPOINT_URL=http://127.0.0.1:PORT

and removes AWS_PROFILE, AWS_SESSION_TOKEN, AWS_SECURITY_TOKEN and
AWS_IGNORE_CONFIGURED_ENDPOINT_URLS (the last one would make botocore ignore the endpoint
variables). Verified with s3fs 2026.9 / aiobotocore 3.10 / botocore 1.43: botocore's
"service-specific endpoint" support reads AWS_ENDPOINT_URL_S3, and failing that
AWS_ENDPOINT_URL, so ``fsspec.filesystem("s3")`` and ``boto3.client("s3")`` with no options
both talk to moto (each variable alone was tried and is enough). Nothing s3fs-specific is needed.

Processes inherit the environment: a local ``ray.init()`` made by a test starts its raylet
and workers from this process, and :func:`ray_head` passes ``os.environ`` to ``ray start``, so
tasks, actors and job entrypoints see the same variables (``test_services.py`` proves it for
a job). A Ray cluster started *outside* pytest does not: pass
``runtime_env={"env_vars": s3_env()}`` to it.

The moto server itself is a subprocess (``python -m moto.server``), started at the first use
of ``s3_server`` and terminated at session end. The port is held by a bound socket from
``pytest_configure`` until the server starts, so nothing else (e.g. Ray's random worker ports)
can take it in between. moto keeps everything in memory.

To use another S3-compatible server instead, set ``CONNECTOR_RUNTIME_TEST_S3_ENDPOINT=http://...``
before pytest: no moto server is started, the endpoint variables point there, and credentials
and region are only defaulted (``testing``/``us-east-1``) where not already set.

fsspec caches ``S3FileSystem`` instances (and each instance caches listings). ``s3_bucket``
calls ``s3fs.S3FileSystem.clear_instance_cache()`` before and after each test, so a test never
sees an instance (or a directory listing) left behind by another one.

PostgreSQL
----------
Server binaries are looked up in ``$CONNECTOR_RUNTIME_PG_BINDIR``, ``/usr/lib/postgresql/15/bin``,
``pg_config --bindir``, then ``/usr/lib/postgresql/*/bin``; when none has ``initdb`` the fixture
*fails* telling you to ``apt-get install -y postgresql-15``. initdb/postgres refuse to run as
root, so when running as root the server binaries are run through ``runuser -u USER --`` where
USER is ``postgres`` if that account exists (Debian's postgresql-common creates it) and
``nobody`` otherwise; no account is ever created. The data directory lives in a fresh
``/tmp/pgtest-*`` directory chowned to USER (short, so the unix socket path fits). Auth is
``trust``, the server listens on 127.0.0.1 only, with fsync off. Clients connect over TCP as
superuser ``postgres`` (the name given to ``initdb -U``, whatever the OS account).

Ray head node (``ray_head``)
----------------------------
``ray start --head --block`` runs from the venv's bin dir, in its own session, with every port
it lets us choose set to a distinct free (ephemeral-range) port: --port, --dashboard-port,
--ray-client-server-port, --node-manager-port, --object-manager-port,
--dashboard-agent-listen-port, --dashboard-agent-grpc-port, --runtime-env-agent-port,
--metrics-export-port, plus the env vars AUTOSCALER_METRIC_PORT and DASHBOARD_METRIC_PORT (whose
defaults 44217/44227 are fixed and would clash with a local ``ray.init()``).
``--min-worker-port 0 --max-worker-port 0`` makes workers bind OS-chosen ports instead of the
default 10002-19999 range a local ``ray.init()`` uses. ``--temp-dir /tmp/rayhead-XXXXXXXX`` keeps
its session dir (and its ``ray_current_cluster`` file) away from /tmp/ray, so a plain
``ray.init()`` in the test process does not attach to this head, and stays short enough for
Ray's unix socket paths (107 bytes).

Ray rewrites ``--node-ip-address 127.0.0.1`` to the machine's primary address (e.g. the eth0
address) on Linux; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` in the head's environment makes it
keep 127.0.0.1 (single-node mode, as on macOS), so every socket of the head is on loopback.

Stopping: ``ray stop`` has no address filter in 2.60 and kills *every* Ray process on the
machine, so it is never used. Teardown sends SIGTERM to the ``ray start --block`` process (it
drains and shuts down its own children, ~1-5 s), then SIGKILLs whatever is left among the
processes of its session and the processes carrying this head's marker variable
``CONNECTOR_RUNTIME_TEST_RAY_HEAD`` in their environment (job entrypoints run in sessions of
their own but inherit it).

Token auth (Ray 2.60, verified): the head is started with ``RAY_AUTH_MODE=token`` and a fresh
random ``RAY_AUTH_TOKEN``; ``RayHead.env`` carries both. A client (``ray job ...`` CLI, the
JobSubmissionClient) only sends a token when ``RAY_AUTH_MODE=token`` is set in *its*
environment; the token comes from ``RAY_AUTH_TOKEN``, else the file named by
``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``. With a token but no mode the CLI fails with
"Authentication required: Unauthorized: Missing authentication token". HTTP clients send
``Authorization: Bearer <token>`` (401 without, 403 with a wrong one; /api/version is open).
Without RAY_AUTH_MODE, ``ray start --head`` enables token auth only if a token already exists
(e.g. ~/.ray/auth_token, which a local ``ray.init()`` generates) and otherwise runs without auth,
so the explicit setting keeps this fixture independent of what ran before.

Ray jobs: how ``ray job stop`` stops an entrypoint (Ray 2.60, verified in test_services.py)
----------------------------------------------------------------------------------------
The entrypoint runs as ``/bin/sh -c '<entrypoint>'`` started with ``start_new_session=True``
(so the shell is a session/process-group leader; python is its child in that group).
``ray job stop`` makes the JobSupervisor actor send the stop signal with ``os.kill`` to the shell
*and each of its descendants* (a psutil snapshot, not ``killpg``): SIGTERM by default, SIGINT if
``RAY_JOB_STOP_SIGNAL=SIGINT``. It then waits ``RAY_JOB_STOP_WAIT_TIME_S`` seconds (default 3,
an integer) and SIGKILLs the same processes if any is still alive. Both variables are read in
the supervisor actor's environment, which includes the job's ``runtime_env`` ``env_vars``, so set
them per job with ``--runtime-env-json '{"env_vars": {"RAY_JOB_STOP_SIGNAL": "SIGINT",
"RAY_JOB_STOP_WAIT_TIME_S": "30"}}'`` (or in the head's environment for all jobs). The job
ends STOPPED whether the process exits by itself on the signal or is killed. See
docs/notes-ray-jobs.md for status/log commands.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
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
from pathlib import Path
from typing import Any

import pytest

LOOPBACK = "127.0.0.1"
S3_ENDPOINT_OVERRIDE_VAR = "CONNECTOR_RUNTIME_TEST_S3_ENDPOINT"
PG_BINDIR_VAR = "CONNECTOR_RUNTIME_PG_BINDIR"
RAY_HEAD_MARKER_VAR = "CONNECTOR_RUNTIME_TEST_RAY_HEAD"
TERMINAL_JOB_STATUSES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})

S3_ENV_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
)


# --------------------------------------------------------------------------- ports


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free when asked (the kernel's choice).

    The port is released before returning, so bind it soon. For several ports that must be
    distinct from each other use :func:`free_ports`.
    """
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct free TCP ports on 127.0.0.1 (all held open while choosing)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            ports.append(sock.getsockname()[1])
        return ports


def _wait_until(predicate, timeout: float, what: str, interval: float = 0.2, detail=None) -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail clearly after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            extra = f"\n{detail()}" if detail else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return f"--- last output of {path} ---\n{text[-chars:]}"


def _with_pdeathsig(cmd: list[str]) -> list[str]:
    """Wrap ``cmd`` so that it gets SIGTERM if the pytest process dies (``setpriv
    --pdeathsig``, util-linux: an exec wrapper, safe with threads unlike a preexec_fn)."""
    setpriv = shutil.which("setpriv")
    if sys.platform != "linux" or not setpriv:
        return cmd
    return [setpriv, "--pdeathsig", "TERM", "--", *cmd]


# --------------------------------------------------------------------------- S3 (moto)


@dataclass
class _S3Config:
    endpoint: str
    managed: bool  # True: we start moto on `port`; False: external endpoint from the env var
    port: int | None = None
    reservation: socket.socket | None = None


_s3_config: _S3Config | None = None


def s3_env() -> dict[str, str]:
    """The AWS_* variables pointing at the test S3 endpoint (e.g. for a Ray ``runtime_env``)."""
    return {key: os.environ[key] for key in S3_ENV_KEYS if key in os.environ}


def pytest_configure(config: pytest.Config) -> None:
    """Point every AWS client of this process (and its future children) at the test S3."""
    global _s3_config
    if _s3_config is not None:
        return
    external = os.environ.get(S3_ENDPOINT_OVERRIDE_VAR, "").strip()
    if external:
        _s3_config = _S3Config(endpoint=external.rstrip("/"), managed=False)
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    else:
        # Hold the port with a bound (not listening) socket until moto starts, so that no
        # other process gets it from the kernel in the meantime.
        reservation = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        reservation.bind((LOOPBACK, 0))
        port = reservation.getsockname()[1]
        _s3_config = _S3Config(
            endpoint=f"http://{LOOPBACK}:{port}", managed=True, port=port, reservation=reservation
        )
        os.environ["AWS_ACCESS_KEY_ID"] = "testing"
        os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
        os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
        for key in (
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_SECURITY_TOKEN",
            "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
        ):
            os.environ.pop(key, None)
    os.environ["AWS_ENDPOINT_URL_S3"] = _s3_config.endpoint
    os.environ["AWS_ENDPOINT_URL"] = _s3_config.endpoint


def _http_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP status means the server is up
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Session: endpoint URL (``http://127.0.0.1:PORT``) of a running S3 server.

    Starts ``python -m moto.server`` on the port chosen in ``pytest_configure`` (the one the
    AWS_ENDPOINT_URL* variables already name) and stops it at session end. With
    CONNECTOR_RUNTIME_TEST_S3_ENDPOINT set, only checks that endpoint answers.
    """
    cfg = _s3_config
    assert cfg is not None, "tests.services.pytest_configure did not run"
    if not cfg.managed:
        _wait_until(lambda: _http_answers(cfg.endpoint), 30, f"S3 endpoint {cfg.endpoint}")
        yield cfg.endpoint
        return

    log_dir = Path(tempfile.mkdtemp(prefix="moto-"))
    log_path = log_dir / "moto_server.log"
    if cfg.reservation is not None:
        cfg.reservation.close()
        cfg.reservation = None
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            _with_pdeathsig(
                [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(cfg.port)]
            ),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=log_dir,
        )

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(
                f"moto server exited with code {proc.returncode} (port {cfg.port} taken?)\n"
                + _tail(log_path)
            )
        return _http_answers(cfg.endpoint)

    try:
        _wait_until(ready, 60, f"moto S3 server at {cfg.endpoint}", detail=lambda: _tail(log_path))
        yield cfg.endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(log_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def _s3_client(s3_server: str):
    import boto3

    return boto3.client("s3", endpoint_url=s3_server)


def _clear_s3fs_cache() -> None:
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3_bucket(_s3_client) -> Iterator[str]:
    """Function: name of a fresh empty bucket (``t-<12 hex>``) on the test S3 server.

    s3fs's instance cache is cleared before and after the test; the bucket and its objects
    are deleted afterwards (best effort).
    """
    name = f"t-{uuid.uuid4().hex[:12]}"
    _s3_client.create_bucket(Bucket=name)
    _clear_s3fs_cache()
    try:
        yield name
    finally:
        _clear_s3fs_cache()
        with contextlib.suppress(Exception):
            paginator = _s3_client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=name):
                keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
                if keys:
                    _s3_client.delete_objects(Bucket=name, Delete={"Objects": keys})
            _s3_client.delete_bucket(Bucket=name)


@pytest.fixture
def s3_url(s3_bucket: str) -> str:
    """Function: ``"s3://<s3_bucket>/store"`` (a prefix in a fresh bucket; nothing written)."""
    return f"s3://{s3_bucket}/store"


# --------------------------------------------------------------------------- PostgreSQL

PG_SUPERUSER = "postgres"
PG_INSTALL_HINT = (
    "PostgreSQL 15 server binaries (initdb, pg_ctl, postgres) are needed for the postgres "
    "fixtures. Install them with:  apt-get update && apt-get install -y postgresql-15  "
    f"(or point {PG_BINDIR_VAR} at a directory containing initdb)."
)


def _pg_bindir() -> Path | None:
    candidates: list[Path] = []
    if os.environ.get(PG_BINDIR_VAR):
        candidates.append(Path(os.environ[PG_BINDIR_VAR]))
    candidates.append(Path("/usr/lib/postgresql/15/bin"))
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(out.stdout.strip()))
    candidates.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    for cand in candidates:
        if all((cand / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres", "psql")):
            return cand
    return None


def _pg_run_as() -> tuple[list[str], pwd.struct_passwd | None]:
    """Command prefix to run server binaries unprivileged, and the account used (if root)."""
    if os.geteuid() != 0:
        return [], None
    for name in ("postgres", "nobody"):
        try:
            account = pwd.getpwnam(name)
        except KeyError:
            continue
        runuser = shutil.which("runuser")
        if runuser:
            return [runuser, "-u", name, "--"], account
        setpriv = shutil.which("setpriv")
        if setpriv:
            return [
                setpriv,
                f"--reuid={account.pw_uid}",
                f"--regid={account.pw_gid}",
                "--clear-groups",
                "--",
            ], account
        pytest.fail("running as root but neither runuser nor setpriv (util-linux) is available")
    pytest.fail("running as root and there is no 'postgres' or 'nobody' account to run initdb")


@dataclass
class _PgServer:
    host: str
    port: int
    bindir: Path
    env: dict[str, str]

    def uri(self, dbname: str) -> str:
        return f"postgresql://{PG_SUPERUSER}@{self.host}:{self.port}/{dbname}"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        proc = subprocess.run(
            [
                str(self.bindir / "psql"),
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                PG_SUPERUSER,
                "-d",
                dbname,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"psql {sql!r} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout


def _run_checked(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{what} failed with exit code {proc.returncode}: {' '.join(cmd)}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


@pytest.fixture(scope="session")
def _pg_server() -> Iterator[_PgServer]:
    bindir = _pg_bindir()
    if bindir is None:
        pytest.fail(PG_INSTALL_HINT)
    prefix, account = _pg_run_as()
    base = Path(tempfile.mkdtemp(prefix="pgtest-", dir="/tmp"))
    if account is not None:
        os.chown(base, account.pw_uid, account.pw_gid)
    base.chmod(0o700)
    data = base / "data"
    log_path = base / "server.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    run = {"env": env, "cwd": base, "timeout": 120}
    pg_ctl = [*prefix, str(bindir / "pg_ctl"), "-D", str(data)]
    started = False
    try:
        _run_checked(
            [
                *prefix,
                str(bindir / "initdb"),
                *("-D", str(data), "-U", PG_SUPERUSER, "-A", "trust"),
                *("-E", "UTF8", "--locale=C", "--no-sync"),
            ],
            "initdb",
            **run,
        )
        server_opts = (
            f"-k {base} -c listen_addresses={LOOPBACK} -p {port} "
            "-c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        )
        try:
            _run_checked(
                [*pg_ctl, "-l", str(log_path), "-w", "-t", "60", "-o", server_opts, "start"],
                "pg_ctl start",
                **run,
            )
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{_tail(log_path)}") from None
        started = True

        def ready() -> bool:
            proc = subprocess.run(
                [str(bindir / "pg_isready"), "-h", LOOPBACK, "-p", str(port), "-t", "2"],
                capture_output=True,
                env=env,
                timeout=30,
            )
            return proc.returncode == 0

        _wait_until(ready, 60, f"PostgreSQL on {LOOPBACK}:{port}", detail=lambda: _tail(log_path))
        yield _PgServer(host=LOOPBACK, port=port, bindir=bindir, env=env)
    finally:
        if started:
            subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True, **run)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(_pg_server: _PgServer) -> str:
    """Session: ``postgresql://postgres@127.0.0.1:PORT/connector_runtime_test``.

    A database on a private PostgreSQL 15 server (trust auth, no password) that lives for the
    whole session and is shared by every test that uses it; usable as is with
    ``adbc_driver_postgresql.dbapi.connect(uri)``. Fails (never skips) when the server
    binaries are missing.
    """
    _pg_server.psql("CREATE DATABASE connector_runtime_test")
    return _pg_server.uri("connector_runtime_test")


@pytest.fixture
def postgres_db(_pg_server: _PgServer) -> Iterator[str]:
    """Function: URI of a fresh, empty database ``t_<12 hex>`` on the session server.

    Dropped after the test (``WITH (FORCE)``, so connections left open do not block it).
    """
    name = f"t_{uuid.uuid4().hex[:12]}"
    _pg_server.psql(f"CREATE DATABASE {name}")
    try:
        yield _pg_server.uri(name)
    finally:
        _pg_server.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# --------------------------------------------------------------------------- Ray head


@dataclass
class RayHead:
    """A running Ray head node started with ``ray start --head`` (see the module docstring).

    ``address``: GCS address ``"127.0.0.1:PORT"`` (for ``ray.init(address=...)`` from a process
    with ``env``). ``dashboard_url``: ``"http://127.0.0.1:DPORT"`` (jobs API, ``ray job
    --address``). ``env``: full environment for a subprocess running ``ray job ...`` against
    this head: ``os.environ`` plus RAY_AUTH_MODE=token, RAY_AUTH_TOKEN, RAY_API_SERVER_ADDRESS
    (= dashboard_url, so ``--address`` may be omitted), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 and
    the venv's bin dir first on PATH (the head has the same PATH, so a job entrypoint
    ``python ...`` is the venv's interpreter); RAY_ADDRESS is removed. ``token``: the auth
    token. ``temp_dir``: the head's ``--temp-dir`` (logs under ``session_latest/logs``).
    ``log_path``: output of ``ray start``. ``ports``: every port chosen for it, by role.
    """

    address: str
    dashboard_url: str
    env: dict[str, str]
    token: str
    temp_dir: Path
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)

    def ray_cli(self, *args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
        """Run ``ray <args>`` from the venv with ``env``; returns the completed process."""
        return subprocess.run(
            [_ray_executable(), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            **kwargs,
        )

    def api(self, path: str, method: str = "GET", body: dict | None = None) -> Any:
        """Call the dashboard REST API (with the bearer token); returns the decoded JSON."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.dashboard_url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    def job_info(self, submission_id: str) -> dict:
        """``GET /api/jobs/<id>``: dict with ``status``, ``message``, ``driver_exit_code``..."""
        return self.api(f"/api/jobs/{submission_id}")

    def job_logs(self, submission_id: str) -> str:
        """The job's captured stdout+stderr so far (same text as ``ray job logs <id>``)."""
        return self.api(f"/api/jobs/{submission_id}/logs")["logs"]

    def wait_job(
        self, submission_id: str, timeout: float = 60, statuses=TERMINAL_JOB_STATUSES
    ) -> dict:
        """Poll until the job's status is one of ``statuses``; return its info dict."""
        last: dict = {}

        def reached() -> bool:
            last.update(self.job_info(submission_id))
            return last.get("status") in statuses

        _wait_until(
            reached,
            timeout,
            f"Ray job {submission_id} to reach {sorted(statuses)}",
            interval=0.3,
            detail=lambda: f"last info: {last}",
        )
        return dict(last)


def _ray_executable() -> str:
    candidate = Path(sys.executable).parent / "ray"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("ray")
    if not found:
        raise RuntimeError("cannot find the `ray` CLI next to the Python interpreter or on PATH")
    return found


def pids_with_env(var: str, value: str, *, zombies: bool = True) -> list[int]:
    """Pids of processes (not this one) whose environment has `var=value`: what a fixture
    started, found again to end it; `zombies=False` leaves out processes already dead."""
    needle = f"{var}={value}".encode()
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                found = needle in fh.read().split(b"\0")
            if found and not zombies:
                with open(f"/proc/{entry.name}/stat") as fh:
                    found = fh.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            continue
        if found:
            pids.append(int(entry.name))
    return pids


def _marked_pids(marker: str) -> list[int]:
    """Pids whose environment has RAY_HEAD_MARKER_VAR=marker (i.e. started by this head)."""
    return pids_with_env(RAY_HEAD_MARKER_VAR, marker)


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _stop_ray_head(proc: subprocess.Popen, marker: str) -> None:
    def leftovers() -> list[int]:
        return [p for p in {*_session_pids(proc.pid), *_marked_pids(marker)} if _alive(p)]

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        _wait_until(lambda: proc.poll() is not None and not leftovers(), 30, "Ray head to stop")
    for pid in leftovers():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    with contextlib.suppress(TimeoutError):
        _wait_until(lambda: not leftovers(), 10, "Ray head processes to die")


@pytest.fixture(scope="session")
def ray_head() -> Iterator[RayHead]:
    """Session: a :class:`RayHead` for a real single-node Ray cluster on 127.0.0.1.

    Started lazily on first use with ``ray start --head --block --num-cpus 2`` on free,
    non-default ports and its own ``--temp-dir``; ready when the dashboard's jobs API answers
    an authenticated request and the job agent listens. Only this head's processes are killed
    at session end (never ``ray stop``), so a ``ray.init()`` instance of the test session is
    left alone.
    """
    names = (
        "gcs",
        "dashboard",
        "client_server",
        "node_manager",
        "object_manager",
        "dashboard_agent_listen",
        "dashboard_agent_grpc",
        "runtime_env_agent",
        "metrics_export",
        "autoscaler_metrics",
        "dashboard_metrics",
    )
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    temp_dir = Path(tempfile.mkdtemp(prefix="rayhead-", dir="/tmp"))
    # Ray's session dir adds ~60 chars + "/sockets/plasma_store"; AF_UNIX paths max 107 bytes.
    assert len(str(temp_dir)) <= 40, f"Ray temp dir path too long for unix sockets: {temp_dir}"
    log_path = temp_dir / "ray_start.log"
    token = secrets.token_hex(16)
    marker = temp_dir.name

    base_env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_API_SERVER_ADDRESS")
    }
    # Job entrypoints run through /bin/sh with the head's PATH: make `python` the venv's.
    venv_bin = str(Path(_ray_executable()).parent)
    base_env["PATH"] = os.pathsep.join([venv_bin, base_env.get("PATH", os.defpath)])
    base_env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_USAGE_STATS_ENABLED="0",
    )
    head_env = dict(base_env)
    head_env.update(
        {
            RAY_HEAD_MARKER_VAR: marker,
            "AUTOSCALER_METRIC_PORT": str(ports["autoscaler_metrics"]),
            "DASHBOARD_METRIC_PORT": str(ports["dashboard_metrics"]),
        }
    )
    dashboard_url = f"http://{LOOPBACK}:{ports['dashboard']}"
    cmd = [
        _ray_executable(),
        "start",
        "--head",
        "--block",
        "--node-ip-address", LOOPBACK,
        "--port", str(ports["gcs"]),
        "--dashboard-host", LOOPBACK,
        "--dashboard-port", str(ports["dashboard"]),
        "--ray-client-server-port", str(ports["client_server"]),
        "--node-manager-port", str(ports["node_manager"]),
        "--object-manager-port", str(ports["object_manager"]),
        "--dashboard-agent-listen-port", str(ports["dashboard_agent_listen"]),
        "--dashboard-agent-grpc-port", str(ports["dashboard_agent_grpc"]),
        "--runtime-env-agent-port", str(ports["runtime_env_agent"]),
        "--metrics-export-port", str(ports["metrics_export"]),
        "--min-worker-port", "0",
        "--max-worker-port", "0",
        "--num-cpus", "2",
        "--temp-dir", str(temp_dir),
        "--disable-usage-stats",
        "--log-style", "record",
        "--log-color", "false",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            _with_pdeathsig(cmd),
            env=head_env,
            cwd=temp_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    head = RayHead(
        address=f"{LOOPBACK}:{ports['gcs']}",
        dashboard_url=dashboard_url,
        env={**base_env, "RAY_API_SERVER_ADDRESS": dashboard_url},
        token=token,
        temp_dir=temp_dir,
        log_path=log_path,
        ports=ports,
    )

    def jobs_api_ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(
                f"`ray start --head` exited with code {proc.returncode}\n" + _tail(log_path)
            )
        try:
            head.api("/api/jobs/")
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise RuntimeError(f"Ray head rejected our auth token: HTTP {exc.code}") from exc
            return False
        except (OSError, ValueError):
            return False
        with socket.socket() as sock:
            sock.settimeout(1)
            return sock.connect_ex((LOOPBACK, ports["dashboard_agent_listen"])) == 0

    try:
        _wait_until(
            jobs_api_ready, 120, f"Ray head jobs API at {dashboard_url}",
            interval=0.5, detail=lambda: _tail(log_path),
        )  # fmt: skip
        yield head
    finally:
        _stop_ray_head(proc, marker)
        shutil.rmtree(temp_dir, ignore_errors=True)
