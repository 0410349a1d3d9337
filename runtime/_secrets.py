"""Secrets for `AppContext.get_secret(name)`: a file in the run's secret folder, else the
environment of the process that asks.

The folder is given per run (`run_app(..., secrets_dir=)`, `--secrets-dir`, or
$CONNECTOR_RUNTIME_SECRETS_DIR in the driver's environment) and travels to the workers with
the run's context - a path, never a value. It is the shape of a Kubernetes secret volume or a
Docker secret mount: one file per secret, named by the secret (`pg-password`), whose content
(one trailing newline dropped) is the value. Symlinks inside the folder are followed (a
Kubernetes volume is made of them) as long as the file they name is inside the folder.

Never stored, never logged: a value is read when asked for and kept nowhere; errors name the
secret and where it was looked for; the value is redacted from the run's logger in the process
that read it (`application_sdk._appcontext.note_secret`). A secret name is one plain name (no
`/`, no `..`, no leading dot): it cannot reach a file outside the folder.

Rejected: a secret store service (Dapr, Vault) behind an interface - nothing here could run
one, and a file folder is what they all can render into; reading secrets in the driver and
passing values to tasks - the values would travel in every attempt's arguments.
"""

from __future__ import annotations

import os
import re

from application_sdk._appcontext import note_secret
from application_sdk.errors import AppContextError

__all__ = ["SECRETS_VAR", "read_secret"]

SECRETS_VAR = "CONNECTOR_RUNTIME_SECRETS_DIR"

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}$")


def read_secret(name: str, folder: str | None) -> str | None:
    """The secret `name` (file in `folder`, else environment variable), or None."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise AppContextError(
            f"secret name {name!r}: use one plain name (letters, digits, '_', '.', '-'), the "
            "name of a file in the secret folder or of an environment variable")
    if folder:
        value = _from_folder(name, folder)
        if value is not None:
            note_secret(value)
            return value
    value = os.environ.get(name)
    if value is not None:
        note_secret(value)
    return value


def _from_folder(name: str, folder: str) -> str | None:
    root = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(root, name))
    if not path.startswith(root + os.sep) or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        value = fh.read()
    return value[:-1] if value.endswith("\n") else value
