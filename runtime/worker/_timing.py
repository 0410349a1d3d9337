"""What an attempt reports about itself besides its output: when and where it ran, what files.

The attempt's result is one msgpack blob, `[output bytes, stamp]`: the output bytes travel
as they are (the driver journals them without decoding them again), and the stamp is a small
map the driver copies into the attempt's journal record:

  {"s": started_at, "e": ended_at,          worker clock, epoch seconds
   "w": [node id, node ip, worker pid],     one lookup per worker process
   "f": [file count, bytes, rows or None]}  only when the output holds FileReferences

A failed attempt raises, so it cannot return a stamp: the worker sets it on the exception
(`_connector_runtime_stamp`), which crosses to the driver with the exception's `__dict__`
when the exception pickles that way (most do; `TaskError` does not, and a worker that dies
sends nothing). The driver records what is known: its own dispatch and receive times always,
the worker's pid and ip from Ray's `RayTaskError` when the stamp is missing.

Rows are counted only where the format says how many there are without reading the data:
a Parquet footer, an Arrow IPC file's record batch headers. CSV and JSON Lines would need a
full read of the file, which is the task's work, not the runtime's: their rows stay unknown.

Rejected: returning a Python tuple `(bytes, dict)` from the remote function. Ray pickles it
instead of shipping the bytes as they are; one msgpack blob keeps the single-bytes fast path
(`benchmarks/PROFILE.md`) and costs a memcpy of the output.
"""

from __future__ import annotations

import os
import time
from typing import Any

import msgpack

__all__ = ["STAMP_ATTR", "file_stats", "pack_result", "stamp_error", "unpack_result", "where"]

STAMP_ATTR = "_connector_runtime_stamp"

_where: list[Any] | None = None


def where() -> list[Any]:
    """[node id, node ip, pid] of this worker process (looked up once per process)."""
    global _where
    if _where is None:
        node = ip = None
        try:
            import ray

            if ray.is_initialized():  # else asking would start a Ray of its own
                node = ray.get_runtime_context().get_node_id()
                ip = ray.util.get_node_ip_address()
        except Exception:  # an unexpected Ray: the pid still says something
            pass
        _where = [node, ip, os.getpid()]
    return _where


def _rows(path: str, fmt: str) -> int | None:
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return int(pq.read_metadata(path).num_rows)
        if fmt == "arrow":
            import pyarrow as pa

            with pa.memory_map(path) as source:
                reader = pa.ipc.open_file(source)
                return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    except Exception:  # not that format after all, or unreadable: unknown, not an error
        return None
    return None


def _rows_of(path: str, fmt: str) -> int | None:
    if fmt not in ("parquet", "arrow"):
        return None
    if not os.path.isdir(path):
        return _rows(path, fmt)
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            if name.startswith("."):
                continue
            rows = _rows(os.path.join(root, name), fmt)
            if rows is None:
                return None
            total += rows
    return total


def file_stats(refs: list[Any]) -> list[Any] | None:
    """[file count, bytes, rows or None] of the durable references an output holds."""
    durable = [r for r in refs if r.is_durable and r.storage_path]
    if not durable:
        return None
    count = size = rows = 0
    rows_known = True
    for ref in durable:
        count += ref.file_count or 0
        size += ref.size_bytes or 0
        n = _rows_of(ref.local_path, ref.format) if ref.local_path else None
        if n is None:
            rows_known = False
        else:
            rows += n
    return [count, size, rows if rows_known else None]


def _stamp(started: float, files: list[Any] | None) -> dict[str, Any]:
    stamp: dict[str, Any] = {"s": started, "e": time.time(), "w": where()}
    if files is not None:
        stamp["f"] = files
    return stamp


def pack_result(data: bytes, started: float, files: list[Any] | None = None) -> bytes:
    """The attempt's result: output bytes and the stamp, in one blob."""
    return msgpack.packb([data, _stamp(started, files)], use_bin_type=True)


def unpack_result(blob: bytes) -> tuple[bytes, dict[str, Any]]:
    """(output bytes, stamp) of what `pack_result` made."""
    data, stamp = msgpack.unpackb(blob, raw=False)
    return data, stamp


def stamp_error(exc: BaseException, started: float) -> None:
    """Set the attempt's stamp on the exception it fails with (best effort)."""
    try:
        setattr(exc, STAMP_ATTR, _stamp(started, None))
    except Exception:  # an exception type that refuses attributes: the driver knows less
        pass
