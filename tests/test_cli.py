"""The CLI as users type it: exit codes, stdout/stderr, nothing written on bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from storage import Lease, RunStatus, RunStore, open_store

APP = "tests.apps.counting:CountingApp"


def store_files(path) -> list[str]:
    out = []
    for root, _, files in os.walk(path):
        out += [os.path.join(root, f) for f in files]
    return out


def test_run_prints_output_json_last_on_stdout(cli, tmp_path, file_store):
    inp = json.dumps({"count_file": str(tmp_path / "c"), "n": 4})
    res = cli("run", APP, "--input", inp, "--run-id", "cli-1", "--store", file_store)
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {"total": 14, "count": 4}
    assert "cli-1" in res.stderr
    status = cli("status", "cli-1", "--store", file_store, "--json")
    info = json.loads(status.stdout)
    assert info["state"] == "COMPLETED" and info["tasks_done"] >= 4
    listing = cli("list", "--store", file_store)
    assert "cli-1" in listing.stdout and "COMPLETED" in listing.stdout


def test_input_from_file(cli, tmp_path, file_store):
    path = tmp_path / "input.json"
    path.write_text(json.dumps({"count_file": str(tmp_path / "c"), "n": 2}))
    res = cli("run", APP, "--input", f"@{path}", "--store", file_store)
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout.splitlines()[-1])["count"] == 2


@pytest.mark.parametrize(
    ("app", "inp", "expected"),
    [
        (APP, '{"n": 3}', "field 'count_file': Field required"),
        (APP, '{"count_file": "x", "n": "many"}', "field 'n'"),
        (APP, '{"count_file": "x", "n": 3', "malformed JSON"),
        (APP, "[1, 2]", "must be a JSON object"),
        ("tests.apps.nowhere:App", "{}", "cannot import module 'tests.apps.nowhere'"),
        ("tests.apps.counting:Nope", "{}", "has no 'Nope'"),
        ("tests.apps.counting", "{}", "expected module:Class"),
        ("tests.apps.counting:mark", "{}", "not an application_sdk.app.App subclass"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(cli, file_store, app, inp, expected):
    res = cli("run", app, "--input", inp, "--store", file_store)
    assert res.code == 2, res.stderr
    assert expected in res.stderr
    assert res.stdout == ""
    assert store_files(file_store) == []


def test_missing_input_file_exits_2(cli, tmp_path, file_store):
    res = cli("run", APP, "--input", f"@{tmp_path}/nope.json", "--store", file_store)
    assert res.code == 2 and "cannot read input file" in res.stderr


def test_failed_run_exits_1_with_the_reason(cli, tmp_path, file_store):
    inp = json.dumps({"count_file": str(tmp_path / "c"), "n": 3, "fail_at": 1})
    res = cli("run", APP, "--input", inp, "--run-id", "bad", "--store", file_store)
    assert res.code == 1
    assert "task work failed" in res.stderr and "item 1 is broken" in res.stderr
    status = json.loads(cli("status", "bad", "--store", file_store, "--json").stdout)
    assert status["state"] == "FAILED"
    assert status["last_error"]["type"] == "RuntimeError"


def test_run_owned_by_a_live_driver_exits_3(cli, tmp_path, file_store):
    runs = RunStore(open_store(file_store), "CountingApp", "owned")
    holder = Lease(runs, ttl=120)
    holder.acquire()  # this test process plays the live driver
    inp = json.dumps({"count_file": str(tmp_path / "c"), "n": 2})
    res = cli("run", APP, "--input", inp, "--run-id", "owned", "--store", file_store)
    assert res.code == 3
    assert holder.owner in res.stderr
    assert not (tmp_path / "c").exists()


def test_resume_and_cancel_of_unknown_run_exit_2(cli, file_store):
    assert cli("resume", "ghost", "--store", file_store).code == 2
    assert cli("status", "ghost", "--store", file_store).code == 2


def test_sigterm_cancels_the_run_cleanly(ray_session, tmp_path, file_store):
    """`ray job stop` sends SIGTERM: the run ends CANCELLED and on_complete runs."""
    inp = json.dumps({"count_file": str(tmp_path / "c"), "n": 200, "jitter_ms": 100})
    env = {**os.environ, "RAY_ADDRESS": ray_session, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime", "run", APP, "--input", inp, "--run-id", "term",
         "--store", file_store], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (tmp_path / "c").exists():
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert out == ""  # a cancelled run prints no Output
    assert proc.returncode == 130, err
    record = RunStore(open_store(file_store), "CountingApp", "term").read_run()
    assert record.status is RunStatus.CANCELLED
    records = RunStore(open_store(file_store), "CountingApp", "term").load_journal().records
    assert any(r.get("n") == "cleanup_storage" for r in records)  # on_complete ran


def test_resume_all_resumes_unfinished_runs_whose_driver_is_gone(cli, tmp_path, file_store):
    flag = tmp_path / "broken"
    flag.touch()
    inputs = {}
    for run_id in ("a", "b"):
        inputs[run_id] = json.dumps({"count_file": str(tmp_path / f"c-{run_id}"), "n": 3,
                                     "fail_at": 2, "broken_flag": str(flag)})
        assert cli("run", APP, "--input", inputs[run_id], "--run-id", run_id,
                   "--store", file_store).code == 1
    held = Lease(RunStore(open_store(file_store), "CountingApp", "b"), ttl=120)
    held.acquire()  # "b" has a live driver: resume --all leaves it alone
    flag.unlink()
    res = cli("resume", "--all", "--app", APP, "--store", file_store)
    assert res.code == 0, res.stderr
    store = open_store(file_store)
    assert RunStore(store, "CountingApp", "a").read_run().status is RunStatus.COMPLETED
    assert RunStore(store, "CountingApp", "b").read_run().status is RunStatus.FAILED
    assert sorted(open(tmp_path / "c-a").read().split("\n")[:-1]) == [
        "work 0", "work 1", "work 2"]  # completed tasks were not redone
