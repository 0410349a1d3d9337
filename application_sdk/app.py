"""The App Framework API: `App`, `@task`, `@entrypoint`, `RetryPolicy` and friends.

Definitions only: what a task or an entry point is, checked when the class is created. The
engine that runs them lives in `runtime` and reaches in through `application_sdk._context`.
"""

from __future__ import annotations

import inspect
import os
import random as _random
import uuid as _uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, NoReturn, TypeVar

from . import _context
from ._appcontext import AppContext
from .contracts import FileReference, HeartbeatDetails, Input, Output, OutputStatus
from .errors import (
    AppContextError,
    AppError,
    ContractError,
    DefinitionError,
    NondeterminismError,
    NonRetryableError,
    PayloadSafetyError,
    PayloadTooLargeError,
    RetryableError,
    RunCancelledError,
    RunFailedError,
    StorageIntegrityError,
    TaskBudgetExceededError,
    TaskTimeoutError,
    WorkerLostError,
)

__all__ = [
    "NO_RETRY",
    "App",
    "AppContext",
    "AppContextError",
    "AppError",
    "CleanupInput",
    "CleanupOutput",
    "ContractError",
    "DefinitionError",
    "EntrypointSpec",
    "Input",
    "NonRetryableError",
    "NondeterminismError",
    "Output",
    "OutputStatus",
    "PayloadSafetyError",
    "PayloadTooLargeError",
    "Pool",
    "RetryPolicy",
    "RetryableError",
    "RunCancelledError",
    "RunFailedError",
    "StorageIntegrityError",
    "TaskBudgetExceededError",
    "TaskOptions",
    "TaskSpec",
    "TaskTimeoutError",
    "WorkerLostError",
    "current_task_info",
    "entrypoint",
    "now",
    "random",
    "task",
    "uuid4",
]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
_MISSING = object()


def _seconds(value: float | timedelta, what: str) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"RetryPolicy.{what} must be seconds (a number) or a timedelta, got "
                        f"{type(value).__name__}")
    return float(value)


@dataclass(frozen=True)
class RetryPolicy:
    """How a failed task attempt is retried. Intervals are seconds; a `datetime.timedelta`
    is accepted too (the published SDK's spelling) and kept as seconds."""

    max_attempts: int = 3
    """Attempts in all, the first included; 1 means no retry."""
    initial_interval: float = 1.0
    """Seconds to wait before the first retry (or a timedelta)."""
    backoff_coefficient: float = 2.0
    """Each further wait is the previous one times this."""
    max_interval: float = 300.0
    """Cap on any one wait, in seconds (or a timedelta)."""
    non_retryable_errors: tuple[str | type[BaseException], ...] = ()
    """Error types (classes or class names) that fail the task at once."""

    def __post_init__(self) -> None:
        for what in ("initial_interval", "max_interval"):
            object.__setattr__(self, what, _seconds(getattr(self, what), what))
        if self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")
        if self.initial_interval < 0 or self.max_interval < 0:
            raise ValueError("RetryPolicy intervals must be >= 0 seconds")
        if self.backoff_coefficient < 1:
            raise ValueError("RetryPolicy.backoff_coefficient must be >= 1")
        object.__setattr__(self, "non_retryable_errors", tuple(self.non_retryable_errors))

    def with_max_attempts(self, max_attempts: int) -> RetryPolicy:
        """This policy with another `max_attempts`."""
        return replace(self, max_attempts=max_attempts)

    def with_initial_interval(self, interval: float | timedelta) -> RetryPolicy:
        """This policy with another `initial_interval`."""
        return replace(self, initial_interval=interval)

    def with_non_retryable(self, *error_types: str | type[BaseException]) -> RetryPolicy:
        """This policy with more `non_retryable_errors`."""
        return replace(self, non_retryable_errors=(*self.non_retryable_errors, *error_types))

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        raw = self.initial_interval * self.backoff_coefficient ** (attempt - 1)
        return min(raw, self.max_interval)

    def is_non_retryable(self, error_types: list[str]) -> bool:
        """`error_types`: qualified and plain names along the error's MRO."""
        for item in self.non_retryable_errors:
            name = item if isinstance(item, str) else f"{item.__module__}.{item.__qualname__}"
            if name in error_types:
                return True
        return False


