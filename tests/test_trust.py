"""Runs you can trust: the paths users walk after something died (issue 12).

Each test is the attack: a driver killed right after cleanup deleted files, lost replies to
conditional writes, a driver frozen past its lease while another finishes the run, a cancel
for a run whose driver is dead, a gather that fails while its siblings are still queued,
recorded values taken in branches that replay in another order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import boto3
import msgpack
import pytest

from application_sdk.errors import RunFailedError
from application_sdk.testing import replay
from runtime import run_app
from storage import RunStatus, RunStore, open_store

from .apps import trust as t
from .faultproxy import FaultProxy

REPO = Path(__file__).resolve().parent.parent


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def executions(folder: Path) -> list[str]:
    try:
        return (folder / "executions").read_text().splitlines()
    except FileNotFoundError:
        return []


def driver(ray_session: str, app: str, inp: dict, run_id: str, store: str,
           *extra: str, env: dict[str, str] | None = None) -> list[str]:
    return [sys.executable, "-m", "runtime", "run", f"tests.apps.trust:{app}", "--input",
            json.dumps(inp), "--run-id", run_id, "--store", store, *extra]


def driver_env(ray_session: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "RAY_ADDRESS": ray_session, "PYTHONPATH": str(REPO), **extra}


def spawn(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def task_records(store, app: str, run_id: str, name: str | None = None) -> list[dict]:
    records = RunStore(store, app, run_id).load_journal().records
    return [r for r in records if r["y"] == "t" and (name is None or r["n"] == name)]


def s3_objects(endpoint: str, bucket: str, prefix: str = "") -> dict[str, str]:
    client = boto3.client("s3", endpoint_url=endpoint)
    found: dict[str, str] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            found[obj["Key"]] = obj["ETag"]
    return found


def folder_snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


# -- 2. nothing is deleted before every record that refers to it is durable -----------------

def test_cleanup_waits_until_the_completions_pointing_at_its_files_are_durable(
        ray_session, s3_server, s3_bucket, tmp_path):
    """Journal writes are held 2 s by the proxy; the driver is SIGKILLed the moment its
    TRANSIENT file is deleted. Before the fix, cleanup_storage deleted the file while the
    consumer's completion was still unwritten, and every resume failed on the missing file."""
    slow_journal = FaultProxy(s3_server, {"delay": 1.0}, delay_seconds=2.0,
                              only=lambda m, path, h: m == "PUT" and "/journal/" in path)
    store = f"s3://{s3_bucket}/store"
    prefix = "store/runs/HandOffApp/handoff/files/"
    with slow_journal:
        cmd = driver(ray_session, "HandOffApp", {"folder": str(tmp_path)}, "handoff", store,
                     "--store-option", f"endpoint_url={slow_journal.url}")
        proc = spawn(cmd, driver_env(ray_session))
        try:
            wait_for(lambda: s3_objects(s3_server, s3_bucket, prefix), 90, "the made file")
            wait_for(lambda: not s3_objects(s3_server, s3_bucket, prefix), 90,
                     "cleanup_storage to delete it")
        finally:
            proc.kill()
            proc.communicate(timeout=30)
        slow_journal.enabled = False
        again = subprocess.run(cmd, env=driver_env(ray_session), cwd=REPO,
                               capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout.splitlines()[-1]) == {"size": 4096}
    assert executions(tmp_path).count("make") == 1 and executions(tmp_path).count("use") == 1


# -- 5. a lost reply is not a lost lease, nor a second journal segment -----------------------

def test_lost_replies_to_conditional_writes_neither_stop_the_run_nor_duplicate_records(
        ray_session, s3_server, s3_bucket, tmp_path):
    """Every other conditional PUT (lease renewals, journal segments, the run record) is
    applied by the server and then its connection is reset before the reply."""
    resets = FaultProxy(s3_server, {"reset_after": 0.5}, seed=7,
                        only=lambda m, path, h: m == "PUT" and (
                            "if-match" in h or "if-none-match" in h))
    store = f"s3://{s3_bucket}/store"
    with resets:
        cmd = driver(ray_session, "SequenceApp", {"folder": str(tmp_path), "n": 6,
                                                  "seconds": 0.7}, "replies", store,
                     "--store-option", f"endpoint_url={resets.url}")
        done = subprocess.run(cmd, env=driver_env(ray_session, CONNECTOR_RUNTIME_LEASE_TTL="3"),
                              cwd=REPO, capture_output=True, text=True, timeout=240)
    assert resets.injected["reset_after"] >= 5, resets.injected
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1])["total"] == 15
    st = open_store(store)
    steps = task_records(st, "SequenceApp", "replies", "step")
    assert sorted(msgpack.unpackb(r["o"])["index"] for r in steps) == list(range(6))
    starts = [line for line in executions(tmp_path) if line.endswith("start")]
    assert sorted(starts) == sorted(f"item {i} start" for i in range(6))  # each ran once


