"""Store errors: backend (fsspec/botocore/OS) errors are translated into these in one place."""

from __future__ import annotations

from application_sdk.errors import AppError

__all__ = ["CorruptRecordError", "InvalidNameError", "InvalidRecordError", "LeaseHeldError",
           "LeaseLostError", "RecordKeyError", "RecordTooLargeError", "StoreError",
           "UnauthenticatedRecordError"]


class StoreError(AppError):
    """A store operation failed. The message names the store URL and key, never credentials.

    Under `AppError`, the root of everything raised to users, so `except AppError` sees it."""


class CorruptRecordError(StoreError):
    """A record's bytes do not match its checksum: torn, truncated or tampered with."""


class LeaseHeldError(StoreError):
    """The run is owned by another live driver."""

    def __init__(self, message: str, owner: str = "") -> None:
        super().__init__(message)
        self.owner = owner

    def __reduce__(self):  # keep pickling (Ray) working with the extra argument
        return (type(self), (self.args[0], self.owner))


class LeaseLostError(StoreError):
    """This driver's lease on a run was taken over; it must stop writing."""


class InvalidRecordError(CorruptRecordError):
    """A record's checksum holds but its contents do not fit its schema (wrong types, too
    large, too deeply nested, stored under another run's name). Treated like a corrupt one:
    reported by key, never acted on."""


class RecordTooLargeError(InvalidRecordError):
    """A record over its size limit (refused before decoding), or with more maps and arrays
    than its size allows."""


class UnauthenticatedRecordError(CorruptRecordError):
    """With a record key set, a record without a valid MAC under that key: written without
    the key, with another key, moved from another place in the store, or forged."""


class InvalidNameError(StoreError):
    """An app name or run id that cannot name a folder of the store (CLI exit code 2)."""


class RecordKeyError(StoreError):
    """The record key configured in the environment cannot be used (CLI exit code 2)."""

