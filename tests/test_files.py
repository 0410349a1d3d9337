"""FileReference storage without Ray: persist, materialize, integrity, deletion guards, Arrow
helpers, S3 transfers (moto over HTTP, with injected throttling), and `gc`."""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import os
import re
import threading
import time
import uuid
from typing import Annotated

import pyarrow as pa
import pytest

from application_sdk import _context
from application_sdk.contracts import FileReference, MaxItems, Output, StorageTier
from application_sdk.errors import StorageIntegrityError
from runtime._runcontext import RunContext
from runtime.cli import main as cli_main
from runtime.worker import _files as rfiles
from storage import RunRecord, RunStatus, RunStore, StoreError, arrow, open_store
from storage import _cache as sc
from storage import _files as sf

# ---- helpers -----------------------------------------------------------------------------------


@pytest.fixture(params=["file", "memory", "s3"])
def store(request, tmp_path):
    if request.param == "file":
        return open_store(str(tmp_path / "store"))
    if request.param == "memory":
        return open_store(f"memory://files-{uuid.uuid4().hex[:8]}")
    return open_store(request.getfixturevalue("s3_url"))


def make_file(path, size: int, seed: int = 0) -> str:
    import random

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(random.Random(seed).randbytes(size))
    return str(path)


def make_tree(root) -> dict[str, bytes]:
    files = {"a.txt": b"alpha", "sub/b.bin": os.urandom(3000), "sub/deeper/c.csv": b"x,y\n1,2\n"}
    for rel, data in files.items():
        full = os.path.join(root, *rel.split("/"))
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as fh:
            fh.write(data)
    return files


def durable(stored: sf.StoredObject, tier=StorageTier.TRANSIENT) -> FileReference:
    return FileReference(storage_path=stored.storage_path, is_durable=True, tier=tier,
                         size_bytes=stored.size_bytes, sha256=stored.sha256,
                         file_count=stored.file_count)


def flip_byte(store, key: str, offset: int = 100) -> None:
    data = bytearray(store.read(key))
    data[offset] ^= 0x01
    if store.protocol == "file":
        os.chmod(store.path(key), 0o644)  # persisted objects are read-only
    store.write(key, bytes(data))


# ---- persist / materialize -----------------------------------------------------------------


def test_tier_prefixes_follow_the_store_layout():
    assert sf.tier_prefix(StorageTier.TRANSIENT, "App", "r1") == "runs/App/r1/files"
    assert sf.tier_prefix("retained", "App", "r1") == "retained/App/r1"
    assert sf.tier_prefix(StorageTier.PERSISTENT, "App", "r1") == "persistent/App/r1"


def test_file_round_trip_is_hashed_size_checked_and_cached_once(store, tmp_path):
    src = make_file(tmp_path / "scratch" / "data.bin", 300_000)
    key = "runs/App/r1/files/call/a1/data/data.bin"
    stored = sf.persist(store, src, key)
    with open(src, "rb") as fh:
        body = fh.read()
    assert (stored.size_bytes, stored.sha256) == (len(body), hashlib.sha256(body).hexdigest())
    assert stored.file_count == 1 and store.read(key) == body

    cache = str(tmp_path / "cache")
    path = sc.materialize(store, durable(stored), cache)
    with open(path, "rb") as fh:
        assert fh.read() == body
    assert path.endswith("data.bin")
    store.delete([key])  # a second materialize on this node must not need the store
    assert sc.materialize(store, durable(stored), cache) == path


def test_directory_round_trip_with_manifest(store, tmp_path):
    files = make_tree(tmp_path / "scratch" / "out")
    stored = sf.persist(store, str(tmp_path / "scratch" / "out"), "retained/App/r1/c/out")
    assert stored.file_count == 3
    assert stored.size_bytes == sum(len(v) for v in files.values())
    manifest = store.read("retained/App/r1/c/out" + sf.MANIFEST_SUFFIX)
    assert hashlib.sha256(manifest).hexdigest() == stored.sha256
    assert [e[0] for e in json.loads(manifest)["files"]] == sorted(files)

    path = sc.materialize(store, durable(stored, StorageTier.RETAINED), str(tmp_path / "c"))
    for rel, data in files.items():
        with open(os.path.join(path, *rel.split("/")), "rb") as fh:
            assert fh.read() == data


