"""Small output helpers shared by the connector apps (used inside tasks only).

Destinations are fsspec URLs (a local folder, ``file://``, ``s3://bucket/prefix``). Credentials
come from the environment (``AWS_*``), never from the URL: a URL is part of a run's input and
so of its stored record.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any
from urllib.parse import urlsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem

__all__ = ["check_destination", "join_url", "write_json", "write_parquet"]


def check_destination(url: str) -> str:
    """``url`` unchanged; refuses credentials inside it (they would be stored with the run)."""
    if not url:
        raise ValueError("destination must not be empty")
    if "@" in urlsplit(url).netloc:
        raise ValueError(
            "credentials in the destination URL are not allowed: configure them in the "
            "environment (AWS_ACCESS_KEY_ID, AWS_PROFILE, ...)"
        )
    return url


def join_url(base: str, *parts: str) -> str:
    """``base/part/...`` for a local path or an fsspec URL."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def write_json(url: str, value: Any) -> int:
    """Write ``value`` as indented JSON at ``url``; the object appears complete or not at all.

    Local files go through a temporary name and ``os.replace``; object stores publish an
    object only when its single PUT completes. Returns the size in bytes.
    """
    data = (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()
    fs, path = fsspec.core.url_to_fs(url)
    if isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        temp = f"{path}.partial-{uuid.uuid4().hex}"
        with open(temp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
    else:
        fs.pipe_file(path, data)
    return len(data)


def write_parquet(table: Any, url: str) -> int:
    """Write a pyarrow Table as one Parquet file at ``url``, complete or not at all."""
    import tempfile

    import pyarrow.parquet as pq

    fs, path = fsspec.core.url_to_fs(url)
    local = isinstance(fs, LocalFileSystem)
    if local:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        temp = f"{path}.partial-{uuid.uuid4().hex}"
    else:
        temp = os.path.join(tempfile.gettempdir(), f"connector-{uuid.uuid4().hex}.parquet")
    try:
        pq.write_table(table, temp)
        size = os.path.getsize(temp)
        if local:
            os.replace(temp, path)
        else:
            fs.put_file(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)
    return size
