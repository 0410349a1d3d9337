"""`connector-runtime gc`: delete stored objects past their retention.

What goes, per run folder (never `persistent/`):

- RETAINED `retained/{app}/{run_id}/`: when the run finished (COMPLETED, FAILED or CANCELLED)
  before the cutoff, by the run record's `finished_at`. A run still RUNNING keeps its objects.
  Without a run record (deleted, or objects written by hand) the newest object's mtime decides.
- TRANSIENT `runs/{app}/{run_id}/files/`: when the run finished before the cutoff. Normally
  `cleanup_storage` removed them already; what is left belongs to FAILED runs (kept so a
  resume can replay outputs that point at them) or to runs whose on_complete never ran. Once
  past the retention a failed run is not expected to resume: resuming it afterwards fails its
  first task that reads a deleted object with a clear StorageIntegrityError.

Everything is decided from the store alone (run records and listings), so gc runs anywhere,
any time, with no driver alive. Dry run by default: it lists what would go.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from storage import RunStatus, Store, delete_store_prefix, list_runs

__all__ = ["GcItem", "collect", "parse_age", "plan"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_age(text: str) -> float:
    """Seconds in `30d`, `12h`, `90m`, `45s`, `2w`; ValueError with the accepted forms."""
    match = _AGE.match(text or "")
    if not match:
        raise ValueError(
            f"--older-than {text!r}: expected a number and a unit, e.g. 30d, 12h, 90m, 2w "
            "(units: s, m, h, d, w)"
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class GcItem:
    """One folder of objects past retention."""

    prefix: str
    """Store prefix deleted as a whole."""
    tier: str
    app: str
    run_id: str
    objects: int
    size_bytes: int
    age_seconds: float
    why: str
    """Which timestamp made it old: the run's finished_at, or the newest object's mtime."""

    def describe(self) -> str:
        return (f"{self.tier:<9} {self.prefix}/  {self.objects} object(s), "
                f"{_human(self.size_bytes)}, {self.why} {self.age_seconds / 86400:.1f} d ago")


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _mtime(info: dict[str, Any]) -> float:
    for field in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(field)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value).timestamp()
            except ValueError:
                continue
    return 0.0


def _contents(store: Store, prefix: str) -> tuple[int, int, float]:
    """(objects, bytes, newest mtime) under a prefix."""
    if store.protocol == "s3":
        store.fs.invalidate_cache()
    try:
        found = store.fs.find(store.path(prefix), detail=True)
    except FileNotFoundError:
        return 0, 0, 0.0
    infos = [i for p, i in found.items() if not p.rsplit("/", 1)[-1].startswith(".tmp-")]
    if not infos:
        return 0, 0, 0.0
    return (len(infos), sum(int(i.get("size") or 0) for i in infos),
            max(_mtime(i) for i in infos))


def plan(store: Store, older_than: float, now: float | None = None) -> list[GcItem]:
    """What gc would delete: RETAINED and TRANSIENT folders of runs past the retention."""
    now = time.time() if now is None else now
    cutoff = now - older_than
    records = {(r.app, r.run_id): r for r in list_runs(store)}
    items: list[GcItem] = []
    for app in store.list_dirs("retained"):
        for run_id in store.list_dirs(f"retained/{app}"):
            item = _candidate(store, f"retained/{app}/{run_id}", "retained", app, run_id,
                              records.get((app, run_id)), cutoff, now)
            if item is not None:
                items.append(item)
    for app in store.list_dirs("runs"):
        for run_id in store.list_dirs(f"runs/{app}"):
            if "files" not in store.list_dirs(f"runs/{app}/{run_id}"):
                continue
            item = _candidate(store, f"runs/{app}/{run_id}/files", "transient", app, run_id,
                              records.get((app, run_id)), cutoff, now)
            if item is not None:
                items.append(item)
    return items


def _candidate(store: Store, prefix: str, tier: str, app: str, run_id: str, record: Any,
               cutoff: float, now: float) -> GcItem | None:
    if record is not None and record.status is RunStatus.RUNNING:
        return None  # a live or resumable run keeps everything
    objects, size, newest = _contents(store, prefix)
    if objects == 0:
        return None
    if record is not None and record.finished_at is not None:
        stamp, why = record.finished_at, f"run {record.status.value} finished"
    else:
        stamp, why = newest, "last written"
    if stamp >= cutoff:
        return None
    return GcItem(prefix, tier, app, run_id, objects, size, now - stamp, why)


def collect(store: Store, items: list[GcItem]) -> int:
    """Delete the planned folders; how many objects went."""
    deleted = 0
    for item in items:
        allowed = (f"retained/{item.app}/{item.run_id}" if item.tier == "retained"
                   else f"runs/{item.app}/{item.run_id}/files")
        deleted += delete_store_prefix(store, item.prefix, [allowed])
    return deleted
