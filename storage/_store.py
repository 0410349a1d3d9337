"""The store: one small interface over fsspec, with the atomic primitives the runtime needs.

Backends differ only in three primitives: `write` (atomic replace), `create` (atomic create if
absent) and `replace_if` (compare-and-swap on a version token). Everything else is plain fsspec.

A conditional write whose reply was lost (the connection reset after the server applied it) is
retried by the client, and the retry meets the write itself: 412 on S3, "exists" for a create.
Both conditional primitives therefore read the object back when their condition fails: if it
holds exactly the bytes this call wrote, the write succeeded. Every conditional record the
runtime writes is unique (a lease carries its owner and expiry, a run record its update time,
a journal segment its records), so equal bytes can only be this writer's own.

- local files: temp file + fsync + `os.replace`; create by `os.link` of a complete temp file (fails
  if the target exists); compare-and-swap under an `fcntl.flock` on a sidecar lock file. Every
  access is relative to folder descriptors opened with `O_NOFOLLOW` (see `LocalStore`): a symbolic
  link in the store is never followed, so nothing outside the root is read, listed or deleted.
  Files are created 0600 and folders 0700 (`file_mode`, `$CONNECTOR_RUNTIME_FILE_MODE`).
- memory: fsspec's in-process dict, guarded by a lock.
- S3: `PutObject` is atomic; create sends `If-None-Match: *`; compare-and-swap sends
  `If-Match: <etag>`.

Keys are relative, `/`-separated, and confined to the store's root: `..`, absolute keys and empty
components are refused. Credentials never enter URLs: a URL carrying them is refused, options come
from `storage_options` or the environment, and messages show the URL without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import hashlib
import logging
import os
import random
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import fsspec

from ._errors import StoreError
from ._localfs import (
    DIR_FLAGS,
    FILE_MODE_VAR,
    NEW_FLAGS,
    NO_LINK,
    READ_FLAGS,
    UnsafeEntryError,
    copy_fd_to,
    copy_into,
    dir_mode,
    file_mode,
    readonly_mode,
    same_file,
    try_link,
)
from ._messages import _scrub, _scrubbed, _shown, _userinfo

__all__ = [
    "DEFAULT_STORE_DIR",
    "FILE_MODE_VAR",
    "Store",
    "UnsafeEntryError",
    "dir_mode",
    "file_mode",
    "open_store",
    "readonly_mode",
    "safe_key",
]

DEFAULT_STORE_DIR = ".connector-runtime"


def safe_key(key: str) -> str:
    """`key` checked to stay inside the store root (no `..`, no absolute path, no empty part)."""
    parts = key.split("/")
    if key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key:
        raise StoreError(f"refused store key {key!r}: keys are relative paths inside the store")
    return key


@contextlib.contextmanager
def _translated(store: Store, key: str) -> Iterator[None]:
    """Backend errors become StoreError naming the store and key (the one translation point)."""
    try:
        yield
    except (StoreError, FileNotFoundError, FileExistsError):
        raise
    except Exception as exc:
        raise StoreError(
            f"store {store.url}: {key}: {type(exc).__name__}: {_scrub(str(exc))}"
        ) from exc


class Store:
    """A store rooted at one fsspec URL."""

    protocol = "generic"
    lists_everything = False
    """Whether `list(prefix)` returns every object of the prefix, one at the prefix itself
    included, so that an empty listing means nothing is there (else empty folders may be)."""

    def __init__(
        self, url: str, fs: fsspec.AbstractFileSystem, root: str,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.fs = fs
        self.root = root.rstrip("/")
        self.options = dict(options or {})
        """The fsspec options the store was opened with (kept in memory, never written)."""

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def path(self, key: str) -> str:
        return f"{self.root}/{safe_key(key)}"

    def _key(self, path: str) -> str:
        path = path.rstrip("/")
        prefix = self.root.lstrip("/") + "/"
        stripped = path.lstrip("/")
        return stripped[len(prefix) :] if stripped.startswith(prefix) else stripped

    # -- reads ---------------------------------------------------------------------------

    def read(self, key: str) -> bytes | None:
        with _translated(self, key):
            try:
                return self.fs.cat_file(self.path(key))
            except FileNotFoundError:
                return None

    def read_many(self, keys: list[str]) -> dict[str, bytes]:
        """Read several objects in one call (concurrent on S3); missing ones are left out."""
        if not keys:
            return {}
        wanted = set(keys)
        with _translated(self, keys[0]):
            got = self.fs.cat([self.path(k) for k in keys], on_error="omit")
        found = {self._key(p): data for p, data in got.items() if isinstance(data, bytes)}
        return {k: v for k, v in found.items() if k in wanted}

    def list(self, prefix: str) -> list[str]:
        """Keys under `prefix` (recursively), sorted."""
        base = self.path(prefix.rstrip("/")) if prefix else self.root
        with _translated(self, prefix):
            try:
                found = self.fs.find(base)
            except FileNotFoundError:
                return []
        return sorted(self._key(p) for p in found)

    def list_dirs(self, prefix: str) -> list[str]:
        """Names of the immediate sub-folders of `prefix`."""
        base = self.path(prefix.rstrip("/")) if prefix else self.root
        with _translated(self, prefix):
            try:
                entries = self.fs.ls(base, detail=True)
            except FileNotFoundError:
                return []
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries
                      if e["type"] == "directory")

    def exists(self, key: str) -> bool:
        with _translated(self, key):
            return self.fs.exists(self.path(key))

    def list_info(self, prefix: str) -> list[tuple[str, int, float]]:
        """(key, size, mtime) of each object under `prefix`, sorted (for `gc`)."""
        base = self.path(prefix.rstrip("/")) if prefix else self.root
        with _translated(self, prefix):
            try:
                found = self.fs.find(base, detail=True)
            except FileNotFoundError:
                return []
        return sorted((self._key(p), int(i.get("size") or 0), _mtime(i))
                      for p, i in found.items())

    # -- writes --------------------------------------------------------------------------

    def write(self, key: str, data: bytes) -> None:
        """Replace the object atomically: readers see the old or the new bytes, never a mix."""
        with _translated(self, key):
            self.fs.pipe_file(self.path(key), data)

    def create(self, key: str, data: bytes) -> bool:
        """Create the object if absent. False (nothing written) if another writer's object is
        there; True if it was created, or holds these very bytes (a lost reply's retry)."""
        if self._create(key, data):
            return True
        current = self.read(key)
        return current is not None and current == data

    def read_versioned(self, key: str) -> tuple[bytes, Any] | None:
        """The object's bytes and a version token for `replace_if`, or None if absent."""
        raise NotImplementedError

    def replace_if(self, key: str, data: bytes, token: Any) -> Any | None:
        """Replace the object only if it is still at version `token` (None: only if absent).

        Returns the object's new version token (truthy), or None if it was not at `token`
        (another writer's bytes are there). A write that was applied but whose reply was lost
        counts as written."""
        new = self._replace_if(key, data, token)
        if new is not None:
            return new
        current = self.read_versioned(key)
        if current is not None and current[0] == data:
            return current[1]
        return None

    def _create(self, key: str, data: bytes) -> bool:
        raise NotImplementedError

    def _replace_if(self, key: str, data: bytes, token: Any) -> Any | None:
        raise NotImplementedError

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            with _translated(self, key), contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self.path(key))

    def delete_prefix(self, prefix: str) -> None:
        with _translated(self, prefix), contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path(prefix.rstrip("/")), recursive=True)

    # -- files ---------------------------------------------------------------------------

    def put_file(self, local_path: str, key: str) -> None:
        with _translated(self, key):
            self.fs.put_file(local_path, self.path(key))

    def get_file(self, key: str, local_path: str) -> None:
        with _translated(self, key):
            self.fs.get_file(self.path(key), local_path)