def test_local_store_hard_links_the_writers_files_instead_of_copying(tmp_path):
    store = open_store(str(tmp_path / "store"))
    table = pa.table({"x": list(range(100_000))})
    src = arrow.write_table(table, format="arrow", directory=str(tmp_path / "scratch")).local_path
    stored = sf.persist(store, src, "runs/App/r/files/k/a1/x/big.arrow", owned=True)
    assert os.stat(store.path(stored.storage_path)).st_ino == os.stat(src).st_ino
    path = sc.materialize(store, durable(stored), str(tmp_path / "cache"))
    assert os.stat(path).st_ino == os.stat(src).st_ino  # the cache links too: no copy at all
    assert not os.access(store.path(stored.storage_path), os.W_OK) or os.getuid() == 0
    assert os.stat(store.path(stored.storage_path)).st_mode & 0o222 == 0  # read-only object
    other = make_file(tmp_path / "scratch" / "mine.bin", 1000)  # not the writers': copied
    copied = sf.persist(store, other, "runs/App/r/files/k/a1/y/mine.bin", owned=True)
    assert os.stat(store.path(copied.storage_path)).st_ino != os.stat(other).st_ino


@pytest.mark.parametrize("kind", ["file", "memory"])
def test_trusted_writer_hash_is_still_verified_on_read(kind, tmp_path):
    """A wrong hash handed to persist (file changed after writing) cannot become wrong data:
    a file:// store hashes the copy it stores; elsewhere the reader's check catches it."""
    store = open_store(str(tmp_path / "store") if kind == "file"
                       else f"memory://hint-{uuid.uuid4().hex[:8]}")
    src = make_file(tmp_path / "s" / "f.bin", 1000)
    cache = str(tmp_path / "cache")
    stored = sf.persist(store, src, "runs/A/r/files/f.bin", known_size=1000,
                        known_sha256="0" * 64, stamp_dir=cache)
    if kind == "file":
        assert stored.sha256 == sf.file_sha256(src)[1]
        with open(sc.materialize(store, durable(stored), cache), "rb") as fh:
            assert fh.read() == open(src, "rb").read()
        return
    assert not os.path.exists(sf.stamp_path(cache, stored.storage_path, stored.sha256))
    with pytest.raises(StorageIntegrityError, match="does not match"):
        sc.materialize(store, durable(stored), cache)


def _hand_off_on_one_node(tmp_path, monkeypatch):
    """An Arrow file written (and hashed) by the writer, persisted to a file:// store with a
    stamp in the node cache; returns (store, reference, cache, hash calls made after that)."""
    store = open_store(str(tmp_path / "store"))
    table = pa.table({"x": list(range(50_000))})
    ref = arrow.write_table(table, format="arrow", directory=str(tmp_path / "scratch"))
    cache = str(tmp_path / "cache")
    stored = sf.persist(store, ref.local_path, "runs/A/r/files/k/a1/data/t.arrow",
                        known_size=ref.size_bytes, known_sha256=ref.sha256, stamp_dir=cache,
                        owned=True)
    assert stored.sha256 == ref.sha256 == hashlib.sha256(
        open(ref.local_path, "rb").read()).hexdigest()
    calls = []
    real = sc.file_sha256
    monkeypatch.setattr(sc, "file_sha256", lambda path: calls.append(path) or real(path))
    return store, durable(stored), cache, calls


