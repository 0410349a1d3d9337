"""Arrow/Parquet helpers for task authors: write data to a file, hand back a FileReference.

Inside a task::

    from storage import arrow

    ref = arrow.write_table(table, format="parquet")            # in self.scratch_dir
    ref = arrow.write_batches(batches, schema, format="arrow")  # streamed, bounded memory
    ...
    table = arrow.read_table(input.data)
    for batch in arrow.iter_batches(input.data, batch_size=65_536): ...
    path = arrow.local_path(input.data)

A returned reference is local (not yet durable): the runtime uploads it to the store when the
task returns it in its Output, and downloads (and hash-checks) it before a task that takes it in
its Input runs. The writers hash while they write (a thread reads the file behind the writer),
so persisting needs no second read of the file.

Outside a task - a run's output, read from a notebook or a test - the readers take the store
the run used and fetch (and hash-check) the file into a cache folder of this user's
(`$XDG_CACHE_HOME/connector-runtime/reads`, or `cache_dir=`)::

    out = runtime.run_app(MyApp, {...}, store="s3://bucket/prefix")
    table = arrow.read_table(out.data, store="s3://bucket/prefix")

Inside a task, a reference with `auto_materialize=False` is fetched when a reader first needs it.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from application_sdk.app import current_task_info
from application_sdk.contracts import FileReference, StorageTier

from ._cache import materialize
from ._files import _make_dirs, note_hashed
from ._localfs import file_mode
from ._store import Store, open_store

__all__ = [
    "iter_batches",
    "local_path",
    "read_table",
    "write_batches",
    "write_table",
]

_EXT = {"parquet": ".parquet", "arrow": ".arrow"}


def _scratch(directory: str | None) -> str:
    if directory is None:
        info = current_task_info()
        if info is None:
            raise RuntimeError(
                "storage.arrow writers default to the task's scratch directory, and this is "
                "not inside a task: pass directory=..."
            )
        directory = info.scratch_dir
    _make_dirs(os.path.abspath(directory))  # missing folders 0700 (the umask's mode otherwise)
    return directory


def _target(name: str | None, fmt: str, directory: str | None) -> str:
    if fmt not in _EXT:
        raise ValueError(f"format must be 'parquet' or 'arrow', got {fmt!r}")
    name = name or f"data-{uuid.uuid4().hex[:12]}"
    if not name.endswith(_EXT[fmt]):
        name += _EXT[fmt]
    if os.sep in name or name in (".", ".."):
        raise ValueError(f"name {name!r} must be a plain file name")
    return os.path.join(_scratch(directory), name)


class _HashingFile(io.RawIOBase):
    """A write-only file whose SHA-256 a thread computes by reading behind the writer.

    pyarrow's IPC and Parquet writers only append, so bytes below the written offset are final;
    hashing them from the page cache on another core overlaps the hash with the write and needs
    no copy of the data in memory.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, file_mode())  # 0600
        self._written = 0
        self._done = False
        self._cond = threading.Condition()
        self._hash = hashlib.sha256()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._hash_loop, name="sha256", daemon=True)
        self._thread.start()

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._written

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        total = len(view)
        off = 0
        while off < total:
            off += os.write(self._fd, view[off:])
        with self._cond:
            self._written += total
            self._cond.notify()
        return total

    def _hash_loop(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
            buf = bytearray(8 * 2**20)
            view = memoryview(buf)
            pos = 0
            try:
                while True:
                    with self._cond:
                        while self._written <= pos and not self._done:
                            self._cond.wait()
                        target, done = self._written, self._done
                    while pos < target:
                        n = os.preadv(fd, [view[: min(len(buf), target - pos)]], pos)
                        if n == 0:
                            raise OSError(f"{self.path}: short read while hashing")
                        self._hash.update(view[:n])
                        pos += n
                    if done and pos >= self._written:
                        return
            finally:
                os.close(fd)
        except BaseException as exc:
            self._error = exc

    def close(self) -> None:
        if self.closed:
            return
        try:
            os.close(self._fd)
        finally:
            with self._cond:
                self._done = True
                self._cond.notify()
            self._thread.join()
            super().close()

    def result(self) -> tuple[int, str]:
        if self._error is not None:
            raise self._error
        return self._written, self._hash.hexdigest()


def _reference(path: str, fmt: str, size: int, sha: str, tier: StorageTier) -> FileReference:
    return FileReference(local_path=path, format=fmt, size_bytes=size, sha256=sha,
                         file_count=1, tier=StorageTier(tier), is_durable=False)


def write_batches(
    batches: Iterable[pa.RecordBatch],
    schema: pa.Schema | None = None,
    *,
    format: str = "parquet",
    name: str | None = None,
    directory: str | None = None,
    tier: StorageTier = StorageTier.TRANSIENT,
    compression: str | None = None,
) -> FileReference:
    """Stream record batches into one Arrow IPC or Parquet file; its local reference.

    Memory stays at about one batch (plus a Parquet row group). `schema` defaults to the first
    batch's. `directory` defaults to the running task's scratch directory.
    """
    path = _target(name, format, directory)
    it = iter(batches)
    first = None
    if schema is None:
        first = next(it, None)
        if first is None:
            raise ValueError("write_batches: no batches and no schema")
        schema = first.schema
    sink = _HashingFile(path)
    try:
        if format == "parquet":
            writer: Any = pq.ParquetWriter(sink, schema, compression=compression or "snappy")
        else:
            options = ipc.IpcWriteOptions(compression=compression) if compression else None
            writer = ipc.new_file(sink, schema, options=options)
        with writer:
            if first is not None:
                writer.write_batch(first)
            for batch in it:
                writer.write_batch(batch)
    finally:
        sink.close()
    size, sha = sink.result()
    note_hashed(path, size, sha)
    return _reference(path, format, size, sha, tier)


def write_table(
    table: pa.Table,
    *,
    format: str = "parquet",
    name: str | None = None,
    directory: str | None = None,
    tier: StorageTier = StorageTier.TRANSIENT,
    compression: str | None = None,
    max_chunksize: int | None = 1 << 20,
) -> FileReference:
    """Write a table to one Arrow IPC or Parquet file; its local reference."""
    return write_batches(table.to_batches(max_chunksize=max_chunksize), table.schema,
                         format=format, name=name, directory=directory, tier=tier,
                         compression=compression)


def local_path(ref: FileReference, *, store: Store | str | None = None,
               store_options: dict[str, Any] | None = None,
               cache_dir: str | None = None) -> str:
    """The reference's local file or directory: where it is on this node, else fetched.

    A durable reference whose local copy is not here is fetched (hash-checked): inside a task
    through the run's store (also for `auto_materialize=False` references), outside one from
    `store` (the URL or Store the run used) into `cache_dir`.
    """
    if ref.local_path and os.path.exists(ref.local_path):
        return ref.local_path
    if ref.is_durable and ref.storage_path:
        info = current_task_info()
        runtime = info.runtime if info is not None and store is None else None
        if runtime is not None and hasattr(runtime, "materialize"):
            return runtime.materialize(ref, force=True).local_path
        if store is not None:
            st = store if isinstance(store, Store) else open_store(store, store_options)
            return materialize(st, ref, cache_dir or _reads_cache())
    where = ref.storage_path or "nowhere"
    if ref.local_path:
        raise FileNotFoundError(
            f"reference's local file {ref.local_path!r} does not exist here"
            + (f"; it is stored at {where}: pass store=... (the run's store) to read it"
               if ref.is_durable else ""))
    raise FileNotFoundError(
        f"reference to {where} has no local file here: the runtime materializes references "
        "in a task's Input; outside a task, pass the run's store "
        "(read_table(ref, store='s3://bucket/prefix'))")


def _reads_cache() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "connector-runtime", "reads")


