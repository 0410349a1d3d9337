"""The run lease: at most one live driver per run, with fencing by epoch.

The lease record holds owner, host, pid, epoch and expiry. Every change goes through the
store's compare-and-swap (`replace_if`), so two drivers racing for a run cannot both win: on S3
that is `If-Match`/`If-None-Match`, on local files an flock'd check-and-replace. A lease whose
expiry passed is free; so is one held by a dead process on this host, so a local rerun after a
crash does not wait for the expiry. Taking a lease over bumps the epoch; journal segments are
named by epoch, and a driver that finds its epoch superseded when renewing stops writing.

Releasing keeps the record (expiry 0) so epochs only ever grow.

A lease record is validated when read (`LeaseInfo.decode`): exactly its five fields, with their
types, a finite expiry and a pid and epoch in range. One that does not fit is treated as a
corrupt one always was: as no lease.

Fencing on the holder's own clock. Another driver may take the run once the stored expiry has
passed, whether or not this one knows. So this process trusts its lease only until
`started + ttl - margin` on its monotonic clock, `started` being when the last successful
acquire or renewal was *sent* (the stored expiry is at least that late): `ensure()` is called
before anything is recorded, dispatched or finished, and past that point it renews
synchronously (a conditional write: it fails if anyone took the run) before letting the caller
go on. A driver frozen past its TTL (SIGSTOP, a long GC pause, a suspended VM) therefore writes
nothing when it thaws: its first write finds the lease taken and raises `LeaseLostError`.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from . import _codec
from ._errors import CorruptRecordError, InvalidRecordError, LeaseHeldError, LeaseLostError
from ._records import check_number, lease_limit
from ._runs import RunStore

__all__ = ["Lease", "LeaseInfo", "pid_alive"]

HOST = socket.gethostname()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class LeaseInfo:
    """A decoded lease record."""

    owner: str
    host: str
    pid: int
    epoch: int
    expires_at: float

    def live(self, now: float) -> bool:
        if not self.owner or self.expires_at <= now:
            return False
        return not (self.host == HOST and not pid_alive(self.pid))

    def encode(self, where: str = "") -> bytes:
        """The lease as a record to be written under store key `where`."""
        return _codec.encode(self.__dict__, where, limit=lease_limit(), what="lease")

    @classmethod
    def decode(cls, data: bytes, where: str | None = None) -> LeaseInfo:
        """The lease in `data` (read from `where`); CorruptRecordError, or InvalidRecordError
        when it does not fit the schema (callers treat both as no lease)."""
        what = where or "lease"
        body = _codec.decode(data, what, where=where, limit=lease_limit())
        if not isinstance(body, dict) or set(body) != set(_FIELDS):
            raise InvalidRecordError(f"{what}: a lease holds exactly {', '.join(_FIELDS)}")
        for name, ok in _FIELDS.items():
            if not ok(body[name]):
                raise InvalidRecordError(f"{what}: field {name!r} of the lease is not valid")
        return cls(**body)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**62


_FIELDS = {
    "owner": lambda v: isinstance(v, str) and len(v) <= 1000,
    "host": lambda v: isinstance(v, str) and len(v) <= 1000,
    "pid": _count,
    "epoch": _count,
    "expires_at": check_number,
}


class Lease:
    """This process's claim on one run."""

    def __init__(self, runs: RunStore, ttl: float = 30.0, owner: str | None = None) -> None:
        self.runs = runs
        self.ttl = ttl
        self.owner = owner or f"{HOST}:{os.getpid()}:{os.urandom(4).hex()}"
        self.epoch = 0
        self.lost = False
        self.valid_until = 0.0
        """Monotonic time until which this process may act on the lease without renewing."""
        self._key = runs.key("lease.msgpack")
        self._lock = threading.Lock()
        self._token: Any = None
        """Version of the lease object this process last wrote (release needs no read)."""
        self.created = False
        """The lease object did not exist: no driver ever held this run before this one."""

    @property
    def margin(self) -> float:
        """Safety margin under the TTL for clock drift between hosts."""
        return min(2.0, self.ttl / 10)

    def read(self) -> LeaseInfo | None:
        data = self.runs.store.read(self._key)
        if data is None:
            return None
        try:
            return LeaseInfo.decode(data, self._key)
        except (CorruptRecordError, TypeError):
            return None

    def _record(self, epoch: int, expires_at: float) -> bytes:
        return LeaseInfo(self.owner, HOST, os.getpid(), epoch, expires_at).encode(self._key)

    def acquire(self, absent: bool = False) -> int:
        """Take the lease; returns the new epoch. Raises LeaseHeldError if a live driver has it.

        `absent`: the caller found no run record, so there is likely no lease either: create
        it (epoch 1) without reading first; if one is there after all, read it and go on."""
        if absent:
            sent = time.monotonic()
            token = self.runs.store.replace_if(self._key, self._record(1, time.time() + self.ttl),
                                               None)
            if token:
                self.epoch, self._token, self.created = 1, token, True
                self.valid_until = sent + self.ttl - self.margin
                return 1
        for _ in range(8):
            current = self.runs.store.read_versioned(self._key)
            token = None
            previous: LeaseInfo | None = None
            if current is not None:
                data, token = current
                try:
                    previous = LeaseInfo.decode(data, self._key)
                except (CorruptRecordError, TypeError):
                    previous = None
            now = time.time()
            if previous is not None and previous.live(now) and previous.owner != self.owner:
                raise LeaseHeldError(
                    f"run {self.runs.run_id} is owned by a live driver ({previous.owner}, "
                    f"lease expires in {previous.expires_at - now:.0f}s)",
                    owner=previous.owner,
                )
            epoch = (previous.epoch if previous else 0) + 1
            sent = time.monotonic()
            written = self.runs.store.replace_if(self._key, self._record(epoch, now + self.ttl),
                                                 token)
            if written:
                self.epoch, self._token = epoch, written
                self.valid_until = sent + self.ttl - self.margin
                return epoch
        raise LeaseHeldError(f"run {self.runs.run_id}: lost the race for its lease, try again")

    def renew(self) -> None:
        """Extend the expiry; raises LeaseLostError if another driver took the run over."""
        with self._lock:
            self._renew()

    def _renew(self) -> None:
        if self.lost:
            raise self._lost_error()
        sent = time.monotonic()
        current = self.runs.store.read_versioned(self._key)
        if current is not None:
            data, token = current
            try:
                info = LeaseInfo.decode(data, self._key)
            except (CorruptRecordError, TypeError):
                info = None
            if info and info.owner == self.owner and info.epoch == self.epoch:
                record = self._record(self.epoch, time.time() + self.ttl)
                written = self.runs.store.replace_if(self._key, record, token)
                if written:
                    self._token = written
                    self.valid_until = sent + self.ttl - self.margin
                    return
        self.lost = True
        raise self._lost_error()

    def ensure(self) -> None:
        """Return only while this process still owns the run: at once if the lease is fresh
        on the local clock, after a synchronous renewal if it may have expired. Raises
        LeaseLostError otherwise (taken over, or not renewable: the store did not answer)."""
        if self.lost:
            raise self._lost_error()
        if time.monotonic() < self.valid_until:
            return
        with self._lock:
            if time.monotonic() < self.valid_until:
                return
            try:
                self._renew()
            except LeaseLostError:
                raise
            except Exception as exc:
                self.lost = True
                raise LeaseLostError(
                    f"run {self.runs.run_id}: this driver's lease (epoch {self.epoch}) expired "
                    f"and could not be renewed ({type(exc).__name__}: {exc}); it stops writing"
                ) from exc

    def _lost_error(self) -> LeaseLostError:
        return LeaseLostError(
            f"run {self.runs.run_id}: this driver's lease (epoch {self.epoch}) was taken over "
            "by another driver; it stops without recording anything more"
        )

    def release(self) -> None:
        """Mark the lease free for the next driver. Conditional on the version this process
        wrote last (one write); if the lease changed since, it is read and released only if
        it is still this process's."""
        if self._token is not None and not self.lost:
            with self._lock:
                released = LeaseInfo("", HOST, 0, self.epoch, 0.0).encode(self._key)
                if self.runs.store.replace_if(self._key, released, self._token):
                    self._token = None
                    return
        current = self.runs.store.read_versioned(self._key)
        if current is None:
            return
        data, token = current
        try:
            info = LeaseInfo.decode(data, self._key)
        except (CorruptRecordError, TypeError):
            return
        if info.owner == self.owner:
            released = LeaseInfo("", HOST, 0, info.epoch, 0.0).encode(self._key)
            self.runs.store.replace_if(self._key, released, token)
