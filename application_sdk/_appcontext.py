"""`AppContext`: what `self.context` answers inside run(), an entry point, on_complete() or a
task - who the run is, its logger, cancellation, durable per-app state and secrets.

The dataclass is the published SDK's shape: a test may build `AppContext(app_name=...,
app_version="1.0.0")` and hand it to `run_app(..., context=)`, which keeps its workflow id and
correlation id. Inside a run the engine builds one per run() and one per task attempt and
gives it an engine (`ContextEngine`): the logger's replay filter, the cancellation flag, the
state store and the secret lookup live there, so this module holds no I/O of its own.

The logger is stdlib `logging` (a `LoggerAdapter` over `app.{app_name}`): every record carries
`app_name`, `run_id`, `workflow_id`, `correlation_id`, `task_name` and `attempt` as attributes
(and all of them, with the keyword fields of the call, in `record.fields`), so a JSON formatter
gets them structured. `logger.info("done", rows=12)` works as in the SDK (keywords become
fields, not a TypeError). Inside run() the logger is quiet while run() replays recorded calls:
run() runs again on every resume, and its messages were written the first time.
Values returned by `get_secret` are redacted from this logger's messages in the process that
read them ("***").

Rejected: loguru (the SDK's choice) - a second logging system beside the stdlib one Ray and the
runtime use, and a dependency that does no work here; a structlog-style processor chain - the
same records, one more dependency.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from .errors import AppContextError

__all__ = ["AppContext", "ContextEngine", "ContextLogger", "note_secret"]

# what stdlib logging's own calls take; every other keyword is a structured field
_LOG_KWARGS = frozenset({"exc_info", "stack_info", "stacklevel", "extra"})
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def note_secret(value: str) -> None:
    """Redact `value` from every ContextLogger message of this process from now on."""
    if len(value) >= 4:  # a 1-3 character "secret" would redact ordinary words
        with _secrets_lock:
            _secrets.add(value)


def _redact(text: str) -> str:
    for value in sorted(_secrets, key=len, reverse=True):
        text = text.replace(value, "***")
    return text


class ContextEngine(Protocol):
    """What the engine gives an AppContext inside a run."""

    where: str
    """"run" (run(), an entry point, on_complete()) or "task"."""

    def replaying(self) -> bool: ...

    def is_cancelled(self) -> bool: ...

    async def save_state(self, key: str, value: dict[str, Any]) -> None: ...

    async def load_state(self, key: str) -> dict[str, Any] | None: ...

    async def secret(self, name: str) -> str | None: ...


class ContextLogger(logging.LoggerAdapter):
    """A logger bound to a run (and a task attempt): stdlib logging with structured fields."""

    def __init__(self, logger: logging.Logger, fields: dict[str, Any],
                 engine: ContextEngine | None = None) -> None:
        super().__init__(logger, fields)
        self._engine = engine

    def bind(self, **fields: Any) -> ContextLogger:
        """A logger with more fields bound."""
        return ContextLogger(self.logger, {**self.extra, **fields}, self._engine)  # type: ignore[arg-type]

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        given = {k: kwargs.pop(k) for k in list(kwargs) if k not in _LOG_KWARGS}
        fields = {**self.extra, **given}  # type: ignore[arg-type]
        extra = {(f"{k}_" if k in _RECORD_ATTRS else k): v for k, v in fields.items()}
        extra.update(kwargs.get("extra") or {})
        extra["fields"] = fields
        kwargs["extra"] = extra
        return msg, kwargs

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        if self._engine is not None and self._engine.replaying():
            return  # run() replaying recorded calls: logged the first time already
        if _secrets:
            msg, args = _redact(logging.LogRecord("", level, "", 0, msg, args, None)
                                .getMessage()), ()
        msg, kwargs = self.process(msg, kwargs)
        kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1  # the caller, not this frame
        self.logger.log(level, msg, *args, **kwargs)


@dataclass
class AppContext:
    """Who the run is, and what it may use: `self.context` inside run(), entry points,
    on_complete() and tasks. Built by the runtime; a test may build one to hand to
    `run_app(..., context=)` (its workflow id and correlation id are kept)."""

    app_name: str
    """The app's name (`App.name`, also `App._app_name`)."""
    app_version: str = ""
    """The app's version (`App.version`, as text)."""
    run_id: str = ""
    """This run's id (a continuation has an id of its own)."""
    workflow_id: str = ""
    """The id of the chain of runs this run belongs to: the first run's id unless given, the
    same across `continue_with` continuations."""
    correlation_id: str = ""
    """Ties this run to whatever started it: given to `run_app(context=)`, or the first run's
    id; the same across continuations."""
    started_at: datetime | None = None
    """When this run was created (UTC); the same on every replay and resume."""
    task_name: str | None = None
    """Inside a task: its name (None in run())."""
    attempt: int | None = None
    """Inside a task: the attempt number (None in run())."""
    _engine: ContextEngine | None = field(default=None, repr=False, compare=False)
    _logger: ContextLogger | None = field(default=None, repr=False, compare=False)

    @property
    def logger(self) -> ContextLogger:
        """stdlib logging bound to app, run, task and attempt; quiet while run() replays."""
        if self._logger is None:
            fields = {"app_name": self.app_name, "run_id": self.run_id,
                      "workflow_id": self.workflow_id or self.run_id,
                      "correlation_id": self.correlation_id or self.run_id,
                      "task_name": self.task_name, "attempt": self.attempt}
            self._logger = ContextLogger(logging.getLogger(f"app.{self.app_name}"), fields,
                                         self._engine)
        return self._logger

    def is_cancelled(self) -> bool:
        """True once cancellation of the run was requested (`connector-runtime cancel`)."""
        return self._engine is not None and self._engine.is_cancelled()

    async def save_state(self, key: str, value: dict[str, Any]) -> None:
        """Keep `value` (a small JSON object) under `key` for this app, across runs: written
        atomically to the store, only from a task (in run() it is I/O)."""
        await self._need("save_state").save_state(key, value)

    async def load_state(self, key: str) -> dict[str, Any] | None:
        """What `save_state(key, ...)` last kept for this app, or None."""
        return await self._need("load_state").load_state(key)

    async def get_secret(self, name: str) -> str:
        """The secret `name`: a file of that name in the run's secret folder, else the
        environment variable. `SecretNotFoundError` names the secret, never a value."""
        value = await self._need("get_secret").secret(name)
        if value is None:
            from .errors import SecretNotFoundError

            raise SecretNotFoundError(
                f"secret {name!r} not found: no file {name!r} in the run's secret folder "
                f"(--secrets-dir / CONNECTOR_RUNTIME_SECRETS_DIR) and no environment variable "
                f"{name!r} on the worker")
        return value

    async def get_secret_optional(self, name: str) -> str | None:
        """The secret `name`, or None when there is none."""
        return await self._need("get_secret_optional").secret(name)

    def _need(self, what: str) -> ContextEngine:
        if self._engine is None:
            raise AppContextError(
                f"AppContext.{what}() works only inside a run (in a @task): this context "
                "was built outside one")
        return self._engine