# -- 6. fencing: a frozen driver changes nothing when it thaws --------------------------------

@pytest.mark.parametrize("backend", ["file", "s3"])
def test_a_driver_frozen_past_its_lease_changes_nothing_when_it_thaws(
        ray_session, tmp_path, request, backend):
    if backend == "s3":
        endpoint = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("s3_bucket")
        store = f"s3://{bucket}/store"

        def snapshot() -> dict:
            return s3_objects(endpoint, bucket)
    else:
        store = str(tmp_path / "store")

        def snapshot() -> dict:
            return folder_snapshot(tmp_path / "store")
    work = tmp_path / "work"
    work.mkdir()
    env = driver_env(ray_session, CONNECTOR_RUNTIME_LEASE_TTL="3")
    cmd = driver(ray_session, "SequenceApp", {"folder": str(work), "n": 8, "seconds": 0.3},
                 "frozen", store)
    first = spawn(cmd, env)
    try:
        wait_for(lambda: "item 1 end" in executions(work), 90, "two steps")
        first.send_signal(signal.SIGSTOP)
        time.sleep(5.0)  # past the 3 s lease on every clock
        second = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True,
                                timeout=180)
        assert second.returncode == 0, second.stderr[-3000:]
        before, ran = snapshot(), executions(work)
        first.send_signal(signal.SIGCONT)
        out, err = first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 3, err[-3000:]  # refused: the run belongs to another driver
    assert "lease" in err and out == ""
    assert snapshot() == before  # not a byte changed in the store
    assert executions(work) == ran  # nothing new started
    record = RunStore(open_store(store), "SequenceApp", "frozen").read_run()
    assert record.status is RunStatus.COMPLETED and record.output == {"total": 28, "tags": []}


# -- 7. cancelling a run whose driver is dead --------------------------------------------------

def test_cancel_of_a_run_whose_driver_died_is_honoured_by_the_next_driver(
        ray_session, tmp_path, file_store, cli):
    cmd = driver(ray_session, "SequenceApp", {"folder": str(tmp_path), "n": 12,
                                              "seconds": 0.3}, "orphan", file_store)
    proc = spawn(cmd, driver_env(ray_session))
    wait_for(lambda: "item 2 end" in executions(tmp_path), 90, "three steps")
    proc.kill()
    proc.communicate(timeout=30)
    time.sleep(1.0)  # let the attempt in flight end
    status = json.loads(cli("status", "orphan", "--store", file_store, "--json").stdout)
    assert status["state"] == "INTERRUPTED" and status["driver"] == "gone"
    assert status["tasks_running"] == 0
    assert cli("cancel", "orphan", "--store", file_store).code == 0
    ran = executions(tmp_path)
    resumed = cli("resume", "--all", "--app", "tests.apps.trust:SequenceApp", "--store",
                  file_store, timeout=180)
    assert resumed.code == 1 and "cancelled" in resumed.stderr, resumed.stderr[-2000:]
    runs = RunStore(open_store(file_store), "SequenceApp", "orphan")
    assert runs.read_run().status is RunStatus.CANCELLED
    assert executions(tmp_path) == ran  # honoured before anything was dispatched
    names = [r["n"] for r in task_records(runs.store, "SequenceApp", "orphan")]
    assert "cleanup_storage" in names  # on_complete() ran
    # the request was honoured once: running the same command again resumes the run
    again = subprocess.run(cmd, env=driver_env(ray_session), cwd=REPO, capture_output=True,
                           text=True, timeout=180)
    assert again.returncode == 0, again.stderr[-2000:]
    assert runs.read_run().status is RunStatus.COMPLETED


# -- 14. work after failure -------------------------------------------------------------------

