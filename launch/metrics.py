"""Run metrics: one JSON object per line in ``DIR/metrics.jsonl`` (what reports and plots read), mirrored as
scalars to TensorBoard (tensorboardX) in ``DIR/tensorboard``.

Every record has a ``step`` key; records are flushed as they are written. Resume safety: a run restored from the
checkpoint of step N opens the writer with ``resume_step=N``; records with step > N (written after that
checkpoint by the interrupted run) and a torn last line are dropped, and TensorBoard is told to purge events
after N, so a resumed run's files equal an uninterrupted run's. Non-finite floats are written as JSON ``null``
(strict JSON has no NaN), and are not sent to TensorBoard.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

METRICS_FILENAME = "metrics.jsonl"


def _plain(value: Any) -> Any:
    """A JSON-ready Python value of a metric (numpy / JAX scalars and arrays become numbers and lists)."""
    if hasattr(value, "__array__") and not isinstance(value, (str, bytes)):
        value = np.asarray(value)
        value = value.item() if value.ndim == 0 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    return value


def read_metrics(directory: str | os.PathLike) -> list[dict]:
    """All complete records of ``DIR/metrics.jsonl`` (a torn last line is ignored)."""
    path = Path(directory) / METRICS_FILENAME
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # only the last line can be torn (a crash mid-write); nothing valid follows it
    return records


def is_primary_process() -> bool:
    """Whether this process writes a run's files: process 0 of a multi-host run (every process of a multi-host
    run computes the same global metrics, and the run directory is shared), the only process otherwise."""
    import jax

    return jax.process_index() == 0


class MetricsWriter:
    """Appends metric records for one run directory. ``resume_step``: None for a fresh run (an existing file is
    started over), or the restored checkpoint's step (records after it are dropped). ``tensorboard``: mirror
    scalars to TensorBoard. Use as a context manager, or call :meth:`close`. In a multi-host run only process 0
    writes (`is_primary_process`); on the others `write` only returns the record."""

    def __init__(self, directory: str | os.PathLike, *, resume_step: Optional[int] = None,
                 tensorboard: bool = True):
        self.directory = Path(directory)
        self.path = self.directory / METRICS_FILENAME
        self._file = self._tensorboard = None
        if not is_primary_process():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        kept = [] if resume_step is None else [r for r in read_metrics(self.directory)
                                               if r.get("step", -1) <= resume_step]
        temporary = self.path.with_suffix(".jsonl.tmp")
        temporary.write_text("".join(json.dumps(record) + "\n" for record in kept))
        os.replace(temporary, self.path)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter  # imported only when used: it is slow to import
            self._tensorboard = SummaryWriter(
                str(self.directory / "tensorboard"),
                purge_step=None if resume_step is None else resume_step + 1)

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict:
        """Append ``{"step": step, **metrics}`` (flushed) and return the record as written."""
        record = {"step": int(step), **{str(key): _plain(value) for key, value in metrics.items()}}
        if self._file is None:
            return record
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tensorboard is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, numbers.Real) and not isinstance(value, bool):
                    self._tensorboard.add_scalar(key, value, int(step))
        return record

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
