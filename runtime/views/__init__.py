"""What a user sees of a run, derived from the store alone: the CLI and the service share it.

Rooms: `_status` (`status`: the run record plus what its journal says), `_runs` (one run, a run
list, the same-run rule), `_attempts` (attempt outcomes and durations from the journal).
"""

from ._attempts import Attempt, attempts
from ._runs import driver_alive, input_digest, read_run, same_run_conflict, summary
from ._status import describe

__all__ = [
    "Attempt",
    "attempts",
    "describe",
    "driver_alive",
    "input_digest",
    "read_run",
    "same_run_conflict",
    "summary",
]
