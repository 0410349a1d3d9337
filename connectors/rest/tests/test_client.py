"""REST client against a real local HTTP server (connectors.rest.testserver)."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors.rest import (
    HTTPError,
    MissingTokenError,
    RateLimitedError,
    ResponseFormatError,
    TransientHTTPError,
    fetch_page,
    iter_pages,
    records_to_parquet,
)
from connectors.rest.testserver import RestTestServer, make_record

TOKEN = "s3cr3t-t0ken-value"
ENV = "CONNECTOR_TEST_API_TOKEN"
TOTAL = 95  # 10 pages of 10, the last one short
PAGES = range(1, 11)


@pytest.fixture(autouse=True)
def token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, TOKEN)


def drain(srv: RestTestServer, style: str, **kwargs) -> tuple[list[dict], list]:
    records, positions = [], []
    for page, position in iter_pages(
        srv.url, "/items", style=style, page_size=10, token_env=ENV, **kwargs
    ):
        records.extend(page)
        positions.append(position)
    return records, positions


@pytest.mark.parametrize("style", ["cursor", "page"])
def test_every_record_exactly_once(style: str) -> None:
    with RestTestServer(total=TOTAL, token=TOKEN) as srv:
        records, positions = drain(srv, style)
        assert records == [make_record(i) for i in range(TOTAL)]
        assert dict(srv.hits) == dict.fromkeys(PAGES, 1)
        assert positions[-1] is None and None not in positions[:-1]
        if style == "page":
            assert positions[:-1] == list(range(2, 11))


def test_fetch_page_shapes() -> None:
    with RestTestServer(total=25, token=TOKEN) as srv:
        first = fetch_page(srv.url, "items", style="cursor", page_size=20, token_env=ENV)
        assert len(first["records"]) == 20 and isinstance(first["next_cursor"], str)
        last = fetch_page(
            srv.url + "/", "/items", style="cursor", cursor=first["next_cursor"], page_size=20,
            token_env=ENV,
        )  # fmt: skip
        assert last == {"records": [make_record(i) for i in range(20, 25)], "next_cursor": None}
        page3 = fetch_page(srv.url, "/items", style="page", page=3, page_size=10, token_env=ENV)
        assert page3 == {"records": [make_record(i) for i in range(20, 25)], "next_page": None}
        with pytest.raises(HTTPError) as exc:
            fetch_page(srv.url, "/nope", style="page", page_size=10, token_env=ENV)
        assert exc.value.status == 404 and exc.value.retryable is False
        assert exc.value.path.startswith("/nope")


def test_rate_limited_once_is_retried_after_retry_after() -> None:
    with RestTestServer(total=TOTAL, token=TOKEN, rate_limit_at_page=4, retry_after=1) as srv:
        started = time.monotonic()
        records, _ = drain(srv, "page")
        assert time.monotonic() - started >= 1.0  # honoured Retry-After: 1
        assert [r["id"] for r in records] == list(range(TOTAL))
        assert srv.hits[4] == 2 and all(srv.hits[p] == 1 for p in PAGES if p != 4)
        assert [r["status"] for r in srv.requests if r["page"] == 4] == [429, 200]


def test_rate_limit_is_bounded() -> None:
    # Persistent 429: give up after max_tries, retryable for the caller.
    limited = RestTestServer(
        total=20, token=TOKEN, rate_limit_at_page=1, rate_limit_times=99, retry_after=0
    )
    with limited as srv:
        with pytest.raises(RateLimitedError) as exc:
            fetch_page(srv.url, "/items", style="cursor", page_size=10, token_env=ENV, max_tries=3)
        assert exc.value.retryable and exc.value.status == 429
        assert srv.hits[1] == 3
    # Retry-After beyond max_wait: do not sleep inside the task, hand it to the caller.
    with RestTestServer(total=20, token=TOKEN, rate_limit_at_page=1, retry_after=120) as srv:
        started = time.monotonic()
        with pytest.raises(RateLimitedError) as exc:
            fetch_page(srv.url, "/items", style="page", page_size=10, token_env=ENV, max_wait=5)
        assert time.monotonic() - started < 5
        assert exc.value.retry_after == 120 and srv.hits[1] == 1


@pytest.mark.parametrize("style", ["cursor", "page"])
def test_failure_at_page_7_then_resume_from_checkpoint(style: str) -> None:
    with RestTestServer(total=TOTAL, token=TOKEN, fail_at_page=7) as srv:
        seen: list[dict] = []
        checkpoint = None  # what a task would put in its heartbeat details
        with pytest.raises(TransientHTTPError) as exc:
            for page, position in iter_pages(
                srv.url, "/items", style=style, page_size=10, token_env=ENV
            ):
                seen.extend(page)
                checkpoint = position
        assert exc.value.status == 500 and exc.value.retryable
        assert exc.value.position == checkpoint  # the error also says where to resume
        assert [r["id"] for r in seen] == list(range(60))
        assert dict(srv.hits) == {**dict.fromkeys(range(1, 7), 1), 7: 1}

        srv.reset_hits()
        start = {"start_cursor": checkpoint} if style == "cursor" else {"start_page": checkpoint}
        rest, positions = drain(srv, style, **start)
        assert dict(srv.hits) == dict.fromkeys(range(7, 11), 1)  # pages 7..10 only
        assert [r["id"] for r in seen + rest] == list(range(TOTAL))
        assert positions[-1] is None


def test_max_pages_splits_the_stream() -> None:
    with RestTestServer(total=TOTAL, token=TOKEN) as srv:
        first, positions = drain(srv, "cursor", max_pages=4)
        second, _ = drain(srv, "cursor", start_cursor=positions[-1])
        assert [r["id"] for r in first + second] == list(range(TOTAL))
        assert dict(srv.hits) == dict.fromkeys(PAGES, 1)


@pytest.mark.parametrize("token", [None, "wrong-token-123", 'wrong "token" \\ 456'])
def test_bad_or_missing_token_is_401_without_token_text(
    token: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if token is not None:
        monkeypatch.setenv(ENV, token)
    with RestTestServer(total=TOTAL, token=TOKEN) as srv:
        with pytest.raises(HTTPError) as exc:
            fetch_page(
                srv.url, "/items", style="page", page_size=10,
                token_env=ENV if token else None,
            )  # fmt: skip
        err = exc.value
        assert err.status == 401 and err.retryable is False
        assert not isinstance(err, TransientHTTPError)
        # The server echoes the Authorization header it got; none of it may leak.
        texts = [str(err), repr(err), repr(err.args), repr(pickle.loads(pickle.dumps(err)))]
        for text in texts:
            assert TOKEN not in text
            assert token is None or "wrong" not in text
        assert "[REDACTED]" in str(err) or token is None


def test_missing_env_var_and_unreachable_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV)
    with pytest.raises(MissingTokenError, match=ENV) as exc:
        fetch_page("http://127.0.0.1:9", "/items", style="page", page_size=10, token_env=ENV)
    assert exc.value.retryable is False
    monkeypatch.setenv(ENV, TOKEN)
    with RestTestServer() as srv:
        url = srv.url
    with pytest.raises(TransientHTTPError) as exc:  # server gone: connection refused
        fetch_page(url, "/items", style="page", page_size=10, token_env=ENV, timeout=2)
    assert exc.value.status is None and TOKEN not in str(exc.value)
    with pytest.raises(ValueError, match="credentials") as exc:
        fetch_page("http://u:pw-secret@127.0.0.1:9", "/x", style="page", page_size=1)
    assert "pw-secret" not in str(exc.value)


def test_errors_pickle_with_their_attributes() -> None:
    err = RateLimitedError("GET /x: 429", status=429, path="/x", retry_after=3.0, position=7)
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is RateLimitedError
    assert (again.status, again.path, again.retry_after, again.position) == (429, "/x", 3.0, 7)
    assert ResponseFormatError.retryable is False and TransientHTTPError.retryable is True


def test_records_to_parquet(tmp_path: Path) -> None:
    with RestTestServer(total=TOTAL, token=TOKEN) as srv:
        pages = (
            page
            for page, _ in iter_pages(srv.url, "/items", style="page", page_size=10, token_env=ENV)
        )
        out = records_to_parquet(pages, str(tmp_path / "out" / "items.parquet"))
    assert out["rows"] == TOTAL and out["path"].endswith("items.parquet")
    assert out["bytes"] == (tmp_path / "out" / "items.parquet").stat().st_size
    table = pq.read_table(out["path"])
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("tags").type == pa.string()  # nested -> JSON text
    assert table.column("id").to_pylist() == list(range(TOTAL))
    assert table.slice(1, 1).to_pylist()[0]["tags"] == '["t1"]'

    # Single records, an explicit schema, and a record that does not fit it.
    recs = [{"id": 1, "v": "a"}, [{"id": "two", "v": "b"}, {"id": 3}]]
    out = records_to_parquet(
        iter(recs), str(tmp_path / "typed.parquet"), schema=pa.schema([("id", pa.int64())])
    )
    assert out["rows"] == 2
    assert out["rejected"] == [{"line": 2, "reason": "column 'id': cannot convert 'two' to int64"}]
    with pytest.raises(TypeError):
        records_to_parquet([([{"id": 1}], 2)], str(tmp_path / "bad.parquet"))
