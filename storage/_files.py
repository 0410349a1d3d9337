"""FileReference objects in the store: layout, hashing, persist, delete. Knows nothing of Ray.

Layout (the tier decides the prefix; see docs/files.md)::

    runs/{app}/{run_id}/files/{name}      TRANSIENT   deleted by cleanup_storage
    retained/{app}/{run_id}/{name}        RETAINED    deleted by `connector-runtime gc`
    persistent/{app}/{run_id}/{name}      PERSISTENT  never deleted by the runtime (but `gc`
                                                      removes what no record points at)

Integrity. A file object's `sha256` is the SHA-256 of its bytes. A directory reference stores
its files under `{storage_path}/{relative path}` plus a manifest object
`{storage_path}.manifest.json`: canonical JSON `{"version": 1, "files": [[rel, size, sha256],
...]}` sorted by relative path; the reference's `sha256` is the SHA-256 of the manifest bytes.
So one hash pins the whole tree, and each file is verified on its own when it is materialized
(`storage._cache`, which also keeps the node cache honest on every hit).

Persist. On a local (`file://`) store a file the runtime's own writers made (`storage.arrow`:
hashed while written, `note_hashed`) in a folder the runtime owns (`owned=True`: the run's
scratch) is hard-linked into the store and made read-only, so a 1 GB result costs no copy. Any
other file - one the task wrote itself, or one under an operator's allowed root - is copied into
a new file of the store's own, and the source is never changed (no chmod, no shared inode):
the runtime does not change a file it did not create. The stored copy is hashed, so the hash is
of the very bytes stored. Files are not fsynced: a local store survives process crashes, not
power loss, for file objects; a lost write is then caught by the hash check
(`StorageIntegrityError`), never returned as wrong data. On S3 the upload goes straight to the
final key (a PUT or a completed multipart upload is atomic) with 16 MiB parts, 4 in flight, and
botocore's adaptive retries (throttling and 5xx) with 10 attempts unless the store options say
otherwise. After upload the stored size is compared with the local size.

Verified stamps (one SHA-256 pass per hand-off on one node, not two). SHA-256 runs at about
1.5 GB/s a core here, so a second full pass on materialize costs 0.7 s per GB. When this
process persisted a file to a `file://` store and the file's SHA-256 was computed in this
process from those very bytes (`note_hashed`, or the hash of the stored copy), `persist` leaves
a stamp in the run's node cache: the inode (device, number), size, mtime and ctime of the
stored file. `materialize` on this node trusts an object whose store file still has that stamp
and skips the re-hash; any write to the file moves its mtime and ctime (a chmod or a new link
its ctime), so a changed or flipped byte is still caught. Caveat: on a kernel without
fine-grained timestamps, a write landing in the same clock tick as the stat that took the
stamp, and keeping the size, would go unnoticed (Linux 6.13+ gives a file whose timestamps were
just read a fine-grained one on its next change).

Rejected: hard-linking every source file into the store (what an earlier version did, then
`chmod 0444`). It changed the mode of a user's own file, and a store object sharing an inode
with a file its author may keep writing has no durable bytes of its own; copying costs one
in-kernel copy (`copy_file_range`) for files the runtime's writers did not make. Reading
Parquet/Arrow straight from S3 with pyarrow's S3 filesystem: it skips the hash check (or needs
a second full read to do it), and a dataset read by several tasks on one node would be fetched
each time; the local cache reads at disk speed after one download.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pwd
import shutil
import stat
import threading
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from application_sdk.contracts import StorageTier
from application_sdk.errors import NonRetryableError, StorageIntegrityError

from ._errors import StoreError
from ._localfs import UnsafeEntryError, dir_mode, file_mode
from ._store import LocalStore, Store, _s3_filesystem, safe_key

__all__ = [
    "MANIFEST_SUFFIX",
    "PathRefusedError",
    "StoredObject",
    "check_inside",
    "delete_local",
    "delete_store_prefix",
    "ensure_private_dir",
    "fd_sha256",
    "file_sha256",
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


def fd_sha256(fd: int) -> tuple[int, str]:
    """(size, sha256 hex) of an open file from its start, read in 8 MiB chunks (hashlib
    releases the GIL). The descriptor stays open."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    size = 0
    while n := os.preadv(fd, [buf], size):
        h.update(view[:n])
        size += n
    return size, h.hexdigest()


