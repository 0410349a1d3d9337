"""`connector-runtime serve` as users run it: a real uvicorn on a free port, spoken to over HTTP.

The service is a subprocess (`python -m runtime serve service_app:ServiceApp ...`, working dir
`tests/apps/serviceapp/`), its stdout and stderr captured to a file; its runs are driver
processes attached to the session's Ray (`--launcher process` with RAY_ADDRESS), or Ray jobs
on a real `ray start --head` (`ray_head`). What the tests check lives outside the service: the
HTTP answers, the store, the marker files the app's tasks write (one per task execution), the
processes. Every process a service starts carries a marker variable in its environment, so a
test's leftovers are found and ended by pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgpack
import pytest
from prometheus_client.parser import text_string_to_metric_families

from storage import RunRecord, RunStatus, RunStore, open_store
from tests.services import free_port, pids_with_env

REPO = Path(__file__).resolve().parent.parent
APP_DIR = REPO / "tests" / "apps" / "serviceapp"
APP = "service_app:ServiceApp"
APP_NAME = "ServiceApp"
MARKER_VAR = "CONNECTOR_RUNTIME_TEST_SERVICE"
SECRET = f"pw-{uuid.uuid4().hex}"  # the handler's password: must appear nowhere


# ---- the service as a process ---------------------------------------------------------------


@dataclass
class Service:
    url: str
    proc: subprocess.Popen
    out_path: Path
    store: str
    log_dir: Path
    token: str | None
    marker: str
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, token: str | None = "default", timeout: float = 60) -> httpx.Client:
        token = self.token if token == "default" else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self.clients.append(client)
        return client

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited {self.proc.returncode}:\n{self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise AssertionError(f"service not healthy within {timeout} s:\n{self.output()}")

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def marked_pids(marker: str) -> list[int]:
    """Live processes whose environment carries MARKER_VAR=marker (a service's drivers)."""
    return pids_with_env(MARKER_VAR, marker, zombies=False)


def start_service(tmp: Path, *, store: str | None = None, env: dict[str, str] | None = None,
                  args: tuple[str, ...] = ("--launcher", "process"), token: str | None = None,
                  marker: str | None = None, app: str = APP, app_dir: Path = APP_DIR) -> Service:
    port = free_port()
    marker = marker or uuid.uuid4().hex
    store = store or str(tmp / "store")
    log_dir = tmp / f"driver-logs-{port}"
    full_env = {**os.environ, "PYTHONPATH": str(REPO), MARKER_VAR: marker,
                "SERVICE_APP_PASSWORD": SECRET, **(env or {})}
    full_env.pop("CONNECTOR_RUNTIME_API_TOKEN", None)
    if token:
        full_env["CONNECTOR_RUNTIME_API_TOKEN"] = token
    out_path = tmp / f"service-{port}.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runtime", "serve", app, "--port", str(port), "--store",
             store, "--log-dir", str(log_dir), *args],
            cwd=app_dir, env=full_env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)
    service = Service(f"http://127.0.0.1:{port}", proc, out_path, store, log_dir, token, marker)
    try:
        service.wait_healthy()
    except BaseException:
        service.stop()
        raise
    return service


def end_leftovers(marker: str) -> None:
    for pid in marked_pids(marker):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def service(ray_session, tmp_path_factory):
    """One service for the module: token auth, file store, local drivers on the session Ray."""
    tmp = tmp_path_factory.mktemp("service")
    svc = start_service(tmp, env={"RAY_ADDRESS": ray_session}, token=uuid.uuid4().hex)
    yield svc
    svc.stop()
    end_leftovers(svc.marker)


@pytest.fixture
def api(service) -> httpx.Client:
    return service.client()


@pytest.fixture
def spawn(ray_session, tmp_path):
    """Start more services (each its own process); all are stopped, and their drivers ended,
    at the end of the test."""
    started: list[Service] = []

    def make(**kwargs) -> Service:
        kwargs.setdefault("env", {"RAY_ADDRESS": ray_session})
        svc = start_service(tmp_path, **kwargs)
        started.append(svc)
        return svc

    yield make
    for svc in started:
        svc.stop()
    for marker in {s.marker for s in started}:
        end_leftovers(marker)


# ---- helpers --------------------------------------------------------------------------------


def markers(folder: Path) -> Counter:
    """Executions of `square` per index (one marker file each)."""
    if not folder.exists():
        return Counter()
    return Counter(json.loads(p.read_text())["index"] for p in folder.glob("*.json"))


