"""The SDK's documented surface on a real Ray: the run context, app state, secrets, heartbeats
that carry files, auto heartbeats off, lazy references, a run's output files, failed runs."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import time
from datetime import datetime

import pytest

from application_sdk.app import AppContext
from application_sdk.contracts import OutputStatus
from application_sdk.errors import (
    AppContextError,
    NonRetryableError,
    ProgressStalledError,
    RunFailedError,
    StateError,
    StorageIntegrityError,
)
from runtime import UsageError, run_app
from storage import RunStore, arrow, open_store

from .apps import fidelity as f


def lines(path) -> list[str]:
    try:
        return open(path).read().splitlines()
    except FileNotFoundError:
        return []


def journal(store: str, app: str, run_id: str) -> list[dict]:
    return RunStore(open_store(store), app, run_id).load_journal().records


# ---- the run context ------------------------------------------------------------------------


def test_context_in_run_and_tasks_kept_across_a_resume(ray_session, tmp_path, file_store,
                                                      caplog):
    (tmp_path / "fail").touch()
    given = AppContext(app_name=f.ContextApp._app_name, app_version="1.0.0",
                       workflow_id="wf-7", correlation_id="corr-7")
    caplog.set_level(logging.INFO, logger="app")
    with pytest.raises(RunFailedError, match="task gate failed"):
        run_app(f.ContextApp, {"folder": str(tmp_path)}, run_id="ctx", store=file_store,
                context=given)
    first = [r.getMessage() for r in caplog.records if r.name == "app.ContextApp"]
    assert first == ["run() starts", "run() got the task's answer"]
    caplog.clear()
    (tmp_path / "fail").unlink()
    time.sleep(1.1)  # a started_at taken from the clock at resume would differ
    out = run_app(f.ContextApp, {"folder": str(tmp_path)}, run_id="ctx", store=file_store)
    # quiet while run() replayed the recorded task; heard again once it ran something new
    again = [r for r in caplog.records if r.name == "app.ContextApp"]
    assert [r.getMessage() for r in again] == ["run() passed the gate"]
    assert again[0].run_id == "ctx" and again[0].correlation_id == "corr-7"
    assert again[0].fields["workflow_id"] == "wf-7"
    run, task = out.in_run, out.in_task
    record = RunStore(open_store(file_store), "ContextApp", "ctx").read_run()
    assert run.started_at == task.started_at
    assert datetime.fromisoformat(run.started_at).timestamp() == pytest.approx(
        record.created_at, abs=1e-3)  # the record's creation, not this session's start
    for seen in (run, task):
        assert (seen.run_id, seen.workflow_id, seen.correlation_id) == ("ctx", "wf-7", "corr-7")
        assert (seen.app_name, seen.app_version, seen.same_logger) == \
            ("ContextApp", "1.2.0", True)
    assert (run.task_name, run.attempt) == (None, None)
    assert (task.task_name, task.attempt) == ("look", 1)


def test_context_names_another_app_refused_before_anything_is_written(ray_session, file_store):
    wrong = AppContext(app_name="SomethingElse", app_version="1")
    with pytest.raises(UsageError, match=r"names app 'SomethingElse'.*ContextApp"):
        run_app(f.ContextApp, {"folder": "/nowhere"}, run_id="wrong", store=file_store,
                context=wrong)
    assert not os.path.exists(file_store) or not os.listdir(file_store)


def test_context_outside_a_run_is_a_clear_error():
    with pytest.raises(AppContextError, match=r"ContextApp.context exists only while"):
        f.ContextApp().context  # noqa: B018
    with pytest.raises(AppContextError, match="continue_with"):
        f.ChunkedApp().continue_with({"folder": "x"})


# ---- durable app state ----------------------------------------------------------------------


def test_state_is_kept_per_app_across_runs_and_refused_in_run(ray_session, file_store):
    first = run_app(f.StateApp, {"rows": 5}, run_id="state-1", store=file_store)
    second = run_app(f.StateApp, {"rows": 7}, run_id="state-2", store=file_store)
    assert (first.before, first.after, second.before, second.after) == (0, 5, 5, 12)
    store = open_store(file_store)
    key = "state/StateApp/watermark.msgpack"
    assert store.exists(key)
    with pytest.raises(RunFailedError) as info:
        run_app(f.StateApp, {"rows": 1, "where": "run"}, run_id="state-run", store=file_store)
    assert isinstance(info.value.__cause__, StateError)
    assert "save_state() called outside a task" in str(info.value)
    assert info.value.non_retryable and info.value.error_type == "StateError"
    # a torn or flipped byte is detected, never returned as someone's watermark
    data = bytearray(store.read(key))
    data[-3] ^= 0xFF
    store.write(key, bytes(data))
    with pytest.raises(RunFailedError, match=r"checksum|corrupt"):
        run_app(f.StateApp, {"rows": 1}, run_id="state-3", store=file_store)


# ---- secrets --------------------------------------------------------------------------------


def _every_byte_of(folder) -> bytes:
    found = b""
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as fh:
                found += fh.read()
    return found


def test_secret_from_the_run_folder_never_reaches_store_or_log(ray_session, tmp_path,
                                                              file_store):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    value = "s3cr3t-" + os.urandom(8).hex()
    (secrets / "pg-password").write_text(value + "\n")
    out = run_app(f.SecretApp, {"name": "pg-password", "folder": str(tmp_path)},
                  run_id="secret", store=file_store, secrets_dir=str(secrets))
    assert out.sha256 == hashlib.sha256(value.encode()).hexdigest()  # newline dropped
    assert value.encode() not in _every_byte_of(file_store)
    assert str(secrets).encode() not in _every_byte_of(file_store)  # the folder travels only
    with pytest.raises(RunFailedError) as info:
        run_app(f.SecretApp, {"name": "absent"}, run_id="no-secret", store=file_store,
                secrets_dir=str(secrets))
    assert info.value.error_type == "SecretNotFoundError" and info.value.non_retryable
    assert "secret 'absent' not found" in str(info.value)
    with pytest.raises(RunFailedError, match="plain name"):
        run_app(f.SecretApp, {"name": "../secrets/pg-password"}, run_id="walk",
                store=file_store, secrets_dir=str(secrets))
    with pytest.raises(RunFailedError, match=r"get_secret\('pg-password'\) called inside run"):
        run_app(f.SecretApp, {"name": "pg-password", "in_run": True}, run_id="in-run",
                store=file_store, secrets_dir=str(secrets))


# ---- heartbeats -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_retry_gets_the_pages_its_predecessor_checkpointed(ray_session, tmp_path, request,
                                                           backend):
    store = str(tmp_path / "store") if backend == "file" else request.getfixturevalue("s3_url")
    out = run_app(f.CheckpointApp, {"folder": str(tmp_path), "pages": 6, "crash_at": 3},
                  run_id="pages", store=store)
    fetched = lines(tmp_path / "fetched")
    assert fetched == ["0 1", "1 1", "2 1", "3 2", "4 2", "5 2"]  # each page fetched once
    assert (out.resumed_at, out.files_back, out.rows) == (3, 1, 60)
    assert [p.storage_path.rsplit("/", 1)[-1] for p in out.parts] == \
        [f"page-{i}.parquet" for i in range(6)]
    # every page was uploaded once, by the checkpoint that carried it (heartbeat files=),
    # not again when the task returned it
    assert all(p.is_durable and "/files.0/page-" in p.storage_path for p in out.parts)
    # the checkpoints went with the run: nothing TRANSIENT is left after it completed
    assert open_store(store).list("runs/CheckpointApp/pages/files") == []


def test_auto_heartbeat_none_task_silent_while_alive_fails_and_is_retried(ray_session,
                                                                         tmp_path, file_store):
    started = time.monotonic()
    out = run_app(f.ManualBeatsApp, {"folder": str(tmp_path), "mode": "stall"},
                  run_id="stall", store=file_store)
    assert out.attempt == 2 and time.monotonic() - started < 40  # not the 120 s sleep
    failure = next(r for r in journal(file_store, "ManualBeatsApp", "stall") if r["y"] == "f")
    assert failure["e"]["kind"] == "stalled"
    assert failure["e"]["type"] == ProgressStalledError.__name__
    assert "auto_heartbeat_seconds=None" in failure["e"]["message"]
    pid = int(lines(tmp_path / "attempts")[0].split()[1])
    with pytest.raises(ProcessLookupError):  # the silent attempt's process was stopped
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)


def test_auto_heartbeat_none_counts_silence_from_the_start(ray_session, tmp_path, file_store):
    out = run_app(f.ManualBeatsApp, {"folder": str(tmp_path), "mode": "never"},
                  run_id="never", store=file_store)
    assert out.attempt == 2


def test_auto_heartbeat_none_own_beats_keep_a_long_task_alive(ray_session, tmp_path,
                                                             file_store):
    out = run_app(f.ManualBeatsApp, {"folder": str(tmp_path), "mode": "beats"},
                  run_id="beats", store=file_store)  # 3.6 s of work, 2 s heartbeat timeout
    assert out.attempt == 1
    assert not any(r["y"] == "f" for r in journal(file_store, "ManualBeatsApp", "beats"))


# ---- files ----------------------------------------------------------------------------------


def test_lazy_reference_and_output_files_read_outside_the_run(ray_session, tmp_path,
                                                             file_store, cli):
    out = run_app(f.FilesApp, {"n": 100}, run_id="files", store=file_store)
    assert out.status is OutputStatus.PARTIAL_SUCCESS
    assert out.data.local_path is None and out.data.is_durable  # a store path, not scratch
    assert arrow.read_table(out.data, store=file_store,
                            cache_dir=str(tmp_path / "c")).column("i").to_pylist() == \
        list(range(100))
    listed = cli("files", "files", "--store", file_store, "--json",
                 "--download", str(tmp_path / "dl"))
    assert listed.code == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["field"], r["storage_path"]) for r in rows] == [("data", out.data.storage_path)]
    got = arrow.read_table(out.data.model_copy(update={"local_path": rows[0]["downloaded_to"],
                                                       "is_durable": False}))
    assert got.num_rows == 100 and rows[0]["downloaded_to"] == str(tmp_path / "dl" /
                                                                    "rows.parquet")
    # a byte flipped in the store is refused, not read
    store = open_store(file_store)
    path = os.path.join(file_store, out.data.storage_path)
    os.chmod(path, 0o600)
    with open(path, "r+b") as fh:
        fh.seek(20)
        byte = fh.read(1)
        fh.seek(20)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(StorageIntegrityError):
        arrow.read_table(out.data, store=store, cache_dir=str(tmp_path / "fresh"))
    bad = cli("files", "files", "--store", file_store, "--download", str(tmp_path / "dl2"))
    assert bad.code == 1 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
    assert not os.path.exists(tmp_path / "dl2" / "rows.parquet")


def test_files_of_a_run_that_did_not_complete_is_an_error(ray_session, tmp_path, file_store,
                                                         cli):
    with pytest.raises(RunFailedError):
        run_app(f.StateApp, {"rows": 1, "where": "run"}, run_id="nofiles", store=file_store)
    res = cli("files", "nofiles", "--store", file_store)
    assert res.code == 1 and "FAILED" in res.stderr and res.stdout == ""


# ---- failed runs ----------------------------------------------------------------------------


def test_run_failed_error_says_task_and_why_once_and_keeps_the_flags(ray_session, tmp_path,
                                                                     file_store, cli):
    with pytest.raises(RunFailedError) as info:
        run_app(f.StateApp, {"rows": 1, "where": "run"}, run_id="flags", store=file_store)
    err = info.value
    assert (err.non_retryable, err.error_type, err.task) == (True, "StateError", None)
    back = pickle.loads(pickle.dumps(err))
    assert (back.non_retryable, back.error_type, str(back)) == (True, "StateError", str(err))
    assert not getattr(err.__cause__, "__notes__", None)  # the reason is said once, on top
    status = json.loads(cli("status", "flags", "--store", file_store, "--json").stdout)
    assert status["error"]["non_retryable"] is True
    assert status["error"]["type"] == "StateError"


def test_failed_attempts_are_told_on_stderr(ray_session, tmp_path, file_store, cli):
    res = cli("run", "tests.apps.errors_app:ErrorsApp", "--input",
              json.dumps({"count_file": str(tmp_path / "c"), "kind": "refused"}),
              "--run-id", "told", "--store", file_store)
    assert res.code == 1
    told = [ln for ln in res.stderr.splitlines() if "task refused attempt" in ln]
    assert len(told) == 1, res.stderr
    assert "attempt 1 failed: RefusedToken: the API refused the token (HTTP 401)" in told[0]
    assert "giving up (the error is non-retryable)" in told[0]
    last = res.stderr.strip().splitlines()[-1]
    assert last.count("the API refused the token") == 1 and "task refused" in last


def test_retry_delay_is_told_on_stderr(ray_session, tmp_path, file_store, cli):
    res = cli("run", "tests.apps.errors_app:ErrorsApp", "--input",
              json.dumps({"count_file": str(tmp_path / "c"), "kind": "unpicklable"}),
              "--run-id", "delays", "--store", file_store)
    told = [ln for ln in res.stderr.splitlines() if "task unpicklable attempt" in ln]
    assert len(told) == 3, res.stderr
    assert "attempt 1 failed: ResponseError: 401" in told[0] and "retrying in 0.0 s" in told[0]
    assert "giving up (no attempts left (3 of 3 used))" in told[2]


def test_non_retryable_error_class_name_reaches_the_run_error(ray_session, tmp_path,
                                                              file_store):
    with pytest.raises(RunFailedError) as info:
        run_app(f.SecretApp, {"name": "missing-one"}, run_id="nr", store=file_store)
    assert info.value.non_retryable and info.value.task == "use"
    assert isinstance(info.value.__cause__, NonRetryableError)
    assert str(info.value).count(str(info.value.__cause__)) == 1


# ---- entry points, cancellation seen from a task ---------------------------------------------


def test_entry_point_by_its_kebab_case_name_on_the_cli(ray_session, file_store, cli):
    res = cli("run", "tests.apps.seed:SnowflakeApp", "--entrypoint", "extract-metadata",
              "--input", json.dumps({"connection_id": "sf"}), "--run-id", "kebab",
              "--store", file_store)
    assert res.code == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.splitlines()[-1]) == {"rows_extracted": 7}
    record = RunStore(open_store(file_store), "SnowflakeApp", "kebab").read_run()
    assert record.entrypoint == "extract_metadata"  # one run, whichever spelling started it
    again = cli("run", "tests.apps.seed:SnowflakeApp", "--entrypoint", "extract_metadata",
                "--input", json.dumps({"connection_id": "sf"}), "--run-id", "kebab",
                "--store", file_store)
    assert again.code == 0 and again.stdout == res.stdout


def test_a_task_sees_a_cancellation_request_made_after_its_run_started(tmp_path):
    from runtime._appengine import RunEngine
    from runtime._runcontext import RunContext

    store = str(tmp_path / "store")
    runs = RunStore(open_store(store), "App", "r1")
    runs.request_cancel("an old request, honoured before this run resumed")
    honoured = runs.cancel_request()[1]
    run = RunContext("r1", "App", store, None, {"cancel_after": honoured})
    engine = RunEngine(run, "task")
    assert engine.is_cancelled() is False
    time.sleep(0.01)
    runs.request_cancel("stop, please")
    assert engine.is_cancelled() is False  # read at most once a second
    time.sleep(1.05)
    assert engine.is_cancelled() is True


def test_files_download_names_from_records_stay_inside_the_folder(tmp_path):
    from runtime.cli._files import _safe_name

    for hostile in ("..", ".", "../../etc", ".hidden", "", "a/b"):
        name = _safe_name(hostile)
        assert name and "/" not in name and not name.startswith(".")
        assert os.path.dirname(os.path.join(str(tmp_path), name)) == str(tmp_path)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_checkpoint_counts_as_missing_not_as_progress(tmp_path, damage):
    from runtime._runcontext import RunContext
    from runtime.worker._checkpoint import checkpoint_key, read_checkpoint
    from storage import encode

    run = RunContext("r1", "App", str(tmp_path / "store"))
    key = checkpoint_key(run, "fetch:abc:0")
    data = encode({"a": 1, "d": {"page": 41}, "f": [], "t": 0.0})
    run.store().write(key, data)
    assert read_checkpoint(run, "fetch:abc:0") == ({"page": 41}, [])
    bad = bytearray(data)
    if damage == "flip":
        bad[-2] ^= 0x01
    else:
        del bad[len(bad) // 2:]
    run.store().write(key, bytes(bad))
    assert read_checkpoint(run, "fetch:abc:0") is None  # start over, never a wrong page


def test_a_local_ray_run_says_nothing_about_token_authentication(tmp_path, file_store):
    """A Ray of the runtime's own (no RAY_ADDRESS): Ray's notice that token authentication is
    enabled tells an author nothing; attached to a cluster, Ray's notices are kept."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env["PYTHONPATH"] = os.getcwd()
    res = subprocess.run(
        [sys.executable, "-m", "runtime", "run", "tests.apps.seed:MyConnectorFirst",
         "--input", json.dumps({"connection_id": "c"}), "--run-id", "local",
         "--store", file_store], env=env, capture_output=True, text=True, timeout=180,
        cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.splitlines()[-1]) == {"rows_extracted": 42}
    assert "Token authentication" not in res.stderr
