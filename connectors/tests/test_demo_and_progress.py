"""`connector-runtime demo` end to end through the CLI, and the progress display's log form."""

from __future__ import annotations

import io
import re

import pyarrow.parquet as pq

from runtime.cli._progress import ProgressDisplay


def test_demo_end_to_end(cli, tmp_path):
    args = ("demo", "--rows", "50000", "--output", str(tmp_path / "out"))
    first = cli(*args, cwd=tmp_path, timeout=240)
    assert first.code == 0, first.stderr[-3000:]
    assert "50,000 rows" in first.stdout and "(generated" in first.stdout
    assert re.search(r"= [\d,]+ rows/s", first.stdout)
    files = list((tmp_path / "out" / "data").glob("*/*.parquet"))
    assert sum(pq.read_metadata(f).num_rows for f in files) == 50_000
    assert (tmp_path / ".connector-runtime" / "demo" / "source-50000.db").is_file()
    assert "tasks done" in first.stderr  # progress as log lines: stderr is not a terminal

    second = cli(*args, cwd=tmp_path, timeout=240)  # the source is cached, output replaced
    assert second.code == 0, second.stderr[-3000:]
    assert "(cached)" in second.stdout and "generating" not in second.stderr
    files = list((tmp_path / "out" / "data").glob("*/*.parquet"))
    assert sum(pq.read_metadata(f).num_rows for f in files) == 50_000


def test_progress_lines_when_not_a_terminal():
    stream = io.StringIO()
    with ProgressDisplay("run r1", stream=stream) as progress:
        progress.update({"done": 3, "replayed": 1, "running": 2, "retrying": 1, "failed": 0,
                         "attempts": 6})
        progress.update({"done": 3, "replayed": 1, "running": 2, "retrying": 1, "failed": 0,
                         "attempts": 6})  # unchanged: no new line
        progress.update({"done": 5, "replayed": 1, "running": 0, "retrying": 0, "failed": 0,
                         "attempts": 8})  # changed, but within the log interval: not yet
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # the first update and the final line
    assert "run r1: tasks done 3 (1 replayed) | running 2 | retrying 1 | failed 0" in lines[0]
    assert "run r1: tasks done 5 (1 replayed) | running 0" in lines[1]
    assert "\x1b[" not in stream.getvalue()  # no terminal codes in logs
    stream = io.StringIO()
    with ProgressDisplay("run r2", stream=stream) as progress:
        progress.update({"done": 1})
    assert len(stream.getvalue().splitlines()) == 1  # the final counters were printed already
