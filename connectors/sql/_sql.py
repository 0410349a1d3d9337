"""Connections and SQL text for the SQL source: URLs, dialects, quoting, literals, queries.

* Connections are autocommit: a source is only read, and an open transaction would hold a
  snapshot (PostgreSQL) or a lock (SQLite) between the queries of unrelated tasks.
* PostgreSQL literals: with bound parameters the driver leaves COPY for a prepared
  statement whose whole result arrives as one batch (unbounded memory), and a text
  parameter cannot be compared with a timestamp column. Filter values are therefore
  rendered as literals (integers via int(), floats via repr, strings as E'' with quotes and
  backslashes doubled, which PostgreSQL types from the compared column). SQLite binds them.
* Identifiers are always double-quoted (quotes doubled) and column names are checked
  against the catalog first: SQLite silently reads an unknown double-quoted name as a
  string literal.
* A password is never echoed: errors from a driver are scrubbed of the URL's secrets and
  raised ``from None`` (the driver's own exception may carry the password).
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import math
import os
import threading
import time
import uuid
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import adbc_driver_manager
import adbc_driver_postgresql.dbapi as postgresql_dbapi
import adbc_driver_sqlite.dbapi as sqlite_dbapi
import pyarrow as pa

__all__ = [
    "DEFAULT_BATCH_ROWS",
    "DEFAULT_TARGET_ROWS",
    "SourceError",
    "connect",
    "redact_url",
    "reused_connection",
]

DEFAULT_BATCH_ROWS = 65_536
DEFAULT_TARGET_ROWS = 1_000_000

SQLITE, POSTGRESQL = "sqlite", "postgresql"
_SECRET_PARAMS = {"password", "passwd", "pwd", "sslpassword"}
_READ_ERRORS = (adbc_driver_manager.Error, pa.ArrowException, OSError)


class SourceError(RuntimeError):
    """A source database could not be reached, read or understood."""


# --- URLs and connections ------------------------------------------------------------


def redact_url(url: str) -> str:
    """``url`` with any password (userinfo or query parameter) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(key.lower() in _SECRET_PARAMS for key, _ in pairs):
        query = "&".join(
            f"{key}=***" if key.lower() in _SECRET_PARAMS else f"{key}={value}"
            for key, value in pairs
        )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _secrets(url: str) -> list[str]:
    try:
        parts = urlsplit(url)
        found = [parts.password or ""]
    except ValueError:
        return []
    found += [v for k, v in parse_qsl(parts.query) if k.lower() in _SECRET_PARAMS]
    return [s for secret in found if secret for s in {secret, unquote(secret)}]


def _scrub(text: str, url: str) -> str:
    for secret in _secrets(url):
        text = text.replace(secret, "***")
    return text


def connect(url: str):
    """ADBC DB-API connection (autocommit) for ``sqlite:///path`` or ``postgresql://...``.

    SQLite paths follow the SQLAlchemy convention: ``sqlite:///rel.db`` is relative to the
    working directory, ``sqlite:////abs/path.db`` is absolute, ``sqlite://`` is in memory.
    """
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in (SQLITE, POSTGRESQL, "postgres"):
        raise SourceError(
            f"unsupported source URL {redact_url(url)}: expected sqlite:///path "
            "or postgresql://user@host:port/db"
        )
    try:
        if scheme == SQLITE:
            return sqlite_dbapi.connect(_sqlite_path(url), autocommit=True)
        return postgresql_dbapi.connect(url, autocommit=True)
    except SourceError:
        raise
    except Exception as exc:
        # `from None`: the driver's exception (and its traceback) may echo the password.
        message = f"cannot connect to {redact_url(url)}: {_scrub(str(exc), url)}"
        raise SourceError(message) from None


_IDLE_SECONDS = 60.0
"""How long a kept PostgreSQL connection may wait for the next partition before it is closed."""
_idle: dict[str, list[tuple[float, Any]]] = {}
_idle_lock = threading.Lock()
_idle_changed = threading.Condition(_idle_lock)
_reaper: threading.Thread | None = None


@contextlib.contextmanager
def reused_connection(url: str) -> Iterator[Any]:
    """A connection for one task, kept for the next task of this process (PostgreSQL only).

    ADBC's PostgreSQL connect costs about 30 ms (18 ms of it client CPU: it loads the server's
    type catalog), paid once per partition before: 0.6 s of the two workers' time for the 21
    partitions of 5 M rows. A kept connection is checked with ``SELECT 1`` before
    reuse (a restarted server costs a reconnect, not a failed attempt), closed after an error
    in the task, and closed by a daemon thread after `_IDLE_SECONDS` unused, so an idle worker
    does not hold a connection of the source for long. SQLite connections are not kept: one
    costs 0.2 ms to open, and a kept one would go on reading a database file replaced since.
    """
    if url.split(":", 1)[0].lower() not in (POSTGRESQL, "postgres"):
        conn = connect(url)
        try:
            yield conn
        finally:
            conn.close()
        return
    conn = _take(url)
    try:
        yield conn
    except BaseException:
        _close_quietly(conn)
        raise
    _give_back(url, conn)