def first_marker_time(folder: Path) -> float | None:
    times = [json.loads(p.read_text())["t"] for p in folder.glob("*.json")] \
        if folder.exists() else []
    return min(times) if times else None


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def start(api: httpx.Client, body: dict, **params) -> dict:
    res = api.post("/workflows/v1/start", params=params, json=body)
    assert res.status_code == 200, res.text
    answer = res.json()
    assert answer["success"] is True, answer
    return answer["data"]


def result(api: httpx.Client, run_id: str, wait: float = 120) -> httpx.Response:
    return api.get(f"/workflows/v1/result/{run_id}", params={"wait": wait},
                   timeout=wait + 30)


def store_run(store: str, run_id: str) -> RunRecord | None:
    return RunStore(open_store(store), APP_NAME, run_id).read_run()


def all_bytes(folder: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in folder.rglob("*") if p.is_file()]


# ---- probes, auth, envelope ----------------------------------------------------------------


ROUTES = [("GET", "/workflows/v1/runs"), ("GET", "/workflows/v1/status/x"),
          ("POST", "/workflows/v1/start"), ("POST", "/workflows/v1/stop/x"),
          ("GET", "/workflows/v1/result/x"), ("POST", "/workflows/v1/auth"),
          ("POST", "/workflows/v1/check"), ("POST", "/workflows/v1/metadata"),
          ("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/nowhere")]


def test_health_and_ready_are_open_every_other_route_needs_the_token(service):
    anonymous = service.client(token=None)
    assert anonymous.get("/health").json() == {"success": True, "message": "ok",
                                               "data": {"status": "ok"}}
    ready = anonymous.get("/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["data"] == {"store": {"ok": True}, "ray": {"ok": True},
                                    "launcher": "process"}
    wrong = service.client(token="x" * len(service.token))
    for method, path in ROUTES:
        for client in (anonymous, wrong):
            res = client.request(method, path, json={})
            assert res.status_code == 401, (method, path, res.text)
            body = res.json()
            assert body["success"] is False and body["data"] is None
            assert "bearer token" in body["message"]
            assert res.headers["www-authenticate"] == "Bearer"


def test_openapi_page_unknown_routes_and_methods_answer_in_the_envelope(api):
    spec = api.get("/openapi.json").json()
    assert {"/workflows/v1/start", "/workflows/v1/auth", "/workflows/v1/status/{run_id}",
            "/health", "/ready", "/metrics"} <= set(spec["paths"])
    assert {"AuthInput", "HandlerCredential", "SquaresInput", "QueriesInput"} <= set(
        spec["components"]["schemas"])
    assert "swagger" in api.get("/docs").text.lower()
    missing = api.get("/workflows/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.json() == {"success": False, "data": None,
                              "message": "no route GET /workflows/v1/nothing-here (the routes: "
                              "/docs)"}
    wrong_method = api.get("/workflows/v1/start")
    assert wrong_method.status_code == 405 and wrong_method.json()["success"] is False


# ---- handler routes -------------------------------------------------------------------------


def test_auth_route_success_401_and_422(api):
    ok = api.post("/workflows/v1/auth", json={"credentials": [
        {"key": "username", "value": "ann"}, {"key": "password", "value": SECRET}]})
    assert ok.status_code == 200, ok.text
    assert ok.json()["data"]["status"] == "success"
    assert ok.json()["data"]["identities"] == ["ann"]
    # curl -d sends a form Content-Type: the body is JSON all the same
    denied = api.post("/workflows/v1/auth", content=json.dumps(
        {"credentials": {"username": "ann", "password": "wrong"}}),
        headers={"content-type": "application/x-www-form-urlencoded"})
    assert denied.status_code == 401
    assert denied.json() == {"success": False, "message": "user ann: wrong password",
                             "data": {"status": "invalid_credentials", "message":
                                      "user ann: wrong password", "identities": [],
                                      "scopes": [], "expires_at": ""}}
    bad = api.post("/workflows/v1/auth", json={"connection_id": "c"})
    assert bad.status_code == 422
    assert bad.json()["message"] == "invalid AuthInput: field 'credentials': Field required"
    bad = api.post("/workflows/v1/auth", json={"credentials": [], "timeout_seconds": -1})
    assert bad.status_code == 422 and "'timeout_seconds'" in bad.json()["message"]


def test_check_route_ready_and_not_ready_with_the_failed_checks(api):
    body = {"credentials": {"password": SECRET}, "connection_config": {"schema": "sales"}}
    ready = api.post("/workflows/v1/check", json=body)
    assert ready.status_code == 200 and ready.json()["success"] is True
    assert ready.json()["data"]["status"] == "READY"
    body["connection_config"]["schema"] = "nope"
    not_ready = api.post("/workflows/v1/check", json=body)
    assert not_ready.status_code == 200
    answer = not_ready.json()
    assert answer["success"] is False and answer["data"]["status"] == "NOT_READY"
    assert [c["name"] for c in answer["data"]["failed_checks"]] == ["schema_exists"]
    assert [c["passed"] for c in answer["data"]["checks"]] == [True, False]
    only = api.post("/workflows/v1/check", json={**body, "checks_to_run": ["connect"]})
    assert only.json()["success"] is True and len(only.json()["data"]["checks"]) == 1


