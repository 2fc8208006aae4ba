"""Launched by test_sft_run: runs `run_sft` on the tiny preset and SIGKILLs itself the moment the async save of
step KILL_AT has started (its files are written in the background, so the kill lands mid-save).
Usage: sft_kill_script.py OUT_DIR KILL_AT key=value ..."""

import sys

import launch.sft_run as sft_run
from launch.config import resolve
from tests.launch.kill_mid_save import die_when_saving

if __name__ == "__main__":
    out_dir, kill_at, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    die_when_saving(sft_run, kill_at)
    sft_run.run_sft(resolve("sft-tiny", overrides), out_dir)
