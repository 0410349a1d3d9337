"""The node cache: materialize durable FileReferences, and keep every cached copy honest.

`materialize(store, ref, cache_dir)` returns a local copy of `ref` under `cache_dir` whose
bytes match the reference's `sha256`. Once per object per cache directory the object is
fetched (a hard link on a `file://` store on the same filesystem, else a copy) into a temp
folder, verified and renamed into place under a lock file (`fcntl.flock`) that serializes the
workers of one node. A mismatch raises `StorageIntegrityError` (non-retryable) and leaves
nothing in the cache.

Every hit is checked too. Next to each entry a *verified stamp* (`{tag}.verified`) records, per
file, the size and SHA-256 it was verified against and the inode, size, mtime and ctime it had
right after: a hit whose files (and, for a directory, whose set of files) still match their
stamps is used without re-reading; anything else is re-hashed against the reference, and an
entry that no longer matches is evicted and fetched again from the store. This matters most on
a `file://` store, where the cached file is the store object's inode: a byte flipped in the
store flips the cache too, moves the inode's ctime (which no user can set back), fails the
stamp, and the re-fetch then fails the hash - the task sees `StorageIntegrityError`, never the
bad bytes. On S3 the cached copy is a file of its own: a change to it is caught the same way
and the object is downloaded again.

Refused outright, before any byte reaches the cache: a durable reference without `sha256` (the
runtime always records one, so its absence means an edited record); a store object that is not
a regular file inside the store (`LocalStore` never follows a link; `PathRefusedError`); a
cache folder another user owns or may write to (`ensure_private_dir`).

Rejected: trusting a hit because its folder exists (what an earlier version did): the cache
then returned whatever the folder held - a planted file, or a store object changed after the
first read - unchecked. Re-hashing on every hit: correct, but 0.7 s per GB per read, for what
a stat comparison already proves on Linux (ctime moves on every write, chmod and link).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import uuid
from typing import Any

from application_sdk.contracts import FileReference
from application_sdk.errors import StorageIntegrityError

from ._files import (
    MANIFEST_SUFFIX,
    S3_CONCURRENCY,
    S3_PART_SIZE,
    PathRefusedError,
    _cache_tag,
    _manifest_bytes,
    _parallel,
    _stamp,
    _translated,
    ensure_private_dir,
    file_sha256,
    transfer_fs,
)
from ._localfs import UnsafeEntryError, file_mode, readonly_mode
from ._store import LocalStore, Store, safe_key

__all__ = ["materialize"]

log = logging.getLogger("connector_runtime.files")

Verified = list[list[Any]]
"""A verified stamp's files: [rel, size, sha256, dev, ino, size, mtime_ns, ctime_ns] each
(`rel` is "" for a file reference)."""


def materialize(store: Store, ref: FileReference, cache_dir: str) -> str:
    """A verified local copy of durable `ref` under `cache_dir`; its path.

    Fetches once per object and cache directory and checks the copy on every call after; a
    hash mismatch, a missing object or a reference without `sha256` raises
    `StorageIntegrityError`, an object that is not a regular file in the store
    `PathRefusedError`.
    """
    if not ref.is_durable or not ref.storage_path:
        raise ValueError("materialize needs a durable reference (is_durable and storage_path)")
    key = safe_key(ref.storage_path.rstrip("/"))
    if not ref.sha256:
        raise StorageIntegrityError(
            f"reference to {key} in store {store.url} carries no sha256: the runtime records "
            "one for every object it stores, so the record was edited or made by hand; it is "
            "refused unverified. Rerun the task that produced it"
        )
    ensure_private_dir(cache_dir, what="cache folder")
    entry = os.path.join(cache_dir, _cache_tag(key, ref.sha256))
    final = os.path.join(entry, key.rsplit("/", 1)[-1])
    if _hit(entry, final, ref):
        return final
    try:
        with _locked(entry + ".lock"):
            if os.path.lexists(entry):  # fetched by another worker meanwhile, or changed
                if _hit(entry, final, ref) or _recheck(entry, final, ref):
                    return final
                log.warning("cached copy of %s in %s no longer matches its reference: "
                            "fetching it again", key, cache_dir)
                _evict(cache_dir, entry)
            _fetch(store, ref, key, cache_dir, entry)
    except UnsafeEntryError as exc:
        raise PathRefusedError(f"refused to materialize {key}: {exc}") from None
    return final


@contextlib.contextmanager
def _locked(path: str):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, file_mode())
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _fetch(store: Store, ref: FileReference, key: str, cache_dir: str, entry: str) -> None:
    name = key.rsplit("/", 1)[-1]
    tmp = os.path.join(cache_dir, f".tmp-{uuid.uuid4().hex}")
    os.mkdir(tmp, 0o700)
    try:
        if _is_dir_ref(store, ref, key):
            files = _fetch_dir(store, ref, key, os.path.join(tmp, name))
        else:
            st = _fetch_file(store, key, os.path.join(tmp, name), ref.size_bytes, ref.sha256,
                             entry + ".stamp")
            files = [["", st.st_size, ref.sha256, *_stamp(st)]]
        _write_json(entry + ".verified", {"v": 1, "sha256": ref.sha256, "files": files})
        os.rename(tmp, entry)  # moves the folder: its files keep their inodes and ctimes
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _evict(cache_dir: str, entry: str) -> None:
    """Move a bad entry out of the way (a reader that opened it keeps its file), then delete."""
    aside = os.path.join(cache_dir, f".tmp-evicted-{uuid.uuid4().hex}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(entry + ".verified")
    with contextlib.suppress(FileNotFoundError):
        os.rename(entry, aside)
    shutil.rmtree(aside, ignore_errors=True)


# ---- checking an entry ------------------------------------------------------------------------


def _write_json(path: str, value: Any) -> None:
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, file_mode())
    with open(fd, "w") as fh:
        json.dump(value, fh)
    os.replace(tmp, path)


def _read_json(path: str) -> Any:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _read_stamp(path: str) -> tuple[int, ...] | None:
    value = _read_json(path)
    if isinstance(value, list) and len(value) == 5 and all(isinstance(v, int) for v in value):
        return tuple(value)
    return None


def _verified_files(entry: str, ref: FileReference) -> Verified | None:
    """The entry's verified stamp, if well formed and vouching for exactly `ref`."""
    value = _read_json(entry + ".verified")
    if not isinstance(value, dict) or value.get("sha256") != ref.sha256:
        return None
    files = value.get("files")
    if not isinstance(files, list) or not files or not all(
            isinstance(f, list) and len(f) == 8 and isinstance(f[0], str)
            and isinstance(f[2], str) and all(isinstance(v, int) for v in (f[1], *f[3:]))
            for f in files):
        return None
    if files[0][0] == "":  # a file: its own hash is the reference's
        return files if len(files) == 1 and files[0][2] == ref.sha256 else None
    pinned = hashlib.sha256(_manifest_bytes([(f[0], f[1], f[2]) for f in files])).hexdigest()
    return files if pinned == ref.sha256 else None


