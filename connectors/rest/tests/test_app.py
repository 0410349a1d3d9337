"""RestConnector on real Ray against a local HTTP API that fails once mid-pagination and
answers 429 once: every record arrives once, and the retry resumes from the failed page
(the position travels in heartbeat details)."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import runtime
from connectors.rest.app import RestConnector
from connectors.rest.testserver import RestTestServer

TOKEN_ENV = "CONNECTOR_REST_TEST_TOKEN"
TOKEN = "s3cr3t-test-token"
# Ray workers inherit the environment of the process that starts Ray; this module is imported
# at collection time, before the session's Ray starts, so its workers can read the token.
os.environ.setdefault(TOKEN_ENV, TOKEN)


def test_rest_retry_resumes_from_failed_page(ray_session, tmp_path, file_store):
    total, page_size, failed_page, limited_page = 95, 10, 4, 7
    with RestTestServer(total=total, token=os.environ[TOKEN_ENV], fail_at_page=failed_page,
                        rate_limit_at_page=limited_page, retry_after=0.1) as server:
        out = runtime.run_app(
            RestConnector,
            {"base_url": server.url, "path": "/items", "style": "cursor",
             "page_size": page_size, "token_env": TOKEN_ENV,
             "destination": str(tmp_path / "out"), "pages_per_file": 1},
            store=file_store,
        )
        hits = dict(server.hits)

    table = pa.concat_tables([pq.read_table(f) for f in out.files])
    assert sorted(table.column("id").to_pylist()) == list(range(total))  # all, once
    assert out.rows == total and out.pages == 10
    # Failed page: asked twice (500, then OK); the 429 page twice; every other page once.
    expected = {page: 1 for page in range(1, 11)}
    expected[failed_page] = expected[limited_page] = 2
    assert hits == expected
    text = (tmp_path / "out").joinpath(out.run_id, "manifest.json").read_text()
    assert TOKEN not in text and TOKEN not in out.model_dump_json()


def test_refused_token_fails_at_once_without_retries(ray_session, tmp_path, file_store,
                                                      monkeypatch):
    with RestTestServer(total=20, token="the-right-token") as server:
        with pytest.raises(runtime.RunFailedError) as info:
            runtime.run_app(
                RestConnector,
                {"base_url": server.url, "path": "/items", "style": "cursor",
                 "page_size": 10, "token_env": TOKEN_ENV,
                 "destination": str(tmp_path / "out")},
                run_id="refused", store=file_store,
            )
        statuses = [r["status"] for r in server.requests]
    assert statuses == [401]  # HTTPError(401).retryable is False: one attempt, no retry
    assert "401" in str(info.value) and TOKEN not in str(info.value)
