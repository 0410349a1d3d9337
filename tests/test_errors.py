"""Errors users see: one root, every class pickles, and a task's exception keeps its identity
across the process boundary whatever it is."""

from __future__ import annotations

import importlib
import pickle
import pkgutil

import pytest

import application_sdk
import runtime
import storage
from application_sdk.errors import AppError, RunFailedError, TaskError
from runtime import run_app

from .apps.errors_app import Call, ErrorsApp


def _all_error_classes() -> list[type[BaseException]]:
    for package in (application_sdk, runtime, storage):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if ".service" in info.name or info.name.endswith("__main__"):
                continue  # optional web dependencies; their errors are checked there
            importlib.import_module(info.name)
    found, todo = set(), [AppError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in found and sub.__module__.split(".")[0] in (
                    "application_sdk", "runtime", "storage"):
                found.add(sub)
                todo.append(sub)
    return sorted(found | {AppError}, key=lambda c: f"{c.__module__}.{c.__qualname__}")


ERRORS = _all_error_classes()


def test_every_public_error_is_an_app_error():
    names = {c.__name__ for c in ERRORS}
    assert {"StoreError", "LeaseHeldError", "LeaseLostError", "CorruptRecordError",
            "UsageError", "InputValidationError", "RunConflictError", "PathRefusedError",
            "TaskError", "RunFailedError", "NonRetryableError"} <= names
    for name in storage._errors.__all__:
        assert issubclass(getattr(storage, name), AppError), name


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_every_error_class_survives_a_pickle_round_trip(cls):
    err = cls("message with detail")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls and str(back) == "message with detail"
    assert back.non_retryable == err.non_retryable


def test_task_error_keeps_names_traceback_and_flag_through_pickle():
    err = TaskError("boom", ("x.Boom", "Boom", "builtins.Exception", "Exception"),
                    "Traceback ...\n  line 3\nBoom: boom", non_retryable=True)
    back = pickle.loads(pickle.dumps(err))
    assert back.type_names == err.type_names and back.type_name == "Boom"
    assert back.remote_traceback.endswith("Boom: boom") and back.non_retryable


def attempts(path, prefix: str) -> list[str]:
    try:
        return [line for line in open(path).read().splitlines() if line.startswith(prefix)]
    except FileNotFoundError:
        return []


def test_unpicklable_task_exception_reaches_the_driver_with_its_type(ray_session, file_store,
                                                                    tmp_path):
    count = tmp_path / "count"
    with pytest.raises(RunFailedError) as info:
        run_app(ErrorsApp, Call(count_file=str(count)), run_id="unpicklable", store=file_store)
    cause = info.value.__cause__
    assert isinstance(cause, TaskError), type(cause)
    assert cause.type_name == "ResponseError"
    assert "tests.apps.errors_app.ResponseError" in cause.type_names
    assert "401" in str(cause) and "raise ResponseError" in cause.remote_traceback
    assert "ResponseError" in str(info.value) and "isn't serializable" not in str(info.value)
    assert len(attempts(count, "unpicklable")) == 3  # retried as an ordinary error


def test_non_retryable_errors_match_an_unpicklable_exception_by_name(ray_session, file_store,
                                                                    tmp_path):
    count = tmp_path / "count"
    with pytest.raises(RunFailedError):
        run_app(ErrorsApp, Call(count_file=str(count), kind="unpicklable_by_name"),
                run_id="by-name", store=file_store)
    assert attempts(count, "by_name") == ["by_name 1"]


def test_an_error_that_says_it_is_not_retryable_is_not_retried(ray_session, file_store,
                                                              tmp_path):
    count = tmp_path / "count"
    with pytest.raises(RunFailedError) as info:
        run_app(ErrorsApp, Call(count_file=str(count), kind="refused"), run_id="refused",
                store=file_store)
    assert attempts(count, "refused") == ["refused 1"]
    assert "RefusedToken" in str(info.value)


def test_store_and_lease_errors_are_caught_by_the_root(tmp_path):
    from storage import Lease, LeaseHeldError, RunStore, StoreError, open_store

    store = open_store(str(tmp_path / "s"))
    runs = RunStore(store, "A", "r")
    Lease(runs, ttl=30).acquire()
    with pytest.raises(AppError) as info:
        Lease(runs, ttl=30).acquire()
    assert isinstance(info.value, LeaseHeldError)
    with pytest.raises(AppError) as info:
        store.read("../escape")
    assert isinstance(info.value, StoreError)