def _present(final: str, files: Verified) -> dict[str, os.stat_result] | None:
    """lstat of each file of the entry by relative path; None if anything but the stamped
    regular files is there (a link, a special file, a file added or missing)."""
    try:
        if files[0][0] == "":
            st = os.lstat(final)
            return {"": st} if stat.S_ISREG(st.st_mode) else None
        found = {}
        for folder, dirs, names in os.walk(final):
            for name in dirs + names:
                full = os.path.join(folder, name)
                st = os.lstat(full)
                if stat.S_ISLNK(st.st_mode) or not (stat.S_ISDIR(st.st_mode)
                                                    or stat.S_ISREG(st.st_mode)):
                    return None
                if stat.S_ISREG(st.st_mode):
                    found[os.path.relpath(full, final).replace(os.sep, "/")] = st
    except FileNotFoundError:
        return None
    return found if set(found) == {f[0] for f in files} else None


def _hit(entry: str, final: str, ref: FileReference) -> bool:
    """Whether the entry is there and every file still has the stamp it was verified with."""
    if not os.path.lexists(final):
        return False
    files = _verified_files(entry, ref)
    present = _present(final, files) if files else None
    return present is not None and all(
        tuple(f[3:]) == _stamp(present[f[0]]) for f in files)  # type: ignore[index]