def file_sha256(path: str) -> tuple[int, str]:
    """(size, sha256 hex) of a local file."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fd_sha256(fd)
    finally:
        os.close(fd)


_hashed: dict[tuple[int, int], tuple[tuple[int, ...], str]] = {}
_hashed_lock = threading.Lock()


def _stamp(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What changes when a file's bytes may have: any write moves mtime and ctime (and ctime
    cannot be set back by a user); a chmod or a new hard link moves ctime."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def note_hashed(path: str, size: int, sha: str) -> None:
    """Remember that this process computed `sha` over the `size` bytes now at `path` (a writer
    that hashed while writing calls this right after closing the file). It also marks the
    file as one the runtime made: `persist` may hard-link such a file instead of copying it."""
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


def _walk_files(root: str) -> list[str]:
    """Relative paths (with `/`) of the regular files under `root`, sorted; links refused."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in dirs + files:
            full = os.path.join(folder, name)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                raise PathRefusedError(
                    f"directory reference {root!r} holds a symlink {full!r}: copy the file in "
                    "instead (a link could point outside the allowed roots)"
                )
            if name in files:
                if not stat.S_ISREG(st.st_mode):
                    raise PathRefusedError(f"directory reference {root!r} holds {full!r}, "
                                           "which is not a regular file")
                found.append(os.path.relpath(full, root).replace(os.sep, "/"))
    return sorted(found)


def _manifest_bytes(entries: Sequence[tuple[str, int, str]]) -> bytes:
    body = {"version": 1, "files": [list(e) for e in sorted(entries)]}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _parallel(fn: Any, items: list[Any]) -> list[Any]:
    if len(items) < 2:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(4, len(items))) as pool:
        return list(pool.map(fn, items))


def _hash_many(paths: list[str]) -> list[tuple[int, str]]:
    return _parallel(file_sha256, paths)


def _stored_sha256(store: LocalStore, key: str) -> tuple[int, str, os.stat_result]:
    """(size, sha256, stat) of a stored object, read through the store (no link followed)."""
    fd = store.open_object(key)
    try:
        before = os.fstat(fd)
        size, sha = fd_sha256(fd)
        if _stamp(os.fstat(fd)) != _stamp(before):
            raise StoreError(f"store {store.url}: {key} changed while it was hashed")
        return size, sha, before
    finally:
        os.close(fd)


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
    owned: bool = False,
) -> StoredObject:
    """Put the file or directory at `local_path` into the store at `key`.

    `known_size`/`known_sha256` (from a writer that hashed while writing) spare a re-read of
    the source on S3 when the file still has that size; a wrong value cannot become wrong
    data, because readers verify the hash unless a stamp vouches for the bytes (and a stamp is
    only left for a hash this process computed itself). `stamp_dir`: the run's cache folder on
    this node, where a verified stamp is left for `materialize` (file:// stores). `owned`: the
    source lies in a folder the runtime owns and deletes (the run's scratch), so a file the
    runtime's writers made there may be hard-linked into a file:// store and made read-only;
    anything else is copied and left as it was.
    """
    safe_key(key)
    if os.path.isdir(local_path):
        return _persist_dir(store, local_path, key, owned)
    if not os.path.isfile(local_path):
        raise FileNotFoundError(f"cannot persist {local_path!r}: no such file or directory")
    before = os.stat(local_path)
    noted = _hashed_here(before)  # hashed in this process from these very bytes
    if isinstance(store, LocalStore):
        size, sha, stored = _store_local(store, local_path, key, before, noted, owned)
        if stamp_dir is not None:
            _write_stamp(stamp_path(stamp_dir, key, sha), _stamp(stored))
        return StoredObject(key, size, sha, 1)
    size = before.st_size
    sha = noted if known_sha256 is None or known_sha256 == noted else None
    if sha is None:
        if known_sha256 and known_size == size:
            sha = known_sha256
        else:
            size, sha = file_sha256(local_path)
    _put(store, local_path, key, size)
    return StoredObject(key, size, sha, 1)


def _store_local(store: LocalStore, src: str, key: str, before: os.stat_result,
                 noted: str | None, owned: bool) -> tuple[int, str, os.stat_result]:
    """(size, sha256, stat) of the stored file; the hash is always one this process computed
    over exactly the stored bytes, so the stat can vouch for them (a stamp)."""
    stored, linked = store.store_file(src, key, link=owned and noted is not None)
    # a link to the inode the writer hashed, unchanged since (our link and chmod moved only
    # its ctime): the writer's hash is the stored bytes' hash
    if linked and noted is not None and _stamp(stored)[:4] == _stamp(before)[:4]:
        return stored.st_size, noted, stored
    return _stored_sha256(store, key)  # a copy of our own (or a changed link): hash it


def _persist_dir(store: Store, root: str, key: str, owned: bool) -> StoredObject:
    rels = _walk_files(root)
    paths = [os.path.join(root, *r.split("/")) for r in rels]
    for rel in rels:
        safe_key(f"{key}/{rel}")
    if isinstance(store, LocalStore):

        def put(item: tuple[str, str]) -> tuple[int, str]:
            path, k = item
            before = os.stat(path)
            size, sha, _ = _store_local(store, path, k, before, _hashed_here(before), owned)
            return size, sha

        hashes = _parallel(put, [(p, f"{key}/{r}") for r, p in zip(rels, paths, strict=True)])
    else:
        hashes = _hash_many(paths)
        items = [(p, f"{key}/{r}", s) for r, p, (s, _) in zip(rels, paths, hashes, strict=True)]
        if store.protocol == "memory" or len(items) < 2:
            for path, k, size in items:
                _put(store, path, k, size)
        else:
            _put_many(store, items)
    entries = [(rel, size, sha) for rel, (size, sha) in zip(rels, hashes, strict=True)]
    manifest = _manifest_bytes(entries)
    store.write(key + MANIFEST_SUFFIX, manifest)
    total = sum(size for _, size, _ in entries)
    return StoredObject(key, total, hashlib.sha256(manifest).hexdigest(), len(entries))


