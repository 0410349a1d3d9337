"""`connector-runtime demo` end to end, as a user runs it: a subprocess with a Ray of its own.

What a user sees: exit 0, a summary naming the source (generated, then cached), the tables,
rows and files; Parquet files that hold exactly the source's rows (checksums); a second demo
that reuses the source and replaces the first one's output; a folder the demo did not make is
refused and left alone. No timing is asserted (benchmarks/bench_startup.py measures it).
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
from pathlib import Path

from connectors.sql import DEMO_TABLES, connect, read_partition_checksum, table_checksum

REPO = Path(__file__).resolve().parents[3]
ROWS = 20_000


def _demo(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "runtime", "demo", "--rows", str(ROWS), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=240,
    )


def _run_id(stdout: str) -> str:
    return re.search(r"runs +\S+, (demo-data-\S+) in store", stdout).group(1)


def test_demo_extracts_every_row_then_reuses_its_source(tmp_path):
    first = _demo(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "(generated in" in first.stdout
    assert re.search(r"metadata +5 tables, 36 columns", first.stdout)
    assert re.search(rf"data +{ROWS:,} rows in \d+ Parquet files", first.stdout)
    assert re.search(r"total +[0-9.]+ s since the command started", first.stdout)
    source = tmp_path / ".connector-runtime" / "demo" / f"source-{ROWS}.db"
    assert source.is_file()

    output = tmp_path / "demo-output"
    run_id = _run_id(first.stdout)
    with connect(f"sqlite:///{source}") as conn:
        for table in DEMO_TABLES:
            files = sorted(glob.glob(str(output / "data" / f"main.{table}" / "*.parquet")))
            assert files and all(Path(f).name.startswith(run_id) for f in files)
            assert read_partition_checksum(files) == table_checksum(conn, table)
    assert (output / "manifests" / f"{run_id}.json").is_file()

    second = _demo(tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "(cached)" in second.stdout
    again = _run_id(second.stdout)
    left = {Path(f).name.split("-part-")[0]
            for f in glob.glob(str(output / "data" / "*" / "*.parquet"))}
    assert left == {again}  # the first demo's files were cleared, nothing else mixed in
    assert sorted(p.name for p in (output / "manifests").iterdir()) == [f"{again}.json"]


def test_demo_refuses_an_output_folder_it_did_not_make(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("do not delete")
    result = _demo(tmp_path, "--output", str(mine))
    assert result.returncode != 0
    assert "was not made by the demo" in result.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.txt"]
