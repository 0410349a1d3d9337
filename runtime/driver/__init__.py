"""The driver: claim a run, load its journal, replay run() and dispatch what is not recorded.

Rooms: `_driver` (a run's life: validate, claim, orchestrate, finish), `_journal` (index and
group commit), `_orchestrator` (what `await self.task(...)` in run() talks to), `_step` (one
task call: recorded, retried, recorded again), `_keys` (call identities), `_guards`
(determinism guards), `_replay` (replaying a journal without executing tasks).
"""

import importlib

_HOMES = {
    "app_path_of": "_driver", "new_run_id": "_driver", "run_app": "_driver",
    "run_app_async": "_driver", "validate_input": "_driver",
    "GroupCommitter": "_journal", "JournalIndex": "_journal", "commit_interval": "_journal",
    "CallKeys": "_keys", "canonical_json": "_keys", "check_same_run": "_keys",
    "digest": "_keys", "input_digest": "_keys",
    "ReplayReport": "_replay", "replay_run": "_replay",
    "Budget": "_step", "Progress": "_step", "StepRunner": "_step",
}
"""Where each name lives, imported on first use: `_driver` pulls in Ray (0.35 s), which the
store-only views (`status`, `tasks`, `trace`) and their CLI verbs do without."""


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


__all__ = sorted(_HOMES)
