"""Shared by the kill -9 scripts: make a run module's CheckpointManager SIGKILL the process the moment the save of
step `kill_at` has started (with async saves its files are still being written, so the kill lands mid-save)."""

import os
import signal


def die_when_saving(run_module, kill_at: int) -> None:
    save = run_module.CheckpointManager.save

    def save_then_die(self, step, state, run_state=None, *, force=False):
        started = save(self, step, state, run_state, force=force)
        if started and step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return started

    run_module.CheckpointManager.save = save_then_die
