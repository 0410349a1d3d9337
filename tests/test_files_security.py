"""Attacks on FileReferences, the node cache, scratch folders and file:// stores (no Ray).

Each test is the attack as issues 12 and 13 describe it: a byte flipped after the node first read
an object, bytes planted in the cache, a scratch root another user owns, a store folder or object
replaced by a symlink (decoy files outside must survive), a reference stripped of its checksum,
a run reaching into another run's scratch or objects, world-readable files, a user's file
changed by persist, and PERSISTENT leftovers of killed attempts for `gc`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
import threading
import time
import uuid

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from application_sdk import _context
from application_sdk.contracts import FileReference, Input, Output, StorageTier
from application_sdk.errors import StorageIntegrityError
from runtime._runcontext import RunContext
from runtime.cli import main as cli_main
from runtime.worker import _files as rfiles
from storage import RunRecord, RunStatus, RunStore, StoreError, arrow, open_store
from storage import _cache as sc
from storage import _files as sf

NOBODY = 65534
DAY = 86400.0


# ---- helpers -----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _umask_and_env(monkeypatch):
    """The usual umask (022) and no operator settings, whatever the environment says."""
    old = os.umask(0o022)
    monkeypatch.delenv("CONNECTOR_RUNTIME_FILE_MODE", raising=False)
    monkeypatch.delenv(rfiles.ALLOWED_ROOTS_VAR, raising=False)
    yield
    os.umask(old)


def write(path, data: bytes) -> str:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
    return str(path)


def read(path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def durable(stored: sf.StoredObject, tier=StorageTier.TRANSIENT) -> FileReference:
    return FileReference(storage_path=stored.storage_path, is_durable=True, tier=tier,
                         size_bytes=stored.size_bytes, sha256=stored.sha256,
                         file_count=stored.file_count)


def flip_in_place(path: str, offset: int = 100) -> None:
    """Flip one byte of the file's inode (bit rot, or a writer holding it open)."""
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))


def files_under(root) -> dict[str, bytes]:
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            full = os.path.join(folder, name)
            if not os.path.islink(full):
                found[os.path.relpath(full, root)] = read(full)
    return found


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def task_info(run: RunContext, key: str = "produce:abc:0", attempt: int = 1):
    return _context.TaskInfo(run_id=run.run_id, app_name=run.app_name, task_name="produce",
                             call_key=key, attempt=attempt,
                             scratch_dir=os.path.join(run.scratch, "produce", "attempt-1"))


def writer_file(folder: str, rows: int = 20_000) -> FileReference:
    """An Arrow file made by the runtime's writer (hashed while written), like a task output."""
    return arrow.write_table(pa.table({"x": list(range(rows))}), format="arrow",
                             directory=folder)


class Carry(Output):
    data: FileReference


class Take(Input):
    data: FileReference


@pytest.fixture
def scratch(tmp_path, monkeypatch) -> str:
    root = str(tmp_path / "scratch")
    monkeypatch.setenv("CONNECTOR_RUNTIME_SCRATCH", root)
    return root


# ---- issue 12 item 1: a cache hit is checked -----------------------------------------------


def test_flip_in_the_store_after_the_node_read_it_is_caught_on_the_cache_hit(tmp_path):
    """The cache entry is a hard link to the store object: flipping the object flips the
    cached copy too. The next read on this node must see it, not hand back the bad bytes."""
    store = open_store(str(tmp_path / "store"))
    ref = writer_file(str(tmp_path / "scratch"))
    cache = str(tmp_path / "cache")
    stored = sf.persist(store, ref.local_path, "persistent/A/r/k/a1-00000000/data/t.arrow",
                        known_size=ref.size_bytes, known_sha256=ref.sha256, stamp_dir=cache,
                        owned=True)
    first = sc.materialize(store, durable(stored, StorageTier.PERSISTENT), cache)
    assert os.stat(first).st_ino == os.stat(store.path(stored.storage_path)).st_ino
    flip_in_place(store.path(stored.storage_path), 300)
    with pytest.raises(StorageIntegrityError, match="does not match its reference") as info:
        sc.materialize(store, durable(stored, StorageTier.PERSISTENT), cache)
    assert info.value.non_retryable


