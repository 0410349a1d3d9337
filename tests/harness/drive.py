"""Run one program undisturbed, then disturbed, and check every promise a resumed run makes.

Disturbed: the driver (`connector-runtime run` in a process group of its own) is SIGKILLed,
group and all, at chosen moments and run again with the same command until it completes;
optionally the store sits behind a fault-injecting proxy (throttling, connection resets before
and after a request is applied, delays), and a byte of a stored object or journal segment is
flipped between a kill and the resume.

Checks (`check`):
- the same output as the undisturbed run, COMPLETED (a flipped object may instead fail the run
  with an integrity error - detected - but never complete with another output);
- each task executed at most once more per kill than undisturbed (not with flips: a corrupt
  journal segment is treated as missing, its tasks run again);
- no TRANSIENT object and no scratch folder left;
- `application_sdk.testing.replay` of the finished run reports no divergence, against the app
  and against a compatible edit of it (every contract gains a defaulted field).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from application_sdk.testing import replay
from storage import RunStatus, RunStore, open_store

from .shapes import ShapeApp, ShapeAppV2

REPO = Path(__file__).resolve().parents[2]
APP = "tests.harness.shapes:ShapeApp"


@dataclass
class Disturbance:
    """What to do to a run: kill it at these moments (fractions of `scale` seconds after each
    start: pass the undisturbed run's duration, so kills land while tasks run), flip a byte
    after the first kill, run the store behind a fault proxy (`store_options`)."""

    kills: list[float] = field(default_factory=list)
    flip: bool = False
    store_options: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    scale: float = 1.0


@dataclass
class Outcome:
    code: int
    output: dict[str, Any] | None
    stderr: str
    executions: Counter[str]
    kills: int = 0
    flipped: str | None = None
    starts: int = 0
    seconds: float = 0.0
    """Wall time of the whole run, every driver session included."""


def _command(program: dict[str, Any], run_id: str, store: str, log: Path, entrypoint: str,
             options: dict[str, str]) -> list[str]:
    payload = json.dumps({"program": json.dumps(program), "log": str(log)})
    cmd = [sys.executable, "-m", "runtime", "run", APP, "--input", payload, "--run-id",
           run_id, "--store", store, "--entrypoint", entrypoint]
    for key, value in options.items():
        cmd += ["--store-option", f"{key}={value}"]
    return cmd


def executions(log: Path) -> Counter[str]:
    try:
        return Counter(line.split()[0] for line in log.read_text().splitlines() if line)
    except FileNotFoundError:
        return Counter()


def _start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate(timeout=60)


def run_program(program: dict[str, Any], run_id: str, store: str, workdir: Path,
                ray_address: str, disturbance: Disturbance | None = None,
                entrypoint: str = "shape", timeout: float = 240) -> Outcome:
    """Run `program` to completion (or to a failure that is not a kill)."""
    disturbance = disturbance or Disturbance()
    log = workdir / f"{run_id}.log"
    env = {**os.environ, "RAY_ADDRESS": ray_address, "PYTHONPATH": str(REPO)}
    cmd = _command(program, run_id, store, log, entrypoint, disturbance.store_options)
    rng = random.Random(disturbance.seed)
    kills, flipped, starts = 0, None, 0
    pending = [fraction * disturbance.scale for fraction in disturbance.kills]
    began = time.monotonic()
    deadline = began + timeout
    while True:
        starts += 1
        proc = _start(cmd, env)
        if pending:
            delay = pending.pop(0)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                kills += 1
                time.sleep(0.3)
                if disturbance.flip and flipped is None:
                    flipped = flip_a_byte(store, run_id, rng, disturbance.store_options)
                continue
        out, err = proc.communicate(timeout=max(5.0, deadline - time.monotonic()))
        output = json.loads(out.splitlines()[-1]) if proc.returncode == 0 and out else None
        if proc.returncode in (0, 1, 2) or time.monotonic() > deadline:
            return Outcome(proc.returncode, output, err, executions(log), kills, flipped,
                           starts, time.monotonic() - began)
        # 3: the lease was still held by a killed driver's leftovers; anything else: retry


def flip_a_byte(store: str, run_id: str, rng: random.Random,
                options: dict[str, str]) -> str | None:
    """Flip one byte of a stored object of the run (a journal segment or a file object)."""
    st = _open(store, options)
    keys = [k for k in st.list("") if f"/{run_id}/" in k and
            ("/journal/" in k or "/files/" in k) and not k.endswith(".manifest.json")]
    if not keys:
        return None
    key = rng.choice(sorted(keys))
    data = bytearray(st.read(key) or b"")
    if not data:
        return None
    at = rng.randrange(len(data))
    data[at] ^= 0x5A
    if st.protocol == "file":  # in place: same inode, as a disk or a person would change it
        path = st.path(key)
        os.chmod(path, 0o600)
        with open(path, "r+b") as fh:
            fh.seek(at)
            fh.write(bytes([data[at]]))
    else:
        st.write(key, bytes(data))
    return key


def _open(store: str, options: dict[str, str]):
    opts: dict[str, Any] = {}
    if "endpoint_url" in options:
        opts["client_kwargs"] = {"endpoint_url": options["endpoint_url"]}
    return open_store(store, opts or None)


def check(program: dict[str, Any], calm: Outcome, shaken: Outcome, store: str, run_id: str,
          scratch_root: str, options: dict[str, str] | None = None) -> list[str]:
    """Every broken promise, as a sentence (empty: all held)."""
    problems: list[str] = []
    if calm.code != 0:
        return [f"the undisturbed run failed ({calm.code}): {calm.stderr[-1500:]}"]
    if shaken.flipped and shaken.code == 1:
        if "StorageIntegrityError" not in shaken.stderr and "integrity" not in shaken.stderr:
            problems.append(f"after a flipped byte in {shaken.flipped} the run failed without "
                            f"an integrity error: {shaken.stderr[-1500:]}")
        return problems  # detected, and not a wrong result
    if shaken.code != 0:
        return [f"the disturbed run failed ({shaken.code}) after {shaken.kills} kill(s): "
                f"{shaken.stderr[-1500:]}"]
    if shaken.output != calm.output:
        problems.append(f"output differs: {shaken.output} != {calm.output}")
    if not shaken.flipped:
        for ident, count in shaken.executions.items():
            if count > calm.executions[ident] + shaken.kills:
                problems.append(f"task {ident} ran {count} times, {calm.executions[ident]} "
                                f"undisturbed, with {shaken.kills} kill(s)")
    st = _open(store, options or {})
    runs = RunStore(st, "ShapeApp", run_id)
    record = runs.read_run()
    if record is None or record.status is not RunStatus.COMPLETED:
        problems.append(f"status {record.status if record else None}, not COMPLETED")
        if record is None:
            return problems
    left = st.list(f"runs/ShapeApp/{run_id}/files")
    if left:
        problems.append(f"TRANSIENT objects left: {left[:5]}")
    scratch = os.path.join(scratch_root, "ShapeApp", run_id)
    if os.path.exists(scratch):
        problems.append(f"scratch folder left: {scratch}")
    for app in (ShapeApp, ShapeAppV2):
        report = replay(app, run_id, store=st)
        if report.divergent:
            problems.append(f"replay against {app.__name__} diverged: {report}")
    return problems


def repeats_per_kill(calm: Outcome, shaken: Outcome) -> float:
    extra = sum(max(0, n - calm.executions[i]) for i, n in shaken.executions.items())
    return extra / shaken.kills if shaken.kills else 0.0
