"""The history fields of an attempt's journal record: when, where, which files, what traceback.

Added to "t" (completed) and "f" (failed) records, and to "x" records (an attempt the driver
cancelled itself: not a failure, not an execution):

  "ts": {"d": dispatched, "r": received, "s": started, "e": ended}
        epoch seconds; d and r on the driver's clock (taken around the executor call, so a
        wait for a feasible node counts as queueing), s and e on the worker's (so `e - s` is
        free of clock skew between driver and worker). A worker that died, a timeout, a lost
        heartbeat or a cancel leave no s and e: d and r are what is known.
  "w":  the worker's number in the run's worker table: a "w" record, written once per worker
        just before the first attempt record that names it, says who it is:
        {"y": "w", "i": number, "n": node id, "ip": node ip, "p": worker pid} (any may be null).
        Rejected: the node, ip and pid in every record (as a list or a map). The driver keeps
        every record of a session in memory for compaction, and a loaded journal decodes every
        record's copy: 270 bytes per attempt of driver memory and 75 bytes of journal, where a
        number costs nothing (numbers up to 256 are shared objects) and two bytes.
  "fs": {"n": files, "b": bytes, "r": rows (where the format says)} of the output's
        FileReferences
  "tb": the worker's traceback of a failure (the last 8,000 characters)

Journals written before these fields existed have none of them: every reader treats each as
optional (`runtime.views._timeline`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ray import exceptions as rx

from ..worker import STAMP_ATTR

__all__ = ["TRACEBACK_LIMIT", "WorkerTable", "cancelled_record", "completed_fields",
           "failed_fields"]

TRACEBACK_LIMIT = 8_000

Number = Callable[[list[Any]], Any]
"""What turns a worker's [node, ip, pid] into what its records carry (`WorkerTable.number`)."""


class WorkerTable:
    """The run's workers by number (see "w" above), continued from the loaded journal."""

    def __init__(self) -> None:
        self._numbers: dict[tuple[Any, ...], int] = {}
        self._next = 0

    def load(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            i = record.get("i")
            if record.get("y") == "w" and isinstance(i, int):
                key = (record.get("n"), record.get("ip"), record.get("p"))
                self._numbers.setdefault(key, i)
                self._next = max(self._next, i + 1)

    def number(self, w: list[Any], append: Callable[[dict[str, Any]], None]) -> int:
        """The number of worker `w`, appending its "w" record the first time it is seen."""
        key = tuple(w)
        found = self._numbers.get(key)
        if found is None:
            found = self._numbers[key] = self._next
            self._next += 1
            append({"y": "w", "i": found, "n": w[0], "ip": w[1], "p": w[2]})
        return found


def _where(w: Any) -> list[Any] | None:
    if not isinstance(w, (list, tuple)) or len(w) != 3:
        return None
    found = [v if isinstance(v, (str, int)) and not isinstance(v, bool) else None for v in w]
    return None if all(v is None for v in found) else found


def _fields(stamp: Any, d: float, r: float, number: Number) -> dict[str, Any]:
    ts: dict[str, Any] = {"d": d, "r": r}
    out: dict[str, Any] = {"ts": ts}
    if isinstance(stamp, dict):
        if isinstance(stamp.get("s"), float) and isinstance(stamp.get("e"), float):
            ts["s"], ts["e"] = stamp["s"], stamp["e"]
        where = _where(stamp.get("w"))
        if where:
            out["w"] = number(where)
        files = stamp.get("f")
        if isinstance(files, list) and len(files) == 3:
            fs = {"n": files[0], "b": files[1]}
            if files[2] is not None:
                fs["r"] = files[2]
            out["fs"] = fs
    return out


def completed_fields(result: Any, d: float, r: float,
                     number: Number = list) -> tuple[bytes, dict[str, Any]]:
    """(output bytes, history fields) of what an executor answered: (bytes, stamp) from Ray,
    or bare bytes from an executor that reports no stamp (in-process tests)."""
    if isinstance(result, tuple):
        data, stamp = result
    else:
        data, stamp = result, None
    return data, _fields(stamp, d, r, number)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_HEADER = re.compile(r"\(pid=(\d+), ip=([0-9a-fA-F.:]+)")


def _ray_text(exc: BaseException) -> str | None:
    """Ray's text of a task error: `ray::task() (pid=.., ip=..)` and the worker's traceback."""
    if not isinstance(exc, rx.RayTaskError):
        return None
    text = exc.__dict__.get("traceback_str") or str(exc)
    return _ANSI.sub("", text) if isinstance(text, str) else None


def _traceback(exc: BaseException, ray_text: str | None) -> str | None:
    # the original's traceback when it had to travel as a TaskError, else Ray's
    text = getattr(exc, "remote_traceback", None) or ray_text
    if not isinstance(text, str) or not text.strip():
        return None
    return text[-TRACEBACK_LIMIT:]


def failed_fields(exc: BaseException, d: float, r: float,
                  number: Number = list) -> dict[str, Any]:
    """History fields of a failed attempt from what awaiting it raised."""
    stamp = getattr(exc, STAMP_ATTR, None)  # a RayTaskError looks attributes up on its cause
    out = _fields(stamp, d, r, number)
    ray_text = _ray_text(exc)
    if "w" not in out and ray_text:  # the stamp did not travel: Ray's header names the worker
        found = _HEADER.search(ray_text)
        if found:
            out["w"] = number([None, found.group(2), int(found.group(1))])
    tb = _traceback(exc, ray_text)
    if tb:
        out["tb"] = tb
    return out


def cancelled_record(key: str, task: str, number: int, d: float, r: float) -> dict[str, Any]:
    """The "x" record of an attempt the driver cancelled (run() was cancelled or ended)."""
    return {"y": "x", "k": key, "n": task, "a": number, "ts": {"d": d, "r": r}}
