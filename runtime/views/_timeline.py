"""A run's history from its journal: every attempt with its times and worker, every driver
phase, heartbeat details, stored objects. `trace`, `status --tasks` and the run pages read it.

Attempt records ("t", "f", "x") carry their history as optional fields (written by
`runtime.driver._timing`): "ts" {d, r, s, e}, "w" a worker number (its "w" record: node, ip,
pid), "fs" {n, b, r}, "tb". Records
written before those fields existed have none: their attempts are listed, with no times
(`Span.duration is None`), and counted in `Timeline.untimed`. Driver phases are "p" records
(`runtime.driver._phases`): the latest record of a (session, phase) wins, so a phase journaled
open and then closed is one closed phase, and one journaled open only is a phase that never
ended (its driver died or lost the run).

Every field is read defensively (`isinstance` checks): the store is data, and a record of an
unexpected shape is shown as far as it makes sense, never trusted to have a field.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from storage import RunRecord, RunStore, Store

__all__ = ["FAILED_OUTCOMES", "Phase", "Span", "Timeline", "load_timeline", "timeline"]

FAILED_OUTCOMES = frozenset({"error", "timeout", "lost", "heartbeat", "stalled"})


@dataclass(frozen=True)
class Span:
    """One attempt of a task call."""

    key: str
    """The call key."""
    task: str
    number: int
    """Attempt number (0: answered in the driver)."""
    outcome: str
    """`completed`, `cancelled`, or the failure kind (FAILED_OUTCOMES)."""
    dispatched: float | None = None
    """Epoch seconds on the driver's clock (with `received`)."""
    received: float | None = None
    started: float | None = None
    """Epoch seconds on the worker's clock (with `ended`)."""
    ended: float | None = None
    node: str | None = None
    ip: str | None = None
    pid: int | None = None
    error: dict[str, Any] | None = None
    """{kind, type, message} of a failure."""
    traceback: str | None = None
    retried: bool | None = None
    """For a failure: whether the driver tried again."""
    files: dict[str, Any] | None = None
    """{"n": files, "b": bytes, "r": rows (when known)} of the output's FileReferences."""

    @property
    def begin(self) -> float | None:
        return self.started if self.started is not None else self.dispatched

    @property
    def end(self) -> float | None:
        return self.ended if self.started is not None else self.received

    @property
    def duration(self) -> float | None:
        """Seconds, on the worker's clock when it reported, else on the driver's."""
        begin, end = self.begin, self.end
        return None if begin is None or end is None else max(0.0, end - begin)

    @property
    def queued(self) -> float | None:
        """Seconds from dispatch (driver clock) to start (worker clock), when both are known."""
        if self.dispatched is None or self.started is None:
            return None
        return max(0.0, self.started - self.dispatched)

    @property
    def failed(self) -> bool:
        return self.outcome in FAILED_OUTCOMES

    @property
    def error_text(self) -> str | None:
        if not self.error:
            return None
        kind = self.error.get("type") or self.error.get("kind") or "error"
        return f"{kind}: {self.error.get('message', '')}"


@dataclass(frozen=True)
class Phase:
    """One phase of one driver session (`runtime.driver._phases`)."""

    epoch: int
    name: str
    begin: float
    end: float | None
    """None: journaled open and never closed (the driver stopped during it)."""
    host: str | None = None
    pid: int | None = None


@dataclass
class Timeline:
    spans: list[Span] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    """Last heartbeat details per call key."""
    objects: list[dict[str, Any]] = field(default_factory=list)
    """{"k", "p", "t"} of every stored object the run's outputs created."""
    outputs: dict[str, bytes] = field(default_factory=dict)
    """Recorded output bytes per call key (of calls that completed)."""
    segments: int = 0
    """Journal segments the records came from (`load_timeline`)."""

    @property
    def untimed(self) -> int:
        """Attempts whose records carry no times (journaled before times were recorded, or
        answered in the driver)."""
        return sum(1 for s in self.spans if s.duration is None)

    def sessions(self) -> dict[int, dict[str, Any]]:
        """Per lease epoch: the driver's host and pid (from its claim phase)."""
        out: dict[int, dict[str, Any]] = {}
        for phase in self.phases:
            entry = out.setdefault(phase.epoch, {"host": None, "pid": None})
            if phase.host is not None:
                entry["host"], entry["pid"] = phase.host, phase.pid
        return out


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def _outcome(record: dict[str, Any]) -> str:
    kind = record.get("y")
    if kind == "t":
        return "completed"
    if kind == "x":
        return "cancelled"
    error = record.get("e")
    return str(error.get("kind") or "error") if isinstance(error, dict) else "error"


