"""The history fields of attempt records and the views over them, without Ray.

The step pipeline runs against in-process executors (as tests/test_units.py does); the views
are fed journal records of every shape Hypothesis can think of, because the store is data and
a reader must never trust a field to be there or to have its type.
"""

from __future__ import annotations

import asyncio
import json
import os

import msgpack
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ray import exceptions as rx

from application_sdk.app import App, RetryPolicy, task
from application_sdk.contracts import FileReference, Input, Output
from application_sdk.errors import TaskError
from runtime.driver import Budget, GroupCommitter, JournalIndex, StepRunner
from runtime.driver._timing import TRACEBACK_LIMIT, failed_fields
from runtime.service._runpage import _files, _timeline_view
from runtime.views import task_rows, timeline, trace_events
from runtime.worker import STAMP_ATTR
from runtime.worker._timing import file_stats, pack_result, unpack_result
from storage import Lease, RunStore, open_store


class In(Input):
    x: int = 0


class Out(Output):
    v: int


class Tiny(App):
    @task(retry_policy=RetryPolicy(max_attempts=2, initial_interval=0))
    async def t(self, input: In) -> Out: ...

    async def run(self, input: In) -> Out: ...


class StampedExecutor:
    """Answers like the Ray executor: (output bytes, the worker's stamp); fails first when
    told to, with a stamped error."""

    def __init__(self, fail_first: BaseException | None = None, block: bool = False) -> None:
        self.fail_first = fail_first
        self.block = block
        self.calls = 0

    async def run(self, spec, key, payload, number, details, timeout):
        self.calls += 1
        if self.block:
            await asyncio.Event().wait()
        if self.fail_first is not None and self.calls == 1:
            raise self.fail_first
        stamp = {"s": 100.25, "e": 100.75, "w": ["node-1", "10.0.0.7", 4242],
                 "f": [2, 2048, None]}
        return msgpack.packb({"v": number}, use_bin_type=True), stamp


def _steps(executor, tmp_path):
    runs = RunStore(open_store(str(tmp_path / "s")), "Tiny", "r")
    lease = Lease(runs)
    lease.acquire()
    committer = GroupCommitter(runs, lease, 0, interval=0)
    index = JournalIndex()

    async def no_sleep(_s):
        return None

    return committer, index, StepRunner(index, committer, executor, Budget(10, 0, "r"),
                                        sleep=no_sleep)


def _invoke(executor, tmp_path, cancel_after: float | None = None):
    async def scenario():
        committer, index, steps = _steps(executor, tmp_path)
        committer.start()
        spec = Tiny.tasks()["t"]
        call = asyncio.ensure_future(steps.invoke(spec, "t:k:0", In(), b"\x80"))
        if cancel_after is not None:
            await asyncio.sleep(cancel_after)
            call.cancel()
        try:
            await call
        except asyncio.CancelledError:
            pass
        await committer.close()
        return committer.written_records, index

    return asyncio.run(scenario())


def test_completed_record_carries_driver_and_worker_times_worker_and_files(tmp_path):
    records, _index = _invoke(StampedExecutor(), tmp_path)
    (done,) = [r for r in records if r["y"] == "t"]
    ts = done["ts"]
    assert (ts["s"], ts["e"]) == (100.25, 100.75)  # the worker's clock, as it sent them
    assert ts["d"] <= ts["r"] and ts["d"] > 1e9  # the driver's clock, around the call
    (worker,) = [r for r in records if r["y"] == "w"]  # once, before the record naming it
    assert worker == {"y": "w", "i": 0, "n": "node-1", "ip": "10.0.0.7", "p": 4242}
    assert done["w"] == 0 and records.index(worker) < records.index(done)
    assert done["fs"] == {"n": 2, "b": 2048}  # rows unknown: no "r"


def test_failed_record_keeps_the_stamp_that_travelled_and_the_traceback(tmp_path):
    error = TaskError("wrapped", ("x.Boom", "Boom"), "Traceback...\nBoom: wrapped")
    setattr(error, STAMP_ATTR, {"s": 5.0, "e": 6.0, "w": ["n", "1.2.3.4", 9]})
    records, index = _invoke(StampedExecutor(fail_first=error), tmp_path)
    (failed,) = [r for r in records if r["y"] == "f"]
    assert failed["ts"]["s"] == 5.0 and failed["ts"]["e"] == 6.0
    workers = {r["i"]: [r["n"], r["ip"], r["p"]] for r in records if r["y"] == "w"}
    assert workers[failed["w"]] == ["n", "1.2.3.4", 9]
    (done,) = [r for r in records if r["y"] == "t"]
    assert workers[done["w"]] == ["node-1", "10.0.0.7", 4242] and done["w"] != failed["w"]
    assert failed["tb"].endswith("Boom: wrapped")
    assert "tb" not in failed["e"]  # status' last_error stays {kind, type, message}
    assert index.executions == 2 and index.failures["t:k:0"] == 1


