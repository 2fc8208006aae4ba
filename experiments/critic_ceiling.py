"""Does PPO's critic have anything to learn in the CPU miniature? How much of the return's variance the state (the
hand) explains, measured by playing each hand many times, and how much a linear critic on the value head's input
recovers on hands it never saw.

The miniature's PPO critic ends every run with an explained variance of 0.00 (docs/miniature.md). This separates a
critic that fails to learn from a state that carries nothing to learn: each of H training-pool hands of the RL arm
is played n times by the policy (the RL arm's episodes, temperature and verification budget), the first state's
discounted Monte-Carlo return (the RL arm's gamma) is split into its between-hand and within-hand variance
(`rl.baselines.baseline_noise`: the ceiling of any critic, and what GRPO's group mean removes), and a ridge
regression from the hidden state the value head reads (the prompt's last token) to the return is scored on
held-out hands (`rl.baselines.linear_probe_explained_variance`).

    PYTHONPATH=. .venv/bin/python experiments/critic_ceiling.py --out critic --policy mini/base \
        [--hands 128 --plays 16] [miniature overrides, e.g. rl.temperature=1.0]

Writes OUT/critic.json and OUT/critic.md (one row per --policy; a second call with another policy adds a row).
docs/miniature.md records the measured runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import run_with_miniature_config
from launch.config import ConfigError
from launch.miniature import MiniatureConfig, rl_arm_config
from launch.rl_common import load_policy, new_episodes, task_config
from launch.rl_run import shared_runner
from launch.sweep import parse_budgets, parse_learning_rates
from rl.baselines import baseline_noise, linear_probe_explained_variance
from rl.gae import GAEConfig, gae
from rl.rollout import prompt_hidden

PROG = "critic_ceiling"
BOOTSTRAP_DRAWS = 200


def first_state_returns(rewards, dones, valid, gamma: float) -> np.ndarray:
    """(B,) the discounted Monte-Carlo return of each row's first state from its transitions' rewards, dones and
    valid flags (B, K) (GeneralPoints: a row is one episode): GAE with lambda 1 and zero values."""
    rewards = jnp.asarray(rewards, jnp.float32)
    _, returns = gae(rewards, jnp.zeros_like(rewards), jnp.asarray(dones, bool), jnp.asarray(valid, bool),
                     config=GAEConfig(gamma=gamma, lam=1.0))
    return np.asarray(returns[:, 0])


def play_hands(policy, rl_config, *, hands: int, plays: int, batch: int, seed: int):
    """Each of `hands` training-pool hands (drawn from (seed, batch index)) played `plays` times: returns
    (hands, plays) float64, successes (hands, plays) bool and the value head's input at each hand's prompt
    (hands, D) float32."""
    if not 2 <= plays <= batch or batch % plays or hands < 4 or hands % (batch // plays):
        raise ConfigError(f"--plays ({plays}) must be at least 2 and divide --batch ({batch}), and --hands ({hands}) "
                          "must be at least 4 and a multiple of batch / plays")
    episodes = rl_config.episodes
    runner = shared_runner(policy, episodes, episodes.max_verify_steps, batch)
    settings = task_config(episodes)
    last_hidden = jax.jit(functools.partial(prompt_hidden, config=policy.config))  # the value head's input

    returns, successes, features = [], [], []
    per_batch = batch // plays
    for index in range(hands // per_batch):
        states = new_episodes(settings, (seed, index), per_batch, plays)
        trajectory, _, _ = runner(policy.params, states, jax.random.key(seed * 100_003 + index))
        returns.append(first_state_returns(trajectory.rewards, trajectory.dones, trajectory.valid,
                                           rl_config.ppo.gae.gamma).reshape(per_batch, plays))
        successes.append(np.asarray(trajectory.success).any(axis=1).reshape(per_batch, plays))
        prompts = runner.prompts(states[::plays])  # the hand's first prompt (every play starts from it)
        features.append(np.asarray(last_hidden(policy.params, prompt_ids=jnp.asarray(prompts.input_ids),
                                               prompt_mask=jnp.asarray(prompts.attention_mask))))
    return np.concatenate(returns).astype(np.float64), np.concatenate(successes), np.concatenate(features)



def measure(returns: np.ndarray, features: np.ndarray, *, group_sizes, ridges) -> dict:
    """The variance components, the critic's ceiling (with a bootstrap standard error over hands), each baseline's
    share of the batch-mean noise and the linear probe's held-out explained variance at each ridge penalty."""
    hands, plays = returns.shape
    noise = baseline_noise(returns, group_size=group_sizes[0])
    ids = np.repeat(np.arange(hands), plays)
    # the ceiling's standard error: the spread of its estimate over hands resampled with replacement
    rng = np.random.default_rng(0)
    resampled = [baseline_noise(returns[rng.integers(0, hands, hands)], group_size=group_sizes[0]).critic_ceiling
                 for _ in range(BOOTSTRAP_DRAWS)]
    return {
        "hands": hands, "plays": plays, "mean_return": noise.mean, "between": noise.between,
        "within": noise.within, "critic_ceiling": noise.critic_ceiling,
        "critic_ceiling_se": float(np.std(resampled, ddof=1)),
        "group_share": {str(g): baseline_noise(returns, group_size=g).group_share for g in group_sizes},
        "linear_probe": {f"{r:g}": linear_probe_explained_variance(features[ids], returns.reshape(-1), ids, ridge=r)
                         for r in ridges},
    }


