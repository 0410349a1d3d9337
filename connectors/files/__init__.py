"""Files connector library: list CSV/JSON files, infer and unify a schema, convert to Parquet.

Plain Python (no Ray, no runtime imports); see :mod:`connectors.files._convert`
for the design notes.
"""

from ._convert import (
    DEFAULT_PATTERNS,
    MalformedFileError,
    batch_files,
    convert_file,
    infer_files_schema,
    infer_schema,
    list_files,
    output_url,
)
from ._schema import schema_from_json, schema_to_json, unify_schemas

__all__ = [
    "DEFAULT_PATTERNS",
    "MalformedFileError",
    "batch_files",
    "convert_file",
    "infer_files_schema",
    "infer_schema",
    "list_files",
    "output_url",
    "schema_from_json",
    "schema_to_json",
    "unify_schemas",
]
