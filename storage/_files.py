"""FileReference objects in the store: persist, materialize, delete. Knows nothing of Ray.

Layout (the tier decides the prefix; see docs/files.md)::

    runs/{app}/{run_id}/files/{name}      TRANSIENT   deleted by cleanup_storage
    retained/{app}/{run_id}/{name}        RETAINED    deleted by `connector-runtime gc`
    persistent/{app}/{run_id}/{name}      PERSISTENT  never deleted by the runtime

Integrity. A file object's `sha256` is the SHA-256 of its bytes. A directory reference stores
its files under `{storage_path}/{relative path}` plus a manifest object
`{storage_path}.manifest.json`: canonical JSON `{"version": 1, "files": [[rel, size, sha256],
...]}` sorted by relative path; the reference's `sha256` is the SHA-256 of the manifest bytes.
So one hash pins the whole tree, and each file is verified on its own when it is downloaded.

Persist. On a local (`file://`) store the source is hard-linked into the store (a temp link,
then `os.replace`), so a 1 GB result costs no copy; across filesystems it is copied. Objects are
made read-only (0o444): an author writing to the path after returning it would otherwise change
the durable bytes under the recorded hash. Files are not fsynced: a local store survives process
crashes, not power loss, for file objects; a lost write is then caught by the hash check
(`StorageIntegrityError`), never returned as wrong data. On S3 the upload goes straight to the
final key (a PUT or a completed multipart upload is atomic) with 16 MiB parts, 4 in flight, and
botocore's adaptive retries (throttling and 5xx) with 10 attempts unless the store options say
otherwise. After upload the stored size is compared with the local size.

Materialize. Once per object per cache directory: a lock file (`fcntl.flock`) serializes
workers of one node, the object is downloaded (hard-linked on a local store) into a temp
folder, hashed, and renamed into place; a later call finds it and returns at once. A mismatch
raises `StorageIntegrityError` (non-retryable) and leaves nothing in the cache.

Verified stamps (one SHA-256 pass per hand-off on one node, not two). SHA-256 runs at about
1.5 GB/s a core here, so a second full pass on materialize costs 0.7 s per GB. When this node
persisted a file to a `file://` store by hard link, and the file's SHA-256 was computed in this
process from those very bytes (`note_hashed`, called by the `storage.arrow` writers, or the hash
`persist` computes), `persist` leaves a stamp in the run's node cache: the inode (device, number),
size, mtime and ctime of the stored file. `materialize` on this node trusts an object whose store
file still has that stamp and skips the re-hash; any write to the file moves its mtime and ctime
(a chmod or a new link its ctime), so a changed or flipped byte is still caught. Other nodes, S3,
directories, copies and stores without a stamp are always hash-checked. Caveat: on a kernel
without fine-grained timestamps, a write landing in the same clock tick as the stat that took
the stamp, and keeping the size, would go unnoticed (Linux 6.13+ gives a file whose timestamps
were just read a fine-grained one on its next change).

Rejected: reading Parquet/Arrow straight from S3 with pyarrow's S3 filesystem. It skips the
hash check (or needs a second full read to do it), and a dataset read by several tasks on one
node would be fetched each time; the local cache reads at disk speed after one download.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import threading
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from application_sdk.contracts import FileReference, StorageTier
from application_sdk.errors import NonRetryableError, StorageIntegrityError

from ._errors import StoreError
from ._store import Store, _s3_filesystem, safe_key

__all__ = [
    "MANIFEST_SUFFIX",
    "PathRefusedError",
    "StoredObject",
    "check_inside",
    "delete_local",
    "delete_store_prefix",
    "file_sha256",
    "materialize",
    "note_hashed",
    "persist",
    "stamp_path",
    "tier_prefix",
    "transfer_fs",
]

log = logging.getLogger("connector_runtime.files")

MANIFEST_SUFFIX = ".manifest.json"
CHUNK = 8 * 2**20
S3_PART_SIZE = 16 * 2**20
"""Multipart part size: files of 32 MiB and more go multipart; 4 parts in flight = 64 MiB RAM."""
S3_CONCURRENCY = 4
S3_RETRIES = {"max_attempts": 10, "mode": "adaptive"}


class PathRefusedError(NonRetryableError, ValueError):
    """A local path or store key lies outside what the runtime may upload or delete."""


@dataclass(frozen=True)
class StoredObject:
    """What persisting a file or directory produced."""

    storage_path: str
    """Key of the object (a file) or of the prefix (a directory) in the store."""
    size_bytes: int
    """Bytes of the file, or of all files of the directory."""
    sha256: str
    """SHA-256 of the file, or of the directory's manifest."""
    file_count: int


