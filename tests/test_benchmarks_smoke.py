"""The benchmarks cannot rot: every case runs at its smallest size and produces figures.

No timing assertions: the figures are only checked to exist and be positive. The harness runs
as users run it (`python -m benchmarks --quick`), in a subprocess attached to the session's Ray
and S3 server, writing its results to a temporary folder instead of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

TIMED_CASES = {
    "fanout": {"raw Ray", "raw Ray actor calls", "raw Ray, awaited in asyncio", "runtime file://",
               "runtime pool file://", "runtime S3 (moto)", "DBOS SQLite"},
    "sequential": {"raw Ray", "raw Ray actor calls", "raw Ray, awaited in asyncio",
                   "runtime file://", "runtime pool file://", "runtime S3 (moto)", "DBOS SQLite"},
    "resume": {"runtime file://", "runtime S3 (moto)", "DBOS SQLite"},
    "sleep": {"raw Ray", "runtime file://", "runtime S3 (moto)"},
    "memory": {"raw Ray fan-out", "runtime fan-out", "raw Ray sequential",
               "runtime sequential", "runtime resume (replay N)"},
    "heartbeat": {"raw Ray", "no heartbeat", "auto_heartbeat_seconds=1"},
}


def _variants(figures: dict) -> set[str]:
    return {key.rsplit("@", 1)[0] for key, value in figures.items()
            if "@" in key and isinstance(value, (int, float)) and value > 0}


def test_quick_benchmark_run_produces_every_figure(ray_session, s3_server, tmp_path):
    results = tmp_path / "RESULTS.md"
    env = {**os.environ, "RAY_ADDRESS": ray_session, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--output", str(results),
         "--s3-endpoint", s3_server],
        capture_output=True, text=True, timeout=280, env=env, cwd=str(REPO),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Targets" in proc.stdout
    data = json.loads(results.with_suffix(".json").read_text())
    cases = data["cases"]

    for case, expected in TIMED_CASES.items():
        figures, notes = cases[case]["figures"], cases[case]["notes"]
        assert _variants(figures) >= expected, (case, figures, notes)

    guards = cases["guards"]
    if guards["figures"].get("switch"):
        assert len(_variants(guards["figures"])) == 2, guards
        assert sum(k.startswith("gathered ") for k in guards["figures"]) == 2, guards
    else:
        assert any(n.startswith("N/A") for n in guards["notes"]), guards

    for case in ("sql", "files"):  # other people's benchmark modules, called when present
        figures, notes = cases[case]["figures"], cases[case]["notes"]
        unavailable = any(n.startswith("not available") for n in notes)
        assert figures or unavailable, (case, notes)

    beats = cases["checkpoint"]["figures"]  # a durable heartbeat's cost (issue 14)
    assert {"file_details_ms_per_beat@20", "s3_details_ms_per_beat@20"} <= set(beats), beats

    text = results.read_text()
    for heading in ("## Machine and versions", "## Commands", "## Targets", "| raw Ray |"):
        assert heading in text
    assert {t["what"] for t in data["targets"]} >= {
        "fan-out 1,000, file:// vs raw Ray", "fan-out 1,000 on a pool vs raw actor calls",
        "sequential 300 on a pool vs DBOS"}
