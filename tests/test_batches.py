"""Streaming batches on the default path (`runtime.dispatch._batch`), on a real Ray of 2 CPUs:
a fan-out wider than the cluster sends several attempts in one Ray task, and every promise of
an attempt holds inside a batch - each attempt runs once, a timeout, a crash, a frozen process
or a cancellation stops only the attempt it is about, and what never started is sent again
without spending an attempt."""

from __future__ import annotations

import collections
import math
import time

import pytest

from runtime import run_app
from runtime.dispatch import _batch
from storage import RunStore, open_store

from .apps import batches as b
from .test_liveness import Background, freeze_until_done, read_lines, wait_for
from .test_pools import attempts, dead, failures


@pytest.fixture(autouse=True)
def warm_workers(ray_session, tmp_path_factory) -> None:
    """Worker processes up before each test's run: on a cold 2-core machine (the session's Ray
    just started, or a test before killed its workers) the task's first results, which size
    its batches, can take over `PROBE_SECONDS`; the run then sends every attempt alone, as a
    slow task's, and these tests would not see batches at all."""
    folder = tmp_path_factory.mktemp("warm")
    run_app(b.BatchApp, {"folder": str(folder), "n": 2}, run_id="warm",
            store=str(folder / "store"))


def runs_per_item(folder) -> collections.Counter[int]:
    return collections.Counter(index for index, _, _ in attempts(folder))


def test_a_fan_out_wider_than_the_cluster_runs_in_batches_each_attempt_once(
        ray_session, tmp_path, file_store):
    out = run_app(b.BatchApp, {"folder": str(tmp_path), "n": 40}, run_id="wide",
                  store=file_store)
    assert out.count == 40 and out.attempts == [1] * 40
    assert runs_per_item(tmp_path) == {i: 1 for i in range(40)}
    tasks = collections.Counter(out.ray_tasks)
    # several attempts per Ray task. How many follows the first results' measure: on a loaded
    # machine at the session's start a fresh worker's first attempt measured 30-50 ms of its
    # own warm-up, and the batches held 2 (21 Ray tasks); quiet, 4-16
    assert len(tasks) <= 40 * 0.6 and max(tasks.values()) >= 2, tasks
    assert tasks[out.ray_tasks[0]] == tasks[out.ray_tasks[1]] == 1  # the first ones measure
    assert max(int(x) for x in read_lines(tmp_path / "concurrency")) <= 2
    assert failures(file_store, "BatchApp", "wide") == []


def test_a_fan_out_the_cluster_can_hold_sends_each_attempt_alone(ray_session, tmp_path,
                                                                 file_store):
    out = run_app(b.BatchApp, {"folder": str(tmp_path), "n": 2}, run_id="narrow",
                  store=file_store)
    assert out.count == 2 and len(set(out.ray_tasks)) == 2


def test_a_task_measured_slow_goes_one_attempt_per_ray_task(ray_session, tmp_path, file_store):
    """6 calls of 0.6 s on 2 slots: the first two measure the task (0.6 s is past
    BATCH_SECONDS), so none is batched and Ray balances them as before."""
    out = run_app(b.BatchApp, {"folder": str(tmp_path), "n": 6, "sleep": 0.6, "slow_from": 0},
                  run_id="slow", store=file_store)
    assert out.count == 6 and len(set(out.ray_tasks)) == 6


def batch_of(out, index: int) -> list[int]:
    return [i for i, t in enumerate(out.ray_tasks) if t == out.ray_tasks[index]]


def test_a_timeout_in_a_batch_stops_that_attempt_alone(ray_session, tmp_path, file_store):
    """12 calls: 0 and 1 measure the task, the rest go in batches of 2 or more from call 2;
    call 4 hangs past its 3 s timeout. What finished before it is kept; what never started
    behind it runs once, at attempt 1."""
    started = time.monotonic()
    out = run_app(b.BatchApp, {"folder": str(tmp_path), "n": 12, "hang_at": [4]},
                  run_id="hang", store=file_store)
    assert time.monotonic() - started < 30  # the hour-long sleep was cut at its timeout
    assert out.count == 12
    assert out.attempts == [1, 1, 1, 1, 2] + [1] * 7
    assert runs_per_item(tmp_path) == {i: 2 if i == 4 else 1 for i in range(12)}
    assert batch_of(out, 2)[0] == 2 and 3 in batch_of(out, 2)  # a batch, not two lone tasks
    assert dead(int(read_lines(tmp_path / "pid")[0]))
    [failure] = failures(file_store, "BatchApp", "hang")
    assert failure["e"]["kind"] == "timeout" and failure["e"]["type"] == "TaskTimeoutError"


def test_a_timeout_counts_from_the_attempts_own_start_not_its_batch(ray_session, tmp_path,
                                                                   file_store):
    """Calls 0-1 take no time (the task is measured short: batches of 2 or more), calls 2-11
    1.6 s each with a 3 s timeout: a batch takes 3.2 s or more, which must not count against
    its later attempts."""
    out = run_app(b.BatchApp, {"folder": str(tmp_path), "n": 12, "sleep": 1.6},
                  run_id="queued", store=file_store)
    assert out.attempts == [1] * 12
    # batched on a quiet machine; where the first results measured the task slow (a loaded
    # machine), each attempt went alone beyond the free slots, as a stream of one: either way
    # no wait in a batch or in Ray's queue counted against a timeout
    assert failures(file_store, "BatchApp", "queued") == []


