"""A small, real HTTP API for testing REST connectors (no mocks).

``RestTestServer`` runs a threaded ``http.server`` on 127.0.0.1 with an
ephemeral port and serves ``total`` deterministic records (see
:func:`make_record`) at ``GET /items`` in both pagination styles:

* page style when the query has ``page`` or ``per_page``:
  ``?page=N&per_page=M`` -> ``{"data": [...], "page": N, "total_pages": T}``
* cursor style otherwise: ``?cursor=X&limit=N`` ->
  ``{"data": [...], "next_cursor": "..." | null}`` (no cursor = first page).

Cursors are opaque strings that encode an offset; for counting, a cursor
request belongs to page ``offset // limit + 1``, so ``hits`` is keyed by
1-based page number in both styles and counts *every* request, including the
ones answered with an injected error.

Knobs (each fires for the first ``*_times`` requests of that page only):
``fail_at_page`` answers 500, ``rate_limit_at_page`` answers 429 with
``Retry-After: <retry_after>``.  Every request must carry
``Authorization: Bearer <token>``; the 401 answer deliberately echoes the
header it received, like some real APIs do, so tests can prove that clients
redact it.
"""

from __future__ import annotations

import base64
import json
import math
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["RestTestServer", "make_record"]


def make_record(i: int) -> dict[str, Any]:
    """The i-th record (0-based); stable across runs."""
    return {
        "id": i,
        "name": f"item-{i:05d}",
        "value": round(i * 1.25, 2),
        "active": i % 3 != 0,
        "tags": [f"t{i % 4}"] if i % 2 else [],
    }


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    padded = cursor + "=" * (-len(cursor) % 4)
    text = base64.urlsafe_b64decode(padded.encode()).decode()
    prefix, _, number = text.partition(":")
    if prefix != "offset":
        raise ValueError(cursor)
    return int(number)


class RestTestServer:
    """Context manager: ``with RestTestServer(total=95, token="t") as srv: srv.url, srv.hits``."""

    def __init__(
        self,
        total: int = 100,
        token: str = "test-token",
        *,
        fail_at_page: int | None = None,
        fail_times: int = 1,
        rate_limit_at_page: int | None = None,
        rate_limit_times: int = 1,
        retry_after: float | int = 1,
        max_page_size: int = 1000,
    ) -> None:
        self.total = total
        self.token = token
        self.max_page_size = max_page_size
        self.retry_after = retry_after
        self._lock = threading.RLock()
        self._fail_left: Counter[int] = Counter()
        self._limit_left: Counter[int] = Counter()
        if fail_at_page is not None:
            self._fail_left[fail_at_page] = fail_times
        if rate_limit_at_page is not None:
            self._limit_left[rate_limit_at_page] = rate_limit_times
        self.hits: Counter[int] = Counter()
        self.requests: list[dict[str, Any]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> RestTestServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, headers, body = owner._handle(self.path, self.headers.get("Authorization"))
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"
        # A short poll interval makes shutdown() (which waits for the next poll) fast.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="rest-test-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def reset_hits(self) -> None:
        with self._lock:
            self.hits.clear()
            self.requests.clear()

    # ------------------------------------------------------------------ API

    def _handle(self, raw_path: str, auth: str | None) -> tuple[int, dict[str, str], Any]:
        parts = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if parts.path.rstrip("/") != "/items":
            return self._record(None, 404, {}, {"error": "not found"})
        if auth != f"Bearer {self.token}":
            # Echoing the credential is bad practice on purpose (see module doc).
            return self._record(None, 401, {}, {"error": "unauthorized", "received": auth})
        try:
            if "page" in query or "per_page" in query:
                size = int(query.get("per_page", "10"))
                page = int(query.get("page", "1"))
                offset = (page - 1) * size
            else:
                size = int(query.get("limit", "10"))
                offset = _decode_cursor(query["cursor"]) if "cursor" in query else 0
                page = offset // size + 1 if size > 0 else 0
            if not 1 <= size <= self.max_page_size or page < 1 or offset < 0:
                raise ValueError("out of range")
        except (ValueError, KeyError, UnicodeDecodeError):
            return self._record(None, 400, {}, {"error": "bad pagination parameters"})

        with self._lock:
            if self._limit_left[page] > 0:
                self._limit_left[page] -= 1
                return self._record(
                    page, 429, {"Retry-After": str(self.retry_after)}, {"error": "slow down"}
                )
            if self._fail_left[page] > 0:
                self._fail_left[page] -= 1
                return self._record(page, 500, {}, {"error": "injected failure"})

        data = [make_record(i) for i in range(offset, min(offset + size, self.total))]
        if "page" in query or "per_page" in query:
            body = {"data": data, "page": page, "total_pages": math.ceil(self.total / size)}
        else:
            end = offset + size
            body = {"data": data, "next_cursor": _encode_cursor(end) if end < self.total else None}
        return self._record(page, 200, {}, body)

    def _record(
        self, page: int | None, status: int, headers: dict[str, str], body: Any
    ) -> tuple[int, dict[str, str], Any]:
        with self._lock:
            if page is not None:
                self.hits[page] += 1
            self.requests.append({"page": page, "status": status})
        return status, headers, body
