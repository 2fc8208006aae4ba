"""Two processes on localhost (CPU, 4 devices each, JAX's gloo CPU collectives) train the tiny model for a few
SFT steps with each process feeding its host-local half of the batch, and reach the losses of one process with
8 devices."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("multihost_worker.py")
TIMEOUT_S = 120


def _gloo_available() -> bool:
    from jax._src.lib import _jax
    return hasattr(_jax, "make_gloo_tcp_collectives")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(args: list[str], devices: int) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
           # LLVM optimisation level 0 halves the compile time; all three processes use the same flags.
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"}
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "MEMGEN_COORDINATOR",
                 "MEMGEN_NUM_PROCESSES", "MEMGEN_PROCESS_ID"):
        env.pop(name, None)
    return subprocess.Popen([sys.executable, str(WORKER), *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _result(process: subprocess.Popen) -> dict | None:
    try:
        out, err = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"worker timed out after {TIMEOUT_S} s; stderr tail:\n{err[-3000:]}")
    assert process.returncode == 0, f"worker failed ({process.returncode}); stderr tail:\n{err[-3000:]}"
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else None


@pytest.mark.skipif(not _gloo_available(), reason="this jaxlib has no gloo CPU collectives "
                    "(jax._src.lib._jax.make_gloo_tcp_collectives is missing), so CPU processes cannot all-reduce")
def test_two_processes_match_one_process_with_eight_devices():
    coordinator = f"127.0.0.1:{_free_port()}"
    workers = [_start([coordinator, str(i)], devices=4) for i in range(2)]
    single = _start(["single"], devices=8)
    multi = [_result(w) for w in workers]
    reference = _result(single)
    assert multi[1] is None  # only process 0 reports
    assert multi[0]["processes"] == 2 and multi[0]["rows"] == [0, 4]
    assert reference["processes"] == 1 and reference["rows"] == [0, 8]
    assert len(reference["losses"]) == 3 and reference["losses"][2] < reference["losses"][0]  # it trains
    for got, want in zip(multi[0]["losses"], reference["losses"]):
        assert abs(got - want) <= 1e-5, (multi[0]["losses"], reference["losses"])
