"""A private PostgreSQL 15 server for the SQL benchmark, started the way the test fixture does.

The binaries are found, and run as an unprivileged account when we are root, with the plain
helpers of `tests/services.py` (`_pg_bindir`, `_pg_run_as`, ...): the fixture itself is a pytest
generator and cannot be entered outside a test session, so only its start/stop sequence is
repeated here. The server listens on 127.0.0.1 on a free port, trusts local connections, and
runs with fsync off (loading 5 M rows is not what is measured; reads are the same either way).
Everything lives in a fresh ``/tmp/pgbench-*`` folder that is removed on exit. ``pg_ctl``
daemonizes the server, so a benchmark killed with SIGKILL leaves it running: stop it with
``pg_ctl -D /tmp/pgbench-*/data stop`` (as the account that runs it) and remove the folder.

    with postgres_server() as server:     # None when the server binaries are not installed
        url = server.create_database("bench")
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PgServer", "postgres_server"]


@dataclass(frozen=True)
class PgServer:
    host: str
    port: int
    bindir: Path
    env: dict[str, str]
    user: str

    def url(self, dbname: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def create_database(self, dbname: str) -> str:
        """A fresh database ``dbname`` (dropped first if it exists); returns its URL."""
        for sql in (f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)", f"CREATE DATABASE {dbname}"):
            subprocess.run(
                [str(self.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                 "-h", self.host, "-p", str(self.port), "-U", self.user, "-d", "postgres",
                 "-c", sql],
                capture_output=True, text=True, timeout=120, env=self.env, check=True,
            )
        return self.url(dbname)


@contextlib.contextmanager
def postgres_server() -> Iterator[PgServer | None]:
    """A running server for the ``with`` block, or None when PostgreSQL is not installed."""
    from tests.services import (
        LOOPBACK,
        PG_SUPERUSER,
        _pg_bindir,
        _pg_run_as,
        _run_checked,
        _tail,
        _wait_until,
        free_port,
    )

    bindir = _pg_bindir()
    if bindir is None:
        yield None
        return
    prefix, account = _pg_run_as()
    base = Path(tempfile.mkdtemp(prefix="pgbench-", dir="/tmp"))
    if account is not None:
        os.chown(base, account.pw_uid, account.pw_gid)
    base.chmod(0o700)
    data, log_path, port = base / "data", base / "server.log", free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    run = {"env": env, "cwd": base, "timeout": 120}
    pg_ctl = [*prefix, str(bindir / "pg_ctl"), "-D", str(data)]
    started = False
    try:
        _run_checked([*prefix, str(bindir / "initdb"), "-D", str(data), "-U", PG_SUPERUSER,
                      "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"], "initdb", **run)
        options = (f"-k {base} -c listen_addresses={LOOPBACK} -p {port} -c fsync=off "
                   "-c full_page_writes=off -c synchronous_commit=off -c shared_buffers=512MB "
                   "-c max_wal_size=4GB")
        _run_checked([*pg_ctl, "-l", str(log_path), "-w", "-t", "60", "-o", options, "start"],
                     "pg_ctl start", **run)
        started = True

        def ready() -> bool:
            probe = [str(bindir / "pg_isready"), "-h", LOOPBACK, "-p", str(port), "-t", "2"]
            return subprocess.run(probe, capture_output=True, env=env, timeout=30).returncode == 0

        _wait_until(ready, 60, f"PostgreSQL on {LOOPBACK}:{port}", detail=lambda: _tail(log_path))
        yield PgServer(host=LOOPBACK, port=port, bindir=bindir, env=env, user=PG_SUPERUSER)
    finally:
        if started:
            subprocess.run([*pg_ctl, "-m", "fast", "stop"], capture_output=True, **run)
        shutil.rmtree(base, ignore_errors=True)
