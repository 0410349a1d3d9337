"""Live progress of a run on stderr: a `rich` line in a terminal, log lines otherwise.

The driver calls `ProgressDisplay.update(counters)` every 0.5 s with its task counters
(`done`, `replayed`, `running`, `retrying`, `failed`, `attempts`). What is shown:

* tasks done (and how many of those were replayed from the journal), running, retrying,
  failed; attempts; elapsed time; the rate of tasks completed per second in this process.

Rows and bytes are not shown: the runtime does not know which fields of an app's outputs
count rows (an Output is the app's own contract). Apps report them in their Output, and the
`demo` summary prints rows, files and rows/s from it. Rejected alternative: summing every
int field named like `rows`/`bytes` in task outputs would mean decoding every output in the
driver, against "no re-serialization of outputs", and would double count outputs that
aggregate other outputs.

Never stdout: stdout carries only the run's Output JSON. Not a terminal (``ray job logs``,
CI, pipes): one plain line when the counters change, at most every `LOG_INTERVAL` seconds,
plus a final line.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

__all__ = ["ProgressDisplay"]

LOG_INTERVAL = 5.0


def _fmt_elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def describe(counters: dict[str, Any], elapsed: float) -> str:
    """One line of text for the counters (shared by the terminal and the log forms)."""
    done = int(counters.get("done", 0))
    replayed = int(counters.get("replayed", 0))
    executed = max(0, done - replayed)
    rate = executed / elapsed if elapsed > 0 else 0.0
    parts = [f"tasks done {done}"]
    if replayed:
        parts[0] += f" ({replayed} replayed)"
    parts += [
        f"running {int(counters.get('running', 0))}",
        f"retrying {int(counters.get('retrying', 0))}",
        f"failed {int(counters.get('failed', 0))}",
        f"attempts {int(counters.get('attempts', 0))}",
        f"elapsed {_fmt_elapsed(elapsed)}",
        f"{rate:.1f} tasks/s",
    ]
    return " | ".join(parts)


class ProgressDisplay:
    """Context manager; pass `update` as the driver's `on_progress` callback."""

    def __init__(self, label: str, stream: IO[str] | None = None,
                 live: bool | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.started = time.monotonic()
        self.counters: dict[str, Any] = {}
        self._last_line = ""
        self._last_log = 0.0
        self._rich: Any = None

    def __enter__(self) -> ProgressDisplay:
        self.started = time.monotonic()
        if self.live:
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.stream, stderr=True)
            self._rich = Live(self._renderable(), console=console, transient=False,
                              refresh_per_second=4)
            self._rich.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.update(self._renderable())
            self._rich.stop()
            self._rich = None
        elif self.counters:
            self._log(force=True, unless_unchanged=True)

    def update(self, counters: dict[str, Any]) -> None:
        """The driver's on_progress callback; cheap, never raises."""
        try:
            self.counters = dict(counters)
            if self._rich is not None:
                self._rich.update(self._renderable())
            else:
                self._log()
        except Exception:  # a display problem must never fail the run
            pass

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _renderable(self) -> Any:
        from rich.text import Text

        c = self.counters
        text = Text()
        text.append(f"{self.label} ", style="bold")
        text.append(describe(c, self.elapsed()))
        if int(c.get("failed", 0)):
            text.stylize("red")
        elif int(c.get("retrying", 0)):
            text.stylize("yellow")
        return text

    def _log(self, force: bool = False, unless_unchanged: bool = False) -> None:
        now = time.monotonic()
        line = describe(self.counters, self.elapsed())
        core = line.rsplit(" | elapsed", 1)[0]
        if unless_unchanged and core == self._last_line:
            return  # the final counters are on the last line printed already
        if not force and (core == self._last_line or now - self._last_log < LOG_INTERVAL):
            return
        self._last_line, self._last_log = core, now
        stamp = time.strftime("%H:%M:%S")
        print(f"{stamp} {self.label}: {line}", file=self.stream, flush=True)