def test_failed_record_without_stamp_has_the_driver_times_only(tmp_path):
    records, _index = _invoke(StampedExecutor(fail_first=ConnectionError("x")), tmp_path)
    (failed,) = [r for r in records if r["y"] == "f"]
    assert set(failed["ts"]) == {"d", "r"}
    assert "w" not in failed and "tb" not in failed


def test_ray_task_error_names_the_worker_when_the_stamp_is_lost():
    text = "Traceback (most recent call last):\n" + "x" * (TRACEBACK_LIMIT * 2) + "\nValueError"
    err = rx.RayTaskError("task_attempt", text, ValueError("v"), pid=777, ip="10.1.2.3")
    dual = err.as_instanceof_cause()
    fields = failed_fields(dual, 1.0, 2.0)
    assert fields["w"] == [None, "10.1.2.3", 777]
    assert len(fields["tb"]) == TRACEBACK_LIMIT and fields["tb"].endswith("ValueError")
    assert "\x1b[" not in fields["tb"]


def test_a_cancelled_attempt_is_an_x_record_not_an_execution(tmp_path):
    records, index = _invoke(StampedExecutor(block=True), tmp_path, cancel_after=0.05)
    (cancelled,) = [r for r in records if r["y"] == "x"]
    assert (cancelled["k"], cancelled["n"], cancelled["a"]) == ("t:k:0", "t", 1)
    assert cancelled["ts"]["r"] >= cancelled["ts"]["d"]
    assert not [r for r in records if r["y"] in ("t", "f")]
    assert index.executions == 0 and not index.failures
    rebuilt = JournalIndex()
    for record in records:
        rebuilt.apply(record)
    assert rebuilt.executions == 0  # a resumed driver's budget does not count it either


def test_result_blob_round_trips_output_bytes_untouched():
    data = msgpack.packb({"v": 1, "blob": "x" * 1000}, use_bin_type=True)
    out, stamp = unpack_result(pack_result(data, 12.5, [1, 10, 3]))
    assert out == data and stamp["s"] == 12.5 and stamp["e"] >= 12.5
    assert stamp["f"] == [1, 10, 3] and stamp["w"][2] == os.getpid()


def _ref(path: str, fmt: str, count: int = 1, size: int = 10) -> FileReference:
    return FileReference(local_path=path, storage_path=f"runs/a/r/files/{os.path.basename(path)}",
                         is_durable=True, format=fmt, file_count=count, size_bytes=size)


def test_file_stats_count_rows_only_where_the_format_says(tmp_path):
    table = pa.table({"i": list(range(1234))})
    pq.write_table(table, tmp_path / "a.parquet")
    folder = tmp_path / "parts"
    folder.mkdir()
    for i in range(3):
        pq.write_table(pa.table({"i": list(range(100 + i))}), folder / f"p{i}.parquet")
    with pa.OSFile(str(tmp_path / "b.arrow"), "wb") as sink, \
            pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
        writer.write_table(table)
    (tmp_path / "c.csv").write_text("i\n1\n2\n")
    assert file_stats([_ref(str(tmp_path / "a.parquet"), "parquet", size=7)]) == [1, 7, 1234]
    assert file_stats([_ref(str(folder), "parquet", count=3, size=9)]) == [3, 9, 303]
    assert file_stats([_ref(str(tmp_path / "b.arrow"), "arrow")]) == [1, 10, 2468]
    assert file_stats([_ref(str(tmp_path / "c.csv"), "csv")]) == [1, 10, None]
    assert file_stats([_ref(str(tmp_path / "c.csv"), "parquet")]) == [1, 10, None]  # not it
    local_only = FileReference(local_path=str(tmp_path / "a.parquet"), format="parquet")
    assert file_stats([local_only]) is None
    mixed = [_ref(str(tmp_path / "a.parquet"), "parquet"), _ref(str(tmp_path / "c.csv"), "csv")]
    assert file_stats(mixed) == [2, 20, None]  # one unknown: the total is unknown


# ---- the views never trust a record's shape --------------------------------------------------

