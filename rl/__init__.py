"""Pure functions for outcome-reward RL with sequential revision: rollouts, PPO (GAE, clipped losses), GRPO,
evaluation metrics and compute accounting. No loops over time, no I/O, no global state.

Modules: rl.gae (GAE over transitions), rl.ppo (PPO losses, optimizer, update), rl.grpo (group advantages, GRPO
loss and update), rl.update (the shared epochs x minibatches loop), rl.metrics (pass@k, success rates),
rl.compute (training FLOPs), rl.masked (masked reductions)."""

from rl.compute import ComputeCounter, parameter_count, total_gflops
from rl.gae import GAEConfig, gae
from rl.grpo import GRPOConfig, group_advantages, grpo_loss, grpo_update
from rl.metrics import pass_at_k, pass_at_k_curve, success_rate
from rl.ppo import PPOConfig, ppo_loss, ppo_optimizer, ppo_update, sequence_logprob
from rl.update import TrainState, init_train_state

__all__ = [
    "ComputeCounter", "GAEConfig", "GRPOConfig", "PPOConfig", "TrainState", "gae", "group_advantages", "grpo_loss",
    "grpo_update", "init_train_state", "parameter_count", "pass_at_k", "pass_at_k_curve", "ppo_loss",
    "ppo_optimizer", "ppo_update", "sequence_logprob", "success_rate", "total_gflops",
]
