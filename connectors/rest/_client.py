"""Paginated REST reads for connector tasks: fetch a page, iterate with resumable positions.

Design choices:

* Standard library only (``http.client``): no new dependency, and -- unlike
  ``urllib.request`` -- no automatic redirects (urllib re-sends the
  ``Authorization`` header to whatever host a redirect names) and no
  environment proxies.  A 3xx is reported as a non-retryable :class:`HTTPError`.
* The bearer token is read from the environment variable *named* by
  ``token_env`` at request time; the value is never an argument, so it never
  lands in task arguments, checkpoints or Ray's task table.  It is never put in
  URLs, return values, log records or exception messages; response bodies
  quoted in errors are redacted (some APIs echo the credentials they got).
* Errors form one hierarchy with a class attribute ``retryable`` so a task
  wrapper can decide without parsing messages:

  ====================== ========= ===============================================
  class                  retryable raised for
  ====================== ========= ===============================================
  HTTPError              False     4xx (not 408/429), 3xx; base class
  ResponseFormatError    False     2xx whose body is not the expected JSON shape
  MissingTokenError      False     ``token_env`` names an unset/empty variable
  TransientHTTPError     True      5xx, 408, connection errors and timeouts
  RateLimitedError       True      429 still answered after ``max_tries`` tries,
                                   or a ``Retry-After`` above ``max_wait``
  ====================== ========= ===============================================

  All carry ``status`` (None without a response), ``path``, ``retry_after``
  (seconds, for 429) and ``position`` (set by :func:`iter_pages`: where to
  resume).  They pickle cleanly (Ray ships exceptions between processes).
* 429 is retried *inside* :func:`fetch_page` (the server said exactly when to
  come back), sleeping ``Retry-After`` seconds -- or exponential backoff when
  the header is absent -- but never longer than ``max_wait`` per sleep.  5xx is
  not retried here: the caller (a task with retries) owns that policy.
* :func:`records_to_parquet` spools records to a local JSON Lines temp file
  and converts it with :mod:`connectors.files`, so memory stays bounded, the
  schema is inferred from *all* records (a field that is null on page 1 and a
  string on page 9 is a string), and the JSON typing rules are identical to
  file ingestion.  Output is written atomically.
* Positions are JSON scalars: the next cursor (str) or the next page number
  (int) to fetch.  ``None`` means "nothing left" -- do not pass it back as a
  start position, which means "from the beginning".
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import os
import random
import re
import ssl
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import pyarrow as pa

from connectors.files import convert_file, infer_schema

__all__ = [
    "HTTPError",
    "MissingTokenError",
    "RateLimitedError",
    "ResponseFormatError",
    "TransientHTTPError",
    "fetch_page",
    "iter_pages",
    "records_to_parquet",
]

log = logging.getLogger(__name__)

STYLES = ("cursor", "page")
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_TRIES = 4
DEFAULT_MAX_WAIT = 30.0
_BODY_SNIPPET = 200
_BEARER_RE = re.compile(r"(?i)(bearer\s+)[^\s\"',;]+")


class HTTPError(Exception):
    """A request failed; ``retryable`` says whether trying again can help."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        path: str | None = None,
        retry_after: float | None = None,
        position: Any = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.path = path
        self.retry_after = retry_after
        self.position = position

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only attributes would be lost by the default exception pickling.
        return (
            _rebuild_error,
            (type(self), self.args[0], self.status, self.path, self.retry_after, self.position),
        )


def _rebuild_error(cls: type[HTTPError], message: str, status, path, retry_after, position):
    return cls(message, status=status, path=path, retry_after=retry_after, position=position)


class TransientHTTPError(HTTPError):
    retryable = True


class RateLimitedError(TransientHTTPError):
    retryable = True


class ResponseFormatError(HTTPError):
    retryable = False


class MissingTokenError(HTTPError):
    retryable = False


# --------------------------------------------------------------------------- helpers


def _read_token(token_env: str | None) -> str | None:
    if token_env is None:
        return None
    token = os.environ.get(token_env, "")
    if not token:
        # Names the variable, never a value.  A retry cannot fix this: the
        # variable must be set in the worker's environment (Ray runtime_env).
        raise MissingTokenError(f"environment variable {token_env!r} is not set or empty")
    return token


def _redact(text: str, token: str | None) -> str:
    if token:
        # Also the forms a server may echo it in: JSON-escaped and URL-quoted.
        for form in {token, json.dumps(token)[1:-1], quote(token, safe="")}:
            text = text.replace(form, "[REDACTED]")
    return _BEARER_RE.sub(r"\1[REDACTED]", text)