def test_a_batch_waiting_in_rays_queue_spends_none_of_its_first_attempts_timeout(
        ray_session, tmp_path, file_store):
    """Another task holds one of the 2 slots for 4 s; the calls' batches of 0.8 s attempts
    share the other, so the later ones wait seconds in Ray's queue: past their first
    attempt's 3 s timeout had it counted from dispatch."""
    out = run_app(b.BlockedBatchApp, {"folder": str(tmp_path), "n": 12, "sleep": 0.8},
                  run_id="blocked", store=file_store)
    assert out.count == 12 and out.attempts == [1] * 12
    assert len({out.ray_tasks[i] for i in range(2, 12)}) < 10  # batched
    assert failures(file_store, "BlockedBatchApp", "blocked") == []


def test_a_crash_in_a_batch_is_a_lost_worker_for_that_attempt_alone(ray_session, tmp_path,
                                                                    file_store):
    """os._exit in call 4 (max_attempts=1: only a lost worker's retry is free): calls 5-6,
    behind it in its batch, never started and run once, at attempt 1."""
    out = run_app(b.LossBatchApp, {"folder": str(tmp_path), "n": 12, "crash_at": [4]},
                  run_id="crash", store=file_store)
    assert out.count == 12 and out.attempts == [1, 1, 1, 1, 2] + [1] * 7
    assert runs_per_item(tmp_path) == {i: 2 if i == 4 else 1 for i in range(12)}
    [failure] = failures(file_store, "LossBatchApp", "crash")
    assert failure["e"]["kind"] == "lost" and failure["e"]["type"] == "WorkerLostError"


def test_a_frozen_worker_in_a_batch_is_caught_by_its_silence(ray_session, tmp_path,
                                                             file_store):
    job = Background(run_app, b.LossBatchApp, {"folder": str(tmp_path), "n": 12,
                                               "hang_at": [4]},
                     run_id="frozen", store=file_store)
    job.start()
    pid = int(wait_for(lambda: read_lines(tmp_path / "pid"), 60, "call 4 to start")[0])
    time.sleep(1.5)  # it has beaten
    freeze_until_done(job, pid, 90)
    assert not job.is_alive() and job.error is None, job.error
    out = job.result
    assert out.count == 12 and out.attempts == [1, 1, 1, 1, 2] + [1] * 7
    assert runs_per_item(tmp_path) == {i: 2 if i == 4 else 1 for i in range(12)}
    [failure] = failures(file_store, "LossBatchApp", "frozen")
    assert failure["e"]["kind"] == "heartbeat"


def test_a_cancelled_call_queued_in_a_batch_never_runs(ray_session, tmp_path, file_store):
    """Calls 2-11 of 0.5 s in batches; run() gives up on call 9 0.2 s after the batches went
    out, while it waits in its batch. Call 9 never starts; the call running (or due) in its
    batch then is lost with the batch and is attempted again (free: max_attempts=1); the rest
    run once. (With a fixed 0.5 s from the start, a loaded machine had not measured the task
    yet: call 9 was still held by the driver, dropped there, and nothing was lost.) Under two
    busy loops beside the suite, call 9 can also be the first of its batch: nothing is ahead
    of it to lose, and the batch may have just left Ray's queue when it is cancelled."""
    out = run_app(b.CancelBatchApp, {"folder": str(tmp_path), "n": 12, "sleep": 0.5},
                  run_id="cancel", store=file_store)
    assert out.cancelled == [9] and out.count == 11
    ran = runs_per_item(tmp_path)
    # the attempt ahead of call 9 in its batch: lost with the batch and retried alone
    again = [i for i, a in enumerate(out.attempts) if a == 2]
    assert len(again) <= 1 and all(2 <= i <= 11 and ran[i] in (1, 2) for i in again)
    if again:
        assert 9 not in ran  # it waited behind that attempt: it never started
    else:  # first of its batch, which was leaving Ray's queue as it was cancelled (the driver
        assert ran[9] <= 1  # learns of a batch's start from its first item): stopped there
    assert all(ran[i] == 1 and out.attempts[i] == 1 for i in range(12) if i not in {*again, 9})
    records = RunStore(open_store(file_store), "CancelBatchApp", "cancel").load_journal()
    assert [r["e"]["kind"] for r in records.records if r["y"] == "f"] == ["lost"] * len(again)


@pytest.mark.parametrize("n, slots, per_attempt, size", [
    (1000, 2, None, 1),       # not measured yet: alone (the first ones measure it)
    (2, 2, 0.001, 1),         # the cluster holds them: alone
    (3, 2, 0.001, 2),         # 2 batches (a multiple of the slots)
    (12, 2, 0.005, 6),
    (1000, 2, 0.001, 32),     # MAX_BATCH for a fast task
    (1000, 2, 0.05, 2),       # BATCH_SECONDS of a slower one
    (1000, 2, 0.2, 1),        # past BATCH_SECONDS: alone
    (1000, 100, 0.001, 10),   # 100 batches of 10, one per slot: not 32 of 32
    (4000, 100, 0.001, 20),   # 200 batches: two full waves of 100, not 125 (one and a tail)
    (10, math.inf, 0.001, 1),  # no resource limit (num_cpus=0)
])
def test_batch_sizes(n, slots, per_attempt, size):
    batcher = _batch.TaskBatcher("t", None, None, (), slots, None)  # type: ignore[arg-type]
    batcher.per_attempt = per_attempt
    assert batcher._batch_size(n) == size


def test_slots_sum_what_each_alive_node_can_place():
    nodes = [{"Resources": {"CPU": 4.0, "memory": 8e9}}, {"Resources": {"CPU": 1.0}}]
    assert _batch.slots_of({"CPU": 1.0}, nodes) == 5
    assert _batch.slots_of({"CPU": 2.0}, nodes) == 2
    assert _batch.slots_of({"CPU": 1.0, "memory": 4e9}, nodes) == 2
    assert _batch.slots_of({}, nodes) == math.inf
