"""Run checkpoints: a thin wrapper over ``orbax.checkpoint.CheckpointManager`` that saves the whole train state
(params, optimizer state, step, RNG: any pytree of arrays) together with a small JSON of run-loop state (data
position, epoch, counters) as one checkpoint per step, asynchronously, every N steps, keeping the latest K.

Guarantees: orbax writes a step into ``<step>.orbax-checkpoint-tmp`` and renames it to ``<step>`` only once
every file is written, so a save interrupted by a crash or SIGKILL is never listed, never restored, and its
temporary directory is removed when the directory is next opened. A listed step that still cannot be read (a
file lost or truncated afterwards) is skipped with a warning and the previous one is restored. Restored arrays
get the shardings (and dtypes) of the state passed as the template, so a run resumes on the same mesh.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import jax
import orbax.checkpoint as ocp

from launch.config import CheckpointConfig

STATE_ITEM, RUN_STATE_ITEM = "state", "run_state"


class CheckpointError(RuntimeError):
    """A run directory holds checkpoints, but none of them can be restored onto the run's state."""


@dataclass(frozen=True)
class Restored:
    """A restored checkpoint: its ``step``, the train ``state`` and the JSON ``run_state`` dict."""

    step: int
    state: Any
    run_state: dict


def abstract_like(state: Any) -> Any:
    """The restore template of a state: shapes, dtypes and shardings of its arrays, no data."""
    def describe(leaf: Any) -> Any:
        if isinstance(leaf, jax.Array):
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
        return leaf
    return jax.tree.map(describe, state)


def _is_abandoned_read(error: Optional[BaseException], error_traceback: Any) -> bool:
    """Whether an exception nobody will see raised is a leftover of a refused orbax restore: one of its other
    array reads (raised in orbax, collected with its error unretrieved) or a read that finished after the
    restore's event loop had closed."""
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
        return True
    frames = traceback.extract_tb(error_traceback) if error_traceback else []
    return any(f"{os.sep}orbax{os.sep}checkpoint{os.sep}" in frame.filename for frame in frames)


def _keep_asyncio_record(record: logging.LogRecord) -> bool:
    """asyncio logs a collected future whose error was never retrieved; for an abandoned orbax read that is noise."""
    if "exception was never retrieved" in record.getMessage() and record.exc_info:
        return not _is_abandoned_read(record.exc_info[1], record.exc_info[2])
    return True


def quiet_abandoned_reads() -> None:
    """Call before an orbax restore that may be refused: orbax does not cancel a refused restore's other array
    reads, and as they end (within milliseconds, at exit, or when collected) Python prints each as an unraisable
    exception or asyncio logs it as an error never retrieved: tracebacks around the one sentence the user needs.
    This installs, once per process, an unraisable hook and an asyncio log filter that drop exactly those and let
    everything else through. Installed before the restore, not after it fails: the first late reads race the
    error's propagation (under load they won, and printed)."""
    asyncio_logger = logging.getLogger("asyncio")
    if _keep_asyncio_record not in asyncio_logger.filters:
        asyncio_logger.addFilter(_keep_asyncio_record)
    previous = sys.unraisablehook
    if getattr(previous, "_memgen_filters_reads", False):
        return

    def hook(unraisable: Any) -> None:
        if not _is_abandoned_read(unraisable.exc_value, unraisable.exc_traceback):
            previous(unraisable)

    hook._memgen_filters_reads = True
    sys.unraisablehook = hook
    # collect the abandoned read coroutines while the hook is still installed (interpreter shutdown goes back to
    # the default hook)
    atexit.register(gc.collect)


def refused_restore(error: Exception) -> str:
    """An orbax restore's error in one line: its type and the first line of its message, without the pointer to
    TensorStore's details that follows the first sentence of orbax's read errors."""
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text.split(' See full TensorStore details')[0]}"


class CheckpointManager:
    """Checkpoints of one run in ``directory`` (created if missing).

    ``every_steps``: :meth:`save` writes only at multiples of it unless ``force=True`` (use force for the final
    step); ``keep``: how many of the latest checkpoints stay on disk; ``async_save``: write in the background
    (:meth:`wait` or :meth:`close` blocks until written). Use it as a context manager so the last save finishes.
    """

    def __init__(self, directory: str | os.PathLike, *, every_steps: int = 100, keep: int = 3,
                 async_save: bool = True):
        CheckpointConfig(every_steps=every_steps, keep=keep, async_save=async_save)  # its check of the counts
        self.directory = Path(directory).absolute()
        self.every_steps = every_steps
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=1, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=(STATE_ITEM, RUN_STATE_ITEM))

    def steps(self) -> list[int]:
        """The completely written checkpoints' steps, ascending."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, run_state: Optional[Mapping[str, Any]] = None, *,
             force: bool = False) -> bool:
        """Start saving ``state`` and ``run_state`` (JSON-serialisable) as ``step``; returns whether a save was
        started (False when ``step`` is not a multiple of ``every_steps`` and not forced, or already saved).
        The arrays are copied before this returns, so the caller may donate ``state`` to the next step."""
        step = int(step)
        # The interval is decided here, not by orbax, whose policy also saves the first step it sees.
        if step in self._manager.all_steps() or not (force or step % self.every_steps == 0):
            return False
        return self._manager.save(step, args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardSave(state),
            RUN_STATE_ITEM: ocp.args.JsonSave(dict(run_state or {})),
        }), force=True)

    def restore(self, step: int, like_state: Any) -> Restored:
        """Restore ``step`` onto the shapes, dtypes and shardings of ``like_state`` (a state or abstract one)."""
        quiet_abandoned_reads()
        restored = self._manager.restore(int(step), args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardRestore(abstract_like(like_state)),
            RUN_STATE_ITEM: ocp.args.JsonRestore(),
        }))
        return Restored(step=int(step), state=restored[STATE_ITEM], run_state=dict(restored[RUN_STATE_ITEM] or {}))

    def restore_latest(self, like_state: Any) -> Optional[Restored]:
        """The newest checkpoint that can be read, or None when the directory holds none. Unreadable ones are
        skipped with a warning that names them; if checkpoints exist but none can be restored (typically the
        run's config changed, e.g. what is frozen, so the state no longer matches) it raises CheckpointError
        rather than silently starting over."""
        steps = self.steps()
        reason = ""
        for index in reversed(range(len(steps))):
            try:
                return self.restore(steps[index], like_state)
            except Exception as error:  # orbax raises many types for damaged files; any of them means skip
                reason = refused_restore(error)
                then = f"falling back to step {steps[index - 1]}" if index else "no earlier checkpoint is left"
                # one line on stderr (a logging.warning beside it printed the same line twice)
                warnings.warn(f"checkpoint step {steps[index]} in {self.directory} cannot be restored ({reason}); "
                              f"{then}", RuntimeWarning, stacklevel=2)
        if steps:
            raise CheckpointError(
                f"none of the checkpoints {steps} in {self.directory} can be restored onto this run's state (last "
                f"error: {reason}); if the config changed since they were written, use a new run directory")
        return None

    def wait(self) -> None:
        """Block until the background save (if any) is written."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "CheckpointManager":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
