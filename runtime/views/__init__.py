"""What a user sees of a run, derived from the store alone: the CLI and the service share it.

Rooms: `_status` (`status`: the run record plus what its journal says), `_runs` (one run, a run
list, the same-run rule), `_attempts` (attempt outcomes and durations from the journal),
`_chain` (a chain of runs made by continue_with).
"""

from ._attempts import Attempt, attempts
from ._chain import chain_end, chain_of
from ._runs import driver_alive, input_digest, read_run, same_run_conflict, summary
from ._status import describe

__all__ = [
    "Attempt",
    "attempts",
    "chain_end",
    "chain_of",
    "describe",
    "driver_alive",
    "input_digest",
    "read_run",
    "same_run_conflict",
    "summary",
]
