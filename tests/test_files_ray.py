"""FileReferences on real Ray: a 200 MB Parquet chain, tiers and cleanup, integrity, a killed
driver, refused paths, and a reference crossing nodes of a two-node cluster on S3."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import msgpack
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from application_sdk.errors import StorageIntegrityError
from runtime import RunFailedError, run_app
from runtime._runcontext import scratch_root
from storage import PathRefusedError, RunStatus, RunStore, open_store

from .apps.files_apps import ChainApp, ChainInput, EscapeApp, gen_batch
from .conftest import REPO

MB = 2**20


def lines(path) -> list[str]:
    try:
        with open(path) as fh:
            return fh.read().splitlines()
    except FileNotFoundError:
        return []


DRIVER = """
import json, sys
from runtime import run_app
from tests.apps.files_apps import ChainApp, ChainInput
out = run_app(ChainApp, ChainInput.model_validate_json(sys.argv[1]), run_id=sys.argv[2],
              store=sys.argv[3])
# VmHWM, this address space's peak: getrusage's ru_maxrss would carry over the parent's
# (pytest's) peak across fork/exec on Linux
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
peak = int(hwm.split()[1]) * 1024  # kB
print(json.dumps({"output": out.model_dump(mode="json"), "peak_rss": peak}))
"""


def run_driver(ray_address: str, inp: ChainInput, run_id: str, store: str) -> tuple[dict, int]:
    """Run the chain in a driver process of its own; (output, the driver's peak RSS)."""
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, inp.model_dump_json(), run_id, store],
        env={**os.environ, "RAY_ADDRESS": ray_address, "PYTHONPATH": str(REPO)},
        cwd=str(REPO), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["output"], result["peak_rss"]


def same_rows(got: Iterator[pa.RecordBatch], expected: Iterator[pa.RecordBatch]) -> int:
    """Compare two batch streams row by row whatever their batch sizes; rows compared."""
    pending: pa.Table | None = None
    rows = 0
    for batch in got:
        while pending is None or pending.num_rows < batch.num_rows:
            nxt = next(expected, None)
            assert nxt is not None, f"more rows than expected after {rows}"
            table = pa.Table.from_batches([nxt])
            pending = table if pending is None else pa.concat_tables([pending, table])
        want = pending.slice(0, batch.num_rows)
        assert pa.Table.from_batches([batch]).equals(want.combine_chunks()), f"rows {rows}+"
        pending = pending.slice(batch.num_rows)
        rows += batch.num_rows
    assert pending is None or pending.num_rows == 0
    assert next(expected, None) is None, "fewer rows than expected"
    return rows


def leftovers(store, app: str, run_id: str) -> list[str]:
    """Keys that are neither run bookkeeping nor RETAINED/PERSISTENT objects."""
    keep = (f"runs/{app}/{run_id}/run.msgpack", f"runs/{app}/{run_id}/lease.msgpack")
    return [k for k in store.list("")
            if not k.startswith(("retained/", "persistent/", f"runs/{app}/{run_id}/journal/"))
            and k not in keep]


def run_scratch(app: str, run_id: str) -> str:
    return os.path.join(scratch_root(), app, run_id)


