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

Fencing. A driver that takes a run over writes a seal first: `{"y": "s", "e": epoch, "seen":
{older epoch: next free seq}}`, the segments it loaded. A segment of an older epoch at or past
the sealed number was written by a stale driver after the takeover (a frozen one that thawed,
or one whose clock ran slow): loading ignores it, so what the new driver built its view on is
what every later load sees. Seals are records like any other, so compaction carries them.
Epochs are examined newest first: a seal counts only if the segment holding it counts.

The run record is written conditionally (`replace_run` with the version token of the last
read or write): a driver that finds another writer's record there has lost the run.

Every record read here is validated into its schema at this boundary (`storage._records`): a
run record must fit `RunRecord` and name the app and run id of the folder it is stored in; a
journal segment must be a list of well-typed journal records, under a segment name. One that
does not is reported by key (`InvalidRecordError`, a `CorruptRecordError`): `list_runs` skips
it into its `problems`, `load_journal` counts the segment as corrupt, and the others go on.
"""

from __future__ import annotations

import enum
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from . import _codec
from ._errors import (
    CorruptRecordError,
    InvalidNameError,
    InvalidRecordError,
    RecordTooLargeError,
)
from ._messages import printable
from ._records import (
    SEGMENT_NAME,
    RecordProblem,
    check_depth,
    check_journal_batch,
    check_number,
    lease_limit,
    run_record_limit,
    segment_limit,
)
from ._store import Store

__all__ = ["JournalLoad", "RecordProblem", "RunRecord", "RunStatus", "RunStore", "check_name",
           "find_runs", "list_runs"]

log = logging.getLogger("connector_runtime.storage")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}")


def check_name(kind: str, value: str) -> str:
    """`value` if it can name a folder of the store (the whole string: a trailing newline
    is refused too); InvalidNameError otherwise."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidNameError(
            f"invalid {kind} {value!r}: use letters, digits, '.', '_' and '-' "
            "(at most 200 characters, not starting with a symbol)"
        )
    return value


