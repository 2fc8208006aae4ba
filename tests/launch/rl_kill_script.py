"""Launched by test_rl_guarantees: runs `run_rl` on the rl-tiny preset and SIGKILLs itself the moment the save of
update KILL_AT has started (with checkpoint.async_save=true its files are still being written in the background,
so the kill lands mid-save). Usage: rl_kill_script.py OUT_DIR KILL_AT key=value ..."""

import os
import signal
import sys

import launch.rl_config  # noqa: F401  (registers the presets)
import launch.rl_run as rl_run
from launch.config import resolve

if __name__ == "__main__":
    out_dir, kill_at, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    save = rl_run.CheckpointManager.save

    def save_then_die(self, step, state, run_state=None, *, force=False):
        started = save(self, step, state, run_state, force=force)
        if started and step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return started

    rl_run.CheckpointManager.save = save_then_die
    rl_run.run_rl(resolve("rl-tiny", overrides), out_dir, show_progress=False)