def test_metadata_route_answers_sql_objects(api):
    res = api.post("/workflows/v1/metadata", json={
        "credentials": [], "connection_config": {}, "object_filter": "s"})
    assert res.status_code == 200
    assert res.json()["data"] == {"objects": [{"TABLE_CATALOG": "demo", "TABLE_SCHEMA": "sales"}]}
    capped = api.post("/workflows/v1/metadata", json={
        "credentials": [], "connection_config": {}, "max_objects": 1})
    assert capped.json()["message"] == "1 of 3 object(s) (max_objects)"
    assert len(capped.json()["data"]["objects"]) == 1
    missing = api.post("/workflows/v1/metadata", json={"credentials": []})
    assert missing.status_code == 422 and "'connection_config'" in missing.json()["message"]


def test_a_blocking_handler_times_out_and_the_service_keeps_answering(service, api):
    health_times: list[float] = []

    def probe() -> None:
        for _ in range(5):
            t0 = time.monotonic()
            assert httpx.get(service.url + "/health", timeout=5).status_code == 200
            health_times.append(time.monotonic() - t0)
            time.sleep(0.2)

    prober = threading.Thread(target=probe)
    t0 = time.monotonic()
    prober.start()
    res = api.post("/workflows/v1/auth", json={"credentials": {"mode": "block"},
                                               "timeout_seconds": 1})
    took = time.monotonic() - t0
    prober.join()
    assert res.status_code == 504, res.text
    assert res.json()["message"] == "test_auth did not answer within 1 s (timeout_seconds)"
    assert took < 4, took
    assert max(health_times) < 1.0, health_times  # the event loop was never blocked


def test_handler_errors_answer_500_without_traceback_or_credential(service, api):
    res = api.post("/workflows/v1/auth", json={"credentials": {
        "username": "ann", "password": SECRET, "mode": "raise"}})
    assert res.status_code == 500
    assert res.json()["message"] == ("test_auth failed: ConnectionError: login of *** with "
                                     "password *** refused")
    assert "Traceback" not in res.text and SECRET not in res.text
    wait_for(lambda: "handler ServiceAppHandler.test_auth raised" in service.output(), 5,
             "the traceback in the service's log")
    assert "Traceback (most recent call last)" in service.output()
    bad = api.post("/workflows/v1/auth", json={"credentials": {"mode": "bad-output"}})
    assert bad.status_code == 500
    assert bad.json()["message"].startswith("test_auth returned an invalid AuthOutput: status:")


def test_bodies_over_the_limit_413_malformed_ones_422(api):
    big = b'{"credentials": [], "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    res = api.post("/workflows/v1/auth", content=big)
    assert res.status_code == 413
    assert res.json()["message"].startswith("request body too large: the limit is 1,048,576")

    def chunks():  # no Content-Length: cut off while streaming
        for _ in range(64):
            yield b"x" * 65536

    res = api.post("/workflows/v1/start", content=chunks())
    assert res.status_code == 413 and res.json()["success"] is False
    res = api.post("/workflows/v1/auth", content=b'{"credentials": [')
    assert res.status_code == 422 and res.json()["message"] == \
        "body: malformed JSON at line 1 column 18"
    res = api.post("/workflows/v1/start", content=b"[1, 2]")
    assert res.status_code == 422 and "must be a JSON object, got list" in res.json()["message"]


# ---- runs ------------------------------------------------------------------------------------


def test_start_status_result_of_a_gathered_run(service, api, tmp_path, cli):
    folder = tmp_path / "markers"
    data = start(api, {"marker_dir": str(folder), "n": 6}, run_id="gathered-1")
    assert data["workflow_id"] == data["run_id"] == "gathered-1"
    assert data["launched"] is True and data["driver"]["kind"] == "process"
    early = api.get("/workflows/v1/status/gathered-1").json()
    assert early["success"] is True
    assert early["data"]["state"] in ("PENDING", "RUNNING", "COMPLETED")

    res = result(api, "gathered-1")
    assert res.status_code == 200, res.text
    assert res.json() == {"success": True, "message": "run gathered-1 COMPLETED",
                          "data": {"count": 6, "total": 55}}
    assert markers(folder) == Counter(range(6))  # every task ran once

    status = api.get("/workflows/v1/status/gathered-1").json()["data"]
    shown = cli("status", "gathered-1", "--store", service.store, "--json")
    assert shown.code == 0, shown.stderr
    assert {k: v for k, v in status.items() if k != "workflow_id"} == json.loads(shown.stdout)
    assert status["state"] == "COMPLETED" and status["tasks_done"] == 8  # + 2 cleanup tasks
    listed = api.get("/workflows/v1/runs", params={"state": "completed"}).json()["data"]
    assert "gathered-1" in [r["run_id"] for r in listed]
    assert all(r["status"] == "COMPLETED" for r in listed)
    again = start(api, {"marker_dir": str(folder), "n": 6}, run_id="gathered-1")
    assert again == {"workflow_id": "gathered-1", "run_id": "gathered-1", "state": "COMPLETED",
                     "launched": False}
    assert markers(folder) == Counter(range(6))


