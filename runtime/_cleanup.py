"""Built-in cleanup, run inside the cleanup tasks on a worker."""

from __future__ import annotations

import os
import shutil

from ._worker import RunContext, scratch_root

__all__ = ["cleanup_scratch", "cleanup_transient"]


def cleanup_scratch(run: RunContext) -> int:
    """Delete this run's scratch directories on this node; returns how many files went."""
    root = os.path.join(scratch_root(), run.app_name, run.run_id)
    if not os.path.isdir(root):
        return 0
    count = sum(len(files) for _, _, files in os.walk(root))
    shutil.rmtree(root, ignore_errors=True)
    return count


def cleanup_transient(run: RunContext) -> int:
    """Delete the run's TRANSIENT objects (none are tracked until FileReference support)."""
    return 0
