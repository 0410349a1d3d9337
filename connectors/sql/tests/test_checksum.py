"""Row checksums: independent of order and batching, sensitive to every value."""

from __future__ import annotations

import datetime
import decimal
import random

import pyarrow as pa
import pyarrow.parquet as pq

from connectors.sql._checksum import add_checksums, batch_checksum, canonical_batch


def _checksum(table: pa.Table, chunk: int | None = None) -> int:
    return add_checksums(*(batch_checksum(b) for b in table.to_batches(max_chunksize=chunk)))


def _sample(rows: int = 3000) -> pa.Table:
    rng = random.Random(7)
    text = ["".join(rng.choices("ab'\\\u00e9x", k=rng.randint(0, 300))) for _ in range(rows)]
    return pa.table(
        {
            "i": pa.array([rng.randint(-(2**63), 2**63 - 1) for _ in range(rows)], pa.int64()),
            "f": pa.array([rng.random() if i % 5 else None for i in range(rows)], pa.float64()),
            "s": pa.array([t if i % 7 else None for i, t in enumerate(text)], pa.string()),
            "b": pa.array([t.encode()[:20] for t in text], pa.binary()),
            "d": pa.array([decimal.Decimal(i) / 8 for i in range(rows)], pa.decimal128(12, 3)),
            "t": pa.array(
                [
                    datetime.datetime(2024, 1, 1) + datetime.timedelta(seconds=i)
                    for i in range(rows)
                ],
                pa.timestamp("us"),
            ),
            "l": pa.array([[i, i + 1] for i in range(rows)], pa.list_(pa.int32())),
        }
    )


def test_independent_of_row_order_and_batching():
    table = _sample()
    expected = _checksum(table)
    shuffled = list(range(table.num_rows))
    random.Random(1).shuffle(shuffled)
    assert _checksum(table.take(shuffled)) == expected
    assert _checksum(table, chunk=97) == expected
    assert batch_checksum(pa.record_batch({"x": pa.array([], pa.int64())})) == 0


def test_every_row_and_value_counts():
    table = _sample()
    expected = _checksum(table)
    assert _checksum(table.slice(1)) != expected  # a row missing
    assert _checksum(pa.concat_tables([table, table.slice(5, 1)])) != expected  # duplicated
    # Swapping one column's values between two rows keeps every column's multiset.
    swapped = table.column("s").to_pylist()
    swapped[1], swapped[2] = swapped[2], swapped[1]
    assert _checksum(table.set_column(2, "s", pa.array(swapped, pa.string()))) != expected
    # A change past the first 64 bytes of a long string (the non-vectorised tail).
    longest = max(range(table.num_rows), key=lambda i: len(table["s"][i].as_py() or ""))
    text = table.column("s").to_pylist()
    text[longest] = text[longest][:-1] + ("a" if text[longest][-1] != "a" else "b")
    assert _checksum(table.set_column(2, "s", pa.array(text, pa.string()))) != expected


def test_nulls_empty_and_equivalent_types():
    one = pa.table({"s": pa.array(["", None, "x"])})
    assert _checksum(one) != _checksum(pa.table({"s": pa.array([None, None, "x"])}))
    values = ["a" * n for n in range(0, 150, 7)] + [None]
    as_string = pa.table({"v": pa.array(values, pa.string()), "n": pa.array(range(23), pa.int64())})
    as_large = pa.table(
        {"v": pa.array(values, pa.large_string()), "n": pa.array(range(23), pa.int32())}
    )
    as_view = pa.table({"v": pa.array(values, pa.string_view()), "n": pa.array(range(23))})
    assert _checksum(as_string) == _checksum(as_large) == _checksum(as_view)


def test_parquet_round_trip_and_parquet_unsafe_types(tmp_path):
    table = _sample()
    pq.write_table(table, tmp_path / "s.parquet", row_group_size=500)
    back = pq.read_table(tmp_path / "s.parquet")
    assert _checksum(back, chunk=333) == _checksum(table)

    interval = pa.array([pa.MonthDayNano([1, 2, 3]), None], pa.month_day_nano_interval())
    batch = canonical_batch(pa.record_batch({"iv": interval}))
    assert batch.schema.field("iv").type == pa.string()
    assert batch.column(0).to_pylist()[1] is None
