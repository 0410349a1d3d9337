"""continue_with: a run that ends by continuing as a new one, a chain of runs sharing a
workflow and correlation id, each with a fresh journal and task budget."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from application_sdk.errors import AppContextError, RunFailedError
from runtime import InputValidationError, run_app
from runtime.driver import JournalIndex
from storage import RunStatus, RunStore, list_runs, open_store

from .apps import fidelity as f


def items(folder) -> list[int]:
    try:
        return [int(x) for x in open(folder / "items").read().split()]
    except FileNotFoundError:
        return []


def test_a_small_chain_returns_the_last_output_and_status_shows_it(ray_session, tmp_path,
                                                                   file_store, cli):
    out = run_app(f.ChunkedApp, {"folder": str(tmp_path), "total": 7, "chunk": 3},
                  run_id="small", store=file_store)
    assert (out.items, out.runs, out.correlation_id, out.workflow_id) == (7, 3, "small",
                                                                          "small")
    assert sorted(items(tmp_path)) == list(range(7))
    records = {r.run_id: r for r in list_runs(open_store(file_store), "ChunkedApp")}
    assert {k: r.status for k, r in records.items()} == {
        "small": RunStatus.CONTINUED, "small.c1": RunStatus.CONTINUED,
        "small.c2": RunStatus.COMPLETED}
    assert records["small.c1"].continued_from == "small"
    assert records["small.c1"].input["offset"] == 3  # a fresh run with the new input
    for run_id in ("small", "small.c2"):  # status of any run of the chain shows all of it
        info = json.loads(cli("status", run_id, "--store", file_store, "--json").stdout)
        assert [r["run_id"] for r in info["chain"]["runs"]] == ["small", "small.c1",
                                                                "small.c2"]
        assert info["chain"]["last_state"] == "COMPLETED"
    # same run id = same run: the chain's output at once, nothing runs again
    again = cli("run", "tests.apps.fidelity:ChunkedApp", "--input",
                json.dumps({"folder": str(tmp_path), "total": 7, "chunk": 3}),
                "--run-id", "small", "--store", file_store)
    assert again.code == 0 and json.loads(again.stdout.splitlines()[-1])["items"] == 7
    assert len(items(tmp_path)) == 7


def test_continue_with_outside_run_or_with_a_bad_input_fails_the_run(ray_session, tmp_path,
                                                                     file_store):
    with pytest.raises(RunFailedError) as info:
        run_app(f.BadContinue, {"folder": str(tmp_path)}, run_id="in-task", store=file_store)
    assert isinstance(info.value.__cause__, AppContextError)
    assert "continue_with() works only in run()" in str(info.value)
    with pytest.raises(RunFailedError) as info:
        run_app(f.BadContinue, {"folder": str(tmp_path), "offset": 1}, run_id="bad-input",
                store=file_store)
    assert isinstance(info.value.__cause__, InputValidationError)
    assert "field 'offset'" in str(info.value)
    runs = [r.run_id for r in list_runs(open_store(file_store), "BadContinue")]
    assert sorted(runs) == ["bad-input", "in-task"]  # no continuation was created


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_twelve_thousand_tasks_in_chunks_under_the_budget_killed_once(ray_session, tmp_path,
                                                                      file_store, cli):
    """~1 min: 12,000 tiny task executions, 3,000 per run (the budget is 5,000 per run), the
    driver SIGKILLed in the second run, then resumed by the chain's first run id."""
    assert f.ChunkedApp.max_task_executions == 5_000
    inp = json.dumps({"folder": str(tmp_path), "total": 12_000, "chunk": 3_000})
    cmd = [sys.executable, "-m", "runtime", "run", "tests.apps.fidelity:ChunkedApp",
           "--input", inp, "--run-id", "big", "--store", file_store]
    env = {**os.environ, "RAY_ADDRESS": ray_session, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while len(items(tmp_path)) < 3_600:  # inside the second run
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the second run never got going"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    store = open_store(file_store)
    killed = {r.run_id: r.status for r in list_runs(store, "ChunkedApp")}
    assert killed["big"] is RunStatus.CONTINUED and killed["big.c1"] is RunStatus.RUNNING
    resumed = cli("resume", "big", "--app", "tests.apps.fidelity:ChunkedApp", "--store",
                  file_store, timeout=400)
    assert resumed.code == 0, resumed.stderr[-3000:]
    out = json.loads(resumed.stdout.splitlines()[-1])
    assert (out["items"], out["runs"], out["correlation_id"]) == (12_000, 4, "big")
    done = Counter(items(tmp_path))
    assert set(done) == set(range(12_000))  # every item, at least once
    again = [i for i, n in done.items() if n > 1]
    assert all(3_000 <= i < 6_000 for i in again)  # only the run the driver died in
    assert len(again) < 3_000
    chain = ["big", "big.c1", "big.c2", "big.c3"]
    records = {r.run_id: r for r in list_runs(store, "ChunkedApp")}
    assert sorted(records) == chain
    assert [records[r].status for r in chain] == [RunStatus.CONTINUED] * 3 + \
        [RunStatus.COMPLETED]
    for run_id in chain:  # each run its own journal, within its own budget
        index = JournalIndex(RunStore(store, "ChunkedApp", run_id).load_journal())
        assert index.executions <= 5_000
        assert sum(1 for k in index.tasks if k.startswith("work:")) == 3_000


def test_resume_all_resumes_a_killed_chain_once_at_its_running_run(ray_session, tmp_path,
                                                                    file_store, cli):
    """A cron `resume --all` meets the CONTINUED first run and the RUNNING continuation whose
    driver died: it resumes the continuation alone, and each finished chunk stays done."""
    (tmp_path / "slow").touch()
    inp = json.dumps({"folder": str(tmp_path), "total": 40, "chunk": 20, "slow_from": 20})
    cmd = [sys.executable, "-m", "runtime", "run", "tests.apps.fidelity:ChunkedApp",
           "--input", inp, "--run-id", "cron", "--store", file_store]
    env = {**os.environ, "RAY_ADDRESS": ray_session, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(items(tmp_path)) < 21:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the second run never got going"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    (tmp_path / "slow").unlink()
    res = cli("resume", "--all", "--app", "tests.apps.fidelity:ChunkedApp", "--store",
              file_store, timeout=300)
    assert res.code == 0, res.stderr[-3000:]
    assert "resuming cron.c1 (ChunkedApp), RUNNING" in res.stderr
    assert "resuming cron (" not in res.stderr  # the CONTINUED run is not driven again
    store = open_store(file_store)
    states = {r.run_id: r.status for r in list_runs(store, "ChunkedApp")}
    assert states == {"cron": RunStatus.CONTINUED, "cron.c1": RunStatus.COMPLETED}
    done = Counter(items(tmp_path))
    assert set(done) == set(range(40))
    assert all(done[i] == 1 for i in range(20))  # the first chunk is never run again


def test_replay_of_a_continued_run_reports_the_continuation_input(ray_session, tmp_path,
                                                                  file_store):
    from application_sdk.testing import replay

    run_app(f.ChunkedApp, {"folder": str(tmp_path), "total": 4, "chunk": 2},
            run_id="replayed", store=file_store)
    report = replay(f.ChunkedApp, "replayed", store=file_store)
    assert not report.divergent and report.replayed == 2
    assert report.continued_with["offset"] == 2 and report.output is None
    last = replay(f.ChunkedApp, "replayed.c1", store=file_store)
    assert last.output["correlation_id"] == "replayed"  # self.context works in a replay


def test_a_continuation_input_holding_this_runs_files_is_refused(ray_session, file_store):
    with pytest.raises(RunFailedError) as info:
        run_app(f.HandoverApp, {}, run_id="handover", store=file_store)
    assert isinstance(info.value.__cause__, InputValidationError)
    assert "a continuation reads only its own objects" in str(info.value)
    assert [r.run_id for r in list_runs(open_store(file_store), "HandoverApp")] == ["handover"]
