"""SQL source on a real PostgreSQL 15 (``postgres_db`` from tests/services.py).

Each test gets a fresh database loaded from the generated SQLite demo through ADBC
(``adbc_ingest``), with text timestamps turned into ``timestamp``, ``is_active`` into
``boolean`` and ``quantity`` into ``integer`` so the PostgreSQL type mapping is exercised,
plus explicit primary and foreign keys and ANALYZE.
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from connectors.sql import (
    DEMO_TABLES,
    SourceError,
    connect,
    describe_tables,
    extract_partition,
    generate_demo_sqlite,
    list_tables,
    metadata_table,
    next_watermark,
    plan_partitions,
    table_checksum,
)
from connectors.sql.tests._helpers import assert_exactly_once, assert_ranges_tile, extract_all

ROWS = 20_000
PRIMARY_KEYS = {
    "customers": ["id"],
    "products": ["id"],
    "orders": ["id"],
    "order_items": ["order_id", "line_no"],
    "events": ["id"],
}
FOREIGN_KEYS = [
    ("orders", "customer_id", "customers"),
    ("order_items", "order_id", "orders"),
    ("order_items", "product_id", "products"),
    ("events", "customer_id", "customers"),
]
TIMESTAMPS = {"signup_at", "ordered_at", "shipped_at"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("pgdemo") / "demo.db"
    info = generate_demo_sqlite(str(path), total_rows=ROWS, seed=0)
    return {**info, "url": f"sqlite:///{path}"}


def _richer_types(table: pa.Table) -> pa.Table:
    for index, name in enumerate(table.column_names):
        column = table.column(name)
        if name in TIMESTAMPS:
            column = pc.strptime(column, format="%Y-%m-%d %H:%M:%S", unit="us")
        elif name == "is_active":
            column = pc.cast(column, pa.bool_())
        elif name == "quantity":
            column = pc.cast(column, pa.int32())
        table = table.set_column(index, name, column)
    return table


@pytest.fixture
def pg(postgres_db, demo):
    """``(url, connection)`` of a fresh PostgreSQL database holding the demo tables."""
    with connect(demo["url"]) as source, connect(postgres_db) as target:
        with source.cursor() as read, target.cursor() as write:
            for table in DEMO_TABLES:
                read.execute(f"SELECT * FROM {table}")
                write.adbc_ingest(table, _richer_types(read.fetch_arrow_table()), mode="create")
                write.execute(
                    f"ALTER TABLE {table} ADD PRIMARY KEY ({', '.join(PRIMARY_KEYS[table])})"
                )
            for table, column, parent in FOREIGN_KEYS:
                write.execute(
                    f"ALTER TABLE {table} ADD CONSTRAINT {table}_{column}_fk"
                    f" FOREIGN KEY ({column}) REFERENCES {parent} (id)"
                )
            write.execute("ANALYZE")
    conn = connect(postgres_db)
    yield postgres_db, conn
    conn.close()


def _catalog(conn, sql: str) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def test_metadata_matches_postgres_catalog(pg, demo):
    _, conn = pg
    tables = list_tables(conn)
    assert tables == [f"public.{t}" for t in sorted(DEMO_TABLES)]
    assert list_tables(conn, include=["order*"], exclude="public.orders") == ["public.order_items"]
    assert list_tables(conn, include="public.c*") == ["public.customers"]

    described = {info["table"]: info for info in describe_tables(conn, tables)}
    columns = _catalog(
        conn,
        "SELECT table_name, column_name, udt_name, is_nullable, ordinal_position"
        " FROM information_schema.columns WHERE table_schema = 'public'"
        " ORDER BY table_name, ordinal_position",
    )
    for table, info in described.items():
        assert info["database"] == pg[0].rsplit("/", 1)[1] and info["schema"] == "public"
        expected = [(c, t, n == "YES", o) for tb, c, t, n, o in columns if tb == table]
        assert [(c["name"], c["type"], c["nullable"], c["ordinal"]) for c in info["columns"]] == (
            expected
        )
        assert info["primary_key"] == PRIMARY_KEYS[table]
        assert info["row_count_estimate"] == demo["tables"][table]  # exact after ANALYZE
    assert sorted(
        (table, fk["columns"][0], fk["ref_table"], fk["ref_columns"][0], fk["ref_schema"])
        for table, info in described.items()
        for fk in info["foreign_keys"]
    ) == sorted((t, c, p, "id", "public") for t, c, p in FOREIGN_KEYS)

    arrow = {c["name"]: c["arrow_type"] for c in described["orders"]["columns"]}
    assert arrow == {
        "id": "int64",
        "customer_id": "int64",
        "status": "string",
        "total": "double",
        "discount": "double",
        "ordered_at": "timestamp[us]",
        "shipped_at": "timestamp[us]",
        "updated_at": "int64",
    }
    assert {c["name"]: c["arrow_type"] for c in described["order_items"]["columns"]}[
        "quantity"
    ] == "int32"
    assert {c["name"]: c["arrow_type"] for c in described["customers"]["columns"]}[
        "is_active"
    ] == "bool"
    meta = metadata_table(list(described.values()))
    assert meta.num_rows == len(columns)


def test_partitions_cover_every_row_exactly_once(pg, demo, tmp_path):
    url, conn = pg
    for table in DEMO_TABLES:
        partitions, results = extract_all(conn, url, table, tmp_path, target_rows=2_500)
        expected = demo["tables"][table]
        assert len(partitions) == -(-expected // 2_500)
        # order_items' key is (order_id, line_no): ranges over its leading integer column,
        # where each order's items all fall in one partition (no LIMIT/OFFSET scans).
        assert {p["strategy"] for p in partitions} == {"key_range"}
        assert {p["column"] for p in partitions} == {PRIMARY_KEYS[table][0]}
        assert_ranges_tile(partitions)
        assert assert_exactly_once(conn, table, results) == expected


def test_same_rows_give_same_checksum_in_sqlite_and_postgres(pg, demo):
    _, conn = pg
    with connect(demo["url"]) as sqlite:
        for table in ("products", "events"):  # types identical on both sides
            assert table_checksum(conn, table) == table_checksum(sqlite, table)
        # orders' timestamps are text in SQLite and timestamp in PostgreSQL.
        assert table_checksum(conn, "orders") != table_checksum(sqlite, "orders")


def test_timestamp_watermark_and_incremental_update(pg, tmp_path):
    url, conn = pg
    since = "2022-01-01T00:00:00"
    partitions, results = extract_all(
        conn,
        url,
        "orders",
        tmp_path,
        target_rows=500,
        watermark_column="ordered_at",
        since=since,
    )
    ((count, newest),) = _catalog(
        conn, "SELECT count(*), max(ordered_at) FROM orders WHERE ordered_at > '2022-01-01'"
    )
    assert next_watermark(partitions, since) == newest.isoformat()
    assert (
        assert_exactly_once(conn, "orders", results, watermark_column="ordered_at", since=since)
        == count
    )
    stamps = pa.concat_tables(pq.read_table(r["path"]) for r in results)["ordered_at"]
    assert pc.min(stamps).as_py().isoformat() > since
    assert str(stamps.type) == "timestamp[us]"

    first = plan_partitions(conn, "customers", watermark_column="updated_at")
    _catalog(
        conn,
        "UPDATE customers SET name = 'Changed', updated_at = updated_at + 10000000"
        " WHERE id IN (7, 700) RETURNING id",
    )
    second = plan_partitions(
        conn, "customers", watermark_column="updated_at", since=next_watermark(first)
    )
    assert [(p["lo"], p["hi"]) for p in second] == [(7, 700)]
    result = extract_partition(url, "customers", second[0], str(tmp_path / "inc.parquet"))
    changed = pq.read_table(result["path"]).to_pylist()
    assert [(r["id"], r["name"]) for r in changed] == [(7, "Changed"), (700, "Changed")]


def test_text_watermark_literals_are_escaped(pg, tmp_path):
    url, conn = pg
    names = ["O'Brien", "back\\slash", "plain", "quote'' twice", "z'; DROP TABLE t; --"]
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE people (name text PRIMARY KEY, n int)")
        cur.adbc_ingest(
            "people", pa.table({"name": names, "n": pa.array(range(5), pa.int32())}), mode="append"
        )
    for since in names:
        expected = sorted(n for n in names if n.encode() > since.encode())
        partitions = plan_partitions(conn, "people", watermark_column="name", since=since)
        got = []
        for p in partitions:
            result = extract_partition(url, "people", p, str(tmp_path / f"{len(got)}.parquet"))
            got += pq.read_table(result["path"])["name"].to_pylist()
        assert sorted(got) == expected
        assert (partitions[0]["until"] if partitions else None) == (
            max(expected) if expected else None
        )
    assert _catalog(conn, "SELECT count(*) FROM people") == [(5,)]


def test_missing_tables_and_bad_database(pg):
    url, conn = pg
    with pytest.raises(SourceError, match="table not found"):
        describe_tables(conn, ["nope"])
    with pytest.raises(SourceError, match="cannot connect") as error:
        connect(url.rsplit("/", 1)[0] + "/no_such_db")
    assert "no_such_db" in str(error.value)


def test_postgres_types_round_trip(postgres_db, tmp_path):
    """numeric, json, uuid, arrays, interval ... reach Parquet and keep the checksum."""
    with connect(postgres_db) as conn, conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE odd (id int PRIMARY KEY, n numeric(10, 2), tz timestamptz, d date,"
            " j jsonb, u uuid, b bool, s smallint, f real, arr int[], by bytea, iv interval,"
            " t time, ch char(3), long text)"
        )
        cur.execute(
            "INSERT INTO odd SELECT g, g * 1.5, '2024-01-01'::timestamptz + g * interval '1 h',"
            " '2024-01-01'::date + g, jsonb_build_object('a', g), md5(g::text)::uuid, g % 2 = 0,"
            " g, g / 3.0, ARRAY[g, g + 1], decode(repeat('ab', g % 50), 'hex'),"
            " make_interval(days => g), '10:00', 'abc', repeat(md5(g::text), g % 9)"
            " FROM generate_series(1, 3000) g"
        )
        cur.execute("INSERT INTO odd (id) VALUES (5000)")
        partitions, results = extract_all(conn, postgres_db, "odd", tmp_path, target_rows=1000)
        assert len(partitions) == 4
        assert assert_exactly_once(conn, "odd", results) == 3001
    schema = dict(results[0]["schema"])
    assert schema["n"].startswith("extension<arrow.opaque[storage_type=string, type_name=numeric")
    assert (schema["j"], schema["u"], schema["iv"]) == (
        "extension<arrow.json>",
        "extension<arrow.uuid>",
        "string",  # Parquet has no month_day_nano interval: written as text
    )
    assert (schema["tz"], schema["id"], schema["f"]) == ("timestamp[us, tz=UTC]", "int32", "float")
    row = pq.read_table(results[0]["path"]).slice(1, 1).to_pylist()[0]
    assert (row["n"], row["arr"], row["ch"], row["iv"]) == (
        "3.00",
        [2, 3],
        "abc",
        "MonthDayNano(months=0, days=2, nanoseconds=0)",
    )


def _other_backends(conn) -> list[int]:
    return [pid for (pid,) in _catalog(
        conn,
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
    )]


def test_partitions_of_one_process_share_a_connection_that_survives_a_restart(
    pg, demo, tmp_path, monkeypatch
):
    """One kept connection per process, checked before reuse, closed when idle."""
    from connectors.sql import _sql

    url, conn = pg
    partitions = plan_partitions(conn, "orders", target_rows=1_000)
    assert len(partitions) == 4
    out = [str(tmp_path / f"o{p['index']}.parquet") for p in partitions]
    results = [extract_partition(url, "orders", p, o) for p, o in zip(partitions, out[:2],
                                                                      strict=False)]
    kept = _other_backends(conn)
    assert len(kept) == 1  # two partitions, one connection, still open for the next one
    # The server drops it (restart, idle timeout on its side): the next partition reconnects.
    _catalog(conn, f"SELECT pg_terminate_backend({kept[0]})")
    results += [extract_partition(url, "orders", p, o)
                for p, o in zip(partitions[2:], out[2:], strict=True)]
    now = _other_backends(conn)
    assert len(now) == 1 and now != kept
    assert assert_exactly_once(conn, "orders", results) == demo["tables"]["orders"]
    # Unused for _IDLE_SECONDS: closed by the reaper thread.
    monkeypatch.setattr(_sql, "_IDLE_SECONDS", 0.2)
    extract_partition(url, "orders", partitions[0], out[0])  # starts a reaper at the new pace
    deadline = time.monotonic() + 10
    while _other_backends(conn) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _other_backends(conn) == []