def test_bad_input_answers_422_naming_the_field_and_writes_nothing(service, api):
    before = sorted(service.log_dir.glob("*")) if service.log_dir.exists() else []
    res = api.post("/workflows/v1/start", params={"run_id": "bad-1"}, json={"n": "many"})
    assert res.status_code == 422
    message = res.json()["message"]
    assert message.startswith("invalid input for SquaresInput:")
    assert "field 'marker_dir': Field required" in message and "field 'n'" in message
    res = api.post("/workflows/v1/start", params={"run_id": "../escape"},
                   json={"marker_dir": "/tmp/x"})
    assert res.status_code == 422 and res.json()["message"].startswith("run_id: invalid run id")
    res = api.post("/workflows/v1/start", params={"entrypoint": "nope"}, json={})
    assert res.status_code == 422
    assert "has no entry point 'nope'; it has: ['extract_squares', 'mine_queries']" in \
        res.json()["message"]
    huge = {"marker_dir": "m" * (100 * 1024)}
    res = api.post("/workflows/v1/start", params={"run_id": "bad-2"}, json=huge)
    assert res.status_code == 413 and "pass large data by reference" in res.json()["message"]
    for run_id in ("bad-1", "bad-2", "escape"):
        assert not (Path(service.store) / "runs" / APP_NAME / run_id).exists()
    after = sorted(service.log_dir.glob("*")) if service.log_dir.exists() else []
    assert after == before  # no driver was launched


def test_entry_point_by_kebab_case_name_and_same_run_rules(service, api):
    data = start(api, {"days": 3}, entrypoint="mine-queries", run_id="mine-1")
    assert data["launched"] is True
    res = result(api, "mine-1")
    assert res.json()["data"] == {"queries": 30}
    assert api.get("/workflows/v1/status/mine-1").json()["data"]["entrypoint"] == "mine_queries"
    record = store_run(service.store, "mine-1")
    conflict = api.post("/workflows/v1/start", params={"entrypoint": "mine_queries",
                                                       "run_id": "mine-1"}, json={"days": 4})
    assert conflict.status_code == 409
    assert conflict.json()["message"] == ("run mine-1 exists with a different input: a run id "
                                          "names one run; choose a new run id to start another")
    other = api.post("/workflows/v1/start", params={"run_id": "mine-1"},
                     json={"marker_dir": "/tmp/x"})
    assert other.status_code == 409 and "entry point 'mine_queries'" in other.json()["message"]
    assert store_run(service.store, "mine-1") == record  # unchanged


def test_result_is_202_while_running_then_the_error_of_a_failed_run(api, tmp_path):
    folder = tmp_path / "m"
    start(api, {"marker_dir": str(folder), "n": 2, "sleep_s": 1.5, "fail_at": 1},
          run_id="fails-1")
    early = result(api, "fails-1", wait=0)
    assert early.status_code == 202, early.text
    assert early.json()["success"] is True
    assert early.json()["data"]["state"] in ("PENDING", "RUNNING")
    final = result(api, "fails-1")
    assert final.status_code == 200
    answer = final.json()
    assert answer["success"] is False and answer["data"]["state"] == "FAILED"
    assert "square 1: the source refused it" in answer["message"]
    assert "Traceback" not in final.text
    assert api.get("/workflows/v1/result/no-such-run").status_code == 404
    assert api.get("/workflows/v1/result/fails-1", params={"wait": 9999}).status_code == 422


