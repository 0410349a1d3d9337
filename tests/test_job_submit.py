"""The `ray job submit` path, end to end, with the commands users type.

A real head node (`ray_head`: `ray start --head`, dashboard on 127.0.0.1, token auth) and a
real moto S3 server (`s3_bucket`, `s3_url`). The job's working dir is `tests/apps/jobapp/`
(a self-contained app, `my_app:MyApp`) and its entrypoint is the CLI exactly as documented in
docs/cluster.md: `connector-runtime run my_app:MyApp --input ... --run-id R --store s3://...`.
The head runs with the venv's bin dir first on PATH (like a node where this package is
installed), so the `connector-runtime` console script resolves there.

Everything the tests check lives outside the job's processes: the job's status and logs
(Jobs REST API, same as `ray job status/logs`), the run record and journal in S3, and one
marker object per task execution that the app writes into the bucket.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import fsspec
import msgpack
import pyarrow.parquet as pq

from storage import RunStatus, RunStore, open_store
from tests.services import RayHead

APP_DIR = Path(__file__).resolve().parent / "apps" / "jobapp"
APP = "my_app:MyApp"
APP_NAME = "MyApp"
CLI = str(Path(sys.executable).parent / "connector-runtime")


def _entrypoint(payload: dict, run_id: str, store: str) -> list[str]:
    return ["connector-runtime", "run", APP, "--input", json.dumps(payload),
            "--run-id", run_id, "--store", store]


def _submit(head: RayHead, entrypoint: list[str], *, sid: str, wait: bool = False,
            env_vars: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`ray job submit --address URL --working-dir tests/apps/jobapp [...] -- <entrypoint>`."""
    extra = ["--submission-id", sid]
    if not wait:
        extra.append("--no-wait")
    if env_vars:
        extra += ["--runtime-env-json", json.dumps({"env_vars": env_vars})]
    proc = head.ray_cli("job", "submit", "--address", head.dashboard_url,
                        "--working-dir", str(APP_DIR), *extra, "--", *entrypoint)
    if not wait:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _sid(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:8]}"


def _markers(bucket: str, prefix: str) -> list[dict]:
    """Every `work` execution so far (one marker object each, written when it started)."""
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    paths = fs.glob(f"{bucket}/{prefix}/markers/*.json")
    return [json.loads(blob) for blob in fs.cat(paths).values()] if paths else []


def _marker_count(bucket: str, prefix: str) -> int:
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    return len(fs.glob(f"{bucket}/{prefix}/markers/*.json"))


def _runs(store: str, run_id: str) -> RunStore:
    return RunStore(open_store(store), APP_NAME, run_id)


