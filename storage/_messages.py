"""What messages may show: store URLs without user-info, text without secrets, and strings read
from the store with their control characters escaped (`printable`).

Credentials never go in a store URL (they come from the environment, the AWS configuration or
`--store-option`): `open_store` refuses a URL that may carry user-info, and every message shows
a URL through `_shown`. A secret may hold `@`, `:`, `/` or `::` (AWS secret keys have `/`), and
then a URL parser no longer finds the user-info where RFC 3986 puts it: `urlsplit` reads
`s3://KEY:se/cret@bucket` as host `KEY:se` and path `/cret@bucket`. So both decisions work on
the raw string: any `@` outside a local path counts, and everything up to the last `@` goes.

Rejected: trusting `urlsplit(url).username/password` (the case above passed, and the old
message's `url.split("@", 1)` showed the part of a secret after its first `@`).
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["_scrub", "_scrubbed", "_shown", "_userinfo", "printable"]


def _shown(url: str) -> str:
    """`url` for messages, without any user-info whatever its shape: everything from its first
    `://` (or its start) up to its last `@` is masked, unless the only `@`s are in a local path
    (`/data/x@y`, `file:///data/x@y`). A secret may hold `@`, `:`, `/` or `::`, so no part of
    it is ever kept, whatever a URL parser would make of it."""
    if not _userinfo(url):
        return url
    at = url.rfind("@")
    start = url.find("://")
    start = start + 3 if 0 <= start < at else 0
    return f"{url[:start]}***{url[at:]}"


def _userinfo_region(part: str) -> tuple[int, int]:
    """Where in one part (of a `::` chain) of a URL user-info could be: (start, end)."""
    scheme, sep, rest = part.partition("://")
    if not sep:
        if part.startswith(("/", ".", "~")):
            return 0, 0  # a local path: no user-info, '@' is a character of a name
        return 0, len(part)
    start = len(scheme) + len(sep)
    if scheme.lower() == "file" and rest.startswith("/"):
        return start, start  # file:///path: no host, so no user-info
    return start, len(part)


def _userinfo(url: str) -> bool:
    """True when `url` may carry user-info. Outside a local path (or a file URL's path), any
    `@` counts: a secret with a `/` in it (AWS secret keys have them) moves the `@` out of
    what URL parsers call the host, so `s3://KEY:se/cret@bucket` has no user-info for
    `urlsplit`, and it would have opened a bucket named after the key."""
    for part in url.split("::"):
        start, end = _userinfo_region(part)
        if "@" in part[start:end]:
            return True
    return False


def _scrub(text: str) -> str:
    for var in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"):
        secret = os.environ.get(var)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _scrubbed(text: str, options: dict[str, Any]) -> str:
    """`text` without the AWS secrets of the environment or any option value of the store."""
    text = _scrub(text)
    values = [v for v in options.values() if isinstance(v, str) and len(v) >= 4]
    values += [v for v in (options.get("client_kwargs") or {}).values()
               if isinstance(v, str) and len(v) >= 4]
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, "***")
    return text


def printable(text: object) -> str:
    """`text` safe to print on a terminal: characters that are not printable (newlines,
    escape sequences, bidirectional overrides) are shown as Python escapes (`\\n`, `\\x1b`,
    `\\u202e`). Names and messages read from the store go through this before they are shown."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
