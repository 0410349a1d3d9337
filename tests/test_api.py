"""The documented API: definition-time checks, options, and the pinned public names."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import application_sdk
import application_sdk.app as app_mod
import application_sdk.contracts as contracts_mod
import runtime
import storage
from application_sdk import errors
from application_sdk.app import App, RetryPolicy, entrypoint, task
from application_sdk.contracts import HeartbeatDetails, Input, Output


class In(Input):
    x: int


class Out(Output):
    y: int


def test_public_names_are_pinned():
    assert sorted(application_sdk.__all__) == sorted([
        "App", "AppContext", "FileReference", "HeartbeatDetails", "Input", "NO_RETRY",
        "NonRetryableError", "Output", "OutputStatus", "Pool", "RetryPolicy", "RetryableError",
        "StorageTier", "entrypoint", "now", "random", "task", "uuid4",
    ])
    assert application_sdk.Pool is app_mod.Pool
    assert {"App", "AppContext", "AppError", "task", "entrypoint", "RetryPolicy", "NO_RETRY",
            "NonRetryableError", "RetryableError", "now", "uuid4", "Input", "Output",
            "OutputStatus"} <= set(app_mod.__all__)
    assert {"Input", "Output", "OutputStatus", "FileReference", "StorageTier", "MaxItems",
            "HeartbeatDetails", "ContractValidationError", "is_backwards_compatible",
            "has_default", "validate_payload_safety"} <= set(contracts_mod.__all__)
    # the SDK's names for what this project already had are the same objects, not copies
    assert app_mod.AppContext is application_sdk.AppContext
    assert app_mod.Output is contracts_mod.Output and app_mod.AppError is errors.AppError
    assert contracts_mod.ContractValidationError is errors.ContractValidationError
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


# ---- the SDK's retry vocabulary --------------------------------------------------------------


def test_no_retry_and_timedelta_intervals():
    from datetime import timedelta

    from application_sdk import NO_RETRY

    assert NO_RETRY.max_attempts == 1 and NO_RETRY == RetryPolicy(max_attempts=1)
    p = RetryPolicy(initial_interval=timedelta(milliseconds=500),
                    max_interval=timedelta(minutes=1))
    assert (p.initial_interval, p.max_interval) == (0.5, 60.0)
    assert [p.delay(a) for a in (1, 2, 8)] == [0.5, 1.0, 60.0]
    assert p == RetryPolicy(initial_interval=0.5, max_interval=60)
    with pytest.raises(TypeError, match="initial_interval must be seconds"):
        RetryPolicy(initial_interval="1s")
    with pytest.raises(ValueError, match=">= 0"):
        RetryPolicy(max_interval=timedelta(seconds=-1))
    more = p.with_max_attempts(5).with_non_retryable(KeyError, "Boom")
    assert more.max_attempts == 5 and more.non_retryable_errors == (KeyError, "Boom")
    assert more.is_non_retryable(["builtins.KeyError", "KeyError"]) and p.max_attempts == 3
    assert p.with_initial_interval(timedelta(seconds=2)).initial_interval == 2.0


def test_error_roots_and_retry_flags():
    assert issubclass(errors.RetryableError, errors.AppError)
    assert issubclass(errors.NonRetryableError, errors.AppError)
    assert errors.RetryableError("x").non_retryable is False
    assert errors.NonRetryableError("x").non_retryable is True
    err = errors.RunFailedError("run r failed: task t ...", task="t", error_type="Boom",
                                non_retryable=True)
    back = pickle.loads(pickle.dumps(err))
    assert (back.task, back.error_type, back.non_retryable, str(back)) == \
        ("t", "Boom", True, "run r failed: task t ...")
    assert isinstance(errors.AppContextError("x"), RuntimeError)


# ---- contracts -------------------------------------------------------------------------------


def test_output_status_defaults_to_success_and_is_written_only_otherwise():
    from application_sdk.contracts import OutputStatus

    assert [s.value for s in OutputStatus] == ["success", "partial_success", "failure"]
    assert Out(y=1).status is OutputStatus.SUCCESS
    assert Out(y=1).model_dump(mode="json") == {"y": 1}  # records and printed JSON unchanged
    partial = Out(y=1, status="partial_success")
    assert partial.model_dump(mode="json") == {"status": "partial_success", "y": 1}
    assert Out.model_validate(partial.model_dump(mode="json")) == partial
    assert Out.model_validate({"y": 2}).status is OutputStatus.SUCCESS  # an old record
    with pytest.raises(ValueError):
        Out(y=1, status="fine")


def test_contract_helpers_report_and_refuse_non_contracts():
    from typing import Annotated

    from application_sdk.contracts import (
        MaxItems,
        has_default,
        is_backwards_compatible,
        validate_payload_safety,
    )

    class V1(Output):
        a: int
        b: str = ""

    class V2(Output):
        a: int
        b: str = ""
        c: int = 0

    class Broken(Output):
        a: str
        d: int

    assert is_backwards_compatible(V1, V2) == (True, [])
    ok, reasons = is_backwards_compatible(V1, Broken)
    assert not ok and len(reasons) == 3
    assert any("'a' changed type" in r for r in reasons)
    assert any("'b' was removed" in r for r in reasons)
    assert any("'d' was added without a default" in r for r in reasons)
    assert has_default(V2, "c") and not has_default(V2, "a") and not has_default(V2, "zz")
    for bad in (int, dict, "V1", V1(a=1)):
        with pytest.raises(errors.ContractValidationError, match="must be a contract class"):
            has_default(bad, "a")
        with pytest.raises(errors.ContractValidationError):
            is_backwards_compatible(V1, bad)
    with pytest.raises(errors.ContractValidationError):
        validate_payload_safety(dict)

    class Loose(Output, allow_unbounded_fields=True):
        tags: list[str]
        blob: bytes = b""

    with pytest.raises(errors.PayloadSafetyError, match=r"Loose\.tags"):
        validate_payload_safety(Loose)
    validate_payload_safety(Loose, skip_fields={"tags", "blob"})
    bound = MaxItems(limit=2)
    assert bound.limit == 2 and MaxItems(2) == bound and hash(bound) == hash(MaxItems(2))

    class Bounded(Input):
        names: Annotated[list[str], MaxItems(limit=2)]

    assert Bounded(names=["a", "b"]).names == ["a", "b"]
    with pytest.raises(ValueError):
        Bounded(names=["a", "b", "c"])  # the bound is enforced, not only documented


def test_file_reference_is_frozen_hashable_and_made_from_a_local_path(tmp_path):
    from pydantic import ValidationError

    from application_sdk.contracts import FileReference, StorageTier

    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/a", "d/b", "d/sub/c"):
        (tmp_path / name).write_text("x")
    folder = FileReference.from_local(tmp_path / "d", tier=StorageTier.RETAINED)
    assert (folder.local_path, folder.file_count, folder.tier, folder.is_durable) == \
        (str(tmp_path / "d"), 3, StorageTier.RETAINED, False)
    assert FileReference.from_local(tmp_path / "later.parquet").file_count == 1
    with pytest.raises(ValidationError):
        folder.local_path = "/etc/passwd"
    assert len({folder, FileReference.from_local(tmp_path / "d", tier="retained")}) == 1
    assert folder.auto_materialize is True
    assert "auto_materialize" not in folder.model_dump()  # serialized as before the field
    lazy = folder.model_copy(update={"auto_materialize": False})
    assert FileReference.model_validate(lazy.model_dump(mode="json")).auto_materialize is False


# ---- the run context -------------------------------------------------------------------------


def test_app_name_and_version_are_the_sdk_spellings_of_name_and_version():
    class Versioned(App, name="versioned-app"):
        version = "2.1.0"

        async def run(self, input: In) -> Out: ...

    assert Versioned._app_name == Versioned.name == "versioned-app"
    assert Versioned._app_version == "2.1.0"
    from runtime.driver._session import version_key

    assert version_key("2.10.0") > version_key("2.9.1") > version_key(2) > version_key(1)


def test_context_logger_takes_keyword_fields_and_redacts_secrets(caplog):
    import logging

    from application_sdk._appcontext import note_secret
    from application_sdk.app import AppContext

    ctx = AppContext(app_name="LogApp", app_version="1", run_id="r-1")
    caplog.set_level(logging.INFO, logger="app.LogApp")
    ctx.logger.info("fetched %d rows", 12, table="orders", name="shadowing a record field")
    record = caplog.records[-1]
    assert record.getMessage() == "fetched 12 rows" and record.table == "orders"
    assert record.fields["table"] == "orders" and record.name_ == "shadowing a record field"
    assert (record.run_id, record.correlation_id, record.task_name) == ("r-1", "r-1", None)
    assert record.funcName == "test_context_logger_takes_keyword_fields_and_redacts_secrets"
    note_secret("hunter2-password")
    ctx.logger.bind(step="auth").warning("login with %s", "hunter2-password")
    assert caplog.records[-1].getMessage() == "login with ***"
    assert caplog.records[-1].step == "auth"
    with pytest.raises(errors.AppContextError, match="only inside a run"):
        import asyncio

        asyncio.run(ctx.save_state("k", {}))


class StateIn(Input):
    rows: int


class StateOut(Output):
    total: int
    secret_len: int
    correlation_id: str


class Stateful(App):
    @task
    async def load(self, input: StateIn) -> StateOut:
        prev = await self.context.load_state("mark") or {"total": 0}
        total = prev["total"] + input.rows
        await self.context.save_state("mark", {"total": total})
        self.logger.info("saved", total=total)
        secret = await self.context.get_secret("api-token")
        return StateOut(total=total, secret_len=len(secret),
                        correlation_id=self.context.correlation_id)

    async def run(self, input: StateIn) -> StateOut: ...


def test_run_task_gives_tasks_a_context_state_and_secrets():
    from application_sdk.app import AppContext
    from application_sdk.testing import run_task

    state = {"mark": {"total": 5}}
    result = run_task(Stateful, "load", {"rows": 2}, state=state,
                      secrets={"api-token": "abcdef"},
                      context=AppContext(app_name="Stateful", correlation_id="c-9"))
    assert result.output == StateOut(total=7, secret_len=6, correlation_id="c-9")
    assert state == {"mark": {"total": 7}} and result.logs[-1].fields["total"] == 7
    with pytest.raises(errors.SecretNotFoundError, match="'api-token' not found"):
        run_task(Stateful, "load", {"rows": 1})


@pytest.mark.parametrize(("key", "value", "message"), [
    ("../etc", {}, "plain name"),
    ("a/b", {}, "plain name"),
    ("", {}, "plain name"),
    ("ok", ["not", "a", "dict"], "must be a dict"),
    ("ok", {"when": object()}, "not plain JSON"),
    ("ok", {"nan": float("nan")}, "not plain JSON"),
    ("ok", {"big": "x" * 300_000}, "over the 256 KiB limit"),
])
def test_state_keys_and_values_are_checked_before_anything_is_written(key, value, message):
    from application_sdk._state import check_state

    with pytest.raises(errors.StateError, match=message):
        check_state(key, value, saving=True)


_VALUES = {int: st.integers(-5, 5), str: st.text(max_size=3), bool: st.booleans(),
           float: st.floats(allow_nan=False, allow_infinity=False, width=32)}
_FIELD = st.tuples(st.sampled_from(sorted(_VALUES, key=lambda t: t.__name__)), st.booleans())


@st.composite
def _evolution(draw):
    old = draw(st.dictionaries(st.sampled_from("abcdef"), _FIELD, min_size=1, max_size=5))
    new = dict(old)
    for _ in range(draw(st.integers(0, 3))):
        change = draw(st.sampled_from(["add", "remove", "retype", "default"]))
        name = draw(st.sampled_from("abcdefgh"))
        if change == "add" and name not in new:
            new[name] = draw(_FIELD)
        elif change == "remove":
            new.pop(name, None)
        elif change == "retype" and name in new:
            new[name] = (draw(st.sampled_from(list(_VALUES))), new[name][1])
        elif change == "default" and name in new:
            new[name] = (new[name][0], True)
    return old, new


def _model(name, fields):
    from pydantic import create_model

    defs = {k: (tp, tp()) if has else (tp, ...) for k, (tp, has) in fields.items()}
    return create_model(name, __base__=Output, **defs)


@settings(max_examples=150, deadline=None)
@given(_evolution(), st.data())
def test_a_change_called_compatible_reads_every_old_record(shapes, data):
    from application_sdk.contracts import is_backwards_compatible

    old_cls, new_cls = _model("Old", shapes[0]), _model("New", shapes[1])
    ok, reasons = is_backwards_compatible(old_cls, new_cls)
    assert ok == (not reasons)
    record = old_cls(**{k: data.draw(_VALUES[tp]) for k, (tp, _) in shapes[0].items()})
    if ok:  # sound: nothing it accepts loses an old record
        assert new_cls.model_validate(record.model_dump(mode="json"))
    removed = set(shapes[0]) - set(shapes[1])
    added_required = {k for k, (_, has) in shapes[1].items() if k not in shapes[0] and not has}
    if removed or added_required:
        assert not ok


class Big(HeartbeatDetails, allow_unbounded_fields=True):
    rows: list[str] = []


class Beating(App):
    payload_limit_bytes = 1000

    @task
    async def beat(self, input: In) -> Out:
        self.heartbeat(Big(rows=["x" * 10] * input.x))
        return Out(y=input.x)

    async def run(self, input: In) -> Out: ...


def test_heartbeat_details_over_the_payload_limit_are_refused_naming_the_task():
    from application_sdk.testing import run_task

    assert run_task(Beating, "beat", {"x": 10}).heartbeats[0]["rows"][0] == "x" * 10
    with pytest.raises(errors.PayloadTooLargeError, match="heartbeat details of task beat"):
        run_task(Beating, "beat", {"x": 500})
