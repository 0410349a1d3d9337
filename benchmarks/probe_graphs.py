"""Ray compiled graphs as a pool's channel to its actors: the latency they win, the CPU they burn.

    python -m benchmarks.probe_graphs [--calls 300] [--rounds 5]

The design measured for the pool's sequential target (300 sequential tasks on a pool at most
0.7x raw remote functions; benchmarks/PROFILE.md section 8): instead of one actor call per batch,
each pool actor runs a compiled graph of its `run` method (`dag.experimental_compile()`, a
shared-memory channel), and a thread of the driver writes the input and reads the output.
Printed, side by side in one process:

- milliseconds per call, sequential, awaited from asyncio: a plain actor call (the pool today)
  and the same method through the compiled graph;
- CPU seconds an actor burns while idle for 5 s, with and without a compiled graph;
- CPU seconds the driver burns while it waits 3 s for a result, graph and plain call.

Not part of `python -m benchmarks`: it measures a design that is not built (the figures say why).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import statistics
import threading
import time
from typing import Any

import ray
from ray.dag import InputNode


@ray.remote(max_restarts=0)
class Worker:
    def run(self, seconds: float) -> float:
        if seconds:
            time.sleep(seconds)
        return seconds

    def pid(self) -> int:
        return os.getpid()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class GraphCaller:
    """The graph's driver side: a thread writes each input and reads its output (a compiled
    graph's reads block), and hands the result to the event loop."""

    def __init__(self, graph: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.graph, self.loop = graph, loop
        self.inbox: queue.SimpleQueue[tuple[float, asyncio.Future[float]]] = queue.SimpleQueue()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            value, future = self.inbox.get()
            result = ray.get(self.graph.execute(value))
            self.loop.call_soon_threadsafe(future.set_result, result)

    def call(self, value: float) -> asyncio.Future[float]:
        future = self.loop.create_future()
        self.inbox.put((value, future))
        return future


async def latency(calls: int, rounds: int) -> tuple[list[float], list[float], float]:
    plain, compiled = Worker.remote(), Worker.remote()
    await plain.pid.remote()
    await compiled.pid.remote()
    with InputNode() as inp:
        dag = compiled.run.bind(inp)
    began = time.perf_counter()
    graph = dag.experimental_compile()
    compile_s = time.perf_counter() - began
    caller = GraphCaller(graph, asyncio.get_running_loop())
    plain_ms, graph_ms = [], []
    for _ in range(rounds):  # interleaved, so both see the same machine
        began = time.perf_counter()
        for _ in range(calls):
            await asyncio.wrap_future(plain.run.remote(0).future())
        plain_ms.append((time.perf_counter() - began) * 1000 / calls)
        began = time.perf_counter()
        for _ in range(calls):
            await caller.call(0)
        graph_ms.append((time.perf_counter() - began) * 1000 / calls)
    graph.teardown()
    return plain_ms, graph_ms, compile_s


def burn() -> dict[str, float]:
    plain, compiled = Worker.remote(), Worker.remote()
    plain_pid, graph_pid = ray.get([plain.pid.remote(), compiled.pid.remote()])
    with InputNode() as inp:
        dag = compiled.run.bind(inp)
    graph = dag.experimental_compile()
    ray.get(graph.execute(0))
    before = cpu_seconds(plain_pid), cpu_seconds(graph_pid)
    time.sleep(5)
    out = {"idle actor, plain": cpu_seconds(plain_pid) - before[0],
           "idle actor, compiled graph": cpu_seconds(graph_pid) - before[1]}
    me = os.getpid()
    before_me = cpu_seconds(me)
    ray.get(plain.run.remote(3))
    out["driver waiting 3 s, plain call"] = cpu_seconds(me) - before_me
    before_me = cpu_seconds(me)
    ray.get(graph.execute(3))
    out["driver waiting 3 s, compiled graph"] = cpu_seconds(me) - before_me
    graph.teardown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    plain_ms, graph_ms, compile_s = asyncio.run(latency(args.calls, args.rounds))
    print(f"sequential {args.calls} calls awaited from asyncio, median of {args.rounds} rounds:")
    print(f"  plain actor call     {statistics.median(plain_ms):6.3f} ms/call")
    print(f"  compiled graph       {statistics.median(graph_ms):6.3f} ms/call "
          f"(compiling it: {compile_s * 1000:.0f} ms)")
    print("CPU burnt:")
    for what, seconds in burn().items():
        print(f"  {what:<36} {seconds:5.2f} s")
    ray.shutdown()


if __name__ == "__main__":
    main()
