"""docs/api.md has one entry per public name, listing every module that exports it, and the
`@task` options and `run_task` arguments with their real defaults."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"
MODULES = ["application_sdk", "application_sdk.app", "application_sdk.contracts",
           "application_sdk.errors", "application_sdk.testing", "application_sdk.handler",
           "runtime", "storage.arrow"]


def exported() -> dict[str, set[str]]:
    where: dict[str, set[str]] = {}
    for name in MODULES:
        for public in importlib.import_module(name).__all__:
            where.setdefault(public, set()).add(name)
    return where


def entries() -> dict[str, tuple[set[str], str]]:
    """name -> (modules listed under its heading, the entry's text)."""
    text = DOC.read_text()
    found: dict[str, tuple[set[str], str]] = {}
    parts = re.split(r"^### `([^`]+)`\n", text, flags=re.M)
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        assert name not in found, f"docs/api.md has two entries for {name}"
        first = body.strip().splitlines()[0]
        found[name] = (set(re.findall(r"`([\w.]+)`", first)), body)
    return found


def test_every_public_name_has_one_entry_listing_its_modules():
    doc, code = entries(), exported()
    assert sorted(set(code) - set(doc)) == [], "names without an entry in docs/api.md"
    assert sorted(set(doc) - set(code)) == [], "entries for names nobody exports"
    wrong = {n: (sorted(doc[n][0]), sorted(mods)) for n, mods in code.items()
             if doc[n][0] != mods}
    assert wrong == {}, "entries listing the wrong modules: (listed, exported)"


def _table(body: str) -> dict[str, str]:
    rows = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 2 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[1].strip("`")
    return rows


def _shown(default: object) -> str:
    return "" if default is inspect.Parameter.empty else repr(default)


@pytest.mark.parametrize(("name", "fn", "skip"), [
    ("task", "application_sdk.app:task", {"fn"}),
    ("run_task", "application_sdk.testing:run_task_async", set()),
])
def test_every_argument_is_documented_with_its_default(name, fn, skip):
    module, attr = fn.split(":")
    params = inspect.signature(getattr(importlib.import_module(module), attr)).parameters
    table = _table(entries()[name][1])
    expected = {p: _shown(v.default) for p, v in params.items() if p not in skip}
    assert {k: table.get(k) for k in expected} == expected


def test_every_app_member_is_documented():
    from application_sdk.app import App

    body = entries()["App"][1]
    members = [m for m in dir(App) if not m.startswith("__") and
               (not m.startswith("_") or m in ("_app_name", "_app_version"))
               and m not in ("_tasks", "_entrypoints", "_default_input")]
    missing = [m for m in members if f"`{m}" not in body and f".{m}" not in body]
    assert missing == []
