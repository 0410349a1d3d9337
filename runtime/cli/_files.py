"""`connector-runtime files RUN_ID [--download DIR]`: a completed run's output files.

The files are the FileReferences in the run's recorded Output (for a continue_with chain, the
last run's), found in the record's JSON - the app's module is not imported, so this works
wherever the store can be read. Each is shown with its store path (a key in the run's store),
size, format, tier and hash; `--download DIR` fetches each into DIR, hash-checked (a file
reference as DIR/{name}, a directory reference as DIR/{name}/...; a name two fields share gets
its field path in front).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from typing import Any

from application_sdk.contracts import FileReference
from application_sdk.errors import StorageIntegrityError
from storage import PathRefusedError, RunStatus, Store, StoreError, materialize

from .._runcontext import safe_component

__all__ = ["cmd_files", "output_references"]


def output_references(output: Any, path: str = "") -> list[tuple[str, FileReference]]:
    """(field path, reference) of every durable FileReference in a recorded output."""
    found: list[tuple[str, FileReference]] = []
    if isinstance(output, dict):
        if "storage_path" in output and "is_durable" in output:
            ref = FileReference.model_validate(output)
            return [(path or "output", ref)] if ref.is_durable and ref.storage_path else []
        for key, value in output.items():
            found += output_references(value, f"{path}.{key}" if path else str(key))
    elif isinstance(output, list):
        for i, value in enumerate(output):
            found += output_references(value, f"{path}.{i}")
    return found


def _row(field: str, ref: FileReference, store: Store) -> dict[str, Any]:
    key = (ref.storage_path or "").rstrip("/")
    present = store.exists(key) or bool(store.list(key))
    return {"field": field, "storage_path": ref.storage_path,
            "url": f"{store.url.rstrip('/')}/{ref.storage_path}", "format": ref.format,
            "size_bytes": ref.size_bytes, "file_count": ref.file_count,
            "tier": ref.tier.value, "sha256": ref.sha256, "present": present}


def _safe_name(name: str) -> str:
    name = safe_component(name).lstrip(".")
    return name or "data"


def _download(store: Store, refs: list[tuple[str, FileReference]], folder: str) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    # names come from store records: one safe path component each, never `..` or a path
    names = [_safe_name(os.path.basename((r.storage_path or "").rstrip("/"))) for _, r in refs]
    targets = []
    cache = tempfile.mkdtemp(prefix=".connector-runtime-fetch-", dir=folder)
    try:
        for (field, ref), name in zip(refs, names, strict=True):
            if names.count(name) > 1:
                name = _safe_name(f"{field}-{name}")
            target = os.path.join(folder, name)
            if os.path.lexists(target):
                raise StoreError(f"--download: {target} exists; choose an empty folder")
            got = materialize(store, ref, cache)
            if os.path.isdir(got):
                shutil.copytree(got, target)
            else:
                shutil.copyfile(got, target)
            targets.append(target)
    finally:
        for root, dirs, _ in os.walk(cache):  # cached copies are read-only
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o700)
        shutil.rmtree(cache, ignore_errors=True)
    return targets


def cmd_files(store: Store, record: Any, download: str | None, as_json: bool) -> int:
    """List (and fetch) the output files of a completed run; the exit code."""
    from ..views import chain_end

    last = chain_end(store, record)
    if last.status is not RunStatus.COMPLETED:
        print(f"error: run {last.run_id} is {last.status.value}: only a completed run has "
              "output files", file=sys.stderr)
        return 1
    refs = output_references(last.output or {})
    rows = [_row(field, ref, store) for field, ref in refs]
    gone = [r for r in rows if not r["present"]]
    for row in gone:
        why = (" (TRANSIENT: cleanup_storage deleted it when the run completed; return "
               "RETAINED or PERSISTENT references from run() to keep a run's results)"
               if row["tier"] == "transient" else " (deleted by gc or by hand)")
        print(f"warning: {row['field']}: {row['storage_path']} is gone from the store{why}",
              file=sys.stderr)
    if download and gone:
        print("error: --download: some output files are gone from the store", file=sys.stderr)
        return 1
    if download:
        try:
            targets = _download(store, refs, download)
        except (StorageIntegrityError, PathRefusedError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        for row, target in zip(rows, targets, strict=True):
            row["downloaded_to"] = target
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            size = "?" if row["size_bytes"] is None else f"{row['size_bytes']} B"
            print("\t".join([row["field"], row["url"], row["format"], size, row["tier"],
                             *([row["downloaded_to"]] if "downloaded_to" in row else [])]))
    if not rows:
        print(f"run {last.run_id} has no output files", file=sys.stderr)
    return 0