def _span(record: dict[str, Any], workers: dict[int, tuple[Any, Any, Any]]) -> Span:
    ts = record.get("ts") if isinstance(record.get("ts"), dict) else {}
    w = record.get("w")
    node, ip, pid = workers.get(w, (None, None, None)) if isinstance(w, int) else \
        (None, None, None)
    started, ended = _num(ts.get("s")), _num(ts.get("e"))
    if started is None or ended is None or ended < started:
        started = ended = None
    error = record.get("e") if isinstance(record.get("e"), dict) else None
    fs = record.get("fs")
    files = {k: v for k, v in fs.items() if k in ("n", "b", "r") and isinstance(v, int)} \
        if isinstance(fs, dict) else None
    tb = record.get("tb")
    number = record.get("a")
    return Span(
        key=str(record.get("k", "?")), task=str(record.get("n", "?")),
        number=number if isinstance(number, int) else 0, outcome=_outcome(record),
        dispatched=_num(ts.get("d")), received=_num(ts.get("r")), started=started,
        ended=ended, node=node if isinstance(node, str) else None,
        ip=ip if isinstance(ip, str) else None, pid=pid if isinstance(pid, int) else None,
        error=error, traceback=tb if isinstance(tb, str) else None,
        retried=bool(record.get("r")) if record.get("y") == "f" else None,
        files=files or None,
    )


def _phase(record: dict[str, Any]) -> Phase | None:
    begin, epoch, name = _num(record.get("b")), record.get("ep"), record.get("n")
    if begin is None or not isinstance(epoch, int) or not isinstance(name, str):
        return None
    host, pid = record.get("h"), record.get("pid")
    return Phase(epoch, name, begin, _num(record.get("e")),
                 host if isinstance(host, str) else None, pid if isinstance(pid, int) else None)


def timeline(records: Iterable[dict[str, Any]]) -> Timeline:
    """The history in journal `records` (as `RunStore.load_journal` returns them)."""
    tl = Timeline()
    phases: dict[tuple[int, str], Phase] = {}
    records = list(records)
    workers = {r["i"]: (r.get("n"), r.get("ip"), r.get("p")) for r in records
               if r.get("y") == "w" and isinstance(r.get("i"), int)}
    for record in records:
        kind = record.get("y")
        if kind in ("t", "f", "x"):
            tl.spans.append(_span(record, workers))
            if kind == "t" and isinstance(record.get("o"), bytes):
                tl.outputs.setdefault(str(record.get("k")), record["o"])
        elif kind == "p":
            phase = _phase(record)
            if phase is not None:
                old = phases.get((phase.epoch, phase.name))
                if old is not None and old.host is not None and phase.host is None:
                    phase = Phase(phase.epoch, phase.name, phase.begin, phase.end, old.host,
                                  old.pid)
                phases[(phase.epoch, phase.name)] = phase
        elif kind == "h":
            tl.details[str(record.get("k"))] = record.get("d")
        elif kind == "o" and isinstance(record.get("p"), str):
            tl.objects.append(record)
    tl.phases = sorted(phases.values(), key=lambda p: (p.begin, p.epoch))
    return tl


def load_timeline(store: Store, record: RunRecord) -> Timeline:
    """The history of run `record`, read from its journal (what is recorded so far)."""
    load = RunStore(store, record.app, record.run_id).load_journal()
    tl = timeline(load.records)
    tl.segments = load.segments
    return tl
