"""Liveness on a real Ray: frozen workers, heartbeat details, two drivers, cancellation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from application_sdk.errors import HeartbeatTimeoutError
from runtime import run_app
from storage import RunStatus, RunStore, open_store

from .apps.liveness import FreezableApp, PagingApp, StuckApp


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def read_lines(path) -> list[str]:
    try:
        return open(path).read().splitlines()
    except FileNotFoundError:
        return []


class Background(threading.Thread):
    def __init__(self, fn, *args, **kwargs):
        super().__init__(daemon=True)
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.result = self.error = None

    def run(self):
        try:
            self.result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:
            self.error = exc


def freeze_until_done(job: Background, pid: int, timeout: float) -> float:
    """SIGSTOP `pid`, wait up to `timeout` for `job` to end, SIGCONT it whatever happened;
    returns when it was frozen (time.monotonic)."""
    os.kill(pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        job.join(timeout=timeout)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    return frozen_at


def test_frozen_worker_is_detected_by_heartbeat_and_retried(ray_session, tmp_path, file_store):
    job = Background(run_app, FreezableApp, {"folder": str(tmp_path)}, run_id="frozen",
                     store=file_store)
    job.start()
    pid = int(wait_for(lambda: read_lines(tmp_path / "pid"), 60, "the task to start")[0])
    time.sleep(2.0)  # it has beaten by now (first beat after 1 s)
    frozen_at = freeze_until_done(job, pid, 60)
    assert not job.is_alive() and job.error is None, job.error
    assert job.result.attempt == 2
    assert time.monotonic() - frozen_at < 20  # 3 s heartbeat timeout, not the 3600 s sleep
    records = RunStore(open_store(file_store), "FreezableApp", "frozen").load_journal().records
    failure = next(r for r in records if r["y"] == "f")
    assert failure["e"]["kind"] == "heartbeat"
    assert failure["e"]["type"] == HeartbeatTimeoutError.__name__


def pages(folder) -> list[tuple[int, int]]:
    return [(int(p), int(a)) for _, p, _, a in
            (line.split() for line in read_lines(folder / "pages"))]


def test_paginated_task_resumes_from_its_heartbeat_details(ray_session, tmp_path, file_store):
    (tmp_path / "crash").touch()
    out = run_app(PagingApp, {"folder": str(tmp_path)}, run_id="paging", store=file_store)
    assert out.first_page_of_last_attempt == 7
    fetched = pages(tmp_path)
    assert [p for p, a in fetched if a == 1] == [1, 2, 3, 4, 5, 6, 7]
    assert [p for p, a in fetched if a == 2] == [7, 8, 9, 10]
    runs = RunStore(open_store(file_store), "PagingApp", "paging")
    assert not any(r["y"] == "h" for r in runs.load_journal().records)  # checkpoints instead
    assert runs.store.list("runs/PagingApp/paging/files") == []  # and gone with the run


def test_heartbeat_details_survive_a_driver_sigkill(ray_session, tmp_path, file_store):
    (tmp_path / "hang").touch()
    inp = json.dumps({"folder": str(tmp_path)})
    cmd = [sys.executable, "-m", "runtime", "run", "tests.apps.liveness:PagingApp", "--input",
           inp, "--run-id", "paging-kill", "--store", file_store]
    env = {**os.environ, "RAY_ADDRESS": ray_session, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # "page 7 attempt 1" is written right after heartbeat(Page(page=7)) returned: the driver
    # dies at once, with no time to read a beat from anywhere
    wait_for(lambda: (7, 1) in pages(tmp_path), 60, "heartbeat(page 7) to return")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    (tmp_path / "hang").unlink()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[-1])["first_page_of_last_attempt"] == 7
    first_attempt = [p for p, a in pages(tmp_path) if a == 1]
    assert first_attempt[:6] == [1, 2, 3, 4, 5, 6]
    assert first_attempt[-4:] == [7, 8, 9, 10]  # the resumed attempt started at page 7
    assert first_attempt.count(1) == 1


def test_progress_watchdog_enforced_fails_and_retries(ray_session, tmp_path, file_store):
    out = run_app(StuckApp, {"folder": str(tmp_path), "n": 1}, run_id="stuck",
                  store=file_store)
    assert out.attempt == 2
    records = RunStore(open_store(file_store), "StuckApp", "stuck").load_journal().records
    failure = next(r for r in records if r["y"] == "f")
    assert "unchanged" in failure["e"]["message"]


def test_progress_watchdog_reports_stalled_tasks_in_status(ray_session, tmp_path, file_store):
    job = Background(run_app, StuckApp, {"folder": str(tmp_path), "n": 2}, run_id="observe",
                     store=file_store)
    job.start()
    runs = RunStore(open_store(file_store), "StuckApp", "observe")

    def stalled():
        record = runs.read_run()
        return record is not None and record.progress.get("stalled")

    seen = wait_for(stalled, 30, "the stalled task in the run record")
    assert any(key.startswith("observe:") for key in seen)
    job.join(timeout=60)
    assert job.error is None and job.result.attempt == 1  # reported, not failed


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_two_drivers_for_one_run_exactly_one_runs(ray_session, tmp_path, request, backend):
    store = str(tmp_path / "store") if backend == "file" else request.getfixturevalue("s3_url")
    count = tmp_path / "count"
    inp = json.dumps({"count_file": str(count), "n": 30, "parallel": True, "jitter_ms": 50})
    cmd = [sys.executable, "-m", "runtime", "run", "tests.apps.counting:CountingApp",
           "--input", inp, "--run-id", "twins", "--store", store]
    env = {**os.environ, "RAY_ADDRESS": ray_session, "PYTHONPATH": os.getcwd()}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=180), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 3], [err[-2000:] for _, _, err in results]
    refused = next(err for code, _, err in results if code == 3)
    assert "owned by a live driver" in refused
    work = read_lines(count)
    assert sorted(work) == sorted(f"work {i}" for i in range(30))  # no task ran twice


def test_cancel_stops_the_run_within_seconds(ray_session, tmp_path, file_store, cli):
    inp = json.dumps({"folder": str(tmp_path), "n": 100})
    cmd = [sys.executable, "-m", "runtime", "run", "tests.apps.liveness:SlowItemsApp",
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
    runs = RunStore(open_store(file_store), "SlowItemsApp", "to-cancel")
    assert runs.read_run().status is RunStatus.CANCELLED
    assert any(r.get("n") == "cleanup_storage" for r in runs.load_journal().records)
    lines = read_lines(tmp_path / "items")
    started = {int(x.split()[1]): int(x.split()[2]) for x in lines if x.startswith("start")}
    ended = {int(x.split()[1]) for x in lines if x.startswith("end")}
    assert len(started) < 100
    time.sleep(1.0)
    for index, pid in started.items():  # nothing of the run is still running on Ray
        if index not in ended:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    assert len(read_lines(tmp_path / "items")) == len(lines)


def test_scratch_cleanup_gives_a_node_that_does_not_answer_seconds_not_the_full_wait(
        ray_session):
    """Per-node cleanup tasks, one on a node that never answers (frozen: Ray still thinks it
    alive). Once the others have answered, it gets 3 s more, not the rest of the 10 s; the
    answers are all kept. Nodes that all answer are not waited for at all."""
    import ray

    from runtime.worker import _cleanup

    @ray.remote(num_cpus=0)
    def node(seconds: float) -> int:
        time.sleep(seconds)
        return 1

    quick = [node.remote(0) for _ in range(3)]
    assert ray.get(quick, timeout=60) == [1, 1, 1]
    began = time.monotonic()
    ready, pending = _cleanup.answers(quick)
    assert set(ready) == set(quick) and pending == []
    assert time.monotonic() - began < 1
    frozen = node.remote(3600)
    try:
        began = time.monotonic()
        ready, pending = _cleanup.answers([*quick, frozen])
        took = time.monotonic() - began
    finally:
        ray.cancel(frozen, force=True)
    assert set(ready) == set(quick) and pending == [frozen]
    assert _cleanup._STRAGGLER_WAIT - 0.5 < took < _cleanup._NODE_TIMEOUT - 3, took
