"""What a durable heartbeat costs: one task that beats N times, per store.

`self.heartbeat(details)` is a checkpoint written to the store before it returns (issue 14:
details sent in the last second before a driver SIGKILL used to be lost). Measured inside the
task, so run start-up is not in the figures: the loop's time with no heartbeat call (the
limit), with `heartbeat()` (liveness only: an actor call at most every 0.2 s), with
`heartbeat(details)` (one atomic store write each) and with `heartbeat(details, files=[one new
64 KiB file])` (the write plus one upload). Per-beat cost = (variant - limit) / N.

    .venv/bin/python -m benchmarks.bench_checkpoint          # N = 200, file:// and moto S3
    .venv/bin/python -m benchmarks --cases checkpoint        # in the harness table
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from application_sdk.app import App, task
from application_sdk.contracts import HeartbeatDetails, Input, Output

__all__ = ["BeatBenchApp", "run"]

VARIANTS = ("none", "liveness", "details", "details+file")


class Beats(Input):
    n: int
    variant: str


class Took(Output):
    seconds: float


class Page(HeartbeatDetails):
    page: int = 0
    cursor: str = ""


class BeatBenchApp(App):
    @task(heartbeat_timeout_seconds=600)
    async def loop(self, input: Beats) -> Took:
        block = os.urandom(64 * 1024)
        self.get_heartbeat_details(Page)  # the worker's store client is made here, untimed
        started = time.perf_counter()
        for i in range(input.n):
            if input.variant == "liveness":
                self.heartbeat()
            elif input.variant == "details":
                self.heartbeat(Page(page=i, cursor=f"c-{i}"))
            elif input.variant == "details+file":
                path = os.path.join(self.scratch_dir, f"page-{i}.bin")
                with open(path, "wb") as fh:
                    fh.write(block)
                self.heartbeat(Page(page=i, cursor=f"c-{i}"), files=[path])
        return Took(seconds=time.perf_counter() - started)

    async def run(self, input: Beats) -> Took:
        return await self.loop(input)


def _measure(store: str, options: dict[str, Any] | None, n: int, tag: str) -> dict[str, float]:
    from runtime import run_app

    took: dict[str, float] = {}
    for variant in VARIANTS:
        run_id = f"beats-{tag}-{variant.replace('+', '-')}-{os.getpid()}"
        out = run_app(BeatBenchApp, Beats(n=n, variant=variant), store=store,
                      store_options=options, run_id=run_id)
        took[variant] = out.seconds
    base = took["none"]
    return {f"{tag}_{v}_ms_per_beat": round((took[v] - base) / n * 1000, 3)
            for v in VARIANTS if v != "none"}


def _moto() -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    # credentials travel in memory with the run (store options), never in the URL
    options = {"key": "bench", "secret": "bench",
               "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"}}
    return server, options


def run(beats: int = 200, s3: bool = True) -> dict[str, Any]:
    """Per-beat cost in ms of each variant over the no-heartbeat loop, on file:// and (with
    `s3`) on a moto S3 server started here."""
    from runtime._ray import ensure_ray
    from storage import open_store

    ensure_ray()
    folder = tempfile.mkdtemp(prefix="bench-beats-")
    try:
        store = os.path.join(folder, "store")
        _measure(store, None, 5, "warmup")
        figures: dict[str, Any] = {"beats": beats, **_measure(store, None, beats, "file")}
        if s3:
            server, options = _moto()
            try:
                open_store("s3://bench-beats/store", options).fs.mkdir("bench-beats")
                figures.update(_measure("s3://bench-beats/store", options, beats, "s3"))
            finally:
                server.terminate()
                server.wait(10)
        return figures
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    beats = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    figures = run(beats)
    print(f"{beats} beats in one task; cost per beat over a loop with no heartbeat call:")
    for name, value in figures.items():
        if name != "beats":
            print(f"  {name:32s} {value:8.3f} ms")


if __name__ == "__main__":
    main()
