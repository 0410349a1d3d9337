"""SQL source on real SQLite files (demo database of 20k rows plus hand-made edge cases)."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import adbc_driver_manager
import adbc_driver_sqlite.dbapi as sqlite_dbapi
import fsspec
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
    plan_tables,
    read_partition_checksum,
    redact_url,
    table_checksum,
)
from connectors.sql.tests._helpers import assert_exactly_once, assert_ranges_tile, extract_all

ROWS = 20_000


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("demo") / "demo.db"
    info = generate_demo_sqlite(str(path), total_rows=ROWS, seed=0)
    return {**info, "url": f"sqlite:///{path}"}


@pytest.fixture
def conn(demo):
    connection = connect(demo["url"])
    yield connection
    connection.close()


def _sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _checksums(url: str) -> dict:
    with connect(url) as connection:
        return {t: table_checksum(connection, t) for t in list_tables(connection)}


# --- generation ----------------------------------------------------------------------


def test_demo_generation_is_deterministic_and_consistent(demo, tmp_path):
    again = generate_demo_sqlite(str(tmp_path / "again.db"), total_rows=ROWS, seed=0)
    other = generate_demo_sqlite(str(tmp_path / "other.db"), total_rows=ROWS, seed=1)
    assert sum(demo["tables"].values()) == ROWS and list(demo["tables"]) == list(DEMO_TABLES)
    assert _sha256(again["path"]) == _sha256(demo["path"])
    expected = _checksums(demo["url"])
    assert _checksums(f"sqlite:///{again['path']}") == expected
    other_sums = _checksums(f"sqlite:///{other['path']}")
    assert all(other_sums[table] != value for table, value in expected.items())

    db = sqlite3.connect(demo["path"])
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    for table, rows in demo["tables"].items():
        assert db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == rows
        steps = db.execute(
            f"SELECT min(d) FROM (SELECT updated_at - lag(updated_at) OVER (ORDER BY rowid) AS d"
            f" FROM {table})"
        ).fetchone()[0]
        assert steps > 0, f"{table}.updated_at is not strictly increasing"
    nulls = db.execute("SELECT avg(email IS NULL) FROM customers").fetchone()[0]
    assert 0.05 < nulls < 0.15


# --- metadata ------------------------------------------------------------------------


def test_list_tables_include_exclude(conn, demo):
    everything = [f"main.{t}" for t in sorted(DEMO_TABLES)]
    assert list_tables(conn) == everything  # indexes and sqlite_* tables are not listed
    assert list_tables(conn, include="order*") == ["main.order_items", "main.orders"]
    assert list_tables(conn, include=["main.cust*", "events"]) == ["main.customers", "main.events"]
    assert list_tables(conn, exclude=["*items", "main.p*"]) == [
        "main.customers",
        "main.events",
        "main.orders",
    ]
    assert list_tables(conn, include="order*", exclude="orders") == ["main.order_items"]
    assert list_tables(conn, include="nothing*") == []


def _pragma(db: sqlite3.Connection, table: str) -> tuple[list, list, list]:
    columns = db.execute(f"PRAGMA table_info({table})").fetchall()
    primary_key = [c[1] for c in sorted(columns, key=lambda c: c[5]) if c[5]]
    foreign = db.execute(f"PRAGMA foreign_key_list({table})").fetchall()
    return columns, primary_key, foreign


def test_describe_matches_sqlite_catalog(conn, demo, tmp_path):
    described = describe_tables(conn, list_tables(conn))
    db = sqlite3.connect(demo["path"])
    arrow_for = {"INTEGER": "int64", "REAL": "double", "TEXT": "string"}
    for info in described:
        table = info["table"]
        columns, primary_key, foreign = _pragma(db, table)
        assert (info["database"], info["schema"]) == ("demo.db", "main")
        assert [(c["ordinal"], c["name"], c["type"]) for c in info["columns"]] == [
            (cid + 1, name, declared) for cid, name, declared, *_ in columns
        ]
        rowid_alias = primary_key == ["id"]
        for column, (_, _name, declared, notnull, _, pk) in zip(
            info["columns"], columns, strict=True
        ):
            assert column["arrow_type"] == arrow_for[declared]
            assert column["nullable"] == (not notnull and not (rowid_alias and pk))
        assert info["primary_key"] == primary_key
        assert sorted(
            (fk["columns"][0], fk["ref_table"], fk["ref_columns"][0]) for fk in info["foreign_keys"]
        ) == sorted((row[3], row[2], row[4]) for row in foreign)
        assert info["row_count_estimate"] == demo["tables"][table]

    meta = metadata_table(described)
    assert meta.num_rows == sum(len(i["columns"]) for i in described)
    pq.write_table(meta, tmp_path / "metadata.parquet")
    rows = pq.read_table(tmp_path / "metadata.parquet").to_pylist()
    items = {r["column"]: r for r in rows if r["table"] == "order_items"}
    assert items["line_no"]["primary_key_position"] == 2
    assert items["product_id"]["references"] == "main.products.id"
    assert items["unit_price"]["primary_key_position"] is None

    with pytest.raises(SourceError, match="table not found"):
        describe_tables(conn, ["main.nope"])


# --- partitions and extraction -------------------------------------------------------


@pytest.mark.parametrize("table", DEMO_TABLES)
def test_partitions_cover_every_row_exactly_once(conn, demo, tmp_path, table):
    partitions, results = extract_all(conn, demo["url"], table, tmp_path, target_rows=1_500)
    expected = demo["tables"][table]
    assert len(partitions) == -(-expected // 1_500)
    assert {p["strategy"] for p in partitions} == {
        "rowid_range" if table == "order_items" else "key_range"
    }
    assert_ranges_tile(partitions)
    assert assert_exactly_once(conn, f"main.{table}", results) == expected
    for partition, result in zip(partitions, results, strict=True):
        rows, checksum = table_checksum(conn, table, partition=partition)
        assert (rows, checksum) == (result["rows"], result["checksum"])
    schema = dict(results[0]["schema"])
    assert schema["updated_at"] == "int64"


def test_plan_tables_plans_a_batch_like_each_table_alone(conn, tmp_path):
    """One description for the batch; the same partitions as `plan_partitions` per table, the
    watermark applied to the tables that have the column, each from its own ``since``."""
    db = sqlite3.connect(tmp_path / "mixed.db")
    db.executescript(
        "CREATE TABLE a (id INTEGER PRIMARY KEY, wm INTEGER, v TEXT);"
        "CREATE TABLE b (id INTEGER PRIMARY KEY, v TEXT);"
    )
    db.executemany("INSERT INTO a VALUES (?, ?, ?)", [(i, i * 10, f"a{i}") for i in range(1, 301)])
    db.executemany("INSERT INTO b VALUES (?, ?)", [(i, f"b{i}") for i in range(1, 201)])
    db.commit()
    with connect(f"sqlite:///{tmp_path / 'mixed.db'}") as mixed:
        planned = plan_tables(mixed, ["main.a", "main.b"], target_rows=50,
                              watermark_column="wm", since={"main.a": 1000})
        by_name = {p["table"]: p for p in planned}
        assert by_name["main.a"]["incremental"] and not by_name["main.b"]["incremental"]
        assert by_name["main.a"]["partitions"] == plan_partitions(
            mixed, "main.a", 50, watermark_column="wm", since=1000)
        assert sum(p["estimated_rows"] for p in by_name["main.a"]["partitions"]) == 200
        assert by_name["main.b"]["partitions"] == plan_partitions(mixed, "main.b", 50)
        assert [c["name"] for c in by_name["main.b"]["columns"]] == ["id", "v"]
    everything = [f"main.{t}" for t in DEMO_TABLES]
    for table in plan_tables(conn, everything, target_rows=1_500):
        assert table["partitions"] == plan_partitions(conn, table["table"], 1_500)
        assert table["primary_key"] == describe_tables(conn, [table["table"]])[0]["primary_key"]


def test_partition_plan_is_json_and_single_partition_when_small(conn):
    partitions = plan_partitions(conn, "products", target_rows=10**9)
    assert json.loads(json.dumps(partitions)) == partitions
    assert [(p["lo"], p["hi"], p["of"]) for p in partitions] == [(1, 200, 1)]


def test_watermark_returns_only_newer_rows_and_new_max(conn, demo, tmp_path):
    db = sqlite3.connect(demo["path"])
    since = db.execute("SELECT updated_at FROM orders WHERE id = 3000").fetchone()[0]
    newest = db.execute("SELECT max(updated_at) FROM orders").fetchone()[0]
    partitions, results = extract_all(
        conn,
        demo["url"],
        "orders",
        tmp_path,
        target_rows=300,
        watermark_column="updated_at",
        since=since,
    )
    assert len(partitions) == 4 and next_watermark(partitions, since) == newest
    assert {(p["since"], p["until"]) for p in partitions} == {(since, newest)}
    newer = assert_exactly_once(conn, "orders", results, watermark_column="updated_at", since=since)
    assert newer == 1000
    stamps = [v for r in results for v in pq.read_table(r["path"])["updated_at"].to_pylist()]
    assert min(stamps) > since and max(stamps) == newest

    assert plan_partitions(conn, "orders", watermark_column="updated_at", since=newest) == []
    assert next_watermark([], newest) == newest

    first = plan_partitions(conn, "orders", watermark_column="updated_at")
    assert first[0]["since"] is None and first[0]["until"] == newest
    with pytest.raises(SourceError, match="unknown watermark column"):
        plan_partitions(conn, "orders", watermark_column="nope", since=1)


def test_incremental_run_sees_updates_after_the_plan(tmp_path):
    url = f"sqlite:///{tmp_path / 'inc.db'}"
    db = sqlite3.connect(tmp_path / "inc.db")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, wm INTEGER)")
    db.executemany("INSERT INTO t VALUES (?, ?, ?)", [(i, f"v{i}", i) for i in range(1, 101)])
    db.commit()
    with connect(url) as conn:
        first = plan_partitions(conn, "t", target_rows=40, watermark_column="wm")
        # A change between planning and extraction is left for the next run, not half-seen.
        db.execute("UPDATE t SET v = 'changed', wm = 200 WHERE id = 5")
        db.commit()
        done = [
            extract_partition(url, "t", p, str(tmp_path / f"a{p['index']}.parquet")) for p in first
        ]
        assert sum(r["rows"] for r in done) == 99
        second = plan_partitions(conn, "t", watermark_column="wm", since=next_watermark(first))
        assert [(p["lo"], p["hi"], p["until"]) for p in second] == [(5, 5, 200)]
        result = extract_partition(url, "t", second[0], str(tmp_path / "b.parquet"))
        assert pq.read_table(result["path"]).to_pylist() == [{"id": 5, "v": "changed", "wm": 200}]


def test_fallbacks_without_integer_key(tmp_path):
    path = tmp_path / "edge.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE kv (k TEXT PRIMARY KEY, n INTEGER) WITHOUT ROWID;
        CREATE TABLE dup (a INTEGER, b TEXT);
        CREATE VIEW kv_view AS SELECT k, n FROM kv WHERE n % 2 = 0;
        """
    )
    db.executemany("INSERT INTO kv VALUES (?, ?)", [(f"key{i:05d}", i) for i in range(5000)])
    db.executemany("INSERT INTO dup VALUES (?, ?)", [(i % 7, "same") for i in range(3000)])
    db.commit()
    url = f"sqlite:///{path}"
    with connect(url) as conn:
        assert list_tables(conn) == ["main.dup", "main.kv"]
        assert list_tables(conn, table_types=("view",)) == ["main.kv_view"]
        expectations = {
            "kv": ("offset", 5000),
            "dup": ("rowid_range", 3000),
            "kv_view": ("offset", 2500),
        }
        for table, (strategy, rows) in expectations.items():
            partitions, results = extract_all(conn, url, table, tmp_path, target_rows=700)
            assert {p["strategy"] for p in partitions} == {strategy}
            assert len(partitions) == -(-rows // 700)
            assert assert_exactly_once(conn, table, results) == rows
        assert plan_partitions(conn, "kv")[0]["strategy"] == "all"
        assert plan_partitions(conn, "kv", target_rows=4000)[0]["order_by"] == ["k"]


def test_composite_key_led_by_an_integer_is_split_by_ranges(tmp_path):
    """WITHOUT ROWID, key (a INTEGER, b TEXT): key ranges over ``a``, many rows per value."""
    path = tmp_path / "pair.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE pair (a INTEGER, b TEXT, v REAL, PRIMARY KEY (a, b)) WITHOUT ROWID")
    db.executemany("INSERT INTO pair VALUES (?, ?, ?)",
                   [(i // 3, f"b{i % 3}", i / 7) for i in range(3000)])
    db.commit()
    url = f"sqlite:///{path}"
    with connect(url) as conn:
        partitions, results = extract_all(conn, url, "pair", tmp_path, target_rows=400)
        assert {(p["strategy"], p["column"]) for p in partitions} == {("key_range", "a")}
        assert len(partitions) == 8
        assert_ranges_tile(partitions)
        assert assert_exactly_once(conn, "pair", results) == 3000


def test_leading_nulls_odd_names_and_numeric_affinity(tmp_path):
    """The ADBC SQLite driver types columns from the first batch; the typing row fixes it."""
    path = tmp_path / "odd.db"
    db = sqlite3.connect(path)
    db.execute(
        'CREATE TABLE "we""ird tab" (id INTEGER PRIMARY KEY, "sp ace" REAL, "quo""te" TEXT,'
        " amount NUMERIC, created TIMESTAMP, raw BLOB)"
    )
    rows = [
        (
            i,
            None if i < 3000 else i / 4,
            None if i < 2500 else f"t{i}",
            None if i < 2000 else i * 3,
            None if i < 1000 else f"2024-01-01 00:00:{i % 60:02d}",
            None if i < 3500 else bytes([i % 256]) * 3,
        )
        for i in range(4000)
    ]
    db.executemany('INSERT INTO "we""ird tab" VALUES (?, ?, ?, ?, ?, ?)', rows)
    db.commit()
    url = f"sqlite:///{path}"
    with sqlite_dbapi.connect(str(path)) as raw, raw.cursor() as cur:
        cur.execute('SELECT * FROM "we""ird tab"')
        with pytest.raises((adbc_driver_manager.Error, OSError), match=r"[Tt]ype mismatch"):
            cur.fetch_arrow_table()
    with connect(url) as conn:
        assert list_tables(conn) == ['main.we"ird tab']
        types = {
            c["name"]: c["arrow_type"] for c in describe_tables(conn, ['we"ird tab'])[0]["columns"]
        }
        assert types == {
            "id": "int64",
            "sp ace": "double",
            'quo"te': "string",
            "amount": "int64",
            "created": "string",
            "raw": "binary",
        }
        partitions = plan_partitions(conn, 'main.we"ird tab', target_rows=1000)
        results = [
            extract_partition(
                url, 'we"ird tab', p, str(tmp_path / f"{p['index']}.parquet"), batch_rows=256
            )
            for p in partitions
        ]
        assert assert_exactly_once(conn, 'we"ird tab', results) == 4000
    back = pq.read_table(results[-1]["path"])
    assert back.schema.field("sp ace").type == "double"
    assert back.slice(back.num_rows - 1).to_pylist()[0]['quo"te'] == "t3999"


def test_extract_to_fsspec_url(conn, demo):
    partitions = plan_partitions(conn, "customers", target_rows=400)
    urls = [f"memory://sql-test/customers/{p['index']}.parquet" for p in partitions]
    results = [
        extract_partition(demo["url"], "customers", p, u)
        for p, u in zip(partitions, urls, strict=True)
    ]
    assert [r["path"] for r in results] == urls and all(r["bytes"] > 0 for r in results)
    assert read_partition_checksum(urls) == table_checksum(conn, "customers")


# --- connection errors ---------------------------------------------------------------


def test_bad_urls_raise_clear_errors_without_passwords(tmp_path):
    missing = f"sqlite:///{tmp_path}/missing.db"
    with pytest.raises(SourceError, match="no SQLite file") as error:
        connect(missing)
    assert missing in str(error.value)
    with pytest.raises(SourceError, match="unsupported source URL"):
        connect("mysql://root:hunter2@db/x")
    with pytest.raises(SourceError) as error:
        connect("mysql://root:hunter2@db/x")
    assert "hunter2" not in str(error.value)

    secret = "s3cr%40t-pw"
    url = f"postgresql://alice:{secret}@127.0.0.1:1/db?sslmode=disable&password=other-pw"
    with pytest.raises(SourceError, match="cannot connect") as error:
        connect(url)
    message = str(error.value)
    for leaked in (secret, "s3cr@t-pw", "other-pw"):
        assert leaked not in message
    assert "postgresql://alice:***@127.0.0.1:1/db" in message
    assert error.value.__cause__ is None and error.value.__suppress_context__
    assert redact_url("postgresql://bob@h/db") == "postgresql://bob@h/db"


def test_extract_to_s3(conn, demo, s3_url):
    partitions = plan_partitions(conn, "orders", target_rows=1500)
    urls = [f"{s3_url}/sql/orders/{p['index']}.parquet" for p in partitions]
    results = [
        extract_partition(demo["url"], "orders", p, u)
        for p, u in zip(partitions, urls, strict=True)
    ]
    assert sum(r["rows"] for r in results) == demo["tables"]["orders"]
    assert read_partition_checksum(urls) == table_checksum(conn, "orders")


def test_failed_extraction_leaves_no_file(tmp_path, s3_url):
    path = tmp_path / "dirty.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER)")
    # A REAL stored in an INTEGER column after the first batches: fails mid-stream.
    db.executemany(
        "INSERT INTO t VALUES (?, ?)", [(i, i if i < 5000 else i + 0.5) for i in range(6000)]
    )
    db.commit()
    url = f"sqlite:///{path}"
    for dest in (str(tmp_path / "out" / "t.parquet"), f"{s3_url}/dirty/t.parquet"):
        with pytest.raises(SourceError, match=r"extracting t partition 0 .*mismatch"):
            extract_partition(url, "t", {"strategy": "all"}, dest, batch_rows=1000)
        fs, _, _ = fsspec.core.get_fs_token_paths(dest)
        assert not fs.exists(dest)
    assert list((tmp_path / "out").iterdir()) == []