def test_a_failed_run_started_again_resumes_and_result_waits_for_the_new_finish(
        service, api, tmp_path):
    folder, flag = tmp_path / "m", tmp_path / "source-is-broken"
    flag.write_text("broken")
    body = {"marker_dir": str(folder), "n": 3, "fail_at": 1, "flag": str(flag)}
    start(api, body, run_id="fixme-1")
    assert result(api, "fixme-1").json()["data"]["state"] == "FAILED"
    # a sibling still running when square 1 failed the run was cancelled, not recorded: it
    # runs again; the ones recorded must not
    journal = RunStore(open_store(service.store), APP_NAME, "fixme-1").load_journal().records
    recorded = {msgpack.unpackb(r["o"])["index"] for r in journal
                if r["y"] == "t" and r["n"] == "square"}
    flag.unlink()  # fix the source, start the same run again
    again = start(api, body, run_id="fixme-1")
    assert again["launched"] is True and again["state"] == "RESUMING"
    res = result(api, "fixme-1")  # not the old failure: the resumed run's result
    assert res.json() == {"success": True, "message": "run fixme-1 COMPLETED",
                          "data": {"count": 3, "total": 5}}
    ran = markers(folder)
    assert ran[1] == 2 and set(ran) == {0, 1, 2}
    assert all(ran[i] == 1 for i in recorded)  # recorded tasks did not run again


def test_result_and_stop_of_a_continued_run_follow_its_chain(service, api, tmp_path):
    """A run that ended in continue_with answers with its chain: /result waits for the last
    run's output, /stop cancels the run that is executing now."""
    start(api, {"marker_dir": str(tmp_path / "m"), "n": 6, "chunk": 2}, run_id="chain-1")
    final = result(api, "chain-1")
    assert final.status_code == 200, final.text
    assert final.json()["success"] is True
    assert final.json()["data"] == {"count": 6, "total": 55}
    assert store_run(service.store, "chain-1").status is RunStatus.CONTINUED
    assert store_run(service.store, "chain-1.c2").status is RunStatus.COMPLETED

    start(api, {"marker_dir": str(tmp_path / "s"), "n": 6, "chunk": 2, "sleep_s": 1.0},
          run_id="chain-2")
    wait_for(lambda: store_run(service.store, "chain-2.c1"), 60, "the first continuation")
    stop = api.post("/workflows/v1/stop/chain-2")
    assert stop.status_code == 200, stop.text
    assert stop.json()["data"]["running_run_id"] == "chain-2.c1"
    final = result(api, "chain-2")
    assert final.json()["success"] is False and final.json()["data"]["state"] == "CANCELLED"
    assert final.json()["data"]["run_id"] == "chain-2.c1"
    assert store_run(service.store, "chain-2.c2") is None  # nothing continued after the stop
    assert len(markers(tmp_path / "s")) < 6


def test_stop_cancels_a_running_run(service, api, tmp_path):
    folder = tmp_path / "m"
    start(api, {"marker_dir": str(folder), "n": 40, "sleep_s": 1.0}, run_id="stop-1")
    wait_for(lambda: markers(folder), 60, "a task to start")
    res = api.post("/workflows/v1/stop/stop-1")
    assert res.status_code == 200 and res.json()["data"]["state"] == "CANCELLING", res.text
    final = result(api, "stop-1", wait=90)
    assert final.json()["success"] is False
    assert final.json()["data"]["state"] == "CANCELLED", final.text
    assert sum(markers(folder).values()) < 40
    assert store_run(service.store, "stop-1").status is RunStatus.CANCELLED
    again = api.post("/workflows/v1/stop/stop-1").json()
    assert again["message"] == "run stop-1 is already CANCELLED"
    assert api.post("/workflows/v1/stop/no-such-run").status_code == 404


def test_two_concurrent_starts_with_one_run_id_make_one_run(service, spawn, tmp_path):
    second = spawn(store=service.store, token=service.token)
    folder = tmp_path / "m"
    body = {"marker_dir": str(folder), "n": 4, "sleep_s": 0.5}
    clients = [service.client(), service.client(), second.client(), second.client()]
    barrier = threading.Barrier(len(clients))
    answers: list[httpx.Response] = [None] * len(clients)  # type: ignore[list-item]

    def go(i: int) -> None:
        barrier.wait()
        answers[i] = clients[i].post("/workflows/v1/start", params={"run_id": "twice-1"},
                                     json=body)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    datas = [a.json()["data"] for a in answers]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert {d["run_id"] for d in datas} == {d["workflow_id"] for d in datas} == {"twice-1"}
    # One replica launches at most one driver; across replicas the lease lets one run.
    assert sum(d["launched"] for d in datas[:2]) == 1
    assert sum(d["launched"] for d in datas[2:]) <= 1
    assert result(service.client(), "twice-1").json()["data"] == {"count": 4, "total": 14}
    assert markers(folder) == Counter(range(4))
    assert second.client().get("/workflows/v1/status/twice-1").json()["data"]["state"] == \
        "COMPLETED"


