"""Shared checks: extract every partition of a table and compare with the source."""

from __future__ import annotations

import itertools
from pathlib import Path

from connectors.sql import (
    add_checksums,
    extract_partition,
    plan_partitions,
    read_partition_checksum,
    table_checksum,
)


def extract_all(conn, url: str, table: str, dest: Path, **plan) -> tuple[list[dict], list[dict]]:
    """Plan ``table`` and extract every partition under ``dest``; returns (plan, results)."""
    partitions = plan_partitions(conn, table, **plan)
    results = [
        extract_partition(url, table, p, str(dest / table / f"part-{p['index']:04d}.parquet"))
        for p in partitions
    ]
    return partitions, results


def assert_exactly_once(conn, table: str, results: list[dict], **where) -> int:
    """Rows and checksums of the Parquet files equal the source's; returns the row count."""
    source_rows, source_checksum = table_checksum(conn, table, **where)
    file_rows, file_checksum = read_partition_checksum([r["path"] for r in results])
    assert file_rows == sum(r["rows"] for r in results) == source_rows
    assert file_checksum == add_checksums(*(r["checksum"] for r in results)) == source_checksum
    return source_rows


def assert_ranges_tile(partitions: list[dict]) -> None:
    """Key ranges are ordered, disjoint and contiguous."""
    for before, after in itertools.pairwise(partitions):
        assert before["hi"] + 1 == after["lo"]
    assert all(p["lo"] <= p["hi"] for p in partitions)
