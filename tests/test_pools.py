"""Pools of warm executor actors (`@task(pool=...)`) on a real Ray: every promise of a task
attempt on the pool path (timeouts, worker loss, frozen processes, heartbeats keeping a blocked
attempt alive, heartbeat details, the progress watchdog, cancellation, the task budget, a
driver SIGKILLed mid-run), the concurrency cap, replacement and warmth. Node loss on the pool
path: tests/test_multinode.py."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import msgpack
import pytest

from application_sdk.app import App, Pool, task
from application_sdk.contracts import Input, Output
from application_sdk.errors import (
    DefinitionError,
    HeartbeatTimeoutError,
    ProgressStalledError,
    RunFailedError,
    TaskBudgetExceededError,
    TaskUnschedulableError,
    WorkerLostError,
)
from runtime import run_app, run_app_async
from storage import RunStatus, RunStore, open_store

from .apps import pools as p
from .test_liveness import Background, freeze_until_done, read_lines, wait_for


def failures(store: str, app: str, run_id: str) -> list[dict]:
    records = RunStore(open_store(store), app, run_id).load_journal().records
    return [r for r in records if r["y"] == "f"]


def attempts(folder) -> list[tuple[int, int, int]]:
    return [tuple(map(int, line.split())) for line in read_lines(folder / "attempts")]


def dead(pid: int) -> bool:
    return not p._alive(pid)


# -- declaring pools ------------------------------------------------------------------------------


class _In(Input):
    x: int = 0


class _Out(Output):
    x: int = 0


def test_a_task_naming_an_undeclared_pool_is_refused_when_the_class_is_defined():
    with pytest.raises(DefinitionError, match=r"names pool 'db'.*does not declare.*Pool\(size"):
        class Undeclared(App):
            pools = {"api": 2}

            @task(pool="db")
            async def read(self, input: _In) -> _Out:
                return _Out()


def test_pool_declarations_are_checked_and_sizes_may_be_ints():
    class Declared(App):
        pools = {"db": 3, "api": Pool(size=1, max_attempts_per_actor=10)}

        @task(pool="db")
        async def read(self, input: _In) -> _Out:
            return _Out()

    assert Declared._pools == {"db": Pool(size=3), "api": Pool(size=1, max_attempts_per_actor=10)}
    assert Declared._tasks["read"].options.pool == "db"
    for bad in (0, -1, 1.5, True):
        with pytest.raises(DefinitionError, match=r"Pool\.size"):
            Pool(size=bad)  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="max_attempts_per_actor"):
        Pool(size=1, max_attempts_per_actor=0)
    with pytest.raises(DefinitionError, match="placement is the pool's"):
        class Placed(App):
            pools = {"db": 1}

            @task(pool="db", num_cpus=2)
            async def read(self, input: _In) -> _Out:
                return _Out()


def test_a_pools_placement_reaches_its_actors(ray_session, tmp_path, file_store):
    out = run_app(p.PlacedPoolApp, {"folder": str(tmp_path)}, run_id="placed",
                  store=file_store)
    assigned = json.loads(out.resources)
    assert assigned["CPU"] == 0.5 and assigned["memory"] == 50 * 2**20


def test_a_pool_no_node_can_place_fails_after_a_bounded_wait(ray_session, tmp_path,
                                                             file_store, monkeypatch):
    monkeypatch.setenv("CONNECTOR_RUNTIME_UNSCHEDULABLE_WAIT", "2")
    start = time.monotonic()
    with pytest.raises(RunFailedError) as info:
        run_app(p.UnplaceablePoolApp, {"folder": str(tmp_path)}, run_id="unplaceable",
                store=file_store)
    assert time.monotonic() - start < 30
    err = info.value.__cause__
    assert isinstance(err, TaskUnschedulableError)
    assert "task train" in str(err) and "tpu_pod" in str(err)


# -- the cap, through crashes and timeouts --------------------------------------------------------


def test_a_pool_of_two_never_runs_three_at_once(ray_session, tmp_path, file_store):
    """24 gathered tasks, one crashing its actor and one hanging past its timeout: whatever
    is killed and replaced, no more than 2 attempts ever run at once, and all finish."""
    out = run_app(p.PoolApp, {"folder": str(tmp_path), "n": 24, "sleep": 0.1,
                              "crash_at": [5], "hang_at": [11]},
                  run_id="cap", store=file_store)
    assert out.count == 24
    seen = [int(x) for x in read_lines(tmp_path / "concurrency")]
    assert len(seen) >= 26  # every attempt counted (the crashed and the hung one ran twice)
    assert max(seen) == 2, seen  # both actors worked at once, never a third
    kinds = sorted(f["e"]["kind"] for f in failures(file_store, "PoolApp", "cap"))
    assert "timeout" in kinds and "lost" in kinds
    assert out.attempts[11] == 2 and out.attempts[5] >= 2
    assert dead(int(read_lines(tmp_path / "pid")[0]))  # the hung process was stopped
    assert len({pid for _, _, pid in attempts(tmp_path)}) >= 3  # actors were replaced
    # The pool path journals each attempt's history as the Ray-task path does (`trace`, pages)
    from runtime.views import load_timeline

    st = open_store(file_store)
    spans = [sp for sp in load_timeline(st, RunStore(st, "PoolApp", "cap").read_run()).spans
             if sp.task == "work"]
    completed = [sp for sp in spans if sp.outcome == "completed"]
    assert len(completed) == 24
    assert all(sp.started and sp.ended and sp.dispatched and sp.received for sp in completed)
    worked = {pid for _, _, pid in attempts(tmp_path)}
    assert {sp.pid for sp in completed} <= worked  # the actors' own pids
    assert "timeout" in {sp.outcome for sp in spans}


def test_two_runs_in_one_driver_share_the_pools_cap(ray_session, tmp_path, file_store):
    """Two runs of the app gathered on one event loop: one pool of 2 for both, not 2 each."""
    inp = {"folder": str(tmp_path), "n": 6, "sleep": 0.2}

    async def both():
        return await asyncio.gather(
            run_app_async(p.PoolApp, inp, run_id="share-1", store=file_store),
            run_app_async(p.PoolApp, inp, run_id="share-2", store=file_store))

    first, second = asyncio.run(both())
    assert first.count == second.count == 6
    seen = [int(x) for x in read_lines(tmp_path / "concurrency")]
    assert len(seen) == 12 and max(seen) == 2, seen
    assert len(set(first.pids) | set(second.pids)) == 2  # the same two actors served both


def test_timeout_kills_the_actor_and_the_attempt_is_retried(ray_session, tmp_path, file_store):
    started = time.monotonic()
    out = run_app(p.PoolApp, {"folder": str(tmp_path), "n": 1, "hang_at": [0]},
                  run_id="hang", store=file_store)
    assert time.monotonic() - started < 30  # the hour-long sleep was cut at its 3 s timeout
    assert out.attempts == [2]
    hung = int(read_lines(tmp_path / "pid")[0])
    assert out.pids[0] != hung and dead(hung)
    [failure] = failures(file_store, "PoolApp", "hang")
    assert failure["e"]["kind"] == "timeout" and failure["e"]["type"] == "TaskTimeoutError"


def test_timeout_counts_from_the_attempts_own_start_not_its_batch(ray_session, tmp_path,
                                                                  file_store):
    """10 tasks of 0.8 s on 2 actors with a 3 s timeout: the last ones wait 3.2 s for an
    actor, which must not count against them."""
    out = run_app(p.PoolApp, {"folder": str(tmp_path), "n": 10, "sleep": 0.8},
                  run_id="queued", store=file_store)
    assert out.attempts == [1] * 10
    assert failures(file_store, "PoolApp", "queued") == []


def test_worker_loss_is_retried_without_spending_the_retry_budget(ray_session, tmp_path,
                                                                  file_store):
    out = run_app(p.LossApp, {"folder": str(tmp_path), "n": 1, "crash_at": [0]},
                  run_id="crash", store=file_store)
    assert out.attempts == [2]  # max_attempts=1: only a lost worker's retry is free
    [(_, _, first), (_, _, second)] = attempts(tmp_path)
    assert first != second and dead(first)
    [failure] = failures(file_store, "LossApp", "crash")
    assert failure["e"]["kind"] == "lost" and failure["e"]["type"] == WorkerLostError.__name__


def test_a_crash_in_a_batch_loses_no_result_it_reported_and_isolates_the_culprit(
        ray_session, tmp_path, file_store):
    out = run_app(p.LossApp, {"folder": str(tmp_path), "n": 40, "crash_at": [17]},
                  run_id="batch-crash", store=file_store)
    assert out.count == 40 and out.attempts[17] == 2
    # what the crash took is its own batch (a run of consecutive items, FIFO): the batches
    # reported before it (the first holds at least items 0-7) are never run again
    retried = [i for i, a in enumerate(out.attempts) if a > 1]
    assert 17 in retried and retried == list(range(retried[0], retried[-1] + 1))
    assert retried[0] >= 8
    assert [a[1] for a in attempts(tmp_path) if a[0] == 17] == [1, 2]
    assert all(f["e"]["kind"] == "lost" for f in failures(file_store, "LossApp", "batch-crash"))


def test_a_task_that_always_kills_its_actor_fails_alone(ray_session, tmp_path, file_store):
    """Its batch-mates lose their actor with it once; their next attempts run apart from it,
    so only the culprit uses up max_worker_losses and names the failure."""
    with pytest.raises(RunFailedError, match=r"lost its worker 4 times") as info:
        run_app(p.PoolApp, {"folder": str(tmp_path), "n": 30, "poison_at": 9},
                run_id="poison", store=file_store)
    assert isinstance(info.value.__cause__, WorkerLostError)
    by_key: dict[str, int] = {}
    for f in failures(file_store, "PoolApp", "poison"):
        by_key[f["k"]] = by_key.get(f["k"], 0) + 1
    [losses] = [n for n in by_key.values() if n > 1]  # one key lost more than once
    assert losses == 4
    assert [a[1] for a in attempts(tmp_path) if a[0] == 9] == [1, 2, 3, 4]


def test_a_frozen_actor_is_caught_by_its_silence_and_replaced(ray_session, tmp_path, file_store):
    job = Background(run_app, p.LossApp, {"folder": str(tmp_path), "n": 1, "hang_at": [0]},
                     run_id="frozen", store=file_store)
    job.start()
    pid = int(wait_for(lambda: read_lines(tmp_path / "pid"), 60, "the task to start")[0])
    time.sleep(2.0)  # it has beaten by now (first beat after 1 s)
    frozen_at = freeze_until_done(job, pid, 60)
    assert not job.is_alive() and job.error is None, job.error
    assert job.result.attempts == [2] and job.result.pids[0] != pid
    assert time.monotonic() - frozen_at < 25  # 3 s of silence, a drain, the kill
    [failure] = failures(file_store, "LossApp", "frozen")
    assert failure["e"]["kind"] == "heartbeat"
    assert failure["e"]["type"] == HeartbeatTimeoutError.__name__
    wait_for(lambda: dead(pid), 10, "the frozen process to be killed")


def test_heartbeat_details_survive_an_actor_crash(ray_session, tmp_path, file_store):
    out = run_app(p.PagingPoolApp, {"folder": str(tmp_path)}, run_id="paging",
                  store=file_store)
    assert out.first_page_of_last_attempt == 7
    pages = [tuple(map(int, x.split())) for x in read_lines(tmp_path / "pages")]
    assert [pg for pg, a in pages if a == 1] == [1, 2, 3, 4, 5, 6, 7]
    assert [pg for pg, a in pages if a == 2] == [7, 8, 9, 10]


def test_an_attempt_blocked_past_its_heartbeat_timeout_lives_while_its_actor_beats(
        ray_session, tmp_path, file_store):
    """4 s in time.sleep with a 2 s silence limit, two at once: the actor's heartbeat thread
    beats for the attempt it runs, so neither is taken for frozen (one attempt allowed)."""
    out = run_app(p.BusyPoolApp, {"folder": str(tmp_path), "n": 2, "sleep": 4.0},
                  run_id="busy", store=file_store)
    assert out.attempts == [1, 1] and len(set(out.pids)) == 2
    assert failures(file_store, "BusyPoolApp", "busy") == []


def test_the_progress_watchdog_stops_a_stalled_pool_attempt(ray_session, tmp_path, file_store):
    out = run_app(p.StuckPoolApp, {"folder": str(tmp_path)}, run_id="stuck", store=file_store)
    assert out.attempt == 2
    [(_, _, stuck), (_, _, second)] = attempts(tmp_path)
    assert second != stuck and out.pid == second  # the stuck actor was replaced
    wait_for(lambda: dead(stuck), 10, "the stalled attempt's actor to be killed")
    [failure] = failures(file_store, "StuckPoolApp", "stuck")
    assert failure["e"]["type"] == ProgressStalledError.__name__
    assert "unchanged" in failure["e"]["message"]


# -- errors, budget, cancellation -----------------------------------------------------------------


def test_a_failing_task_fails_the_run_and_nothing_starts_after_it(ray_session, tmp_path,
                                                                 file_store):
    with pytest.raises(RunFailedError, match="access denied") as info:
        run_app(p.PoolApp, {"folder": str(tmp_path), "n": 200, "sleep": 0.05, "fail_at": 3},
                run_id="fails", store=file_store)
    assert isinstance(info.value.__cause__, PermissionError)
    started = len(attempts(tmp_path))
    time.sleep(1.0)
    assert len(attempts(tmp_path)) == started < 200  # the rest was never started


def test_task_budget_holds_on_a_pool(ray_session, tmp_path, file_store):
    with pytest.raises(RunFailedError, match="budget of 5 task executions") as info:
        run_app(p.BudgetPoolApp, {"folder": str(tmp_path), "n": 8, "parallel": False},
                run_id="budget", store=file_store)
    assert isinstance(info.value.__cause__, TaskBudgetExceededError)
    assert len(attempts(tmp_path)) == 5


def test_cancel_stops_pool_attempts_within_seconds(ray_session, tmp_path, file_store, cli):
    inp = json.dumps({"folder": str(tmp_path), "n": 100})
    cmd = [sys.executable, "-m", "runtime", "run", "tests.apps.pools:SlowPoolApp",
           "--input", inp, "--run-id", "to-cancel", "--store", file_store]
    env = {**os.environ, "RAY_ADDRESS": ray_session, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_for(lambda: len(read_lines(tmp_path / "items")) >= 10, 60, "ten items to start")
    asked = time.monotonic()
    assert cli("cancel", "to-cancel", "--store", file_store).code == 0
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - asked < 10
    assert proc.returncode == 1 and "cancelled" in err and out == ""
    runs = RunStore(open_store(file_store), "SlowPoolApp", "to-cancel")
    assert runs.read_run().status is RunStatus.CANCELLED
    lines = read_lines(tmp_path / "items")
    started = {int(x.split()[1]): int(x.split()[2]) for x in lines if x.startswith("start")}
    assert len(started) < 100
    assert len({pid for pid in started.values()}) <= 2
    time.sleep(1.0)
    for pid in set(started.values()):  # the pool's actors are gone with the run
        assert dead(pid)
    assert len(read_lines(tmp_path / "items")) == len(lines)


# -- replacement and warmth -----------------------------------------------------------------------


def test_an_actor_is_replaced_after_max_attempts_per_actor(ray_session, tmp_path, file_store):
    out = run_app(p.RecycleApp, {"folder": str(tmp_path), "n": 7, "parallel": False},
                  run_id="recycle", store=file_store)
    pids = out.pids
    assert pids[0] == pids[1] == pids[2] != pids[3] == pids[4] == pids[5] != pids[6]
    assert out.leaked == [0, 1, 2, 0, 1, 2, 0]  # a fresh actor does not inherit the leak
    seen = [int(x) for x in read_lines(tmp_path / "concurrency")]
    assert max(seen) == 1


def test_actors_stay_warm_between_runs_then_go(ray_session, tmp_path, file_store):
    first = run_app(p.PoolApp, {"folder": str(tmp_path), "n": 4, "parallel": False},
                    run_id="warm-1", store=file_store)
    second = run_app(p.PoolApp, {"folder": str(tmp_path), "n": 4, "parallel": False},
                     run_id="warm-2", store=file_store)
    assert set(second.pids) <= set(first.pids)  # the same processes, not new ones
    for pid in set(first.pids):  # keep_warm_seconds=2 after the last run
        wait_for(lambda pid=pid: dead(pid), 20, f"idle actor {pid} to be released")


def test_a_driver_sigkilled_mid_run_takes_its_actors_and_the_rerun_redoes_nothing_recorded(
        ray_session, tmp_path, file_store):
    n = 100
    inp = json.dumps({"folder": str(tmp_path), "n": n, "sleep": 0.02, "parallel": False})
    cmd = [sys.executable, "-m", "runtime", "run", "tests.apps.pools:CrashPoolApp",
           "--input", inp, "--run-id", "killed", "--store", file_store]
    env = {**os.environ, "RAY_ADDRESS": ray_session, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: len(read_lines(tmp_path / "attempts")) >= 30, 60, "30 attempts")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    actors = {pid for _, _, pid in attempts(tmp_path)}
    for pid in actors:  # owned by the driver: they go with it, holding no CPU for nobody
        wait_for(lambda pid=pid: dead(pid), 30, f"actor {pid} of the dead driver to go")
    runs = RunStore(open_store(file_store), "CrashPoolApp", "killed")
    durable = {msgpack.unpackb(r["o"])["index"] for r in runs.load_journal().records
               if r["y"] == "t" and r["n"] == "work"}
    assert 0 < len(durable) < n
    before = len(read_lines(tmp_path / "attempts"))
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout.splitlines()[-1])["count"] == n
    rerun = [i for i, _, pid in attempts(tmp_path)[before:]]
    assert not durable & set(rerun)  # what was recorded is not run again
    assert set(rerun) | durable == set(range(n))
    assert not actors & {pid for _, _, pid in attempts(tmp_path)[before:]}
