"""Ray placement options reach Ray; an impossible request fails clearly after a bounded wait."""

from __future__ import annotations

import json
import time

import pytest

from application_sdk.errors import RunFailedError, TaskUnschedulableError
from runtime import run_app

from .apps.placement import GreedyApp, PlacedApp


def test_num_cpus_and_memory_reach_ray(ray_session, file_store):
    out = run_app(PlacedApp, {}, run_id="placed", store=file_store)
    assigned = json.loads(out.resources)
    assert assigned["CPU"] == 0.5
    assert assigned["memory"] == 50 * 2**20


def test_a_resource_no_node_has_fails_after_a_bounded_wait(ray_session, file_store,
                                                           monkeypatch):
    monkeypatch.setenv("CONNECTOR_RUNTIME_UNSCHEDULABLE_WAIT", "3")
    start = time.monotonic()
    with pytest.raises(RunFailedError) as info:
        run_app(GreedyApp, {}, run_id="greedy", store=file_store)
    assert time.monotonic() - start < 30
    err = info.value.__cause__
    assert isinstance(err, TaskUnschedulableError)
    assert "task greedy" in str(err) and "tpu_pod" in str(err) and "CPU=2" in str(err)