def _format(ref: FileReference, path: str) -> str:
    if ref.format in _EXT:
        return ref.format
    if path.endswith((".arrow", ".feather", ".ipc")):
        return "arrow"
    return "parquet"


def _files(path: str) -> list[str]:
    if not os.path.isdir(path):
        return [path]
    found = []
    for folder, dirs, files in os.walk(path):
        dirs.sort()
        found += [os.path.join(folder, f) for f in sorted(files) if not f.startswith((".", "_"))]
    return found


def iter_batches(
    ref: FileReference, *, batch_size: int = 65_536, columns: list[str] | None = None,
    store: Store | str | None = None, store_options: dict[str, Any] | None = None,
    cache_dir: str | None = None,
) -> Iterator[pa.RecordBatch]:
    """The reference's data as record batches, in file order, reading one batch at a time.

    Parquet is read per row group and re-sliced to `batch_size`; Arrow IPC files are memory
    mapped (pages are file-backed, so the OS can drop them). A directory reference yields its
    files in sorted order. `store`: see `local_path`.
    """
    path = local_path(ref, store=store, store_options=store_options, cache_dir=cache_dir)
    fmt = _format(ref, path)
    for file in _files(path):
        if fmt == "parquet":
            with pq.ParquetFile(file) as pf:
                yield from pf.iter_batches(batch_size=batch_size, columns=columns)
        else:
            with pa.memory_map(file) as source:
                reader = ipc.open_file(source)
                for i in range(reader.num_record_batches):
                    batch = reader.get_batch(i)
                    if columns is not None:
                        batch = batch.select(columns)
                    for off in range(0, batch.num_rows, batch_size):
                        yield batch.slice(off, batch_size)


def read_table(ref: FileReference, *, columns: list[str] | None = None,
               store: Store | str | None = None, store_options: dict[str, Any] | None = None,
               cache_dir: str | None = None) -> pa.Table:
    """The reference's data as one table (Arrow IPC memory-mapped: zero copy). Outside a
    task, pass the run's `store` (a URL or a Store): the file is fetched and hash-checked."""
    path = local_path(ref, store=store, store_options=store_options, cache_dir=cache_dir)
    fmt = _format(ref, path)
    tables = []
    for file in _files(path):
        if fmt == "parquet":
            tables.append(pq.read_table(file, columns=columns))
        else:
            with pa.memory_map(file) as source:
                table = ipc.open_file(source).read_all()
            tables.append(table.select(columns) if columns is not None else table)
    if not tables:
        raise ValueError(f"reference {path!r} holds no data files")
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)