log = logging.getLogger("connector_runtime.store")

class LocalStore(Store):
    """A store in a local folder, confined to its root by file descriptors.

    Every access walks from the root one folder at a time with `O_NOFOLLOW | O_DIRECTORY` and
    acts relative to the last folder's descriptor (`openat`, `linkat`, `renameat`,
    `unlinkat`), so a folder or object replaced by a symbolic link - even between a check and
    the use - can never lead a read, a write, a listing or a delete out of the store. The root
    itself is the operator's choice and may be a link. Listings skip links and special files
    (logged); reads, writes and deletes through one raise `UnsafeEntryError`; deleting a link
    removes the link, never what it names. Files are created `file_mode()` (0600), folders
    `dir_mode()` (0700).

    Rejected: checking `os.path.realpath(path)` against the root before each call (what
    `check_inside` does for scratch paths). It costs the same syscalls and leaves a window
    between the check and the call in which a store writer can swap a folder for a link.
    """

    protocol = "file"

    # -- walking ---------------------------------------------------------------------------

    def _refuse(self, key: str, what: str) -> UnsafeEntryError:
        return UnsafeEntryError(
            f"store {self.url}: {key} {what}: a file:// store never follows links and opens "
            "only regular files inside its root; remove it (restore the real folder or "
            "object if one was replaced)"
        )

    def _child(self, fd: int, name: str, shown: str, create: bool) -> int:
        try:
            try:
                return os.open(name, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, dir_mode(), dir_fd=fd)
                return os.open(name, DIR_FLAGS, dir_fd=fd)
        except NotADirectoryError:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise self._refuse(shown, "is a symbolic link") from None
            raise

    def _open_folder(self, parts: list[str], create: bool = False) -> int:
        """A descriptor of `root/parts...`, no step following a link (FileNotFoundError or
        NotADirectoryError when a step is missing or a file)."""
        if create:
            os.makedirs(self.root, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for i, name in enumerate(parts):
                child = self._child(fd, name, "/".join(parts[: i + 1]), create)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextlib.contextmanager
    def _parent(self, key: str, create: bool = False) -> Iterator[tuple[int, str]]:
        """(descriptor of the key's folder, the key's last name)."""
        parts = safe_key(key).split("/")
        fd = self._open_folder(parts[:-1], create)
        try:
            yield fd, parts[-1]
        finally:
            os.close(fd)

    def _open_file(self, fd: int, name: str, key: str) -> int:
        """A read descriptor of the regular file `name` in folder `fd`."""
        try:
            out = os.open(name, READ_FLAGS, dir_fd=fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._refuse(key, "is a symbolic link") from None
            raise
        st = os.fstat(out)
        if not stat.S_ISREG(st.st_mode):
            os.close(out)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "is a folder", key)
            raise self._refuse(key, "is not a regular file")
        return out

    def open_object(self, key: str) -> int:
        """A read descriptor of the object `key` (FileNotFoundError if absent, UnsafeEntryError
        if a link or special file is in the way). The caller closes it."""
        with _translated(self, key), self._parent(key) as (fd, name):
            return self._open_file(fd, name, key)

    def _walk(self, fd: int, base: str, skipped: list[str]) -> list[tuple[str, os.stat_result]]:
        found = []
        with os.scandir(fd) as it:
            entries = list(it)
        for entry in entries:
            key = f"{base}/{entry.name}" if base else entry.name
            if entry.is_dir(follow_symlinks=False):
                try:
                    child = os.open(entry.name, DIR_FLAGS, dir_fd=fd)
                except (FileNotFoundError, NotADirectoryError):
                    continue  # removed or replaced meanwhile
                try:
                    found += self._walk(child, key, skipped)
                finally:
                    os.close(child)
            elif entry.is_file(follow_symlinks=False):
                found.append((key, entry.stat(follow_symlinks=False)))
            else:
                skipped.append(key)
        return found

    def _listing(self, prefix: str) -> list[tuple[str, os.stat_result]]:
        key = prefix.rstrip("/")
        parts = safe_key(key).split("/") if key else []
        skipped: list[str] = []
        with _translated(self, prefix):
            try:
                fd = self._open_folder(parts)
            except FileNotFoundError:
                return []
            except NotADirectoryError:  # the prefix names an object: itself, as fsspec's find
                with self._parent(key) as (pfd, name):
                    st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                return [(key, st)] if stat.S_ISREG(st.st_mode) else []
            try:
                found = self._walk(fd, key, skipped)
            finally:
                os.close(fd)
        if skipped:
            log.warning("store %s: skipped %d symbolic link(s) or special file(s), never "
                        "followed: %s", self.url, len(skipped), ", ".join(skipped[:10]))
        return [(k, st) for k, st in found if not k.rsplit("/", 1)[-1].startswith(".")]

    # -- reads -----------------------------------------------------------------------------

    def read(self, key: str) -> bytes | None:
        with _translated(self, key):
            try:
                with self._parent(key) as (fd, name):
                    with open(self._open_file(fd, name, key), "rb", closefd=True) as fh:
                        return fh.read()
            except FileNotFoundError:
                return None

    def read_many(self, keys: list[str]) -> dict[str, bytes]:
        """Missing objects, and ones that cannot be read (a link, a folder), are left out, as
        fsspec's `cat(on_error="omit")` does for the other backends: one bad entry must not
        stop a listing of the others."""
        found = {}
        for key in keys:
            try:
                data = self.read(key)
            except StoreError as exc:
                log.warning("%s", exc)
                continue
            if data is not None:
                found[key] = data
        return found

    def list(self, prefix: str) -> list[str]:
        return sorted(k for k, _ in self._listing(prefix))

    def list_info(self, prefix: str) -> list[tuple[str, int, float]]:
        return sorted((k, st.st_size, st.st_mtime) for k, st in self._listing(prefix))

    def list_dirs(self, prefix: str) -> list[str]:
        key = prefix.rstrip("/")
        parts = safe_key(key).split("/") if key else []
        with _translated(self, prefix):
            try:
                fd = self._open_folder(parts)
            except (FileNotFoundError, NotADirectoryError):
                return []
            try:
                with os.scandir(fd) as it:
                    entries = list(it)
            finally:
                os.close(fd)
        links = [e.name for e in entries if e.is_symlink()]
        if links:
            log.warning("store %s: %s: skipped symbolic link(s), never followed: %s",
                        self.url, key or "/", ", ".join(sorted(links)[:10]))
        return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))

    def exists(self, key: str) -> bool:
        with _translated(self, key):
            try:
                with self._parent(key) as (fd, name):
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                return False
            if stat.S_ISLNK(st.st_mode):
                raise self._refuse(key, "is a symbolic link")
            return stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)

    def read_versioned(self, key: str) -> tuple[bytes, Any] | None:
        with _translated(self, key):
            try:
                with self._parent(key) as (fd, name):
                    with open(self._open_file(fd, name, key), "rb", closefd=True) as fh:
                        return fh.read(), _version(os.fstat(fh.fileno()))
            except FileNotFoundError:
                return None

    # -- writes ----------------------------------------------------------------------------

    def _write_in(self, fd: int, name: str, data: bytes, finish: str) -> None:
        tmp = f".tmp-{uuid.uuid4().hex}"
        out = os.open(tmp, NEW_FLAGS, file_mode(), dir_fd=fd)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(out, view):]
                os.fsync(out)
            finally:
                os.close(out)
            if finish == "replace":
                os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
            else:  # link: fails if the name exists, so a complete file appears or nothing
                os.link(tmp, name, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=fd)

    def write(self, key: str, data: bytes) -> None:
        with _translated(self, key), self._parent(key, create=True) as (fd, name):
            self._write_in(fd, name, data, "replace")

    def _create(self, key: str, data: bytes) -> bool:
        with _translated(self, key), self._parent(key, create=True) as (fd, name):
            try:
                self._write_in(fd, name, data, "link")
            except FileExistsError:
                return False
            return True

    def _replace_if(self, key: str, data: bytes, token: Any) -> Any | None:
        with _translated(self, key), self._parent(key, create=True) as (fd, name):
            lock = os.open(f".{name}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                           file_mode(), dir_fd=fd)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if stat.S_ISLNK(st.st_mode):
                        raise self._refuse(key, "is a symbolic link")
                    current = _version(st)
                except FileNotFoundError:
                    current = None
                if current != (tuple(token) if token is not None else None):
                    return None
                self._write_in(fd, name, data, "replace")
                return _version(os.stat(name, dir_fd=fd, follow_symlinks=False))
            finally:
                os.close(lock)

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            with _translated(self, key):
                try:
                    with self._parent(key) as (fd, name):
                        os.unlink(name, dir_fd=fd)  # a link goes, never what it names
                except (FileNotFoundError, NotADirectoryError):
                    pass

    def delete_prefix(self, prefix: str) -> None:
        key = prefix.rstrip("/")
        with _translated(self, prefix):
            try:
                with self._parent(key) as (fd, name):
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        shutil.rmtree(name, dir_fd=fd)  # fd-based: never leaves the tree
                    else:
                        os.unlink(name, dir_fd=fd)
            except (FileNotFoundError, NotADirectoryError):
                pass

    # -- files -----------------------------------------------------------------------------

    def put_file(self, local_path: str, key: str) -> None:
        with open(local_path, "rb") as fh:
            data = fh.read()
        self.write(key, data)

    def get_file(self, key: str, local_path: str) -> None:
        with _translated(self, key):
            fd = self.open_object(key)
            with open(fd, "rb", closefd=True) as src, open(local_path, "wb") as dst:
                shutil.copyfileobj(src, dst, 8 * 2**20)

    def store_file(self, src: str, key: str, link: bool) -> tuple[os.stat_result, bool]:
        """Put the local file `src` at `key`, read-only: hard-linked if `link` (and the
        filesystem allows it), else copied into a file of the store's own. Returns the stored
        file's stat and whether it was linked."""
        with _translated(self, key), self._parent(key, create=True) as (fd, name):
            tmp = f".tmp-{uuid.uuid4().hex}"
            try:
                linked = link and try_link(src, tmp, fd)
                if not linked:
                    copy_into(src, tmp, fd)
                os.chmod(tmp, readonly_mode(), dir_fd=fd)  # a regular file: checked above
                os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
                return os.stat(name, dir_fd=fd, follow_symlinks=False), linked
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=fd)

    def fetch_object(self, key: str, dst: str) -> tuple[os.stat_result, bool]:
        """Hard-link (else copy) the object `key` to the new local path `dst`. Returns the
        object's stat when it was opened and whether `dst` is a link to it."""
        with _translated(self, key), self._parent(key) as (fd, name):
            obj = self._open_file(fd, name, key)
            try:
                st = os.fstat(obj)
                linked = True
                try:
                    os.link(name, dst, src_dir_fd=fd, follow_symlinks=False)
                except OSError as exc:
                    if exc.errno not in NO_LINK:
                        raise
                    linked = False
                if linked and not same_file(os.lstat(dst), st):  # replaced meanwhile
                    os.unlink(dst)
                    linked = False
                if not linked:
                    copy_fd_to(obj, dst)
                return st, linked
            finally:
                os.close(obj)


