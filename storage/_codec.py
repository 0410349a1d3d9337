"""Record encoding: msgpack with a magic prefix and a checksum. Data only, never pickle.

Layout: b"CRT1" + blake2b-128(payload) + payload. A record whose checksum does not match is
`CorruptRecordError`; callers treat it as missing, so a torn write never becomes a wrong result.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack

from ._errors import CorruptRecordError

__all__ = ["decode", "encode"]

MAGIC = b"CRT1"
_DIGEST = 16
_HEADER = len(MAGIC) + _DIGEST


def _digest(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=_DIGEST).digest()


def encode(obj: Any) -> bytes:
    payload = msgpack.packb(obj, use_bin_type=True)
    return MAGIC + _digest(payload) + payload


def decode(data: bytes, what: str = "record") -> Any:
    if len(data) < _HEADER or not data.startswith(MAGIC):
        raise CorruptRecordError(f"{what}: not a connector-runtime record (bad header)")
    payload = memoryview(data)[_HEADER:]
    if _digest(payload) != data[len(MAGIC) : _HEADER]:
        raise CorruptRecordError(f"{what}: checksum mismatch (torn or corrupted write)")
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise CorruptRecordError(f"{what}: undecodable payload: {exc}") from exc