# ---- layout ----------------------------------------------------------------------------------


def tier_prefix(tier: StorageTier | str, app: str, run_id: str) -> str:
    """The store prefix under which a run's objects of `tier` live."""
    tier = StorageTier(tier)
    if tier is StorageTier.TRANSIENT:
        return f"runs/{app}/{run_id}/files"
    if tier is StorageTier.RETAINED:
        return f"retained/{app}/{run_id}"
    return f"persistent/{app}/{run_id}"


# ---- hashing ---------------------------------------------------------------------------------


def file_sha256(path: str) -> tuple[int, str]:
    """(size, sha256 hex) of a local file, read in 8 MiB chunks (hashlib releases the GIL)."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    size = 0
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
            size += n
    return size, h.hexdigest()


_hashed: dict[tuple[int, int], tuple[tuple[int, ...], str]] = {}
_hashed_lock = threading.Lock()


def _stamp(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What changes when a file's bytes may have: any write moves mtime and ctime (and ctime
    cannot be set back by a user); a chmod or a new hard link moves ctime."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def note_hashed(path: str, size: int, sha: str) -> None:
    """Remember that this process computed `sha` over the `size` bytes now at `path` (a writer
    that hashed while writing calls this right after closing the file)."""
    stamp = _stamp(os.stat(path))
    if stamp[2] == size:
        with _hashed_lock:
            if len(_hashed) >= 10_000:  # files written and never persisted: forget them
                _hashed.clear()
            _hashed[stamp[:2]] = (stamp, sha)


def _hashed_here(st: os.stat_result) -> str | None:
    """The sha256 this process noted for the file with stat `st`, if it is unchanged since."""
    stamp = _stamp(st)
    with _hashed_lock:
        noted = _hashed.pop(stamp[:2], None)
    if noted is not None and noted[0] == stamp:
        return noted[1]
    return None


def stamp_path(cache_dir: str, key: str, sha: str) -> str:
    """Where the verified stamp of object `key` with hash `sha` lives in a node cache."""
    return os.path.join(cache_dir, _cache_tag(key, sha) + ".stamp")


def _cache_tag(key: str, sha: str | None) -> str:
    return hashlib.blake2b(f"{key}\0{sha}".encode(), digest_size=12).hexdigest()


def _write_stamp(path: str, stamp: tuple[int, ...]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "w") as fh:
        json.dump(list(stamp), fh)
    os.replace(tmp, path)


def _read_stamp(path: str) -> tuple[int, ...] | None:
    try:
        with open(path) as fh:
            value = json.load(fh)
    except (OSError, ValueError):
        return None
    if isinstance(value, list) and len(value) == 5 and all(isinstance(v, int) for v in value):
        return tuple(value)
    return None


def _walk_files(root: str) -> list[str]:
    """Relative paths (with `/`) of the regular files under `root`, sorted; symlinks refused."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in files:
            full = os.path.join(folder, name)
            if os.path.islink(full):
                raise PathRefusedError(
                    f"directory reference {root!r} holds a symlink {full!r}: copy the file in "
                    "instead (a link could point outside the allowed roots)"
                )
            found.append(os.path.relpath(full, root).replace(os.sep, "/"))
    return sorted(found)


