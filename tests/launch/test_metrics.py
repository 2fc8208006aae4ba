"""Metrics JSONL (flushed, resume-safe), the TensorBoard mirror, and the progress bar's on/off behaviour."""

import io
import json

import numpy as np
from rich.console import Console

from launch.metrics import MetricsWriter, read_metrics
from launch.progress import ProgressBar, should_show


def run(directory, steps, *, resume_step=None, crash_after=None):
    with MetricsWriter(directory, resume_step=resume_step, tensorboard=False) as writer:
        for step in steps:
            writer.write(step, {"loss": np.float32(1.0 / (step + 1)), "tokens": step * 10, "phase": "train"})
            if crash_after is not None and step == crash_after:
                return


def test_records_are_flushed_json_lines(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        writer.write(1, {"loss": np.float32(0.5), "grad": np.array([1.0, 2.0]), "nan": float("nan"),
                         "skipped": False})
        # Flushed while the writer is still open: a crash now loses nothing.
        line = (tmp_path / "metrics.jsonl").read_text()
    assert json.loads(line) == {"step": 1, "loss": 0.5, "grad": [1.0, 2.0], "nan": None, "skipped": False}


def test_resumed_run_file_equals_uninterrupted_one(tmp_path):
    run(tmp_path / "clean", range(1, 11))
    # Interrupted after step 7 (a torn line too), resumed from the checkpoint of step 5.
    run(tmp_path / "resumed", range(1, 11), crash_after=7)
    with open(tmp_path / "resumed" / "metrics.jsonl", "a") as file:
        file.write('{"step": 8, "lo')
    run(tmp_path / "resumed", range(6, 11), resume_step=5)
    clean = (tmp_path / "clean" / "metrics.jsonl").read_text()
    assert (tmp_path / "resumed" / "metrics.jsonl").read_text() == clean
    assert [r["step"] for r in read_metrics(tmp_path / "clean")] == list(range(1, 11))
    # A fresh (not resumed) run in the same directory starts over.
    run(tmp_path / "clean", range(1, 3))
    assert [r["step"] for r in read_metrics(tmp_path / "clean")] == [1, 2]


def test_scalars_are_mirrored_to_tensorboard(tmp_path):
    from tests.launch.tensorboard_reader import scalar_events
    with MetricsWriter(tmp_path) as writer:
        writer.write(1, {"loss": 2.0, "lr": np.float32(1e-3), "note": "x", "nan": float("nan")})
        writer.write(2, {"loss": 1.5})
    events = scalar_events(tmp_path / "tensorboard")
    assert events["loss"] == [(1, 2.0), (2, 1.5)]
    assert np.isclose(events["lr"][0][1], 1e-3) and "note" not in events and "nan" not in events
    assert "<purge>" not in events
    with MetricsWriter(tmp_path, resume_step=1) as writer:  # TensorBoard drops events after step 1 on reading
        writer.write(2, {"loss": 1.25})
    assert scalar_events(tmp_path / "tensorboard")["<purge>"] == [(2, 0.0)]


def test_progress_bar_is_silent_off_a_terminal_and_draws_on_one(capsys):
    assert not should_show()  # under pytest
    with ProgressBar(10) as bar:
        bar.update(3, loss=0.5, tokens=100)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    with ProgressBar(10, enabled=True, console=console, initial=2) as bar:
        bar.update(3, loss=0.25, tokens=1000)
    text = buffer.getvalue()
    assert "3/10" in text and "loss 0.2500" in text and "tok/s" in text and "ETA" in text


def test_off_a_terminal_the_progress_is_plain_lines_at_an_interval(monkeypatch):
    import launch.progress as progress

    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    monkeypatch.delenv("CI", raising=False)
    assert progress.display_mode(Console(file=io.StringIO())) == "lines"
    clock = iter([0.0, 5.0, 31.0, 40.0, 41.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    stream = io.StringIO()
    with ProgressBar(10, enabled="lines", stream=stream, initial=2) as bar:
        bar.update(3, loss=0.5, tokens=100)    # 5 s: no line yet
        bar.update(4, loss=0.25, tokens=100)   # 31 s: a line
        bar.update(5, tokens=100)              # 40 s: within the interval
    lines = stream.getvalue().splitlines()     # the last one is written on exit
    assert lines[0].startswith("train 4/10 loss 0.2500") and "tok/s" in lines[0] and "ETA 0:01:33" in lines[0]
    assert len(lines) == 2 and lines[1].startswith("train 5/10 loss 0.2500")


def test_only_process_zero_writes(tmp_path, monkeypatch):
    import jax

    monkeypatch.setattr(jax, "process_index", lambda: 1)
    with MetricsWriter(tmp_path / "run", tensorboard=True) as writer:
        assert writer.write(3, {"loss": np.float32(0.5)}) == {"step": 3, "loss": 0.5}
    assert not (tmp_path / "run").exists()
