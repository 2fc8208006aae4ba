"""Two processes on localhost (CPU, 4 devices each, JAX's gloo CPU collectives) against one process with 8
devices: the SFT train step with each process feeding its host-local half of the batch (same losses, same greedy
answers afterwards), and a whole `memgen sft` run (data order, held-out loss, greedy evaluation, Orbax saves of
a state sharded over both processes, a resume from them, the final policy) that ends with the metrics and weights
of the single-process run."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("multihost_worker.py")
TIMEOUT_S = 300  # generous: CI runs these beside other tests on 2 cores


def _gloo_available() -> bool:
    from jax._src.lib import _jax
    return hasattr(_jax, "make_gloo_tcp_collectives")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(args: list[str], devices: int) -> subprocess.Popen:
    """``python ARGS...`` in the repository root on `devices` CPU devices, outside any multi-host setting."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
           # LLVM optimisation level 0 halves the compile time; all three processes use the same flags.
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"}
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "MEMGEN_COORDINATOR",
                 "MEMGEN_NUM_PROCESSES", "MEMGEN_PROCESS_ID"):
        env.pop(name, None)
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> str:
    """The stdout of a process that must exit 0 within the time limit."""
    try:
        out, err = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"worker timed out after {TIMEOUT_S} s; stderr tail:\n{err[-3000:]}")
    assert process.returncode == 0, f"worker failed ({process.returncode}); stderr tail:\n{err[-3000:]}"
    return out