def _manifest_bytes(entries: Sequence[tuple[str, int, str]]) -> bytes:
    body = {"version": 1, "files": [list(e) for e in sorted(entries)]}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _hash_many(paths: list[str]) -> list[tuple[int, str]]:
    if len(paths) < 2:
        return [file_sha256(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(4, len(paths))) as pool:
        return list(pool.map(file_sha256, paths))


# ---- S3 transfers ----------------------------------------------------------------------------

def transfer_fs(store: Store) -> Any:
    """The filesystem for large transfers: the store's own, except on S3.

    On S3 a second `S3FileSystem` is opened from the store's options with defaults for big
    objects: `config_kwargs={"retries": {"max_attempts": 10, "mode": "adaptive"}}` (botocore
    retries throttling, 5xx and connection errors with backoff), `default_block_size` 16 MiB,
    `max_concurrency` 4. Options given to the store win over these defaults. It is reused like
    the store's own client (`_store._s3_filesystem`: same options and credentials sources).
    """
    if store.protocol != "s3":
        return store.fs
    opts = dict(store.options)
    config = dict(opts.get("config_kwargs") or {})
    config.setdefault("retries", dict(S3_RETRIES))
    opts["config_kwargs"] = config
    opts.setdefault("default_block_size", S3_PART_SIZE)
    opts.setdefault("max_concurrency", S3_CONCURRENCY)
    opts.setdefault("skip_instance_cache", True)
    opts.setdefault("use_listings_cache", False)
    fs = _s3_filesystem(opts)
    fs.retries = max(getattr(fs, "retries", 5), 10)  # s3fs's own SlowDown/IO retries
    return fs


# ---- persist ---------------------------------------------------------------------------------


def persist(
    store: Store,
    local_path: str,
    key: str,
    *,
    known_size: int | None = None,
    known_sha256: str | None = None,
    stamp_dir: str | None = None,
) -> StoredObject:
    """Put the file or directory at `local_path` into the store at `key`.

    `known_size`/`known_sha256` (from a writer that hashed while writing) spare a re-read when
    the file still has that size; a wrong value cannot become wrong data, because readers
    verify the hash unless a stamp vouches for the bytes (and a stamp is only left for a hash
    this process computed itself). `stamp_dir`: the run's cache folder on this node, where a
    verified stamp is left for `materialize` (file:// stores, hard-linked files only).
    """
    safe_key(key)
    if os.path.isdir(local_path):
        return _persist_dir(store, local_path, key)
    if not os.path.isfile(local_path):
        raise FileNotFoundError(f"cannot persist {local_path!r}: no such file or directory")
    before = os.stat(local_path)
    size = before.st_size
    sha = _hashed_here(before)  # hashed in this process from these very bytes
    verified = sha is not None and (known_sha256 is None or known_sha256 == sha)
    if not verified:
        if known_sha256 and known_size == size:
            sha = known_sha256
        else:
            size, sha = file_sha256(local_path)
            verified = _stamp(os.stat(local_path)) == _stamp(before)  # unchanged while hashed
    assert sha is not None
    _put(store, local_path, key, size)
    if verified and stamp_dir is not None and store.protocol == "file":
        stored = os.stat(store.path(key))
        # the same inode with the same bytes (our link and chmod moved only its ctime): the
        # stamp is taken now, after them, and any later change to the file moves it again
        if _stamp(stored)[:4] == _stamp(before)[:4]:
            _write_stamp(stamp_path(stamp_dir, key, sha), _stamp(stored))
    return StoredObject(key, size, sha, 1)


def _persist_dir(store: Store, root: str, key: str) -> StoredObject:
    rels = _walk_files(root)
    paths = [os.path.join(root, *r.split("/")) for r in rels]
    for rel in rels:
        safe_key(f"{key}/{rel}")
    hashes = _hash_many(paths)
    entries = [(rel, size, sha) for rel, (size, sha) in zip(rels, hashes, strict=True)]
    manifest = _manifest_bytes(entries)
    if store.protocol in ("file", "memory") or len(paths) < 2:
        for rel, path, (size, _) in zip(rels, paths, hashes, strict=True):
            _put(store, path, f"{key}/{rel}", size)
    else:
        _put_many(store, [(p, f"{key}/{r}", s) for r, p, (s, _) in zip(rels, paths, hashes,
                                                                      strict=True)])
    store.write(key + MANIFEST_SUFFIX, manifest)
    total = sum(size for _, size, _ in entries)
    return StoredObject(key, total, hashlib.sha256(manifest).hexdigest(), len(entries))


def _put(store: Store, src: str, key: str, size: int) -> None:
    if store.protocol == "file":
        _link_into(src, store.path(key))
        stored = os.path.getsize(store.path(key))
    else:
        fs = transfer_fs(store)
        target = store.path(key)
        with _translated(store, key):
            if store.protocol == "s3":
                fs.put_file(src, target, chunksize=S3_PART_SIZE, max_concurrency=S3_CONCURRENCY)
            else:
                fs.put_file(src, target)
            stored = fs.info(target)["size"]
    if stored != size:
        raise StoreError(
            f"store {store.url}: {key}: {stored} bytes stored, {size} expected (upload cut "
            "short); the attempt fails and is retried"
        )


def _put_many(store: Store, items: list[tuple[str, str, int]]) -> None:
    fs = transfer_fs(store)
    with _translated(store, items[0][1]):
        fs.put([src for src, _, _ in items], [store.path(k) for _, k, _ in items],
               chunksize=S3_PART_SIZE, max_concurrency=S3_CONCURRENCY)
        for _, key, size in items:
            stored = fs.info(store.path(key))["size"]
            if stored != size:
                raise StoreError(f"store {store.url}: {key}: {stored} bytes stored, {size} "
                                 "expected (upload cut short)")


def _link_into(src: str, dst: str) -> None:
    """Hard-link (else copy) `src` to `dst`, atomically replacing `dst`; made read-only."""
    folder = os.path.dirname(dst)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}")
    try:
        try:
            os.link(src, tmp)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP,
                                 errno.EACCES):
                raise
            shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o444)
        os.replace(tmp, dst)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def _translated(store: Store, key: str):
    try:
        yield
    except (StoreError, FileNotFoundError, FileExistsError, StorageIntegrityError):
        raise
    except Exception as exc:
        from ._store import _scrub

        raise StoreError(
            f"store {store.url}: {key}: {type(exc).__name__}: {_scrub(str(exc))}"
        ) from exc


