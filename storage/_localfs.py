"""Local filesystem primitives of the `file://` store and the node cache: the modes the
runtime creates files with, the no-follow open flags, and in-kernel copies.

Modes. Files the runtime creates (store records and objects, scratch output, cached copies,
stamps) are 0600 and folders 0700, unless the operator widens reads with
$CONNECTOR_RUNTIME_FILE_MODE (0600 to 0644: a group that reads the store, say). A write bit for
group or others is never allowed: whoever may write there may plant bytes. Durable objects and
cached copies drop the owner's write bit too (0400), so a task writing to its input path fails
instead of changing shared bytes (root ignores it; the cache's stamps catch that case).
"""

from __future__ import annotations

import errno
import os
import stat

from ._errors import StoreError

__all__ = [
    "DIR_FLAGS",
    "FILE_MODE_VAR",
    "NEW_FLAGS",
    "NO_LINK",
    "READ_FLAGS",
    "UnsafeEntryError",
    "copy_fd_to",
    "copy_into",
    "dir_mode",
    "file_mode",
    "readonly_mode",
    "same_file",
    "try_link",
]

FILE_MODE_VAR = "CONNECTOR_RUNTIME_FILE_MODE"


def file_mode() -> int:
    """Mode of the files the runtime creates (file:// store records and objects, scratch files):
    0600 unless the operator widens it with $CONNECTOR_RUNTIME_FILE_MODE (read bits only, e.g.
    0640 for a group that reads the store). Folders get `dir_mode()`, durable objects
    `readonly_mode()`. The umask still applies on top."""
    text = os.environ.get(FILE_MODE_VAR, "").strip()
    if not text:
        return 0o600
    try:
        value = int(text, 8)
    except ValueError:
        value = -1
    if value < 0 or value & ~0o644 or value & 0o600 != 0o600:
        raise StoreError(
            f"{FILE_MODE_VAR}={text!r} is not allowed: give an octal mode between 0600 and "
            "0644 (the owner reads and writes, group and others may only read), e.g. 0640"
        )
    return value


def dir_mode() -> int:
    """Folders: the file mode with search (x) wherever it has read: 0700 by default."""
    mode = file_mode()
    return mode | ((mode & 0o444) >> 2)


def readonly_mode() -> int:
    """Durable objects: the file mode without write bits (0400 by default)."""
    return file_mode() & ~0o222


# ---- flags and errors ----------------------------------------------------------------------

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO never blocks
NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
NO_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES)


class UnsafeEntryError(StoreError):
    """A file:// store met a symbolic link, FIFO, socket or device where a folder or an object
    should be. It is never followed or opened: the store's objects are regular files inside
    its root."""

    non_retryable = True


# ---- links and copies ----------------------------------------------------------------------

def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) and stat.S_ISREG(a.st_mode)


def try_link(src: str, tmp: str, fd: int) -> bool:
    try:
        os.link(src, tmp, dst_dir_fd=fd, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in NO_LINK:
            return False
        raise
    if not stat.S_ISREG(os.stat(tmp, dir_fd=fd, follow_symlinks=False).st_mode):
        os.unlink(tmp, dir_fd=fd)  # src was a link (or special): copy what it is instead
        return False
    return True


def copy_into(src: str, tmp: str, fd: int) -> None:
    source = os.open(src, READ_FLAGS)
    try:
        if not stat.S_ISREG(os.fstat(source).st_mode):
            raise StoreError(f"cannot store {src!r}: not a regular file")
        out = os.open(tmp, NEW_FLAGS, file_mode(), dir_fd=fd)
        try:
            _copy_between(source, out)
        finally:
            os.close(out)
    finally:
        os.close(source)


def copy_fd_to(source: int, dst: str) -> None:
    out = os.open(dst, NEW_FLAGS, file_mode())
    try:
        _copy_between(source, out)
    finally:
        os.close(out)


def _copy_between(source: int, out: int) -> None:
    """Copy all of `source` to `out` in the kernel (copy_file_range, else sendfile)."""
    offset = 0
    while True:
        try:
            n = os.copy_file_range(source, out, 2**30, offset)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            n = os.sendfile(out, source, offset, 2**30)
        if n == 0:
            return
        offset += n
