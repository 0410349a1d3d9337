"""`connector-runtime`: the command line (run, resume, status, list, cancel, gc, demo).

Rooms: `_main` (parser, verbs, exit codes), `_progress` (live progress on stderr), `_gc`
(deleting stored objects past retention), `_demo` (the main job end to end).
"""

from ._main import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_OWNED, EXIT_USAGE, main

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_OWNED", "EXIT_USAGE", "main"]
