"""The documented API: definition-time checks, options, and the pinned public names."""

from __future__ import annotations

import pickle

import pytest

import application_sdk
import application_sdk.app as app_mod
import application_sdk.contracts as contracts_mod
import runtime
import storage
from application_sdk import errors
from application_sdk.app import App, RetryPolicy, entrypoint, task
from application_sdk.contracts import Input, Output


class In(Input):
    x: int


class Out(Output):
    y: int


def test_public_names_are_pinned():
    assert sorted(application_sdk.__all__) == sorted([
        "App", "FileReference", "HeartbeatDetails", "Input", "NonRetryableError", "Output",
        "RetryPolicy", "StorageTier", "entrypoint", "now", "random", "task", "uuid4",
    ])
    assert {"App", "task", "entrypoint", "RetryPolicy", "NonRetryableError", "now",
            "uuid4"} <= set(app_mod.__all__)
    assert {"Input", "Output", "FileReference", "StorageTier",
            "HeartbeatDetails"} <= set(contracts_mod.__all__)
    assert sorted(runtime.__all__) == sorted([
        "InputValidationError", "LeaseHeldError", "RunCancelledError", "RunConflictError",
        "RunFailedError", "RunRecord", "RunStatus", "UsageError", "run_app", "run_app_async",
    ])
    assert {"Store", "open_store", "RunStore", "Lease"} <= set(storage.__all__)


def test_task_defaults_match_the_reference():
    class A(App):
        @task
        async def t(self, input: In) -> Out: ...

        async def run(self, input: In) -> Out: ...

    opts = A.tasks()["t"].options
    assert opts.timeout_seconds == 86_400
    assert opts.heartbeat_timeout_seconds == 60 and opts.auto_heartbeat_seconds == 10
    assert opts.retry_policy.max_attempts == 3 and opts.retry_policy.max_interval == 30
    assert opts.schedule_to_close_seconds is None
    assert RetryPolicy().max_interval == 300 and RetryPolicy().initial_interval == 1


def test_task_options_reach_the_spec():
    policy = RetryPolicy(max_attempts=7, non_retryable_errors=(KeyError,))

    class A(App):
        @task(name="renamed", timeout_seconds=5, retry_policy=policy, num_cpus=2,
              memory=2**30, resources={"db": 1})
        async def t(self, input: In) -> Out:
            """Docstring."""

        async def run(self, input: In) -> Out: ...

    spec = A.tasks()["renamed"]
    assert spec.options.retry_policy is policy and spec.options.description == "Docstring."
    assert spec.options.ray_options() == {"num_cpus": 2, "memory": 2**30,
                                          "resources": {"db": 1}}


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def t(self, input: In) -> Out: ...", "must be declared with `async def`"),
        ("async def t(self) -> Out: ...", "exactly one argument"),
        ("async def t(self, a: In, b: In) -> Out: ...", "exactly one argument"),
        ("async def t(self, input: int) -> Out: ...", "Input subclass"),
        ("async def t(self, input: In) -> dict: ...", "Output"),
        ("async def t(self, input: In): ...", "no annotation"),
    ],
)
def test_bad_tasks_fail_at_class_definition_naming_class_and_method(source, message):
    ns: dict = {"In": In, "Out": Out}
    exec(source, ns)
    with pytest.raises(errors.DefinitionError, match=message) as info:
        type("Broken", (App,), {"t": task(ns["t"])})
    assert "Broken.t" in str(info.value)


def test_entrypoint_default_and_choice():
    class E(App):
        @entrypoint(default=True)
        async def a(self, input: In) -> Out: ...

        @entrypoint(name="bee")
        async def b(self, input: In) -> Out: ...

    assert E.entrypoint_spec().name == "a"
    assert E.entrypoint_spec("bee").method == "b"
    with pytest.raises(errors.DefinitionError, match="no entry point 'c'"):
        E.entrypoint_spec("c")


def test_passthrough_modules_as_class_attribute():
    class P(App):
        passthrough_modules = ["a_lib"]

        async def run(self, input: In) -> Out: ...

    assert P.passthrough_modules == ("a_lib",)


def test_retry_policy_backoff():
    p = RetryPolicy(initial_interval=1, backoff_coefficient=2, max_interval=5)
    assert [p.delay(a) for a in range(1, 6)] == [1, 2, 4, 5, 5]
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_input_ignores_unknown_keys_with_one_warning():
    with pytest.warns(UserWarning, match=r"ignores unknown field\(s\) \['extra'\]"):
        assert In.model_validate({"x": 1, "extra": 2}).x == 1


def test_output_refuses_unknown_keys():
    with pytest.raises(ValueError):
        Out.model_validate({"y": 1, "gone": 2})


@pytest.mark.parametrize("cls", [getattr(errors, n) for n in errors.__all__])
def test_errors_survive_pickling(cls):
    err = cls("message with detail")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls and str(back) == "message with detail"
    assert back.non_retryable == err.non_retryable


def test_task_called_outside_a_run_is_a_plain_call():
    import asyncio

    class A(App):
        @task
        async def t(self, input: In) -> Out:
            return Out(y=input.x + 1)

        async def run(self, input: In) -> Out: ...

    assert asyncio.run(A().t(In(x=1))) == Out(y=2)
