"""SQL source connector library: plain functions over ADBC (SQLite, PostgreSQL) and Arrow.

No Ray or runtime imports: an App Framework app (``connectors/sql/app.py``) wraps these
functions in tasks. Inputs and outputs are JSON-able values or pyarrow objects.
"""

from connectors.sql._checksum import add_checksums
from connectors.sql._demo import DEMO_TABLES, generate_demo_postgres, generate_demo_sqlite
from connectors.sql._source import (
    DEFAULT_BATCH_ROWS,
    DEFAULT_TARGET_ROWS,
    SourceError,
    connect,
    describe_tables,
    extract_partition,
    list_tables,
    metadata_table,
    next_watermark,
    plan_partitions,
    plan_tables,
    read_partition_checksum,
    redact_url,
    table_checksum,
)

__all__ = [
    "DEFAULT_BATCH_ROWS",
    "DEFAULT_TARGET_ROWS",
    "DEMO_TABLES",
    "SourceError",
    "add_checksums",
    "connect",
    "describe_tables",
    "extract_partition",
    "generate_demo_postgres",
    "generate_demo_sqlite",
    "list_tables",
    "metadata_table",
    "next_watermark",
    "plan_partitions",
    "plan_tables",
    "read_partition_checksum",
    "redact_url",
    "table_checksum",
]