def test_same_node_hand_off_hashes_the_bytes_once(tmp_path, monkeypatch):
    store, ref, cache, calls = _hand_off_on_one_node(tmp_path, monkeypatch)
    assert os.path.exists(sf.stamp_path(cache, ref.storage_path, ref.sha256))
    path = sc.materialize(store, ref, cache)
    assert calls == []  # the writer's hash vouches for these bytes: no second pass
    assert pa.ipc.open_file(path).read_all()["x"].to_pylist() == list(range(50_000))
    other = str(tmp_path / "other-node-cache")  # no stamp there: hash-checked
    sc.materialize(store, ref, other)
    assert len(calls) == 1


def test_in_place_change_after_the_stamp_is_still_caught(tmp_path, monkeypatch):
    store, ref, cache, calls = _hand_off_on_one_node(tmp_path, monkeypatch)
    path = store.path(ref.storage_path)
    os.chmod(path, 0o644)
    with open(path, "r+b") as fh:  # same inode, same size, right away
        fh.seek(200)
        byte = fh.read(1)
        fh.seek(200)
        fh.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(StorageIntegrityError, match="does not match its reference"):
        sc.materialize(store, ref, cache)
    assert calls  # the stamp no longer matched, so the bytes were hashed


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_flipped_byte_is_an_integrity_error_and_nothing_is_cached(kind, tmp_path, request):
    store = (open_store(str(tmp_path / "store")) if kind == "file"
             else open_store(request.getfixturevalue("s3_url")))
    src = make_file(tmp_path / "s" / "f.parquet", 50_000)
    stored = sf.persist(store, src, "runs/A/r/files/k/a1/d/f.parquet")
    flip_byte(store, stored.storage_path)
    cache = str(tmp_path / "cache")
    with pytest.raises(StorageIntegrityError, match="does not match its reference") as info:
        sc.materialize(store, durable(stored), cache)
    assert info.value.non_retryable
    assert [n for n in os.listdir(cache) if not n.endswith(".lock")] == []


def test_corrupted_directory_file_and_manifest_are_detected(tmp_path):
    store = open_store(str(tmp_path / "store"))
    make_tree(tmp_path / "out")
    stored = sf.persist(store, str(tmp_path / "out"), "runs/A/r/files/out")
    flip_byte(store, "runs/A/r/files/out/sub/b.bin", 10)
    with pytest.raises(StorageIntegrityError, match=r"sub/b\.bin"):
        sc.materialize(store, durable(stored), str(tmp_path / "c1"))
    flip_byte(store, "runs/A/r/files/out" + sf.MANIFEST_SUFFIX, 5)
    with pytest.raises(StorageIntegrityError, match="manifest"):
        sc.materialize(store, durable(stored), str(tmp_path / "c2"))


def test_missing_object_says_what_happened(tmp_path):
    store = open_store(str(tmp_path / "store"))
    ref = FileReference(storage_path="runs/A/r/files/gone.bin", is_durable=True, sha256="0" * 64)
    with pytest.raises(StorageIntegrityError, match="missing from store"):
        sc.materialize(store, ref, str(tmp_path / "cache"))


def test_concurrent_materialize_fetches_once(tmp_path, monkeypatch):
    store = open_store(str(tmp_path / "store"))
    stored = sf.persist(store, make_file(tmp_path / "s" / "f.bin", 2_000_000),
                        "runs/A/r/files/f.bin")
    fetches = []
    real = sc._fetch_file

    def counting(*args):
        fetches.append(1)
        time.sleep(0.2)  # widen the race
        return real(*args)

    monkeypatch.setattr(sc, "_fetch_file", counting)
    cache = str(tmp_path / "cache")
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(
        sc.materialize(store, durable(stored), cache))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 6
    assert len(fetches) == 1


def test_unsafe_storage_path_is_refused(tmp_path):
    store = open_store(str(tmp_path / "store"))
    ref = FileReference(storage_path="../../etc/passwd", is_durable=True, sha256="0" * 64)
    with pytest.raises(StoreError, match="refused store key"):
        sc.materialize(store, ref, str(tmp_path / "cache"))


# ---- deletion guards ---------------------------------------------------------------------------


