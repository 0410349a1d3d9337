"""REST connector library: paginated fetches with resumable positions, records to Parquet.

Plain Python (no Ray, no runtime imports); see :mod:`connectors.rest._client`
for the design notes.  :mod:`connectors.rest.testserver` is a real local HTTP
API for tests.
"""

from ._client import (
    HTTPError,
    MissingTokenError,
    RateLimitedError,
    ResponseFormatError,
    TransientHTTPError,
    fetch_page,
    iter_pages,
    records_to_parquet,
)

__all__ = [
    "HTTPError",
    "MissingTokenError",
    "RateLimitedError",
    "ResponseFormatError",
    "TransientHTTPError",
    "fetch_page",
    "iter_pages",
    "records_to_parquet",
]
