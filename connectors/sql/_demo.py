"""Deterministic demo SQLite database for the SQL connector.

Design choices (measured on 2 cores):

* Every column is computed with vectorised pyarrow compute from the row id and a
  seed through a splitmix64 counter hash, so the content is a pure function of
  ``(total_rows, seed)`` regardless of chunking, with no numpy and no Python loop per row.
* Rows are ingested with ADBC ``adbc_ingest(mode="append")`` into tables created with
  explicit DDL (so primary and foreign keys exist), one transaction per 1M-row chunk, with
  journaling and fsync off: ~3x faster than ``sqlite3.executemany`` from Python tuples
  (1M orders rows: 1.8 s vs 5.7 s). 5M rows take ~8.5 s in total.
* Timestamps as text use Arrow's timestamp->string cast, which produces SQLite's
  canonical ``YYYY-MM-DD HH:MM:SS`` and is ~10x faster than ``strftime``.
* ``updated_at`` (epoch milliseconds) strictly increases with ``id`` in every table so
  it is usable as an incremental watermark; it is indexed so watermark planning does
  not scan the table.
* The file is built next to the destination and renamed into place: a crash never
  leaves a half-built database under the final name, and a retry simply rebuilds it.
* `generate_demo_postgres` loads the same rows into PostgreSQL (the benchmark's second source):
  the same tables, columns and values (BIGINT for INTEGER, DOUBLE PRECISION for REAL, timestamps
  kept as text), so a checksum of either source's extraction is the same number. Rows go in
  through ADBC's COPY into bare tables; keys, foreign keys and indexes are added afterwards
  (one index build instead of per-row checks), then VACUUM ANALYZE, so planner statistics and
  the visibility map are those of a settled database.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import adbc_driver_sqlite.dbapi as sqlite_dbapi
import pyarrow as pa
import pyarrow.compute as pc

from connectors.sql._checksum import mix64

__all__ = ["DEMO_TABLES", "generate_demo_postgres", "generate_demo_sqlite"]

_U64 = pa.uint64()
_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_EPOCH_2020 = 1_577_836_800
_FOUR_YEARS_S = 4 * 365 * 86_400
_CHUNK_ROWS = 1_000_000

# Share of total_rows per table; order_items takes the remainder.
_SHARES = {"customers": 0.05, "products": 0.01, "orders": 0.20, "events": 0.30}

_DDL = {
    "customers": """CREATE TABLE customers (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        email TEXT,
        country TEXT NOT NULL,
        signup_at TEXT NOT NULL,
        lifetime_value REAL,
        is_active INTEGER NOT NULL,
        updated_at INTEGER NOT NULL)""",
    "products": """CREATE TABLE products (
        id INTEGER PRIMARY KEY,
        sku TEXT NOT NULL,
        name TEXT NOT NULL,
        category TEXT NOT NULL,
        price REAL NOT NULL,
        description TEXT,
        updated_at INTEGER NOT NULL)""",
    "orders": """CREATE TABLE orders (
        id INTEGER PRIMARY KEY,
        customer_id INTEGER NOT NULL REFERENCES customers(id),
        status TEXT NOT NULL,
        total REAL NOT NULL,
        discount REAL,
        ordered_at TEXT NOT NULL,
        shipped_at TEXT,
        updated_at INTEGER NOT NULL)""",
    "order_items": """CREATE TABLE order_items (
        order_id INTEGER NOT NULL REFERENCES orders(id),
        line_no INTEGER NOT NULL,
        product_id INTEGER NOT NULL REFERENCES products(id),
        quantity INTEGER NOT NULL,
        unit_price REAL NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (order_id, line_no))""",
    "events": """CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        customer_id INTEGER REFERENCES customers(id),
        kind TEXT NOT NULL,
        payload TEXT,
        value REAL,
        occurred_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL)""",
}
DEMO_TABLES = tuple(_DDL)

_PG_COLUMNS = {
    "customers": "id BIGINT NOT NULL, name TEXT NOT NULL, email TEXT, country TEXT NOT NULL,"
    " signup_at TEXT NOT NULL, lifetime_value DOUBLE PRECISION, is_active BIGINT NOT NULL,"
    " updated_at BIGINT NOT NULL",
    "products": "id BIGINT NOT NULL, sku TEXT NOT NULL, name TEXT NOT NULL,"
    " category TEXT NOT NULL, price DOUBLE PRECISION NOT NULL, description TEXT,"
    " updated_at BIGINT NOT NULL",
    "orders": "id BIGINT NOT NULL, customer_id BIGINT NOT NULL, status TEXT NOT NULL,"
    " total DOUBLE PRECISION NOT NULL, discount DOUBLE PRECISION, ordered_at TEXT NOT NULL,"
    " shipped_at TEXT, updated_at BIGINT NOT NULL",
    "order_items": "order_id BIGINT NOT NULL, line_no BIGINT NOT NULL,"
    " product_id BIGINT NOT NULL, quantity BIGINT NOT NULL,"
    " unit_price DOUBLE PRECISION NOT NULL, updated_at BIGINT NOT NULL",
    "events": "id BIGINT NOT NULL, customer_id BIGINT, kind TEXT NOT NULL, payload TEXT,"
    " value DOUBLE PRECISION, occurred_at BIGINT NOT NULL, updated_at BIGINT NOT NULL",
}
_PRIMARY_KEYS = {
    "customers": "id", "products": "id", "orders": "id", "order_items": "order_id, line_no",
    "events": "id",
}
_FOREIGN_KEYS = [
    ("orders", "customer_id", "customers"),
    ("order_items", "order_id", "orders"),
    ("order_items", "product_id", "products"),
    ("events", "customer_id", "customers"),
]

_FIRST = "Ada Alan Grace Edsger Barbara Donald Frances Ken Radia Tim Margaret Dennis".split()
_LAST = "Lovelace Turing Hopper Dijkstra Liskov Knuth Allen Thompson Perlman Hamilton".split()
_COUNTRIES = ["US", "DE", "FR", "IN", "BR", "JP", "GB", "NG", "CA", "AU", "MX", "KR"]
_CATEGORIES = ["books", "games", "garden", "kitchen", "music", "outdoor", "tools", "toys"]
_STATUSES = ["delivered", "delivered", "delivered", "shipped", "pending", "cancelled"]
_KINDS = ["page_view", "page_view", "page_view", "click", "search", "add_to_cart", "checkout"]


def _table_sizes(total_rows: int) -> dict[str, int]:
    sizes = {name: max(1, int(total_rows * share)) for name, share in _SHARES.items()}
    sizes["order_items"] = total_rows - sum(sizes.values())
    return {name: sizes[name] for name in DEMO_TABLES}


# --- deterministic vectorised randomness --------------------------------------------


def _scalar_mix(x: int) -> int:
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK
    return x ^ (x >> 31)


class _Random:
    """Counter-based random streams: value = mix64(id * golden + key(seed, stream))."""

    def __init__(self, ids: pa.Array, seed: int, table: str):
        self._ids = pc.cast(ids, _U64)
        self._base = _scalar_mix(seed * 1_000_003 + sum(map(ord, table)) * 7919)

    def bits(self, stream: int) -> pa.Array:
        key = pa.scalar(_scalar_mix(self._base + stream), _U64)
        return mix64(pc.add(pc.multiply(self._ids, pa.scalar(_GOLDEN, _U64)), key))

    def unit(self, stream: int) -> pa.Array:
        top53 = pc.cast(pc.shift_right(self.bits(stream), pa.scalar(11, _U64)), pa.float64())
        return pc.multiply(top53, 2.0**-53)

    def below(self, stream: int, n: int) -> pa.Array:
        return pc.cast(pc.floor(pc.multiply(self.unit(stream), float(n))), pa.int64())

    def choice(self, stream: int, values: list[str]) -> pa.Array:
        return pa.array(values, pa.string()).take(self.below(stream, len(values)))

    def null_where(self, stream: int, probability: float, values: pa.Array) -> pa.Array:
        hit = pc.less(self.unit(stream), probability)
        return pc.if_else(hit, pa.scalar(None, values.type), values)

    def money(self, stream: int, low: float, high: float) -> pa.Array:
        return pc.round(pc.add(pc.multiply(self.unit(stream), high - low), low), 2)


def _text(values: pa.Array) -> pa.Array:
    return pc.cast(values, pa.string())


def _join(*parts: pa.Array | str) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def _timestamp_text(epoch_s: pa.Array) -> pa.Array:
    return _text(pc.cast(epoch_s, pa.timestamp("s")))


def _updated_at(ids: pa.Array, rnd: _Random) -> pa.Array:
    # id * 1000 ms plus < 1000 ms jitter: strictly increasing with id.
    base = pc.add(pc.multiply(ids, 1000), _EPOCH_2020 * 1000 + _FOUR_YEARS_S * 1000)
    return pc.add(base, rnd.below(99, 1000))


# --- tables -------------------------------------------------------------------------


def _customers(ids: pa.Array, rnd: _Random, sizes: dict[str, int]) -> dict[str, pa.Array]:
    first, last = rnd.choice(1, _FIRST), rnd.choice(2, _LAST)
    email = _join(pc.utf8_lower(first), ".", pc.utf8_lower(last), _text(ids), "@example.com")
    return {
        "id": ids,
        "name": _join(first, " ", last),
        "email": rnd.null_where(3, 0.1, email),
        "country": rnd.choice(4, _COUNTRIES),
        "signup_at": _timestamp_text(pc.add(rnd.below(5, _FOUR_YEARS_S), _EPOCH_2020)),
        "lifetime_value": rnd.null_where(6, 0.25, rnd.money(7, 0, 5000)),
        "is_active": pc.cast(pc.less(rnd.unit(8), 0.8), pa.int64()),
        "updated_at": _updated_at(ids, rnd),
    }


def _products(ids: pa.Array, rnd: _Random, sizes: dict[str, int]) -> dict[str, pa.Array]:
    category = rnd.choice(1, _CATEGORIES)
    description = _join("A fine item from our ", category, " range, model ", _text(ids))
    return {
        "id": ids,
        "sku": _join("SKU-", _text(pc.add(ids, 100_000))),
        "name": _join(pc.utf8_capitalize(category), " item #", _text(ids)),
        "category": category,
        "price": rnd.money(2, 0.5, 500),
        "description": rnd.null_where(3, 0.3, description),
        "updated_at": _updated_at(ids, rnd),
    }


def _orders(ids: pa.Array, rnd: _Random, sizes: dict[str, int]) -> dict[str, pa.Array]:
    spacing = max(1, _FOUR_YEARS_S // sizes["orders"])
    ordered = pc.add(pc.multiply(ids, spacing), _EPOCH_2020)
    status = rnd.choice(3, _STATUSES)
    unshipped = pc.is_in(status, pa.array(["pending", "cancelled"]))
    shipped = _timestamp_text(pc.add(ordered, pc.add(rnd.below(4, 5 * 86_400), 3600)))
    return {
        "id": ids,
        "customer_id": pc.add(rnd.below(1, sizes["customers"]), 1),
        "status": status,
        "total": rnd.money(2, 5, 2000),
        "discount": rnd.null_where(5, 0.6, rnd.money(6, 1, 50)),
        "ordered_at": _timestamp_text(ordered),
        "shipped_at": pc.if_else(unshipped, pa.scalar(None, pa.string()), shipped),
        "updated_at": _updated_at(ids, rnd),
    }


def _order_items(ids: pa.Array, rnd: _Random, sizes: dict[str, int]) -> dict[str, pa.Array]:
    # Spread items evenly over orders: item i (0-based) belongs to order
    # floor(i * n_orders / n_items) + 1, and line_no is its position in that order.
    n_orders, n_items = sizes["orders"], sizes["order_items"]
    zero_based = pc.subtract(ids, 1)
    order_index = pc.divide(pc.multiply(zero_based, n_orders), n_items)
    first_item = pc.divide(pc.add(pc.multiply(order_index, n_items), n_orders - 1), n_orders)
    return {
        "order_id": pc.add(order_index, 1),
        "line_no": pc.add(pc.subtract(zero_based, first_item), 1),
        "product_id": pc.add(rnd.below(1, sizes["products"]), 1),
        "quantity": pc.add(rnd.below(2, 5), 1),
        "unit_price": rnd.money(3, 0.5, 500),
        "updated_at": _updated_at(ids, rnd),
    }


def _events(ids: pa.Array, rnd: _Random, sizes: dict[str, int]) -> dict[str, pa.Array]:
    page = _join('{"page": "/p/', _text(rnd.below(2, 1000)), '", "ms": ')
    payload = _join(page, _text(rnd.below(3, 5000)), "}")
    occurred_us = pc.multiply(pc.add(pc.multiply(ids, 10), _EPOCH_2020), 1_000_000)
    return {
        "id": ids,
        "customer_id": rnd.null_where(4, 0.2, pc.add(rnd.below(1, sizes["customers"]), 1)),
        "kind": rnd.choice(5, _KINDS),
        "payload": rnd.null_where(6, 0.3, payload),
        "value": rnd.null_where(7, 0.5, rnd.money(8, 0, 100)),
        "occurred_at": pc.add(occurred_us, rnd.below(9, 1_000_000)),
        "updated_at": _updated_at(ids, rnd),
    }


_BUILDERS: dict[str, Callable[[pa.Array, _Random, dict[str, int]], dict[str, pa.Array]]] = {
    "customers": _customers,
    "products": _products,
    "orders": _orders,
    "order_items": _order_items,
    "events": _events,
}


def _id_range(start: int, stop: int) -> pa.Array:
    ones = pa.repeat(pa.scalar(1, pa.int64()), stop - start)
    return pc.add(pc.cumulative_sum(ones), start - 1)


def _chunks(name: str, rows: int, seed: int, sizes: dict[str, int]):
    for start in range(1, rows + 1, _CHUNK_ROWS):
        ids = _id_range(start, min(start + _CHUNK_ROWS, rows + 1))
        yield pa.table(_BUILDERS[name](ids, _Random(ids, seed, name), sizes))


# --- writing ------------------------------------------------------------------------


def _fill(conn, sizes: dict[str, int], seed: int) -> None:
    with conn.cursor() as cur:
        for pragma in ("journal_mode = OFF", "synchronous = OFF", "locking_mode = EXCLUSIVE"):
            cur.execute(f"PRAGMA {pragma}")
            cur.fetchall()
        for name, ddl in _DDL.items():
            cur.execute(ddl)
            for chunk in _chunks(name, sizes[name], seed, sizes):
                cur.adbc_ingest(name, chunk, mode="append")
            cur.execute(f"CREATE INDEX {name}_updated_at ON {name} (updated_at)")


def generate_demo_sqlite(path: str, total_rows: int = 5_000_000, seed: int = 0) -> dict:
    """Build (or replace) a demo SQLite database at ``path``.

    Returns ``{"path", "rows", "tables": {name: rows}, "seconds"}``.
    """
    if total_rows < len(_DDL) * 2:
        raise ValueError(f"total_rows must be at least {len(_DDL) * 2}")
    started = time.perf_counter()
    sizes = _table_sizes(total_rows)
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = f"{path}.partial-{os.getpid()}"
    if os.path.exists(partial):
        os.remove(partial)
    try:
        # Autocommit because SQLite refuses to change `synchronous` inside a transaction;
        # each ingest call is then its own (large) transaction.
        with sqlite_dbapi.connect(partial, autocommit=True) as conn:
            _fill(conn, sizes, seed)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return {
        "path": path,
        "rows": total_rows,
        "tables": sizes,
        "seconds": round(time.perf_counter() - started, 3),
    }


def generate_demo_postgres(url: str, total_rows: int = 5_000_000, seed: int = 0,
                           schema: str = "public") -> dict:
    """Load the demo tables (the rows `generate_demo_sqlite` makes) into PostgreSQL.

    ``url`` is a ``postgresql://`` URL of an existing database (no password in it: use
    PGPASSWORD). Tables of the same names in ``schema`` are replaced. Returns ``{"url",
    "rows", "tables": {name: rows}, "seconds"}``.
    """
    import adbc_driver_postgresql.dbapi as postgresql_dbapi

    if total_rows < len(_DDL) * 2:
        raise ValueError(f"total_rows must be at least {len(_DDL) * 2}")
    started = time.perf_counter()
    sizes = _table_sizes(total_rows)
    quoted = '"' + schema.replace('"', '""') + '"'
    with postgresql_dbapi.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
        for name in reversed(DEMO_TABLES):
            cur.execute(f"DROP TABLE IF EXISTS {quoted}.{name} CASCADE")
        for name in DEMO_TABLES:
            cur.execute(f"CREATE TABLE {quoted}.{name} ({_PG_COLUMNS[name]})")
            for chunk in _chunks(name, sizes[name], seed, sizes):
                cur.adbc_ingest(name, chunk, mode="append", db_schema_name=schema)
            cur.execute(f"ALTER TABLE {quoted}.{name} ADD PRIMARY KEY ({_PRIMARY_KEYS[name]})")
            cur.execute(f"CREATE INDEX {name}_updated_at ON {quoted}.{name} (updated_at)")
        for table, column, parent in _FOREIGN_KEYS:
            cur.execute(
                f"ALTER TABLE {quoted}.{table} ADD CONSTRAINT {table}_{column}_fkey"
                f" FOREIGN KEY ({column}) REFERENCES {quoted}.{parent} (id)"
            )
        for name in DEMO_TABLES:
            cur.execute(f"VACUUM (ANALYZE) {quoted}.{name}")
    return {
        "url": url,
        "rows": total_rows,
        "tables": sizes,
        "seconds": round(time.perf_counter() - started, 3),
    }
