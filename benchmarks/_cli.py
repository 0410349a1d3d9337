"""`python -m benchmarks`: run the cases, print the table, write RESULTS.md."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import sys
import time
from pathlib import Path

from . import _dbos
from ._cases import CASES, OPT_IN, SIZES, Context
from ._env import (
    REPO,
    Environment,
    code_state,
    machine_info,
    moto_server,
    new_bucket,
    ray_for_benchmarks,
)
from ._env import work_dir as make_work_dir
from ._measure import Table, log
from ._report import render_markdown, render_text, summarize, targets, write_json

__all__ = ["main"]

HERE = Path(__file__).resolve().parent
METHOD = [
    "One Ray instance for the whole run (`ray.init(num_cpus=2)`, or the cluster at "
    "RAY_ADDRESS); raw Ray, the runtime and the probes all use it.",
    "The limit is raw Ray: a module-level `@ray.remote` no-op, `ray.get` of the list of refs "
    "for fan-out and `ray.get` of each ref in a loop for sequential; for pools, the same calls "
    "of a warm actor's no-op method (`raw Ray actor calls`, as many actors as the pool). The "
    "same remote functions awaited through asyncio, the way the runtime awaits its attempts, "
    "are an extra row (asyncio slows the limit itself).",
    "Each size runs every variant once per repetition, in an order rotated each repetition; "
    "figures are medians, ranges are min-max. Every variant is warmed up first (worker "
    "processes, function export, imports), untimed.",
    "The runtime runs whole runs through `runtime.run_app_async` with a fresh run id each "
    "time: on file:// (a local folder) and on S3 (a moto server over HTTP on 127.0.0.1, a new "
    "bucket; s3fs opened per run as `run_app(store='s3://...')` does).",
    "DBOS: DBOS Transact with its SQLite system database, in this process; its steps run in "
    "the driver process, not on Ray (DBOS has no scheduler of its own to dispatch them to). "
    "Same N async no-op steps, gathered or sequential, in one workflow.",
    "Other processes may share this machine (the load average at start is in the machine "
    "table); interleaving spreads their effect over all variants.",
]


def _sizes(values: list[str]) -> dict[str, list[int]]:
    """`--sizes 100,1000` (every task-count case) or `--sizes fanout=100,1000`."""
    out: dict[str, list[int]] = {}
    for value in values:
        case, _, numbers = value.rpartition("=")
        sizes = [int(x.replace("_", "")) for x in numbers.split(",") if x.strip()]
        if case:
            if case not in CASES:
                raise SystemExit(f"--sizes: unknown case {case!r}; cases: {', '.join(CASES)}")
            out[case] = sizes
        else:
            for name in CASES:
                if name not in ("sql", "startup", "files", "jobs"):  # rows and MB, not tasks
                    out.setdefault(name, sizes)
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmarks of connector-runtime against raw Ray (the limit) and DBOS.",
        epilog="default sizes: " + "; ".join(
            f"{case} {','.join(map(str, sizes[0]))} (quick {','.join(map(str, sizes[1]))})"
            for case, sizes in SIZES.items()),
    )
    p.add_argument("--quick", action="store_true",
                   help="smallest sizes, one repetition (the smoke test's mode)")
    p.add_argument("--cases", default=",".join(c for c in CASES if c not in OPT_IN),
                   help=f"comma-separated subset of: {', '.join(CASES)} "
                        f"(default: all but {', '.join(OPT_IN)})")
    p.add_argument("--sizes", action="append", default=[],
                   help="N list for every task-count case (100,1000) or for one "
                        "(fanout=100,1000); repeatable")
    p.add_argument("--repeat", type=int, default=None,
                   help="repetitions per size (default 5; 1 with --quick)")
    p.add_argument("--output", type=Path, default=None,
                   help="RESULTS.md path (default benchmarks/RESULTS.md; "
                        "benchmarks/RESULTS-quick.md with --quick)")
    p.add_argument("--s3-endpoint", default=os.environ.get("BENCH_S3_ENDPOINT"),
                   help="use this running S3 endpoint instead of starting a moto server")
    p.add_argument("--no-s3", action="store_true", help="skip the S3 variants")
    p.add_argument("--no-dbos", action="store_true", help="skip the DBOS variants")
    args = p.parse_args(argv)
    args.case_list = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in args.case_list if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}; cases: {', '.join(CASES)}")
    args.size_map = _sizes(args.sizes)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 5
    if args.output is None:
        args.output = HERE / ("RESULTS-quick.md" if args.quick else "RESULTS.md")
    return args


async def _run_cases(ctx: Context, names: list[str]) -> list[Table]:
    tables = []
    for name in names:
        log(f"== {name}: sizes {ctx.sizes_for(name)}, {ctx.repeat} repetition(s)")
        started = time.perf_counter()
        table = await CASES[name](ctx)
        table.seconds = time.perf_counter() - started
        tables.append(table)
    return tables


def _commands(argv: list[str] | None) -> list[str]:
    given = sys.argv[1:] if argv is None else argv
    return [
        "scripts/setup            # .venv with the test extra (includes dbos)",
        "env -u RAY_ADDRESS .venv/bin/python -m benchmarks " + shlex.join(given),
        "# options: --quick, --cases fanout,resume, --sizes fanout=100,1000, --repeat N, "
        "--output PATH, --s3-endpoint URL, --no-s3, --no-dbos",
    ]


def run(args: argparse.Namespace, argv: list[str] | None = None) -> list[Table]:
    machine = machine_info()
    code_at_start = code_state()
    with contextlib.ExitStack() as stack:
        endpoint = None
        if not args.no_s3:
            endpoint = stack.enter_context(moto_server(args.s3_endpoint))  # before ray.init
        address = stack.enter_context(ray_for_benchmarks(num_cpus=2))
        folder = stack.enter_context(make_work_dir())
        env = Environment(work_dir=folder, file_store=os.path.join(folder, "file-store"),
                          s3_endpoint=endpoint, ray_address=address)
        if endpoint:
            env.s3_store = f"s3://{new_bucket(endpoint)}/store"
        dbos = None
        if not args.no_dbos and _dbos.available() is None:
            dbos = _dbos.DbosBench(folder)
            stack.callback(dbos.close)
        ctx = Context(env=env, repeat=args.repeat, quick=args.quick, sizes=args.size_map,
                      dbos=dbos)
        tables = asyncio.run(_run_cases(ctx, args.case_list))
    goals = targets({t.key: t for t in tables})
    summary = summarize({t.key: t for t in tables})
    print(render_text(tables, goals, summary))
    machine["ray cluster"] = "this run's local Ray, num_cpus=2" if not os.environ.get(
        "RAY_ADDRESS") else f"RAY_ADDRESS={os.environ['RAY_ADDRESS']}"
    machine["load average at end"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    if code_state() != code_at_start:
        machine["WARNING"] = ("runtime/, storage/ or application_sdk/ changed while the "
                              "benchmark ran: later cases (and fresh worker processes) may have "
                              "run newer code than earlier ones; run it again")
        log(f"WARNING: {machine['WARNING']}")
    machine["benchmark wall time"] = f"{sum(t.seconds for t in tables) / 60:.1f} min"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render_markdown(tables, goals, machine, _commands(argv), METHOD,
                                           summary))
    write_json(args.output.with_suffix(".json"), tables, goals, machine)
    shown = args.output.relative_to(REPO) if args.output.is_relative_to(REPO) else args.output
    log(f"wrote {shown}")
    return tables


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    run(args, argv)
    return 0
