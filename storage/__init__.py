"""Durable state on fsspec: the store, run records, the journal, leases.

Knows nothing of Ray; uses only `application_sdk.contracts` from the rest of the project.
"""

from ._cache import materialize
from ._codec import decode, encode
from ._errors import (
    CorruptRecordError,
    InvalidNameError,
    InvalidRecordError,
    LeaseHeldError,
    LeaseLostError,
    RecordKeyError,
    RecordTooLargeError,
    StoreError,
    UnauthenticatedRecordError,
)
from ._files import (
    PathRefusedError,
    StoredObject,
    check_inside,
    delete_local,
    delete_store_prefix,
    ensure_private_dir,
    persist,
    tier_prefix,
)
from ._lease import Lease, LeaseInfo
from ._messages import printable
from ._records import RecordProblem
from ._runs import (
    JournalLoad,
    RunRecord,
    RunStatus,
    RunStore,
    check_name,
    find_runs,
    list_runs,
)
from ._state import load_app_state, save_app_state, state_key
from ._store import DEFAULT_STORE_DIR, Store, UnsafeEntryError, open_store, safe_key
from ._trust import RecordKey, operator_file, record_key

__all__ = [
    "DEFAULT_STORE_DIR",
    "CorruptRecordError",
    "InvalidNameError",
    "InvalidRecordError",
    "JournalLoad",
    "Lease",
    "LeaseHeldError",
    "LeaseInfo",
    "LeaseLostError",
    "PathRefusedError",
    "RecordKey",
    "RecordKeyError",
    "RecordProblem",
    "RecordTooLargeError",
    "RunRecord",
    "RunStatus",
    "RunStore",
    "Store",
    "StoreError",
    "StoredObject",
    "UnauthenticatedRecordError",
    "UnsafeEntryError",
    "check_inside",
    "check_name",
    "decode",
    "delete_local",
    "delete_store_prefix",
    "encode",
    "ensure_private_dir",
    "find_runs",
    "list_runs",
    "load_app_state",
    "materialize",
    "open_store",
    "operator_file",
    "persist",
    "printable",
    "record_key",
    "safe_key",
    "save_app_state",
    "state_key",
    "tier_prefix",
]