def test_200_status_requests_over_5_runs_executing_at_once(service, api, tmp_path):
    ids = [f"load-{i}" for i in range(5)]
    for run_id in ids:
        start(api, {"marker_dir": str(tmp_path / run_id), "n": 2, "sleep_s": 1.0},
              run_id=run_id)
    for run_id in ids:  # every driver has claimed its run
        wait_for(lambda r=run_id: api.get(f"/workflows/v1/status/{r}").json()["data"]["state"]
                 != "PENDING", 60, f"{run_id} to be claimed")

    async def hammer() -> list[httpx.Response]:
        limits = asyncio.Semaphore(10)
        async with httpx.AsyncClient(base_url=service.url, timeout=60, headers={
                "Authorization": f"Bearer {service.token}"}) as client:
            async def one(i: int) -> httpx.Response:
                async with limits:
                    return await client.get(f"/workflows/v1/status/{ids[i % 5]}")
            return await asyncio.gather(*(one(i) for i in range(200)))

    answers = asyncio.run(hammer())
    assert [a.status_code for a in answers] == [200] * 200
    states = Counter(a.json()["data"]["state"] for a in answers)
    assert set(states) <= {"RUNNING", "COMPLETED"}, states
    assert states["RUNNING"] > 100, states  # they were executing while asked
    for run_id in ids:
        assert result(api, run_id).json()["data"] == {"count": 2, "total": 1}


def test_credentials_sent_to_handler_routes_appear_nowhere(service, api, tmp_path):
    calls = [
        ("auth", {"credentials": {"username": "ann", "password": SECRET}}),
        ("auth", {"credentials": {"password": SECRET, "mode": "raise"}}),
        ("auth", {"credentials": {"password": SECRET, "mode": "block"}, "timeout_seconds": 0.5}),
        ("auth", {"credentials": [{"key": "password", "value": SECRET, "extra": 1}]}),
        ("auth", {"credentials": [{"key": "password", "value": SECRET}], "timeout_seconds": "x"}),
        ("check", {"credentials": {"password": SECRET}, "connection_config": {"schema": "x"}}),
        ("metadata", {"credentials": {"password": SECRET}, "connection_config": {}}),
    ]
    for route, body in calls:
        res = api.post(f"/workflows/v1/{route}", json=body)
        assert res.status_code in (200, 401, 422, 500, 504), res.text
        assert SECRET not in res.text, (route, body, res.text)
    start(api, {"marker_dir": str(tmp_path / "m"), "n": 1}, run_id="secretless-1")
    assert result(api, "secretless-1").status_code == 200
    time.sleep(0.5)  # let the last log lines reach the file
    secret = SECRET.encode()
    places = [Path(service.store), service.log_dir, service.out_path]
    for place in places:
        files = all_bytes(place) if place.is_dir() else [(place, place.read_bytes())]
        assert files, place
        for path, data in files:
            assert secret not in data, f"the credential is in {path}"
    assert "POST /workflows/v1/auth" in service.output()  # the log was captured


def test_metrics_are_derived_from_the_store_journal_times_included(spawn, tmp_path):
    store_dir = tmp_path / "metrics-store"
    store = open_store(str(store_dir))

    def put(run_id: str, status: RunStatus, records: list[dict]) -> None:
        runs = RunStore(store, APP_NAME, run_id)
        runs.write_run(RunRecord(app=APP_NAME, run_id=run_id, app_path=APP,
                                 entrypoint="extract_squares", input={"marker_dir": "x"},
                                 input_digest="d", status=status))
        runs.write_segment(1, 0, records)

    out = msgpack.packb({"index": 0, "square": 0})

    def t(key: str, d: float | None) -> dict:
        rec = {"y": "t", "k": key, "n": "square", "o": out, "a": 1}
        if d is not None:
            rec["ts"] = {"d": 100.0, "s": 100.5, "e": 100.5 + d}
        return rec

    def f(key: str, kind: str, d: float) -> dict:
        return {"y": "f", "k": key, "n": "square", "a": 1, "r": True,
                "e": {"kind": kind, "type": "X", "message": "m"},
                "ts": {"d": 100.0, "s": 101.0, "e": 101.0 + d}}

    put("m-1", RunStatus.COMPLETED, [t("a", 0.3), t("b", 2.0), t("c", None),
                                     f("d", "timeout", 7.0), f("d", "error", 0.04)])
    put("m-2", RunStatus.FAILED, [f("e", "heartbeat", 61.0), {"y": "v", "k": "v", "v": 1}])
    put("m-3", RunStatus.RUNNING, [t("g", 0.2)])
    svc = spawn(store=str(store_dir), token=None)
    res = svc.client().get("/metrics")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(res.text) for s in fam.samples}

    def val(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted({"app": APP_NAME, **labels}.items())))]

    assert [val("connector_runtime_runs", state=s) for s in
            ("RUNNING", "COMPLETED", "FAILED", "CANCELLED")] == [1, 1, 1, 0]
    total = "connector_runtime_attempts_total"
    assert val(total, task="square", outcome="completed") == 4  # the one without times too
    assert val(total, task="square", outcome="timeout") == 1
    assert val(total, task="square", outcome="error") == 1
    assert val(total, task="square", outcome="heartbeat") == 1
    h = "connector_runtime_attempt_duration_seconds"
    done = {"task": "square", "outcome": "completed"}
    assert val(h + "_count", **done) == 3  # the record without "ts" is not timed
    assert val(h + "_sum", **done) == pytest.approx(2.5)
    assert val(h + "_bucket", le="0.25", **done) == 1  # 0.2
    assert val(h + "_bucket", le="0.5", **done) == 2  # 0.2, 0.3
    assert val(h + "_bucket", le="2.5", **done) == 3
    assert val(h + "_bucket", le="+Inf", **done) == 3
    assert val(h + "_bucket", le="5.0", task="square", outcome="timeout") == 0
    assert val(h + "_bucket", le="10.0", task="square", outcome="timeout") == 1
    assert val("connector_runtime_attempt_queue_seconds_sum", **done) == pytest.approx(1.5)


