"""SqlConnector on real Ray against SQLite and a real PostgreSQL 15.

What a user cares about: the metadata Parquet matches the database catalog; every row of every
table arrives exactly once (row counts and an order-independent checksum per table, from the
source vs from the Parquet files); a second, incremental run extracts only the new rows.
"""

from __future__ import annotations

import glob
import json
import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import runtime
from connectors.sql import (
    DEMO_TABLES,
    connect,
    generate_demo_sqlite,
    read_partition_checksum,
    table_checksum,
)
from connectors.sql.app import SqlConnector

ROWS = 20_000
NEW_ROWS = {"products": 7, "events": 11}


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("sqlapp") / "demo.db"
    generate_demo_sqlite(str(path), total_rows=ROWS)
    return str(path)


def _query(conn, sql: str) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def _run(store: str, entrypoint: str, **payload) -> object:
    return runtime.run_app(SqlConnector, payload, store=store, entrypoint=entrypoint)


def _metadata_rows(out) -> list[dict]:
    files = [f for f in out.files if f.endswith(".parquet")]
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pylist()


def _assert_exactly_once(conn, out, **where) -> dict[str, int]:
    """Per table: files' rows and checksum == the source's; returns rows per table."""
    manifest = json.loads(open(out.manifest_path, encoding="utf-8").read())
    rows = {}
    for summary in out.tables:
        files = [f["path"] for f in manifest["tables"][summary.table]["files"]]
        source = table_checksum(conn, summary.table, **where)
        assert read_partition_checksum(files) == source, summary.table
        assert (summary.rows, summary.checksum) == source
        rows[summary.table] = summary.rows
    return rows


def _insert_new_rows(conn, table: str, count: int, shift: int) -> None:
    """Copies of the first rows with new ids and a later updated_at."""
    columns = [r[1] for r in _query(conn, f"PRAGMA table_info({table})")]
    select = ", ".join(
        f"id + {shift}" if c == "id" else f"updated_at + {shift}000" if c == "updated_at" else c
        for c in columns
    )
    _query(conn, f"INSERT INTO {table} SELECT {select} FROM {table} ORDER BY id LIMIT {count}")


def test_sqlite_metadata_data_and_incremental(ray_session, demo_db, tmp_path):
    store, dest = str(tmp_path / "store"), str(tmp_path / "out")
    url = f"sqlite:///{demo_db}"
    conn = connect(url)

    meta = _run(store, "extract_metadata", source_url=url, destination=dest)
    assert meta.tables == len(DEMO_TABLES)
    got = {(r["table"], r["column"]): r for r in _metadata_rows(meta)}
    expected = {}
    for table in DEMO_TABLES:
        for _, name, declared, _notnull, _, pk in _query(conn, f"PRAGMA table_info({table})"):
            expected[(table, name)] = (declared, pk or None)
    assert {k: (r["source_type"], r["primary_key_position"]) for k, r in got.items()} == expected
    assert meta.columns == len(expected)

    # Filters: include/exclude patterns choose the tables.
    only = _run(store, "extract_metadata", source_url=url, destination=dest,
                include=["order*", "events"], exclude=["main.orders"])
    assert only.tables == 2

    first = _run(store, "extract_data", source_url=url, destination=dest,
                 watermark_column="updated_at", target_rows=3_000)
    assert first.files > len(DEMO_TABLES)  # big tables were split into partitions
    rows = _assert_exactly_once(conn, first)
    assert sum(rows.values()) == first.rows == ROWS

    for table, count in NEW_ROWS.items():
        _insert_new_rows(conn, table, count, shift=10_000_000)
    second = _run(store, "extract_data", source_url=url, destination=dest,
                  watermark_column="updated_at", target_rows=3_000, since=first.next_since)
    assert {s.table: s.rows for s in second.tables if s.rows} == {
        f"main.{t}": n for t, n in NEW_ROWS.items()
    }
    for summary in second.tables:
        since = first.next_since[summary.table]
        assert (summary.rows, summary.checksum) == table_checksum(
            conn, summary.table, watermark_column="updated_at", since=since
        )
    assert second.next_since["main.events"] > first.next_since["main.events"]
    # The manifest is also a PERSISTENT object in the run's store.
    assert second.manifest.tier == "persistent" and second.manifest.is_durable
    assert os.path.isfile(os.path.join(store, second.manifest.storage_path))
    conn.close()