def test_chain_moves_200mb_parquet_by_reference_with_a_small_driver(
    ray_session, file_store, tmp_path
):
    rows, batches = 450_000, 20  # 24 B/row of incompressible data: ~206 MB per dataset
    count = tmp_path / "count"
    inp = ChainInput(batches=batches, rows=rows, count_file=str(count))
    output, peak = run_driver(ray_session, inp, "chain-200mb", file_store)
    # the whole driver process, imports and Ray connection included, at its peak
    print(f"driver peak RSS: {peak / MB:.0f} MB")
    assert peak < 300 * MB, f"driver RSS peaked at {peak / MB:.0f} MB"
    out = ChainApp.entrypoint_spec().output_type.model_validate(output)
    assert lines(count) == ["extract", "transform", "load"]

    store = open_store(file_store)
    final = store.path(out.final.storage_path)
    assert out.final.tier == "persistent" and out.archive.tier == "retained"
    assert out.rows == rows * batches
    assert os.path.getsize(final) > 200 * MB
    with pq.ParquetFile(final) as pf:
        compared = same_rows(pf.iter_batches(batch_size=100_000),
                             (gen_batch(i, rows) for i in range(batches)))
    assert compared == rows * batches

    assert leftovers(store, "ChainApp", "chain-200mb") == []  # TRANSIENT objects are gone
    kept = [k for k in store.list("") if k.startswith(("retained/", "persistent/"))]
    assert len(kept) == 4  # final.parquet + archive's two files and manifest
    assert not os.path.exists(run_scratch("ChainApp", "chain-200mb"))

    journal = RunStore(store, "ChainApp", "chain-200mb").load_journal().records
    tiers = sorted(r["t"] for r in journal if r["y"] == "o")
    assert tiers == ["persistent", "retained", "transient", "transient"]


def test_chain_on_s3_records_objects_and_cleans_transient(ray_session, s3_url, tmp_path):
    out = run_app(ChainApp, ChainInput(batches=3, rows=20_000, format="arrow"),
                  run_id="chain-s3", store=s3_url)
    store = open_store(s3_url)
    assert leftovers(store, "ChainApp", "chain-s3") == []
    with store.fs.open(store.path(out.final.storage_path), "rb") as fh:
        table = pq.read_table(fh)
    assert table.equals(pa.Table.from_batches([gen_batch(i, 20_000) for i in range(3)]))
    records = RunStore(store, "ChainApp", "chain-s3").load_journal().records
    transient = [r["p"] for r in records if r["y"] == "o" and r["t"] == "transient"]
    assert len(transient) == 2 and all(p.startswith("runs/ChainApp/chain-s3/files/")
                                       for p in transient)
    assert not any(store.exists(p) for p in transient)
    assert not os.path.exists(run_scratch("ChainApp", "chain-s3"))