@pytest.mark.parametrize("kind", ["memory", "s3"])
def test_changed_cached_copy_is_detected_and_fetched_again(kind, tmp_path, request):
    store = (open_store(f"memory://sec-{uuid.uuid4().hex[:8]}") if kind == "memory"
             else open_store(request.getfixturevalue("s3_url")))
    body = os.urandom(200_000)
    stored = sf.persist(store, write(tmp_path / "s" / "f.bin", body), "runs/A/r/files/f.bin")
    cache = str(tmp_path / "cache")
    path = sc.materialize(store, durable(stored), cache)
    os.chmod(path, 0o600)
    flip_in_place(path, 1234)  # a task writing to its input, or anyone with the cache's uid
    again = sc.materialize(store, durable(stored), cache)
    assert read(again) == body


def test_bytes_planted_in_the_cache_are_never_used(tmp_path):
    store = open_store(str(tmp_path / "store"))
    body = os.urandom(50_000)
    stored = sf.persist(store, write(tmp_path / "s" / "f.bin", body), "runs/A/r/files/k/f.bin")
    cache = str(tmp_path / "cache")
    tag = sf._cache_tag(stored.storage_path, stored.sha256)  # public facts: key and hash
    planted = write(os.path.join(cache, tag, "f.bin"), b"evil" * 1000)
    path = sc.materialize(store, durable(stored), cache)
    assert read(path) == body
    assert not os.path.exists(planted) or read(planted) == body


def test_cached_directory_is_checked_file_by_file(tmp_path):
    store = open_store(f"memory://sec-{uuid.uuid4().hex[:8]}")  # a copy, as on S3
    tree = {"a.txt": b"alpha" * 100, "sub/b.bin": os.urandom(3000)}
    for rel, data in tree.items():
        write(tmp_path / "out" / rel, data)
    stored = sf.persist(store, str(tmp_path / "out"), "retained/A/r/k/out")
    ref = durable(stored, StorageTier.RETAINED)
    cache = str(tmp_path / "cache")
    path = sc.materialize(store, ref, cache)
    os.chmod(os.path.join(path, "sub", "b.bin"), 0o600)
    flip_in_place(os.path.join(path, "sub", "b.bin"), 10)
    again = sc.materialize(store, ref, cache)
    assert files_under(again) == {os.path.join(*k.split("/")): v for k, v in tree.items()}
    write(os.path.join(again, "planted.parquet"), b"PAR1 not yours")  # read as part of the set
    third = sc.materialize(store, ref, cache)
    assert sorted(files_under(third)) == sorted(os.path.join(*k.split("/")) for k in tree)


def test_flip_in_a_hard_linked_directory_entry_is_caught(tmp_path):
    store = open_store(str(tmp_path / "store"))
    for rel in ("a.bin", "sub/b.bin"):
        write(tmp_path / "out" / rel, os.urandom(5000))
    stored = sf.persist(store, str(tmp_path / "out"), "retained/A/r/k/out")
    ref = durable(stored, StorageTier.RETAINED)
    cache = str(tmp_path / "cache")
    sc.materialize(store, ref, cache)
    target = store.path("retained/A/r/k/out/sub/b.bin")
    os.chmod(target, 0o600)
    flip_in_place(target, 7)
    with pytest.raises(StorageIntegrityError, match=r"sub/b\.bin"):
        sc.materialize(store, ref, cache)


MUTATIONS = ["flip-store", "flip-cache", "add-cache", "remove-cache", "link-store",
             "truncate-store", "replace-store", "manifest-store", "none"]
