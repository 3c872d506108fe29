"""Progress of the long commands, on stderr: a rich progress bar (or a spinner) on a terminal, and plain lines
anywhere else (a log file, a pipe, CI), where a bar draws nothing until it ends (or, with FORCE_COLOR, a frame
after another).

    with Progress("probe", console, quiet=quiet) as update:
        update("collect", done=0, total=22)
        ...
        update("step 4096", done=3, total=22)

A plain line says what runs, how far it is, the time elapsed and, once something is done, an estimate of the time
left (from the pace since the first update):

    probe: step 4096 · 3/22 (14%) · 0:01:05 elapsed, ~0:06:52 left

Lines come at most one every WORKBENCH_PROGRESS_SECONDS seconds (default 5), besides the first update's and a
last one when the block ends, so a command that updates often does not flood its log. A command without a count
(report, demo) passes a description only: a spinner on a terminal, lines with the elapsed time elsewhere.
`stats`, a format string over the keyword arguments of an update (train: env-steps/s, return, success), adds
them to the bar and to the lines.
"""

from __future__ import annotations

import os
from time import monotonic

from rich.console import Console

from workbench.common.errors import ConfigError

ENV_SECONDS = "WORKBENCH_PROGRESS_SECONDS"
DEFAULT_SECONDS = 5.0


class Progress:
    """A context manager; entering it returns the update function `update(description, done, total, **stats)`
    (every argument optional: what is not given keeps its last value)."""

    def __init__(self, label: str, console: Console, *, quiet: bool = False, spinner: bool = False,
                 stats: str | None = None):  # fmt: skip
        self.label, self.console, self.quiet, self.spinner, self.stats = label, console, quiet, spinner, stats
        self.description, self.done, self.total, self.fields = "", None, None, ""
        self.every = _seconds()
        self.live = None

    def __enter__(self):
        self.start = monotonic()
        self.first = None  # (time, done) of the first update with a count: the pace is measured from there
        self.printed = None  # when the last plain line was printed
        if not self.quiet and _terminal(self.console):
            self.live = self._status() if self.spinner else self._bar()
            self.live.__enter__()
        return self.update

    def __exit__(self, exc_type, exc, tb):
        if self.live is not None:
            return self.live.__exit__(exc_type, exc, tb)
        if not self.quiet:
            where = f" at {self._count()}" if self.total else ""
            end = "done in" if exc_type is None else f"stopped ({exc_type.__name__}){where} after"
            self._line(f"{self.label}: {end} {_clock(monotonic() - self.start)}")
        return None

    def update(self, description: str | None = None, done: float | None = None, total: float | None = None,
               **stats) -> None:  # fmt: skip
        if description is not None:
            self.description = description
        if total is not None:
            self.total = total
        if done is not None:
            self.done = done
            if self.first is None:
                self.first = (monotonic(), done)
        if stats and self.stats:
            self.fields = self.stats.format(**stats)
        if self.quiet:
            return
        if self.live is not None:
            self._draw()
        elif self.printed is None or monotonic() - self.printed >= self.every:
            self._line(self.plain())

    def plain(self) -> str:
        """The current state as one line (what, how far, elapsed, time left)."""
        now = monotonic()
        parts = [part for part in (self.description, self._count(), self.fields) if part]
        timing = f"{_clock(now - self.start)} elapsed"
        left = self._left(now)
        if left is not None:
            timing += f", ~{_clock(left)} left"
        return f"{self.label}: {' · '.join([*parts, timing])}"

    # ------------------------------------------------------------------------------------------ internals
    def _count(self) -> str:
        if self.done is None:
            return ""
        if not self.total:
            return f"{self.done:,}"
        return f"{self.done:,}/{self.total:,} ({self.done / self.total:.0%})"

    def _left(self, now: float) -> float | None:
        if self.first is None or not self.total or self.done is None:
            return None
        started, done0 = self.first
        if self.done <= done0 or now <= started:
            return None
        return (self.total - self.done) * (now - started) / (self.done - done0)

    def _line(self, text: str) -> None:
        self.printed = monotonic()
        self.console.print(text, markup=False, highlight=False)

    def _bar(self):
        from rich import progress as bars

        columns = [bars.TextColumn(f"[bold]{self.label}"), bars.BarColumn(), bars.MofNCompleteColumn(),
                   bars.TextColumn("{task.description}"), bars.TextColumn("{task.fields[stats]}"),
                   bars.TimeElapsedColumn(), bars.TimeRemainingColumn()]  # fmt: skip
        bar = bars.Progress(*columns, console=self.console)
        self.task = bar.add_task("", total=None, stats="")
        return bar

    def _status(self):
        return self.console.status(self.label)

    def _draw(self) -> None:
        if self.spinner:
            self.live.update(f"{self.label}: {self.description}" if self.description else self.label)
        else:
            self.live.update(self.task, description=self.description, completed=self.done or 0, total=self.total,
                             stats=self.fields)  # fmt: skip


def _terminal(console: Console) -> bool:
    """Whether the console writes to a terminal: its file is a tty (FORCE_COLOR makes rich colour a log file, and
    would make it draw a bar there too, frame after frame)."""
    isatty = getattr(console.file, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except ValueError:  # a closed file
        return False


def _seconds() -> float:
    """The least time between two plain lines: WORKBENCH_PROGRESS_SECONDS, else DEFAULT_SECONDS."""
    text = os.environ.get(ENV_SECONDS, "")
    try:
        seconds = float(text) if text.strip() else DEFAULT_SECONDS
    except ValueError:
        raise ConfigError(f"{ENV_SECONDS}={text!r}: set it to a number of seconds, e.g. 30, or unset it.") from None
    return max(0.0, seconds)


def _clock(seconds: float) -> str:
    """h:mm:ss."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
