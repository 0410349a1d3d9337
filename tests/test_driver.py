"""The driver against a real local Ray: replay, retries, timeouts, crashes, budget."""

from __future__ import annotations

import time

import pytest

from application_sdk.errors import (
    NonRetryableError,
    RunFailedError,
    TaskBudgetExceededError,
    TaskTimeoutError,
    WorkerLostError,
)
from runtime import RunConflictError, run_app
from storage import LeaseLostError, RunStatus, RunStore, open_store

from .apps import behaviours as b
from .apps.counting import BatchInput, CountingApp


def lines(path) -> list[str]:
    try:
        with open(path) as fh:
            return fh.read().splitlines()
    except FileNotFoundError:
        return []


def test_fan_out_returns_outputs_in_call_order(ray_session, file_store, tmp_path):
    count = tmp_path / "count"
    out = run_app(
        CountingApp,
        BatchInput(count_file=str(count), n=40, parallel=True, jitter_ms=30),
        run_id="fan",
        store=file_store,
    )
    assert out.total == sum(i * i for i in range(40))
    assert sorted(lines(count)) == sorted(f"work {i}" for i in range(40))


def test_completed_run_returns_stored_output_without_running(ray_session, file_store, tmp_path):
    count = tmp_path / "count"
    inp = {"count_file": str(count), "n": 5}
    first = run_app(CountingApp, inp, run_id="again", store=file_store)
    assert len(lines(count)) == 5
    second = run_app(CountingApp, inp, run_id="again", store=file_store)
    assert second == first
    assert len(lines(count)) == 5  # nothing ran the second time


def test_different_input_for_existing_run_id_is_refused(ray_session, file_store, tmp_path):
    inp = {"count_file": str(tmp_path / "c"), "n": 2}
    run_app(CountingApp, inp, run_id="same", store=file_store)
    with pytest.raises(RunConflictError, match="different input"):
        run_app(CountingApp, {**inp, "n": 3}, run_id="same", store=file_store)


def test_a_record_written_by_a_tool_after_the_first_read_is_never_overwritten(
        ray_session, file_store, tmp_path, monkeypatch):
    """A new run (no record, no lease) skips reading its record again once it holds the
    lease: no driver can have written it. A tool that wrote one meanwhile (here: the first
    read is made to miss it) is not overwritten: the driver stops with a clear error and
    runs nothing."""
    count = tmp_path / "count"
    tool = RunStore(open_store(file_store), "CountingApp", "racy")
    run_app(CountingApp, {"count_file": str(count), "n": 2}, run_id="other", store=file_store)
    record = RunStore(open_store(file_store), "CountingApp", "other").read_run()
    record.run_id, record.input = "racy", {"count_file": "elsewhere", "n": 9}
    tool.write_run(record)
    before = tool.store.read(tool.key("run.msgpack"))
    monkeypatch.setattr(RunStore, "read_run", lambda self: None)
    with pytest.raises(LeaseLostError, match="record was changed by another driver"):
        run_app(CountingApp, {"count_file": str(count), "n": 3}, run_id="racy",
                store=file_store)
    assert tool.store.read(tool.key("run.msgpack")) == before
    assert len(lines(count)) == 2  # only the other run's tasks ever ran


def test_failed_run_resumes_without_redoing_completed_tasks(ray_session, file_store, tmp_path):
    count, flag = tmp_path / "count", tmp_path / "credential-is-wrong"
    flag.touch()
    inp = BatchInput(count_file=str(count), n=6, fail_at=4, broken_flag=str(flag))
    with pytest.raises(RunFailedError, match="task work failed") as info:
        run_app(CountingApp, inp, run_id="fix", store=file_store)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "item 4 is broken" in str(info.value.__cause__)
    runs = RunStore(open_store(file_store), "CountingApp", "fix")
    assert runs.read_run().status is RunStatus.FAILED
    assert sorted(lines(count)) == [f"work {i}" for i in range(4)]
    flag.unlink()  # fix the credential, resume the same run
    out = run_app(CountingApp, inp, run_id="fix", store=file_store)
    assert out.count == 6
    assert sorted(lines(count)) == sorted(f"work {i}" for i in range(6))  # each exactly once
    assert runs.read_run().status is RunStatus.COMPLETED


