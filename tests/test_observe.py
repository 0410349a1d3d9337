"""A run's history as users see it: attempt times in the journal, `trace`, `status --tasks`.

Runs are real (`connector-runtime run` in a subprocess on the session's Ray, file store);
what is checked is what a user reads: the trace file Perfetto would open, the task table, the
journal's records. The app (`tests/apps/observeapp/observe_app.py`) sleeps known durations,
has a task that fails its first attempt, writes a Parquet file, and can be held at a gate.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest

from storage import RunRecord, RunStatus, RunStore, open_store
from tests.conftest import CliResult

REPO = Path(__file__).resolve().parent.parent
APP = "tests.apps.observeapp.observe_app:ObserveApp"
APP_NAME = "ObserveApp"
SLEEPS = [0.4, 0.15, 0.7, 0.25]
NOISE = 0.25
"""Seconds a worker-timed sleep may exceed its nominal length on a loaded 2-core machine."""


@pytest.fixture
def read_cli(capsys):
    """The CLI's reading verbs (status, trace) in this process: the same `main()` a user's
    shell runs, without a Python start per call; exit code, stdout, stderr."""
    from runtime.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


def _trace(cli, store: str, run_id: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{run_id}.trace.json"
    res = cli("trace", run_id, "--store", store, "--output", str(out))
    assert res.code == 0, res.stderr
    assert str(out) in res.stderr and "perfetto" in res.stderr.lower()
    return json.loads(out.read_text())


def _attempt_events(trace: dict) -> list[dict]:
    return [e for e in trace["traceEvents"] if e["ph"] == "X" and e.get("cat") != "driver"]


def _phases(trace: dict) -> list[dict]:
    return [e for e in trace["traceEvents"] if e.get("cat") == "driver"]


def _records(store: str, run_id: str) -> list[dict]:
    return RunStore(open_store(store), APP_NAME, run_id).load_journal().records


def test_trace_of_known_sleeps_retries_and_files(cli, read_cli, file_store, tmp_path):
    inp = {"sleeps": SLEEPS, "flaky": True, "parquet_rows": 4321}
    res = cli("run", APP, "--input", json.dumps(inp), "--run-id", "sleeps-1", "--store",
              file_store)
    assert res.code == 0, res.stderr
    trace = _trace(read_cli, file_store, "sleeps-1", tmp_path)
    assert trace["otherData"]["run_id"] == "sleeps-1"
    assert trace["otherData"]["state"] == "COMPLETED"
    events = _attempt_events(trace)

    naps = sorted((e for e in events if e["name"] == "nap"), key=lambda e: e["ts"])
    assert len(naps) == len(SLEEPS)
    for event, seconds in zip(naps, SLEEPS, strict=True):  # sequential: in input order
        assert event["args"]["clock"] == "worker"
        assert seconds <= event["dur"] / 1e6 <= seconds + NOISE, (event, seconds)
    for before, after in pairwise(naps):
        assert after["ts"] >= before["ts"] + before["dur"], "sequential tasks overlap"

    flaky = sorted((e for e in events if e["name"] == "flaky"), key=lambda e: e["ts"])
    assert [(e["cat"], e["args"]["attempt"]) for e in flaky] == [("error", 1), ("completed", 2)]
    assert "ConnectionError: the source hung up" in flaky[0]["args"]["error"]
    assert flaky[1]["ts"] >= flaky[0]["ts"] + flaky[0]["dur"] + 0.2e6 * 0.9  # the 0.2 s backoff
    retries = [e for e in trace["traceEvents"] if e["ph"] == "i" and e["name"] == "retry flaky"]
    assert len(retries) == 1 and retries[0]["args"]["next_attempt"] == 2

    (rows,) = [e for e in events if e["name"] == "write_rows"]
    assert rows["args"]["files"]["n"] == 1 and rows["args"]["files"]["r"] == 4321
    assert rows["args"]["files"]["b"] > 0

    # every attempt on a named worker process of a named node; phases of the one driver
    names = {(e["pid"], e.get("tid")): e["args"]["name"] for e in trace["traceEvents"]
             if e["ph"] == "M" and e["name"] in ("process_name", "thread_name")}
    for event in events:
        assert names[(event["pid"], None)].startswith("node ")
        assert names[(event["pid"], event["tid"])] == f"worker pid {event['tid']}"
    phases = [e["name"] for e in sorted(_phases(trace), key=lambda e: e["ts"])]
    assert phases == ["claim", "load", "seal", "setup", "run", "on_complete", "finish"]
    assert all(e["ph"] == "X" for e in _phases(trace))


def test_status_tasks_rows_as_json_and_plain_lines(cli, read_cli, file_store, tmp_path):
    inp = {"sleeps": [0.3, 0.1], "flaky": True, "fail": True}
    res = cli("run", APP, "--input", json.dumps(inp), "--run-id", "tasks-1", "--store",
              file_store)
    assert res.code == 1, res.stderr
    res = read_cli("status", "tasks-1", "--tasks", "--json", "--store", file_store)
    assert res.code == 0, res.stderr
    rows = json.loads(res.stdout)
    by_task = {}
    for row in rows:
        by_task.setdefault(row["task"], []).append(row)
    naps = by_task["nap"]
    assert [r["state"] for r in naps] == ["completed", "completed"]
    assert [r["attempts"] for r in naps] == [1, 1]
    assert 0.3 <= naps[0]["seconds"] <= 0.3 + NOISE and 0.1 <= naps[1]["seconds"] <= 0.1 + NOISE
    (flaky,) = by_task["flaky"]
    assert (flaky["state"], flaky["attempts"]) == ("completed", 2)
    assert flaky["last_error"].startswith("ConnectionError: the source hung up")
    (breaks,) = by_task["breaks"]
    assert (breaks["state"], breaks["attempts"]) == ("failed", 1)
    assert "NonRetryableError: the source is gone for good" == breaks["last_error"]

    plain = read_cli("status", "tasks-1", "--tasks", "--store", file_store)
    assert plain.code == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert lines[0].split("\t") == ["task", "state", "attempts", "time", "key", "last_error"]
    assert len(lines) == 1 + len(rows)
    failed = [line.split("\t") for line in lines[1:] if line.startswith("breaks\t")]
    assert failed[0][1:3] == ["failed", "1"]

    missing = read_cli("status", "no-such-run", "--tasks", "--store", file_store)
    assert missing.code == 2 and "no run 'no-such-run'" in missing.stderr
    bad = read_cli("trace", "tasks-1", "--store", file_store, "--output",
              str(tmp_path / "no" / "such" / "dir" / "t.json"))
    assert bad.code == 2 and "--output" in bad.stderr and "No such file" in bad.stderr


def _wait_completed_naps(store: str, run_id: str, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done = sum(1 for r in _records(store, run_id) if r.get("y") == "t"
                       and r.get("n") == "nap")
        except Exception:
            done = 0
        if done >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{n} naps not journaled within {timeout} s")


def test_resume_after_driver_sigkill_shows_both_drivers_and_no_attempt_twice(
        ray_session, cli, read_cli, file_store, tmp_path):
    inp = {"sleeps": [0.25] * 10}
    env = {**os.environ, "RAY_ADDRESS": ray_session, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen(
        [sys.executable, "-m", "runtime", "run", APP, "--input", json.dumps(inp), "--run-id",
         "killed-1", "--store", file_store], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        _wait_completed_naps(file_store, "killed-1", 3)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
    res = cli("resume", "killed-1", "--app", "tests.apps.observeapp.observe_app:ObserveApp",
              "--store", file_store)
    assert res.code == 0, res.stderr
    trace = _trace(read_cli, file_store, "killed-1", tmp_path)

    sessions = {}
    for event in _phases(trace):
        sessions.setdefault(event["tid"], []).append(event)
    assert sorted(sessions) == [1, 2]
    first = {e["name"]: e["ph"] for e in sessions[1]}
    assert first == {"claim": "X", "load": "X", "seal": "X", "setup": "X", "run": "B"}
    (open_run,) = [e for e in sessions[1] if e["name"] == "run"]
    assert "never" in open_run["args"]["ended"]
    second = {e["name"] for e in sessions[2]}
    assert second == {"claim", "load", "seal", "setup", "run", "replay", "on_complete",
                      "finish"}
    assert all(e["ph"] == "X" for e in sessions[2])
    (replay,) = [e for e in sessions[2] if e["name"] == "replay"]
    (run2,) = [e for e in sessions[2] if e["name"] == "run"]
    assert replay["ts"] == run2["ts"] and replay["dur"] <= run2["dur"]  # nested at its start
    threads = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"]
               if e["ph"] == "M" and e["name"] == "thread_name" and e["pid"] == 0}
    assert threads[1].startswith("driver session 1 on ") and threads[2].startswith(
        "driver session 2 on ")

    attempts = [(e["args"]["call_key"], e["args"]["attempt"]) for e in _attempt_events(trace)]
    assert len(attempts) == len(set(attempts)), "an attempt shows twice"
    completed = Counter(e["args"]["call_key"] for e in _attempt_events(trace)
                        if e["name"] == "nap" and e["cat"] == "completed")
    assert len(completed) == 10 and set(completed.values()) == {1}
    # the second driver's nap attempts all began after the first driver's last one ended
    run1 = next(e for e in sessions[1] if e["name"] == "setup")
    assert all(e["ts"] >= run1["ts"] for e in _attempt_events(trace))


def test_cancelled_attempt_is_journaled_but_not_an_execution(cli, read_cli, file_store,
                                                              tmp_path, ray_session):
    gate = tmp_path / "gate"
    inp = {"sleeps": [0.05, 5.0], "gate": str(gate), "gate_after": 1}
    env = {**os.environ, "RAY_ADDRESS": ray_session, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen(
        [sys.executable, "-m", "runtime", "run", APP, "--input", json.dumps(inp), "--run-id",
         "cancel-1", "--store", file_store], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    try:
        _wait_completed_naps(file_store, "cancel-1", 1)
        time.sleep(0.5)  # the second nap is dispatched and waiting at its gate
        live = _trace(read_cli, file_store, "cancel-1", tmp_path)  # what is recorded so far
        assert live["otherData"]["state"] == "RUNNING"
        assert [e["name"] for e in _attempt_events(live)] == ["nap"]
        assert {e["name"]: e["ph"] for e in _phases(live)}["run"] == "B"  # not ended yet
        assert cli("cancel", "cancel-1", "--store", file_store).code == 0
        _out, err = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(10)
    assert driver.returncode == 1, err
    records = _records(file_store, "cancel-1")
    (cancelled,) = [r for r in records if r.get("y") == "x"]
    assert cancelled["n"] == "nap" and cancelled["a"] == 1
    assert cancelled["ts"]["r"] >= cancelled["ts"]["d"]
    status = json.loads(read_cli("status", "cancel-1", "--json", "--store",
                                 file_store).stdout)
    assert status["state"] == "CANCELLED"
    # executions: the first nap and on_complete's two cleanups; the cancelled nap is none
    assert status["attempts"] == 3 and status["failed_attempts"] == 0
    trace = _trace(read_cli, file_store, "cancel-1", tmp_path)
    cancels = [e for e in trace["traceEvents"] if e["ph"] == "i" and e["name"] == "cancelled"]
    assert len(cancels) == 1 and cancels[0]["args"]["call_key"] == cancelled["k"]
    assert any(e["name"] == "run cancelled" for e in trace["traceEvents"])
    rows = json.loads(read_cli("status", "cancel-1", "--tasks", "--json", "--store",
                               file_store).stdout)
    assert [(r["state"], r["attempts"]) for r in rows if r["task"] == "nap"] == \
        [("completed", 1), ("cancelled", 0)]


def _old_journal(store: str, run_id: str) -> None:
    """A run as the runtime wrote it before times were recorded: no ts, w, fs, p or x."""
    import msgpack

    runs = RunStore(open_store(store), APP_NAME, run_id)
    runs.write_run(RunRecord(app=APP_NAME, run_id=run_id, app_path=APP, entrypoint="run",
                             input={"sleeps": [0.1]}, input_digest="d",
                             status=RunStatus.FAILED, finish_count=1, finished_at=time.time(),
                             error={"type": "ConnectionError", "message": "boom"}))
    out = msgpack.packb({"index": 0, "pid": 1}, use_bin_type=True)
    assert runs.write_segment(1, 0, [
        {"y": "s", "e": 1, "seen": {}},
        {"y": "t", "k": "nap:aa:0", "n": "nap", "o": out, "a": 1},
        {"y": "f", "k": "flaky:bb:0", "n": "flaky", "a": 1,
         "e": {"kind": "error", "type": "ConnectionError", "message": "boom"}, "r": True},
        {"y": "f", "k": "flaky:bb:0", "n": "flaky", "a": 2,
         "e": {"kind": "timeout", "type": "TaskTimeoutError", "message": "late"}, "r": False},
        {"y": "h", "k": "flaky:bb:0", "d": {"page": 3}},
    ])


def test_journal_from_before_times_still_loads_and_displays(cli, read_cli, file_store,
                                                            tmp_path):
    _old_journal(file_store, "old-1")
    res = cli("status", "old-1", "--tasks", "--json", "--store", file_store)  # as users run it
    assert res.code == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [(r["task"], r["state"], r["attempts"], r["seconds"]) for r in rows] == [
        ("nap", "completed", 1, None), ("flaky", "failed", 2, None)]
    assert rows[1]["last_error"] == "TaskTimeoutError: late"
    assert "-\tnap:aa:0" in read_cli("status", "old-1", "--tasks", "--store",
                                     file_store).stdout
    trace = _trace(read_cli, file_store, "old-1", tmp_path)
    assert _attempt_events(trace) == [] and _phases(trace) == []
    assert trace["otherData"]["untimed_attempts"] == 3
    status = json.loads(read_cli("status", "old-1", "--json", "--store", file_store).stdout)
    assert status["attempts"] == 3 and status["tasks_done"] == 1

    from runtime.service._runpage import run_page  # what the run page shows of it

    st = open_store(file_store)
    page = run_page(st, RunStore(st, APP_NAME, "old-1").read_run())
    assert page["bar_count"] == 0 and page["untimed"] == 3 and page["task_count"] == 2
    assert [f["error"] for f in page["failures"]] == ["ConnectionError: boom",
                                                      "TaskTimeoutError: late"]
    assert all(f["traceback"] is None for f in page["failures"])
    assert page["details"] == [{"key": "flaky:bb:0", "json": '{\n  "page": 3\n}'}]
