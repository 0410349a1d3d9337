"""Every example of the App Framework page runs unchanged and returns the documented result."""

from __future__ import annotations

import pytest

from application_sdk.errors import DefinitionError, RunFailedError
from runtime import run_app
from storage import RunStore, open_store

from .apps import seed


def journal(store: str, app: str, run_id: str) -> list[dict]:
    return RunStore(open_store(store), app, run_id).load_journal().records


def tasks_run(store: str, app: str, run_id: str) -> list[str]:
    return [r["n"] for r in journal(store, app, run_id) if r["y"] == "t"]


def test_first_example_returns_42(ray_session, file_store):
    out = run_app(seed.MyConnectorFirst, {"connection_id": "c"}, run_id="first",
                  store=file_store)
    assert out == seed.ExtractionOutput(rows_extracted=42)


def test_complete_minimal_example(ray_session, file_store):
    out = run_app(seed.MyConnector, seed.ExtractionInput(connection_id="pg"), run_id="min",
                  store=file_store)
    assert out == seed.MinimalExtractionOutput(total_rows=1000, total_tables=12)
    assert tasks_run(file_store, "MyConnector", "min")[:2] == ["fetch_rows", "list_tables"]


@pytest.mark.parametrize(("conn", "total", "transformed"), [("pg", 2000, True),
                                                           ("empty", 0, False)])
def test_conditional_example(ray_session, file_store, conn, total, transformed):
    out = run_app(seed.ConditionalConnector, {"connection_id": conn}, run_id=f"cond-{conn}",
                  store=file_store)
    assert out.total_rows == total
    ran = tasks_run(file_store, "ConditionalConnector", f"cond-{conn}")
    assert ("transform_data" in ran) is transformed  # a task never awaited never runs


def test_sequential_example(ray_session, file_store):
    out = run_app(seed.SequentialConnector, {"connection_id": "c"}, run_id="seq",
                  store=file_store)
    assert out.count == 12


def test_parallel_example(ray_session, file_store):
    out = run_app(seed.ParallelConnector, {"connection_id": "abcd"}, run_id="par",
                  store=file_store)
    assert out.count == 8 + 4


def test_multiple_entry_points(ray_session, file_store):
    meta = run_app(seed.SnowflakeApp, {"connection_id": "sf"}, entrypoint="extract_metadata",
                   run_id="meta", store=file_store)
    assert meta.rows_extracted == 7
    mined = run_app(seed.SnowflakeApp, {"connection_id": "sf", "days": 3},
                    entrypoint="mine_queries", run_id="mine", store=file_store)
    assert mined.queries == 300
    with pytest.raises(DefinitionError, match="several entry points"):
        run_app(seed.SnowflakeApp, {"connection_id": "sf"}, run_id="which", store=file_store)


def test_entrypoints_and_run_together_are_refused_at_definition():
    with pytest.raises(DefinitionError, match=r"Both defines @entrypoint methods .* run\(\)"):

        class Both(seed.App):
            @seed.entrypoint
            async def one(self, input: seed.ExtractionInput) -> seed.ExtractionOutput: ...

            async def run(self, input: seed.ExtractionInput) -> seed.ExtractionOutput: ...


@pytest.mark.parametrize("conn", ["ok", "broken"])
def test_on_complete_runs_after_success_and_failure(ray_session, file_store, conn):
    run_id = f"notify-{conn}"
    if conn == "broken":
        with pytest.raises(RunFailedError, match="source unreachable"):
            run_app(seed.NotifyingConnector, {"connection_id": conn}, run_id=run_id,
                    store=file_store)
    else:
        assert run_app(seed.NotifyingConnector, {"connection_id": conn}, run_id=run_id,
                       store=file_store).rows_extracted == 3
    ran = tasks_run(file_store, "NotifyingConnector", run_id)
    assert ran[-3:] == ["notify_downstream", "cleanup_files", "cleanup_storage"]


def test_passthrough_modules_keyword(ray_session, file_store):
    assert seed.PassthroughConnector.passthrough_modules == ("my_connector", "third_party_lib")
    out = run_app(seed.PassthroughConnector, {"connection_id": "c"}, run_id="pt",
                  store=file_store)
    assert out.rows_extracted == 1