# --- PostgreSQL ------------------------------------------------------------------------

PG_KEYS = {"customers": "id", "products": "id", "orders": "id", "events": "id"}


@pytest.fixture
def pg(postgres_db, demo_db):
    """A fresh PostgreSQL database with four demo tables (timestamps as ``timestamp``)."""
    with connect(f"sqlite:///{demo_db}") as source, connect(postgres_db) as target:
        with source.cursor() as read, target.cursor() as write:
            for table, key in PG_KEYS.items():
                read.execute(f"SELECT * FROM {table}")
                data = read.fetch_arrow_table()
                if "signup_at" in data.column_names:
                    index = data.column_names.index("signup_at")
                    parsed = pc.strptime(data["signup_at"], format="%Y-%m-%d %H:%M:%S", unit="us")
                    data = data.set_column(index, "signup_at", parsed)
                write.adbc_ingest(table, data, mode="create")
                write.execute(f"ALTER TABLE {table} ADD PRIMARY KEY ({key})")
            write.execute(
                "ALTER TABLE orders ADD FOREIGN KEY (customer_id) REFERENCES customers (id)"
            )
    conn = connect(postgres_db)
    yield postgres_db, conn
    conn.close()


def test_postgres_metadata_data_and_incremental(ray_session, pg, tmp_path):
    url, conn = pg
    store, dest = str(tmp_path / "store"), str(tmp_path / "out")

    meta = _run(store, "extract_metadata", source_url=url, destination=dest)
    catalog = _query(
        conn,
        "SELECT table_name, column_name, udt_name, is_nullable FROM information_schema.columns"
        " WHERE table_schema = 'public'",
    )
    got = {(r["table"], r["column"]): (r["source_type"], r["nullable"])
           for r in _metadata_rows(meta)}
    assert got == {(t, c): (u, n == "YES") for t, c, u, n in catalog}
    refs = {(r["table"], r["column"]): r["references"] for r in _metadata_rows(meta)}
    assert refs[("orders", "customer_id")] == "public.customers.id"

    # A timestamp watermark: travels as ISO text between runs.
    first = _run(store, "extract_data", source_url=url, destination=dest,
                 watermark_column="signup_at", target_rows=2_000)
    rows = _assert_exactly_once(conn, first)
    assert sum(rows.values()) == first.rows
    assert set(first.next_since) == {"public.customers"}  # the only table with signup_at

    _query(conn, "INSERT INTO customers SELECT id + 1000000, name, email, country,"
                 " signup_at + interval '10 years', lifetime_value, is_active, updated_at"
                 " FROM customers ORDER BY id LIMIT 5")
    second = _run(store, "extract_data", source_url=url, destination=dest,
                  include=["customers"], watermark_column="signup_at", target_rows=2_000,
                  since=first.next_since)
    assert second.rows == 5
    assert (second.tables[0].rows, second.tables[0].checksum) == table_checksum(
        conn, "public.customers", watermark_column="signup_at",
        since=first.next_since["public.customers"],
    )


def test_password_in_source_url_is_refused(ray_session, tmp_path):
    with pytest.raises(runtime.InputValidationError, match="PGPASSWORD"):
        _run(str(tmp_path / "s"), "extract_data", source_url="postgresql://u:secret@h/db",
             destination=str(tmp_path / "o"))
    assert not glob.glob(str(tmp_path / "s" / "*"))
