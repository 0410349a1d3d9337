"""Apps that hand each other data as FileReferences (Arrow/Parquet), for the files tests.

`gen_batch(i, rows)` is deterministic, so a test can regenerate the expected data batch by batch
(bounded memory) and compare it with what the chain wrote at the end.
"""

from __future__ import annotations

import array
import json
import os
import random
import sys
import time

import pyarrow as pa

from application_sdk.app import App, RetryPolicy, task
from application_sdk.contracts import FileReference, Input, Output, StorageTier
from application_sdk.errors import NonRetryableError
from storage import arrow

from .counting import mark


def gen_batch(i: int, rows: int) -> pa.RecordBatch:
    """Batch `i`: an id column plus two incompressible random int64 columns (24 B/row)."""
    rng = random.Random(i)
    ids = array.array("q", range(i * rows, (i + 1) * rows)).tobytes()
    return pa.record_batch({
        "id": _int64(ids, rows),
        "value": _int64(rng.randbytes(rows * 8), rows),
        "bits": _int64(rng.randbytes(rows * 8), rows),
    })


def _int64(data: bytes, rows: int) -> pa.Array:
    return pa.Array.from_buffers(pa.int64(), rows, [None, pa.py_buffer(data)])


class ExtractInput(Input):
    batches: int = 4
    rows: int = 10_000
    count_file: str = ""
    format: str = "parquet"


class Dataset(Output):
    data: FileReference
    rows: int


class TransformInput(Input):
    data: FileReference
    count_file: str = ""
    gate: str = ""
    """If set, wait (up to 120 s) until this file exists before reading."""
    fail_flag: str = ""
    """If set and the file exists, fail at once (non-retryable)."""


class LoadInput(Input):
    data: FileReference
    count_file: str = ""


class Loaded(Output):
    final: FileReference
    archive: FileReference
    rows: int


class ChainInput(Input):
    batches: int = 4
    rows: int = 10_000
    count_file: str = ""
    gate: str = ""
    fail_flag: str = ""
    format: str = "parquet"


class ChainOutput(Output):
    final: FileReference
    archive: FileReference
    rows: int


def _mark(path: str, line: str) -> None:
    if path:
        mark(path, line)


class ChainApp(App):
    """extract -> transform -> load, each handing the next a Parquet dataset by reference."""

    @task(timeout_seconds=600)
    async def extract(self, input: ExtractInput) -> Dataset:
        _mark(input.count_file, "extract")
        batches = (gen_batch(i, input.rows) for i in range(input.batches))
        ref = arrow.write_batches(batches, format=input.format, name="extracted")
        return Dataset(data=ref, rows=input.batches * input.rows)

    @task(timeout_seconds=600, retry_policy=RetryPolicy(max_attempts=2, initial_interval=0.1))
    async def transform(self, input: TransformInput) -> Dataset:
        _mark(input.count_file, "transform")
        if input.fail_flag and os.path.exists(input.fail_flag):
            raise NonRetryableError("transform: the fail flag is set")
        if input.gate:
            _mark(input.gate + ".pid", str(os.getpid()))
        deadline = time.monotonic() + 120
        while input.gate and not os.path.exists(input.gate) and time.monotonic() < deadline:
            time.sleep(0.1)
        rows = 0

        def passthrough():
            nonlocal rows
            for batch in arrow.iter_batches(input.data, batch_size=50_000):
                rows += batch.num_rows
                yield batch

        ref = arrow.write_batches(passthrough(), format="parquet", name="transformed",
                                  compression="zstd")
        return Dataset(data=ref, rows=rows)

    @task(timeout_seconds=600)
    async def load(self, input: LoadInput) -> Loaded:
        _mark(input.count_file, "load")
        final = arrow.write_batches(arrow.iter_batches(input.data), format="parquet",
                                    name="final", tier=StorageTier.PERSISTENT)
        # a directory reference of two small summary files, kept for the retention period
        folder = os.path.join(self.scratch_dir, "archive")
        os.makedirs(os.path.join(folder, "meta"), exist_ok=True)
        with open(os.path.join(folder, "rows.txt"), "w") as fh:
            fh.write(str(final.size_bytes))
        with open(os.path.join(folder, "meta", "sha.txt"), "w") as fh:
            fh.write(final.sha256 or "")
        archive = FileReference(local_path=folder, tier=StorageTier.RETAINED)
        rows = sum(b.num_rows for b in arrow.iter_batches(input.data))
        return Loaded(final=final, archive=archive, rows=rows)

    async def run(self, input: ChainInput) -> ChainOutput:
        extracted = await self.extract(ExtractInput(
            batches=input.batches, rows=input.rows, count_file=input.count_file,
            format=input.format))
        transformed = await self.transform(TransformInput(
            data=extracted.data, count_file=input.count_file, gate=input.gate,
            fail_flag=input.fail_flag))
        loaded = await self.load(LoadInput(data=transformed.data, count_file=input.count_file))
        return ChainOutput(final=loaded.final, archive=loaded.archive, rows=loaded.rows)


