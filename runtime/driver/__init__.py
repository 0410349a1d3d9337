"""The driver: claim a run, load its journal, replay run() and dispatch what is not recorded.

Rooms: `_driver` (a run's life: validate, claim, orchestrate, finish), `_journal` (index and
group commit), `_orchestrator` (what `await self.task(...)` in run() talks to), `_step` (one
task call: recorded, retried, recorded again), `_keys` (call identities), `_guards`
(determinism guards), `_replay` (replaying a journal without executing tasks).
"""

from ._driver import (
    app_path_of,
    check_same_run,
    input_digest,
    new_run_id,
    run_app,
    run_app_async,
    validate_input,
)
from ._journal import GroupCommitter, JournalIndex, commit_interval
from ._keys import CallKeys, canonical_json, digest
from ._replay import ReplayReport, replay_run
from ._step import Budget, Progress, StepRunner

__all__ = [
    "Budget",
    "CallKeys",
    "GroupCommitter",
    "JournalIndex",
    "Progress",
    "ReplayReport",
    "StepRunner",
    "app_path_of",
    "canonical_json",
    "check_same_run",
    "commit_interval",
    "digest",
    "input_digest",
    "new_run_id",
    "replay_run",
    "run_app",
    "run_app_async",
    "validate_input",
]