def test_a_corrupt_run_record_answers_500_naming_it_and_the_rest_keeps_working(service, api):
    runs = RunStore(open_store(service.store), APP_NAME, "corrupt-1")
    runs.write_run(RunRecord(app=APP_NAME, run_id="corrupt-1", app_path=APP,
                             entrypoint="mine_queries", input={"days": 1}, input_digest="d"))
    path = Path(service.store) / "runs" / APP_NAME / "corrupt-1" / "run.msgpack"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    path.write_bytes(bytes(data))
    res = api.get("/workflows/v1/status/corrupt-1")
    assert res.status_code == 500, res.text
    assert res.json()["message"].startswith("the store holds a corrupt record:")
    assert "runs/ServiceApp/corrupt-1/run.msgpack" in res.json()["message"]
    assert "Traceback" not in res.text
    started = api.post("/workflows/v1/start", params={"entrypoint": "mine-queries",
                                                      "run_id": "corrupt-1"}, json={"days": 1})
    assert started.status_code == 500 and path.read_bytes() == bytes(data)  # nothing launched
    listed = api.get("/workflows/v1/runs")
    assert listed.status_code == 200
    assert "corrupt-1" not in [r["run_id"] for r in listed.json()["data"]]
    assert api.get("/metrics").status_code == 200


