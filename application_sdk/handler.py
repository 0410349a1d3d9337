"""Handlers: what an app answers over HTTP besides runs.

A connector exposes a `Handler` next to its `App`: `test_auth` (do these credentials work?),
`preflight_check` (is the source ready for a run?), `fetch_metadata` (what can be extracted?).
Each method takes one typed input and returns one typed output; `connector-runtime serve`
serves them at `POST /workflows/v1/auth`, `/check` and `/metadata`.

```python
class MyConnectorHandler(Handler):
    async def test_auth(self, input: AuthInput) -> AuthOutput:
        password = self.context.get_credential("password")
        ...
```

Discovery (done by the service): a class named `{AppClass}Handler` in the app's module, else the
one `Handler` subclass there, else `DefaultHandler` (always succeeds).

Definitions only, like the rest of `application_sdk`: the engine binds a `HandlerContext` to the
call with `bind_context` and enforces `timeout_seconds`. Credentials are request data, never run
data: nothing here is stored, and `HandlerCredential.value` is left out of every repr so a
logged input does not show it.

Rejected: handler contracts as `Input`/`Output` subclasses. Those are store contracts (payload
safety on unbounded fields, unknown-key warnings, `status` on every Output); a handler's
input and output cross HTTP only, bounded by the service's body limit.
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
import enum
import inspect
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import DefinitionError

__all__ = [
    "ApiMetadataObject",
    "ApiMetadataOutput",
    "AuthInput",
    "AuthOutput",
    "AuthStatus",
    "DefaultHandler",
    "Handler",
    "HandlerContext",
    "HandlerCredential",
    "MetadataInput",
    "MetadataOutput",
    "PreflightCheck",
    "PreflightInput",
    "PreflightOutput",
    "PreflightStatus",
    "SqlMetadataObject",
    "SqlMetadataOutput",
    "bind_context",
    "current_context",
]

MAX_TIMEOUT_SECONDS = 3600
"""Longest `timeout_seconds` a request may ask for."""


class HandlerCredential(BaseModel):
    """One credential of a handler request: `{"key": "password", "value": "..."}`."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    key: str = Field(min_length=1, max_length=256)
    value: str = Field(default="", repr=False, max_length=65_536)
    """Never in a repr, a log line or an error message."""


def _credential_list(value: Any) -> Any:
    """`{"user": "u", "password": "p"}` is accepted for `[{"key": "user", "value": "u"}, ...]`."""
    if isinstance(value, Mapping):
        return [{"key": k, "value": v} for k, v in value.items()]
    return value


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    credentials: list[HandlerCredential] = Field(max_length=256)
    """A list of {key, value}, or an object {key: value}."""

    @field_validator("credentials", mode="before")
    @classmethod
    def _accept_mapping(cls, value: Any) -> Any:
        return _credential_list(value)


class AuthInput(_Request):
    connection_id: str = ""
    timeout_seconds: float = Field(30, gt=0, le=MAX_TIMEOUT_SECONDS)


class AuthStatus(enum.StrEnum):
    SUCCESS = "success"
    FAILED = "failed"
    EXPIRED = "expired"
    INVALID_CREDENTIALS = "invalid_credentials"


class AuthOutput(BaseModel):
    status: AuthStatus
    message: str = ""
    identities: list[str] = Field(default_factory=list)
    scopes: list[str] = Field(default_factory=list)
    expires_at: str = ""


class PreflightInput(_Request):
    connection_config: dict[str, Any]
    checks_to_run: list[str] = Field(default_factory=list)
    """Names of the checks to run; empty: all of them."""
    timeout_seconds: float = Field(60, gt=0, le=MAX_TIMEOUT_SECONDS)


class PreflightStatus(enum.StrEnum):
    READY = "READY"
    NOT_READY = "NOT_READY"
    PARTIAL = "PARTIAL"


class PreflightCheck(BaseModel):
    name: str
    passed: bool
    message: str = ""
    duration_ms: float = 0


class PreflightOutput(BaseModel):
    status: PreflightStatus
    checks: list[PreflightCheck] = Field(default_factory=list)
    message: str = ""
    total_duration_ms: float = 0


class MetadataInput(_Request):
    connection_config: dict[str, Any]
    object_filter: str = ""
    include_fields: bool = True
    max_objects: int = Field(1000, gt=0, le=100_000)
    """The service answers at most this many objects."""
    timeout_seconds: float = Field(120, gt=0, le=MAX_TIMEOUT_SECONDS)


class MetadataOutput(BaseModel):
    objects: list[Any] = Field(default_factory=list)


class SqlMetadataObject(BaseModel):
    """A schema of a SQL source; further keys (TABLE_NAME, ...) are kept."""

    model_config = ConfigDict(extra="allow")

    TABLE_CATALOG: str
    TABLE_SCHEMA: str


class SqlMetadataOutput(MetadataOutput):
    objects: list[SqlMetadataObject] = Field(default_factory=list)


class ApiMetadataObject(BaseModel):
    """A node of an API source's object tree."""

    value: str
    title: str
    node_type: str = ""
    children: list[ApiMetadataObject] = Field(default_factory=list)


class ApiMetadataOutput(MetadataOutput):
    objects: list[ApiMetadataObject] = Field(default_factory=list)


# ---- the context of one handler call -------------------------------------------------------


