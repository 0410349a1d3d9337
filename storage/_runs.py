"""Run records and the journal, laid out in the store (documented in docs/store-layout.md).

```
runs/{app}/{run_id}/run.msgpack                 RunRecord: identity, input, status, output
runs/{app}/{run_id}/lease.msgpack               LeaseRecord: owner, epoch, expiry
runs/{app}/{run_id}/cancel.msgpack              a cancellation request, if any
runs/{app}/{run_id}/journal/{epoch}-{seq}.msgpack  immutable segments of journal records
runs/{app}/{run_id}/files/...                   TRANSIENT FileReference objects
retained/{app}/{run_id}/...                     RETAINED objects
persistent/{app}/{run_id}/...                   PERSISTENT objects
```

The journal is append-only: each group commit writes one new immutable segment named by the
writer's lease epoch and a sequence number, created exclusively so two writers can never
overwrite each other. Loading reads every segment in one batched call.
"""

from __future__ import annotations

import enum
import re
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from . import _codec
from ._errors import CorruptRecordError, StoreError
from ._store import Store

__all__ = ["JournalLoad", "RunRecord", "RunStatus", "RunStore", "find_runs", "list_runs"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")


def check_name(kind: str, value: str) -> str:
    if not _NAME.match(value):
        raise StoreError(
            f"invalid {kind} {value!r}: use letters, digits, '.', '_' and '-' "
            "(at most 200 characters, not starting with a symbol)"
        )
    return value


class RunStatus(enum.StrEnum):
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def finished(self) -> bool:
        return self is not RunStatus.RUNNING


class RunRecord(BaseModel):
    """What the store knows about one run."""

    app: str
    run_id: str
    app_path: str
    """`module:Class` the run was started with; `resume` imports it again."""
    entrypoint: str
    input: dict[str, Any]
    input_digest: str
    status: RunStatus = RunStatus.RUNNING
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    """{"type", "message", "task"} of the failure, without tracebacks of secrets."""
    app_version: int = 1
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    finished_at: float | None = None
    finish_count: int = 0
    """How many times the run reached a final status (a failed run can be resumed)."""
    progress: dict[str, Any] = Field(default_factory=dict)
    """Counters for `status`: done, running, retrying, failed, attempts, replayed."""
    warnings: list[str] = Field(default_factory=list)


@dataclass
class JournalLoad:
    """What `load_journal` read. A dataclass, not a model: validating would copy every record."""

    records: list[dict[str, Any]]
    segments: int
    corrupt: list[str]
    """Keys of segments that failed their checksum and were ignored."""
    next_seq: dict[int, int]
    """Per epoch, the next free segment sequence number."""
    keys: list[str] = field(default_factory=list)
    """The segments the records came from (not those a compaction replaced)."""
    covered: list[str] = field(default_factory=list)
    """Segments a compaction replaced that are still there (a crash before their deletion)."""


class RunStore:
    """One run's corner of the store."""

    def __init__(self, store: Store, app: str, run_id: str) -> None:
        self.store = store
        self.app = check_name("app name", app)
        self.run_id = check_name("run id", run_id)
        self.prefix = f"runs/{app}/{run_id}"

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    # -- run record ------------------------------------------------------------------------

    def read_run(self) -> RunRecord | None:
        data = self.store.read(self.key("run.msgpack"))
        if data is None:
            return None
        return RunRecord.model_validate(_codec.decode(data, self.key("run.msgpack")))

    def write_run(self, record: RunRecord) -> None:
        record.updated_at = time.time()
        self.store.write(self.key("run.msgpack"), _codec.encode(record.model_dump(mode="json")))

    # -- journal ---------------------------------------------------------------------------

    def segment_key(self, epoch: int, seq: int) -> str:
        return self.key(f"journal/{epoch:010d}-{seq:010d}.msgpack")

    def write_segment(self, epoch: int, seq: int, records: list[dict[str, Any]]) -> bool:
        """Write one immutable segment; False if that (epoch, seq) already exists."""
        return self.store.create(self.segment_key(epoch, seq), _codec.encode(records))

    def load_journal(self) -> JournalLoad:
        keys = [k for k in self.store.list(self.key("journal")) if k.endswith(".msgpack")]
        blobs = self.store.read_many(keys)
        segments: list[tuple[str, list[dict[str, Any]]]] = []
        corrupt: list[str] = []
        covered: set[str] = set()
        next_seq: dict[int, int] = {}
        for key in keys:  # sorted by (epoch, seq): zero-padded names
            epoch, seq = (int(x) for x in key.rsplit("/", 1)[-1].split(".")[0].split("-"))
            next_seq[epoch] = max(next_seq.get(epoch, 0), seq + 1)
            data = blobs.get(key)
            try:
                if data is None:
                    raise CorruptRecordError(f"{key}: vanished while loading")
                batch = _codec.decode(data, key)
            except CorruptRecordError:
                corrupt.append(key)
                continue
            if batch and batch[0].get("y") == "c":  # a compaction: replaces the ones it names
                covered.update(self.key(f"journal/{name}") for name in batch[0]["covers"])
                batch = batch[1:]
            segments.append((key, batch))
        live = [(key, batch) for key, batch in segments if key not in covered]
        records = [record for _, batch in live for record in batch]
        return JournalLoad(records=records, segments=len(keys), corrupt=corrupt,
                           next_seq=next_seq, keys=[key for key, _ in live],
                           covered=sorted(covered & set(keys)))

    def compact(self, epoch: int, seq: int, keys: list[str],
                records: list[dict[str, Any]]) -> int:
        """Write `records` (everything `keys` hold) as one segment, then delete `keys`.

        The new segment names what it replaces, so a crash between the write and the deletes
        leaves a journal that still loads each record once. Returns the sequence number used.
        """
        header = {"y": "c", "covers": [k.rsplit("/", 1)[-1] for k in keys]}
        while not self.write_segment(epoch, seq, [header, *records]):
            seq += 1
        self.store.delete(keys)
        return seq

    # -- cancellation ----------------------------------------------------------------------

    def request_cancel(self, reason: str) -> None:
        self.store.write(self.key("cancel.msgpack"),
                         _codec.encode({"reason": reason, "at": time.time()}))

    def cancel_requested(self) -> str | None:
        data = self.store.read(self.key("cancel.msgpack"))
        if data is None:
            return None
        try:
            return str(_codec.decode(data).get("reason", "cancelled"))
        except CorruptRecordError:
            return "cancelled"

    def clear_cancel(self) -> None:
        self.store.delete([self.key("cancel.msgpack")])


def find_runs(store: Store, run_id: str) -> list[RunStore]:
    """Every app's run with this id (normally one)."""
    check_name("run id", run_id)
    found = []
    for app in store.list_dirs("runs"):
        rs = RunStore(store, app, run_id)
        if store.exists(rs.key("run.msgpack")):
            found.append(rs)
    return found


def list_runs(store: Store, app: str | None = None) -> list[RunRecord]:
    apps = [app] if app else store.list_dirs("runs")
    keys = []
    for name in apps:
        keys += [f"runs/{name}/{rid}/run.msgpack" for rid in store.list_dirs(f"runs/{name}")]
    out = []
    for key, data in store.read_many(keys).items():
        try:
            out.append(RunRecord.model_validate(_codec.decode(data, key)))
        except CorruptRecordError:
            continue
    return sorted(out, key=lambda r: r.created_at)