class EscapeInput(Input):
    path: str


class EscapeOutput(Output):
    leak: FileReference


class EscapeApp(App):
    """A task returning a reference to a file outside the allowed roots."""

    @task(timeout_seconds=60)
    async def leak(self, input: EscapeInput) -> EscapeOutput:
        return EscapeOutput(leak=FileReference(local_path=input.path))

    async def run(self, input: EscapeInput) -> EscapeOutput:
        return await self.leak(input)


class NodeInput(Input):
    rows: int = 50_000


class NodeData(Output):
    data: FileReference
    node: str


class NodeRead(Output):
    node: str
    rows: int
    local_path: str
    producer_node: str = ""


class NodeReport(Output):
    producer: str
    consumer: str
    rows: int
    consumer_path: str


class ReadInput(Input):
    data: FileReference
    producer: str


class TwoNodeApp(App):
    """Produce on the node with resource node_a, consume on the node with node_b."""

    @task(timeout_seconds=120, resources={"node_a": 1})
    async def produce(self, input: NodeInput) -> NodeData:
        import ray

        ref = arrow.write_batches((gen_batch(i, input.rows) for i in range(2)), format="arrow")
        return NodeData(data=ref, node=ray.get_runtime_context().get_node_id())

    @task(timeout_seconds=120, resources={"node_b": 1})
    async def consume(self, input: ReadInput) -> NodeRead:
        import ray

        table = arrow.read_table(input.data)
        for i, batch in enumerate(table.to_batches(max_chunksize=table.num_rows // 2)):
            if not batch.equals(gen_batch(i, table.num_rows // 2)):
                raise AssertionError(f"batch {i} differs")
        return NodeRead(node=ray.get_runtime_context().get_node_id(), rows=table.num_rows,
                        local_path=input.data.local_path or "")

    async def run(self, input: NodeInput) -> NodeReport:
        made = await self.produce(input)
        read = await self.consume(ReadInput(data=made.data, producer=made.node))
        return NodeReport(producer=made.node, consumer=read.node, rows=read.rows,
                          consumer_path=read.local_path)


# ---- two-node cluster scenario ----------------------------------------------------------------
# Usage: python -m tests.apps.files_apps S3_URL SCRATCH_A SCRATCH_B RUN_ID
# A Cluster cannot share a process with another `ray.init()`, so the test runs this in a
# subprocess. Each node gets its own scratch root (CONNECTOR_RUNTIME_SCRATCH in the raylet's
# environment, inherited by its workers), as two machines have separate disks; the S3 settings
# come from the environment (tests/services.py sets AWS_*). Prints the results as JSON.

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cluster_main() -> None:
    import ray
    from ray.cluster_utils import Cluster

    s3_url, scratch_a, scratch_b, run_id = sys.argv[1:5]
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"node_a": 1}, "include_dashboard": False,
        "env_vars": {"CONNECTOR_RUNTIME_SCRATCH": scratch_a},
    })
    cluster.add_node(num_cpus=1, resources={"node_b": 1},
                     env_vars={"CONNECTOR_RUNTIME_SCRATCH": scratch_b})
    try:
        ray.init(address=cluster.address, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": REPO}})
        cluster.wait_for_nodes()
        from runtime import run_app
        from storage import open_store

        out = run_app(TwoNodeApp, NodeInput(rows=50_000), run_id=run_id, store=s3_url)
        store = open_store(s3_url)
        result = {
            **out.model_dump(mode="json"),
            "nodes": sorted(n["NodeID"] for n in ray.nodes() if n["Alive"]),
            "store_keys": store.list(""),
        }
        print(json.dumps(result), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    # import the module under its real name, so Ray workers find the App classes there
    from tests.apps import files_apps

    files_apps.cluster_main()
