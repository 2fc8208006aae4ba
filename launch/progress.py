"""Progress of long jobs (rich): step/total, loss, tokens per second and the ETA. On an interactive terminal it is
a live bar; written to a pipe or a log file (nohup, a batch system) it is one plain line every `LINE_INTERVAL_S`
seconds and one at the end, so a log shows the run moving; in tests and CI it prints nothing, so output stays
clean."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Optional, TextIO

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

LINE_INTERVAL_S = 30.0


def display_mode(console: Optional[Console] = None) -> Optional[str]:
    """"bar" on a terminal, "lines" on a pipe or file, None under pytest or CI (nothing is shown)."""
    if os.environ.get("PYTEST_CURRENT_TEST") or os.environ.get("CI"):
        return None
    return "bar" if (console.is_terminal if console is not None else sys.stderr.isatty()) else "lines"


def should_show(console: Optional[Console] = None) -> bool:
    """Whether a live bar makes sense: a terminal, not under pytest, not CI."""
    return display_mode(console) == "bar"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressBar:
    """``with ProgressBar(total, initial=resumed_step) as bar: bar.update(step, loss=..., tokens=...)``.

    ``tokens`` is the number of tokens the step processed; the rate shown is tokens since the bar started
    (or resumed) over the wall time. ``enabled``: None decides with :func:`display_mode`, True draws the live bar,
    "lines" prints plain lines to ``stream`` (default stderr), False shows nothing. Pass a rich ``console`` to
    draw the bar somewhere else (e.g. a file, in a test)."""

    def __init__(self, total: int, *, description: str = "train", initial: int = 0,
                 enabled: Optional[bool | str] = None, console: Optional[Console] = None,
                 stream: Optional[TextIO] = None):
        from launch.metrics import is_primary_process

        mode = display_mode(console) if enabled is None else ("bar" if enabled is True else enabled or None)
        if not is_primary_process():  # a multi-host run shows one bar, process 0's
            mode = None
        self.enabled = mode is not None
        self._mode, self._total, self._initial, self._description = mode, total, initial, description
        self._stream = stream
        self._tokens = 0.0
        self._start = self._last_line = time.monotonic()
        self._fields: dict[str, str] = {"loss": "-", "rate": "-"}
        self._step = initial
        self._progress: Optional[Progress] = None
        if mode == "bar":
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} tok/s"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=console or Console(stderr=True), transient=False)
            self._task = self._progress.add_task(description, total=total, completed=initial, **self._fields)

    def update(self, step: int, *, loss: Optional[float] = None, tokens: Optional[float] = None,
               **_: Any) -> None:
        """Show ``step`` steps done (absolute, not an increment) with the latest loss and token count."""
        if not self.enabled:
            return
        now = time.monotonic()
        if loss is not None:
            self._fields["loss"] = f"{float(loss):.4f}"
        if tokens is not None:
            self._tokens += float(tokens)
            self._fields["rate"] = f"{self._tokens / max(now - self._start, 1e-9):,.0f}"
        self._step = step
        if self._progress is not None:
            self._progress.update(self._task, completed=step, **self._fields)
        elif now - self._last_line >= LINE_INTERVAL_S:
            self._print_line(now)

    def _print_line(self, now: float) -> None:
        self._last_line = now
        elapsed, done = now - self._start, self._step - self._initial
        eta = _duration(elapsed / done * (self._total - self._step)) if done > 0 else "-"
        print(f"{self._description} {self._step}/{self._total} loss {self._fields['loss']} "
              f"{self._fields['rate']} tok/s elapsed {_duration(elapsed)} ETA {eta}",
              file=self._stream or sys.stderr, flush=True)

    def __enter__(self) -> "ProgressBar":
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
        elif self._mode == "lines" and self._step > self._initial:
            self._print_line(time.monotonic())