NO_RETRY = RetryPolicy(max_attempts=1)
"""One attempt, no retry: `@task(retry_policy=NO_RETRY)`."""


@dataclass(frozen=True)
class TaskOptions:
    """The options of one `@task`, with the documented defaults."""

    name: str
    description: str | None = None
    timeout_seconds: float = 86_400
    """One attempt, start to close."""
    schedule_to_close_seconds: float | None = None
    """All attempts together, retries and waits included."""
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    heartbeat_timeout_seconds: float | None = 60
    """Longest allowed gap between heartbeats; None turns the check off."""
    auto_heartbeat_seconds: float | None = 10
    """Period of the automatic heartbeat; None turns it off."""
    max_no_progress_seconds: float | None = None
    """Progress watchdog: report an attempt whose heartbeat details stop changing this long."""
    enforce_progress: bool = False
    """With max_no_progress_seconds: fail and retry such an attempt instead of reporting it."""
    max_worker_losses: int = 3
    """Attempts lost to dead workers or nodes, retried without spending the retry budget."""
    num_cpus: float | None = None
    memory: int | None = None
    resources: Mapping[str, float] | None = None
    pool: str | None = None
    """Name of the App's `Pool` whose warm actors run this task's attempts (None: a Ray task
    per attempt)."""

    def ray_options(self) -> dict[str, Any]:
        """Ray placement options set on this task (unset ones are left to Ray's defaults)."""
        return _placement(self.num_cpus, self.memory, self.resources)


def _placement(num_cpus: float | None, memory: int | None,
               resources: Mapping[str, float] | None) -> dict[str, Any]:
    """Ray placement options of a task or a pool's actors (unset ones left to Ray)."""
    opts: dict[str, Any] = {}
    if num_cpus is not None:
        opts["num_cpus"] = num_cpus
    if memory is not None:
        opts["memory"] = memory
    if resources:
        opts["resources"] = dict(resources)
    return opts


@dataclass(frozen=True)
class Pool:
    """A named pool of warm executor actors, declared on an App: `pools = {"source":
    Pool(size=2)}` (or just `{"source": 2}`). A `@task(pool="source")` runs its attempts on
    them: at most `size` at once, without a Ray task (and its lease) per attempt."""

    size: int
    """Actors in the pool: the most attempts of its tasks that run at once."""
    max_attempts_per_actor: int | None = None
    """Replace an actor after this many attempts (a leaking connector does not poison the
    tasks after it); None: only after a crash, a timeout or a lost heartbeat."""
    keep_warm_seconds: float = 60.0
    """How long idle actors outlive the last run that used them in the driver process."""
    num_cpus: float | None = None
    """CPUs each actor holds while alive (None: Ray's actor default, 1 to place it, 0 held)."""
    memory: int | None = None
    resources: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise DefinitionError(f"Pool.size must be an int >= 1, got {self.size!r}")
        limit = self.max_attempts_per_actor
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 1):
            raise DefinitionError(
                f"Pool.max_attempts_per_actor must be an int >= 1 or None, got {limit!r}")
        if self.keep_warm_seconds < 0:
            raise DefinitionError("Pool.keep_warm_seconds must be >= 0")

    def ray_options(self) -> dict[str, Any]:
        """Ray placement options of each actor (unset ones are left to Ray's defaults)."""
        return _placement(self.num_cpus, self.memory, self.resources)


def _annotations(fn: Callable[..., Any]) -> dict[str, Any] | None:
    try:
        return inspect.get_annotations(fn, eval_str=True)
    except NameError:
        return None  # a forward reference not yet defined: resolved at first use