def _put(store: Store, src: str, key: str, size: int) -> None:
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


def _write_stamp(path: str, stamp: tuple[int, ...]) -> None:
    folder = ensure_private_dir(os.path.dirname(path), what="cache folder")
    tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, file_mode())
    with open(fd, "w") as fh:
        json.dump(list(stamp), fh)
    os.replace(tmp, path)


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


# ---- private local folders -------------------------------------------------------------------

_private_ok: dict[str, tuple[int, int, int, int]] = {}


def ensure_private_dir(path: str, *, what: str = "folder", fix: str = "",
                       tighten: bool = False) -> str:
    """`path` (absolute) as a folder that only this user - or root - can change: created with
    `dir_mode()` (0700), missing parents too. An existing one, or a folder above it, that
    another user owns or may write to is refused with `PathRefusedError` naming the folder,
    its owner and mode, and the fix. Folders above may be writable by others only with the
    sticky bit (as /tmp is), which keeps others from renaming what is not theirs. `tighten`:
    the folder is the runtime's own default, so a group/other read bit left by an older
    version is removed instead of kept. Checked once per process while the folder stays the
    same inode (one lstat afterwards).
    """
    path = os.path.abspath(path)
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        if _private_ok.get(path) == (st.st_dev, st.st_ino, st.st_uid, st.st_mode):
            return path
    _make_dirs(path)
    _check_chain(path, what, fix or "remove it, or use a folder of your own with mode 0700")
    st = os.lstat(path)
    if tighten and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & ~dir_mode():
        os.chmod(path, dir_mode())
        st = os.lstat(path)
    _private_ok[path] = (st.st_dev, st.st_ino, st.st_uid, st.st_mode)
    return path


def _make_dirs(path: str) -> None:
    """Create `path` and its missing parents, each with `dir_mode()` (os.makedirs gives the
    parents the umask's mode)."""
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, dir_mode())


def _owner(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _check_chain(path: str, what: str, fix: str) -> None:
    """Refuse `path` unless it and every folder it is reached through (its real path's, and
    the links' on the way) are safe from other users."""
    me = os.geteuid()
    lexical = []
    probe = path
    while True:
        lexical.append(probe)
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    for step in lexical:  # a link on the way could be replaced by its owner
        st = os.lstat(step)
        if stat.S_ISLNK(st.st_mode) and st.st_uid not in (me, 0):
            raise _unsafe(step, path, what, fix, st, "is a symbolic link owned by "
                          f"{_owner(st.st_uid)}")
    real = os.path.realpath(path)
    st = os.lstat(real)
    if not stat.S_ISDIR(st.st_mode):
        raise PathRefusedError(f"{what} {path!r} is not a folder: {fix}")
    if st.st_uid not in (me, 0) or (st.st_uid == 0 and me != 0):
        raise _unsafe(real, path, what, fix, st, f"is owned by {_owner(st.st_uid)}, not by "
                      f"this user ({_owner(me)})")
    if st.st_mode & 0o022:
        raise _unsafe(real, path, what, fix, st, "is writable by other users")
    folder = os.path.dirname(real)
    while True:
        st = os.lstat(folder)
        if st.st_uid not in (me, 0):
            raise _unsafe(folder, path, what, fix, st, f"is owned by {_owner(st.st_uid)}, who "
                          f"could replace the {what} inside it")
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise _unsafe(folder, path, what, fix, st, "is writable by other users (and not "
                          f"sticky), who could replace the {what} inside it")
        parent = os.path.dirname(folder)
        if parent == folder:
            return
        folder = parent


def _unsafe(culprit: str, path: str, what: str, fix: str, st: os.stat_result,
            why: str) -> PathRefusedError:
    where = f"{what} {culprit!r}" if culprit == path else f"folder {culprit!r} (above the " \
        f"{what} {path!r})"
    return PathRefusedError(
        f"refused to use the {what} {path!r}: {where} {why} (owner {_owner(st.st_uid)}, mode "
        f"{stat.S_IMODE(st.st_mode):04o}); another local user could plant or read files there. "
        f"Fix: {fix}"
    )


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
    try:
        keys = store.list(key)
    except UnsafeEntryError as exc:
        # the prefix itself was replaced by a link: remove the link (it is the store's entry),
        # never what it names; a link further up raises here, and nothing is deleted
        store.delete_prefix(key)
        log.warning("%s: removed the link, nothing it points at", exc)
        return 0
    if keys or (not store.lists_everything and store.exists(key)):
        store.delete_prefix(key)
    return len(keys)


def __getattr__(name: str) -> Any:
    """`materialize` lived here before the node cache got a module of its own."""
    if name == "materialize":
        from ._cache import materialize

        return materialize
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
