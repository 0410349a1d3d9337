"""The Handler API as unit tests: contracts, `self.context`, definition checks, discovery, one
handler call (timeout, scrubbed errors); and the two definition changes the service relies on
(SecretStr refused in an Input, entry points by their kebab-case names). No Ray, no HTTP: the
service over HTTP is tests/test_service.py."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import types
from typing import Annotated

import pytest
from pydantic import BaseModel, Secret, SecretBytes, SecretStr, ValidationError

from application_sdk.app import App, entrypoint
from application_sdk.contracts import Input, Output
from application_sdk.errors import DefinitionError
from application_sdk.handler import (
    ApiMetadataObject,
    ApiMetadataOutput,
    AuthInput,
    AuthOutput,
    AuthStatus,
    DefaultHandler,
    Handler,
    HandlerCredential,
    MetadataInput,
    MetadataOutput,
    PreflightInput,
    PreflightOutput,
    PreflightStatus,
    SqlMetadataOutput,
    bind_context,
)
from runtime.service import ServiceConfigError, find_handler
from runtime.service._invoke import HandlerFailed, HandlerRunner, HandlerTimeout, Scrubber

# ---- contracts ------------------------------------------------------------------------------


def test_contract_defaults_are_the_documented_ones():
    auth = AuthInput(credentials=[])
    assert (auth.connection_id, auth.timeout_seconds) == ("", 30)
    pre = PreflightInput(credentials=[], connection_config={})
    assert (pre.checks_to_run, pre.timeout_seconds) == ([], 60)
    meta = MetadataInput(credentials=[], connection_config={})
    assert (meta.object_filter, meta.include_fields, meta.max_objects,
            meta.timeout_seconds) == ("", True, 1000, 120)
    out = AuthOutput(status=AuthStatus.SUCCESS)
    assert (out.message, out.identities, out.scopes, out.expires_at) == ("", [], [], "")
    assert PreflightOutput(status=PreflightStatus.READY).checks == []
    assert [s.value for s in AuthStatus] == ["success", "failed", "expired",
                                             "invalid_credentials"]
    assert [s.value for s in PreflightStatus] == ["READY", "NOT_READY", "PARTIAL"]


def test_credentials_as_a_list_or_an_object_and_never_in_a_repr():
    as_list = AuthInput(credentials=[{"key": "password", "value": "hunter2-xyz"}])
    as_map = AuthInput.model_validate({"credentials": {"password": "hunter2-xyz"}})
    assert as_list.credentials == as_map.credentials == [
        HandlerCredential(key="password", value="hunter2-xyz")]
    for text in (repr(as_list), str(as_list), repr(as_list.credentials[0])):
        assert "hunter2-xyz" not in text and "password" in text
    with pytest.raises(ValidationError) as err:  # a required field, named
        PreflightInput.model_validate({"credentials": []})
    assert "connection_config" in str(err.value)
    with pytest.raises(ValidationError):
        AuthInput(credentials=[], timeout_seconds=0)


def test_metadata_outputs_typed_sql_and_api_trees():
    sql = SqlMetadataOutput.model_validate(
        {"objects": [{"TABLE_CATALOG": "db", "TABLE_SCHEMA": "public", "TABLE_NAME": "t"}]})
    assert sql.objects[0].TABLE_SCHEMA == "public"
    assert sql.model_dump()["objects"][0]["TABLE_NAME"] == "t"  # extra keys kept
    with pytest.raises(ValidationError):
        SqlMetadataOutput.model_validate({"objects": [{"TABLE_CATALOG": "db"}]})
    tree = ApiMetadataOutput(objects=[ApiMetadataObject(
        value="ws", title="Workspace", node_type="workspace",
        children=[ApiMetadataObject(value="p1", title="Project 1")])])
    assert tree.model_dump()["objects"][0]["children"][0]["node_type"] == ""
    assert isinstance(sql, MetadataOutput) and isinstance(tree, MetadataOutput)


# ---- self.context ---------------------------------------------------------------------------


class EchoHandler(DefaultHandler):
    async def test_auth(self, input: AuthInput) -> AuthOutput:
        ctx = self.context
        return AuthOutput(status=AuthStatus.SUCCESS, identities=[
            str(ctx.get_credential("user")), str(ctx.has_credential("user")),
            str(ctx.has_credential("nope")), str(ctx.get_credential("nope", "fallback")),
            ctx.method])


def test_context_inside_a_method_and_a_clear_error_outside():
    handler = EchoHandler()
    inp = AuthInput(credentials={"user": "ann"})
    with bind_context("test_auth", inp) as ctx:
        out = asyncio.run(handler.test_auth(inp))
        assert ctx.elapsed_ms >= 0 and ctx.remaining_seconds <= 30
        assert ctx.credential_keys == ["user"]
    assert out.identities == ["ann", "True", "False", "fallback", "test_auth"]
    with pytest.raises(RuntimeError, match="not inside a handler method"):
        handler.context  # noqa: B018
    with pytest.raises(RuntimeError, match="not inside a handler method"):
        asyncio.run(handler.test_auth(inp))


def test_default_handler_answers_success_ready_and_no_objects():
    h = DefaultHandler()
    assert asyncio.run(h.test_auth(AuthInput(credentials=[]))).status is AuthStatus.SUCCESS
    pre = asyncio.run(h.preflight_check(PreflightInput(credentials=[], connection_config={})))
    assert pre.status is PreflightStatus.READY
    assert asyncio.run(h.fetch_metadata(
        MetadataInput(credentials=[], connection_config={}))).objects == []


# ---- definition checks -----------------------------------------------------------------------


def test_handler_methods_are_checked_when_the_class_is_defined():
    with pytest.raises(DefinitionError, match=r"Sync\.test_auth must be declared with `async"):
        class Sync(DefaultHandler):
            def test_auth(self, input: AuthInput) -> AuthOutput:  # type: ignore[override]
                return AuthOutput(status=AuthStatus.SUCCESS)
    with pytest.raises(DefinitionError, match="exactly one argument"):
        class Two(DefaultHandler):
            async def test_auth(self, input: AuthInput, extra: int) -> AuthOutput:
                return AuthOutput(status=AuthStatus.SUCCESS)
    with pytest.raises(DefinitionError, match="return type must be AuthOutput"):
        class Wrong(DefaultHandler):
            async def test_auth(self, input: AuthInput) -> PreflightOutput:  # type: ignore
                return PreflightOutput(status=PreflightStatus.READY)

    class Sql(DefaultHandler):
        async def fetch_metadata(self, input: MetadataInput) -> SqlMetadataOutput:
            return SqlMetadataOutput()

    assert Sql.contracts["fetch_metadata"] == (MetadataInput, SqlMetadataOutput)
    assert Sql.contracts["test_auth"] == (AuthInput, AuthOutput)
    with pytest.raises(TypeError, match="abstract"):
        Handler()  # type: ignore[abstract]


# ---- discovery ------------------------------------------------------------------------------


@pytest.fixture
def module(monkeypatch):
    """Put a made-up module into sys.modules for one test."""

    def make(name: str, **attrs) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, mod)
        return mod

    return make


class In(Input):
    x: int = 0


class Out(Output):
    y: int = 0


def _app(module: str, name: str = "MyApp") -> type[App]:
    async def run(self, input: In) -> Out:
        return Out()

    cls = type(name, (App,), {"run": run, "__module__": module})
    return cls


def _handler(name: str) -> type[Handler]:
    return type(name, (DefaultHandler,), {})


def test_discovery_by_name_then_the_only_one_then_default(module):
    named, other = _handler("MyAppHandler"), _handler("Other")
    app = _app("disc_named")
    module("disc_named", MyApp=app, MyAppHandler=named, Other=other, DefaultHandler=DefaultHandler)
    assert find_handler(app) is named

    app = _app("disc_only")
    module("disc_only", MyApp=app, Other=other, Handler=Handler, DefaultHandler=DefaultHandler)
    assert find_handler(app) is other

    app = _app("disc_none")
    module("disc_none", MyApp=app, DefaultHandler=DefaultHandler)
    assert find_handler(app) is DefaultHandler

    app = _app("disc_two")
    module("disc_two", MyApp=app, A=_handler("A"), B=_handler("B"))
    with pytest.raises(ServiceConfigError, match=r"several Handler subclasses .*--handler"):
        find_handler(app)


def test_discovery_override_and_its_errors(module):
    chosen = _handler("Chosen")
    module("disc_override", Chosen=chosen, NotOne=int)
    app = _app("disc_named_again")
    module("disc_named_again", MyApp=app, MyAppHandler=_handler("MyAppHandler"))
    assert find_handler(app, "disc_override:Chosen") is chosen
    for target, message in [("disc_override", "expected module:Class"),
                            ("disc_override:Missing", "has no 'Missing'"),
                            ("disc_override:NotOne", "not an application_sdk.handler.Handler"),
                            ("no_such_module_xyz:H", "cannot import")]:
        with pytest.raises(ServiceConfigError, match=message):
            find_handler(app, target)

    class Partial(Handler):
        async def test_auth(self, input: AuthInput) -> AuthOutput:
            return AuthOutput(status=AuthStatus.SUCCESS)

    module("disc_partial", Partial=Partial)
    with pytest.raises(ServiceConfigError, match="does not implement fetch_metadata, "
                       "preflight_check"):
        find_handler(app, "disc_partial:Partial")


# ---- one handler call ------------------------------------------------------------------------

SECRET = "pw-7f3a9c-never-seen"


class Misbehaving(DefaultHandler):
    async def test_auth(self, input: AuthInput) -> AuthOutput:
        mode = self.context.get_credential("mode")
        if mode == "sleep":
            await asyncio.sleep(30)
        if mode == "block":
            time.sleep(3)
        if mode == "raise":
            raise PermissionError(f"login with {self.context.get_credential('password')} "
                                  f"for user {self.context.get_credential('user')} refused")
        if mode == "dict":
            return {"status": "expired", "message": "old"}  # type: ignore[return-value]
        if mode == "wrong":
            return 42  # type: ignore[return-value]
        return AuthOutput(status=AuthStatus.SUCCESS, message=threading.current_thread().name)


def _call(mode: str, timeout: float = 5.0, **extra: str):
    runner = HandlerRunner(Misbehaving)
    inp = AuthInput(credentials={"mode": mode, "password": SECRET, **extra},
                    timeout_seconds=timeout)
    try:
        return asyncio.run(runner.call("test_auth", inp))
    finally:
        runner.close()


def test_a_call_runs_in_a_worker_thread_and_its_output_is_validated():
    assert _call("ok").message.startswith("handler")
    assert _call("dict").status is AuthStatus.EXPIRED
    with pytest.raises(HandlerFailed, match="returned int, expected AuthOutput"):
        _call("wrong")


@pytest.mark.parametrize("mode", ["sleep", "block"])
def test_timeout_seconds_is_enforced_even_on_a_blocking_handler(mode):
    started = time.monotonic()
    with pytest.raises(HandlerTimeout, match=r"test_auth did not answer within 0\.5 s"):
        _call(mode, timeout=0.5)
    assert time.monotonic() - started < 2.5


def test_errors_name_the_failure_without_the_credentials(caplog):
    with pytest.raises(HandlerFailed) as err:
        _call("raise", user="ann")
    message = str(err.value)
    assert message.startswith("test_auth failed: PermissionError: login with *** for user ***")
    assert SECRET not in message and "ann" not in message
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Traceback" in logged and "PermissionError" in logged
    assert SECRET not in logged and " ann " not in logged


def test_scrubber_replaces_long_values_anywhere_and_short_ones_standing_alone():
    scrub = Scrubber(["longsecret", "ab", ""])
    assert scrub("x=longsecret; y=ab; tab=table") == "x=***; y=***; tab=table"


# ---- what the service relies on: SecretStr refused, kebab-case entry points -------------------


@pytest.mark.parametrize("annotation", [SecretStr, SecretBytes, Secret[str], SecretStr | None,
                                        list[SecretStr], Annotated[SecretStr, "x"]])
def test_an_input_with_a_secret_field_is_refused_when_defined(annotation):
    with pytest.raises(DefinitionError) as err:
        type("ConnInput", (Input,), {"__annotations__": {"password": annotation},
                                     "__module__": __name__})
    message = str(err.value)
    assert message.startswith("ConnInput.password is typed Secret"), message
    assert "password_env" in message and "inside a @task" in message


def test_a_secret_nested_in_a_model_of_an_input_is_refused_and_outputs_are_untouched():
    class Conn(BaseModel):
        token: SecretStr

    with pytest.raises(DefinitionError, match=r"Outer\.conn holds \S*Conn\.token, which is typed"):
        class Outer(Input, allow_unbounded_fields=True):
            conn: Conn

    class PlainInput(Input):
        password_env: str = "PG_PASSWORD"

    assert PlainInput().password_env == "PG_PASSWORD"


class QueriesIn(Input):
    days: int = 1


class QueriesOut(Output):
    n: int = 0


class TwoEntries(App):
    @entrypoint(default=True)
    async def extract_metadata(self, input: QueriesIn) -> QueriesOut:
        return QueriesOut()

    @entrypoint
    async def mine_queries(self, input: QueriesIn) -> QueriesOut:
        return QueriesOut()


def test_entry_points_answer_to_their_kebab_case_names():
    assert TwoEntries.entrypoint_spec("mine-queries").method == "mine_queries"
    assert TwoEntries.entrypoint_spec("mine_queries").method == "mine_queries"
    assert TwoEntries.entrypoint_spec("extract-metadata").name == "extract_metadata"
    assert TwoEntries.entrypoint_spec(None).name == "extract_metadata"
    with pytest.raises(DefinitionError, match=r"no entry point 'mine-query'.*kebab-case"):
        TwoEntries.entrypoint_spec("mine-query")