def test_ready_answers_503_when_the_store_and_ray_do_not(spawn, tmp_path):
    closed = free_port()  # nothing listens there
    svc = spawn(store="s3://nowhere-bucket/store", env={
        "RAY_ADDRESS": f"127.0.0.1:{closed}", "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{closed}",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed}", "AWS_MAX_ATTEMPTS": "1"})
    res = svc.client().get("/ready", timeout=30)
    assert res.status_code == 503, res.text
    assert res.json()["success"] is False
    assert res.json()["data"] == {"store": {"ok": False}, "ray": {"ok": False},
                                  "launcher": "process"}
    assert svc.client().get("/health").status_code == 200
    status = svc.client().get("/workflows/v1/status/any-run", timeout=60)
    assert status.status_code == 503 and status.json()["message"].startswith(
        "the store did not answer:")
    assert "Ray at 127.0.0.1" in svc.output()  # the details went to the log


def test_a_driver_that_cannot_be_launched_answers_503_and_nothing_is_written(spawn, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    svc = spawn(args=("--launcher", "process", "--log-dir", str(blocker / "logs")))
    res = svc.client().post("/workflows/v1/start", params={"run_id": "nolaunch-1"},
                            json={"marker_dir": str(tmp_path / "m")})
    assert res.status_code == 503, res.text
    assert res.json()["message"].startswith("could not launch a driver for run nolaunch-1 "
                                            "(process): NotADirectoryError")
    assert store_run(svc.store, "nolaunch-1") is None
    assert svc.client().get("/workflows/v1/status/nolaunch-1").status_code == 404


# ---- crashes --------------------------------------------------------------------------------


def test_service_sigkilled_mid_run_the_run_completes_and_a_restart_reports_it(spawn, tmp_path):
    first = spawn()
    folder = tmp_path / "m"
    data = start(first.client(), {"marker_dir": str(folder), "n": 6, "sleep_s": 1.0},
                 run_id="survivor-1")
    wait_for(lambda: markers(folder), 60, "a task to start")
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    assert os.path.exists(f"/proc/{data['driver']['pid']}")  # the driver lives on
    second = spawn(store=first.store, marker=first.marker)
    res = result(second.client(), "survivor-1")
    assert res.json() == {"success": True, "message": "run survivor-1 COMPLETED",
                          "data": {"count": 6, "total": 55}}
    assert markers(folder) == Counter(range(6))  # nothing ran twice


def test_resume_orphans_at_start_resumes_a_run_whose_driver_died(spawn, tmp_path):
    first = spawn()
    folder = tmp_path / "m"
    data = start(first.client(), {"marker_dir": str(folder), "n": 4, "sleep_s": 1.5},
                 run_id="orphan-1")
    wait_for(lambda: markers(folder), 60, "a task to start")
    os.killpg(data["driver"]["pid"], signal.SIGKILL)
    # The service reaps its dead child within a second (a zombie would look alive).
    wait_for(lambda: not os.path.exists(f"/proc/{data['driver']['pid']}"), 10,
             "the driver to die")
    first.stop()
    assert store_run(first.store, "orphan-1").status is RunStatus.RUNNING
    second = spawn(store=first.store, args=("--launcher", "process", "--resume-orphans"))
    res = result(second.client(), "orphan-1")
    assert res.json()["data"] == {"count": 4, "total": 14}, res.text
    assert "1 run(s) resumed: orphan-1" in second.output()
    assert set(markers(folder)) == set(range(4))


# ---- refusals before listening --------------------------------------------------------------


@pytest.mark.parametrize(("args", "env", "expected"), [
    (("--host", "0.0.0.0"), {}, "refusing to listen on 0.0.0.0 without an API token"),
    (("--host", "example.org"), {}, "refusing to listen on example.org"),
    ((), {"CONNECTOR_RUNTIME_API_TOKEN": "short"}, "must be at least 16 characters"),
    (("--store", "memory://x"), {}, "memory:// store lives in one process"),
    (("--store-option", "secret=abc"), {}, "--store-option secret=... looks like a credential"),
    (("--handler", "service_app:SquaresInput"), {}, "not an application_sdk.handler.Handler"),
    (("--token-file", "/nonexistent/token"), {}, "--token-file /nonexistent/token"),
])
def test_refusals_exit_2_with_the_reason_before_listening(tmp_path, args, env, expected):
    port = free_port()
    proc = subprocess.run(
        [sys.executable, "-m", "runtime", "serve", APP, "--port", str(port),
         "--store", str(tmp_path / "s"), *args],
        cwd=APP_DIR, capture_output=True, text=True, timeout=60,
        env={**{k: v for k, v in os.environ.items() if k != "CONNECTOR_RUNTIME_API_TOKEN"},
             **env})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expected in proc.stderr
    assert "Uvicorn running" not in proc.stderr


# ---- a Ray cluster ------------------------------------------------------------------------


def test_on_a_ray_cluster_start_submits_a_job_that_completes_and_stop_cancels(
        ray_head, s3_url, spawn, tmp_path):
    svc = spawn(store=s3_url, env=ray_head.env, token=uuid.uuid4().hex,
                args=("--ray-address", ray_head.dashboard_url))
    api = svc.client()
    ready = api.get("/ready").json()
    assert ready["data"]["launcher"] == "ray-job" and ready["success"] is True, ready
    done_dir = tmp_path / "done"
    data = start(api, {"marker_dir": str(done_dir), "n": 3}, run_id="job-ok")
    sid = data["driver"]["submission_id"]
    assert sid.startswith("job-ok-")
    listing = ray_head.ray_cli("job", "list")
    assert sid in listing.stdout, listing.stdout + listing.stderr
    res = result(api, "job-ok", wait=180)
    assert res.json()["data"] == {"count": 3, "total": 5}, res.text
    assert ray_head.wait_job(sid, timeout=60)["status"] == "SUCCEEDED"
    assert markers(done_dir) == Counter(range(3))

    stop_dir = tmp_path / "stopped"
    data = start(api, {"marker_dir": str(stop_dir), "n": 30, "sleep_s": 1.0}, run_id="job-stop")
    wait_for(lambda: markers(stop_dir), 120, "a task of the job to start")
    assert api.post("/workflows/v1/stop/job-stop").json()["data"]["state"] == "CANCELLING"
    final = result(api, "job-stop", wait=120)
    assert final.json()["data"]["state"] == "CANCELLED", final.text
    assert sum(markers(stop_dir).values()) < 30
    info = ray_head.wait_job(data["driver"]["submission_id"], timeout=60)
    assert info["driver_exit_code"] == 1, info  # cancelled by `cancel`: exit 1, as the CLI