def _version(st: os.stat_result) -> tuple[int, int, int]:
    """A local file's version token: a replace makes a new inode, a write moves mtime."""
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class MemoryStore(Store):
    protocol = "memory"
    _lock = threading.Lock()

    def _create(self, key: str, data: bytes) -> bool:
        with self._lock:
            if self.fs.exists(self.path(key)):
                return False
            self.fs.pipe_file(self.path(key), data)
            return True

    def read_versioned(self, key: str) -> tuple[bytes, Any] | None:
        data = self.read(key)
        return None if data is None else (data, (len(data), hashlib.blake2b(data).digest()))

    def _replace_if(self, key: str, data: bytes, token: Any) -> Any | None:
        with self._lock:
            current = self.read_versioned(key)
            if (current[1] if current else None) != (tuple(token) if token else None):
                return None
            self.fs.pipe_file(self.path(key), data)
            return (len(data), hashlib.blake2b(data).digest())


def _transient(exc: BaseException) -> bool:
    """Whether a store error is worth trying again at once: throttling (`SlowDown`, 503 - s3fs
    raises EBUSY), a server error, a connection or read failure."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.EBUSY, errno.ECONNRESET,
                                                          errno.ETIMEDOUT, errno.EPIPE):
            return True
        text = f"{type(seen).__name__} {seen}"
        if any(mark in text for mark in _TRANSIENT_MARKS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


_TRANSIENT_MARKS = ("SlowDown", "reduce your request rate", "Service Unavailable",
                    "InternalError", "ServiceUnavailable", "RequestTimeout",
                    "ConnectionClosedError", "EndpointConnectionError", "ReadTimeoutError",
                    "ServerDisconnectedError", "ClientOSError", "IncompleteRead")

S3_RETRY_TRIES = 10
"""Attempts of one store request on S3 (the runtime's own retry; botocore's is off)."""
S3_RETRY_BASE = 0.01
S3_RETRY_CAP = 1.0


def _retrying(method: Any) -> Any:
    """Retry an S3Store method on transient errors: full jitter over 10 ms doubling, capped at
    1 s, 10 attempts.

    botocore's own retries sleep up to a second before the first retry of a `SlowDown` (its
    throttling backoff starts at 1 s; `adaptive` adds a client-side rate limit on top): with
    10% of requests throttled and 2% of connections reset, a run took 2.4x as long as without
    faults (legacy mode, the default), 3.0x (standard) and 4.5x (adaptive). The store's
    requests are few and small (a segment per group commit, a lease renewal every few
    seconds), so retrying them promptly costs S3 nothing that matters: see
    benchmarks/bench_faults.py for the figures. Conditional writes stay safe to repeat: a
    retry that meets its own earlier write reads it back (`Store.replace_if`)."""

    @functools.wraps(method)
    def retried(self: S3Store, *args: Any, **kwargs: Any) -> Any:
        for attempt in range(S3_RETRY_TRIES):
            try:
                return method(self, *args, **kwargs)
            except (StoreError, OSError) as exc:
                if attempt == S3_RETRY_TRIES - 1 or not _transient(exc) or \
                        isinstance(exc, FileNotFoundError):
                    raise
                time.sleep(random.uniform(0, min(S3_RETRY_CAP, S3_RETRY_BASE * 2**attempt)))
        raise AssertionError("unreachable")

    return retried


class S3Store(Store):
    """Reads, existence checks and listings call S3 directly: one request each. Through
    fsspec, a missing object cost a HEAD and a listing (is it a folder?), and an empty prefix
    a listing, a HEAD and another listing: 23 requests made an empty run on moto, 14 now."""

    protocol = "s3"
    lists_everything = True

    write = _retrying(Store.write)
    delete_prefix = _retrying(Store.delete_prefix)

    @_retrying
    def read(self, key: str) -> bytes | None:
        got = self._get(key)
        return None if got is None else got[0]

    @_retrying
    def exists(self, key: str) -> bool:
        """Whether an object is at `key` (a HEAD; a folder of objects is not one)."""
        bucket, obj = self._bucket_key(key)
        with _translated(self, key):
            try:
                self.fs.call_s3("head_object", Bucket=bucket, Key=obj)
            except FileNotFoundError:
                return False
            return True

    def read_many(self, keys: list[str]) -> dict[str, bytes]:
        """Concurrent reads; a key whose read failed for a transient reason is read again on
        its own (fsspec's `cat` would leave it out, and a journal segment left out is a
        segment whose tasks run again)."""
        if not keys:
            return {}
        from fsspec.asyn import sync

        async def one(key: str) -> bytes | None:
            bucket, obj = self._bucket_key(key)
            async with limit:
                try:  # one GET (fsspec's cat made a HEAD first)
                    resp = await self.fs._call_s3("get_object", Bucket=bucket, Key=obj)
                except FileNotFoundError:
                    return None
                async with resp["Body"] as body:
                    return bytes(await body.read())

        async def every() -> list[Any]:
            return await asyncio.gather(*(one(k) for k in keys), return_exceptions=True)

        limit = asyncio.Semaphore(32)
        with _translated(self, keys[0]):
            got = sync(self.fs.loop, every)
        found: dict[str, bytes] = {}
        for key, data in zip(keys, got, strict=True):
            if isinstance(data, BaseException):
                data = self.read(key)  # on its own, with the store's retries
            if data is not None:
                found[key] = data
        return found

    def _bucket_key(self, key: str) -> tuple[str, str]:
        bucket, _, rest = self.path(key).lstrip("/").partition("/")
        return bucket, rest

    def _create(self, key: str, data: bytes) -> bool:
        return self._put(key, data, IfNoneMatch="*") is not None

    @_retrying
    def read_versioned(self, key: str) -> tuple[bytes, Any] | None:
        return self._get(key)

    def _get(self, key: str) -> tuple[bytes, Any] | None:
        bucket, obj = self._bucket_key(key)
        with _translated(self, key):
            try:
                resp = self.fs.call_s3("get_object", Bucket=bucket, Key=obj)
            except FileNotFoundError:
                return None
            body = resp["Body"]
            data = _sync_read(self.fs, body)
            return data, resp["ETag"]

    @_retrying
    def delete(self, keys: list[str]) -> None:
        """Many keys at once: DeleteObjects, 1,000 keys a request (a compaction deletes the
        segments it replaced; one DELETE each cost 0.4 s of a 300-task run on moto)."""
        if len(keys) < 2 or any(c in k for k in keys for c in "*?["):  # no glob expansion
            return super().delete(keys)
        with _translated(self, keys[0]), contextlib.suppress(FileNotFoundError):
            self.fs.rm([self.path(k) for k in keys])

    def _replace_if(self, key: str, data: bytes, token: Any) -> Any | None:
        if token is None:
            return self._put(key, data, IfNoneMatch="*")
        return self._put(key, data, IfMatch=token)

    @_retrying
    def _put(self, key: str, data: bytes, **condition: str) -> str | None:
        """A conditional PutObject: the new ETag, or None when the condition failed."""
        bucket, obj = self._bucket_key(key)
        with _translated(self, key):
            try:
                resp = self.fs.call_s3("put_object", Bucket=bucket, Key=obj, Body=data,
                                       **condition)
            except (FileNotFoundError, FileExistsError, OSError) as exc:
                if isinstance(exc, FileExistsError) or _precondition_failed(exc):
                    return None
                raise
            return resp["ETag"]

    @_retrying
    def list(self, prefix: str) -> list[str]:
        """Keys under `prefix` (and an object at `prefix` itself), sorted: ListObjectsV2 pages
        of 1,000 keys."""
        path = self.path(prefix.rstrip("/")) if prefix else self.root
        bucket, _, base = path.lstrip("/").partition("/")
        found: list[str] = []
        token: str | None = None
        with _translated(self, prefix):
            while True:
                kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": base}
                if token:
                    kwargs["ContinuationToken"] = token
                try:
                    resp = self.fs.call_s3("list_objects_v2", **kwargs)
                except FileNotFoundError:  # no such bucket
                    return []
                for item in resp.get("Contents", ()):
                    name = item["Key"]
                    if not base or name == base or name.startswith(base + "/"):
                        found.append(self._key(f"{bucket}/{name}"))
                token = resp.get("NextContinuationToken") if resp.get("IsTruncated") else None
                if not token:
                    break
        return sorted(found)

    @_retrying
    def list_dirs(self, prefix: str) -> list[str]:
        self.fs.invalidate_cache()
        return super().list_dirs(prefix)


def _mtime(info: dict[str, Any]) -> float:
    for field in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(field)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value).timestamp()
            except ValueError:
                continue
    return 0.0


def _precondition_failed(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        text = f"{type(seen).__name__} {seen}"
        if "PreconditionFailed" in text or "412" in text or "ConditionalRequestConflict" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _sync_read(fs: Any, body: Any) -> bytes:
    """Read an aiobotocore streaming body from s3fs's sync wrapper."""
    from fsspec.asyn import sync

    async def _read() -> bytes:
        async with body:
            return await body.read()

    return sync(fs.loop, _read)