def test_task_failing_twice_then_succeeding(ray_session, file_store, tmp_path):
    count = tmp_path / "count"
    out = run_app(b.FlakyApp, b.Job(count_file=str(count)), run_id="flaky", store=file_store)
    assert out.attempt == 3
    assert lines(count) == ["attempt 1", "attempt 2", "attempt 3"]
    index = RunStore(open_store(file_store), "FlakyApp", "flaky").load_journal()
    failures = [r for r in index.records if r["y"] == "f"]
    done = [r for r in index.records if r["y"] == "t" and r["n"] == "flaky"]
    assert [f["a"] for f in failures] == [1, 2]
    assert all(f["e"]["type"] == "ConnectionError" for f in failures)
    assert len(done) == 1 and done[0]["a"] == 3


@pytest.mark.parametrize("explicit", [False, True])
def test_non_retryable_error_fails_at_once(ray_session, file_store, tmp_path, explicit):
    count = tmp_path / "count"
    with pytest.raises(RunFailedError, match=r"non.retryable") as info:
        run_app(
            b.NonRetryableApp,
            b.Job(count_file=str(count), seconds=float(explicit)),
            run_id=f"nr{int(explicit)}",
            store=file_store,
        )
    assert len(lines(count)) == 1
    expected = NonRetryableError if explicit else b.BadCredentials
    assert isinstance(info.value.__cause__, expected)


def test_timeout_fires_within_seconds_and_retries(ray_session, file_store, tmp_path):
    count = tmp_path / "count"
    start = time.monotonic()
    out = run_app(
        b.SleepyApp, b.Job(count_file=str(count), seconds=600), run_id="sleepy", store=file_store
    )
    assert out.attempt == 2
    assert time.monotonic() - start < 60  # the 600 s sleep was cut at its 2 s timeout
    assert lines(count) == ["start 1", "start 2"]


def test_timeout_without_retries_fails_the_run(ray_session, file_store, tmp_path):
    start = time.monotonic()
    with pytest.raises(RunFailedError, match="timeout") as info:
        run_app(
            b.AlwaysSleepyApp,
            b.Job(count_file=str(tmp_path / "c"), seconds=600),
            run_id="timeout",
            store=file_store,
        )
    assert isinstance(info.value.__cause__, TaskTimeoutError)
    assert time.monotonic() - start < 60


def test_worker_exit_is_retried_without_spending_retries(ray_session, file_store, tmp_path):
    count = tmp_path / "count"
    # max_attempts=1: only a retry that does not spend the budget can succeed
    out = run_app(b.CrashingApp, b.Job(count_file=str(count)), run_id="crash", store=file_store)
    assert out.attempt == 2
    assert lines(count) == ["attempt 1", "attempt 2"]
    records = RunStore(open_store(file_store), "CrashingApp", "crash").load_journal().records
    lost = [r for r in records if r["y"] == "f"]
    assert lost and lost[0]["e"]["kind"] == "lost"
    assert lost[0]["e"]["type"] == WorkerLostError.__name__


def test_task_budget_is_a_clear_error_before_dispatch(ray_session, file_store):
    with pytest.raises(RunFailedError, match="budget of 5 task executions") as info:
        run_app(b.BudgetApp, {"n": 8}, run_id="budget", store=file_store)
    assert isinstance(info.value.__cause__, TaskBudgetExceededError)
    records = RunStore(open_store(file_store), "BudgetApp", "budget").load_journal().records
    assert len([r for r in records if r["y"] == "t"]) == 5


def test_corrupt_journal_segment_means_tasks_run_again(ray_session, file_store, tmp_path):
    count = tmp_path / "count"
    inp = {"count_file": str(count), "n": 3, "fail_at": 2}
    with pytest.raises(RunFailedError):
        run_app(CountingApp, inp, run_id="torn", store=file_store)
    assert len(lines(count)) == 2
    store = open_store(file_store)
    runs = RunStore(store, "CountingApp", "torn")
    for key in store.list(runs.key("journal")):  # flip a byte in every segment
        path = store.path(key)
        data = bytearray(open(path, "rb").read())
        data[-1] ^= 0xFF
        open(path, "wb").write(bytes(data))
    assert runs.load_journal().corrupt  # detected, not returned as data
    with pytest.raises(RunFailedError):
        run_app(CountingApp, inp, run_id="torn", store=file_store)
    assert sorted(lines(count)) == ["work 0", "work 0", "work 1", "work 1"]
