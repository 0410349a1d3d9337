"""The service's guards, as plain ASGI middleware: a bearer token and a bound on bodies.

Both answer in the envelope, before any route runs: a request without the token gets 401
whatever its path (an unknown route does not tell an anonymous caller that it is unknown), a
body past the limit gets 413 without being read further. The token is compared with
`hmac.compare_digest`, in constant time.

The run pages (`_pages`) are for browsers, which send no Authorization header: `POST /login`
takes the token once from a form and sets a cookie (`PAGE_COOKIE`, HttpOnly, SameSite=Strict)
holding an HMAC of the token, never the token itself. That cookie admits GET and HEAD of the
page paths only (`/`, `/runs/...`): every API route, and anything that changes state, still
needs the bearer token, so a page cookie cannot start or stop a run, and SameSite=Strict keeps
other sites from using it. A browser asking for a page without either is sent to the login
form; `/login` and `/static/` (the pages' own script, styles and icon: no data) are open.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote

__all__ = ["OPEN_PATHS", "PAGE_COOKIE", "BearerTokenGuard", "BodyLimit", "envelope_bytes",
           "is_page_path", "page_session"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/health", "/ready"})
"""Answered without a token: probes of load balancers and orchestrators carry none."""

PAGE_COOKIE = "connector_runtime_pages"
_PAGE_OPEN = frozenset({"/login"})


def page_session(token: str) -> str:
    """The page cookie's value for `token`: an HMAC of it (the cookie never holds the token)."""
    return hmac.new(token.encode(), b"connector-runtime run pages v1", hashlib.sha256).hexdigest()


def is_page_path(path: str) -> bool:
    return path == "/" or path.startswith("/runs/")


def _open_path(path: str) -> bool:
    return path in OPEN_PATHS or path in _PAGE_OPEN or path.startswith("/static/")


def _cookie(headers: Any, name: str) -> bytes:
    for key, value in headers:
        if key == b"cookie":
            for part in value.split(b";"):
                k, _, v = part.strip().partition(b"=")
                if k == name.encode():
                    return v
    return b""


def envelope_bytes(message: str) -> bytes:
    return json.dumps({"success": False, "message": message, "data": None},
                      separators=(",", ":")).encode()


async def _answer(send: Send, status: int, message: str,
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = envelope_bytes(message)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class BearerTokenGuard:
    """`Authorization: Bearer <token>` on every path but OPEN_PATHS."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.session = page_session(token).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _open_path(scope["path"]):
            return await self.app(scope, receive, send)
        given = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                given = value
                break
        if not hmac.compare_digest(given, self.expected):
            if scope.get("method") in ("GET", "HEAD") and is_page_path(scope["path"]):
                cookie = _cookie(scope.get("headers", ()), PAGE_COOKIE)
                if cookie and hmac.compare_digest(cookie, self.session):
                    return await self.app(scope, receive, send)
                if not given:
                    return await _to_login(scope, send)
            why = "missing" if not given else "wrong"
            return await _answer(
                send, 401, f"unauthorized: {why} bearer token (send `Authorization: Bearer "
                "<token>`, the token the service was started with)",
                [(b"www-authenticate", b"Bearer")])
        return await self.app(scope, receive, send)


async def _to_login(scope: Scope, send: Send) -> None:
    """A browser's page request without credentials: to the login form, coming back after."""
    target = scope["path"] + (f"?{scope['query_string'].decode('latin-1')}"
                              if scope.get("query_string") else "")
    location = f"/login?next={quote(target, safe='')}".encode()
    body = b"sign in first: " + location
    await send({"type": "http.response.start", "status": 303, "headers": [
        (b"location", location), (b"content-type", b"text/plain"),
        (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Refuse bodies over `limit` bytes with 413, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def _too_large(self) -> str:
        return (f"request body too large: the limit is {self.limit:,} bytes (the service's "
                "--max-body-bytes)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                if not value.isdigit():
                    return await _answer(send, 400, "malformed Content-Length header")
                if int(value) > self.limit:
                    return await _answer(send, 413, self._too_large())
        # Read the body here (at most limit + one chunk), then replay it: a chunked body
        # without a length is cut off as soon as it passes the limit.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await _answer(send, 413, self._too_large())
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for a disconnect, as Starlette does

        return await self.app(scope, replay, send)
