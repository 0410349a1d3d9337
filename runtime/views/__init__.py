"""What a user sees of a run, derived from the store alone: the CLI and the service share it.

Rooms: `_status` (`status`: the run record plus what its journal says), `_runs` (one run, a run
list, the same-run rule), `_attempts` (attempt outcomes and durations from the journal),
`_chain` (a chain of runs made by continue_with), `_timeline` (a run's history: attempts with
times and workers, driver phases), `_tasks` (`status --tasks`: a row per task call), `_trace`
(`trace`: Chrome Trace Event JSON).
"""

from ._attempts import Attempt, attempts
from ._chain import chain_end, chain_of
from ._runs import driver_alive, input_digest, read_run, same_run_conflict, summary
from ._status import describe
from ._tasks import TaskRow, task_rows
from ._timeline import FAILED_OUTCOMES, Phase, Span, Timeline, load_timeline, timeline
from ._trace import trace_events, trace_json

__all__ = [
    "FAILED_OUTCOMES",
    "Attempt",
    "Phase",
    "Span",
    "TaskRow",
    "Timeline",
    "attempts",
    "chain_end",
    "chain_of",
    "describe",
    "driver_alive",
    "input_digest",
    "load_timeline",
    "read_run",
    "same_run_conflict",
    "summary",
    "task_rows",
    "timeline",
    "trace_events",
    "trace_json",
]
