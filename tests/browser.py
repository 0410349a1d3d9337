"""A real headless Chromium driven over the DevTools protocol, for the run pages' tests.

Debian's `chromium` (`scripts/test` installs it when run as root) is started with a fresh
profile and `--remote-debugging-port=0`; the port it chose is read from the profile's
`DevToolsActivePort` file, and one page target is spoken to over its WebSocket with aiohttp's
client (aiohttp comes with ray[default]: no new dependency, no browser download). What a test
sees: the DOM through `Runtime.evaluate`, every console error and uncaught exception
(`Runtime.consoleAPICalled`, `Runtime.exceptionThrown`, `Log.entryAdded`), screenshots
(`Page.captureScreenshot`), and load timings.

`find_chromium()` says where the browser is, or None; tests that need it fail (not skip) when
it is missing, with the command that installs it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["FLAGS", "Browser", "Page", "find_chromium", "missing_chromium"]

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def missing_chromium() -> str:
    return ("Chromium is not installed: `apt-get install -y chromium` (scripts/test does it when "
            "run as root)")


class Page:
    """One page target: commands, events, and the console errors seen so far."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._events: list[dict[str, Any]] = []
        self._event = asyncio.Event()
        self.console_errors: list[str] = []
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            if "id" in data:
                future = self._waiting.pop(data["id"], None)
                if future is not None and not future.done():
                    if "error" in data:
                        future.set_exception(RuntimeError(f"CDP error: {data['error']}"))
                    else:
                        future.set_result(data.get("result", {}))
                continue
            self._note(data)
            self._events.append(data)
            self._event.set()

    def _note(self, event: dict[str, Any]) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.console_errors.append(" ".join(str(a.get("value", a.get("description", "")))
                                                for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.console_errors.append(details.get("exception", {}).get("description")
                                       or details.get("text", "exception"))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.console_errors.append(f"{entry.get('text')} ({entry.get('url', '')})")

    async def send(self, method: str, **params: Any) -> Any:
        ident = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        await self.ws.send_str(json.dumps({"id": ident, "method": method, "params": params}))
        return await asyncio.wait_for(future, 60)

    async def wait_event(self, method: str, timeout: float = 30, after: int = 0) -> dict:
        """The first event `method` at index >= `after` of the events seen."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self._events[after:]:
                if event.get("method") == method:
                    return event
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {method} within {timeout} s")
            self._event.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._event.wait(), left)

    async def goto(self, url: str, timeout: float = 60) -> float:
        """Navigate and wait for the load event; returns the seconds it took."""
        mark = len(self._events)
        started = time.perf_counter()
        await self.send("Page.navigate", url=url)
        await self.wait_event("Page.loadEventFired", timeout, after=mark)
        return time.perf_counter() - started

    async def wait_load(self, timeout: float = 60, after: int = 0) -> None:
        await self.wait_event("Page.loadEventFired", timeout, after=after)

    @property
    def events_seen(self) -> int:
        return len(self._events)

    async def eval(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                                 awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluating {expression!r}: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = await self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} still false after {timeout} s")
            await asyncio.sleep(0.1)

    async def screenshot(self, path: Path) -> Path:
        data = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


class Browser:
    """`async with Browser() as browser: async with browser.page() as page: ...`"""

    def __init__(self, executable: str | None = None, width: int = 1400,
                 height: int = 1000) -> None:
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise RuntimeError(missing_chromium())
        self.size = (width, height)
        self.proc: subprocess.Popen | None = None
        self.profile = ""
        self.port = 0
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Browser:
        self.profile = tempfile.mkdtemp(prefix="chromium-test-")
        self.proc = subprocess.Popen(
            [self.executable, *FLAGS, f"--user-data-dir={self.profile}",
             "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
             f"--window-size={self.size[0]},{self.size[1]}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        active = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (active.exists() and active.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                await self.__aexit__(None, None, None)
                raise RuntimeError("chromium did not open its DevTools port within 30 s")
            await asyncio.sleep(0.05)
        self.port = int(active.read_text().split()[0])
        self.session = aiohttp.ClientSession()
        return self

    @contextlib.asynccontextmanager
    async def page(self) -> AsyncIterator[Page]:
        assert self.session is not None
        async with self.session.put(f"http://127.0.0.1:{self.port}/json/new?about:blank") as r:
            target = await r.json(content_type=None)
        ws = await self.session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        page = Page(ws)
        try:
            for domain in ("Page", "Runtime", "Log"):
                await page.send(f"{domain}.enable")
            yield page
        finally:
            await page.close()
            with contextlib.suppress(Exception):
                async with self.session.get(
                        f"http://127.0.0.1:{self.port}/json/close/{target['id']}"):
                    pass

    async def __aexit__(self, *exc: Any) -> None:
        if self.session is not None:
            await self.session.close()
        if self.proc is not None:
            # its own session: the group is chromium and the helpers it started, nothing else
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.profile:
            shutil.rmtree(self.profile, ignore_errors=True)