def test_delete_refuses_paths_outside_the_roots(tmp_path):
    root = tmp_path / "scratch"
    make_file(root / "run" / "ok.bin", 10)
    outside = make_file(tmp_path / "precious.txt", 10)
    os.symlink(outside, root / "run" / "link-out")
    cases = {
        "/etc/passwd": "outside the allowed roots",
        "../../x": "not an absolute path",
        str(root / ".." / "precious.txt"): "outside the allowed roots",
        str(root / "run" / "link-out"): "outside the allowed roots",
        str(root): "outside the allowed roots",  # the root itself is not deletable
    }
    for path, reason in cases.items():
        with pytest.raises(sf.PathRefusedError) as info:
            sf.delete_local(path, [str(root)])
        message = str(info.value)
        assert reason in message and repr(path) in message and str(root) in message, message
        assert info.value.non_retryable
    assert os.path.exists(outside) and os.path.exists("/etc/passwd")
    assert sf.delete_local(str(root / "run"), [str(root)]) == 2  # the link itself is unlinked
    assert os.path.exists(outside) and not os.path.exists(root / "run")


def test_store_deletion_refuses_keys_outside_the_allowed_prefixes(tmp_path):
    store = open_store(str(tmp_path / "store"))
    store.write("persistent/App/r/keep.bin", b"keep")
    store.write("runs/App/r/files/x.bin", b"x")
    allowed = ["runs/App/r/files"]
    for key in ("persistent/App/r", "../outside", "runs/App/r/files/../../r2", "runs/App/r"):
        with pytest.raises(sf.PathRefusedError, match="refused to delete") as info:
            sf.delete_store_prefix(store, key, allowed)
        assert "runs/App/r/files" in str(info.value)
    assert store.read("persistent/App/r/keep.bin") == b"keep"
    assert sf.delete_store_prefix(store, "runs/App/r/files", allowed) == 1
    assert store.list("runs/App/r/files") == []


# ---- runtime hooks (in process, no Ray) ------------------------------------------------------


class Nested(Output):
    one: FileReference
    many: Annotated[list[FileReference], MaxItems(10)]
    named: Annotated[dict[str, FileReference], MaxItems(10)]
    plain: int = 0


def task_info(scratch: str, key: str = "produce:abc:0") -> _context.TaskInfo:
    return _context.TaskInfo(run_id="r1", app_name="App", task_name="produce", call_key=key,
                             attempt=1, scratch_dir=scratch)


def test_hooks_persist_nested_references_and_materialize_them(tmp_path, monkeypatch):
    monkeypatch.setenv("CONNECTOR_RUNTIME_SCRATCH", str(tmp_path / "scratch"))
    run = RunContext("r1", "App", str(tmp_path / "store"))
    scratch = str(tmp_path / "scratch" / "App" / "r1" / "produce" / "attempt-1")
    refs = [FileReference(local_path=make_file(os.path.join(scratch, f"{i}.bin"), 1000, i),
                          tier=tier)
            for i, tier in enumerate([StorageTier.TRANSIENT, StorageTier.RETAINED,
                                      StorageTier.PERSISTENT, StorageTier.TRANSIENT])]
    out = Nested(one=refs[0], many=[refs[1], refs[2]], named={"x": refs[3]}, plain=7)
    done = rfiles.after_task(out, run, task_info(scratch))
    assert done.plain == 7
    got = [done.one, *done.many, done.named["x"]]
    assert all(r.is_durable and r.sha256 and r.size_bytes == 1000 for r in got)
    assert re.match(r"runs/App/r1/files/produce_abc_0/a1-[0-9a-f]{8}/one/0\.bin$",
                    got[0].storage_path), got[0].storage_path
    assert got[1].storage_path.startswith("retained/App/r1/")
    assert got[2].storage_path.startswith("persistent/App/r1/")
    assert "named.x" in got[3].storage_path
    records = rfiles.objects_in("produce:abc:0", done)
    assert [(r["p"], r["t"]) for r in records] == [(r.storage_path, r.tier.value) for r in got]
    assert all(r["y"] == "o" and r["k"] == "produce:abc:0" for r in records)

    consumer_in = Nested.model_validate(done.model_dump(mode="json"))  # as it crosses the store
    fetched = rfiles.before_task(consumer_in, run, task_info(scratch, "consume:d:0"))
    for ref, original in zip([fetched.one, *fetched.many, fetched.named["x"]], refs,
                             strict=True):
        assert ref.local_path.startswith(rfiles.cache_dir(run))
        with open(ref.local_path, "rb") as a, open(original.local_path, "rb") as b:
            assert a.read() == b.read()


