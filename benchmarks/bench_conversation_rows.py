"""Benchmark of PPOConfig.episode_rows: one PPO update over a real multi-turn rollout's buffer as per-transition
training rows (each transition's context + response: the context repeats the earlier turns) against conversation
rows (one stream per episode scores all its transitions), same policy, same rollout, same run.

The rollout: GeneralPoints-L episodes (launch.rl_common.RolloutRunner) on the random `small` policy with a
verification budget of K, so every episode plays all K steps; `--early-end F` then rewrites a share F of the
episodes as if solved at their first try (+5, done; the later transitions padding, their tokens masked), as a
policy that succeeds early leaves them. The update: the paper's PPO settings (launch.rl_config.PAPER_PPO) with
skip_padding on in both layouts (what the reference presets run; rows of conversations are never padding) and
minibatches of the same number of episodes' worth of transitions (`--minibatch-rows` conversations, or K times
as many transitions), so both take the same number of optimizer steps when nothing is padding. Reported per
layout: update seconds (median of --repeats, compile apart), the tokens one epoch puts through the model (rows x
row length, padding included: what the compute is) and the valid tokens it scores (rl.buffer.train_token_count).

Example: `PYTHONPATH=. JAX_PLATFORMS=cpu python benchmarks/bench_conversation_rows.py --early-end 0.5`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from launch.rl_common import RolloutRunner, answer_key_starts, load_policy, new_episodes, task_config
from launch.rl_config import PAPER_PPO, EpisodeConfig
from rl.buffer import ppo_buffer, train_token_count
from rl.ppo import ppo_optimizer, ppo_update
from rl.rollout import transition_policy
from rl.update import init_train_state, item_valid


def solved_first(trajectory, share: float, seed: int):
    """`trajectory` with a share of its episodes solved at the first try: reward +5 and done there, every later
    transition padding (no response or feedback tokens, valid False)."""
    t = jax.device_get(trajectory)
    batch, steps = t.rewards.shape
    early = np.zeros(batch, bool)
    early[np.random.default_rng(seed).permutation(batch)[:round(share * batch)]] = True
    later = early[:, None] & (np.arange(steps) >= 1)[None, :]
    rewards = np.where(later, 0.0, np.where(early[:, None], 5.0, t.rewards))
    dones = np.where(early[:, None], np.arange(steps)[None, :] == 0, t.dones)
    return dataclasses.replace(
        t, rewards=rewards.astype(np.float32), dones=dones, valid=t.valid & ~later,
        success=np.where(early[:, None], dones, t.success),
        response_mask=np.where(later[..., None], 0, t.response_mask),
        response_logprobs=np.where(later[..., None], 0.0, t.response_logprobs).astype(np.float32),
        feedback_mask=np.where(early[:, None, None], 0, t.feedback_mask),
        values=np.where(later, 0.0, t.values).astype(np.float32),
        bootstrap_value=np.where(early, 0.0, t.bootstrap_value).astype(np.float32))


def measure(preset: str = "small", episodes: int = 8, verify_steps: int = 5, max_new_tokens: int = 64,
            feedback_len: int = 64, minibatch_rows: int = 2, epochs: int = 1, early_end: float = 0.0,
            repeats: int = 3, seed: int = 0) -> dict:
    policy = load_policy(preset, seed=seed)
    episode_config = EpisodeConfig(max_verify_steps=verify_steps, max_new_tokens=max_new_tokens,
                                   feedback_len=feedback_len, temperature=1.0)
    runner = RolloutRunner(policy, episode_config, verify_steps, episodes)
    states = new_episodes(task_config(episode_config), (seed,), episodes)
    trajectory, _, _ = runner(policy.params, states, jax.random.key(seed))
    trajectory = solved_first(trajectory, early_end, seed)
    answer_start = answer_key_starts(policy.tokenizer, trajectory.response_ids, trajectory.response_mask,
                                     episode_config.task)
    policy_fn = functools.partial(transition_policy, config=policy.config, temperature=1.0)
    result = dict(benchmark="conversation_rows", preset=preset, episodes=episodes, verify_steps=verify_steps,
                  prompt_tokens=int(trajectory.prompt_ids.shape[1]), max_new_tokens=max_new_tokens,
                  feedback_len=feedback_len, early_end=early_end, epochs=epochs,
                  valid_transitions=int(np.sum(trajectory.valid)), device=jax.devices()[0].device_kind,
                  repeats=repeats)
    for layout, rows in (("transitions", False), ("rows", True)):
        config = dataclasses.replace(PAPER_PPO, epochs=epochs, skip_padding=True, episode_rows=rows,
                                     minibatch_size=minibatch_rows * (1 if rows else verify_steps))
        buffer = jax.jit(functools.partial(ppo_buffer, config=config))(trajectory, answer_start=answer_start)
        ids = buffer["stream_ids"] if rows else buffer["context_ids"]
        row_length = ids.shape[1] + (0 if rows else buffer["response_ids"].shape[1])
        items = int(np.sum(item_valid(buffer["valid"])))
        optimizer = ppo_optimizer(config, 100)
        update = jax.jit(functools.partial(ppo_update, policy_fn=policy_fn, optimizer=optimizer, config=config),
                         donate_argnums=0)
        state = init_train_state(jax.tree.map(jnp.copy, policy.params), optimizer)  # the update donates it
        began = time.perf_counter()
        compiled = update.lower(state, buffer, jax.random.key(1)).compile()
        compile_s = time.perf_counter() - began
        times = []
        for r in range(repeats + 1):
            began = time.perf_counter()
            state, metrics = compiled(state, buffer, jax.random.key(1 + r))
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - began)
        steps = int(state.step) // (repeats + 1)
        result[layout] = dict(minibatch_size=config.minibatch_size, items=items, row_length=int(row_length),
                              optimizer_steps=steps,
                              model_tokens_per_epoch=-(-items // config.minibatch_size) * config.minibatch_size
                              * int(row_length),
                              scored_tokens_per_epoch=int(train_token_count(buffer)),
                              compile_s=round(compile_s, 2), update_s=round(statistics.median(times[1:]), 3),
                              update_times_s=[round(t, 3) for t in times], loss=round(float(metrics["loss"]), 6))
    result["speedup"] = round(result["transitions"]["update_s"] / result["rows"]["update_s"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--verify-steps", type=int, default=5, help="K, the verification budget")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--feedback-len", type=int, default=64)
    parser.add_argument("--minibatch-rows", type=int, default=2,
                        help="conversations per minibatch (per-transition minibatches: K times as many transitions)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--early-end", type=float, default=0.0, help="share of episodes solved at the first try")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(measure(args.preset, args.episodes, args.verify_steps, args.max_new_tokens, args.feedback_len,
                             args.minibatch_rows, args.epochs, args.early_end, args.repeats, args.seed)))


if __name__ == "__main__":
    main()
