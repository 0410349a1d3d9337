"""Runs over HTTP: start, status, stop, result, list. Everything is read from the store.

A start validates the input (nothing is written when it is bad), applies the same-run rule
(a run id names one run) and launches a driver unless one is already at work on the run. Two
starts of one run id at once make one run: in one replica a per-run-id lock and the launches
it made decide; across replicas the run's lease does (the second driver is refused, exit 3,
having changed nothing).

The only memory is `launches`: the drivers this replica started, so that in the second or two
before a driver writes its run record, `status` says PENDING rather than "no such run", `stop`
can still reach it, and a second start does not launch it twice. Losing it (a restart) loses
nothing: the record appears as soon as the driver claims the run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from application_sdk.app import EntrypointSpec
from application_sdk.contracts import Input
from storage import RunRecord, RunStatus, RunStore, list_runs, printable

from ..driver import new_run_id
from ..views import chain_end, describe, driver_alive, read_run, same_run_conflict, summary
from ._config import ServiceConfig
from ._launcher import MAX_INPUT_BYTES, Launch, Launcher, driver_args

__all__ = ["Answer", "RunService"]

log = logging.getLogger("connector_runtime.service")

_FORGET_AFTER = 600.0
"""Seconds a finished launch is remembered (to explain a driver that died before claiming)."""
_POLL = 0.2
_RELEASE_WAIT = 10.0
"""Seconds a start waits for the driver that just finished a run to release its lease."""


@dataclass
class Answer:
    """An HTTP answer in the envelope: {success, message, data} with a status code."""

    status_code: int
    success: bool
    message: str
    data: Any = None


class RunService:
    def __init__(self, cfg: ServiceConfig, launcher: Launcher) -> None:
        self.cfg = cfg
        self.app = cfg.app_cls
        self.store = cfg.store
        self.launcher = launcher
        self.launches: dict[str, Launch] = {}
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    # ---- start -----------------------------------------------------------------------------

    async def start(self, ep: EntrypointSpec, inp: Input, run_id: str | None) -> Answer:
        run_id = run_id or new_run_id(self.app)
        RunStore(self.store, self.app.name, run_id)  # a malformed id: StoreError, a 422
        input_json = json.dumps(inp.model_dump(mode="json"), separators=(",", ":"))
        if len(input_json.encode()) > MAX_INPUT_BYTES:
            return Answer(413, False, f"the input is {len(input_json.encode()):,} bytes "
                          f"serialized, over the {MAX_INPUT_BYTES // 1024} KiB a driver's command "
                          "line takes: pass large data by reference (a path or URL in the "
                          "input, read inside a task)")
        async with self._lock(run_id):
            record = await asyncio.to_thread(read_run, self.store, self.app.name, run_id)
            conflict = same_run_conflict(record, ep, inp)
            if conflict:
                return Answer(409, False, conflict, {"run_id": run_id, "workflow_id": run_id})
            ids = {"workflow_id": run_id, "run_id": run_id}
            if record is not None and record.status is RunStatus.COMPLETED:
                return Answer(200, True, f"run {run_id} already COMPLETED",
                              {**ids, "state": "COMPLETED", "launched": False})
            busy = await asyncio.to_thread(self._at_work, record, run_id)
            if busy:
                return Answer(200, True, f"run {run_id} is already running ({busy})",
                              {**ids, "state": "RUNNING", "launched": False})
            args = driver_args(self.cfg, ep.name, run_id, input_json)
            try:
                launch = await asyncio.to_thread(self.launcher.launch, run_id, args)
            except Exception as exc:  # Ray's jobs API down, the log dir unwritable, ...
                log.error("run %s: launching its driver failed", run_id, exc_info=exc)
                first_line = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
                return Answer(503, False, f"could not launch a driver for run {run_id} "
                              f"({self.launcher.kind}): {type(exc).__name__}: {first_line}",
                              ids)
            self.launches[run_id] = launch
        log.info("run %s: driver launched (%s)", run_id, _launch_label(launch))
        state = "PENDING" if record is None else "RESUMING"
        return Answer(200, True, f"run {run_id} started", {**ids, "state": state,
                      "launched": True, "driver": launch.describe()})

    def _at_work(self, record: RunRecord | None, run_id: str) -> str | None:
        """Why no driver should be launched for this run now (None: launch one)."""
        launch = self.launches.get(run_id)
        finished_by_it = launch is not None and record is not None and \
            record.status.finished and launch.started_at <= (record.finished_at or 0)
        if launch is not None and not finished_by_it and self.launcher.alive(launch):
            return f"its driver {_launch_label(launch)} was started by this service"
        if record is None or not driver_alive(self.store, record):
            return None
        if record.status is RunStatus.RUNNING:
            return "a live driver holds its lease"
        # Finished, its driver still winding down: it releases the lease right after writing
        # the final status. A new driver launched before that would be refused (exit 3).
        deadline = time.monotonic() + _RELEASE_WAIT
        while time.monotonic() < deadline and driver_alive(self.store, record):
            time.sleep(_POLL / 2)
        return None

    @asynccontextmanager
    async def _lock(self, run_id: str) -> Iterator[None]:
        lock, users = self._locks.get(run_id) or (asyncio.Lock(), 0)
        self._locks[run_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[run_id]
            if users <= 1:
                del self._locks[run_id]
            else:
                self._locks[run_id] = (lock, users - 1)

    # ---- reading ---------------------------------------------------------------------------

    def _not_found(self, run_id: str) -> Answer:
        return Answer(404, False, f"no run {run_id!r} of {self.app.name} in {self.store.url}")

    def _pending(self, run_id: str) -> Answer | None:
        """The answer for a run this replica launched whose driver has not claimed it yet."""
        launch = self.launches.get(run_id)
        if launch is None:
            return None
        ids = {"workflow_id": run_id, "run_id": run_id, "app": self.app.name}
        if self.launcher.alive(launch):
            return Answer(200, True, f"run {run_id} is starting: its driver has not claimed it "
                          "yet", {**ids, "state": "PENDING", "driver": launch.describe()})
        where = f"; its log: {launch.log_path}" if launch.log_path else \
            f"; see `ray job logs {launch.submission_id}`" if launch.submission_id else ""
        return Answer(200, True, f"run {run_id}: its driver ended (exit code {launch.exit_code}) "
                      f"before it claimed the run{where}",
                      {**ids, "state": "FAILED", "driver": launch.describe(),
                       "error": {"type": "DriverExited", "message":
                                 f"driver exit code {launch.exit_code} before claiming"}})

    def _resuming(self, record: RunRecord) -> Launch | None:
        """The driver this replica launched to resume a finished (failed, cancelled) run,
        while it has not claimed the run yet: the record still shows the last finish."""
        launch = self.launches.get(record.run_id)
        if launch is None or not record.status.finished or \
                launch.started_at <= (record.finished_at or 0):
            return None
        return launch if self.launcher.alive(launch) else None

    def status(self, run_id: str) -> Answer:
        record = read_run(self.store, self.app.name, run_id)
        if record is None:
            return self._pending(run_id) or self._not_found(run_id)
        info = {"workflow_id": run_id, **describe(self.store, record)}
        if record.status is RunStatus.RUNNING:
            info["driver_alive"] = driver_alive(self.store, record)
        resuming = self._resuming(record)
        if resuming is not None:
            info["resuming"] = resuming.describe()
            return Answer(200, True, f"run {run_id} is {record.status.value}, being resumed: "
                          "its driver has not claimed it yet", info)
        return Answer(200, True, f"run {run_id} is {record.status.value}", info)

    async def result(self, run_id: str, wait: float) -> Answer:
        deadline = time.monotonic() + wait
        while True:
            record = await asyncio.to_thread(self._chain_end, run_id)
            if record is not None and record.status.finished and \
                    await asyncio.to_thread(self._resuming, record) is None:
                return _final(record)
            if record is None:
                pending = await asyncio.to_thread(self._pending, run_id)
                if pending is None:
                    return self._not_found(run_id)
                if pending.data["state"] == "FAILED":
                    return Answer(200, False, pending.message, pending.data)
            left = deadline - time.monotonic()
            if left <= 0:
                info = await asyncio.to_thread(self.status, run_id)
                return Answer(202, True, f"run {run_id} has not finished yet", info.data)
            await asyncio.sleep(min(_POLL, left))

    def _chain_end(self, run_id: str) -> Any:
        """The run's record, or for a run that continued as another (continue_with) the
        chain's last one: its result and its stop are the chain's."""
        record = read_run(self.store, self.app.name, run_id)
        if record is not None and record.status is RunStatus.CONTINUED:
            record = chain_end(self.store, record)
        return record

    def runs(self, limit: int, state: str | None) -> Answer:
        records = list_runs(self.store, self.app.name)
        if state:
            records = [r for r in records if r.status.value == state.upper()]
        rows = [summary(r) for r in reversed(records)][:limit]
        return Answer(200, True, f"{len(rows)} run(s) of {self.app.name}", rows)

    # ---- stop ------------------------------------------------------------------------------

    def stop(self, run_id: str, reason: str) -> Answer:
        record = self._chain_end(run_id)
        ids = {"workflow_id": run_id, "run_id": run_id}
        if record is None or record.status.finished:
            # A driver that has not claimed the run yet (new, or resuming a finished run) reads
            # no cancellation request: stop that driver itself.
            launch = self.launches.get(run_id) if record is None else self._resuming(record)
            if launch is not None and self.launcher.alive(launch):
                self.launcher.stop(launch)
                return Answer(200, True, f"run {run_id}: its starting driver was stopped",
                              {**ids, "state": "CANCELLING", "driver": launch.describe()})
            if record is None:
                return self._not_found(run_id)
            return Answer(200, True, f"run {run_id} is already {record.status.value}",
                          {**ids, "state": record.status.value})
        if record.run_id != run_id:  # continued: the chain's running run is the one to stop
            ids["running_run_id"] = record.run_id
        RunStore(self.store, self.app.name, record.run_id).request_cancel(reason)
        return Answer(200, True, f"cancellation of {record.run_id} requested: its driver stops "
                      "in-flight attempts, runs on_complete() and records CANCELLED",
                      {**ids, "state": "CANCELLING"})

    # ---- upkeep ----------------------------------------------------------------------------

    def forget_finished(self) -> None:
        """Reap exited local drivers and drop launches that no longer explain anything."""
        now = time.time()
        for run_id, launch in list(self.launches.items()):
            old = now - launch.started_at > _FORGET_AFTER
            if launch.proc is None and not old:
                continue  # a Ray job: asking costs a request, so only once it may be forgotten
            # A local driver is polled every time: that reaps it (a zombie would look like a
            # live lease holder).
            if not self.launcher.alive(launch) and old:
                self.launches.pop(run_id, None)

    async def resume_orphans(self) -> list[str]:
        """Launch a driver for each RUNNING run of this app whose driver is gone."""
        records = await asyncio.to_thread(list_runs, self.store, self.app.name)
        resumed = []
        for record in records:
            if record.status is not RunStatus.RUNNING:
                continue
            if await asyncio.to_thread(driver_alive, self.store, record):
                continue
            try:  # a record this app cannot run is skipped, not the end of the pass
                ep = self.app.entrypoint_spec(record.entrypoint)
                inp = ep.input_type.model_validate(record.input)
            except Exception as exc:
                log.warning("run %s: not resumed, its record does not fit %s: %s: %s",
                            record.run_id, self.app.name, type(exc).__name__,
                            printable(str(exc))[:500])
                continue
            answer = await self.start(ep, inp, record.run_id)
            if answer.data and answer.data.get("launched"):
                log.warning("run %s: its driver was gone; resumed (%s)", record.run_id,
                            _launch_label(self.launches[record.run_id]))
                resumed.append(record.run_id)
        return resumed


def _final(record: RunRecord) -> Answer:
    ids = {"workflow_id": record.run_id, "run_id": record.run_id}
    if record.status is RunStatus.COMPLETED:
        return Answer(200, True, f"run {record.run_id} COMPLETED", record.output)
    error = record.error or {}
    message = error.get("message") or record.status.value
    return Answer(200, False, f"run {record.run_id} {record.status.value}: {message}",
                  {**ids, "state": record.status.value, "error": record.error})


def _launch_label(launch: Launch) -> str:
    return f"Ray job {launch.submission_id}" if launch.submission_id else f"pid {launch.pid}"