def _recheck(entry: str, final: str, ref: FileReference) -> bool:
    """Re-hash an entry whose stamps moved (a new link, a chmod - or a changed byte); True and
    stamped again if every file still has its verified hash."""
    files = _verified_files(entry, ref)
    present = _present(final, files) if files else None
    if not files or present is None:
        return False

    def check(f: list[Any]) -> list[Any] | None:
        path = os.path.join(final, *f[0].split("/")) if f[0] else final
        before = os.lstat(path)
        size, sha = file_sha256(path)
        after = os.lstat(path)
        if (size, sha) != (f[1], f[2]) or _stamp(after) != _stamp(before):
            return None
        return [*f[:3], *_stamp(after)]

    fresh = _parallel(check, files)
    if any(f is None for f in fresh):
        return False
    _write_json(entry + ".verified", {"v": 1, "sha256": ref.sha256, "files": fresh})
    return True


# ---- fetching ---------------------------------------------------------------------------------


def _is_dir_ref(store: Store, ref: FileReference, key: str) -> bool:
    # Each reference has a folder of its own in the store, so a manifest next to the key can
    # only be this reference's (a one-file directory has file_count 1 too).
    return ref.file_count != 1 or store.exists(key + MANIFEST_SUFFIX)


def _missing(store: Store, key: str) -> StorageIntegrityError:
    return StorageIntegrityError(
        f"object {key} is missing from store {store.url}: it was deleted (cleanup_storage, gc "
        "or by hand) while a run still referred to it; rerun the task that produced it"
    )


def _fetch_file(store: Store, key: str, dst: str, size: int | None, sha: str,
                stamp_file: str | None = None) -> os.stat_result:
    """Fetch object `key` to `dst` and verify it; the stat `dst` was verified with."""
    linked = False
    if isinstance(store, LocalStore):
        try:
            st, linked = store.fetch_object(key, dst)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise _missing(store, key) from None
        if linked:
            noted = _read_stamp(stamp_file) if stamp_file else None
            now = os.lstat(dst)
            if noted is not None and noted == _stamp(st) and st.st_size == size and \
                    _stamp(now)[:4] == noted[:4]:
                return now  # this node hashed these very bytes, and the file is unchanged since
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
    if not linked:
        os.chmod(dst, readonly_mode())  # our copy; a linked one is the store's read-only inode
    before = os.lstat(dst)
    _verify(store, key, dst, size, sha)
    after = os.lstat(dst)
    if _stamp(after) != _stamp(before):
        raise StorageIntegrityError(f"object {key} in store {store.url} changed while it was "
                                    "verified; it is not used")
    return after


def _verify(store: Store, key: str, path: str, size: int | None, sha: str) -> None:
    got_size, got_sha = file_sha256(path)
    if got_sha != sha or (size is not None and got_size != size):
        raise StorageIntegrityError(
            f"object {key} in store {store.url} does not match its reference: sha256 "
            f"{got_sha[:16]}... ({got_size} bytes), expected {sha[:16]}... ({size} bytes). "
            "The stored object was changed or corrupted; it is not used"
        )


def _fetch_dir(store: Store, ref: FileReference, key: str, dst: str) -> Verified:
    manifest = store.read(key + MANIFEST_SUFFIX)
    if manifest is None:
        raise _missing(store, key + MANIFEST_SUFFIX)
    if hashlib.sha256(manifest).hexdigest() != ref.sha256:
        raise StorageIntegrityError(
            f"manifest of directory {key} in store {store.url} does not match its reference: "
            "the stored manifest was changed or corrupted; it is not used"
        )
    try:
        entries = [(str(rel), int(size), str(sha))
                   for rel, size, sha in json.loads(manifest)["files"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageIntegrityError(f"manifest of {key} in store {store.url} is unreadable") \
            from exc
    items = []
    os.mkdir(dst, 0o700)
    for rel, size, sha in entries:
        safe_key(f"{key}/{rel}")
        local = os.path.join(dst, *rel.split("/"))
        os.makedirs(os.path.dirname(local), mode=0o700, exist_ok=True)
        items.append((rel, local, size, sha))

    def fetch(item: tuple[str, str, int, str]) -> list[Any]:
        rel, local, size, sha = item
        st = _fetch_file(store, f"{key}/{rel}", local, size, sha)
        return [rel, size, sha, *_stamp(st)]

    return _parallel(fetch, items)
