"""Launched by test_sft_run: runs `run_sft` on the tiny preset and SIGKILLs itself the moment the async save of
step KILL_AT has started (its files are written in the background, so the kill lands mid-save).
Usage: sft_kill_script.py OUT_DIR KILL_AT key=value ..."""

import os
import signal
import sys

import launch.sft_run as sft_run
from launch.config import resolve

if __name__ == "__main__":
    out_dir, kill_at, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    save = sft_run.CheckpointManager.save

    def save_then_die(self, step, state, run_state=None, *, force=False):
        started = save(self, step, state, run_state, force=force)
        if started and step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return started

    sft_run.CheckpointManager.save = save_then_die
    sft_run.run_sft(resolve("sft-tiny", overrides), out_dir)