def _local_cli(*args: str) -> subprocess.CompletedProcess:
    """`connector-runtime ...` on the test machine (the user's workstation)."""
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def _status(run_id: str, store: str) -> dict:
    proc = _local_cli("status", run_id, "--store", store, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_submit_runs_the_app_and_succeeds(ray_head, s3_bucket, s3_url):
    payload = {"bucket": s3_bucket, "prefix": "data", "n": 8}
    run_id = "nightly-ok"
    sid = _sid("ok")
    proc = _submit(ray_head, _entrypoint(payload, run_id, s3_url), sid=sid, wait=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # blocking submit: 0 = SUCCEEDED

    info = ray_head.job_info(sid)
    assert info["status"] == "SUCCEEDED", info
    assert info["driver_exit_code"] == 0
    logs = ray_head.job_logs(sid)
    expected = {"count": 8, "total": sum(i * i for i in range(8)),
                "result": f"s3://{s3_bucket}/data/result.parquet"}
    # The Output is the last line the driver prints on stdout, as JSON.
    last_json = [line for line in logs.splitlines() if line.startswith("{")][-1]
    assert json.loads(last_json) == expected, logs
    assert f"run {run_id} (MyApp) in {s3_url}" in logs

    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    with fs.open(expected["result"], "rb") as fh:
        table = pq.read_table(fh)
    assert table.to_pydict() == {"index": list(range(8)), "square": [i * i for i in range(8)]}
    assert sorted(m["index"] for m in _markers(s3_bucket, "data")) == list(range(8))

    status = _status(run_id, s3_url)
    assert status["state"] == "COMPLETED", status
    assert status["app"] == APP_NAME
    assert status["tasks_done"] >= 9  # 8 work + write_result (+ cleanup tasks)


def test_job_stop_cancels_the_run_cleanly(ray_head, s3_bucket, s3_url):
    n = 40  # 6 s of work on 2 CPUs: the stop lands after 2 have started, long before the end
    payload = {"bucket": s3_bucket, "prefix": "data", "n": n, "sleep_s": 0.3}
    run_id = "nightly-stop"
    sid = _sid("stop")
    entrypoint = _entrypoint(payload, run_id, s3_url)
    # Ray SIGKILLs the driver RAY_JOB_STOP_WAIT_TIME_S (default 3) seconds after SIGTERM; the
    # cancellation (stop attempts, run on_complete's tasks, write the status) needs more than
    # that on a busy machine. cluster.yaml sets 60 on the head; here it is set per job.
    _submit(ray_head, entrypoint, sid=sid, env_vars={"RAY_JOB_STOP_WAIT_TIME_S": "30"})
    deadline = time.monotonic() + 90
    while _marker_count(s3_bucket, "data") < 2:  # tasks are running
        info = ray_head.job_info(sid)
        assert info["status"] in ("PENDING", "RUNNING"), (info, ray_head.job_logs(sid))
        assert time.monotonic() < deadline, "no task started within 90 s"
        time.sleep(0.3)

    stop = ray_head.ray_cli("job", "stop", sid)  # blocks until the job is terminal
    assert stop.returncode == 0, stop.stdout + stop.stderr
    info = ray_head.wait_job(sid, timeout=60)
    assert info["status"] == "STOPPED", info
    logs = ray_head.job_logs(sid)
    assert "received SIGTERM: cancelling the run" in logs

    record = _runs(s3_url, run_id).read_run()
    assert record is not None and record.status is RunStatus.CANCELLED, (record, logs)
    records = _runs(s3_url, run_id).load_journal().records
    assert any(r.get("n") == "cleanup_storage" for r in records), logs  # on_complete ran
    started = Counter(m["index"] for m in _markers(s3_bucket, "data"))
    assert sum(started.values()) < n  # it was stopped, not run to the end
    assert _status(run_id, s3_url)["state"] == "CANCELLED"
    done = {msgpack.unpackb(r["o"])["index"] for r in records
            if r.get("y") == "t" and r.get("n") == "work"}
    assert done <= set(started)

    # Submitting the same command again resumes the cancelled run: the tasks recorded as
    # done are not run again, every other one runs once more.
    again = _sid("resume")
    _submit(ray_head, entrypoint, sid=again)
    info = ray_head.wait_job(again, timeout=120)
    assert info["status"] == "SUCCEEDED", (info, ray_head.job_logs(again))
    final = Counter(m["index"] for m in _markers(s3_bucket, "data"))
    assert set(final) == set(range(n))
    assert final == started + Counter(i for i in range(n) if i not in done)
    assert _status(run_id, s3_url)["state"] == "COMPLETED"


def test_failed_job_then_fixed_source_resubmit_resumes(ray_head, s3_bucket, s3_url):
    fs = fsspec.filesystem("s3")
    flag = f"s3://{s3_bucket}/source/broken"
    fs.pipe_file(flag, b"the source is broken")
    payload = {"bucket": s3_bucket, "prefix": "data", "n": 6, "parallel": False,
               "fail_at": 3, "flag": flag}
    run_id = "nightly-fix"
    entrypoint = _entrypoint(payload, run_id, s3_url)

    first = _sid("fail")
    _submit(ray_head, entrypoint, sid=first)
    info = ray_head.wait_job(first, timeout=90)
    logs = ray_head.job_logs(first)
    assert info["status"] == "FAILED", (info, logs)
    assert info["driver_exit_code"] == 1, info  # failed run -> exit 1 -> FAILED job
    assert "item 3: input source is broken" in logs
    assert Counter(m["index"] for m in _markers(s3_bucket, "data")) == {0: 1, 1: 1, 2: 1, 3: 1}
    assert _status(run_id, s3_url)["state"] == "FAILED"

    fs.rm(flag)  # fix the input source, submit the very same command again
    second = _sid("fixed")
    _submit(ray_head, entrypoint, sid=second)
    info = ray_head.wait_job(second, timeout=90)
    logs = ray_head.job_logs(second)
    assert info["status"] == "SUCCEEDED", (info, logs)
    last_json = [line for line in logs.splitlines() if line.startswith("{")][-1]
    assert json.loads(last_json)["count"] == 6
    # Tasks 0-2 completed in the first job and were not run again; 3 ran twice.
    assert Counter(m["index"] for m in _markers(s3_bucket, "data")) == {
        0: 1, 1: 1, 2: 1, 3: 2, 4: 1, 5: 1}
    assert _status(run_id, s3_url)["state"] == "COMPLETED"


def test_bad_input_fails_the_job_naming_the_field(ray_head, s3_bucket, s3_url):
    sid = _sid("bad")
    payload = {"bucket": s3_bucket, "n": "many"}  # prefix missing, n not an int
    _submit(ray_head, _entrypoint(payload, "nightly-bad", s3_url), sid=sid)
    info = ray_head.wait_job(sid, timeout=60)
    logs = ray_head.job_logs(sid)
    assert info["status"] == "FAILED", (info, logs)
    assert info["driver_exit_code"] == 2, info
    assert "invalid input for JobInput: field 'prefix': Field required" in logs, logs
    assert "field 'n': Input should be a valid integer" in logs, logs
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    assert not fs.find(s3_url), "bad input must write nothing to the store"
