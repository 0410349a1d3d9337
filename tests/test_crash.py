"""A driver killed with SIGKILL mid-run, then the same command again (crash tests)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import msgpack
import pytest

from storage import RunStatus, RunStore, open_store

APP = "tests.apps.counting:CountingApp"


def executed(count_file) -> Counter[int]:
    try:
        text = open(count_file).read()
    except FileNotFoundError:
        return Counter()
    return Counter(int(line.split()[1]) for line in text.splitlines())


def durable_items(store_path: str, run_id: str) -> set[int]:
    records = RunStore(open_store(store_path), "CountingApp", run_id).load_journal().records
    return {msgpack.unpackb(r["o"])["index"] for r in records
            if r["y"] == "t" and r["n"] == "work"}


@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "gather"])
def test_sigkill_mid_run_then_rerun_completes_without_redoing_work(
    ray_session, tmp_path, file_store, parallel
):
    n = 200
    count = tmp_path / "count"
    inp = json.dumps({"count_file": str(count), "n": n, "parallel": parallel,
                      "jitter_ms": 40 if parallel else 10})
    cmd = [sys.executable, "-m", "runtime", "run", APP, "--input", inp, "--run-id", "crash",
           "--store", file_store]
    env = {**os.environ, "RAY_ADDRESS": ray_session, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and sum(executed(count).values()) < 60:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(1.0)  # let in-flight attempts of the dead driver finish or be killed by Ray

    durable = durable_items(file_store, "crash")
    before = executed(count)
    assert 0 < len(durable) < n, "the kill must land mid-run"
    record = RunStore(open_store(file_store), "CountingApp", "crash").read_run()
    assert record.status is RunStatus.RUNNING  # nobody recorded an end: it was a crash

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    out = json.loads(again.stdout.splitlines()[-1])
    assert out == {"total": sum(i * i for i in range(n)), "count": n}

    after = executed(count)
    assert set(after) == set(range(n))
    for i in durable:  # a completion that was durable is never executed again
        assert after[i] == before[i] == 1, f"task {i} ran again after it was recorded"
    rerun = {i for i in range(n) if after[i] > 1}
    assert rerun.isdisjoint(durable)
    runs = RunStore(open_store(file_store), "CountingApp", "crash")
    assert runs.read_run().status is RunStatus.COMPLETED
    journal = runs.load_journal()  # compacted when the run finished: one object to load
    assert journal.segments == 1
    assert durable_items(file_store, "crash") == set(range(n))