def test_flipped_byte_fails_the_consumer_with_integrity_error(ray_session, file_store, tmp_path):
    count, flag = tmp_path / "count", tmp_path / "fail"
    flag.touch()
    inp = ChainInput(batches=2, rows=10_000, count_file=str(count), fail_flag=str(flag))
    with pytest.raises(RunFailedError, match="fail flag"):
        run_app(ChainApp, inp, run_id="corrupt", store=file_store)
    store = open_store(file_store)
    records = RunStore(store, "ChainApp", "corrupt").load_journal().records
    (extracted,) = [r["p"] for r in records if r["y"] == "o"]
    assert store.exists(extracted)  # a failed run keeps its TRANSIENT objects for resume
    path = store.path(extracted)
    os.chmod(path, 0o644)
    with open(path, "r+b") as fh:  # flip one byte in place, as bit rot would
        fh.seek(os.path.getsize(path) // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0x01]))
    flag.unlink()
    with pytest.raises(RunFailedError, match="StorageIntegrityError") as info:
        run_app(ChainApp, inp, run_id="corrupt", store=file_store)
    assert isinstance(info.value.__cause__, StorageIntegrityError)
    assert "does not match its reference" in str(info.value.__cause__)
    # attempt 1 was the fail flag in the first run; attempt 2 is not retried
    assert "after 2 attempt(s) (the error is non-retryable)" in str(info.value)
    # the task body never saw the data; extract did not run again
    assert lines(count) == ["extract", "transform"]


def test_killed_driver_resumes_with_valid_reference_and_no_producer_rerun(
    ray_session, file_store, tmp_path
):
    count, gate = tmp_path / "count", tmp_path / "gate"
    inp = {"batches": 2, "rows": 20_000, "count_file": str(count), "gate": str(gate)}
    env = {**os.environ, "RAY_ADDRESS": ray_session, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen(
        [sys.executable, "-m", "runtime", "run", "tests.apps.files_apps:ChainApp",
         "--input", json.dumps(inp), "--run-id", "killed", "--store", file_store],
        env=env, cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    runs = RunStore(open_store(file_store), "ChainApp", "killed")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # transform waits at the gate, extract is journaled
            done = [r for r in runs.load_journal().records if r.get("n") == "extract"]
            if done and "transform" in lines(count):
                break
            assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
            time.sleep(0.1)
        else:
            pytest.fail("the producer never completed")
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
    # Ray kills the dead driver's workers; wait for it, so the blocked attempt cannot wake up
    # at the gate and race the resumed run
    (pid,) = (int(p) for p in lines(str(gate) + ".pid"))
    deadline = time.monotonic() + 60
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{pid}"), "the killed driver's attempt still runs"
    assert runs.read_run().status is RunStatus.RUNNING  # died without a word
    store = open_store(file_store)
    produced = [r["p"] for r in runs.load_journal().records if r["y"] == "o"]
    assert len(produced) == 1 and store.exists(produced[0])

    gate.touch()
    out = run_app(ChainApp, inp, run_id="killed", store=file_store)
    assert lines(count).count("extract") == 1  # the producer did not run again
    assert out.rows == 40_000
    with pq.ParquetFile(store.path(out.final.storage_path)) as pf:
        assert same_rows(pf.iter_batches(), (gen_batch(i, 20_000) for i in range(2))) == 40_000
    assert not store.exists(produced[0])  # cleanup still found the dead driver's objects
    assert leftovers(store, "ChainApp", "killed") == []
    assert not os.path.exists(run_scratch("ChainApp", "killed"))


def test_reference_outside_allowed_roots_fails_the_task_clearly(ray_session, file_store):
    with pytest.raises(RunFailedError) as info:
        run_app(EscapeApp, {"path": "/etc/passwd"}, run_id="escape", store=file_store)
    cause = info.value.__cause__
    assert isinstance(cause, PathRefusedError)
    assert "refused to upload '/etc/passwd'" in str(cause) and "allowed roots" in str(cause)
    assert "after 1 attempt" in str(info.value)
    assert open_store(file_store).list("persistent") == []
    assert open_store(file_store).list("runs/EscapeApp/escape/files") == []


def test_reference_made_on_one_node_is_read_on_another_over_s3(s3_url, tmp_path):
    scratch_a, scratch_b = str(tmp_path / "node-a"), str(tmp_path / "node-b")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.apps.files_apps", s3_url, scratch_a, scratch_b, "nodes"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=str(REPO), capture_output=True,
        text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(result["nodes"]) == 2
    assert result["producer"] != result["consumer"]
    assert set(result["nodes"]) == {result["producer"], result["consumer"]}
    assert result["rows"] == 100_000  # the consumer compared every row with the generator
    assert result["consumer_path"].startswith(os.path.join(scratch_b, "TwoNodeApp", "nodes"))
    assert not [k for k in result["store_keys"] if "/files/" in k]
    for scratch in (scratch_a, scratch_b):  # scratch cleanup reached both nodes
        assert not os.path.exists(os.path.join(scratch, "TwoNodeApp", "nodes"))


def _cleanup_record(store, app: str, run_id: str) -> dict:
    records = RunStore(store, app, run_id).load_journal().records
    return next(r for r in records if r.get("y") == "t" and r["n"] == "cleanup_storage")


def test_cleanup_storage_with_nothing_to_delete_is_answered_by_the_driver(
        ray_session, file_store, tmp_path):
    from .apps.counting import BatchInput, CountingApp

    run_app(CountingApp, BatchInput(count_file=str(tmp_path / "c"), n=2), run_id="nofiles",
            store=file_store)
    record = _cleanup_record(open_store(file_store), "CountingApp", "nofiles")
    assert record["a"] == 0  # recorded, never dispatched to Ray


def test_cleanup_storage_deletes_unrecorded_objects_in_the_prefix_too(
        ray_session, file_store, tmp_path):
    # an attempt that uploaded its output and then failed leaves objects no record names
    from .apps.counting import BatchInput, CountingApp

    store = open_store(file_store)
    orphan = "runs/CountingApp/orphans/files/work_x/a1-dead/data/part.arrow"
    store.write(orphan, b"left by a failed attempt")
    run_app(CountingApp, BatchInput(count_file=str(tmp_path / "c"), n=2), run_id="orphans",
            store=file_store)
    record = _cleanup_record(store, "CountingApp", "orphans")
    assert store.read(orphan) is None  # the whole prefix goes, recorded or not
    assert record["a"] == 0 and msgpack.unpackb(record["o"])["deleted"] == 1


# ---- issue 12 item 1: a flipped byte after the node read it; issue 12 item 12: leftovers ------


def _wait_gone(pid: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{pid}"), "the killed driver's attempt still runs"


def test_byte_flipped_after_the_node_read_it_fails_the_resumed_run(
        ray_session, file_store, tmp_path, cli):
    """The consumer's first attempt materializes the PERSISTENT file (the node cache is a hard
    link to the store object), then the driver is killed; a byte of the store object is
    flipped in place; the resumed consumer hits the cache. It must fail with
    StorageIntegrityError, not complete with a wrong sum."""
    from .apps.files_security_apps import expected_sum

    count, gate = tmp_path / "count", tmp_path / "gate"
    inp = json.dumps({"rows": 200_000, "count_file": str(count), "gate": str(gate)})
    env = {**os.environ, "RAY_ADDRESS": ray_session, "PYTHONPATH": str(REPO)}
    args = ["run", "tests.apps.files_security_apps:CheckedSumApp", "--input", inp,
            "--run-id", "flip-after-read", "--store", file_store]
    driver = subprocess.Popen([sys.executable, "-m", "runtime", *args], env=env,
                              cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not lines(str(gate) + ".pid"):  # consume's input is in the node cache now
            assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the consumer never started"
            time.sleep(0.1)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
    _wait_gone(int(lines(str(gate) + ".pid")[0]))
    store = open_store(file_store)
    runs = RunStore(store, "CheckedSumApp", "flip-after-read")
    (key,) = [r["p"] for r in runs.load_journal().records if r["y"] == "o"]
    cached = [os.path.join(d, f) for d, _, fs in
              os.walk(run_scratch("CheckedSumApp", "flip-after-read")) for f in fs
              if f == "values.arrow" and ".objects" in d]
    assert cached and os.stat(cached[0]).st_ino == os.stat(store.path(key)).st_ino
    path = store.path(key)
    with open(path, "r+b") as fh:  # one byte of a value, in place: same inode, same size
        fh.seek(os.path.getsize(path) // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0x10]))
    gate.touch()
    resumed = cli(*args)
    assert resumed.code == 1, (resumed.stdout, resumed.stderr[-2000:])
    assert "StorageIntegrityError" in resumed.stderr and "does not match" in resumed.stderr
    assert str(expected_sum(200_000)) not in resumed.stdout
    assert runs.read_run().status is RunStatus.FAILED
    assert lines(count) == ["produce", "consume"]  # the resumed consumer never saw the bytes


def test_gc_removes_the_persistent_object_a_failed_attempt_left(ray_session, file_store, cli):
    from .apps.files_security_apps import LeftoverApp

    with pytest.raises(RunFailedError, match="payload limit"):
        run_app(LeftoverApp, {}, run_id="leftover", store=file_store)
    store = open_store(file_store)
    left = store.list("persistent/LeftoverApp/leftover")
    assert len(left) == 1 and left[0].endswith("/data/kept.arrow")  # uploaded, never recorded
    folder = left[0].rsplit("/", 2)[0]
    dry = cli("gc", "--older-than", "0s", "--store", file_store)
    assert dry.code == 0 and f"{folder}/" in dry.stdout and "unreferenced" in dry.stdout
    assert store.list("persistent/LeftoverApp/leftover") == left
    done = cli("gc", "--older-than", "0s", "--yes", "--store", file_store)
    assert done.code == 0, done.stderr
    assert store.list("persistent/LeftoverApp/leftover") == []