_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                    st.floats(allow_nan=False, allow_infinity=False, width=64),
                    st.text(max_size=8), st.binary(max_size=8))
_value = st.recursive(_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)),
    max_leaves=6)
_times = st.one_of(_value, st.dictionaries(st.sampled_from(["d", "r", "s", "e"]),
                                           st.one_of(_scalar, st.floats(1e9, 1e9 + 100)),
                                           max_size=4))
_record = st.fixed_dictionaries(
    {"y": st.sampled_from(["t", "f", "x", "p", "h", "o", "w", "s", "c", "v", "?"])},
    optional={"k": _value, "n": _value, "a": _value, "e": _value, "r": _value, "ts": _times,
              "w": st.one_of(_value, st.integers(0, 3)), "i": st.one_of(_value, st.integers(0, 3)),
              "ip": _value, "fs": _value, "tb": _value, "o": _value, "p": _value, "b": _value,
              "ep": st.one_of(_value, st.integers(0, 3)), "d": _value, "h": _value,
              "pid": _value, "t": _value})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_record, max_size=12), st.booleans())
def test_views_show_any_journal_without_raising(records, live):
    tl = timeline(records)
    rows = task_rows(tl, live)
    assert sum(r.attempts for r in rows) <= len(tl.spans)
    trace = trace_events(tl)
    json.dumps(trace)  # what `trace` writes must be JSON
    assert all(e["ph"] in ("M", "X", "B", "i") for e in trace["traceEvents"])
    assert all(e.get("dur", 0) >= 0 for e in trace["traceEvents"])
    origin = min([p.begin for p in tl.phases] + [s.begin for s in tl.spans
                                                 if s.duration is not None], default=0.0)
    _layout, _phases, bars = _timeline_view(tl, origin, 1.0)
    assert len(bars) == sum(1 for s in tl.spans if s.begin is not None and s.end is not None)
    _files(tl)


def test_a_phase_journaled_open_then_closed_is_one_closed_phase():
    records = [{"y": "p", "ep": 1, "n": "claim", "b": 10.0, "e": 11.0, "h": "h", "pid": 5},
               {"y": "p", "ep": 1, "n": "run", "b": 11.0},
               {"y": "p", "ep": 1, "n": "run", "b": 11.0, "e": 15.0},
               {"y": "p", "ep": 2, "n": "run", "b": 20.0}]
    tl = timeline(records)
    assert [(p.epoch, p.name, p.end) for p in tl.phases] == [
        (1, "claim", 11.0), (1, "run", 15.0), (2, "run", None)]
    events = trace_events(tl)["traceEvents"]
    assert [e["ph"] for e in events if e.get("cat") == "driver"] == ["X", "X", "B"]


@pytest.mark.parametrize("outcome", ["heartbeat", "stalled"])
def test_heartbeat_losses_are_instant_events(outcome):
    record = {"y": "f", "k": "t:k:0", "n": "t", "a": 1, "r": True,
              "e": {"kind": outcome, "type": "HeartbeatTimeoutError", "message": "silent"},
              "ts": {"d": 100.0, "r": 130.0}}
    events = trace_events(timeline([record]))["traceEvents"]
    (attempt,) = [e for e in events if e["ph"] == "X"]
    assert attempt["cat"] == outcome and attempt["args"]["clock"] == "driver"
    assert attempt["dur"] == 30e6
    names = [e["name"] for e in events if e["ph"] == "i"]
    assert names == ["heartbeat lost" if outcome == "heartbeat" else "progress stalled",
                     "retry t"]


def test_a_guarded_step_that_leaves_runtime_code_does_not_leave_the_guards_on():
    """The driver's own code after run() must run unguarded (the phases read the clock): a
    gathered call's last step starts inside runtime_code() and leaves it, which switches the
    profile function on for run()'s code; the step must put back what was there before."""
    import sys

    from runtime.driver import _guards as guards

    class Guarded(App):
        async def run(self, input: In) -> Out: ...

    async def call() -> int:
        with guards.runtime_code():  # as Orchestrator.call_task does around a dispatch
            await asyncio.sleep(0)
        return 1

    async def scenario() -> tuple[object, object]:
        import contextvars

        ctx = contextvars.copy_context()
        guards.activate(ctx, Guarded)
        try:
            task = asyncio.get_running_loop().create_task(call(), context=ctx)
            await task
            after = sys.getprofile()
        finally:
            guards.deactivate()
        return after, sys.getprofile()

    after, later = asyncio.run(scenario())
    assert after is None and later is None
