"""Pure functions for outcome-reward RL with sequential revision: rollouts, PPO (GAE, clipped losses), GRPO,
evaluation metrics and compute accounting. No loops over time, no I/O, no global state."""