def _signed(value) -> str:
    return "" if value is None else f"{value:+.3f}"


def table(rows: list[dict]) -> str:
    """critic.md: one row per policy (rows as critic.json holds them, keys strings)."""
    groups = sorted({g for row in rows for g in row["group_share"]}, key=int)
    ridges = sorted({r for row in rows for r in row["linear_probe"]}, key=float)
    head = (["policy", "hands x plays", "success", "mean return", "between", "within", "critic ceiling"]
            + [f"GRPO g={g}" for g in groups] + [f"probe ridge {r}" for r in ridges])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["policy"], f"{row['hands']} x {row['plays']}", f"{row['success']:.3f}",
                 f"{row['mean_return']:.3f}", f"{row['between']:.3f}", f"{row['within']:.3f}",
                 f"{row['critic_ceiling']:.3f} ± {row['critic_ceiling_se']:.3f}"]
        cells += [_signed(row["group_share"].get(g)) for g in groups]
        cells += [_signed(row["linear_probe"].get(r)) for r in ridges]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--policy", required=True, help="the policy that plays: a miniature base or arm run "
                                                        "directory (its final/), or a Hugging Face directory")
    parser.add_argument("--preset", default="miniature", help="the miniature preset the RL arm's episodes come from")
    parser.add_argument("--hands", type=int, default=128)
    parser.add_argument("--plays", type=int, default=16, help="plays of each hand")
    parser.add_argument("--batch", type=int, default=64, help="episodes per rollout (a multiple of --plays)")
    parser.add_argument("--groups", default="4,8,16", help="GRPO group sizes to score")
    parser.add_argument("--ridges", default="1,10,100,1000", help="ridge penalties of the linear probe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="miniature config overrides, e.g. rl.temperature=1.0")
    args = parser.parse_args(argv)

    return run_with_miniature_config(PROG, args, lambda config: _measure_policy(config, args))


def _measure_policy(config: MiniatureConfig, args: argparse.Namespace) -> int:
    """Play, measure, and add the policy's row to OUT/critic.json and OUT/critic.md."""
    started = time.monotonic()
    group_sizes = parse_budgets(args.groups, "--groups")
    ridges = parse_learning_rates(args.ridges, "--ridges")
    rl_config = rl_arm_config(config, Path(args.policy), seed=args.seed)
    policy = load_policy(rl_config.init, seed=args.seed)
    returns, successes, features = play_hands(policy, rl_config, hands=args.hands, plays=args.plays,
                                              batch=args.batch, seed=args.seed)
    row = {"policy": str(args.policy), "success": float(successes.mean()),
           **measure(returns, features, group_sizes=group_sizes, ridges=ridges)}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "critic.json"
    rows = [r for r in (json.loads(path.read_text()) if path.exists() else []) if r["policy"] != row["policy"]]
    rows.append(row)
    path.write_text(json.dumps(rows, indent=1))
    (args.out / "critic.md").write_text(table(rows))
    print(table([row]), end="")
    print(f"[{PROG}] {args.hands} hands x {args.plays} plays in {time.monotonic() - started:.0f} s: "
          f"{args.out / 'critic.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
