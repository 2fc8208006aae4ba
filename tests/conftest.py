"""Test-session setup: the CPU platform with 8 host devices (for the multi-device tests), and a hard failure,
not a skip, when a required dependency is missing."""

import importlib
import os

# Must happen before anything imports jax. Tests that need one device use jax.devices()[0] or no sharding.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

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
