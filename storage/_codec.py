"""Record encoding: msgpack with a magic prefix, a checksum and, with a record key, a MAC.
Data only, never pickle.

Layouts (docs/store-layout.md):

    b"CRT1" + blake2b-128(payload) + payload                                  no record key
    b"CRT2" + blake2b-128(payload) + key id (4) + HMAC-SHA256(where, payload) + payload

A record whose checksum does not match is `CorruptRecordError`; callers treat it as missing,
so a torn write never becomes a wrong result. With a record key (`storage._trust`), records
are written as CRT2, and a record that is not CRT2 with a valid MAC under that key is
`UnauthenticatedRecordError` (a `CorruptRecordError`: reported and never acted on). The MAC
covers `where`, the store key the record is written under, so a genuine record copied to
another run's place does not verify there. Without a key, CRT2 records are read by their
checksum, as CRT1 ones.

Bounds, checked before a record's contents are built: its size, against the `limit` of its
kind, before anything is decoded; and, in a record over 1 MiB, the maps and arrays it holds,
at most 64 Ki plus one per 8 bytes of record (an empty map is 1 byte of msgpack but 64 of
Python: a 10 MB record of empty maps took `list` to 774 MiB). msgpack's own stack bounds
nesting at 1024 levels; the schemas (`storage._records`) bound it to 64.

Rejected: an `Unpacker` walk that counts objects before building them (the C unpacker has no
such limit; in Python it costs more than the decode it protects); a MAC without the store key
in it (a genuine record could be replayed under another run id).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import msgpack

from ._errors import (
    CorruptRecordError,
    RecordTooLargeError,
    UnauthenticatedRecordError,
)
from ._messages import printable
from ._trust import record_key

__all__ = ["decode", "encode"]

MAGIC = b"CRT1"
MAGIC_MAC = b"CRT2"
_DIGEST = 16
_KEY_ID = 4
_MAC = 32
_HEADER = len(MAGIC) + _DIGEST
_HEADER_MAC = _HEADER + _KEY_ID + _MAC
_CONTAINERS_FREE = 65536
_BYTES_PER_CONTAINER = 8
_UNCOUNTED = 2**20
"""Payloads up to this size are decoded without counting (at most 1 Mi maps, ~70 MiB of
Python objects): counting costs about a third of the decode, and most records are smaller."""


def _digest(payload: bytes | memoryview) -> bytes:
    return hashlib.blake2b(payload, digest_size=_DIGEST).digest()


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def encode(obj: Any, where: str = "", *, limit: int | None = None,
           what: str = "record") -> bytes:
    """`obj` as a record to be written under store key `where` (what the MAC binds it to);
    RecordTooLargeError when it would be over `limit` bytes, which readers would refuse."""
    payload = msgpack.packb(obj, use_bin_type=True)
    key = record_key()
    size = len(payload) + (_HEADER if key is None else _HEADER_MAC)
    if limit is not None and size > limit:
        raise RecordTooLargeError(f"{printable(what)} would be {_mib(size)}, over the "
                                  f"{_mib(limit)} limit of this kind of record")
    if key is None:
        return MAGIC + _digest(payload) + payload
    return MAGIC_MAC + _digest(payload) + key.key_id + key.mac(where, payload) + payload


def decode(data: bytes, what: str = "record", *, where: str | None = None,
           limit: int | None = None) -> Any:
    """The object in record `data`, read from store key `where` (`what` names it in errors).

    CorruptRecordError (torn, not a record), UnauthenticatedRecordError (a record key is set
    and the MAC is missing or wrong), RecordTooLargeError (over `limit`, or too many maps and
    arrays for its size)."""
    what = printable(what)
    if limit is not None and len(data) > limit:
        raise RecordTooLargeError(f"{what}: {_mib(len(data))}, over the {_mib(limit)} limit of "
                                  "this kind of record (refused before decoding)")
    payload = _verified(data, what, where if where is not None else "")
    return _unpack(payload, what)


def _verified(data: bytes, what: str, where: str) -> memoryview:
    """The payload of `data` once its checksum (and, with a record key, its MAC) holds."""
    key = record_key()
    magic = data[: len(MAGIC)]
    if magic == MAGIC and len(data) >= _HEADER:
        if key is not None:
            raise UnauthenticatedRecordError(
                f"{what}: carries no MAC (written without a record key), and this process "
                f"has one ({key.source}): refused")
        payload = memoryview(data)[_HEADER:]
    elif magic == MAGIC_MAC and len(data) >= _HEADER_MAC:
        payload = memoryview(data)[_HEADER_MAC:]
        if key is not None:
            stored_id = data[_HEADER : _HEADER + _KEY_ID]
            if stored_id != key.key_id:
                raise UnauthenticatedRecordError(
                    f"{what}: signed with another record key (id {stored_id.hex()}; this "
                    f"process's key, from {key.source}, is {key.key_id.hex()}): refused")
            if not hmac.compare_digest(data[_HEADER + _KEY_ID : _HEADER_MAC],
                                       key.mac(where, payload)):
                raise UnauthenticatedRecordError(
                    f"{what}: its MAC does not match (forged, changed after it was written, "
                    "or copied from another place in the store): refused")
            return payload
    else:
        raise CorruptRecordError(f"{what}: not a connector-runtime record (bad header)")
    if _digest(payload) != data[len(MAGIC) : _HEADER]:
        raise CorruptRecordError(f"{what}: checksum mismatch (torn or corrupted write)")
    return payload


class _Budget(Exception):
    pass


def _unpack(payload: memoryview, what: str) -> Any:
    allowed = _CONTAINERS_FREE + len(payload) // _BYTES_PER_CONTAINER
    count = 0

    def counted(value: Any) -> Any:
        nonlocal count
        count += 1
        if count > allowed:
            raise _Budget
        return value

    if len(payload) <= _UNCOUNTED:  # a few MiB of Python objects at worst: not counted
        hooks: dict[str, Any] = {}
    else:
        hooks = {"object_hook": counted, "list_hook": counted}
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=False, **hooks)
    except _Budget:
        raise RecordTooLargeError(
            f"{what}: more than {allowed:,} maps and arrays in {_mib(len(payload))} "
            "(refused while decoding: a record this dense is not one the runtime writes)"
        ) from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CorruptRecordError(f"{what}: undecodable payload: {exc}") from exc

