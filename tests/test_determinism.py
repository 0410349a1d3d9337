"""Determinism guards, recorded values, divergence, payload safety and contract evolution."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Annotated, Any

import pytest

from application_sdk.contracts import (
    BoundedList,
    Input,
    MaxItems,
    Output,
    assert_backwards_compatible,
)
from application_sdk.errors import (
    ContractError,
    NondeterminismError,
    PayloadSafetyError,
    PayloadTooLargeError,
    RunFailedError,
)
from application_sdk.testing import replay, run_task
from runtime import run_app
from storage import RunStore, open_store

from .apps import determinism as d
from .apps.liveness import Page, PagingApp

GUARDED = ["datetime.now", "datetime.utcnow", "module datetime.now", "time.time",
           "imported time", "uuid.uuid4", "imported uuid4", "uuid.uuid1", "random.random",
           "random.choice", "os.urandom", "open", "socket", "subprocess", "thread",
           # reached without going through any module attribute a wrapper could sit on
           "local import datetime", "helper module clock", "helper module perf_counter",
           "time.monotonic", "time.perf_counter", "random.Random()", "random.SystemRandom()",
           "date.today"]


def journal(store: str, app: str, run_id: str) -> list[dict[str, Any]]:
    return RunStore(open_store(store), app, run_id).load_journal().records


@pytest.mark.parametrize("call", [*GUARDED, "import msgpack"])
def test_guarded_call_in_run_fails_before_any_dispatch(ray_session, tmp_path, file_store, call):
    with pytest.raises(RunFailedError) as info:
        run_app(d.GuardedApp, {"name": call, "folder": str(tmp_path)}, run_id="g",
                store=file_store)
    err = info.value.__cause__
    assert isinstance(err, NondeterminismError)
    assert "inside run()" in str(err) and "@task" in str(err)
    assert not (tmp_path / "probe").exists()  # no task was dispatched
    assert not (tmp_path / "written").exists()
    assert [r["n"] for r in journal(file_store, "GuardedApp", "g") if r["y"] == "t"] == [
        "cleanup_files", "cleanup_storage"]  # on_complete is not guarded


@pytest.mark.parametrize("call", ["time.time", "datetime.now"])
def test_guards_still_hold_after_replayed_task_calls(ray_session, tmp_path, file_store, call):
    # a replayed call turns the guards off while the runtime decodes its recorded output;
    # run() must be guarded again right after, on the first run and on every resume
    inp = {"name": f"after-tasks:{call}", "folder": str(tmp_path)}
    for _ in range(2):
        with pytest.raises(RunFailedError) as info:
            run_app(d.GuardedApp, inp, run_id="after", store=file_store)
        assert isinstance(info.value.__cause__, NondeterminismError)
    assert (tmp_path / "probe").read_text().count("ran") == 3  # the resume replayed all three


@pytest.mark.parametrize("call", GUARDED)
def test_the_same_calls_work_inside_a_task(ray_session, tmp_path, file_store, call):
    out = run_app(d.GuardedApp, {"name": f"task:{call}", "folder": str(tmp_path)},
                  run_id="t", store=file_store)
    assert out.ok


def test_passthrough_module_may_be_imported_in_run(ray_session, tmp_path, file_store):
    assert run_app(d.PassthroughApp, {"name": "x", "folder": str(tmp_path)}, run_id="p",
                   store=file_store).ok


def test_driver_io_is_unaffected_by_guards(ray_session, tmp_path, file_store):
    # the driver wrote run records, journal segments and a lease while run() was guarded
    run_app(d.GuardedApp, {"name": "task:open", "folder": str(tmp_path)}, run_id="io",
            store=file_store)
    assert RunStore(open_store(file_store), "GuardedApp", "io").read_run().status == "COMPLETED"
    assert open(os.devnull).read() == ""  # and guards are off outside run()


def test_now_and_uuid4_are_replay_stable_across_a_driver_sigkill(ray_session, tmp_path,
                                                                 file_store):
    (tmp_path / "hold").touch()
    cmd = [sys.executable, "-m", "runtime", "run", "tests.apps.determinism:StampApp",
           "--input", json.dumps({"folder": str(tmp_path)}), "--run-id", "stamp",
           "--store", file_store]
    env = {**os.environ, "RAY_ADDRESS": ray_session, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (tmp_path / "slow").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    values = {r["k"]: r["v"] for r in journal(file_store, "StampApp", "stamp") if r["y"] == "v"}
    assert len(values) == 2  # durable before the task that may use them was dispatched
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    (tmp_path / "hold").unlink()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    out = json.loads(again.stdout.splitlines()[-1])
    by_kind = {key.split(":")[0]: value for key, value in values.items()}
    assert out["at"] == by_kind["@now"]
    assert out["id"].replace("-", "") == by_kind["@uuid4"]


@pytest.mark.parametrize("call", ["seeded random.Random", "logging", "datetime arithmetic",
                                  "a gc callback's clock"])
def test_deterministic_calls_and_the_loops_own_clock_are_allowed_in_run(
        ray_session, tmp_path, file_store, call):
    assert run_app(d.AllowedApp, {"name": call, "folder": str(tmp_path)}, run_id="a",
                   store=file_store).ok


@pytest.mark.parametrize("guards", ["1", "0"])
def test_a_sleep_imported_in_a_helper_module_is_durable_with_or_without_guards(
        ray_session, tmp_path, file_store, monkeypatch, guards):
    monkeypatch.setenv("CONNECTOR_RUNTIME_GUARDS", guards)
    (tmp_path / "fail").touch()
    start = time.monotonic()
    with pytest.raises(RunFailedError):
        run_app(d.NapApp, {"folder": str(tmp_path), "sleep": 2.0}, run_id="nap",
                store=file_store)
    assert time.monotonic() - start >= 2.0
    (tmp_path / "fail").unlink()
    start = time.monotonic()
    assert run_app(d.NapApp, {"folder": str(tmp_path), "sleep": 2.0}, run_id="nap",
                   store=file_store).ok
    assert time.monotonic() - start < 2.0  # the timer fired already: replay sleeps what is left


def test_the_opt_out_turns_refusals_off(ray_session, tmp_path, file_store, monkeypatch):
    monkeypatch.setenv("CONNECTOR_RUNTIME_GUARDS", "0")
    for call in ("time.monotonic", "local import datetime", "random.Random()"):
        assert run_app(d.GuardedApp, {"name": call, "folder": str(tmp_path)},
                       run_id=f"off-{call.replace(' ', '-').replace('()', '')}",
                       store=file_store).ok


def test_asyncio_sleep_in_run_is_a_durable_timer(ray_session, tmp_path, file_store):
    (tmp_path / "fail").touch()
    start = time.monotonic()
    with pytest.raises(RunFailedError):
        run_app(d.StampApp, {"folder": str(tmp_path), "sleep": 2.0}, run_id="timer",
                store=file_store)
    assert time.monotonic() - start >= 2.0
    (tmp_path / "fail").unlink()
    start = time.monotonic()
    out = run_app(d.StampApp, {"folder": str(tmp_path), "sleep": 2.0}, run_id="timer",
                  store=file_store)
    assert out.slept and time.monotonic() - start < 2.0  # the timer had already fired
    assert any(r.get("k", "").startswith("@sleep:") for r in journal(file_store, "StampApp",
                                                                    "timer"))


def test_divergent_resume_fails_unless_the_version_is_bumped(ray_session, tmp_path,
                                                            file_store):
    inp = {"folder": str(tmp_path)}
    (tmp_path / "fail-load").touch()
    with pytest.raises(RunFailedError):
        run_app(d.DivergeV1, inp, run_id="div", store=file_store)
    (tmp_path / "fail-load").unlink()
    with pytest.raises(RunFailedError) as info:
        run_app(d.DivergeV2, inp, run_id="div", store=file_store)
    err = info.value.__cause__
    assert isinstance(err, NondeterminismError)
    assert "extract (extract:" in str(err) and "bump" in str(err)
    report = replay(d.DivergeV2, "div", store=file_store)
    assert report.divergent and report.not_requested[0].startswith("extract")
    out = run_app(d.DivergeV3, inp, run_id="div", store=file_store)
    assert out.done == "load"
    record = RunStore(open_store(file_store), "Diverge", "div").read_run()
    assert record.status == "COMPLETED"
    assert any("no longer asks for" in w and "extract" in w for w in record.warnings)


def test_replay_of_a_completed_run_matches_without_running_tasks(ray_session, tmp_path,
                                                                 file_store):
    run_app(d.DivergeV1, {"folder": str(tmp_path)}, run_id="same", store=file_store)
    ran = (tmp_path / "steps").read_text()
    report = replay(d.DivergeV1, "same", store=file_store)
    assert not report.divergent and report.replayed == 2
    assert report.output == {"done": "extract+load"}
    assert (tmp_path / "steps").read_text() == ran  # nothing executed


def test_output_over_the_payload_limit_fails_without_retry(ray_session, tmp_path, file_store):
    with pytest.raises(RunFailedError, match="payload limit") as info:
        run_app(d.BigApp, {"folder": str(tmp_path)}, run_id="big", store=file_store)
    err = info.value.__cause__
    assert isinstance(err, PayloadTooLargeError)
    assert "task big" in str(err) and "5.0 MiB" in str(err) and "FileReference" in str(err)
    assert (tmp_path / "big").read_text().count("attempt") == 1


def test_added_field_with_default_replays_old_journal(ray_session, tmp_path, file_store):
    inp = {"folder": str(tmp_path)}
    (tmp_path / "fail-finish").touch()
    with pytest.raises(RunFailedError):
        run_app(d.EvolvingV1, inp, run_id="evo", store=file_store)
    (tmp_path / "fail-finish").unlink()
    out = run_app(d.EvolvingV2, inp, run_id="evo", store=file_store)
    assert out.done == "7"
    assert (tmp_path / "count").read_text().split() == ["V1"]  # not re-run by V2


def test_breaking_change_is_a_contract_error_naming_task_and_field(ray_session, tmp_path,
                                                                   file_store):
    inp = {"folder": str(tmp_path)}
    (tmp_path / "fail-finish").touch()
    with pytest.raises(RunFailedError):
        run_app(d.EvolvingV1, inp, run_id="evo3", store=file_store)
    with pytest.raises(RunFailedError) as info:
        run_app(d.EvolvingV3, inp, run_id="evo3", store=file_store)
    err = info.value.__cause__
    assert isinstance(err, ContractError)
    assert "task count" in str(err) and "table" in str(err)


def test_unbounded_fields_are_refused_at_definition():
    with pytest.raises(PayloadSafetyError, match=r"Rows\.names is a list without a bound"):
        class Rows(Output):
            names: list[str]

    with pytest.raises(PayloadSafetyError, match="typed Any"):
        class Loose(Input):
            value: Any

    with pytest.raises(PayloadSafetyError, match="typed bytes"):
        class Raw(Output):
            data: bytes

    class Optout(Output, allow_unbounded_fields=True):
        names: list[str]

    class Bounded(Output):
        names: Annotated[list[str], MaxItems(2)]
        more: BoundedList[int] = []

    assert Bounded(names=["a", "b"]).names == ["a", "b"]
    with pytest.raises(ValueError, match="at most 2 items"):
        Bounded(names=["a", "b", "c"])
    assert Optout(names=["x"] * 3).names


def test_assert_backwards_compatible():
    assert_backwards_compatible(d.RowsV1, d.RowsV2)
    with pytest.raises(ContractError, match="'table' was added without a default"):
        assert_backwards_compatible(d.RowsV1, d.RowsV3)
    with pytest.raises(ContractError, match="'unit' was removed"):
        assert_backwards_compatible(d.RowsV2, d.RowsV1)


def test_run_task_in_process_with_heartbeat_details(tmp_path):
    result = run_task(PagingApp, "fetch_all", {"folder": str(tmp_path)},
                      heartbeat_details=Page(page=9).model_dump(), attempt=2)
    assert result.output.first_page_of_last_attempt == 9
    assert result.heartbeats == [{"page": 9}, {"page": 10}]


def test_no_guard_outlives_a_step_of_run():
    """A task call ends its runtime code in a later step than it began: the profile function
    switched back on there must not stay on for the event loop once that step is over (found
    by the soak: the driver's own retry bookkeeping, in another task, was refused)."""
    import asyncio
    import contextvars
    import sys as _sys

    from runtime.driver import _guards as guards

    class App:
        __module__ = "tests.fake"
        passthrough_modules = ()

    async def main():
        ctx = contextvars.copy_context()
        guards.activate(ctx, App)

        async def body():
            with guards.runtime_code():
                await asyncio.sleep(0)  # the call is dispatched: suspended in runtime code
            return 1  # its result is back: run()'s code again, in a later step

        await asyncio.get_running_loop().create_task(body(), context=ctx)
        after = _sys.getprofile()
        guards.deactivate()
        return after

    assert asyncio.run(main()) is None
