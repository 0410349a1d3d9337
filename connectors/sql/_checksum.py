"""Order-independent row checksums over Arrow data, plus the Parquet-safe canonical form.

The same functions run on batches fetched from the database and on batches read
back from Parquet, so "every row arrived exactly once" is proven by comparing two
numbers. Design choices:

* A row hash is ``mix64(sum_i value_word_i * column_weight_i)``: per-column words are
  combined linearly (cheap, vectorised) and the single non-linear mix per row stops
  values from cancelling out *across* rows. The table checksum is the sum of row
  hashes mod 2**64, so it is independent of row order and batching, and partition
  checksums add up to the table checksum.
* Everything is vectorised pyarrow compute (there is no hash kernel in pyarrow, so
  strings are hashed as weighted little-endian 8-byte words of their first 64 bytes;
  only the rare longer tail goes through ``hashlib`` in Python). ~4M rows/s on one core.
* Integer widths are normalised to int64 and floats to float64 bits, so int32 vs int64
  (PostgreSQL int4 vs SQLite INTEGER) hash the same; other type differences do not.
* This is a checksum, not a cryptographic digest: collisions are ~2**-64 for
  accidental corruption, not adversarially hard.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["add_checksums", "batch_checksum", "canonical_batch", "canonical_schema", "row_hashes"]

_U64 = pa.uint64()
_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_WORD = 8
_VECTOR_BYTES = 64


def _u64(value: int) -> pa.Scalar:
    return pa.scalar(value & _MASK, _U64)


_M1, _M2 = _u64(0xBF58476D1CE4E5B9), _u64(0x94D049BB133111EB)
_S27, _S30, _S31, _S32 = _u64(27), _u64(30), _u64(31), _u64(32)
_LOW32 = _u64(0xFFFFFFFF)
_NULL_WORD = _u64(0x6A09E667F3BCC909)
# Odd weights keep multiplication mod 2**64 a bijection, so a single changed word
# always changes the sum.
_WORD_WEIGHTS = [_u64(_GOLDEN * (2 * k + 3)) for k in range(_VECTOR_BYTES // _WORD)]
_LENGTH_WEIGHT = _u64(0xA0761D6478BD642F)
_TAIL_WEIGHT = _u64(0xE7037ED1A0B428DB)
_PAD = pa.scalar(b"\0" * _VECTOR_BYTES, pa.binary())


def mix64(z: pa.Array) -> pa.Array:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    z = pc.multiply(pc.bit_wise_xor(z, pc.shift_right(z, _S30)), _M1)
    z = pc.multiply(pc.bit_wise_xor(z, pc.shift_right(z, _S27)), _M2)
    return pc.bit_wise_xor(z, pc.shift_right(z, _S31))


def _column_weight(position: int) -> pa.Scalar:
    return _u64(((_GOLDEN * (2 * position + 1)) ^ 0xD1B54A32D192ED03) | 1)


# --- canonical (Parquet-safe) form -------------------------------------------------


def _parquet_unsafe(type_: pa.DataType) -> bool:
    return pa.types.is_interval(type_) or pa.types.is_union(type_)


def canonical_schema(schema: pa.Schema) -> pa.Schema:
    """Schema after `canonical_batch`: types Parquet cannot store become strings."""
    fields = [
        pa.field(f.name, pa.string(), True, f.metadata) if _parquet_unsafe(f.type) else f
        for f in schema
    ]
    return pa.schema(fields, schema.metadata)


def canonical_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Replace Parquet-unsupported columns (PostgreSQL interval, unions) by their text."""
    if not any(_parquet_unsafe(f.type) for f in batch.schema):
        return batch
    columns = [_python_text(col) if _parquet_unsafe(col.type) else col for col in batch.columns]
    return pa.RecordBatch.from_arrays(columns, schema=canonical_schema(batch.schema))


def _python_text(arr: pa.Array) -> pa.Array:
    return pa.array([None if v is None else str(v) for v in arr.to_pylist()], pa.string())


# --- per-column 64-bit words -------------------------------------------------------