class RunStatus(enum.StrEnum):
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    CONTINUED = "CONTINUED"
    """run() called continue_with(input): the run's work goes on in `continued_as`."""

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
    """{"type", "message", "task", "non_retryable"} of the failure, without tracebacks of
    secrets."""
    app_version: int | str = 1
    key_scheme: int = 1
    """How call keys and the input digest are computed: 1 digests every field (records from
    before 2026-12), 2 digests what differs from the defaults (a field added later with a
    default changes no identity). A run keeps the scheme it was started with."""
    epoch: int = 0
    """Lease epoch of the driver that wrote this record."""
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    finished_at: float | None = None
    finish_count: int = 0
    """How many times the run reached a final status (a failed run can be resumed)."""
    cancel_honoured_at: float | None = None
    """When the cancellation request this run ended CANCELLED on was made (a request no
    newer than this one was honoured already; a rerun resumes the run)."""
    progress: dict[str, Any] = Field(default_factory=dict)
    """Counters for `status`: done, running, retrying, failed, attempts, replayed."""
    warnings: list[str] = Field(default_factory=list)
    workflow_id: str | None = None
    """The chain's id (`AppContext.workflow_id`): given at start, else the first run's id."""
    correlation_id: str | None = None
    """`AppContext.correlation_id`: given at start, else the first run's id."""
    continued_from: str | None = None
    """The run whose continue_with(input) started this one (a chain of runs)."""
    continued_as: str | None = None
    """The run this one continued as (status CONTINUED)."""
    chain: int = 0
    """Position in a continue_with chain: 0 for the first run."""


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
    fenced: list[str] = field(default_factory=list)
    """Segments a stale driver wrote after a newer one sealed the journal (not counted)."""
    problems: dict[str, str] = field(default_factory=dict)
    """Why each segment in `corrupt` was ignored (checksum, MAC, schema, size, name)."""


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
        """The run record, or None; CorruptRecordError (InvalidRecordError, ...) naming the key
        when it cannot be trusted."""
        data = self.store.read(self.key("run.msgpack"))
        if data is None:
            return None
        return run_record(data, self.key("run.msgpack"), self.app, self.run_id)

    def write_run(self, record: RunRecord) -> None:
        """Write the record unconditionally (tools and tests; drivers use `replace_run`)."""
        record.updated_at = time.time()
        self.store.write(self.key("run.msgpack"), self._encoded(record))

    def read_run_versioned(self) -> tuple[RunRecord, Any] | None:
        """The run record and its version token for `replace_run`, or None."""
        got = self.store.read_versioned(self.key("run.msgpack"))
        if got is None:
            return None
        data, token = got
        return run_record(data, self.key("run.msgpack"), self.app, self.run_id), token

    def replace_run(self, record: RunRecord, token: Any) -> Any | None:
        """Write the record if it is still at version `token` (None: only if there is none);
        the new token, or None when another writer changed it."""
        record.updated_at = time.time()
        return self.store.replace_if(self.key("run.msgpack"), self._encoded(record), token)

    def _encoded(self, record: RunRecord) -> bytes:
        key = self.key("run.msgpack")
        try:
            return _codec.encode(record.model_dump(mode="json"), key,
                                 limit=run_record_limit(), what=f"run record {key}")
        except RecordTooLargeError as exc:
            raise RecordTooLargeError(
                f"{exc}: the run's input, output or error is too large for its record (raise "
                f"the limit with CONNECTOR_RUNTIME_MAX_RECORD_BYTES, or pass large data by "
                "reference: a FileReference)") from None

    # -- journal ---------------------------------------------------------------------------

    def segment_key(self, epoch: int, seq: int) -> str:
        return self.key(f"journal/{epoch:010d}-{seq:010d}.msgpack")

    def write_segment(self, epoch: int, seq: int, records: list[dict[str, Any]]) -> bool:
        """Write one immutable segment; False if that (epoch, seq) already exists."""
        key = self.segment_key(epoch, seq)
        return self.store.create(key, _codec.encode(records, key, limit=segment_limit(),
                                                    what=f"journal segment {key}"))

    def load_journal(self) -> JournalLoad:
        listed = [k for k in self.store.list(self.key("journal")) if k.endswith(".msgpack")]
        keys, names = [], {}
        problems: dict[str, str] = {}
        for key in listed:
            match = SEGMENT_NAME.fullmatch(key.rsplit("/", 1)[-1])
            if match is None:  # not a name a driver writes: never read, never counted
                problems[key] = "not a journal segment name (EPOCH-SEQ.msgpack)"
                continue
            keys.append(key)
            names[key] = (int(match.group(1)), int(match.group(2)))
        blobs = self.store.read_many(keys)
        decoded: list[tuple[int, int, str, list[dict[str, Any]]]] = []
        next_seq: dict[int, int] = {}
        limit = segment_limit()
        for key in keys:  # sorted by (epoch, seq): zero-padded names
            epoch, seq = names[key]
            next_seq[epoch] = max(next_seq.get(epoch, 0), seq + 1)
            data = blobs.get(key)
            try:
                if data is None:
                    raise CorruptRecordError(f"{key}: vanished while loading")
                batch = _codec.decode(data, key, where=key, limit=limit)
                decoded.append((epoch, seq, key, check_journal_batch(batch, key)))
            except CorruptRecordError as exc:
                problems[key] = str(exc)
        corrupt = [key for key in listed if key in problems]
        counted, fenced = _fence(decoded)
        covered: set[str] = set()
        segments: list[tuple[str, list[dict[str, Any]]]] = []
        for key, batch in counted:
            if batch and batch[0].get("y") == "c":  # a compaction: replaces the ones it names
                covered.update(self.key(f"journal/{name}") for name in batch[0]["covers"])
                batch = batch[1:]
            segments.append((key, batch))
        live = [(key, batch) for key, batch in segments if key not in covered]
        records = [record for _, batch in live for record in batch]
        return JournalLoad(records=records, segments=len(listed), corrupt=corrupt,
                           next_seq=next_seq, keys=[key for key, _ in live],
                           covered=sorted(covered & set(keys)), fenced=fenced,
                           problems=problems)

    def seal(self, epoch: int, next_seq: dict[int, int]) -> dict[str, Any]:
        """The seal record a driver that claimed the run at `epoch` writes first."""
        return {"y": "s", "e": epoch, "seen": {e: n for e, n in next_seq.items() if e < epoch}}

    def compact(self, epoch: int, seq: int, keys: list[str],
                records: list[dict[str, Any]]) -> int:
        """Write `records` (everything `keys` hold) as one segment, then delete `keys`.

        The new segment names what it replaces, so a crash between the write and the deletes
        leaves a journal that still loads each record once. Returns the sequence number used
        (`seq - 1` when nothing was written: the records would not fit one segment).
        """
        header = {"y": "c", "covers": [k.rsplit("/", 1)[-1] for k in keys]}
        try:
            while not self.write_segment(epoch, seq, [header, *records]):
                seq += 1
        except (RecordTooLargeError, ValueError, TypeError, OverflowError) as exc:
            # too large for one segment, or a record read back that msgpack cannot write
            # again: the segments stay as they are, still one journal
            log.warning("run %s: journal not compacted: %s", self.run_id, exc)
            return seq - 1
        self.store.delete(keys)
        return seq

    # -- cancellation ----------------------------------------------------------------------

    def request_cancel(self, reason: str) -> None:
        key = self.key("cancel.msgpack")
        self.store.write(key, _codec.encode({"reason": reason, "at": time.time()}, key,
                                            limit=lease_limit(), what="cancellation request"))

    def cancel_requested(self) -> str | None:
        """The reason of a pending cancellation request, or None."""
        request = self.cancel_request()
        return None if request is None else request[0]

    def cancel_request(self) -> tuple[str, float] | None:
        """(reason, requested at) of the cancellation request, or None. A request stays in
        the store once honoured; the run record's `cancel_honoured_at` says it was."""
        key = self.key("cancel.msgpack")
        data = self.store.read(key)
        if data is None:
            return None
        try:
            body = _codec.decode(data, key, where=key, limit=lease_limit())
        except CorruptRecordError as exc:
            log.warning("%s", exc)
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("reason", ""), str) \
                or not check_number(body.get("at", 0.0)):
            return "cancelled", 1e300  # unreadable: still a request (honoured once)
        return body.get("reason", "cancelled"), float(body.get("at", 0.0))

    def clear_cancel(self) -> None:
        self.store.delete([self.key("cancel.msgpack")])


