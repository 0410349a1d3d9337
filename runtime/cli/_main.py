"""`connector-runtime`: run, resume, status, list, cancel, files (and gc, demo, serve, trace).

stdout carries only results (the run's Output as JSON, as the last thing printed); progress and
logs go to stderr, so `ray job logs` and shell pipelines both work. Exit codes: 0 success,
1 run failed or cancelled, 2 bad usage or bad input, 3 run owned by a live driver (at start, or
taken over by another driver while this one was frozen or cut off), 130 Ctrl-C.

Nothing the store says is imported: `resume` runs only apps the operator names (`--app`,
`--apps-file`; runtime/cli/_allowed.py), and what is printed from records is escaped
(`storage.printable`).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import re
import signal
import sys
import time
from typing import Any

from application_sdk.app import App
from application_sdk.errors import DefinitionError, RunCancelledError, RunFailedError
from storage import (
    InvalidNameError,
    LeaseHeldError,
    LeaseLostError,
    RecordKeyError,
    RunStatus,
    Store,
    StoreError,
    check_name,
    find_runs,
    list_runs,
    open_store,
    printable,
    record_key,
)

from .._errors import UsageError

__all__ = ["main"]

log = logging.getLogger("connector_runtime")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_OWNED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def load_app(target: str) -> type[App]:
    """Import `module:Class` from the current directory (as `ray job submit` runs it).

    Only the operator names a target (a command line, an apps file), never a run record. The
    module is the one thing imported: the class is looked up in the module's and the classes'
    own namespaces (no `__getattr__` hook, no lazy import of anything else it names) and
    checked to be an App before anything uses it."""
    module_name, sep, qualname = target.partition(":")
    if not sep or not module_name or not qualname:
        raise CliError(f"app {target!r}: expected module:Class, e.g. my_app:MyConnector")
    if not _DOTTED.fullmatch(module_name) or not _DOTTED.fullmatch(qualname):
        raise CliError(f"app {target!r}: the module and the class must be dotted Python "
                       "names, e.g. my_app:MyConnector or pkg.apps:Outer.MyConnector")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"cannot import module {module_name!r} for app {target!r}: {exc}") from exc
    obj: Any = module
    for part in qualname.split("."):
        namespace = vars(obj) if obj is module or isinstance(obj, type) else {}
        obj = namespace.get(part)
        if obj is None:
            raise CliError(f"module {module_name!r} has no {qualname!r} (app {target!r})")
    if not (isinstance(obj, type) and issubclass(obj, App)):
        raise CliError(f"{target!r} is not an application_sdk.app.App subclass")
    return obj


def parse_input(text: str) -> dict[str, Any]:
    source = "--input"
    if text.startswith("@"):
        source = text[1:]
        try:
            with open(source, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise CliError(f"cannot read input file {source!r}: {exc.strerror}") from exc
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{source}: malformed JSON at line {exc.lineno} column {exc.colno}: "
                       f"{exc.msg}") from exc
    if not isinstance(value, dict):
        raise CliError(f"{source}: the input must be a JSON object, got {type(value).__name__}")
    return value


def parse_store_options(items: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--store-option {item!r}: expected key=value")
        if key == "endpoint_url":
            options.setdefault("client_kwargs", {})["endpoint_url"] = value
        else:
            options[key] = value
    return options


def _store(args: argparse.Namespace) -> Store:
    try:
        record_key()  # a record key asked for but unusable: say so before anything is read
        return open_store(args.store, parse_store_options(args.store_option))
    except StoreError as exc:
        raise CliError(str(exc)) from exc


def _print_output(output: Any) -> None:
    sys.stdout.write(json.dumps(output.model_dump(mode="json")) + "\n")
    sys.stdout.flush()


def _execute(app_cls: type[App], payload: Any, args: argparse.Namespace, store: Store,
             run_id: str | None, entrypoint: str | None) -> int:
    secrets_dir = getattr(args, "secrets_dir", None)
    from .._ray import after_init
    from ..driver import new_run_id, run_app_async

    run_id = run_id or new_run_id(app_cls)
    print(f"run {run_id} ({app_cls.name}) in {store.url}", file=sys.stderr)
    interrupted: list[int] = []

    async def main() -> Any:
        from ._progress import ProgressDisplay

        task = asyncio.current_task()
        assert task is not None
        after_init(lambda: _cancel_on_signals(task, interrupted))
        with ProgressDisplay(f"run {run_id}") as progress:
            return await run_app_async(app_cls, payload, run_id=run_id, store=store,
                                       entrypoint=entrypoint, on_progress=progress.update,
                                       secrets_dir=secrets_dir)

    try:
        output = asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"run {run_id}: interrupted before it started", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RunCancelledError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INTERRUPTED if interrupted else EXIT_FAILED
    except RunFailedError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILED
    except LeaseHeldError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_OWNED
    except LeaseLostError as exc:  # another driver took the run over while this one was away
        print(f"stopped: {exc}", file=sys.stderr)
        return EXIT_OWNED
    except (UsageError, DefinitionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _print_output(output)
    return EXIT_OK


def _cancel_on_signals(task: asyncio.Task[Any], interrupted: list[int]) -> None:
    """Ctrl-C and SIGTERM (what `ray job stop` sends) cancel the run cleanly: in-flight
    attempts are stopped, on_complete() runs, the status becomes CANCELLED, exit code 130."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        print(f"received {signal.Signals(signum).name}: cancelling the run", file=sys.stderr)
        interrupted.append(signum)
        task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)