def test_a_failed_gather_starts_nothing_more_and_status_names_the_task(
        ray_session, tmp_path, file_store, cli):
    with pytest.raises(RunFailedError, match="broken"):
        run_app(t.FailingGatherApp, {"folder": str(tmp_path), "n": 6, "seconds": 2.0},
                run_id="failing", store=file_store)
    failed_at = time.time()
    time.sleep(2.5)  # anything the driver did not stop would start or retry by now
    ran = Counter(line for line in executions(tmp_path) if line.startswith("slow"))
    assert all(count == 1 for count in ran.values()), ran  # no retry of a cancelled sibling
    lines = (tmp_path / "starts").read_text().splitlines() if (tmp_path / "starts").exists() \
        else []  # the failure may come before any sibling got a CPU
    assert all(float(line.split()[1]) < failed_at for line in lines)  # none started after
    runs = RunStore(open_store(file_store), "FailingGatherApp", "failing")
    failures = [r for r in runs.load_journal().records if r["y"] == "f"]
    assert [r["n"] for r in failures] == ["broken"]  # cancellations are not failures
    record = runs.read_run()
    assert record.error["task"] == "broken" and record.error["type"] == "NonRetryableError"
    status = json.loads(cli("status", "failing", "--store", file_store, "--json").stdout)
    assert status["tasks_failed"] == 1 and status["last_error"]["task"] == "broken"
    assert status["attempts"] == 1 + len(task_records(runs.store, "FailingGatherApp",
                                                      "failing"))


def test_a_corrupt_segment_holding_a_recorded_value_reruns_what_it_fed_not_a_divergence(
        ray_session, tmp_path, file_store):
    """Found by the soak: a flipped byte in the segment that held a uuid4() dropped the value;
    replay took a new one, the echo it fed got a new call key, and the recorded echo went
    unasked: the resume failed as NondeterminismError. A corrupt segment is missing data (its
    calls run again), not a changed run()."""
    (tmp_path / "closed").touch()
    with pytest.raises(RunFailedError, match="the gate is closed"):
        run_app(t.ValueThenGate, {"folder": str(tmp_path)}, run_id="vg", store=file_store)
    store = open_store(file_store)
    runs = RunStore(store, "ValueThenGate", "vg")
    holding = [key for key in store.list(runs.prefix + "/journal/")
               if any(r.get("y") == "v" for r in _segment_records(store, key))]
    assert len(holding) == 1 and not any(  # the value's segment holds no completion
        r.get("y") == "t" for r in _segment_records(store, holding[0]))
    path = store.path(holding[0])
    data = bytearray(Path(path).read_bytes())
    data[len(data) // 2] ^= 0x5A
    Path(path).write_bytes(bytes(data))
    (tmp_path / "closed").unlink()
    out = run_app(t.ValueThenGate, {"folder": str(tmp_path)}, run_id="vg", store=file_store)
    assert out.own is True  # the echo ran again with the value replay took
    assert executions(tmp_path).count("echo") == 2
    record = runs.read_run()
    assert record.status is RunStatus.COMPLETED
    assert any(holding[0] in w and "failed their checksum" in w for w in record.warnings)
    report = replay(t.ValueThenGate, "vg", store=file_store)  # the soak's second finding
    assert report.corrupt == [holding[0]] and report.not_requested and not report.divergent


def _segment_records(store, key: str) -> list[dict]:
    from storage import decode

    body = decode(store.read(key), "journal segment")
    return body if isinstance(body, list) else body.get("r", [])


# -- 3. recorded values belong to the branch that took them ----------------------------------

def test_recorded_values_taken_in_gathered_branches_replay_to_their_own_branch(
        ray_session, tmp_path, file_store):
    (tmp_path / "fail-last").touch()
    with pytest.raises(RunFailedError):
        run_app(t.BranchesApp, {"folder": str(tmp_path)}, run_id="branches", store=file_store)
    first = [line for line in executions(tmp_path) if line.startswith("use")]
    assert len(first) == 2
    (tmp_path / "fail-last").unlink()
    out = run_app(t.BranchesApp, {"folder": str(tmp_path)}, run_id="branches",
                  store=file_store)
    uses = [line for line in executions(tmp_path) if line.startswith("use")]
    assert uses == first  # the tasks fed by the values were not run again
    assert sorted(tag.split("=")[0] for tag in out.tags) == ["long", "short"]
    assert len({tag.split("=")[1] for tag in out.tags}) == 2
    assert sorted(f"use {tag}" for tag in out.tags) == sorted(first)
    report = replay(t.BranchesApp, "branches", store=file_store)
    assert not report.divergent, report
