"""The run pages of `connector-runtime serve`, as people use them: over HTTP, and in a real
headless Chromium (Debian's `chromium`, driven over the DevTools protocol: tests/browser.py).

One service for the module (a real uvicorn in a subprocess, token auth, file store, local
driver processes on the session's Ray), serving `tests/apps/observeapp/observe_app.py`. Runs
are started through the API as the UI would; what is checked is what a person sees: the DOM
(one bar per attempt, the failed one marked), the console (no error), the page updating
itself while a run is live, the list's filters, and the token's cookie, which reads pages and
nothing else. Screenshots are written to $CONNECTOR_RUNTIME_TEST_ARTIFACTS (default
`test-artifacts/` in the repository).
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from pathlib import Path

import httpx
import pytest

from storage import RunStore, open_store
from tests.browser import Browser, Page, find_chromium, missing_chromium
from tests.test_service import Service, end_leftovers, start_service, wait_for

REPO = Path(__file__).resolve().parent.parent
APP_DIR = REPO / "tests" / "apps" / "observeapp"
APP_NAME = "ObserveApp"
ARTIFACTS = Path(os.environ.get("CONNECTOR_RUNTIME_TEST_ARTIFACTS", REPO / "test-artifacts"))
XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>"\'&'


def _start_service(tmp: Path, ray_address: str) -> Service:
    return start_service(tmp, env={"RAY_ADDRESS": ray_address}, token=uuid.uuid4().hex,
                         app="observe_app:ObserveApp", app_dir=APP_DIR)


@pytest.fixture(scope="module")
def pages(ray_session, tmp_path_factory):
    svc = _start_service(tmp_path_factory.mktemp("pages"), ray_session)
    yield svc
    svc.stop()
    end_leftovers(svc.marker)


@pytest.fixture
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.fail(missing_chromium())
    return path


def _run(api: httpx.Client, run_id: str, body: dict, wait: bool = True) -> None:
    res = api.post("/workflows/v1/start", params={"run_id": run_id}, json=body)
    assert res.status_code == 200 and res.json()["success"], res.text
    if wait:
        api.get(f"/workflows/v1/result/{run_id}", params={"wait": 120}, timeout=150)


def _journal(store: str, run_id: str) -> list[dict]:
    return RunStore(open_store(store), APP_NAME, run_id).load_journal().records


async def _sign_in(page: Page, svc: Service, path: str) -> None:
    """Open `path`: the service sends the browser to its login form; sign in there."""
    await page.goto(svc.url + path)
    assert await page.eval("location.pathname") == "/login"
    mark = page.events_seen
    await page.eval(f"document.getElementById('token').value = {svc.token!r}; "
                    "document.forms[0].submit(); true")
    await page.wait_load(after=mark)
    assert await page.eval("location.pathname + location.search") == path


# ---- the token -------------------------------------------------------------------------------


def test_pages_take_the_token_once_and_the_cookie_reads_pages_only(pages):
    anonymous = httpx.Client(base_url=pages.url, timeout=30, follow_redirects=False)
    first = anonymous.get("/runs/anything", params={"app": APP_NAME})
    assert first.status_code == 303
    assert first.headers["location"] == "/login?next=%2Fruns%2Fanything%3Fapp%3DObserveApp"
    assert anonymous.get("/").status_code == 303
    assert anonymous.get("/static/run.js").headers["content-type"].startswith("text/javascript")
    assert anonymous.get("/login").status_code == 200

    wrong = anonymous.post("/login", data={"token": "x" * 32, "next": "/"})
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    assert "not the service&#39;s token" in wrong.text or "not the service's token" in wrong.text
    right = anonymous.post("/login", data={"token": pages.token, "next": "//evil.example/x"})
    assert right.status_code == 303 and right.headers["location"] == "/"  # no open redirect
    cookie = right.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Path=/" in cookie and pages.token not in cookie
    name, value = cookie.split(";", 1)[0].split("=", 1)

    browser = httpx.Client(base_url=pages.url, timeout=30, cookies={name: value},
                           follow_redirects=False)
    listing = browser.get("/")
    assert listing.status_code == 200 and listing.headers["content-type"].startswith("text/html")
    csp = listing.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    # the page cookie is not the token: no API route, nothing that changes a run
    for method, path in [("GET", "/workflows/v1/runs"), ("POST", "/workflows/v1/stop/x"),
                         ("POST", "/workflows/v1/start"), ("GET", "/metrics"),
                         ("POST", "/runs/x"), ("GET", "/docs")]:
        res = browser.request(method, path, json={})
        assert res.status_code in (401, 405), (method, path, res.status_code)
        assert res.status_code == 401 or method == "POST"
    forged = httpx.Client(base_url=pages.url, cookies={name: "0" * len(value)}, timeout=30)
    assert forged.get("/", follow_redirects=False).status_code == 303
    bearer = pages.client()
    assert bearer.get("/").status_code == 200  # scripts may read pages with the bearer token


# ---- the list --------------------------------------------------------------------------------


def _listed(html: str) -> list[tuple[str, str]]:
    return re.findall(r'<tr data-run="([^"]+)" data-state="([^"]+)">', html)


def test_list_page_filters_by_state_and_app(pages):
    api = pages.client()
    _run(api, "list-ok", {"sleeps": [0.05]})
    _run(api, "list-bad", {"fail": True})
    everything = dict(_listed(api.get("/").text))
    assert everything["list-ok"] == "COMPLETED" and everything["list-bad"] == "FAILED"
    failed = _listed(api.get("/", params={"state": "FAILED"}).text)
    assert ("list-bad", "FAILED") in failed and all(s == "FAILED" for _r, s in failed)
    assert "list-ok" not in dict(failed)
    done = _listed(api.get("/", params={"state": "completed"}).text)
    assert ("list-ok", "COMPLETED") in done and all(s == "COMPLETED" for _r, s in done)
    assert _listed(api.get("/", params={"app": "NoSuchApp"}).text) == []
    assert ("list-ok", "COMPLETED") in _listed(api.get("/", params={"app": APP_NAME}).text)
    page = api.get("/", params={"state": "FAILED"}).text
    assert '<option value="FAILED" selected>' in page
    missing = api.get("/runs/no-such-run")
    assert missing.status_code == 404 and "no run &#39;no-such-run&#39;" in missing.text
    assert api.get("/runs/-bad").status_code == 422  # not a run id: says so


# ---- one run, in the browser -----------------------------------------------------------------


def test_run_page_of_a_finished_run_with_a_retried_task(pages, chromium):
    api = pages.client()
    _run(api, "page-1", {"sleeps": [0.2, 0.1], "flaky": True, "flaky_message": XSS,
                         "parquet_rows": 500})
    records = _journal(pages.store, "page-1")
    timed = [r for r in records if r.get("y") in ("t", "f", "x") and "ts" in r]
    assert len(timed) == 5  # 2 naps, flaky twice, write_rows

    async def scenario() -> dict:
        async with Browser(chromium) as browser, browser.page() as page:
            await _sign_in(page, pages, "/runs/page-1?app=ObserveApp")
            seen = await page.eval("""(() => {
                const bars = [...document.querySelectorAll('#timeline rect.bar')];
                return {bars: bars.length,
                        failed: bars.filter(b => b.classList.contains('failed'))
                                    .map(b => [b.dataset.t, b.dataset.a, b.dataset.o,
                                               b.dataset.err]),
                        keys: bars.map(b => b.dataset.k + '#' + b.dataset.a),
                        xss: window.__xss === undefined ? null : window.__xss,
                        imgs: document.querySelectorAll('main img').length,
                        tasks: document.querySelector('#tasks').textContent,
                        state: document.getElementById('state').textContent,
                        traceback: document.querySelector('#failures pre').textContent,
                        files: document.querySelector('#files').textContent};
            })()""")
            # hover the failed bar with the mouse: its details show
            box = await page.eval("""(() => {
                const r = document.querySelector('rect.bar.failed').getBoundingClientRect();
                return [r.left + r.width / 2, r.top + r.height / 2]; })()""")
            await page.send("Input.dispatchMouseEvent", type="mouseMoved", x=box[0], y=box[1])
            seen["tip"] = await page.wait_for(
                "!document.getElementById('tip').hidden && "
                "document.getElementById('tip').textContent")
            trace = await page.eval("fetch('/runs/page-1/trace.json?app=ObserveApp')"
                                    ".then(r => r.json()).then(t => t.traceEvents.length)")
            seen["trace_events"] = trace
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(ARTIFACTS / "run-page-finished.png")
            seen["errors"] = page.console_errors
            return seen

    seen = asyncio.run(scenario())
    assert seen["state"] == "COMPLETED"
    assert seen["bars"] == len(timed)  # one bar per attempt
    assert len(set(seen["keys"])) == len(timed)
    (failed,) = seen["failed"]
    assert failed[:3] == ["flaky", "1", "error"] and failed[3] == f"ConnectionError: {XSS}"
    assert "call key flaky:" in seen["tip"] and "attempt 1: error" in seen["tip"]
    assert "ConnectionError" in seen["tip"]
    assert seen["xss"] is None and seen["imgs"] == 0  # the message is text, never markup
    assert XSS in seen["tasks"] and "ConnectionError" in seen["traceback"]
    assert "parquet" in seen["files"] and "transient" in seen["files"]
    assert seen["trace_events"] > len(timed)
    assert seen["errors"] == [], seen["errors"]
    assert (ARTIFACTS / "run-page-finished.png").stat().st_size > 10_000


def test_live_run_page_shows_new_bars_as_tasks_finish_without_a_reload(pages, chromium,
                                                                       tmp_path):
    api = pages.client()
    gate = tmp_path / "gate"
    _run(api, "live-1", {"sleeps": [0.05] * 6, "gate": str(gate), "gate_after": 2}, wait=False)
    wait_for(lambda: sum(1 for r in _journal_or_empty(pages.store, "live-1")
                         if r.get("y") == "t" and r.get("n") == "nap") >= 2, 60,
             "the first two naps")

    async def scenario() -> dict:
        async with Browser(chromium) as browser, browser.page() as page:
            await _sign_in(page, pages, "/runs/live-1?app=ObserveApp")
            before = await page.eval("document.querySelectorAll('rect.bar').length")
            live = await page.eval("document.getElementById('timeline').dataset.live")
            await page.eval("window.__same_page = 42; true")
            gate.write_text("open")
            await page.wait_for("document.getElementById('state').textContent === "
                                "'COMPLETED'", timeout=90)
            after = await page.eval("""(() => ({
                bars: document.querySelectorAll('rect.bar').length,
                naps: [...document.querySelectorAll('#tasks tbody tr')]
                        .filter(r => r.cells[0].textContent === 'nap').length,
                rows: document.querySelectorAll('#tasks tbody tr').length,
                same: window.__same_page, note: document.getElementById('live-note')
                        .textContent}))()""")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(ARTIFACTS / "run-page-live.png")
            return {"before": before, "live": live, "after": after,
                    "errors": page.console_errors}

    seen = asyncio.run(scenario())
    assert seen["live"] == "true" and seen["before"] == 2
    assert seen["after"]["bars"] == 6 and seen["after"]["naps"] == 6
    assert seen["after"]["rows"] == 8  # the naps and on_complete's two cleanups
    assert seen["after"]["same"] == 42  # the same document: no reload
    assert "finished" in seen["after"]["note"]
    assert seen["errors"] == [], seen["errors"]


def _journal_or_empty(store: str, run_id: str) -> list[dict]:
    try:
        return _journal(store, run_id)
    except Exception:
        return []


def _errors(text: str, operation: str) -> float:
    found = re.search(r'connector_runtime_store_request_errors_total\{app="ObserveApp",'
                      rf'operation="{operation}"\}} ([0-9.]+)', text)
    assert found is not None, text
    return float(found.group(1))


def test_metrics_count_attempt_durations_per_task_and_store_errors(pages):
    api = pages.client()
    _run(api, "metrics-1", {"sleeps": [0.05, 0.05, 0.05]})
    text = api.get("/metrics").text
    count = re.search(r'connector_runtime_attempt_duration_seconds_count\{app="ObserveApp",'
                      r'outcome="completed",task="nap"\} ([0-9.]+)', text)
    assert count is not None and float(count.group(1)) >= 3
    api_errors, page_errors = _errors(text, "api"), _errors(text, "page")

    # a run record that no longer decodes: every reader fails on it, and says so
    folder = Path(pages.store) / "runs" / APP_NAME / "broken-1"
    folder.mkdir(parents=True)
    (folder / "run.msgpack").write_bytes(b"\x00not a record")
    assert api.get("/workflows/v1/status/broken-1").status_code == 500
    page = api.get("/runs/broken-1", params={"app": APP_NAME})
    assert page.status_code == 500 and "corrupt" in page.text
    text = api.get("/metrics").text
    assert _errors(text, "api") == api_errors + 1
    assert _errors(text, "page") == page_errors + 1