def cmd_run(args: argparse.Namespace) -> int:
    if args.run_id is not None:
        _checked_name("run id", args.run_id)
    app_cls = load_app(args.app)
    payload = parse_input(args.input)
    try:
        ep = app_cls.entrypoint_spec(args.entrypoint)
        from ..driver import validate_input

        validate_input(ep, payload)
    except (UsageError, DefinitionError) as exc:
        raise CliError(str(exc)) from exc
    return _execute(app_cls, payload, args, _store(args), args.run_id, args.entrypoint)


def cmd_resume(args: argparse.Namespace) -> int:
    """Resume runs, each with an app the operator named (`--app`, `--apps-file`): a run
    record's own `app_path` is never imported (runtime/cli/_allowed.py)."""
    store = _store(args)
    if args.all:
        return _resume_all(args, store)
    if not args.run_id:
        raise CliError("resume: give a RUN_ID or --all")
    record = _find_record(store, args.run_id)
    allowed = _allowed(args, record)
    app_cls, why = allowed.match(record)
    if app_cls is None:
        raise CliError(f"run {record.run_id} not resumed: {why}")
    if record.status is RunStatus.COMPLETED:
        print(f"run {record.run_id} is already COMPLETED", file=sys.stderr)
    return _execute(app_cls, record.input, args, store, record.run_id, record.entrypoint)


def _allowed(args: argparse.Namespace, record: Any = None) -> Any:
    from ._allowed import APPS_FILE_VAR, allowed_apps

    try:
        allowed = allowed_apps(args.app, args.apps_file, load_app)
    except UsageError as exc:
        raise CliError(str(exc)) from exc
    if allowed is None:
        hint = "" if record is None else (
            f" (its record says {record.app_path!r}: check that it is the app you "
            "mean before naming it)")
        raise CliError(
            "resume runs only apps you name: add --app MODULE:CLASS (repeatable)" + hint +
            f", or --apps-file FILE (or ${APPS_FILE_VAR}) listing them; the app a run record "
            "names is never imported on the record's word")
    return allowed


def _resume_all(args: argparse.Namespace, store: Store) -> int:
    """Every unfinished run whose driver is gone, with the app the operator named for it. A
    record that cannot be trusted, or of an app not named, is skipped with the reason; the
    others go on. Exit code: the worst of the resumed runs', at least 1 if a record was
    refused."""
    from storage import RecordProblem

    allowed = _allowed(args)
    problems: list[RecordProblem] = []
    records = list_runs(store, problems=problems)
    worst = EXIT_OK
    for problem in problems:
        print(f"skipped {problem}: not resumed", file=sys.stderr)
        worst = EXIT_FAILED
    for record in records:
        code = _resume_one(args, store, allowed, record)
        worst = max(worst, code)
        if code == EXIT_INTERRUPTED:
            break  # Ctrl-C or SIGTERM: the operator stops the whole pass
    return worst