names = st.sampled_from(["a", "b.bin", "c.parquet", "sub/d", "sub/e.csv", "sub/deep/f"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(backend=st.sampled_from(["file", "memory"]), as_dir=st.booleans(),
       tree=st.dictionaries(names, st.binary(min_size=1, max_size=3000), min_size=1,
                            max_size=4),
       mutation=st.sampled_from(MUTATIONS), pick=st.integers(0, 10), offset=st.integers(0, 3000))
def test_a_cached_reference_is_the_genuine_bytes_or_an_error(backend, as_dir, tree, mutation,
                                                             pick, offset):
    """Whatever is changed in the store or the node cache after the first read, the next
    materialize returns exactly the stored tree or raises; a change to the cache alone, with
    the store intact, is repaired by fetching again."""
    if not as_dir:
        tree = {"only.bin": next(iter(tree.values()))}
    work = tempfile.mkdtemp(prefix="prop-")
    try:
        store = (open_store(os.path.join(work, "store")) if backend == "file"
                 else open_store(f"memory://prop-{uuid.uuid4().hex[:8]}"))
        for rel, data in tree.items():
            write(os.path.join(work, "src", *rel.split("/")), data)
        src = os.path.join(work, "src") if as_dir else os.path.join(work, "src", "only.bin")
        key = "runs/A/r/files/k/a1-00000000/d/" + ("tree" if as_dir else "only.bin")
        ref = durable(sf.persist(store, src, key))
        cache = os.path.join(work, "cache")
        first = sc.materialize(store, ref, cache)
        want = files_under(first) if as_dir else {"": read(first)}
        assert want == ({os.path.join(*k.split("/")): v for k, v in tree.items()} if as_dir
                        else {"": tree["only.bin"]})
        rels = sorted(tree)
        rel = rels[pick % len(rels)]
        stored_key = f"{key}/{rel}" if as_dir else key
        cached = os.path.join(first, *rel.split("/")) if as_dir else first
        shares_inode = backend == "file"
        _mutate(store, mutation, stored_key, key, cached, first, offset, work, as_dir)
        try:
            again = sc.materialize(store, ref, cache)
        except (StorageIntegrityError, sf.PathRefusedError):
            cache_only = mutation in ("add-cache", "remove-cache") or (
                mutation == "flip-cache" and not shares_inode)
            assert not cache_only and mutation != "none", f"{mutation}: failed, store intact"
            return
        got = files_under(again) if as_dir else {"": read(again)}
        assert got == want, f"{mutation}: wrong bytes returned"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _mutate(store, mutation, stored_key, key, cached, first, offset, work, as_dir) -> None:
    local = store.protocol == "file"
    if mutation == "flip-store" or (mutation == "manifest-store" and not as_dir):
        data = bytearray(store.read(stored_key))
        data[offset % len(data)] ^= 0x01
        if local:
            os.chmod(store.path(stored_key), 0o600)
            with open(store.path(stored_key), "r+b") as fh:  # in place: the same inode
                fh.write(bytes(data))
        else:
            store.write(stored_key, bytes(data))
    elif mutation == "manifest-store":
        data = bytearray(store.read(key + sf.MANIFEST_SUFFIX))
        data[offset % len(data)] ^= 0x01
        store.write(key + sf.MANIFEST_SUFFIX, bytes(data))
    elif mutation == "flip-cache":
        os.chmod(cached, 0o600)
        flip_in_place(cached, offset % os.path.getsize(cached))
    elif mutation == "add-cache":
        target = os.path.join(first, "planted.bin") if as_dir else cached
        if not as_dir:
            os.unlink(cached)
        write(target, b"planted")
    elif mutation == "remove-cache":
        os.unlink(cached)
    elif mutation == "link-store" and local:
        decoy = write(os.path.join(work, "host", "decoy"), store.read(stored_key))
        os.unlink(store.path(stored_key))
        os.symlink(decoy, store.path(stored_key))  # same bytes even: still refused
    elif mutation in ("truncate-store", "replace-store"):
        data = store.read(stored_key)
        new = data[: len(data) // 2] if mutation == "truncate-store" else bytes(
            b ^ 0xFF for b in data)
        store.write(stored_key, new)  # a new inode: the cached copy keeps the genuine bytes


# ---- issue 13 item 3: store objects are regular files; checksums are required ----------------


@pytest.mark.parametrize("shape", ["file", "directory"])
def test_durable_reference_without_a_checksum_is_refused(shape, tmp_path):
    store = open_store(str(tmp_path / "store"))
    if shape == "file":
        src = write(tmp_path / "s" / "f.bin", os.urandom(1000))
    else:
        write(tmp_path / "s" / "d" / "x.bin", b"x" * 100)
        src = str(tmp_path / "s" / "d")
    stored = sf.persist(store, src, "runs/A/r/files/k/obj")
    ref = durable(stored).model_copy(update={"sha256": None})
    cache = str(tmp_path / "cache")
    with pytest.raises(StorageIntegrityError, match="carries no sha256") as info:
        sc.materialize(store, ref, cache)
    assert info.value.non_retryable
    assert files_under(cache) == {}


@pytest.mark.parametrize("forged_sha", [False, True])
def test_store_object_replaced_by_a_symlink_is_refused(forged_sha, tmp_path):
    """The journal can be edited too: with the host file's own hash in the reference, the hash
    check alone would pass. The object must be a regular file inside the store."""
    store = open_store(str(tmp_path / "store"))
    secret = write(tmp_path / "host" / "secret.txt", b"host secret\n" * 50)
    stored = sf.persist(store, write(tmp_path / "s" / "f.bin", os.urandom(600)),
                        "runs/A/r/files/k/f.bin")
    os.unlink(store.path(stored.storage_path))
    os.symlink(secret, store.path(stored.storage_path))
    ref = durable(stored)
    if forged_sha:
        ref = ref.model_copy(update={"sha256": hashlib.sha256(read(secret)).hexdigest(),
                                     "size_bytes": os.path.getsize(secret)})
    cache = str(tmp_path / "cache")
    with pytest.raises((sf.PathRefusedError, StorageIntegrityError)) as info:
        sc.materialize(store, ref, cache)
    assert info.value.non_retryable and "symbolic link" in str(info.value)
    assert b"host secret" not in b"".join(files_under(cache).values())
    assert read(secret) == b"host secret\n" * 50


def test_store_folder_replaced_by_a_symlink_is_refused_on_read(tmp_path):
    store = open_store(str(tmp_path / "store"))
    secret = write(tmp_path / "host" / "k" / "f.bin", b"host data " * 100)
    stored = sf.persist(store, write(tmp_path / "s" / "f.bin", os.urandom(600)),
                        "runs/A/r/files/k/f.bin")
    files = store.path("runs/A/r/files")
    os.rename(files, str(tmp_path / "moved"))
    os.symlink(str(tmp_path / "host"), files)
    ref = durable(stored).model_copy(update={
        "sha256": hashlib.sha256(read(secret)).hexdigest(), "size_bytes": 1000})
    cache = str(tmp_path / "cache")
    with pytest.raises((sf.PathRefusedError, StorageIntegrityError), match="symbolic link"):
        sc.materialize(store, ref, cache)
    assert b"host data" not in b"".join(files_under(cache).values())


# ---- issue 13 item 2: a file:// store never follows a link out of its root ------------------


def seed_store(path: str, victim: str):
    """A store with one old RETAINED folder, one old failed run's TRANSIENT leftovers and,
    outside it, a victim folder laid out like a store's `retained/` (decoys)."""
    store = open_store(path)
    old = time.time() - 40 * DAY
    for app, run_id, status in (("App", "old-ok", RunStatus.COMPLETED),
                                ("App", "old-failed", RunStatus.FAILED)):
        RunStore(store, app, run_id).write_run(RunRecord(
            app=app, run_id=run_id, app_path="m:C", entrypoint="run", input={},
            input_digest="d", status=status, finished_at=old))
    store.write("retained/App/old-ok/k/a1/x/data.parquet", b"r1")
    store.write("runs/App/old-failed/files/k/a1/x/t.parquet", b"t1")
    for rel in ("App/old-ok/k/a1/x/data.parquet", "App/victim/precious.txt", "files/k/a.txt"):
        write(os.path.join(victim, *rel.split("/")), b"decoy " + rel.encode())
        os.utime(os.path.join(victim, *rel.split("/")), (old, old))
    return store


def test_gc_never_follows_a_symlinked_folder_out_of_the_store(tmp_path, capsys):
    victim = str(tmp_path / "victim")
    store = seed_store(str(tmp_path / "store"), victim)
    before = files_under(victim)
    # a top-level folder, an app folder and a run's files folder replaced by links out
    os.rename(store.path("retained"), str(tmp_path / "retained-moved"))
    os.symlink(victim, store.path("retained"))
    os.symlink(victim, store.path("runs/Evil"))
    os.makedirs(store.path("runs/App/linked"))
    os.symlink(os.path.join(victim, "files"), store.path("runs/App/linked/files"))
    code = cli_main(["gc", "--older-than", "30d", "--yes", "--store", str(tmp_path / "store")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert files_under(victim) == before  # every decoy survived
    assert store.read("runs/App/old-failed/files/k/a1/x/t.parquet") is None  # real work done
    assert "symbolic link" in err


def test_listings_reads_writes_and_deletes_do_not_follow_links(tmp_path):
    victim = str(tmp_path / "victim")
    write(os.path.join(victim, "sub", "precious.txt"), b"precious")
    store = open_store(str(tmp_path / "store"))
    store.write("retained/App/real/x.bin", b"x")
    os.symlink(victim, store.path("retained/App/link"))
    os.symlink(os.path.join(victim, "sub", "precious.txt"), store.path("retained/App/real/y"))
    assert store.list("") == ["retained/App/real/x.bin"]
    assert store.list_dirs("retained/App") == ["real"]
    for call in (lambda: store.read("retained/App/link/sub/precious.txt"),
                 lambda: store.read("retained/App/real/y"),
                 lambda: store.write("retained/App/link/new.bin", b"n"),
                 lambda: store.create("retained/App/link/sub/new.bin", b"n"),
                 lambda: store.delete_prefix("retained/App/link/sub"),
                 lambda: store.delete(["retained/App/link/sub/precious.txt"]),
                 lambda: store.list("retained/App/link")):
        with pytest.raises(StoreError, match="symbolic link"):
            call()
    assert store.read_many(["retained/App/real/x.bin", "retained/App/real/y"]) == {
        "retained/App/real/x.bin": b"x"}  # the link is left out, the others still read
    assert files_under(victim) == {os.path.join("sub", "precious.txt"): b"precious"}
    store.delete_prefix("retained/App/link")  # removes the link itself, never what it names
    store.delete_prefix("retained/App/real")
    assert not os.path.lexists(store.path("retained/App/link"))
    assert files_under(victim) == {os.path.join("sub", "precious.txt"): b"precious"}


def test_cleanup_of_a_prefix_replaced_by_a_link_removes_only_the_link(tmp_path):
    victim = str(tmp_path / "victim")
    write(os.path.join(victim, "k", "precious.bin"), b"precious")
    store = open_store(str(tmp_path / "store"))
    store.write("runs/App/r/run.msgpack", b"record")
    os.symlink(victim, store.path("runs/App/r/files"))
    assert sf.delete_store_prefix(store, "runs/App/r/files", ["runs/App/r/files"]) == 0
    assert not os.path.lexists(store.path("runs/App/r/files"))
    os.rename(store.path("runs"), str(tmp_path / "runs-moved"))
    os.symlink(str(tmp_path / "runs-moved"), store.path("runs"))  # a link further up
    write(str(tmp_path / "runs-moved" / "App" / "r" / "files" / "x.bin"), b"x")
    with pytest.raises(StoreError, match="symbolic link"):
        sf.delete_store_prefix(store, "runs/App/r/files", ["runs/App/r/files"])
    assert read(os.path.join(victim, "k", "precious.bin")) == b"precious"
    assert read(str(tmp_path / "runs-moved" / "App" / "r" / "files" / "x.bin")) == b"x"


def test_a_fifo_in_the_store_is_refused_without_blocking(tmp_path):
    store = open_store(str(tmp_path / "store"))
    store.write("runs/App/r/run.msgpack", b"x")
    os.unlink(store.path("runs/App/r/run.msgpack"))
    os.mkfifo(store.path("runs/App/r/run.msgpack"))
    errors: list[BaseException] = []

    def attempt():
        try:
            store.read("runs/App/r/run.msgpack")
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "reading a FIFO planted in the store blocked"
    assert errors and isinstance(errors[0], StoreError) and "regular file" in str(errors[0])


# ---- issue 13 item 4: scratch and cache folders another user could own ----------------------


def _produce(tmp_path, run: RunContext) -> FileReference:
    store = run.store()
    stored = sf.persist(store, write(tmp_path / "src" / "f.bin", b"genuine " * 500),
                        f"runs/{run.app_name}/{run.run_id}/files/k/a1-00000000/data/f.bin")
    return durable(stored)


@pytest.mark.parametrize("attack", ["root-owned-by-nobody", "root-writable-by-others",
                                    "parent-owned-by-nobody"])
def test_a_scratch_root_another_user_can_change_is_refused(attack, tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    root = shared / "scratch"
    os.makedirs(root)
    if attack == "root-owned-by-nobody":
        os.chown(root, NOBODY, NOBODY)
        os.chmod(root, 0o755)
        culprit = str(root)
    elif attack == "root-writable-by-others":
        os.chmod(root, 0o777)
        culprit = str(root)
    else:  # the root is ours, but its parent's owner can rename it and put another in place
        os.chmod(root, 0o700)
        os.chown(shared, NOBODY, NOBODY)
        os.chmod(shared, 0o755)
        culprit = str(shared)
    monkeypatch.setenv("CONNECTOR_RUNTIME_SCRATCH", str(root))
    run = RunContext("r1", "App", str(tmp_path / "store"))
    ref = _produce(tmp_path, run)
    # the other user plants the bytes a task would read for this reference
    tag = sf._cache_tag(ref.storage_path, ref.sha256)
    planted = write(os.path.join(rfiles.cache_dir(run), tag, "f.bin"), b"planted " * 500)
    with pytest.raises(sf.PathRefusedError) as info:
        rfiles.before_task(Take(data=ref), run, task_info(run, "consume:x:0"))
    message = str(info.value)
    assert culprit in message and "CONNECTOR_RUNTIME_SCRATCH" in message, message
    if attack != "root-writable-by-others":
        assert "nobody" in message or str(NOBODY) in message
    assert re.search(r"mode 0?o?[0-7]{3}", message), message
    assert info.value.non_retryable
    assert read(planted) == b"planted " * 500  # refused, and nothing of theirs was touched


def test_scratch_cache_and_writer_files_are_created_private(tmp_path, scratch):
    run = RunContext("r1", "App", str(tmp_path / "store"))
    ref = _produce(tmp_path, run)
    got = rfiles.before_task(Take(data=ref), run, task_info(run, "consume:x:0"))
    for folder in (scratch, os.path.join(scratch, "App"), run.scratch, rfiles.cache_dir(run),
                   os.path.dirname(got.data.local_path)):
        assert mode(folder) == 0o700, (folder, oct(mode(folder)))
    assert mode(got.data.local_path) & 0o077 == 0
    made = writer_file(os.path.join(run.scratch, "produce", "attempt-1"))
    assert mode(made.local_path) == 0o600


def test_materialize_refuses_a_cache_folder_writable_by_others(tmp_path):
    store = open_store(str(tmp_path / "store"))
    stored = sf.persist(store, write(tmp_path / "s" / "f.bin", b"x" * 100), "runs/A/r/files/f")
    cache = tmp_path / "cache"
    os.makedirs(cache)
    os.chmod(cache, 0o777)
    with pytest.raises(sf.PathRefusedError, match=re.escape(str(cache))):
        sc.materialize(store, durable(stored), str(cache))


# ---- issue 13 item 5: confinement to the run's own prefix, file modes, the user's files -------


def test_a_run_cannot_upload_another_runs_scratch_files(tmp_path, scratch):
    other = write(os.path.join(scratch, "App", "r2", "produce_abc_0", "attempt-1", "s.bin"),
                  b"r2's data")
    run = RunContext("r1", "App", str(tmp_path / "store"))
    with pytest.raises(sf.PathRefusedError, match="refused to upload") as info:
        rfiles.after_task(Carry(data=FileReference(local_path=other)), run, task_info(run))
    assert run.scratch in str(info.value)
    assert run.store().list("") == []
    own = write(os.path.join(run.scratch, "produce_abc_0", "attempt-1", "mine.bin"), b"mine")
    done = rfiles.after_task(Carry(data=FileReference(local_path=own)), run, task_info(run))
    assert done.data.is_durable and done.data.storage_path.startswith("runs/App/r1/files/")


@pytest.mark.parametrize("owner", ["App/r2", "Other/r1"])
@pytest.mark.parametrize("tier", ["transient", "retained", "persistent"])
def test_a_run_input_naming_another_runs_object_is_refused(owner, tier, tmp_path, scratch):
    app, run_id = owner.split("/")
    other = RunContext(run_id, app, str(tmp_path / "store"))
    store = other.store()
    key = f"{sf.tier_prefix(tier, app, run_id)}/k/a1-00000000/data/f.bin"
    stored = sf.persist(store, write(tmp_path / "s" / "f.bin", b"theirs" * 100), key)
    run = RunContext("r1", "App", str(tmp_path / "store"))
    with pytest.raises(sf.PathRefusedError, match="another run") as info:
        rfiles.before_task(Take(data=durable(stored, StorageTier(tier))), run,
                           task_info(run, "consume:x:0"))
    assert key in str(info.value) and "runs/App/r1/files" in str(info.value)
    assert not os.path.exists(rfiles.cache_dir(run)) or files_under(rfiles.cache_dir(run)) == {}
    sneaky = durable(stored).model_copy(update={
        "storage_path": f"runs/App/r1/files/../../../{key}"})
    with pytest.raises(sf.PathRefusedError, match="refused store key"):
        rfiles.before_task(Take(data=sneaky), run, task_info(run, "consume:x:0"))
    mine = _produce(tmp_path, run)  # the run's own object is fine
    got = rfiles.before_task(Take(data=mine), run, task_info(run, "consume:x:0"))
    assert read(got.data.local_path) == b"genuine " * 500


def test_store_files_and_folders_are_private_by_default(tmp_path, scratch):
    store = open_store(str(tmp_path / "store"))
    store.write("runs/App/r/run.msgpack", b"record")
    assert store.create("runs/App/r/journal/0000000001-0000000000.msgpack", b"seg")
    assert mode(store.path("runs/App/r/run.msgpack")) == 0o600
    assert mode(store.path("runs/App/r/journal/0000000001-0000000000.msgpack")) == 0o600
    for folder in ("runs", "runs/App", "runs/App/r", "runs/App/r/journal"):
        assert mode(store.path(folder)) == 0o700, folder
    run = RunContext("r1", "App", str(tmp_path / "store"))
    made = writer_file(os.path.join(run.scratch, "produce_abc_0", "attempt-1"))
    done = rfiles.after_task(Carry(data=made), run, task_info(run))
    assert mode(store.path(done.data.storage_path)) == 0o400  # durable bytes: read-only


def test_the_operator_can_widen_file_modes_for_a_group(tmp_path, scratch, monkeypatch):
    monkeypatch.setenv("CONNECTOR_RUNTIME_FILE_MODE", "0640")
    store = open_store(str(tmp_path / "store"))
    store.write("runs/App/r/run.msgpack", b"record")
    assert mode(store.path("runs/App/r/run.msgpack")) == 0o640
    assert mode(store.path("runs/App/r")) == 0o750
    src = write(os.path.join(scratch, "App", "r", "k", "attempt-1", "f.bin"), b"f" * 10)
    stored = sf.persist(store, src, "runs/App/r/files/k/a1-0/d/f.bin")
    assert mode(store.path(stored.storage_path)) == 0o440
    for bad in ("0666", "0602", "rw-r--r--", "0o1777"):
        monkeypatch.setenv("CONNECTOR_RUNTIME_FILE_MODE", bad)
        with pytest.raises(StoreError, match="CONNECTOR_RUNTIME_FILE_MODE"):
            open_store(str(tmp_path / "store")).write("runs/App/r/x", b"x")


@pytest.mark.parametrize("where", ["allowed-root", "task-scratch"])
def test_persist_never_changes_a_file_the_runtime_did_not_create(where, tmp_path, scratch,
                                                                 monkeypatch):
    run = RunContext("r1", "App", str(tmp_path / "store"))
    if where == "allowed-root":
        monkeypatch.setenv(rfiles.ALLOWED_ROOTS_VAR, str(tmp_path / "exports"))
        src = write(tmp_path / "exports" / "report.csv", b"a,b\n1,2\n" * 100)
    else:  # the task's own code wrote it, with open()
        src = write(os.path.join(run.scratch, "produce_abc_0", "attempt-1", "r.csv"),
                    b"a,b\n1,2\n" * 100)
    os.chmod(src, 0o664)
    before = os.stat(src)
    done = rfiles.after_task(Carry(data=FileReference(local_path=src, format="csv")), run,
                             task_info(run))
    after = os.stat(src)
    assert (stat.S_IMODE(after.st_mode), after.st_nlink, after.st_ctime_ns) == (
        0o664, 1, before.st_ctime_ns)
    stored = run.store().path(done.data.storage_path)
    assert os.stat(stored).st_ino != after.st_ino and mode(stored) == 0o400
    with open(src, "ab") as fh:  # the user keeps using their file
        fh.write(b"3,4\n")
    got = rfiles.before_task(Take(data=done.data), run, task_info(run, "consume:x:0"))
    assert read(got.data.local_path) == b"a,b\n1,2\n" * 100


def test_writer_files_in_the_run_scratch_are_linked_not_copied(tmp_path, scratch):
    """The 1 GB hand-off stays free: the runtime made the file, in the run's own scratch."""
    run = RunContext("r1", "App", str(tmp_path / "store"))
    made = writer_file(os.path.join(run.scratch, "produce_abc_0", "attempt-1"))
    done = rfiles.after_task(Carry(data=made), run, task_info(run))
    stored = run.store().path(done.data.storage_path)
    assert os.stat(stored).st_ino == os.stat(made.local_path).st_ino
    assert os.path.exists(sf.stamp_path(rfiles.cache_dir(run), done.data.storage_path,
                                        done.data.sha256))


# ---- issue 12 item 12: PERSISTENT leftovers of killed attempts -------------------------------


def _finished_run_with_a_leftover(tmp_path, scratch, status=RunStatus.COMPLETED,
                                  days_ago: float = 40, url: str | None = None):
    """Two attempts of one task uploaded a PERSISTENT output (the real hooks); only the second
    was journaled, as when the driver died before the first one's completion was durable."""
    run = RunContext("r1", "App", url or str(tmp_path / "store"))
    refs = []
    for attempt in (1, 2):
        src = write(os.path.join(run.scratch, "produce_abc_0", f"attempt-{attempt}", "p.bin"),
                    f"attempt {attempt}".encode() * 100)
        out = Carry(data=FileReference(local_path=src, tier=StorageTier.PERSISTENT))
        refs.append(rfiles.after_task(out, run, task_info(run, attempt=attempt)).data)
    store = run.store()
    runs = RunStore(store, "App", "r1")
    kept = Carry(data=refs[1])
    import msgpack

    runs.write_segment(1, 0, [
        {"y": "t", "k": "produce:abc:0", "n": "produce", "a": 2,
         "o": msgpack.packb(kept.model_dump(mode="json"), use_bin_type=True)},
        *rfiles.objects_in("produce:abc:0", kept)])
    finished = time.time() - days_ago * DAY
    runs.write_run(RunRecord(app="App", run_id="r1", app_path="m:C", entrypoint="run",
                             input={}, input_digest="d", status=status, finished_at=finished))
    if store.protocol == "file":
        for key in store.list("persistent"):
            os.utime(store.path(key), (finished, finished))
    return store, refs


def test_gc_lists_and_removes_unreferenced_persistent_objects_of_finished_runs(
        tmp_path, scratch, capsys):
    store, (lost, kept) = _finished_run_with_a_leftover(tmp_path, scratch)
    lost_folder = lost.storage_path.rsplit("/", 2)[0]
    url = str(tmp_path / "store")
    assert cli_main(["gc", "--older-than", "30d", "--store", url]) == 0
    out = capsys.readouterr().out
    assert lost_folder + "/" in out and "unreferenced" in out
    assert kept.storage_path.rsplit("/", 2)[0] not in out
    assert store.exists(lost.storage_path)  # dry run
    assert cli_main(["gc", "--older-than", "30d", "--yes", "--store", url]) == 0
    assert not store.exists(lost.storage_path)
    assert store.exists(kept.storage_path)


def test_gc_finds_persistent_leftovers_on_s3_too(tmp_path, scratch, s3_url):
    from runtime.cli import _gc

    store, (lost, kept) = _finished_run_with_a_leftover(tmp_path, scratch, url=s3_url)
    later = time.time() + 40 * DAY  # S3 keeps its own mtimes: look from 40 days on
    items = _gc.plan(store, 30 * DAY, now=later)
    assert [(i.tier, i.prefix) for i in items] == [
        ("persistent", lost.storage_path.rsplit("/", 2)[0])]
    assert _gc.collect(store, items) == 1
    assert not store.exists(lost.storage_path) and store.exists(kept.storage_path)


@pytest.mark.parametrize("case", ["running", "recent", "corrupt-journal", "only-in-output"])
def test_gc_keeps_persistent_objects_it_cannot_prove_unreferenced(case, tmp_path, scratch,
                                                                 capsys):
    status = RunStatus.RUNNING if case == "running" else RunStatus.COMPLETED
    store, (lost, kept) = _finished_run_with_a_leftover(
        tmp_path, scratch, status=status, days_ago=2 if case == "recent" else 40)
    if case == "corrupt-journal":
        RunStore(store, "App", "r1").write_segment(1, 1, [{"y": "o", "p": "x"}])
        key = RunStore(store, "App", "r1").segment_key(1, 1)
        data = bytearray(store.read(key))
        data[-1] ^= 0xFF
        store.write(key, bytes(data))
    if case == "only-in-output":  # the "o" record of the first attempt was lost, not its "t"
        import msgpack

        RunStore(store, "App", "r1").write_segment(1, 1, [
            {"y": "t", "k": "produce:abc:0", "n": "produce", "a": 1,
             "o": msgpack.packb(Carry(data=lost).model_dump(mode="json"), use_bin_type=True)}])
    assert cli_main(["gc", "--older-than", "30d", "--yes", "--store",
                     str(tmp_path / "store")]) == 0
    capsys.readouterr()
    assert store.exists(lost.storage_path) and store.exists(kept.storage_path)
