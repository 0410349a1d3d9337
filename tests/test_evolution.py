"""Contract evolution between two runs of one run id: a field added with a default changes no
identity (task calls and the run's input alike); a breaking change is a ContractError naming
the task (or the run) and the field."""

from __future__ import annotations

import pytest

from application_sdk.errors import ContractError, RunFailedError
from runtime import RunConflictError, run_app

from .apps import evolution as e


def lines(path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def failed_v1_run(tmp_path, store, run_id):
    (tmp_path / "fail-finish").touch()
    with pytest.raises(RunFailedError):
        run_app(e.EvolveV1, {"folder": str(tmp_path)}, run_id=run_id, store=store)
    (tmp_path / "fail-finish").unlink()
    assert lines(tmp_path / "fetched") == ["V1 0", "V1 1", "V1 2"]


def test_defaulted_fields_added_to_task_and_run_inputs_and_outputs_change_nothing(
        ray_session, tmp_path, file_store):
    failed_v1_run(tmp_path, file_store, "evolve")
    # the same command (same input document) with the new code: resumed, not refused
    out = run_app(e.EvolveV2, {"folder": str(tmp_path)}, run_id="evolve", store=file_store)
    assert out.rows == 33
    assert out.warnings == 3  # the recorded outputs validated into GotV2 with its default note
    assert lines(tmp_path / "fetched") == ["V1 0", "V1 1", "V1 2"]  # no recorded call re-ran
    assert lines(tmp_path / "finished") == ["finish", "finish"]


def test_the_new_field_at_its_default_is_the_same_run_another_value_is_not(
        ray_session, tmp_path, file_store):
    failed_v1_run(tmp_path, file_store, "evolve-values")
    with pytest.raises(RunConflictError, match="different input"):
        run_app(e.EvolveV2, {"folder": str(tmp_path), "batch_size": 5},
                run_id="evolve-values", store=file_store)
    out = run_app(e.EvolveV2, {"folder": str(tmp_path), "batch_size": 100},
                  run_id="evolve-values", store=file_store)
    assert out.rows == 33 and lines(tmp_path / "fetched") == ["V1 0", "V1 1", "V1 2"]


def test_run_output_with_an_added_defaulted_field_returns_the_stored_output(
        ray_session, tmp_path, file_store):
    first = run_app(e.EvolveV1, {"folder": str(tmp_path)}, run_id="done", store=file_store)
    again = run_app(e.EvolveV2, {"folder": str(tmp_path)}, run_id="done", store=file_store)
    assert isinstance(again, e.SummaryV2) and again.rows == first.rows and again.warnings == 0
    assert len(lines(tmp_path / "fetched")) == 3  # returned from the record, nothing ran


def test_a_required_field_added_to_a_task_output_names_task_and_field(
        ray_session, tmp_path, file_store):
    failed_v1_run(tmp_path, file_store, "breaking")
    with pytest.raises(RunFailedError) as info:
        run_app(e.EvolveV3, {"folder": str(tmp_path)}, run_id="breaking", store=file_store)
    err = info.value.__cause__
    assert isinstance(err, ContractError)
    assert "task fetch" in str(err) and "table" in str(err) and "V2" in str(err)


def test_a_required_field_added_to_the_run_output_names_the_field(
        ray_session, tmp_path, file_store):
    run_app(e.EvolveV1, {"folder": str(tmp_path)}, run_id="breaking-out", store=file_store)
    with pytest.raises(ContractError) as info:
        run_app(e.EvolveV3, {"folder": str(tmp_path)}, run_id="breaking-out",
                store=file_store)
    assert "SummaryV3" in str(info.value) and "tables" in str(info.value)
