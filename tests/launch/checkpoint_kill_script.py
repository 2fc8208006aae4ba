"""Launched by test_checkpoint: saves steps 1 and 2 completely, starts an async save of step 3 and SIGKILLs
itself the moment save() has returned, i.e. while step 3's 16 MiB are being written in the background (writing
them takes milliseconds; the kill takes microseconds). Usage: checkpoint_kill_script.py DIRECTORY"""

import os
import signal
import sys

import jax.numpy as jnp

from launch.checkpoint import CheckpointManager

SIZE = 4 * 2**20


def make_state(step: int) -> dict:
    return {"step": jnp.asarray(step, jnp.int32), "params": {"w": jnp.full((SIZE,), float(step), jnp.float32)}}


if __name__ == "__main__":
    manager = CheckpointManager(sys.argv[1], every_steps=1, keep=5, async_save=True)
    for step in (1, 2):
        manager.save(step, make_state(step), {"position": step})
        manager.wait()
    manager.save(3, make_state(3), {"position": 3})
    os.kill(os.getpid(), signal.SIGKILL)
