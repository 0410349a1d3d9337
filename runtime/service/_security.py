"""The service's guards, as plain ASGI middleware: a bearer token and a bound on bodies.

Both answer in the envelope, before any route runs: a request without the token gets 401
whatever its path (an unknown route does not tell an anonymous caller that it is unknown), a
body past the limit gets 413 without being read further. The token is compared with
`hmac.compare_digest`, in constant time.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["OPEN_PATHS", "BearerTokenGuard", "BodyLimit", "envelope_bytes"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/health", "/ready"})
"""Answered without a token: probes of load balancers and orchestrators carry none."""


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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        given = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                given = value
                break
        if not hmac.compare_digest(given, self.expected):
            why = "missing" if not given else "wrong"
            return await _answer(
                send, 401, f"unauthorized: {why} bearer token (send `Authorization: Bearer "
                "<token>`, the token the service was started with)",
                [(b"www-authenticate", b"Bearer")])
        return await self.app(scope, receive, send)


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
