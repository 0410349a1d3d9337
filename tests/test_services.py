"""Proof that the real-service fixtures of tests/services.py work (S3, PostgreSQL, Ray head).

The Ray stop-signal test also pins down the behaviour documented in docs/notes-ray-jobs.md.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import textwrap
import time
import uuid
from pathlib import Path

import adbc_driver_postgresql.dbapi
import boto3
import fsspec
import pytest

from tests.services import RayHead, free_port, free_ports, s3_env

# ------------------------------------------------------------------ ports


def test_free_ports_are_distinct_and_bindable():
    ports = free_ports(8)
    assert len(set(ports)) == 8
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()


# ------------------------------------------------------------------ S3

_buckets_seen: set[str] = set()


def test_s3_environment_points_at_the_server(s3_server):
    assert s3_server.startswith("http://127.0.0.1:")
    assert os.environ["AWS_ENDPOINT_URL_S3"] == s3_server
    assert os.environ["AWS_ENDPOINT_URL"] == s3_server
    assert s3_env()["AWS_ENDPOINT_URL_S3"] == s3_server
    assert boto3.client("s3").list_buckets()["ResponseMetadata"]["HTTPStatusCode"] == 200


@pytest.mark.parametrize("round_", [1, 2])
def test_s3fs_roundtrip_through_moto(round_, s3_bucket, s3_url):
    assert s3_url == f"s3://{s3_bucket}/store"
    assert s3_bucket not in _buckets_seen
    _buckets_seen.add(s3_bucket)

    fs = fsspec.filesystem("s3")  # no options: endpoint and credentials come from the env
    assert fs.ls(s3_bucket) == []  # fresh bucket, no stale listing from the other round
    payload = f"round {round_} ".encode() * 1000
    fs.pipe(f"{s3_url}/a/blob.bin", payload)
    with fsspec.open(f"{s3_url}/note.txt", "w") as fh:
        fh.write("hello s3")

    assert fs.cat(f"{s3_url}/a/blob.bin") == payload
    assert sorted(fs.find(s3_url)) == [
        f"{s3_bucket}/store/a/blob.bin",
        f"{s3_bucket}/store/note.txt",
    ]
    # An independent client sees the objects on the server itself.
    client = boto3.client("s3")
    got = client.get_object(Bucket=s3_bucket, Key="store/note.txt")["Body"].read()
    assert got == b"hello s3"
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert sorted(keys) == ["store/a/blob.bin", "store/note.txt"]


# ------------------------------------------------------------------ PostgreSQL


def test_postgres_url_is_a_postgres_15_server(postgres_url):
    assert postgres_url.startswith("postgresql://postgres@127.0.0.1:")
    with adbc_driver_postgresql.dbapi.connect(postgres_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_setting('server_version_num')::int, current_database()")
        version, dbname = cur.fetchone()
    assert 150000 <= version < 160000
    assert dbname == postgres_url.rsplit("/", 1)[1]


def test_postgres_db_table_roundtrip(postgres_db):
    dbname = postgres_db.rsplit("/", 1)[1]
    with adbc_driver_postgresql.dbapi.connect(postgres_db) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT current_database()")
            assert cur.fetchone() == (dbname,)
            cur.execute("CREATE TABLE items (id BIGINT PRIMARY KEY, name TEXT NOT NULL)")
            cur.executemany(
                "INSERT INTO items VALUES ($1, $2)", [(1, "one"), (2, "two"), (3, "three")]
            )
        conn.commit()
        with conn.cursor() as cur:
            cur.execute("SELECT id, name FROM items WHERE id >= $1 ORDER BY id", (2,))
            assert cur.fetchall() == [(2, "two"), (3, "three")]
            cur.execute("SELECT count(*) FROM items")
            assert cur.fetchone() == (3,)


# ------------------------------------------------------------------ Ray head + ray job


def _submit(
    head: RayHead, workdir: Path, *entrypoint: str, extra=()
) -> subprocess.CompletedProcess:
    """Blocking ``ray job submit`` (tails the logs, exits non-zero when the job fails)."""
    return head.ray_cli(
        "job", "submit", "--address", head.dashboard_url, "--working-dir", str(workdir),
        *extra, "--", *entrypoint,
    )  # fmt: skip


def test_ray_job_submit_succeeds(ray_head, tmp_path):
    assert ray_head.address.startswith("127.0.0.1:")
    assert ray_head.dashboard_url.startswith("http://127.0.0.1:")
    sid = f"hello-{uuid.uuid4().hex[:8]}"
    proc = _submit(
        ray_head, tmp_path, "python", "-c", "print('hello from job')",
        extra=("--submission-id", sid),
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "hello from job" in output
    info = ray_head.job_info(sid)
    assert info["status"] == "SUCCEEDED", info
    assert info["driver_exit_code"] == 0
    assert "hello from job" in ray_head.job_logs(sid)
    status = ray_head.ray_cli("job", "status", sid)  # address from RAY_API_SERVER_ADDRESS
    assert status.returncode == 0 and f"Job '{sid}' succeeded" in status.stdout + status.stderr


def _submit_no_wait(head: RayHead, workdir: Path, *entrypoint: str, extra=()) -> str:
    """``ray job submit --no-wait``; returns the submission id (poll it with the REST API,
    which notices the end of a job sooner than the blocking submit's log tail)."""
    sid = f"job-{uuid.uuid4().hex[:10]}"
    proc = _submit(head, workdir, *entrypoint, extra=("--no-wait", "--submission-id", sid, *extra))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return sid


def test_ray_job_failure_is_reported(ray_head, tmp_path):
    sid = _submit_no_wait(ray_head, tmp_path, "python", "-c", "import sys; sys.exit(3)")
    info = ray_head.wait_job(sid)
    assert info["status"] == "FAILED", info
    assert info["driver_exit_code"] == 3
    assert "failed with exit code 3" in info["message"]
    status = ray_head.ray_cli("job", "status", sid)
    assert f"Job '{sid}' failed" in status.stdout + status.stderr


def test_ray_job_sees_the_s3_server(ray_head, s3_bucket, tmp_path):
    """A job entrypoint inherits the AWS_* variables and reaches moto with a bare s3fs."""
    fs = fsspec.filesystem("s3")
    fs.pipe(f"{s3_bucket}/in.txt", b"written by the test")
    script = (
        "import fsspec; fs = fsspec.filesystem('s3'); "
        f"print('read:', fs.cat('{s3_bucket}/in.txt').decode()); "
        f"fs.pipe('{s3_bucket}/out.txt', b'written by the job')"
    )
    sid = _submit_no_wait(ray_head, tmp_path, "python", "-c", script)
    info = ray_head.wait_job(sid)
    assert info["status"] == "SUCCEEDED", (info, ray_head.job_logs(sid))
    assert "read: written by the test" in ray_head.job_logs(sid)
    fs.invalidate_cache()
    assert fs.cat(f"{s3_bucket}/out.txt") == b"written by the job"


TRAP_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys, time

    out, linger = sys.argv[1], float(sys.argv[2])

    def log(**rec):
        rec["t"] = time.time()
        with open(out, "a") as fh:
            fh.write(json.dumps(rec) + "\\n")

    child = subprocess.Popen([sys.executable, "-c", (
        "import json, signal, sys, time\\n"
        "def h(s, f):\\n"
        "    open(sys.argv[1], 'a').write(json.dumps({'child_signal': s}) + '\\\\n')\\n"
        "    sys.exit(0)\\n"
        "signal.signal(signal.SIGTERM, h); signal.signal(signal.SIGINT, h)\\n"
        "time.sleep(120)\\n"), out])

    def handler(signum, frame):
        log(signal=signal.Signals(signum).name)
        time.sleep(linger)
        log(exited_after_handler=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    with open(f"/proc/{os.getppid()}/cmdline", "rb") as fh:
        parent = fh.read().replace(b"\\0", b" ").decode().strip()
    log(start=True, pid=os.getpid(), ppid=os.getppid(), pgid=os.getpgid(0), sid=os.getsid(0),
        parent=parent, child=child.pid)
    time.sleep(120)
    """
)


def _records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _supervisor_log_mentions(head: RayHead, text: str) -> bool:
    logs = head.temp_dir / "session_latest" / "logs"
    for path in logs.rglob("*"):
        if path.is_file():
            try:
                if text in path.read_text(errors="replace"):
                    return True
            except OSError:
                continue
    return False


def test_ray_job_stop_signals(ray_head, tmp_path):
    """``ray job stop``: SIGTERM (or RAY_JOB_STOP_SIGNAL=SIGINT) to the entrypoint and its
    descendants, SIGKILL after RAY_JOB_STOP_WAIT_TIME_S seconds if still alive."""
    workdir = tmp_path / "wd"
    workdir.mkdir()
    (workdir / "trap.py").write_text(TRAP_SCRIPT)
    run = uuid.uuid4().hex[:8]
    jobs = {
        # Handler never returns in time: expect SIGTERM, then SIGKILL after 1 s.
        "term": (f"term-{run}", {"RAY_JOB_STOP_WAIT_TIME_S": "1"}, "60"),
        # Handler exits after 0.5 s: expect SIGINT and a graceful exit.
        "int": (
            f"int-{run}",
            {"RAY_JOB_STOP_SIGNAL": "SIGINT", "RAY_JOB_STOP_WAIT_TIME_S": "15"},
            "0.5",
        ),
    }
    for key, (sid, env_vars, linger) in jobs.items():
        proc = _submit(
            ray_head, workdir, "python", "trap.py", str(tmp_path / f"{key}.jsonl"), linger,
            extra=("--no-wait", "--submission-id", sid,
                   "--runtime-env-json", json.dumps({"env_vars": env_vars})),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr

    deadline = time.monotonic() + 60
    while not all(any(r.get("start") for r in _records(tmp_path / f"{k}.jsonl")) for k in jobs):
        if time.monotonic() > deadline:
            infos = {k: ray_head.job_info(s) for k, (s, _, _) in jobs.items()}
            pytest.fail(f"trap jobs did not start within 60 s: {infos}")
        time.sleep(0.2)
    time.sleep(0.3)  # let the trap's grandchild install its handlers

    for sid, _, _ in jobs.values():
        stop = ray_head.ray_cli("job", "stop", "--no-wait", sid)
        assert stop.returncode == 0, stop.stdout + stop.stderr
    infos = {k: ray_head.wait_job(sid, timeout=30) for k, (sid, _, _) in jobs.items()}
    assert {k: i["status"] for k, i in infos.items()} == {"term": "STOPPED", "int": "STOPPED"}

    term = _records(tmp_path / "term.jsonl")
    start = term[0]
    # The entrypoint is `/bin/sh -c '<entrypoint>'`, a new session whose leader is the shell.
    assert start["parent"].startswith("/bin/sh -c python trap.py")
    assert start["sid"] == start["pgid"] == start["ppid"]
    assert {"signal": "SIGTERM"} in [{k: v for k, v in r.items() if k != "t"} for r in term]
    assert {"child_signal": signal.SIGTERM.value} in term  # descendants are signalled too
    assert not any(r.get("exited_after_handler") for r in term)
    assert not _alive(start["pid"]), "entrypoint should have been SIGKILLed"
    assert _supervisor_log_mentions(
        ray_head, f"terminate job {jobs['term'][0]} through SIGTERM has timed out after 1 seconds"
    )

    intr = _records(tmp_path / "int.jsonl")
    assert [r["signal"] for r in intr if "signal" in r] == ["SIGINT"]
    assert {"child_signal": signal.SIGINT.value} in intr
    assert any(r.get("exited_after_handler") for r in intr)
    assert _supervisor_log_mentions(
        ray_head, f"Job {jobs['int'][0]} has been terminated gracefully with SIGINT"
    )
