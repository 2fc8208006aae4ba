"""A progress bar for long jobs (rich): step/total, loss, tokens per second and the ETA. It draws only on an
interactive terminal; in tests, CI logs and pipes it does nothing, so output stays clean."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Optional

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


def should_show(console: Optional[Console] = None) -> bool:
    """Whether a live bar makes sense: a terminal, not under pytest, not CI."""
    if os.environ.get("PYTEST_CURRENT_TEST") or os.environ.get("CI"):
        return False
    return console.is_terminal if console is not None else sys.stderr.isatty()


class ProgressBar:
    """``with ProgressBar(total, initial=resumed_step) as bar: bar.update(step, loss=..., tokens=...)``.

    ``tokens`` is the number of tokens the step processed; the rate shown is tokens since the bar started
    (or resumed) over the wall time. ``enabled`` None decides with :func:`should_show`; pass a rich ``console``
    to draw somewhere else (e.g. a file, in a test)."""

    def __init__(self, total: int, *, description: str = "train", initial: int = 0,
                 enabled: Optional[bool] = None, console: Optional[Console] = None):
        self.enabled = should_show(console) if enabled is None else enabled
        self._tokens = 0.0
        self._start = time.monotonic()
        self._progress: Optional[Progress] = None
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} tok/s"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=console or Console(stderr=True), transient=False)
            self._task = self._progress.add_task(description, total=total, completed=initial, loss="-", rate="-")

    def update(self, step: int, *, loss: Optional[float] = None, tokens: Optional[float] = None,
               **_: Any) -> None:
        """Show ``step`` steps done (absolute, not an increment) with the latest loss and token count."""
        if self._progress is None:
            return
        fields: dict[str, Any] = {}
        if loss is not None:
            fields["loss"] = f"{float(loss):.4f}"
        if tokens is not None:
            self._tokens += float(tokens)
            elapsed = max(time.monotonic() - self._start, 1e-9)
            fields["rate"] = f"{self._tokens / elapsed:,.0f}"
        self._progress.update(self._task, completed=step, **fields)

    def __enter__(self) -> "ProgressBar":
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