def _take(url: str) -> Any:
    while True:
        with _idle_lock:
            entries = _idle.get(url)
            if not entries:
                break
            since, conn = entries.pop()
        if time.monotonic() - since < _IDLE_SECONDS and _alive(conn):
            return conn
        _close_quietly(conn)
    return connect(url)


def _alive(conn: Any) -> bool:
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchall()
    except Exception:
        return False
    return True


def _give_back(url: str, conn: Any) -> None:
    global _reaper
    with _idle_lock:
        _idle.setdefault(url, []).append((time.monotonic(), conn))
        _idle_changed.notify()
        if _reaper is None:
            _reaper = threading.Thread(target=_reap, name="sql-idle-connections", daemon=True)
            _reaper.start()


def _reap() -> None:
    """Close kept connections once unused for `_IDLE_SECONDS`; ends when none is kept."""
    global _reaper
    while True:
        with _idle_lock:
            now, expired, nearest = time.monotonic(), [], None
            for url in list(_idle):
                keep = [(s, c) for s, c in _idle[url] if now - s < _IDLE_SECONDS]
                expired += [c for s, c in _idle[url] if now - s >= _IDLE_SECONDS]
                _idle[url] = keep
                if not keep:
                    del _idle[url]
                for since, _ in keep:
                    due = since + _IDLE_SECONDS - now
                    nearest = due if nearest is None else min(nearest, due)
            if nearest is None and not expired:
                _reaper = None
                return
            if not expired:
                # woken early by a give-back, which may come with a new `_IDLE_SECONDS`
                _idle_changed.wait(timeout=max(nearest, 0.01))
        for conn in expired:
            _close_quietly(conn)


def _close_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.close()


def _sqlite_path(url: str) -> str:
    rest = url[len("sqlite:") :]
    if rest in ("", "//", "//:memory:", "///:memory:"):
        return ":memory:"
    if not rest.startswith("///"):
        raise SourceError(f"bad SQLite URL {url!r}: expected sqlite:///relative/path.db")
    path = rest[3:]
    if not os.path.isfile(path):
        raise SourceError(
            f"cannot connect to {url}: no SQLite file at {os.path.abspath(path)} "
            "(sqlite:///rel.db is relative; use sqlite:////abs/path.db for absolute paths)"
        )
    return path


_DIALECTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _dialect(conn) -> str:
    # Asked before nearly every query; adbc_get_info is a driver round trip each time.
    dialect = _DIALECTS.get(conn)
    if dialect is not None:
        return dialect
    vendor = str(conn.adbc_get_info().get("vendor_name", "")).lower()
    if "sqlite" in vendor:
        dialect = SQLITE
    elif "postgres" in vendor:
        dialect = POSTGRESQL
    else:
        raise SourceError(f"unsupported database vendor {vendor!r}")
    _DIALECTS[conn] = dialect
    return dialect


# --- SQL text ------------------------------------------------------------------------


def quote_ident(name: str) -> str:
    if not isinstance(name, str) or not name or "\x00" in name:
        raise SourceError(f"invalid SQL identifier {name!r}")
    return '"' + name.replace('"', '""') + '"'


def _qualified(ref: tuple[str, str]) -> str:
    return f"{quote_ident(ref[0])}.{quote_ident(ref[1])}"


@dataclass(frozen=True)
class _Param:
    value: object


def _check_value(value: object) -> object:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise SourceError(f"unsupported SQL value {value!r}")


def _pg_literal(value: object) -> str:
    value = _check_value(value)
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    if "\x00" in value:
        raise SourceError("PostgreSQL text cannot contain NUL characters")
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _render(parts: Sequence[str | _Param], dialect: str) -> tuple[str, list | None]:
    sql, params = [], []
    for part in parts:
        if not isinstance(part, _Param):
            sql.append(part)
        elif dialect == SQLITE:
            sql.append("?")
            params.append(_check_value(part.value))
        else:
            sql.append(_pg_literal(part.value))
    return "".join(sql), params or None


def _query(conn, parts: Sequence[str | _Param]) -> list[tuple]:
    sql, params = _render(parts, _dialect(conn))
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def _jsonable(value: object) -> object:
    """Watermark values as JSON scalars that `_render` can turn back into SQL."""
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    return value



def _split_table(conn, dialect: str, table: str | Sequence[str]) -> tuple[str, str]:
    """``(schema, table)`` from ``"schema.table"``, ``"table"`` or ``[schema, table]``."""
    if not isinstance(table, str):
        schema, name = table
        return str(schema), str(name)
    if "." in table:
        schema, name = table.split(".", 1)
        return schema, name
    if dialect == SQLITE:
        return "main", table
    rows = _query(
        conn,
        [
            "SELECT n.nspname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n"
            " ON n.oid = c.relnamespace WHERE c.oid = to_regclass(",
            _Param(quote_ident(table)),
            ")",
        ],
    )
    if not rows:
        raise SourceError(f"table not found: {table}")
    return rows[0][0], table
