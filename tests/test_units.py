"""Pure parts, no Ray: call keys, failure decisions, the step pipeline, group commit."""

from __future__ import annotations

import asyncio

import pytest
from ray import exceptions as rx

from application_sdk.app import App, RetryPolicy, TaskOptions, task
from application_sdk.contracts import Input, Output
from application_sdk.errors import NonRetryableError, TaskTimeoutError
from runtime.dispatch import FailureKind, classify, decide
from runtime.driver import (
    Budget,
    CallKeys,
    GroupCommitter,
    JournalIndex,
    StepRunner,
    canonical_json,
    digest,
)
from storage import Lease, RunStore, open_store


class In(Input):
    a: int
    b: str = "x"


class Out(Output):
    v: int


def test_call_keys_do_not_depend_on_field_order_and_count_occurrences():
    d1 = digest(canonical_json({"a": 1, "b": "y"}))
    d2 = digest(canonical_json(In(b="y", a=1)))
    assert d1 == d2
    # a field at its default is not part of the identity (scheme 2); scheme 1 digests it
    assert canonical_json(In(a=1)) == canonical_json(In(a=1, b="x")) == b'{"a":1}'
    assert canonical_json(In(a=1), scheme=1) == b'{"a":1,"b":"x"}'
    keys = CallKeys()
    assert [keys.next("", "t", d1) for _ in range(3)] == [f"t:{d1}:{i}" for i in range(3)]
    assert keys.next("", "other", d1) == f"other:{d1}:0"


def test_decide_backoff_budget_and_losses():
    opts = TaskOptions(name="t", retry_policy=RetryPolicy(max_attempts=3, initial_interval=1))
    err = classify(ValueError("boom"))
    assert decide(opts, err, 1, 0, 0).delay == 1
    assert decide(opts, err, 2, 0, 0).delay == 2
    assert not decide(opts, err, 3, 0, 0).retry
    lost = classify(rx.WorkerCrashedError())
    assert lost.kind is FailureKind.LOST
    assert decide(opts, lost, 0, 3, 0).retry and not decide(opts, lost, 0, 4, 0).retry
    assert not decide(opts, classify(NonRetryableError("no")), 1, 0, 0).retry
    deadline = TaskOptions(name="t", schedule_to_close_seconds=5)
    assert not decide(deadline, err, 1, 0, 4.5).retry


def test_classify_timeout_and_non_retryable_names():
    assert isinstance(classify(TimeoutError(), 3).error, TaskTimeoutError)
    opts = TaskOptions(name="t", retry_policy=RetryPolicy(non_retryable_errors=("KeyError",)))
    assert not decide(opts, classify(KeyError("k")), 1, 0, 0).retry


class FakeExecutor:
    """Runs the task function in-process: the pipeline is tested without Ray."""

    def __init__(self, fail_times: int) -> None:
        self.fail_times = fail_times
        self.calls = 0

    async def run(self, spec, key, payload, number, details, timeout):
        import msgpack

        self.calls += 1
        if self.calls <= self.fail_times:
            raise ConnectionError(f"attempt {number} failed")
        return msgpack.packb({"v": number})


class Tiny(App):
    @task(retry_policy=RetryPolicy(max_attempts=3, initial_interval=0))
    async def t(self, input: In) -> Out: ...

    async def run(self, input: In) -> Out: ...


def _pipeline(fail_times: int, store_url: str):
    runs = RunStore(open_store(store_url), "Tiny", "r")
    lease = Lease(runs)
    lease.acquire()
    committer = GroupCommitter(runs, lease, 0, interval=0)
    index = JournalIndex()
    executor = FakeExecutor(fail_times)
    steps = StepRunner(index, committer, executor, Budget(10, 0, "r"), sleep=lambda s: _noop())
    return runs, committer, index, executor, steps


async def _noop():
    return None


@pytest.mark.parametrize(("fails", "ok"), [(0, True), (2, True), (3, False)])
def test_step_pipeline_records_attempts_and_outputs(fails, ok, tmp_path):
    async def scenario():
        runs, committer, _index, executor, steps = _pipeline(fails, str(tmp_path / "s"))
        committer.start()
        spec = Tiny.tasks()["t"]
        try:
            if ok:
                out = await steps.invoke(spec, "k", In(a=1), b"")
                assert out == Out(v=fails + 1)
                again = await steps.invoke(spec, "k", In(a=1), b"")  # replayed, not run
                assert again == out and executor.calls == fails + 1
            else:
                with pytest.raises(ConnectionError, match="attempt 3 failed"):
                    await steps.invoke(spec, "k", In(a=1), b"")
        finally:
            await committer.close()
        kinds = [r["y"] for r in runs.load_journal().records]
        assert kinds == ["f"] * min(fails, 3) + (["t"] if ok else [])

    asyncio.run(scenario())


def test_group_commit_batches_and_close_never_hangs(tmp_path):
    async def scenario():
        runs = RunStore(open_store(str(tmp_path / "s")), "A", "r")
        lease = Lease(runs)
        lease.acquire()
        committer = GroupCommitter(runs, lease, 0, interval=0.01)
        committer.start()
        for round_ in range(50):
            for i in range(20):
                committer.append({"y": "t", "k": f"{round_}-{i}", "n": "t", "o": b"", "a": 1})
            if round_ % 7 == 0:
                await committer.flush()
            await asyncio.sleep(0)
        await asyncio.wait_for(committer.close(), 10)
        load = runs.load_journal()
        assert len(load.records) == 1000
        assert load.segments < 100  # batched: far fewer writes than records

    asyncio.run(scenario())
