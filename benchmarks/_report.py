"""The results: a plain-text table on stdout, RESULTS.md, and the targets they are held to."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._measure import Table, fmt_ratio, fmt_s

__all__ = ["Target", "render_markdown", "render_text", "summarize", "targets", "write_json"]

FILE, S3, RAW, DBOS = "runtime file://", "runtime S3 (moto)", "raw Ray", "DBOS SQLite"
POOL, RAW_ACTOR = "runtime pool file://", "raw Ray actor calls"


@dataclass
class Target:
    what: str
    goal: str
    figure: str
    met: bool | None
    """None: not measured."""

    @property
    def status(self) -> str:
        return {True: "met", False: "NOT MET", None: "not measured"}[self.met]


def _fig(tables: dict[str, Table], key: str, name: str) -> Any:
    table = tables.get(key)
    return None if table is None else table.figures.get(name)


def _ratio_target(tables: dict[str, Table], case: str, n: int, variant: str, base: str,
                  limit: float, what: str) -> Target:
    a, b = _fig(tables, case, f"{variant}@{n}"), _fig(tables, case, f"{base}@{n}")
    if a is None or b is None:
        return Target(what, f"<= {limit}x", "-", None)
    ratio = a / b
    return Target(what, f"<= {limit}x", f"{fmt_ratio(ratio)} ({fmt_s(a)} vs {fmt_s(b)})",
                  ratio <= limit)


def _below(tables: dict[str, Table], case: str, name: str, limit: float, what: str,
           fmt: Callable[[float], str] = fmt_s, goal: str = "") -> Target:
    value = _fig(tables, case, name)
    goal = goal or f"< {fmt(limit)}"
    if value is None:
        return Target(what, goal, "-", None)
    return Target(what, goal, fmt(value), value < limit)


def _dbos_over(tables: dict[str, Table], case: str, n: int, variant: str, least: float,
               what: str) -> Target:
    """DBOS time ÷ ours at N=n, at least `least`."""
    ours, theirs = _fig(tables, case, f"{variant}@{n}"), _fig(tables, case, f"{DBOS}@{n}")
    goal = f"DBOS ÷ ours >= {least}x"
    if ours is None or theirs is None:
        return Target(what, goal, "-", None)
    return Target(what, goal, f"{fmt_ratio(theirs / ours)} ({fmt_s(theirs)} vs {fmt_s(ours)})",
                  theirs / ours >= least)


def _vs_dbos(tables: dict[str, Table]) -> list[Target]:
    out = []
    for key, label in (("fanout", "fan-out"), ("sequential", "sequential"),
                       ("resume", "resume")):
        table = tables.get(key)
        if table is None:
            continue
        sizes = sorted({int(k.rsplit("@", 1)[1]) for k in table.figures if k.startswith(DBOS)})
        for variant in (FILE, S3, POOL):
            pairs = [(n, table.figures.get(f"{variant}@{n}"), table.figures[f"{DBOS}@{n}"])
                     for n in sizes if table.figures.get(f"{variant}@{n}") is not None]
            if not pairs:
                continue
            ahead = all(ours < theirs for _, ours, theirs in pairs)
            figure = ", ".join(f"N={n}: {fmt_ratio(theirs / ours)}" for n, ours, theirs in pairs)
            out.append(Target(f"{label}, {variant} ahead of DBOS", "DBOS ÷ ours > 1x at every N",
                              figure, ahead))
    return out


def targets(tables: dict[str, Table]) -> list[Target]:
    kb = 2048.0
    rows = [
        _ratio_target(tables, "fanout", 1000, FILE, RAW, 1.25,
                      "fan-out 1,000, file:// vs raw Ray"),
        _ratio_target(tables, "fanout", 5000, FILE, RAW, 1.25,
                      "fan-out 5,000, file:// vs raw Ray"),
        _ratio_target(tables, "sequential", 300, FILE, RAW, 1.15,
                      "sequential 300, file:// vs raw Ray"),
        _ratio_target(tables, "fanout", 1000, S3, FILE, 1.25, "fan-out 1,000, S3 vs file://"),
        _ratio_target(tables, "sequential", 300, S3, FILE, 1.25,
                      "sequential 300, S3 vs file://"),
        _ratio_target(tables, "fanout", 1000, POOL, RAW, 0.6,
                      "fan-out 1,000 on a pool vs raw Ray"),
        _ratio_target(tables, "fanout", 1000, POOL, RAW_ACTOR, 1.2,
                      "fan-out 1,000 on a pool vs raw actor calls"),
        _ratio_target(tables, "sequential", 300, POOL, RAW, 0.7,
                      "sequential 300 on a pool vs raw Ray"),
        _dbos_over(tables, "sequential", 300, POOL, 1.2, "sequential 300 on a pool vs DBOS"),
        _below(tables, "resume", f"{FILE}@2000", 1.0, "resume 2,000 recorded, file://"),
        _below(tables, "resume", f"{FILE}@5000", 1.0, "resume 5,000 recorded, file://"),
        _below(tables, "resume", f"{S3}@5000", 3.0, "resume 5,000 recorded, S3"),
        _below(tables, "memory", "runtime resume (replay N)@5000", kb,
               "driver memory per recorded task (resume of 5,000, peak)",
               fmt=lambda v: f"{v:,.0f} B", goal="< 2 KB"),
        _below(tables, "memory", "runtime resume over run() alone@5000", kb,
               "driver memory per recorded task, over the app's own run() (resume of 5,000)",
               fmt=lambda v: f"{v:,.0f} B", goal="< 2 KB"),
        _below(tables, "memory", "runtime sequential@5000", kb,
               "driver memory per task (sequential run of 5,000, peak)",
               fmt=lambda v: f"{v:,.0f} B", goal="< 2 KB"),
        _ratio_target(tables, "heartbeat", 1000, "auto_heartbeat_seconds=1", "no heartbeat", 1.1,
                      "heartbeats on a 1,000-task fan-out"),
    ]
    guards = tables.get("guards")
    switch = guards.figures.get("switch") if guards else None
    if switch:
        rows.append(_ratio_target(tables, "guards", 300, f"{switch}=1", f"{switch}=0", 1.05,
                                  "determinism guards, 300 sequential tasks"))
    else:
        rows.append(Target("determinism guards, 300 sequential tasks", "<= 1.05x",
                           "N/A (no guards switch)" if guards else "-", None))
    return rows + _vs_dbos(tables)


def summarize(tables: dict[str, Table]) -> list[str]:
    """The figures the closing note asks for, in sentences."""
    out = []
    for key, label in (("fanout", "Fan-out"), ("sequential", "Sequential")):
        t = tables.get(key)
        if t is None:
            continue
        sizes = sorted({int(k.rsplit("@", 1)[1]) for k in t.figures if k.startswith(RAW + "@")})
        parts = []
        for n in sizes:
            raw = t.figures.get(f"{RAW}@{n}")
            bits = []
            for variant, short in ((FILE, "file://"), (S3, "S3"), (POOL, "pool")):
                v = t.figures.get(f"{variant}@{n}")
                if v is not None and raw:
                    bits.append(f"{short} {(v - raw) / n * 1000:+.2f} ms/task "
                                f"({v / raw:.2f}x)")
            dbos = t.figures.get(f"{DBOS}@{n}")
            if dbos is not None and raw:
                bits.append(f"DBOS {(dbos - raw) / n * 1000:+.2f} ms/task ({dbos / raw:.2f}x)")
            if bits:
                parts.append(f"N={n}: " + ", ".join(bits))
        if parts:
            out.append(f"{label}, overhead over raw Ray: " + "; ".join(parts) + ".")
    t = tables.get("resume")
    if t is not None:
        sizes = sorted({int(k.rsplit("@", 1)[1]) for k in t.figures if "@" in k})
        parts = []
        for n in sizes:
            bits = [f"{short} {fmt_s(t.figures[f'{v}@{n}'])}"
                    for v, short in ((FILE, "file://"), (S3, "S3"), (DBOS, "DBOS"))
                    if t.figures.get(f"{v}@{n}") is not None]
            parts.append(f"N={n}: " + ", ".join(bits))
        if parts:
            out.append("Resume of N recorded tasks: " + "; ".join(parts) + ".")
    return out


# -- rendering --------------------------------------------------------------------------------


def _text_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def render_text(tables: list[Table], goals: list[Target], summary: list[str]) -> str:
    parts = []
    for t in tables:
        parts.append(f"\n{t.title}  [{t.seconds:.0f} s]")
        parts.append(_text_table(t.headers, t.rows) if t.rows else "  (no figures)")
        parts += [f"  * {n}" for n in t.notes if n.startswith(("N/A", "not available"))
                  or "not measured" in n]
    parts.append("\nSummary")
    parts += [f"  {line}" for line in summary]
    parts.append("\nTargets")
    parts.append(_text_table(["target", "goal", "figure", "status"],
                             [[g.what, g.goal, g.figure, g.status] for g in goals]))
    return "\n".join(parts)


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def render_markdown(
    tables: list[Table], goals: list[Target], machine: dict[str, str], commands: list[str],
    method: list[str], summary: list[str],
) -> str:
    md = ["# Benchmark results", "",
          "Written by `python -m benchmarks` (benchmarks/__main__.py); do not edit by hand, "
          "run it again.", ""]
    md += ["## Machine and versions", "", _md_table(["", ""], [[k, v] for k, v in machine.items()]),
           ""]
    md += ["## Commands", "", "```", *commands, "```", ""]
    md += ["## Method", "", *[f"- {m}" for m in method], ""]
    md += ["## Summary", "", *[f"- {line}" for line in summary], ""]
    md += ["## Targets", "", _md_table(["target", "goal", "figure", "status"],
                                        [[g.what, g.goal, g.figure, g.status] for g in goals]), ""]
    for t in tables:
        md += [f"## {t.title}", ""]
        md += [_md_table(t.headers, t.rows) if t.rows else "_No figures._", ""]
        md += [f"- {n}" for n in t.notes]
        md += [f"- Case wall time: {t.seconds:.0f} s.", ""]
    return "\n".join(md).rstrip() + "\n"


def write_json(path: Path, tables: list[Table], goals: list[Target],
               machine: dict[str, str]) -> None:
    data = {
        "machine": machine,
        "cases": {t.key: {"title": t.title, "figures": t.figures, "notes": t.notes}
                  for t in tables},
        "targets": [g.__dict__ | {"status": g.status} for g in goals],
    }
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
