"""Which apps `resume` may run: only those the operator names, never what a record says.

A run record says which app started it (`app`, and `app_path`, the `module:Class` it was
started with). Anyone who can write the store can write a record, so importing its `app_path`
would run their code, and running any app on their input is theirs to choose. `resume` and
`resume --all` therefore run only apps named on the command line (`--app module:Class`,
repeatable) or in an apps file, and a record is resumed only by the named app whose name it
is stored under (`runs/{app}/...`): that app's code, imported from the operator's target,
never the record's `app_path`.

The apps file: `--apps-file FILE`, else `$CONNECTOR_RUNTIME_APPS_FILE`. UTF-8 text, one
`module:Class` a line; blank lines and `#` comments are ignored. It must be the operator's own
(`storage.operator_file`): a regular file owned by this user or root, not writable by group or
others, reached through folders and links no other user can change; anything else is refused
(exit 2), since whoever can change it chooses what `resume` imports.

Rejected designs:
- Falling back to the record's `app_path` when no app is named: exactly the hole.
- Matching a record by its `app_path` string: a run started as `pkg.my_app:App` is the same
  app as `my_app:App` (run from another folder); what decides which code runs is the
  operator's list. The `app_path` only breaks a tie between two named apps of the same name.
- A TOML or JSON config: one name a line is all it holds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from application_sdk.app import App
from storage import RunRecord, StoreError, operator_file

from .._errors import UsageError

__all__ = ["APPS_FILE_VAR", "AllowedApps", "allowed_apps"]

APPS_FILE_VAR = "CONNECTOR_RUNTIME_APPS_FILE"


@dataclass(frozen=True)
class AllowedApps:
    """The apps a `resume` may run, by app name."""

    by_name: dict[str, list[tuple[str, type[App]]]]
    """App name -> the (target, class) pairs the operator named with that name."""
    source: str
    """Where they were named, for messages."""

    def match(self, record: RunRecord) -> tuple[type[App] | None, str]:
        """The operator's class that resumes `record`, or None and why not."""
        entries = self.by_name.get(record.app, [])
        if len(entries) == 1:
            return entries[0][1], ""
        if not entries:
            return None, (f"its app {record.app} is not among the apps this resume may run "
                          f"({self.source})")
        exact = [cls for target, cls in entries if target == record.app_path]
        if len(exact) == 1:
            return exact[0], ""
        targets = ", ".join(target for target, _ in entries)
        return None, (f"several apps named {record.app} may run ({targets}) and its recorded "
                      f"app_path {record.app_path!r} picks none of them: name one")


def allowed_apps(targets: list[str], apps_file: str | None,
                 load: Callable[[str], type[App]]) -> AllowedApps | None:
    """The apps named by `targets` (`--app`) and the apps file (`apps_file`, else
    `$CONNECTOR_RUNTIME_APPS_FILE`), each imported with `load`; None when none is named.
    UsageError for an apps file that is unsafe or malformed (naming its line)."""
    named = [(target, "--app") for target in targets]
    apps_file = apps_file or os.environ.get(APPS_FILE_VAR) or None
    if apps_file:
        named += _read_apps_file(apps_file)
    if not named:
        return None
    by_name: dict[str, list[tuple[str, type[App]]]] = {}
    for target, _where in named:
        cls = load(target)
        entries = by_name.setdefault(cls.name, [])
        if all(existing is not cls for _, existing in entries):
            entries.append((target, cls))
    sources = (["--app " + ", ".join(targets)] if targets else []) + \
        ([f"apps file {apps_file}"] if apps_file else [])
    return AllowedApps(by_name, "; ".join(sources))


def _read_apps_file(path: str) -> list[tuple[str, str]]:
    try:
        data = operator_file(path, "apps file", "--apps-file")
    except StoreError as exc:
        raise UsageError(str(exc)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"apps file {path!r} is not UTF-8 text: {exc}") from None
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if entry.count(":") != 1 or any(c.isspace() for c in entry):
            raise UsageError(f"apps file {path!r} line {number}: {entry!r} is not "
                             "module:Class (one app a line, # for comments)")
        out.append((entry, f"{path}:{number}"))
    return out