def _resume_one(args: argparse.Namespace, store: Store, allowed: Any, record: Any) -> int:
    from storage import Lease, RunStore

    if record.status in (RunStatus.COMPLETED, RunStatus.CANCELLED, RunStatus.CONTINUED):
        return EXIT_OK  # a CONTINUED run's continuation is a run record of its own
    name = f"{record.run_id} ({record.app})"
    app_cls, why = allowed.match(record)
    if app_cls is None:
        print(f"skipped {name}: {why}", file=sys.stderr)
        return EXIT_OK
    error = record.error if isinstance(record.error, dict) else {}
    if record.status is RunStatus.FAILED and error.get("non_retryable") is True \
            and not args.include_failed:
        cause = printable(f"{error.get('type', 'error')}: {error.get('message', '')}")[:300]
        print(f"skipped {name}: it failed on a non-retryable error ({cause}), which a resume "
              f"would meet again; fix the cause, then resume it by name or add "
              "--include-failed", file=sys.stderr)
        return EXIT_OK
    try:
        lease = Lease(RunStore(store, record.app, record.run_id)).read()
        if lease is not None and lease.live(time.time()):
            return EXIT_OK
        print(f"resuming {name}, {record.status.value}", file=sys.stderr)
        return _execute(app_cls, record.input, args, store, record.run_id, record.entrypoint)
    except StoreError as exc:  # this run's store trouble is not the next run's
        print(f"run {name}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _checked_name(kind: str, value: str) -> str:
    try:
        return check_name(kind, value)
    except InvalidNameError as exc:
        raise CliError(str(exc)) from exc


def _find_record(store: Store, run_id: str):
    try:
        found = find_runs(store, run_id)
    except StoreError as exc:
        raise CliError(str(exc)) from exc
    if not found:
        raise CliError(f"no run {run_id!r} in store {store.url}")
    if len(found) > 1:
        raise CliError(f"run id {run_id!r} exists for several apps: "
                       f"{[r.app for r in found]}")
    record = found[0].read_run()  # a record that cannot be trusted: StoreError, exit 1
    if record is None:
        raise CliError(f"no run {run_id!r} in store {store.url}")
    return record


def cmd_status(args: argparse.Namespace) -> int:
    from ..views import describe

    store = _store(args)
    record = _find_record(store, args.run_id)
    if args.tasks:
        return _status_tasks(store, record, args.json)
    info = describe(store, record)
    if args.json:
        print(json.dumps(info, indent=2))  # JSON escapes control characters itself
    else:
        for key, value in info.items():
            text = json.dumps(value) if isinstance(value, dict) else value
            print(f"{key:>14}: {printable(text)}")
    return EXIT_OK


def _status_tasks(store: Store, record: Any, as_json: bool) -> int:
    """`status RUN_ID --tasks`: one row per task call (runtime/cli/_observe.py)."""
    from ._observe import print_tasks

    print_tasks(store, record, as_json)
    return EXIT_OK


def cmd_trace(args: argparse.Namespace) -> int:
    """`trace RUN_ID`: the run's history as Chrome Trace Event JSON (runtime/cli/_observe.py)."""
    from ._observe import write_trace

    store = _store(args)
    record = _find_record(store, args.run_id)
    try:
        write_trace(store, record, args.output)
    except OSError as exc:
        raise CliError(f"--output {args.output}: cannot write the trace: "
                       f"{exc.strerror or exc}") from exc
    return EXIT_OK


def _trace_parser(sub: Any, store_args: Any) -> None:
    p = sub.add_parser("trace", help="write a run's attempts and driver phases as a Chrome/"
                       "Perfetto trace (docs/observability.md)")
    p.add_argument("run_id")
    p.add_argument("--output", "-o", metavar="FILE",
                   help="where to write it (default RUN_ID.trace.json; - for stdout)")
    store_args(p)
    p.set_defaults(fn=cmd_trace)


def cmd_list(args: argparse.Namespace) -> int:
    """Every run; a record that cannot be trusted is named on stderr, and the others listed."""
    from storage import RecordProblem

    store = _store(args)
    if args.app:
        _checked_name("app name", args.app)
    problems: list[RecordProblem] = []
    rows = list_runs(store, args.app, problems)
    for problem in problems:
        print(f"warning: skipped {problem}", file=sys.stderr)
    if args.json:
        print(json.dumps([{"run_id": r.run_id, "app": r.app, "status": r.status.value,
                           "created_at": r.created_at} for r in rows], indent=2))
        return EXIT_OK
    for r in rows:
        done = r.progress.get("done", 0)
        print(f"{printable(r.run_id)}\t{printable(r.app)}\t{r.status.value}\t"
              f"{printable(done)} tasks")
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    from ..views import chain_end

    store = _store(args)
    record = chain_end(store, _find_record(store, args.run_id))  # a chain: its running run
    if record.status.finished:
        print(f"run {record.run_id} is already {record.status.value}", file=sys.stderr)
        return EXIT_OK
    from storage import RunStore

    RunStore(store, record.app, record.run_id).request_cancel(args.reason)
    print(f"cancellation of {record.run_id} requested", file=sys.stderr)
    return EXIT_OK


def cmd_files(args: argparse.Namespace) -> int:
    """List a completed run's output files (store paths); --download fetches them."""
    from ._files import cmd_files as files

    store = _store(args)
    return files(store, _find_record(store, args.run_id), args.download, args.json)


def cmd_gc(args: argparse.Namespace) -> int:
    """List (dry run) or delete RETAINED objects, and TRANSIENT ones and unreferenced
    PERSISTENT leftovers of finished runs, past the retention; PERSISTENT objects a record
    points at are never touched."""
    from ._gc import collect, parse_age, plan

    try:
        older_than = parse_age(args.older_than)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    store = _store(args)
    notes: list[str] = []
    items = plan(store, older_than, notes=notes)
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    verb = "deleting" if args.yes else "would delete"
    for item in items:
        print(f"{verb} {item.describe()}")
    total = sum(i.objects for i in items)
    if not args.yes:
        print(f"{len(items)} folder(s), {total} object(s) past {args.older_than} in "
              f"{store.url}; nothing deleted (dry run: add --yes to delete)", file=sys.stderr)
        return EXIT_OK
    deleted = collect(store, items)
    print(f"deleted {deleted} object(s) in {len(items)} folder(s) from {store.url}",
          file=sys.stderr)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import demo_main

    if args.rows < 10:
        raise CliError("--rows must be at least 10")
    return demo_main(args.rows, args.output, args.store, args.target_rows, args.max_parallel)


def cmd_serve(args: argparse.Namespace) -> int:
    """The app service (runtime/service): FastAPI on uvicorn; runs go to drivers of their own."""
    app_cls = load_app(args.app)
    store = _store(args)
    from ..service import ServiceConfigError, serve

    try:
        return serve(args, app_cls, store)
    except ServiceConfigError as exc:
        raise CliError(str(exc)) from exc


def _serve_parser(sub: Any, store_args: Any) -> None:
    p = sub.add_parser("serve", help="serve the app over HTTP: handler routes, start/status/"
                       "stop/result of runs (docs/service.md)")
    p.add_argument("app", help="module:Class of the App")
    p.add_argument("--handler", metavar="MODULE:CLASS",
                   help="the Handler (default: {App}Handler in the app's module, else the one "
                   "Handler there, else DefaultHandler)")
    p.add_argument("--host", default="127.0.0.1",
                   help="bind address (default 127.0.0.1; any other needs a token)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token-file", help="file holding the bearer token (else "
                   "$CONNECTOR_RUNTIME_API_TOKEN)")
    p.add_argument("--ray-address", help="Ray cluster to submit runs to as Ray jobs (else "
                   "$RAY_ADDRESS; without either, each run is a local driver process)")
    p.add_argument("--launcher", default="auto", choices=["auto", "process", "ray-job"],
                   help="how runs start: auto (a Ray job when attached to a cluster), "
                   "process, ray-job")
    p.add_argument("--working-dir", help="Ray jobs: folder uploaded as the job's working dir "
                   "(default: the folder the app module is imported from)")
    p.add_argument("--log-dir", help="local drivers' logs (default ./.connector-runtime-logs)")
    p.add_argument("--max-body-bytes", type=int, default=1024 * 1024,
                   help="largest request body (default 1 MiB; larger: HTTP 413)")
    p.add_argument("--resume-orphans", action="store_true",
                   help="at start, resume RUNNING runs whose driver is gone")
    store_args(p)
    p.set_defaults(fn=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="connector-runtime",
        description="Run durable App Framework connector apps on Ray.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    def store_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--store", help="store URL: a folder, file://, s3://bucket/prefix "
                       "(default $CONNECTOR_RUNTIME_STORE or ./.connector-runtime)")
        p.add_argument("--store-option", action="append", default=[], metavar="KEY=VALUE",
                       help="fsspec storage option (e.g. endpoint_url=..., profile=...)")

    p = sub.add_parser("run", help="start (or resume, or return) a run")
    p.add_argument("app", help="module:Class of the App")
    p.add_argument("--input", required=True, help="JSON object, or @file.json")
    p.add_argument("--run-id", help="name of the run; the same id resumes the same run")
    p.add_argument("--entrypoint", help="which @entrypoint to run")
    _secrets_arg(p)
    store_args(p)
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("resume", help="resume an interrupted or failed run, with an app you "
                       "name (a record's own app is never imported)")
    p.add_argument("run_id", nargs="?")
    p.add_argument("--all", action="store_true",
                   help="resume every unfinished run whose driver is gone, of the apps named")
    p.add_argument("--app", action="append", default=[], metavar="MODULE:CLASS",
                   help="an app this resume may run (repeatable); a run is resumed only by "
                   "the named app of its name")
    p.add_argument("--apps-file", metavar="FILE",
                   help="file naming the apps this resume may run, one module:Class a line "
                   "(# comments); yours, not writable by others (default "
                   "$CONNECTOR_RUNTIME_APPS_FILE)")
    p.add_argument("--include-failed", action="store_true",
                   help="--all: resume runs that failed on a non-retryable error too")
    _secrets_arg(p)
    store_args(p)
    p.set_defaults(fn=cmd_resume)

    p = sub.add_parser("status", help="show a run's state")
    p.add_argument("run_id")
    p.add_argument("--json", action="store_true")
    p.add_argument("--tasks", action="store_true",
                   help="one row per task call: state, attempts, total time, last error")
    store_args(p)
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("list", help="list runs in the store")
    p.add_argument("--app")
    p.add_argument("--json", action="store_true")
    store_args(p)
    p.set_defaults(fn=cmd_list)

    p = sub.add_parser("cancel", help="ask a run's driver to cancel it")
    p.add_argument("run_id")
    p.add_argument("--reason", default="cancelled by user")
    store_args(p)
    p.set_defaults(fn=cmd_cancel)

    p = sub.add_parser("demo", help="generate a SQLite source and extract it to Parquet on "
                       "local Ray (the main job, end to end)")
    p.add_argument("--rows", type=int, default=5_000_000,
                   help="rows in the generated source (default 5,000,000; cached)")
    p.add_argument("--output", default="demo-output", help="output folder (./demo-output)")
    p.add_argument("--store", help="store URL (default ./.connector-runtime)")
    p.add_argument("--target-rows", type=int, help="rows per partition (default rows/20)")
    p.add_argument("--max-parallel", type=int, default=0,
                   help="partitions extracted at once (default: as many as CPUs allow)")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("gc", help="delete RETAINED (and leftover TRANSIENT, and unreferenced "
                       "PERSISTENT) objects past retention; dry run unless --yes")
    p.add_argument("--older-than", required=True, metavar="AGE",
                   help="retention, e.g. 30d, 12h, 2w (by the run's finished_at, else the "
                   "object's mtime)")
    p.add_argument("--yes", action="store_true", help="delete (default: only list)")
    store_args(p)
    p.set_defaults(fn=cmd_gc)
    _serve_parser(sub, store_args)
    _files_parser(sub, store_args)
    _trace_parser(sub, store_args)
    return parser


def _secrets_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--secrets-dir", metavar="DIR",
                   help="folder of secret files for get_secret (one file per secret; default "
                   "$CONNECTOR_RUNTIME_SECRETS_DIR); read on the workers, never stored")


def _files_parser(sub: Any, store_args: Any) -> None:
    p = sub.add_parser("files", help="a completed run's output files: store paths, sizes; "
                       "--download fetches them (hash-checked)")
    p.add_argument("run_id")
    p.add_argument("--download", metavar="DIR", help="fetch every output file into DIR")
    p.add_argument("--json", action="store_true")
    store_args(p)
    p.set_defaults(fn=cmd_files)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("app").setLevel(logging.INFO)  # what apps log (self.logger) is theirs
    try:
        return args.fn(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, (InvalidNameError, RecordKeyError)) \
            else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