def test_upload_refused_outside_allowed_roots_unless_listed(tmp_path, monkeypatch):
    monkeypatch.setenv("CONNECTOR_RUNTIME_SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.delenv(rfiles.ALLOWED_ROOTS_VAR, raising=False)
    run = RunContext("r1", "App", str(tmp_path / "store"))
    info = task_info(str(tmp_path / "scratch" / "x"))
    for path in ("/etc/passwd", "../../x", str(tmp_path / "scratch" / ".." / "elsewhere.bin")):
        out = Nested(one=FileReference(local_path=path), many=[], named={})
        with pytest.raises(sf.PathRefusedError, match="refused to upload") as exc:
            rfiles.after_task(out, run, info)
        assert str(tmp_path / "scratch") in str(exc.value)
    data = make_file(tmp_path / "exports" / "e.bin", 100)
    monkeypatch.setenv(rfiles.ALLOWED_ROOTS_VAR, os.pathsep.join(["/nonexistent",
                                                                  str(tmp_path / "exports")]))
    done = rfiles.after_task(Nested(one=FileReference(local_path=data), many=[], named={}),
                             run, info)
    assert done.one.is_durable


# ---- Arrow helpers -----------------------------------------------------------------------------


def sample(rows: int = 30_000) -> pa.Table:
    return pa.table({"id": pa.array(range(rows), pa.int64()),
                     "name": pa.array([f"n{i % 97}" for i in range(rows)])})


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_arrow_writers_hash_while_writing_and_read_back(fmt, tmp_path):
    table = sample()
    ref = arrow.write_table(table, format=fmt, directory=str(tmp_path), name="t")
    with open(ref.local_path, "rb") as fh:
        body = fh.read()
    assert ref.local_path.endswith(f"t.{fmt}") and ref.format == fmt and not ref.is_durable
    assert (ref.size_bytes, ref.sha256) == (len(body), hashlib.sha256(body).hexdigest())
    assert arrow.read_table(ref).equals(table)
    assert arrow.read_table(ref, columns=["id"]).column_names == ["id"]
    batches = list(arrow.iter_batches(ref, batch_size=4_000))
    assert max(b.num_rows for b in batches) <= 4_000
    assert pa.Table.from_batches(batches).equals(table)
    assert arrow.local_path(ref) == ref.local_path


def test_write_batches_streams_into_the_task_scratch_dir(tmp_path):
    scratch = str(tmp_path / "scratch" / "not-yet-created")
    token = _context.task_info.set(task_info(scratch))
    try:
        ref = arrow.write_batches(
            (b for t in [sample(5000)] * 3 for b in t.to_batches()), format="parquet")
    finally:
        _context.task_info.reset(token)
    assert os.path.dirname(ref.local_path) == scratch
    assert arrow.read_table(ref).num_rows == 15_000


def test_directory_of_parquet_files_reads_as_one_dataset(tmp_path):
    for i in range(3):
        arrow.write_table(sample(1000), directory=str(tmp_path / "ds"), name=f"part-{i}")
    ref = FileReference(local_path=str(tmp_path / "ds"), format="parquet", file_count=3)
    assert arrow.read_table(ref).num_rows == 3000
    assert sum(b.num_rows for b in arrow.iter_batches(ref, batch_size=100)) == 3000


def test_writer_outside_a_task_needs_a_directory():
    with pytest.raises(RuntimeError, match="pass directory="):
        arrow.write_table(sample(10))


def test_unmaterialized_reference_says_how_to_read_it():
    with pytest.raises(FileNotFoundError, match="materializes"):
        arrow.read_table(FileReference(storage_path="runs/A/r/files/x", is_durable=True))


# ---- S3 specifics ------------------------------------------------------------------------------


def test_s3_large_file_goes_multipart_and_references_carry_no_credentials(s3_url, tmp_path):
    store = open_store(s3_url)
    src = make_file(tmp_path / "s" / "big.bin", 40 * 2**20)  # > 2 parts of 16 MiB
    stored = sf.persist(store, src, "runs/A/r/files/big.bin")
    bucket, key = store.path(stored.storage_path).split("/", 1)
    head = store.fs.call_s3("head_object", Bucket=bucket, Key=key)
    assert "-" in head["ETag"]  # a multipart upload's ETag is "<md5 of parts>-<part count>"
    ref = durable(stored)
    text = ref.model_dump_json()
    for secret in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL"):
        assert os.environ[secret] not in text
    assert "s3://" not in text and bucket not in text  # keys are relative to the store
    path = sc.materialize(store, ref, str(tmp_path / "cache"))
    assert sf.file_sha256(path)[1] == stored.sha256
    fs = sf.transfer_fs(store)
    retries = fs.config_kwargs["retries"]  # botocore rewrites max_attempts=10 as total 11
    assert retries["mode"] == "adaptive"
    assert retries.get("max_attempts", retries.get("total_max_attempts", 0) - 1) == 10


class _Throttler(http.server.BaseHTTPRequestHandler):
    """Forwards to moto, answering the first object PUTs and GETs with 503 SlowDown."""

    protocol_version = "HTTP/1.1"  # botocore sends `Expect: 100-continue` with uploads
    upstream: tuple[str, int] = ("127.0.0.1", 0)
    budget: dict[str, int] = {}
    injected = 0
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def _forward(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with _Throttler.lock:
            throttle = ("?" not in self.path and self.path.endswith("/data/data.bin")
                        and _Throttler.budget.get(self.command, 0) > 0)
            if throttle:
                _Throttler.budget[self.command] -= 1
                _Throttler.injected += 1
        if throttle:
            payload = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
                       b"<Message>Please reduce your request rate.</Message></Error>")
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        headers["Host"] = f"{self.upstream[0]}:{self.upstream[1]}"
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        skip = {"transfer-encoding", "connection"}
        if self.command != "HEAD":  # a HEAD answer keeps the object's Content-Length
            skip.add("content-length")
            self.send_header("Content-Length", str(len(data)))
        for k, v in resp.getheaders():
            if k.lower() not in skip:
                self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward


def test_s3_transfers_retry_throttling_and_5xx(s3_server, s3_bucket, tmp_path):
    host, port = s3_server.removeprefix("http://").split(":")
    _Throttler.upstream, _Throttler.injected = (host, int(port)), 0
    _Throttler.budget = {"PUT": 2, "GET": 2}
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Throttler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{proxy.server_address[1]}"
        store = open_store(f"s3://{s3_bucket}/thr",
                           {"client_kwargs": {"endpoint_url": endpoint}})
        src = make_file(tmp_path / "s" / "data.bin", 3 * 2**20)
        stored = sf.persist(store, src, "runs/A/r/files/data/data.bin")
        path = sc.materialize(store, durable(stored), str(tmp_path / "cache"))
        assert sf.file_sha256(path)[1] == stored.sha256
        assert _Throttler.injected == 4 and _Throttler.budget == {"PUT": 0, "GET": 0}
    finally:
        proxy.shutdown()


# ---- gc ----------------------------------------------------------------------------------------

DAY = 86400.0


def seed_gc_store(path: str):
    store = open_store(path)
    now = time.time()

    def run(app, run_id, status, finished_days_ago):
        record = RunRecord(app=app, run_id=run_id, app_path="m:C", entrypoint="run", input={},
                           input_digest="d", status=status)
        if finished_days_ago is not None:
            record.finished_at = now - finished_days_ago * DAY
        RunStore(store, app, run_id).write_run(record)

    run("App", "old-ok", RunStatus.COMPLETED, 40)
    store.write("retained/App/old-ok/k/a1/x/data.parquet", b"r1")
    store.write("retained/App/old-ok/k/a1/y/more.parquet", b"r2")
    run("App", "new-ok", RunStatus.COMPLETED, 2)
    store.write("retained/App/new-ok/k/a1/x/data.parquet", b"r3")
    run("App", "old-failed", RunStatus.FAILED, 35)
    store.write("runs/App/old-failed/files/k/a1/x/t.parquet", b"t1")
    run("App", "live", RunStatus.RUNNING, None)
    store.write("runs/App/live/files/k/a1/x/t.parquet", b"t2")
    store.write("retained/App/live/k/a1/x/r.parquet", b"r4")
    store.write("persistent/App/old-ok/k/a1/x/p.parquet", b"p1")
    store.write("retained/Other/orphan/x.bin", b"o1")  # no run record: mtime decides
    old = now - 90 * DAY
    os.utime(store.path("retained/Other/orphan/x.bin"), (old, old))
    return store


def test_gc_dry_run_lists_and_yes_deletes_only_what_is_past_retention(tmp_path, capsys):
    store = seed_gc_store(str(tmp_path / "store"))
    before = store.list("")
    assert cli_main(["gc", "--older-than", "30d", "--store", str(tmp_path / "store")]) == 0
    listed = capsys.readouterr()
    assert store.list("") == before  # dry run deletes nothing
    assert "dry run" in listed.err
    for prefix in ("retained/App/old-ok/", "runs/App/old-failed/files/",
                   "retained/Other/orphan/"):
        assert prefix in listed.out
    for kept in ("new-ok", "live", "persistent"):
        assert kept not in listed.out

    assert cli_main(["gc", "--older-than", "30d", "--yes", "--store",
                     str(tmp_path / "store")]) == 0
    assert "deleted 4 object(s)" in capsys.readouterr().err
    left = set(before) - set(store.list(""))
    assert left == {"retained/App/old-ok/k/a1/x/data.parquet",
                    "retained/App/old-ok/k/a1/y/more.parquet",
                    "runs/App/old-failed/files/k/a1/x/t.parquet",
                    "retained/Other/orphan/x.bin"}
    assert store.read("persistent/App/old-ok/k/a1/x/p.parquet") == b"p1"


@pytest.mark.parametrize("bad", ["30", "thirty days", "-3d", "5y", ""])
def test_gc_bad_older_than_is_usage_error(bad, tmp_path, capsys):
    assert cli_main(["gc", f"--older-than={bad}", "--store", str(tmp_path / "s")]) == 2
    assert "--older-than" in capsys.readouterr().err


def test_gc_on_s3_through_the_cli(cli, s3_url):
    store = open_store(s3_url)
    RunStore(store, "App", "old").write_run(RunRecord(
        app="App", run_id="old", app_path="m:C", entrypoint="run", input={}, input_digest="d",
        status=RunStatus.COMPLETED, finished_at=time.time() - 31 * DAY))
    store.write("retained/App/old/k/a1/x/data.parquet", b"r")
    store.write("persistent/App/old/k/a1/x/p.parquet", b"p")
    dry = cli("gc", "--older-than", "30d", "--store", s3_url)
    assert dry.code == 0 and "would delete" in dry.stdout and "retained/App/old/" in dry.stdout
    assert store.exists("retained/App/old/k/a1/x/data.parquet")
    done = cli("gc", "--older-than", "30d", "--yes", "--store", s3_url)
    assert done.code == 0, done.stderr
    assert not store.exists("retained/App/old/k/a1/x/data.parquet")
    assert store.exists("persistent/App/old/k/a1/x/p.parquet")
    bad = cli("gc", "--older-than", "soon", "--store", s3_url)
    assert bad.code == 2 and "expected a number and a unit" in bad.stderr
