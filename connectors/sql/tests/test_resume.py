"""SIGKILL the driver in the middle of extract_data, then resume the run.

The driver is a real `connector-runtime run` subprocess attached to the session's Ray. It is
killed once some partitions are recorded in the journal. The resumed run must not extract
those partitions again (their files keep their exact mtime) and the output must hold every
row exactly once (row counts and checksums per table; no file outside the manifest).
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack

import runtime
from connectors.sql import connect, generate_demo_sqlite, read_partition_checksum, table_checksum
from connectors.sql.app import SqlConnector
from storage import RunStore, open_store

REPO = Path(__file__).resolve().parents[3]


def _recorded_partitions(store: str, run_id: str) -> dict[str, dict]:
    """Outputs of the extract_partition tasks in the run's journal, by file path."""
    try:
        load = RunStore(open_store(store), "SqlConnector", run_id).load_journal()
    except Exception:  # the run is not created yet
        return {}
    outputs = [
        msgpack.unpackb(r["o"], raw=False)
        for r in load.records
        if r.get("y") == "t" and r.get("n") == "extract_partition"
    ]
    return {o["path"]: o for o in outputs}


def test_sigkill_mid_extract_then_resume(ray_session, tmp_path):
    db = tmp_path / "src.db"
    generate_demo_sqlite(str(db), total_rows=60_000)
    store, dest, run_id = str(tmp_path / "store"), str(tmp_path / "out"), "killed-run"
    payload = {"source_url": f"sqlite:///{db}", "destination": dest, "target_rows": 2_000,
               "max_parallel": 1}
    (tmp_path / "input.json").write_text(json.dumps(payload))
    env = {**os.environ, "RAY_ADDRESS": ray_session, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen(
        [sys.executable, "-m", "runtime", "run", "connectors.sql.app:SqlConnector",
         "--entrypoint", "extract_data", "--input", f"@{tmp_path / 'input.json'}",
         "--run-id", run_id, "--store", store],
        env=env, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 90
    recorded: dict[str, dict] = {}
    try:
        while len(recorded) < 3:
            assert driver.poll() is None, driver.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "no partition recorded in time"
            time.sleep(0.05)
            recorded = _recorded_partitions(store, run_id)
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.kill()
        driver.communicate()
    recorded = _recorded_partitions(store, run_id)  # anything committed before death
    mtimes = {path: os.stat(path).st_mtime_ns for path in recorded}

    out = runtime.run_app(SqlConnector, payload, run_id=run_id, store=store,
                          entrypoint="extract_data")

    assert len(recorded) < out.files, "the driver was killed after the run finished"
    for path, mtime in mtimes.items():
        assert os.stat(path).st_mtime_ns == mtime, f"{path} was extracted again"
    manifest = json.loads(Path(out.manifest_path).read_text())
    in_manifest = {f["path"] for t in manifest["tables"].values() for f in t["files"]}
    on_disk = set(glob.glob(os.path.join(dest, "data", "*", "*.parquet")))
    assert on_disk == in_manifest  # no stray or duplicate files
    with connect(f"sqlite:///{db}") as conn:
        for summary in out.tables:
            files = [f["path"] for f in manifest["tables"][summary.table]["files"]]
            source = table_checksum(conn, summary.table)
            assert read_partition_checksum(files) == source == (summary.rows, summary.checksum)
    assert out.rows == 60_000
