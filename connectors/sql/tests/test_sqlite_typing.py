"""SQLite partitions read without the typing row keep their declared types, whatever NULLs do.

The plain read (INTEGER/REAL/TEXT affinities) lets the ADBC driver infer types from the first
batch: a column NULL there is typed int64, and fails the read when values follow. These tests
put NULLs where that hurts and check what a user sees: every row once, the declared Arrow type
in every file, the same checksum as the source.
"""

from __future__ import annotations

import random
import sqlite3

import pyarrow.parquet as pq
import pytest

from connectors.sql import (
    describe_tables,
    extract_partition,
    plan_partitions,
    read_partition_checksum,
    table_checksum,
)
from connectors.sql._read import open_stream
from connectors.sql._sql import connect
from connectors.sql.tests._helpers import assert_exactly_once, extract_all

ARROW = {"INTEGER": "int64", "REAL": "double", "TEXT": "string"}


def _table(path, columns: dict[str, str], rows: list[tuple]) -> str:
    db = sqlite3.connect(path)
    spec = ", ".join(f"{name} {kind}" for name, kind in columns.items())
    db.execute(f"CREATE TABLE t (id INTEGER PRIMARY KEY, {spec})")
    marks = ", ".join("?" * (len(columns) + 1))
    db.executemany(f"INSERT INTO t VALUES ({marks})", rows)
    db.commit()
    db.close()
    return f"sqlite:///{path}"


def _types(path: str) -> dict[str, str]:
    return {f.name: str(f.type) for f in pq.read_schema(path)}


def test_values_after_a_null_first_batch_are_read_again_typed(tmp_path):
    columns = {"r": "REAL", "s": "TEXT", "n": "INTEGER"}
    rows = [(i, None if i < 3000 else i / 4, None if i < 2500 else f"s{i}",
             None if i < 2800 else i) for i in range(1, 4001)]
    url = _table(tmp_path / "late.db", columns, rows)
    with connect(url) as conn:
        # The plain read alone cannot do it: the driver fails on the first REAL after NULLs.
        stream_error = None
        try:
            with open_stream(conn, "t", {"strategy": "all"}, 256) as stream:
                for _ in stream:
                    pass
        except Exception as exc:
            stream_error = exc
        assert type(stream_error).__name__ == "_Retype"
        result = extract_partition(url, "t", {"strategy": "all"},
                                   str(tmp_path / "all.parquet"), batch_rows=256)
        assert result["rows"] == 4000
        assert _types(result["path"]) == {"id": "int64", "r": "double", "s": "string",
                                          "n": "int64"}
        assert read_partition_checksum(result["path"]) == table_checksum(conn, "t")
        assert pq.read_table(result["path"]).slice(3999).to_pylist()[0] == {
            "id": 4000, "r": 1000.0, "s": "s4000", "n": 4000}


def test_a_partition_with_only_nulls_in_a_column_has_the_declared_type(tmp_path):
    columns = {"r": "REAL", "s": "VARCHAR(20)", "n": "BIGINT"}
    rows = [(i, None if i <= 500 else 0.5, None if i <= 500 else "x", None if i <= 500 else 7)
            for i in range(1, 1001)]
    url = _table(tmp_path / "half.db", columns, rows)
    with connect(url) as conn:
        partitions, results = extract_all(conn, url, "t", tmp_path, target_rows=500)
        assert [p["hi"] for p in partitions] == [500, 1000]
        described = describe_tables(conn, ["t"])[0]["columns"]
        declared = {c["name"]: c["arrow_type"] for c in described}
        for result in results:
            assert _types(result["path"]) == declared == {
                "id": "int64", "r": "double", "s": "string", "n": "int64"}
        assert pq.read_table(results[0]["path"]).column("r").null_count == 500
        assert assert_exactly_once(conn, "t", results) == 1000


@pytest.mark.parametrize("seed", range(12))
def test_random_null_patterns_round_trip(tmp_path, seed):
    """Many shapes: random affinities, NULL runs at random places, random batch sizes."""
    rnd = random.Random(seed)
    kinds = [rnd.choice(list(ARROW)) for _ in range(rnd.randint(1, 5))]
    columns = {f"c{i}": kind for i, kind in enumerate(kinds)}
    total = rnd.randint(50, 3000)
    runs = {name: sorted(rnd.sample(range(total + 1), 2)) for name in columns}

    def value(kind: str, i: int):
        return {"INTEGER": i * 3, "REAL": i / 8, "TEXT": f"v{i}"}[kind]

    rows = [
        (i, *(None if runs[name][0] <= i < runs[name][1] or rnd.random() < 0.1
              else value(kind, i) for name, kind in columns.items()))
        for i in range(1, total + 1)
    ]
    url = _table(tmp_path / f"r{seed}.db", columns, rows)
    batch_rows = rnd.choice([16, 64, 1000, 65_536])
    with connect(url) as conn:
        partitions = plan_partitions(conn, "t", target_rows=rnd.randint(20, total))
        results = [
            extract_partition(url, "t", p, str(tmp_path / f"p{p['index']}.parquet"),
                              batch_rows=batch_rows)
            for p in partitions
        ]
        want = {"id": "int64", **{name: ARROW[kind] for name, kind in columns.items()}}
        for result in results:
            assert _types(result["path"]) == want, (seed, batch_rows, runs)
        assert assert_exactly_once(conn, "t", results) == total
