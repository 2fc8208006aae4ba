"""The exact-resume check the RL run tests share (a run interrupted after one update and re-run on the same
directory ends with the params and metrics of an uninterrupted run), and the reader the launch tests compare
written policies with."""

from pathlib import Path

import jax
import numpy as np

from launch.metrics import read_metrics
from launch.rl_run import run_rl


def without_wall_times(records: list[dict]) -> list[dict]:
    """Metrics records less their wall-clock fields (``*_seconds``), the only ones a resume may change."""
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in records]


def assert_resume_is_exact(config, root) -> tuple[dict, list[dict]]:
    """Run ``config`` whole in ROOT/whole, and in ROOT/parts stopped after one update then re-run; assert the
    final params are bitwise equal and the metrics identical (wall times aside). Returns the whole run's summary
    and its metrics records (wall times stripped)."""
    whole = run_rl(config, root / "whole", show_progress=False)
    run_rl(config, root / "parts", stop_after=1, show_progress=False)
    resumed = run_rl(config, root / "parts", show_progress=False)
    for a, b in zip(jax.tree.leaves(whole["params"]), jax.tree.leaves(resumed["params"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    records = without_wall_times(read_metrics(root / "whole"))
    assert records == without_wall_times(read_metrics(root / "parts"))
    return whole, records


def saved_weights(directory) -> dict:
    """Every tensor of a policy directory's safetensors files (the model's and the value head's), keyed
    ``FILE:NAME``."""
    from safetensors.numpy import load_file

    return {f"{file.name}:{name}": array for file in sorted(Path(directory).glob("*.safetensors"))
            for name, array in load_file(file).items()}
