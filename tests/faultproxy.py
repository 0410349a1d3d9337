"""A fault-injecting HTTP proxy in front of the test S3 server (moto), for store-fault tests.

Clients talk to the proxy as if it were S3 (`endpoint_url=proxy.url`); the proxy forwards each
request to the real server over a fresh connection and may, per request:

- `slowdown`: answer `503 SlowDown` (S3's throttling answer) without forwarding;
- `reset_before`: drop the client's connection without forwarding (nothing was applied);
- `reset_after`: forward, let the server apply the request, then drop the client's connection
  instead of answering (the write happened, its reply is lost: the client's retry of a
  conditional write then meets its own write);
- `delay`: hold the request for `delay_seconds` before forwarding.

Which fault hits which request is decided by `rates` (a probability per fault, drawn from a
seeded RNG, so a failing run can be repeated) and an optional `only(method, path, headers)`
filter; `plan` forces faults for the next matching requests, in order. `injected` counts what
was done, by fault.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable

__all__ = ["FaultProxy"]

FAULTS = ("slowdown", "reset_before", "reset_after", "delay")

_SLOWDOWN = (
    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: %d\r\n"
    b"x-amz-request-id: FAULTPROXY\r\n\r\n%s"
)
_SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class FaultProxy:
    """`with FaultProxy(upstream="http://127.0.0.1:PORT", rates={"slowdown": 0.1}) as p:`."""

    def __init__(
        self,
        upstream: str,
        rates: dict[str, float] | None = None,
        *,
        seed: int = 0,
        delay_seconds: float = 0.2,
        only: Callable[[str, str, dict[str, str]], bool] | None = None,
    ) -> None:
        host_port = upstream.split("://", 1)[-1].rstrip("/")
        host, _, port = host_port.partition(":")
        self.upstream = (host, int(port or 80))
        self.rates = dict(rates or {})
        unknown = set(self.rates) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
        self.rng = random.Random(seed)
        self.delay_seconds = delay_seconds
        self.only = only
        self.plan: list[str] = []
        """Faults forced on the next matching requests, first one first."""
        self.injected: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        """Requests seen, by method."""
        self.enabled = True
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(
                asyncio.start_server(self._client, "127.0.0.1", 0))
            port = self._server.sockets[0].getsockname()[1]
            self.url = f"http://127.0.0.1:{port}"
            ready.set()
            loop.run_forever()
            self._server.close()
            clients = asyncio.all_tasks(loop)  # connections still open: end them in the loop
            for client in clients:
                client.cancel()
            if clients:
                loop.run_until_complete(asyncio.wait(clients))
            loop.run_until_complete(self._server.wait_closed())
            loop.close()

        self._thread = threading.Thread(target=serve, name="fault-proxy", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- decisions -------------------------------------------------------------------------

    def _choose(self, method: str, path: str, headers: dict[str, str]) -> str | None:
        with self._lock:
            self.requests[method] += 1
            if not self.enabled or (self.only is not None and
                                    not self.only(method, path, headers)):
                return None
            if self.plan:
                fault = self.plan.pop(0)
            else:
                fault = None
                for name, rate in self.rates.items():
                    if self.rng.random() < rate:
                        fault = name
                        break
            if fault is not None:
                self.injected[fault] += 1
            return fault

    # -- the proxy -------------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader, writer)
                if request is None:
                    return
                head, body, method, path, headers = request
                fault = self._choose(method, path, headers)
                if fault == "slowdown":  # a HEAD answer has no body, whatever its length says
                    body = b"" if method == "HEAD" else _SLOWDOWN_BODY
                    writer.write(_SLOWDOWN % (len(_SLOWDOWN_BODY), body))
                    await writer.drain()
                    continue
                if fault == "reset_before":
                    _reset(writer)
                    return
                if fault == "delay":
                    await asyncio.sleep(self.delay_seconds)
                response = await self._forward(head, body)
                if fault == "reset_after":
                    _reset(writer)
                    return
                writer.write(response)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            if not writer.is_closing():
                writer.close()

    async def _forward(self, head: bytes, body: bytes) -> bytes:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        try:
            up_writer.write(_with_connection_close(head) + body)
            await up_writer.drain()
            return await up_reader.read()  # the server closes after one response
        finally:
            up_writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0): the client sees a connection reset, not a clean close."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


async def _read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = [*lines[0].split(" ", 2), "", ""][:3]
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if headers.get("expect", "").lower() == "100-continue":  # botocore's PUTs wait for it
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        head = _without_header(head, b"expect:")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
    return head, body, method, path, headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        out += size_line
        size = int(size_line.split(b";")[0].strip(), 16)
        chunk = await reader.readexactly(size + 2)
        out += chunk
        if size == 0:
            return bytes(out)


def _without_header(head: bytes, name: bytes) -> bytes:
    lines = head.split(b"\r\n")
    return b"\r\n".join(line for line in lines if not line.lower().startswith(name))


def _with_connection_close(head: bytes) -> bytes:
    lines = head.split(b"\r\n")
    kept = [line for line in lines[1:] if line and
            not line.lower().startswith((b"connection:", b"keep-alive:"))]
    return b"\r\n".join([lines[0], *kept, b"Connection: close", b"", b""])