def _snippet(body: bytes, token: str | None) -> str:
    text = body[: _BODY_SNIPPET * 4].decode("utf-8", errors="replace")
    text = _redact(" ".join(text.split()), token)
    return text[:_BODY_SNIPPET] + ("..." if len(text) > _BODY_SNIPPET else "")


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _query(style: str, cursor: str | None, page: int | None, page_size: int, params) -> dict:
    query = dict(params or {})
    if style == "cursor":
        if cursor is not None:
            query["cursor"] = cursor
        query["limit"] = page_size
    else:
        query["page"] = 1 if page is None else page
        query["per_page"] = page_size
    return query


def _get(
    base_url: str, target: str, token: str | None, timeout: float
) -> tuple[int, Mapping[str, str], bytes]:
    parts = urlsplit(base_url)
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    headers = {"Accept": "application/json", "User-Agent": "connector-runtime-rest/1"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request("GET", target, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def _validate(base_url: str, style: str, page_size: int) -> None:
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if page_size < 1:
        raise ValueError("page_size must be >= 1")
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("base_url must be an http(s) URL with a host")
    if parts.username or parts.password:
        # Not echoed: the URL itself holds the secret.
        raise ValueError("credentials in base_url are not allowed; use token_env")


# --------------------------------------------------------------------------- public API


def fetch_page(
    base_url: str,
    path: str,
    *,
    style: str,
    cursor: str | None = None,
    page: int | None = None,
    page_size: int,
    token_env: str | None = None,
    params: Mapping[str, Any] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_tries: int = DEFAULT_MAX_TRIES,
    max_wait: float = DEFAULT_MAX_WAIT,
) -> dict[str, Any]:
    """GET one page of records.

    ``style="cursor"`` sends ``?cursor=X&limit=N`` (no cursor on the first
    page) and expects ``{"data": [...], "next_cursor": str | null}``;
    ``style="page"`` sends ``?page=N&per_page=M`` (``page`` defaults to 1) and
    expects ``{"data": [...], "page": N, "total_pages": T}``.  ``params`` are
    extra query parameters (filters).

    Returns ``{"records": [...], "next_cursor": str | None}`` or
    ``{"records": [...], "next_page": int | None}``; None means last page.
    Raises the :class:`HTTPError` family (see module docstring).
    """
    _validate(base_url, style, page_size)
    token = _read_token(token_env)
    query = _query(style, cursor, page, page_size, params)
    prefix = urlsplit(base_url).path.rstrip("/")
    shown = "/" + path.lstrip("/")
    target = f"{prefix}{shown}?{urlencode(query)}"
    # Cursors and page numbers are not secrets; shown in messages for triage.
    shown = f"{shown}?{urlencode(query)}"

    for attempt in range(1, max_tries + 1):
        try:
            status, headers, body = _get(base_url, target, token, timeout)
        except (OSError, http.client.HTTPException) as exc:
            raise TransientHTTPError(
                f"GET {shown}: {type(exc).__name__}: {_redact(str(exc), token)}", path=shown
            ) from None
        log.debug("GET %s -> %s", shown, status)

        if status == 429:
            retry_after = _parse_retry_after(headers.get("retry-after"))
            wait = retry_after
            if wait is None:
                wait = min(max_wait, 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
            if attempt >= max_tries or wait > max_wait:
                raise RateLimitedError(
                    f"GET {shown}: HTTP 429 rate limited after {attempt} tries"
                    + (f" (Retry-After {retry_after:g}s)" if retry_after is not None else ""),
                    status=429,
                    path=shown,
                    retry_after=wait,
                ) from None
            log.info("GET %s: rate limited, retrying in %.1fs (try %d)", shown, wait, attempt)
            time.sleep(wait)
            continue

        if 200 <= status < 300:
            return _parse(style, page, body, shown, token)

        detail = _snippet(body, token)
        message = f"GET {shown}: HTTP {status}" + (f": {detail}" if detail else "")
        if status >= 500 or status == 408:
            raise TransientHTTPError(message, status=status, path=shown)
        if 300 <= status < 400:
            message += " (redirects are not followed, so the token is never forwarded)"
        elif status in (401, 403):
            message += (
                f" (check the token in {token_env!r})" if token_env else " (no token_env set)"
            )
        raise HTTPError(message, status=status, path=shown)

    raise AssertionError("unreachable")  # the loop always returns or raises


def _parse(style: str, page: int | None, body: bytes, shown: str, token: str | None) -> dict:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ResponseFormatError(
            f"GET {shown}: response is not JSON: {_snippet(body, token)}", status=200, path=shown
        ) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise ResponseFormatError(
            f"GET {shown}: expected an object with a 'data' list", status=200, path=shown
        )
    records = payload["data"]
    if style == "cursor":
        nxt = payload.get("next_cursor")
        return {"records": records, "next_cursor": None if nxt in (None, "") else str(nxt)}
    current = payload.get("page", 1 if page is None else page)
    total = payload.get("total_pages")
    if isinstance(current, int) and isinstance(total, int):
        next_page = current + 1 if current < total else None
    else:
        # No total: keep going until an empty page.
        next_page = (current + 1) if records and isinstance(current, int) else None
    return {"records": records, "next_page": next_page}


def iter_pages(
    base_url: str,
    path: str,
    *,
    style: str,
    page_size: int,
    token_env: str | None = None,
    start_cursor: str | None = None,
    start_page: int | None = None,
    max_pages: int | None = None,
    **fetch_kwargs: Any,
) -> Iterator[tuple[list[Any], str | int | None]]:
    """Yield ``(records, position)`` per page; ``position`` is where to resume.

    Checkpoint ``position`` after handling each page (e.g. in heartbeat
    details); pass it back as ``start_cursor`` / ``start_page`` to continue
    with the next page.  ``position`` None means the stream is exhausted.
    ``max_pages`` stops early (the last position yielded is then the resume
    point), which lets ``run()`` split a long stream into bounded tasks.

    On failure the raised :class:`HTTPError` has ``position`` set to the page
    that failed, which is also a valid resume point.
    """
    _validate(base_url, style, page_size)
    position: str | int | None = start_cursor if style == "cursor" else (start_page or 1)
    fetched = 0
    while max_pages is None or fetched < max_pages:
        try:
            result = fetch_page(
                base_url,
                path,
                style=style,
                cursor=position if style == "cursor" else None,
                page=position if style == "page" else None,
                page_size=page_size,
                token_env=token_env,
                **fetch_kwargs,
            )
        except HTTPError as exc:
            exc.position = position
            raise
        fetched += 1
        nxt = result["next_cursor"] if style == "cursor" else result["next_page"]
        if nxt is not None and nxt == position:
            raise ResponseFormatError(
                f"GET {path}: pagination did not advance (position {position!r})",
                path=path,
                position=position,
            )
        yield result["records"], nxt
        if nxt is None:
            return
        position = nxt


def records_to_parquet(
    records_iter: Iterable[Mapping[str, Any] | list[Mapping[str, Any]]],
    dest_path: str,
    *,
    schema: pa.Schema | Mapping[str, Any] | None = None,
    max_rejected: int = 1000,
) -> dict[str, Any]:
    """Write records to one Parquet file (local path or fsspec URL).

    ``records_iter`` yields records (dicts) or lists of records (e.g. the
    ``records`` of each page).  Without ``schema`` the types are inferred from
    all records (nested values become JSON text).  Returns ``{"rows",
    "bytes", "path", "rejected", "rejected_count"}``; rows are only rejected
    when an explicit ``schema`` does not fit them, and a rejection's ``line``
    is then the 1-based record number.
    """
    with tempfile.NamedTemporaryFile("wb", suffix=".jsonl", delete=False) as spool:
        spool_path = spool.name
    try:
        with open(spool_path, "wb") as out:
            for item in records_iter:
                batch = [item] if isinstance(item, Mapping) else item
                for record in batch:
                    if not isinstance(record, Mapping):
                        raise TypeError(
                            "records_to_parquet expects dicts or lists of dicts, got "
                            f"{type(record).__name__} (pass the records, not (records, position))"
                        )
                    line = json.dumps(record, ensure_ascii=False, default=str)
                    out.write(line.encode("utf-8") + b"\n")
        target = infer_schema(spool_path) if schema is None else schema
        result = convert_file(spool_path, target, dest_path, max_rejected=max_rejected)
        if result["error"]:
            raise ValueError(f"no record fits the schema: {result['error']}")
        return {
            "rows": result["rows"],
            "bytes": result["bytes"],
            "path": result["output"],
            "rejected": result["rejected"],
            "rejected_count": result["rejected_count"],
        }
    finally:
        os.unlink(spool_path)