@dataclass(frozen=True)
class HandlerContext:
    """What `self.context` gives inside a handler method: the request's credentials."""

    method: str
    """`test_auth`, `preflight_check` or `fetch_metadata`."""
    credentials: tuple[HandlerCredential, ...] = field(repr=False)
    timeout_seconds: float
    """The request's time budget; the engine cancels the call past it."""
    started: float = field(default_factory=time.monotonic, repr=False)

    def has_credential(self, key: str) -> bool:
        return any(c.key == key for c in self.credentials)

    def get_credential(self, key: str, default: str | None = None) -> str | None:
        """The value of credential `key`, or `default` when the request has none."""
        return next((c.value for c in self.credentials if c.key == key), default)

    @property
    def credential_keys(self) -> list[str]:
        return [c.key for c in self.credentials]

    @property
    def elapsed_ms(self) -> float:
        """Milliseconds since the call began."""
        return (time.monotonic() - self.started) * 1000

    @property
    def remaining_seconds(self) -> float:
        return max(0.0, self.timeout_seconds - (time.monotonic() - self.started))


_current: contextvars.ContextVar[HandlerContext | None] = contextvars.ContextVar(
    "application_sdk_handler_context", default=None
)


def current_context() -> HandlerContext:
    context = _current.get()
    if context is None:
        raise RuntimeError(
            "not inside a handler method: self.context exists only while test_auth, "
            "preflight_check or fetch_metadata answers a request (in a unit test, wrap the "
            "call in `with application_sdk.handler.bind_context(method, input): ...`)"
        )
    return context


@contextlib.contextmanager
def bind_context(method: str, input: _Request) -> Iterator[HandlerContext]:
    """Make `self.context` the context of a call of `method` with `input` (the engine's seam,
    usable in unit tests). The timeout is the engine's to enforce."""
    context = HandlerContext(method, tuple(input.credentials), input.timeout_seconds)
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


# ---- the handler ---------------------------------------------------------------------------

METHODS: dict[str, tuple[type[BaseModel], type[BaseModel]]] = {
    "test_auth": (AuthInput, AuthOutput),
    "preflight_check": (PreflightInput, PreflightOutput),
    "fetch_metadata": (MetadataInput, MetadataOutput),
}
"""Each handler method with the base of its input and output types."""


class Handler(abc.ABC):
    """What an app answers over HTTP: subclass it as `{AppClass}Handler` in the app's module.

    Each method is `async def`, takes one input and returns one output; a method may annotate a
    subclass of the base types (e.g. `-> SqlMetadataOutput`), which is what the service then
    validates and answers. Checked when the class is defined.
    """

    contracts: ClassVar[dict[str, tuple[type[BaseModel], type[BaseModel]]]] = dict(METHODS)
    """Per method, the (input, output) types its annotations name."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.contracts = {name: _method_contract(cls, name, *bases)
                         for name, bases in METHODS.items()}

    @abc.abstractmethod
    async def test_auth(self, input: AuthInput) -> AuthOutput:
        """Do the credentials work? A status other than success answers HTTP 401."""

    @abc.abstractmethod
    async def preflight_check(self, input: PreflightInput) -> PreflightOutput:
        """Is the source ready for a run? NOT_READY answers 200 with success false."""

    @abc.abstractmethod
    async def fetch_metadata(self, input: MetadataInput) -> MetadataOutput:
        """What the source holds that a run could extract."""

    @property
    def context(self) -> HandlerContext:
        """The current request's credentials and timing (only inside a handler method)."""
        return current_context()


def _method_contract(cls: type, name: str, in_base: type[BaseModel],
                     out_base: type[BaseModel]) -> tuple[type[BaseModel], type[BaseModel]]:
    fn = getattr(cls, name)
    where = f"{cls.__qualname__}.{name}"
    if getattr(fn, "__isabstractmethod__", False):
        return in_base, out_base
    if not inspect.iscoroutinefunction(fn):
        raise DefinitionError(f"handler method {where} must be declared with `async def`")
    params = list(inspect.signature(fn).parameters.values())[1:]
    if len(params) != 1:
        raise DefinitionError(
            f"handler method {where} must take exactly one argument, a {in_base.__name__}")
    try:
        hints = inspect.get_annotations(fn, eval_str=True)
    except NameError:
        return in_base, out_base  # a name defined later: the base types then
    in_t = hints.get(params[0].name, in_base)
    out_t = hints.get("return", out_base)
    for got, base, what in ((in_t, in_base, "argument"), (out_t, out_base, "return type")):
        if not (isinstance(got, type) and issubclass(got, base)):
            raise DefinitionError(
                f"handler method {where}: its {what} must be {base.__name__} or a subclass, "
                f"got {getattr(got, '__qualname__', repr(got))}")
    return in_t, out_t


class DefaultHandler(Handler):
    """What an app without a handler answers: success, READY and no objects."""

    async def test_auth(self, input: AuthInput) -> AuthOutput:
        return AuthOutput(status=AuthStatus.SUCCESS, message="accepted (the app has no handler)")

    async def preflight_check(self, input: PreflightInput) -> PreflightOutput:
        return PreflightOutput(status=PreflightStatus.READY,
                               message="ready (the app has no handler)")

    async def fetch_metadata(self, input: MetadataInput) -> MetadataOutput:
        return MetadataOutput(objects=[])
