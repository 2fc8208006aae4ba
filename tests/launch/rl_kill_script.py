"""Launched by test_rl_guarantees: runs `run_rl` on the rl-tiny preset and SIGKILLs itself the moment the save of
update KILL_AT has started (with checkpoint.async_save=true its files are still being written in the background,
so the kill lands mid-save). Usage: rl_kill_script.py OUT_DIR KILL_AT key=value ..."""

import sys

import launch.rl_config  # noqa: F401  (registers the presets)
import launch.rl_run as rl_run
from launch.config import resolve
from tests.launch.kill_mid_save import die_when_saving

if __name__ == "__main__":
    out_dir, kill_at, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    die_when_saving(rl_run, kill_at)
    rl_run.run_rl(resolve("rl-tiny", overrides), out_dir, show_progress=False)