def _subclass(tp: Any, base: type) -> bool:
    return isinstance(tp, type) and issubclass(tp, base)


def _check_signature(owner: str, fn: Callable[..., Any], what: str) -> tuple[Any, Any]:
    """(input type, output type) of an async method taking one Input and returning one Output."""
    where = f"{owner}.{fn.__name__}"
    if not inspect.iscoroutinefunction(fn):
        raise DefinitionError(f"{what} {where} must be declared with `async def`")
    params = list(inspect.signature(fn).parameters.values())[1:]
    if len(params) != 1 or params[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise DefinitionError(
            f"{what} {where} must take exactly one argument, an Input (e.g. "
            f"`async def {fn.__name__}(self, input: MyInput) -> MyOutput`)"
        )
    hints = _annotations(fn)
    if hints is None:
        return None, None
    in_t, out_t = hints.get(params[0].name, _MISSING), hints.get("return", _MISSING)
    if not _subclass(in_t, Input):
        raise DefinitionError(
            f"{what} {where}: argument {params[0].name!r} must be annotated with an "
            f"application_sdk.contracts.Input subclass, got {_type_name(in_t)}"
        )
    if not _subclass(out_t, Output):
        raise DefinitionError(
            f"{what} {where} must be annotated to return an application_sdk.contracts.Output "
            f"subclass, got {_type_name(out_t)}"
        )
    return in_t, out_t


def _type_name(tp: Any) -> str:
    if tp is _MISSING:
        return "no annotation"
    return getattr(tp, "__qualname__", repr(tp))


class TaskSpec:
    """A `@task` method as the engine sees it: its options, function and contract types."""

    __slots__ = ("_input_type", "_output_type", "fn", "options", "owner")

    def __init__(self, fn: Callable[..., Any], options: TaskOptions) -> None:
        self.fn = fn
        self.options = options
        self.owner = "?"
        self._input_type: type[Input] | None = None
        self._output_type: type[Output] | None = None

    @property
    def name(self) -> str:
        return self.options.name

    def bind(self, owner: str) -> None:
        self.owner = owner
        self._input_type, self._output_type = _check_signature(owner, self.fn, "task")

    def _resolve(self) -> None:
        if self._input_type is None:
            in_t, out_t = _check_signature(self.owner, self.fn, "task")
            if in_t is None:
                raise DefinitionError(
                    f"task {self.owner}.{self.fn.__name__}: its annotations name a type that "
                    "does not exist"
                )
            self._input_type, self._output_type = in_t, out_t

    @property
    def input_type(self) -> type[Input]:
        self._resolve()
        assert self._input_type is not None
        return self._input_type

    @property
    def output_type(self) -> type[Output]:
        self._resolve()
        assert self._output_type is not None
        return self._output_type


@dataclass(frozen=True)
class EntrypointSpec:
    """A triggerable starting point of an app: `run()` or an `@entrypoint` method."""

    name: str
    method: str
    default: bool
    input_type: type[Input]
    output_type: type[Output]


def task(
    fn: F | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_seconds: float = 86_400,
    schedule_to_close_seconds: float | None = None,
    retry_max_attempts: int = 3,
    retry_max_interval_seconds: float = 30,
    retry_policy: RetryPolicy | None = None,
    heartbeat_timeout_seconds: float | None = 60,
    auto_heartbeat_seconds: float | None = 10,
    max_no_progress_seconds: float | None = None,
    enforce_progress: bool = False,
    max_worker_losses: int = 3,
    num_cpus: float | None = None,
    memory: int | None = None,
    resources: Mapping[str, float] | None = None,
    pool: str | None = None,
) -> Any:
    """Mark an async App method as a durable, checkpointed, retried unit of work."""

    def decorate(fn: F) -> F:
        policy = retry_policy or RetryPolicy(
            max_attempts=retry_max_attempts, max_interval=retry_max_interval_seconds
        )
        options = TaskOptions(
            name=name or fn.__name__,
            description=description if description is not None else inspect.getdoc(fn),
            timeout_seconds=timeout_seconds,
            schedule_to_close_seconds=schedule_to_close_seconds,
            retry_policy=policy,
            heartbeat_timeout_seconds=heartbeat_timeout_seconds,
            auto_heartbeat_seconds=auto_heartbeat_seconds,
            max_no_progress_seconds=max_no_progress_seconds,
            enforce_progress=enforce_progress,
            max_worker_losses=max_worker_losses,
            num_cpus=num_cpus,
            memory=memory,
            resources=resources,
            pool=pool,
        )
        if timeout_seconds <= 0:
            raise DefinitionError(f"task {fn.__qualname__}: timeout_seconds must be > 0")
        return _task_method(TaskSpec(fn, options))  # type: ignore[return-value]

    return decorate(fn) if fn is not None else decorate


def _task_method(spec: TaskSpec) -> Callable[..., Awaitable[Output]]:
    fn = spec.fn

    async def call(self: App, input: Input | None = None) -> Output:
        if input is None:
            input = self._default_input(spec)
        orchestrator = _context.orchestrator.get()
        if orchestrator is not None:
            return await orchestrator.call_task(self, spec, input)
        # Outside run() (inside another task, or a unit test): an ordinary method call.
        return await fn(self, input)

    call.__name__ = fn.__name__
    call.__qualname__ = fn.__qualname__
    call.__doc__ = fn.__doc__
    call.__wrapped__ = fn  # type: ignore[attr-defined]
    call.__task_spec__ = spec  # type: ignore[attr-defined]
    return call


def entrypoint(fn: F | None = None, *, name: str | None = None, default: bool = False) -> Any:
    """Mark an async App method as an independently triggerable starting point."""

    def decorate(fn: F) -> F:
        fn.__entrypoint__ = (name or fn.__name__, default)  # type: ignore[attr-defined]
        return fn

    return decorate(fn) if fn is not None else decorate


class CleanupInput(Input):
    """Input of the built-in cleanup tasks; filled in by the runtime."""

    outcome: str = ""
    """How run() ended: "completed", "failed", "cancelled" or "continued" (continue_with)."""


class CleanupOutput(Output):
    deleted: int = 0
    """How many files or objects were deleted."""


class App:
    """Base class of an App Framework application.

    Subclass keywords: `passthrough_modules=[...]` (modules run() may import), `name="..."`
    (the app's name in the store, default the class name). Both can also be class attributes.
    """

    name: ClassVar[str] = "App"
    version: ClassVar[int | str] = 1
    """Bump when run() changes on purpose: divergence from old journals becomes a warning.
    An int, or a dotted version string ("1.2.0", as the published SDK spells it)."""
    _app_name: ClassVar[str] = "App"
    """The SDK's name for `name` (the same value)."""
    _app_version: ClassVar[str] = "1"
    """The SDK's name for `version`, as text."""
    passthrough_modules: ClassVar[tuple[str, ...]] = ()
    max_task_executions: ClassVar[int] = 5_000
    """Task budget of one run (attempts included)."""
    payload_limit_bytes: ClassVar[int] = 2 * 1024 * 1024
    """Largest serialized task input or output."""
    pools: ClassVar[Mapping[str, Pool | int]] = {}
    """Named pools of warm executor actors that `@task(pool=name)` runs on (an int: the size)."""

    _tasks: ClassVar[dict[str, TaskSpec]] = {}
    _pools: ClassVar[dict[str, Pool]] = {}
    _entrypoints: ClassVar[dict[str, EntrypointSpec]] = {}

    def __init_subclass__(
        cls,
        *,
        passthrough_modules: list[str] | tuple[str, ...] | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = name or cls.__name__
        cls._app_name = cls.name
        cls._app_version = str(cls.version)
        if passthrough_modules is not None:
            cls.passthrough_modules = tuple(passthrough_modules)
        else:
            cls.passthrough_modules = tuple(cls.passthrough_modules)
        cls._tasks = _collect_tasks(cls)
        cls._pools = _collect_pools(cls)
        cls._entrypoints = _collect_entrypoints(cls)

    @classmethod
    def entrypoints(cls) -> dict[str, EntrypointSpec]:
        """Every triggerable starting point, by name."""
        return dict(cls._entrypoints)

    @classmethod
    def tasks(cls) -> dict[str, TaskSpec]:
        return dict(cls._tasks)

    @classmethod
    def entrypoint_spec(cls, name: str | None = None) -> EntrypointSpec:
        """The entry point to start: by name, else the default one, else the only one."""
        eps = cls._entrypoints
        if not eps:
            raise DefinitionError(
                f"{cls.__qualname__} has nothing to run: define `async def run(self, input)` "
                "or @entrypoint methods"
            )
        if name is not None:
            found = eps.get(name) or _by_kebab_name(eps, name)
            if found is None:
                raise DefinitionError(
                    f"{cls.__qualname__} has no entry point {name!r}; it has: {sorted(eps)}"
                    " (each also answers to its kebab-case form, e.g. mine-queries)"
                )
            return found
        defaults = [ep for ep in eps.values() if ep.default]
        if len(defaults) == 1:
            return defaults[0]
        if len(eps) == 1:
            return next(iter(eps.values()))
        raise DefinitionError(
            f"{cls.__qualname__} has several entry points {sorted(eps)} and no default: "
            "choose one (--entrypoint NAME, or entrypoint=...)"
        )

    async def run(self, input: Input) -> Output:
        raise NotImplementedError

    async def on_complete(self) -> None:
        """Runs after run() finished, whether it succeeded or raised. Call super() last."""
        await self.cleanup_files()
        await self.cleanup_storage()

    @task(name="cleanup_files", timeout_seconds=600)
    async def cleanup_files(self, input: CleanupInput) -> CleanupOutput:
        """Delete local scratch files this run's task outputs referenced."""
        runtime = _context.current_task().runtime
        return CleanupOutput(deleted=runtime.cleanup_files() if runtime else 0)

    @task(name="cleanup_storage", timeout_seconds=600)
    async def cleanup_storage(self, input: CleanupInput) -> CleanupOutput:
        """Delete this run's TRANSIENT objects from the store (kept while the run can resume)."""
        runtime = _context.current_task().runtime
        if input.outcome == "failed":
            return CleanupOutput(deleted=0)  # a resumed run replays outputs that point at them
        return CleanupOutput(deleted=runtime.cleanup_storage() if runtime else 0)

    def _default_input(self, spec: TaskSpec) -> Input:
        if issubclass(spec.input_type, CleanupInput):
            orchestrator = _context.orchestrator.get()
            outcome = getattr(orchestrator, "outcome", "") or ""
            return spec.input_type(outcome=outcome)
        try:
            return spec.input_type()
        except Exception as exc:
            raise TypeError(
                f"task {type(self).__qualname__}.{spec.fn.__name__} needs an input: "
                f"pass a {spec.input_type.__qualname__}"
            ) from exc

    # ---- inside run() and tasks ------------------------------------------------------------

    @property
    def context(self) -> AppContext:
        """The run's AppContext (ids, logger, cancellation, state, secrets): inside run(),
        entry points, on_complete() and tasks."""
        ctx = _context.app_context.get()
        if ctx is None:
            raise AppContextError(
                f"{type(self).__qualname__}.context exists only while the app runs (in run(), "
                "an entry point, on_complete() or a @task), not in __init__ or a plain call: "
                "start it with runtime.run_app or application_sdk.testing.run_task")
        return ctx

    @property
    def logger(self) -> Any:
        """`self.context.logger`: bound to run, task and attempt, quiet while run() replays."""
        return self.context.logger

    def continue_with(self, input: Input | dict[str, Any]) -> NoReturn:
        """End this run here and continue as a new run of the same entry point with `input`
        and a fresh journal (and task budget), chained to this one: same workflow and
        correlation id. Only in run() or an entry point; it does not return."""
        orchestrator = _context.orchestrator.get()
        if orchestrator is None or _context.task_info.get() is not None \
                or getattr(orchestrator, "outcome", ""):
            raise AppContextError(
                "continue_with() works only in run() (or an entry point): not in a task, in "
                "on_complete() or outside a run")
        raise _context.ContinueAsNew(input)

    # ---- inside a task -------------------------------------------------------------------

    def heartbeat(self, details: HeartbeatDetails | None = None,
                  files: list[FileReference | str | os.PathLike[str]] | None = None) -> None:
        """Record liveness and progress. With details (or files) it is a checkpoint, durable
        in the store before this returns: the next attempt of this call - after a crash of
        the worker, the node or the driver - reads it back with get_heartbeat_details (and
        get_heartbeat_files). Files (local paths or FileReferences) are uploaded with it."""
        info = _context.current_task()
        if details is not None and not isinstance(details, HeartbeatDetails):
            raise TypeError(f"heartbeat() takes a HeartbeatDetails instance, got "
                            f"{type(details).__qualname__}")
        refs = [f if isinstance(f, FileReference) else FileReference.from_local(f)
                for f in files or ()]
        if details is not None:
            size = len(details.__pydantic_serializer__.to_json(details))
            if size > type(self).payload_limit_bytes:
                raise PayloadTooLargeError(
                    f"heartbeat details of task {info.task_name} are {size / 2**20:.1f} MiB, "
                    f"over the {type(self).payload_limit_bytes / 2**20:.0f} MiB payload limit: "
                    "checkpoint a position (a page, a cursor) and pass the data as files=")
        if info.runtime is not None:
            info.runtime.heartbeat(details, refs)

    def get_heartbeat_details(self, model: type[HeartbeatDetails]) -> HeartbeatDetails | None:
        """The last details an earlier attempt of this call recorded, as `model` (unknown keys
        ignored), or None. FileReferences in them are materialized on this node."""
        return _context.heartbeat_details_as(model)

    def get_heartbeat_files(self) -> list[FileReference]:
        """The files the last checkpoint of an earlier attempt carried (`heartbeat(...,
        files=)`), materialized on this node; [] when there are none."""
        _, files = _context.last_heartbeat()
        runtime = _context.current_task().runtime
        return [runtime.materialize(f) for f in files] if runtime is not None else files

    @property
    def scratch_dir(self) -> str:
        """This attempt's own directory for local files (created on first use)."""
        path = _context.current_task().scratch_dir
        os.makedirs(path, exist_ok=True)
        return path

    @property
    def task_info(self) -> _context.TaskInfo:
        return _context.current_task()


def _collect_tasks(cls: type[App]) -> dict[str, TaskSpec]:
    tasks: dict[str, TaskSpec] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            spec = getattr(value, "__task_spec__", None)
            if spec is None:
                continue
            if spec.owner == "?":
                spec.bind(klass.__qualname__)
            previous = tasks.get(spec.name)
            if previous is not None and previous.fn.__name__ != attr:
                raise DefinitionError(
                    f"{cls.__qualname__}: two tasks are named {spec.name!r} "
                    f"({previous.fn.__name__} and {attr}); give one another name="
                )
            tasks[spec.name] = spec
    return tasks


def _collect_pools(cls: type[App]) -> dict[str, Pool]:
    """The App's pools, sizes given as ints made Pools; every task's pool must be one."""
    pools: dict[str, Pool] = {}
    for name, value in dict(cls.pools).items():
        if not isinstance(name, str) or not name:
            raise DefinitionError(f"{cls.__qualname__}.pools: pool names are non-empty strings, "
                                  f"got {name!r}")
        pool = value if isinstance(value, Pool) else Pool(size=value)  # type: ignore[arg-type]
        pools[name] = pool
    for spec in cls._tasks.values():
        wanted, opts = spec.options.pool, spec.options
        if wanted is None:
            continue
        if wanted not in pools:
            raise DefinitionError(
                f"task {cls.__qualname__}.{spec.fn.__name__} names pool {wanted!r}, which "
                f"{cls.__qualname__} does not declare (declared: {sorted(pools) or 'none'}): "
                f"add `pools = {{{wanted!r}: Pool(size=N)}}` to the class"
            )
        if opts.num_cpus is not None or opts.memory is not None or opts.resources:
            raise DefinitionError(
                f"task {cls.__qualname__}.{spec.fn.__name__} runs on pool {wanted!r}: its "
                "placement is the pool's actors'; set num_cpus=, memory=, resources= on "
                f"Pool(...) instead of @task"
            )
    return pools


def _collect_entrypoints(cls: type[App]) -> dict[str, EntrypointSpec]:
    marked: dict[str, EntrypointSpec] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            mark = getattr(value, "__entrypoint__", None)
            if mark is None:
                continue
            in_t, out_t = _check_signature(cls.__qualname__, value, "entry point")
            marked[mark[0]] = EntrypointSpec(mark[0], attr, mark[1], in_t, out_t)
    run_owner = next(k for k in cls.__mro__ if "run" in vars(k))
    if marked:
        if run_owner is not App:
            raise DefinitionError(
                f"{cls.__qualname__} defines @entrypoint methods {sorted(marked)} and also "
                f"run() (in {run_owner.__qualname__}): remove run(), the entry points replace it"
            )
        if sum(ep.default for ep in marked.values()) > 1:
            raise DefinitionError(f"{cls.__qualname__}: more than one @entrypoint(default=True)")
        return marked
    if run_owner is App:
        return {}
    in_t, out_t = _check_signature(cls.__qualname__, cls.run, "run()")
    return {"run": EntrypointSpec("run", "run", True, in_t, out_t)}


def _by_kebab_name(eps: dict[str, EntrypointSpec], name: str) -> EntrypointSpec | None:
    """The entry point whose name is `name` with '-' for '_' (`mine-queries` for
    `mine_queries`, as the published SDK's HTTP routes and CLI spell them)."""
    wanted = name.replace("-", "_")
    matches = [ep for key, ep in eps.items() if key.replace("-", "_") == wanted]
    return matches[0] if len(matches) == 1 else None


def current_task_info() -> _context.TaskInfo | None:
    """Facts about the task attempt running in this context (run id, call key, attempt,
    scratch dir), or None outside a task. For libraries used inside tasks; an App method uses
    `self.task_info`."""
    return _context.task_info.get()


# ---- deterministic helpers for run() ---------------------------------------------------------


def now() -> datetime:
    """The current UTC time; inside run() recorded once and the same on every replay."""
    orchestrator = _context.orchestrator.get()
    if orchestrator is None:
        return datetime.now(UTC)
    value = orchestrator.recorded_value("now", lambda: datetime.now(UTC).isoformat())
    return datetime.fromisoformat(value)


def uuid4() -> _uuid.UUID:
    """A random UUID; inside run() recorded once and the same on every replay."""
    orchestrator = _context.orchestrator.get()
    if orchestrator is None:
        return _uuid.uuid4()
    return _uuid.UUID(orchestrator.recorded_value("uuid4", lambda: _uuid.uuid4().hex))


def random() -> float:
    """A random float in [0, 1); inside run() recorded once and the same on every replay."""
    orchestrator = _context.orchestrator.get()
    if orchestrator is None:
        return _random.random()
    return float(orchestrator.recorded_value("random", _random.random))