def _result(process: subprocess.Popen) -> dict | None:
    lines = [line for line in _finish(process).splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else None


@pytest.mark.skipif(not _gloo_available(), reason="this jaxlib has no gloo CPU collectives "
                    "(jax._src.lib._jax.make_gloo_tcp_collectives is missing), so CPU processes cannot all-reduce")
def test_two_processes_match_one_process_with_eight_devices():
    coordinator = f"127.0.0.1:{_free_port()}"
    workers = [_start([str(WORKER), coordinator, str(i)], devices=4) for i in range(2)]
    single = _start([str(WORKER), "single"], devices=8)
    multi = [_result(w) for w in workers]
    reference = _result(single)
    assert multi[0]["processes"] == 2 and multi[0]["rows"] == [0, 4]
    assert reference["processes"] == 1 and reference["rows"] == [0, 8]
    assert len(reference["losses"]) == 3 and reference["losses"][2] < reference["losses"][0]  # it trains
    for got, want in zip(multi[0]["losses"], reference["losses"]):
        assert abs(got - want) <= 1e-5, (multi[0]["losses"], reference["losses"])
    assert multi[0]["tokens"] == reference["tokens"]  # the greedy hook's sampler over both processes
    # the rollout's host verifier: every process judged every row at every step it played, as the single process
    assert multi[0]["judged"] == multi[1]["judged"] == reference["judged"]
    assert {row for row, _, _ in reference["judged"]} == set(range(8))
    assert multi[0]["rollout_tokens"] == multi[1]["rollout_tokens"] == reference["rollout_tokens"]


# tiny-gp-l over all devices: 8 rows split 4 + 4 over the processes and 1 per device, a checkpoint every 2 steps.
# No greedy evaluation: its sampler across processes is the first test's (generate_on_mesh); here it would add
# ~25 s of compilation per round.
SFT_ARGS = ["sft", "--preset", "tiny-gp-l"]
SFT_OVERRIDES = ["steps=4", "batch_size=8", "mesh=[1,-1,1]", "checkpoint.every_steps=2", "greedy_examples=0"]


def _two_processes(command: list[str], out_dir: Path, *options: str) -> list[subprocess.Popen]:
    """`memgen COMMAND --out OUT_DIR OPTIONS...` as a two-process run, 4 CPU devices each."""
    coordinator = f"127.0.0.1:{_free_port()}"
    return [_start(["-m", "launch.cli", "--coordinator", coordinator, "--num-processes", "2", "--process-id", str(i),
                    *command, "--out", str(out_dir), *options], devices=4)
            for i in range(2)]


def _one_process(command: list[str], out_dir: Path, *options: str) -> subprocess.Popen:
    """The same command as one process with 8 CPU devices."""
    return _start(["-m", "launch.cli", *command, "--out", str(out_dir), *options], devices=8)


def _assert_records_close(got: list[dict], want: list[dict]) -> None:
    assert [(r["kind"], r["step"], r.get("split")) for r in got] == [(r["kind"], r["step"], r.get("split"))
                                                                     for r in want]
    for g, w in zip(got, want):
        assert g.keys() == w.keys(), (g, w)
        for key, value in w.items():
            if key.endswith("_seconds"):  # wall times (rl's rollout and update)
                continue
            if isinstance(value, float):  # all-reduces over 2 x 4 or 8 devices sum in different orders
                assert g[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (key, g, w)
            else:
                assert g[key] == value, (key, g, w)


@pytest.mark.skipif(not _gloo_available(), reason="this jaxlib has no gloo CPU collectives")
def test_memgen_sft_across_two_processes_resumes_and_ends_as_one_process(tmp_path):
    from launch.metrics import read_metrics

    two, one = tmp_path / "two", tmp_path / "one"
    first = _two_processes(SFT_ARGS, two, "--stop-after", "2", *SFT_OVERRIDES)
    single = _one_process(SFT_ARGS, one, *SFT_OVERRIDES)
    for process in first:
        _finish(process)
    assert sorted(int(p.name) for p in (two / "checkpoints").iterdir() if p.name.isdigit()) == [2]
    assert max(r["step"] for r in read_metrics(two)) == 2 and not (two / "final").exists()
    outputs = [_finish(process) for process in _two_processes(SFT_ARGS, two, *SFT_OVERRIDES)]  # resumes at step 2
    _finish(single)
    assert all("finished step 4/4" in out for out in outputs)
    records = read_metrics(two)
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]  # each step once
    _assert_records_close(records, read_metrics(one))
    _assert_weights_close(two / "final", one / "final", 1e-5)


def _assert_weights_close(got_dir: Path, want_dir: Path, tolerance: float) -> None:
    from safetensors.numpy import load_file

    got, want = load_file(got_dir / "model.safetensors"), load_file(want_dir / "model.safetensors")
    assert got.keys() == want.keys()
    for name in want:
        assert abs(got[name] - want[name]).max() <= tolerance, name


# rl-tiny over all devices (8 episodes, one per device), one PPO update and the evaluation after it; then memgen
# eval of that policy with a held-out loss. Every process verifies every row (rl.rollout.call_verifier), so the
# episode states, the buffers and the records must be those of one process.
RL_ARGS = ["rl", "--preset", "rl-tiny"]
RL_OVERRIDES = ["updates=1", "ppo.epochs=1", "mesh=[1,-1,1]"]
EVAL_ARGS = ["eval", "--preset", "eval-tiny"]
EVAL_OVERRIDES = ["episodes=8", "verify_budgets=[2]", "heldout_examples=8", "heldout_batch_size=8", "mesh=[1,-1,1]"]


@pytest.mark.skipif(not _gloo_available(), reason="this jaxlib has no gloo CPU collectives")
def test_memgen_rl_and_eval_across_two_processes_end_as_one_process(tmp_path):
    from launch.metrics import read_metrics

    two, one = tmp_path / "rl-two", tmp_path / "rl-one"
    runs = [*_two_processes(RL_ARGS, two, *RL_OVERRIDES), _one_process(RL_ARGS, one, *RL_OVERRIDES)]
    for process in runs:
        _finish(process)
    records = read_metrics(two)
    assert [(r["kind"], r["step"]) for r in records] == [("train", 1), ("eval", 1), ("eval", 1)]
    _assert_records_close(records, read_metrics(one))
    _assert_weights_close(two / "final", one / "final", 1e-5)

    init = f"init={two}"
    runs = [*_two_processes(EVAL_ARGS, tmp_path / "eval-two", init, *EVAL_OVERRIDES),
            _one_process(EVAL_ARGS, tmp_path / "eval-one", init, *EVAL_OVERRIDES)]
    for process in runs:
        _finish(process)
    records = read_metrics(tmp_path / "eval-two")
    assert [r["split"] for r in records] == ["in_distribution", "rule_ood"]
    assert all(r["heldout_loss"] > 0 for r in records)
    _assert_records_close(records, read_metrics(tmp_path / "eval-one"))