def _value_words(arr: pa.Array) -> pa.Array:
    """One uint64 per value (null stays null); equal values give equal words."""
    t = arr.type
    if isinstance(t, pa.ExtensionType):
        return _value_words(arr.storage)
    if pa.types.is_dictionary(t):
        return _value_words(arr.dictionary_decode())
    if pa.types.is_null(t):
        return pa.nulls(len(arr), _U64)
    if pa.types.is_boolean(t) or pa.types.is_unsigned_integer(t):
        return pc.cast(arr, _U64)
    if pa.types.is_signed_integer(t):
        return pc.cast(arr, pa.int64()).view(_U64)
    if pa.types.is_floating(t):
        return pc.cast(arr, pa.float64()).view(_U64)
    if pa.types.is_temporal(t) and not pa.types.is_interval(t):
        width = pa.int32() if t.bit_width == 32 else pa.int64()
        return pc.cast(arr.view(width), pa.int64()).view(_U64)
    if pa.types.is_decimal(t):
        return _bytes_words(pc.cast(arr, pa.string()))
    if _is_bytes_like(t):
        return _bytes_words(arr)
    return _bytes_words(_python_text(arr))


def _is_bytes_like(t: pa.DataType) -> bool:
    return (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
        or pa.types.is_string_view(t)
        or pa.types.is_binary_view(t)
    )


def _as_binary(arr: pa.Array) -> pa.Array:
    t = arr.type
    if pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        return pc.cast(arr, pa.large_binary())
    if pa.types.is_string_view(t):
        arr = pc.cast(arr, pa.string())
    return pc.cast(arr, pa.binary())


def _bytes_words(arr: pa.Array) -> pa.Array:
    data = _as_binary(arr)
    lengths = pc.cast(pc.binary_length(data), pa.int64())
    words = pc.multiply(pc.cast(lengths, _U64), _LENGTH_WEIGHT)
    longest = pc.max(lengths).as_py() or 0
    # Padding every value once means each 8-byte slice below is exactly 8 bytes, so
    # it can be reinterpreted as a uint64 without per-row work. Zero padding adds 0.
    padded = pc.binary_join_element_wise(data, _PAD.cast(data.type), pa.scalar(b"", data.type))
    for index, start in enumerate(range(0, min(longest, _VECTOR_BYTES), _WORD)):
        word = pc.cast(pc.binary_slice(padded, start, start + _WORD), pa.binary(_WORD))
        words = pc.add(words, pc.multiply(word.view(_U64), _WORD_WEIGHTS[index]))
    if longest > _VECTOR_BYTES:
        words = pc.add(words, pc.multiply(_tail_words(data, lengths), _TAIL_WEIGHT))
    return words


def _tail_words(data: pa.Array, lengths: pa.Array) -> pa.Array:
    long = pc.fill_null(pc.greater(lengths, _VECTOR_BYTES), False)
    # stop = the longest value: pyarrow 26's binary_slice fails with "Negative buffer
    # resize" when stop is omitted or much larger than the values.
    longest = pc.max(lengths).as_py()
    tails = pc.binary_slice(pc.filter(data, long), _VECTOR_BYTES, longest)
    digests = [
        int.from_bytes(hashlib.blake2b(v, digest_size=8).digest(), "little")
        for v in tails.to_pylist()
    ]
    return pc.replace_with_mask(pa.repeat(_u64(0), len(data)), long, pa.array(digests, _U64))


# --- rows and checksums --------------------------------------------------------------


def row_hashes(batch: pa.RecordBatch) -> pa.Array:
    """uint64 hash per row, depending on column order and every value."""
    acc = pa.repeat(_u64(0), batch.num_rows)
    for position, column in enumerate(batch.columns):
        words = pc.fill_null(_value_words(column), _NULL_WORD)
        acc = pc.add(acc, pc.multiply(words, _column_weight(position)))
    return mix64(acc)


def batch_checksum(batch: pa.RecordBatch) -> int:
    """Sum of row hashes mod 2**64 (order-independent, additive across batches)."""
    if batch.num_rows == 0:
        return 0
    hashes = row_hashes(batch)
    # Summing 32-bit halves cannot overflow for < 2**32 rows, so the result does not
    # depend on whether the sum kernel wraps or checks.
    high = pc.sum(pc.shift_right(hashes, _S32)).as_py()
    low = pc.sum(pc.bit_wise_and(hashes, _LOW32)).as_py()
    return ((high << 32) + low) & _MASK


def add_checksums(*values: int) -> int:
    return sum(values) & _MASK