_BACKENDS: dict[str, type[Store]] = {"file": LocalStore, "memory": MemoryStore, "s3": S3Store}

_AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
            "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CA_BUNDLE")
_s3_filesystems: dict[str, Any] = {}
_s3_lock = threading.Lock()


def _s3_filesystem(opts: dict[str, Any]) -> Any:
    """An S3 filesystem for `opts`, reused within this process while the credentials it would
    resolve stay the same.

    Making one (an aiobotocore client: credential chain, endpoint and service model) costs
    about 0.2 s, which every `run_app(store="s3://...")` paid. fsspec's own instance cache is
    off on purpose: it would keep a client with stale credentials after a user fixed them
    (the "fix a credential, resume" case). Here the key is a digest of the options, the AWS_*
    environment and the AWS config and credentials files' size and mtime: any change gives a
    new client. Only the digest is kept as a key; secrets are never stored in plain text.
    """
    h = hashlib.blake2b(digest_size=20)
    h.update(repr(sorted(opts.items())).encode())
    for name in _AWS_ENV:
        h.update(f"\0{name}={os.environ.get(name, '')}".encode())
    for path in (os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials",
                 os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config"):
        try:
            st = os.stat(os.path.expanduser(path))
            h.update(f"\0{st.st_mtime_ns}:{st.st_size}".encode())
        except OSError:
            h.update(b"\0-")
    key = h.hexdigest()
    with _s3_lock:
        fs = _s3_filesystems.get(key)
        if fs is None:
            if len(_s3_filesystems) >= 16:
                _s3_filesystems.clear()
            fs = _s3_filesystems[key] = fsspec.filesystem("s3", **opts)
    return fs


def open_store(url: str | None = None, options: dict[str, Any] | None = None) -> Store:
    """Open the store at `url` (default: `.connector-runtime` under the working directory).

    `options` are fsspec storage options (endpoint, region, profile, ...); secrets belong in the
    environment or the AWS configuration, never in the URL. No message shows any part of a
    URL's user-info (`_shown`).
    """
    if url is None:
        url = os.environ.get("CONNECTOR_RUNTIME_STORE") or os.path.join(
            os.getcwd(), DEFAULT_STORE_DIR
        )
    if _userinfo(url):
        raise StoreError(
            f"store URL {_shown(url)} carries credentials (an '@' before the bucket or host, "
            "or in a bucket path): remove them from the URL and set them in the environment "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE) or pass --store-option"
        )
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise StoreError(f"store URL {_shown(url)} is not a URL or folder: {exc}") from None
    protocol = parts.scheme or "file"
    if protocol in ("s3a", "s3n"):
        protocol = "s3"
    if protocol not in _BACKENDS or "::" in url:
        raise StoreError(
            f"store URL {_shown(url)}: protocol {protocol!r} is not supported. A store needs a "
            "real create-if-absent and compare-and-swap (for leases and fencing), which these "
            "backends have: a folder or file:// (one host), s3:// (S3 and S3-compatible "
            "servers), memory:// (tests)"
        )
    opts = dict(options or {})
    if protocol == "s3":
        opts.setdefault("use_listings_cache", False)
        opts.setdefault("skip_instance_cache", True)
        config = dict(opts.get("config_kwargs") or {})
        config.setdefault("retries", {"mode": "standard", "total_max_attempts": 1})
        opts["config_kwargs"] = config  # the store retries itself (`_retrying`)
    if protocol == "file":
        root = os.path.abspath(parts.path if parts.scheme else url)
        url = f"file://{root}"
    else:
        root = (parts.netloc + parts.path) if parts.netloc else parts.path
        root = root if protocol != "memory" else "/" + root.lstrip("/")
    cls = _BACKENDS[protocol]
    user_options = dict(options or {})
    try:
        fs = _s3_filesystem(opts) if protocol == "s3" else fsspec.filesystem(protocol, **opts)
    except (ImportError, ValueError, TypeError) as exc:
        raise StoreError(f"cannot open store {_shown(url)}: "
                         f"{_scrubbed(str(exc), opts)}") from exc
    if protocol == "s3":
        fs.retries = 1  # s3fs's own loop would sleep 0.1 s and more per SlowDown
    if protocol == "file":
        os.makedirs(root, exist_ok=True)
    return cls(url, fs, root, user_options)