def _fence(decoded: list[tuple[int, int, str, list[dict[str, Any]]]],
           ) -> tuple[list[tuple[str, list[dict[str, Any]]]], list[str]]:
    """Split segments (sorted by epoch, seq) into those that count and those a seal fences off.

    Newest epoch first: its segments count; seals in counted segments limit older epochs to
    the sequence numbers their sealer had seen (an epoch it had not seen at all: to none)."""
    by_epoch: dict[int, list[tuple[int, str, list[dict[str, Any]]]]] = {}
    for epoch, seq, key, batch in decoded:
        by_epoch.setdefault(epoch, []).append((seq, key, batch))
    limit: dict[int, int] = {}
    counted: list[tuple[str, list[dict[str, Any]]]] = []
    fenced: list[str] = []
    for epoch in sorted(by_epoch, reverse=True):
        allowed = limit.get(epoch)
        for seq, key, batch in by_epoch[epoch]:
            if allowed is not None and seq >= allowed:
                fenced.append(key)
                continue
            counted.append((key, batch))
            for record in batch:
                if record.get("y") != "s":
                    continue
                seen = {int(e): int(n) for e, n in record["seen"].items()}
                for older in by_epoch:
                    if older < int(record["e"]):
                        n = seen.get(older, 0)
                        limit[older] = min(limit.get(older, n), n)
    counted.sort(key=lambda item: item[0])  # back to (epoch, seq) order
    return counted, sorted(fenced)


def run_record(data: bytes, key: str, app: str, run_id: str) -> RunRecord:
    """The run record in `data`, read from `key` (the folder of `app`'s run `run_id`), once it
    fits the schema; InvalidRecordError (or another CorruptRecordError) naming the key."""
    body = _codec.decode(data, key, where=key, limit=run_record_limit())
    if not isinstance(body, dict):
        raise InvalidRecordError(f"{printable(key)}: a run record is a map, not "
                                 f"{type(body).__name__}")
    try:
        record = RunRecord.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"field {'.'.join(str(p) for p in e['loc']) or '(root)'!r}: {printable(e['msg'])}"
            for e in exc.errors()[:3])
        raise InvalidRecordError(f"{printable(key)}: not a valid run record: {problems}") \
            from None
    if record.app != app or record.run_id != run_id:
        raise InvalidRecordError(
            f"{printable(key)}: names run {printable(record.app)}/{printable(record.run_id)} "
            "but is stored in another run's folder (moved or forged)")
    for name in ("input", "output", "error", "progress"):
        check_depth(getattr(record, name), f"{key}: field {name!r}", json_only=True)
    return record


def find_runs(store: Store, run_id: str) -> list[RunStore]:
    """Every app's run with this id (normally one). An app folder whose name no app can have
    is skipped (with a warning)."""
    check_name("run id", run_id)
    found = []
    for app in store.list_dirs("runs"):
        try:
            rs = RunStore(store, app, run_id)
        except InvalidNameError:
            log.warning("skipped runs/%s/: not a name an app can have", printable(app))
            continue
        if store.exists(rs.key("run.msgpack")):
            found.append(rs)
    return found


def list_runs(store: Store, app: str | None = None,
              problems: list[RecordProblem] | None = None) -> list[RunRecord]:
    """Every run record of the store (of `app`), oldest first. A record that cannot be trusted
    (corrupt, unauthenticated, not fitting its schema, over its size limit, in a folder no run
    can have) is left out and added to `problems` by key, or logged as a warning when the
    caller gave no `problems` list to report them from."""
    log_them = problems is None
    problems = [] if problems is None else problems
    apps = [check_name("app name", app)] if app else store.list_dirs("runs")
    where: dict[str, tuple[str, str]] = {}
    for name in apps:
        try:
            check_name("app name", name)
        except InvalidNameError as exc:
            _problem(problems, f"runs/{name}/", str(exc), log_them)
            continue
        for rid in store.list_dirs(f"runs/{name}"):
            key = f"runs/{name}/{rid}/run.msgpack"
            try:
                where[key] = (name, check_name("run id", rid))
            except InvalidNameError as exc:
                _problem(problems, f"runs/{name}/{rid}/", str(exc), log_them)
    out = []
    for key, data in store.read_many(list(where)).items():
        try:
            out.append(run_record(data, key, *where[key]))
        except CorruptRecordError as exc:
            _problem(problems, key, str(exc).removeprefix(printable(key) + ": "), log_them)
    return sorted(out, key=lambda r: r.created_at)


def _problem(problems: list[RecordProblem], key: str, reason: str, log_it: bool) -> None:
    problem = RecordProblem(key, reason)
    if log_it:
        log.warning("skipped %s", problem)
    problems.append(problem)