# ---- materialize -----------------------------------------------------------------------------


def materialize(store: Store, ref: FileReference, cache_dir: str) -> str:
    """A verified local copy of durable `ref` under `cache_dir`; its path.

    Downloads once per object and cache directory; a hash mismatch or a missing object raises
    `StorageIntegrityError`.
    """
    if not ref.is_durable or not ref.storage_path:
        raise ValueError("materialize needs a durable reference (is_durable and storage_path)")
    key = safe_key(ref.storage_path.rstrip("/"))
    tag = _cache_tag(key, ref.sha256)
    entry = os.path.join(cache_dir, tag)
    name = key.rsplit("/", 1)[-1]
    final = os.path.join(entry, name)
    if os.path.exists(final):
        return final
    os.makedirs(cache_dir, exist_ok=True)
    with open(entry + ".lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        if os.path.exists(final):  # another worker of this node fetched it meanwhile
            return final
        tmp = os.path.join(cache_dir, f".tmp-{uuid.uuid4().hex}")
        os.makedirs(tmp)
        try:
            if _is_dir_ref(store, ref, key):
                _fetch_dir(store, ref, key, os.path.join(tmp, name))
            else:
                _fetch_file(store, ref, key, os.path.join(tmp, name), entry + ".stamp")
            os.rename(tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _is_dir_ref(store: Store, ref: FileReference, key: str) -> bool:
    # Each reference has a folder of its own in the store, so a manifest next to the key can
    # only be this reference's (a one-file directory has file_count 1 too).
    return ref.file_count != 1 or store.exists(key + MANIFEST_SUFFIX)


def _missing(store: Store, key: str) -> StorageIntegrityError:
    return StorageIntegrityError(
        f"object {key} is missing from store {store.url}: it was deleted (cleanup_storage, gc "
        "or by hand) while a run still referred to it; rerun the task that produced it"
    )


def _fetch_file(store: Store, ref: FileReference, key: str, dst: str,
                stamp_file: str | None = None) -> None:
    if store.protocol == "file":
        src = store.path(key)
        try:
            st = os.stat(src)
        except FileNotFoundError:
            raise _missing(store, key) from None
        if not stat.S_ISREG(st.st_mode):
            raise _missing(store, key)
        try:
            os.link(src, dst)
            linked = True
        except OSError:
            shutil.copyfile(src, dst)
            linked = False
        stamp = _read_stamp(stamp_file) if stamp_file and ref.sha256 else None
        if linked and stamp is not None and stamp == _stamp(st) and \
                os.stat(dst).st_ino == st.st_ino and st.st_size == ref.size_bytes:
            return  # this node hashed these very bytes, and the file is unchanged since
    else:
        fs = transfer_fs(store)
        try:
            with _translated(store, key):
                if store.protocol == "s3":
                    fs.get_file(store.path(key), dst, chunksize=S3_PART_SIZE,
                                max_concurrency=S3_CONCURRENCY)
                else:
                    fs.get_file(store.path(key), dst)
        except FileNotFoundError:
            raise _missing(store, key) from None
    _verify(store, key, dst, ref.size_bytes, ref.sha256)


def _verify(store: Store, key: str, path: str, size: int | None, sha: str | None) -> None:
    got_size, got_sha = file_sha256(path)
    if sha is None:
        log.warning("reference to %s carries no sha256: not verified", key)
        return
    if got_sha != sha or (size is not None and got_size != size):
        raise StorageIntegrityError(
            f"object {key} in store {store.url} does not match its reference: sha256 "
            f"{got_sha[:16]}... ({got_size} bytes), expected {sha[:16]}... ({size} bytes). "
            "The stored object was changed or corrupted; it is not used"
        )


def _fetch_dir(store: Store, ref: FileReference, key: str, dst: str) -> None:
    manifest = store.read(key + MANIFEST_SUFFIX)
    if manifest is None:
        raise _missing(store, key + MANIFEST_SUFFIX)
    if ref.sha256 is not None and hashlib.sha256(manifest).hexdigest() != ref.sha256:
        raise StorageIntegrityError(
            f"manifest of directory {key} in store {store.url} does not match its reference: "
            "the stored manifest was changed or corrupted; it is not used"
        )
    try:
        entries = json.loads(manifest)["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageIntegrityError(f"manifest of {key} in store {store.url} is unreadable") \
            from exc
    items = []
    for rel, size, sha in entries:
        safe_key(f"{key}/{rel}")
        local = os.path.join(dst, *rel.split("/"))
        os.makedirs(os.path.dirname(local), exist_ok=True)
        items.append((f"{key}/{rel}", local, size, sha))
    os.makedirs(dst, exist_ok=True)
    one = FileReference  # per-file verification reuses _fetch_file

    def fetch(item: tuple[str, str, int, str]) -> None:
        k, local, size, sha = item
        _fetch_file(store, one(storage_path=k, is_durable=True, size_bytes=size, sha256=sha),
                    k, local)

    if len(items) < 2:
        for item in items:
            fetch(item)
    else:
        with ThreadPoolExecutor(max_workers=min(4, len(items))) as pool:
            list(pool.map(fetch, items))


# ---- delete ----------------------------------------------------------------------------------


def check_inside(path: str, roots: Iterable[str], action: str = "delete") -> str:
    """`path` resolved (symlinks and `..` followed), if strictly inside one of `roots`.

    Refuses relative paths, paths that escape by `..` or a symlink, and a root itself, with
    `PathRefusedError` naming the path and the allowed roots.
    """
    roots = [r for r in roots if r]
    shown = ", ".join(roots) or "(none)"
    if not os.path.isabs(path):
        raise PathRefusedError(
            f"refused to {action} {path!r}: not an absolute path; allowed roots: {shown}"
        )
    real = os.path.realpath(path)
    for root in roots:
        real_root = os.path.realpath(root)
        if real.startswith(real_root.rstrip(os.sep) + os.sep):
            return real
    raise PathRefusedError(
        f"refused to {action} {path!r} (resolves to {real!r}): it is outside the allowed "
        f"roots {shown}"
    )


def delete_local(path: str, roots: Iterable[str]) -> int:
    """Delete a file or directory tree strictly inside `roots`; the number of files deleted."""
    real = check_inside(path, roots)
    if os.path.isdir(real):
        count = sum(len(files) for _, _, files in os.walk(real))
        shutil.rmtree(real, ignore_errors=True)
        return count
    try:
        os.unlink(real)
    except FileNotFoundError:
        return 0
    return 1


def delete_store_prefix(store: Store, prefix: str, allowed: Iterable[str]) -> int:
    """Delete every object under `prefix` if it is inside one of the `allowed` prefixes."""
    allowed = [a.rstrip("/") for a in allowed]
    try:
        key = safe_key(prefix.rstrip("/"))
    except StoreError as exc:
        raise PathRefusedError(f"refused to delete {prefix!r} from store {store.url}: {exc}; "
                               f"allowed prefixes: {', '.join(allowed)}") from None
    if not any(key == a or key.startswith(a + "/") for a in allowed):
        raise PathRefusedError(
            f"refused to delete {prefix!r} from store {store.url}: outside the allowed "
            f"prefixes {', '.join(allowed)}"
        )
    keys = store.list(key)
    if keys or store.exists(key):
        store.delete_prefix(key)
    return len(keys)
