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


SERVICE_APP = "tests.apps.serviceapp.service_app:ServiceApp"


def test_resume_all_skips_runs_that_failed_non_retryably_unless_asked(cli, tmp_path,
                                                                      file_store):
    """A cron `resume --all` does not redo a deterministic failure on every pass."""
    flag = tmp_path / "refused"
    flag.touch()
    inp = json.dumps({"marker_dir": str(tmp_path / "m"), "n": 2, "fail_at": 1,
                      "flag": str(flag)})
    assert cli("run", SERVICE_APP, "--input", inp, "--run-id", "det", "--store",
               file_store).code == 1
    runs = RunStore(open_store(file_store), "ServiceApp", "det")
    record = runs.read_run()
    assert record.status is RunStatus.FAILED and record.error["non_retryable"] is True
    attempts = len(os.listdir(tmp_path / "m"))
    res = cli("resume", "--all", "--app", SERVICE_APP, "--store", file_store)
    assert res.code == 0, res.stderr
    assert "skipped det (ServiceApp): it failed on a non-retryable error (NonRetryableError: " \
        in res.stderr and "--include-failed" in res.stderr
    assert len(os.listdir(tmp_path / "m")) == attempts  # nothing ran
    assert runs.read_run().status is RunStatus.FAILED
    flag.unlink()  # the cause fixed: asked for, it is resumed
    res = cli("resume", "--all", "--include-failed", "--app", SERVICE_APP, "--store",
              file_store)
    assert res.code == 0, res.stderr
    assert runs.read_run().status is RunStatus.COMPLETED


@pytest.mark.parametrize("run_id",
                         ["nightly\n", "a b", "../up", ".hidden", "x" * 201, "\x1b[2J"])
def test_a_refused_run_id_exits_2_and_writes_nothing(cli, tmp_path, file_store, run_id):
    inp = json.dumps({"count_file": str(tmp_path / "c"), "n": 1})
    for args in (("run", APP, "--input", inp, "--run-id", run_id), ("status", run_id),
                 ("resume", run_id, "--app", APP), ("cancel", run_id)):
        res = cli(*args, "--store", file_store)
        assert res.code == 2, (args, res.stderr)
        assert "invalid run id" in res.stderr and "\x1b" not in res.stderr and \
            "\n" not in res.stderr.rstrip("\n")
    assert store_files(file_store) == [] and not (tmp_path / "c").exists()


def test_list_and_status_print_what_the_store_says_escaped(cli, file_store):
    from storage import RunRecord

    store = open_store(file_store)
    RunStore(store, "CountingApp", "shown").write_run(RunRecord(
        app="CountingApp", run_id="shown", app_path="m:A\x1b]0;owned\x07", entrypoint="run",
        input={}, input_digest="d", status=RunStatus.FAILED,
        error={"type": "X", "message": "bad\x1b[2J\nline\u202e"}, warnings=["w\x1b[31m"],
        progress={"done": "7\x1b[1A"}))
    odd = os.path.join(file_store, "runs", "CountingApp", "odd\x1b[2Jid")
    os.makedirs(odd)
    with open(os.path.join(odd, "run.msgpack"), "wb") as fh:
        fh.write(open(os.path.join(file_store, "runs/CountingApp/shown/run.msgpack"),
                      "rb").read())
    listing = cli("list", "--store", file_store)
    assert listing.code == 0
    assert listing.stdout == "shown\tCountingApp\tFAILED\t7\\x1b[1A tasks\n"
    assert "skipped runs/CountingApp/odd\\x1b[2Jid/: invalid run id" in listing.stderr
    status = cli("status", "shown", "--store", file_store)
    assert status.code == 0, status.stderr
    assert '"message": "bad\\u001b[2J\\nline\\u202e"' in status.stdout  # a dict: as JSON
    assert "w\\x1b[31m" in status.stdout
    for out in (listing.stdout, listing.stderr, status.stdout, status.stderr):
        assert "\x1b" not in out and "\u202e" not in out
    as_json = cli("status", "shown", "--store", file_store, "--json")
    assert json.loads(as_json.stdout)["error"]["message"] == "bad\x1b[2J\nline\u202e"
    assert "\x1b" not in as_json.stdout


def test_an_input_over_the_payload_limit_exits_2_before_anything_is_written(cli, tmp_path,
                                                                           file_store):
    path = tmp_path / "input.json"
    path.write_text(json.dumps({"count_file": "x" * (3 * 2**20), "n": 1}))
    res = cli("run", APP, "--input", f"@{path}", "--run-id", "big", "--store", file_store)
    assert res.code == 2, res.stderr
    assert "is 3.0 MiB serialized, over the 2.0 MiB payload limit of CountingApp" in res.stderr
    assert store_files(file_store) == []


def test_the_store_only_verbs_never_import_ray(ray_session, tmp_path, file_store):
    """`status`, `status --tasks`, `list`, `trace`, `files` and `cancel` read and write the
    store only: they do not pay Ray's import (0.35 s of a 1 s command; `status` answers in
    about 0.3 s). They run here on a finished run, in a process whose import hook refuses
    `ray`."""
    from runtime import run_app
    from tests.apps.counting import CountingApp

    run_app(CountingApp, {"count_file": str(tmp_path / "c"), "n": 2}, run_id="seen",
            store=file_store)
    script = f"""
import sys
class NoRay:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("ray imported by a store-only verb: " + name)
sys.meta_path.insert(0, NoRay())
from runtime.cli import main
store = {file_store!r}
for argv in (["status", "seen"], ["status", "seen", "--tasks"], ["list"],
             ["trace", "seen", "--output", {str(tmp_path / "trace.json")!r}],
             ["files", "seen"], ["cancel", "seen"]):
    print("CODE", argv[0], main([*argv, "--store", store]), flush=True)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert "ray imported" not in proc.stderr + proc.stdout, proc.stderr[-2000:]
    codes = [line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("CODE")]
    assert [verb for verb, _ in codes] == ["status", "status", "list", "trace", "files",
                                           "cancel"], proc.stderr[-2000:]
    assert all(code == "0" for _, code in codes), (codes, proc.stderr[-2000:])
