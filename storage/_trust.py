"""What the operator vouches for: the record key, and files that only the operator can change.

The record key authenticates records (`storage._codec`): with a key set, every record written
carries an HMAC-SHA256 of its bytes and of the store key it is written under, and a record
without a valid one is refused. The key comes from the environment of the process, never from
the store: `CONNECTOR_RUNTIME_RECORD_KEY` (the key itself) or `CONNECTOR_RUNTIME_RECORD_KEY_FILE`
(a file holding it), at least 16 bytes (`secrets.token_hex(32)` makes a good one). A key file,
like the apps file `resume` reads, must be the operator's own: a regular file owned by this
user or root, not writable by group or others (a key file not readable by others either),
reached only through folders and links that no other user can change.

Rejected designs:
- A key kept in the store, or derived from the store's credentials: whoever can write the
  store has both.
- Public-key signatures (Ed25519), which would let readers verify without being able to sign:
  every process that verifies records here (a driver, `resume`, the service) also writes them,
  so it would hold the signing key anyway, and it would need a new dependency.
- Reading the key once at import: a test, or an operator's shell, sets it later; the lookup is
  one environment read (plus one `stat` for a key file) per record, cheap next to the store
  request that moves the record.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from dataclasses import dataclass, field

from ._errors import RecordKeyError

__all__ = ["KEY_FILE_VAR", "KEY_VAR", "RecordKey", "operator_file", "record_key"]

KEY_VAR = "CONNECTOR_RUNTIME_RECORD_KEY"
KEY_FILE_VAR = "CONNECTOR_RUNTIME_RECORD_KEY_FILE"
MIN_KEY_BYTES = 16
_MAX_FILE_BYTES = 1024 * 1024
_DOMAIN = b"connector-runtime record v2\0"


@dataclass(frozen=True)
class RecordKey:
    """The operator's record key, as the codec uses it."""

    secret: bytes = field(repr=False)
    source: str
    """Where it came from, for messages: the variable's name, or the key file's path."""

    @property
    def key_id(self) -> bytes:
        """4 bytes naming the key (a digest of it), written into every record it signs, so a
        record signed with another key is reported as such."""
        return hashlib.blake2b(self.secret, digest_size=4, person=b"crt-key-id").digest()

    def mac(self, where: str, payload: bytes | memoryview) -> bytes:
        """HMAC-SHA256 of a record's payload and of the store key it is written under (a
        record copied to another place in the store does not verify there)."""
        h = hmac.new(self.secret, _DOMAIN, hashlib.sha256)
        h.update(where.encode("utf-8", "surrogateescape") + b"\0")
        h.update(payload)
        return h.digest()


_cache: dict[tuple[object, ...], RecordKey] = {}


def record_key() -> RecordKey | None:
    """The record key of this process, or None when none is configured.

    RecordKeyError when the configuration is unusable (both variables set, a key too short, a
    key file that is missing, unsafe or empty): a key that was asked for is never silently
    dropped."""
    text = os.environ.get(KEY_VAR)
    path = os.environ.get(KEY_FILE_VAR)
    if text and path:
        raise RecordKeyError(f"both {KEY_VAR} and {KEY_FILE_VAR} are set: set one of them")
    if text:
        cached = _cache.get(("env", text))
        if cached is None:
            cached = _cache[("env", text)] = RecordKey(_checked(text.encode(), KEY_VAR), KEY_VAR)
        return cached
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError as exc:
        raise RecordKeyError(f"{KEY_FILE_VAR}={path!r}: cannot read the key file: "
                             f"{exc.strerror}") from exc
    tag = ("file", path, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode, st.st_uid)
    cached = _cache.get(tag)
    if cached is None:
        secret = operator_file(path, "record key file", KEY_FILE_VAR, secret=True).strip()
        if len(_cache) > 64:
            _cache.clear()
        cached = _cache[tag] = RecordKey(_checked(secret, f"{KEY_FILE_VAR} ({path})"),
                                         f"key file {path}")
    return cached


def _checked(secret: bytes, where: str) -> bytes:
    if len(secret) < MIN_KEY_BYTES:
        raise RecordKeyError(
            f"{where}: the record key is {len(secret)} bytes, fewer than {MIN_KEY_BYTES}: "
            "use a long random one, e.g. python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    return secret


def operator_file(path: str, what: str, name: str, secret: bool = False) -> bytes:
    """The contents of `path`, a file the operator vouches for (`name`: the flag or variable
    that named it, for messages). RecordKeyError (a StoreError) unless it is a regular file
    owned by this user or root that group and others cannot write (nor others read, for a
    `secret`), and every folder above it and link on the way to it is safe from other users."""
    me = os.geteuid()
    fix = (f"make it yours with mode {'0600' if secret else '0644'} (chmod go-w"
           f"{',o-r' if secret else ''}) in a folder only you can change")
    probe = os.path.abspath(path)
    while True:  # a link on the way could be re-pointed by its owner
        try:
            st = os.lstat(probe)
        except OSError as exc:
            raise RecordKeyError(f"{name} {path!r}: cannot read the {what}: "
                                 f"{exc.strerror}") from exc
        if stat.S_ISLNK(st.st_mode) and st.st_uid not in (me, 0):
            raise _unsafe(name, path, what, probe, st, "is a link owned by another user", fix)
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    real = os.path.realpath(path)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise RecordKeyError(f"{name} {path!r}: cannot read the {what}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        _check_file(name, path, what, real, st, me, secret, fix)
        _check_folders(name, path, what, os.path.dirname(real), me, fix)
        data = os.read(fd, _MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_FILE_BYTES:
        raise RecordKeyError(f"{name} {path!r}: the {what} is over {_MAX_FILE_BYTES} bytes")
    return data


def _check_file(name: str, path: str, what: str, real: str, st: os.stat_result, me: int,
                secret: bool, fix: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise RecordKeyError(f"{name} {path!r}: the {what} is not a regular file")
    if st.st_uid not in (me, 0):
        raise _unsafe(name, path, what, real, st, "is owned by another user", fix)
    if st.st_mode & 0o022:
        raise _unsafe(name, path, what, real, st, "is writable by other users", fix)
    if secret and st.st_mode & 0o004:
        raise _unsafe(name, path, what, real, st, "is readable by every user", fix)


def _check_folders(name: str, path: str, what: str, folder: str, me: int, fix: str) -> None:
    while True:
        st = os.lstat(folder)
        if st.st_uid not in (me, 0):
            raise _unsafe(name, path, what, folder, st, "is a folder owned by another user, "
                          f"who could replace the {what}", fix)
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise _unsafe(name, path, what, folder, st, "is a folder other users may write "
                          f"to (and not sticky), who could replace the {what}", fix)
        parent = os.path.dirname(folder)
        if parent == folder:
            return
        folder = parent


def _unsafe(name: str, path: str, what: str, culprit: str, st: os.stat_result, why: str,
            fix: str) -> RecordKeyError:
    return RecordKeyError(
        f"{name} {path!r}: refused the {what}: {culprit!r} {why} (uid {st.st_uid}, mode "
        f"{stat.S_IMODE(st.st_mode):04o}); another user could change what it says. Fix: {fix}"
    )
