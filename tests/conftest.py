"""Test-session setup: the CPU platform with 8 host devices (for the multi-device tests), one persistent XLA
compilation cache shared by the session's processes, compiled programs released when a worker holds too many of
them, and a hard failure, not a skip, when a required dependency is missing."""

import atexit
import gc
import importlib
import os
import shutil
import tempfile

import pytest

# Must happen before anything imports jax. Tests that need one device use jax.devices()[0] or no sharding.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

# Compilation dominates this suite on a 2-core machine, and its processes (the xdist workers and the CLI and
# multi-host subprocesses they start, which inherit this environment) compile many identical programs: one
# persistent cache for the session lets each be compiled once. It is keyed on the program, the devices and the
# XLA flags, so a hit is the executable a compile would have produced. The controller makes it (workers inherit
# the variable) and deletes it at exit; a JAX_COMPILATION_CACHE_DIR set by the caller is used and kept.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ and "PYTEST_XDIST_WORKER" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir = tempfile.mkdtemp(prefix="memgen-test-xla-cache-")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")  # JAX's 1 s default skips most here
# (JAX_SHARE_BINARY_BETWEEN_HOSTS, which compiles on process 0 only, hung the two-process CPU runs at their first
# gloo collective, so each process of those runs compiles for itself.)

REQUIRED = [
    "jax", "flax", "optax", "orbax.checkpoint", "chex", "numpy", "PIL", "transformers", "tokenizers",
    "safetensors", "scipy", "matplotlib", "hypothesis", "torch",
]


def pytest_sessionstart(session):
    missing = []
    for name in REQUIRED:
        try:
            importlib.import_module(name)
        except ImportError as error:  # pragma: no cover - the point is to fail loudly
            missing.append(f"{name} ({error})")
    if missing:
        raise RuntimeError("required test dependencies are missing: " + ", ".join(missing)
                           + "; run `make test`, which installs them into .venv")


# XLA:CPU keeps each compiled program's machine code in memory mappings of its own (~10 for a small program, more for
# a large one) for as long as JAX caches the program, and a worker of this suite compiles thousands: one peaked at
# 60,283 mappings, near the kernel's default vm.max_map_count of 65,530, past which a compile's mmap fails and XLA
# kills the worker (the segfaults and aborts inside backend_compile_and_load late in some full runs, 2026-12-07).
# A worker past a third of the limit drops JAX's caches after its current module (one module added ~20,000).


def _mappings_and_limit() -> tuple[int, int]:
    try:
        with open("/proc/self/maps", "rb") as maps:
            count = sum(1 for _ in maps)
        with open("/proc/sys/vm/max_map_count") as limit:
            return count, int(limit.read())
    except (OSError, ValueError):  # not Linux: no such limit to keep under
        return 0, 1


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """After a test module, drop JAX's compiled programs when the process holds over a third of the memory mappings
    the kernel allows (a later module that needs one again reads it from the persistent cache or compiles it)."""
    yield
    count, limit = _mappings_and_limit()
    if count > limit // 3:
        import jax

        jax.clear_caches()
        gc.collect()
