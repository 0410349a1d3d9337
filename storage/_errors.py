"""Store errors: backend (fsspec/botocore/OS) errors are translated into these in one place."""

from __future__ import annotations

from application_sdk.errors import AppError

__all__ = ["CorruptRecordError", "LeaseHeldError", "LeaseLostError", "StoreError"]


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
