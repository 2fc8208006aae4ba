"""V-IRL in `memgen rl` and `memgen eval`: route episodes, the decision-point loop around `rl.rollout.rollout`,
the PPO buffer of an update and the evaluation of a split (per-step accuracy and route success with binomial
standard errors). Host side (numpy episode states, I/O-free); the pure pieces are rl.rollout and rl.buffer.

A V-IRL route is a sequence of decision points (an immutable `tasks.virl.EpisodeState` from `tasks.virl.reset`,
advanced by the pure `tasks.virl.step`). One `rollout` call plays one decision point of every row: up to
`max_verify_steps` judged answers, plus the one answer the episode judges "past the budget" (reward -1, the route
ends; unlike GeneralPoints, where the budget-spending answer ends the episode: docs/virl.md), so the scan runs
K = max_verify_steps + 1 steps. A correct action ends the call for that row (the verifier says done) and the
route's next decision starts a fresh conversation at the next call; `decision_step` tells the rollout so. The
run loop records which rows' routes really ended (`terminal`), so GAE sees one episode per route across the calls
concatenated along K (`rl.buffer.transition_arrays`).

Training (`play(..., replace=...)`): `decision_points` calls per update, all rows always active: a row whose route
ended takes a new route from the training pool (routes back to back in one row; GAE handles several episodes
per row), and routes still running after the last call are bootstrapped with the value of their next prompt
(`rl.rollout.prompt_value`). Evaluation (`play(...)` without replace): every row plays its route to the end
(rows that ended go inactive), at most one call per decision point of the longest rail.

Splits (the paper's, as `memgen data --task virl-*` defines them, launch/data_cmd.py): training routes and the
in-distribution / rule-OOD evaluation routes come from the training city (route seeds apart), with absolute /
relative actions; visual OOD (vision only) is the 9-city set in the other styles.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from launch.config import ConfigError
from launch.data_cmd import VIRL_EVAL_ROUTE_SEED_OFFSET, VIRL_OOD_CITIES, VIRL_TRAIN_CITY_SEED
from launch.rl_config import EpisodeConfig
from tasks.common import Transition


def rollout_steps(budget: int) -> int:
    """Scan steps of one decision point: the judged answers plus the one past the budget."""
    return int(budget) + 1


def virl_config(episodes: EpisodeConfig, budget: int | None = None, action_space: str = "absolute"):
    """The VirlConfig of `episodes` (modality, prompt template, answers per decision)."""
    from tasks.virl import VirlConfig

    if episodes.feedback_template is not None:
        raise ConfigError("episodes.feedback_template applies to GeneralPoints only; V-IRL's feedback turn is "
                          "tasks.virl.feedback_message: leave it unset")
    if episodes.prompt_len < 1:
        raise ConfigError("V-IRL needs episodes.prompt_len > 0 (every prompt is padded to that many tokens: its "
                          "prompts grow with the route's history); set e.g. episodes.prompt_len=2048")
    try:
        return VirlConfig(modality=episodes.modality, action_space=action_space,
                          max_verify_steps=budget or episodes.max_verify_steps,
                          prompt_path=episodes.prompt_template)
    except ValueError as error:
        raise ConfigError(f"the V-IRL config rejects the episode settings: {error}") from None


def evaluation_splits(episodes: EpisodeConfig, budget: int | None = None) -> dict[str, Any]:
    """{split: VirlConfig}: in_distribution (absolute actions), rule_ood (relative), and for vision visual_ood."""
    config = virl_config(episodes, budget)
    splits = {"in_distribution": config, "rule_ood": dataclasses.replace(config, action_space="relative")}
    if episodes.modality == "vision":
        splits["visual_ood"] = config
    return splits


def _views(city, config):
    if config.modality != "vision":
        return None
    from tasks.virl.render import CityViews
    return CityViews(city, config.view_size, config.separator_px, config.landmark_radius_m)


def decision_step(state, response: str) -> tuple[Any, Transition]:
    """`launch.episodes.EpisodeVerifier`'s step function for V-IRL: `tasks.virl.step` (a new state is returned,
    the given one is unchanged), reporting done also when a correct action ends the decision point (the route goes
    on with a fresh conversation at the next rollout call)."""
    from tasks.virl import step

    state, transition = step(state, response)
    return state, dataclasses.replace(transition, done=transition.done or transition.fresh_context)


class TrainingRoutes:
    """The training pool: `episodes.train_routes` routes of the training city (seeded by the run's seed), and
    `supply(seed_sequence)`: a function returning a fresh episode state (`tasks.virl.reset`) on a route drawn
    from Generator(seed_sequence) at each call."""

    def __init__(self, episodes: EpisodeConfig, seed: int):
        import tasks.virl as virl

        self.config = virl_config(episodes)
        city = virl.train_city(VIRL_TRAIN_CITY_SEED)
        try:
            self.routes = virl.generate_routes(city, episodes.train_routes, seed, min_steps=episodes.min_route_steps,
                                               max_steps=episodes.max_route_steps)
        except (RuntimeError, ValueError) as error:
            raise ConfigError(f"episodes.train_routes / min_route_steps / max_route_steps: {error}") from None
        self.views = _views(city, self.config)

    def supply(self, seed_sequence: Sequence[int]) -> Callable[[], Any]:
        from tasks.virl import reset

        rng = np.random.default_rng(list(seed_sequence))
        return lambda: reset(self.routes[int(rng.integers(len(self.routes)))], self.config, views=self.views)


def evaluation_routes(episodes: EpisodeConfig, split: str, seed: int, count: int) -> list[tuple[Any, Any]]:
    """`count` (city, route) pairs of `split`, as `memgen data --task virl-* --split SPLIT --seed seed` draws them
    (in_distribution / rule_ood: the training city with the route seed seed + VIRL_EVAL_ROUTE_SEED_OFFSET and the
    episodes' route-step range; visual_ood: the 9-city set of seed)."""
    import tasks.virl as virl

    if split == "visual_ood":
        n_cities = min(count, VIRL_OOD_CITIES)
        return [(city, route) for city, routes in virl.visual_ood_set(
            seed, n_cities=n_cities, routes_per_city=math.ceil(count / n_cities)) for route in routes][:count]
    city = virl.train_city(VIRL_TRAIN_CITY_SEED)
    try:
        routes = virl.generate_routes(city, count, seed + VIRL_EVAL_ROUTE_SEED_OFFSET,
                                      min_steps=episodes.min_route_steps, max_steps=episodes.max_route_steps)
    except (RuntimeError, ValueError) as error:
        raise ConfigError(f"evaluation routes of {split}: {error}") from None
    return [(city, route) for route in routes]


def _with_views(pairs, config):
    views: dict[int, Any] = {}
    for city, route in pairs:
        if id(city) not in views:
            views[id(city)] = _views(city, config)
        yield route, views[id(city)]


def evaluation_episodes(episodes: EpisodeConfig, split: str, config, seed: int, count: int,
                        repeats: int = 1) -> list:
    """`count` routes of `split` (`evaluation_routes`), each as `repeats` consecutive fresh episode states
    (`tasks.virl.reset`) under `config`."""
    from tasks.virl import reset

    return [reset(route, config, views=views) for route, views in
            _with_views(evaluation_routes(episodes, split, seed, count), config) for _ in range(repeats)]


def heldout_conversations(episodes: EpisodeConfig, split: str, config, seed: int, size: int) -> list:
    """`size` expert conversations (one per decision point: the prompt and the ideal answer,
    `tasks.virl.expert.optimal_conversations`) on routes of `split` drawn with `seed`, for the held-out loss."""
    from tasks.virl import expert

    out: list = []
    for route, views in _with_views(evaluation_routes(episodes, split, seed, size), config):
        out += expert.optimal_conversations(route, config, views=views)
        if len(out) >= size:
            break
    return out[:size]


@dataclasses.dataclass
class Play:
    """What `play` did: rows (the episode states in the rows at the end), trajectories / images / terminals (one
    per call, host arrays; terminal (B,) bool: the row's route ended in that call), finished (the final states of
    the routes that ended, in order), played (the latest state of every episode that answered at least once),
    inference_tokens (forward-only tokens of the active rows: prompts, responses, feedback), truncated_feedback,
    calls."""

    rows: list
    trajectories: list
    images: list
    terminals: list
    finished: list
    played: list
    inference_tokens: int
    truncated_feedback: int
    calls: int


def play(runner, params, rows: Sequence[Any], key: jax.Array, *, calls: int | None = None,
         replace: Callable[[], Any] | None = None) -> Play:
    """Decision points of `rows` (episode states, one per row): `calls` rollout calls with every row active, a row
    whose route ended taking `replace()` (training); or, without `calls`, until every route ended, finished rows
    going inactive (evaluation). Call d uses the key fold_in(key, d). The states are immutable: after each call
    the rows take the states the runner's verifier ended with (`EpisodeVerifier.states`)."""
    rows = list(rows)
    active = np.ones(len(rows), bool)
    result = Play(rows, [], [], [], [], [], 0, 0, 0)
    limit = calls if calls is not None else max(len(row.rail) for row in rows) + 1
    while result.calls < limit and (calls is not None or active.any()):
        trajectory, verifier, images = runner(params, rows, jax.random.fold_in(key, result.calls), active=active)
        if len(verifier.states) != len(rows):
            raise ValueError(f"the runner's verifier holds {len(verifier.states)} states for {len(rows)} rows")
        rows[:] = verifier.states  # the states after the call (inactive rows are unchanged)
        ended = active & np.array([row.done for row in rows])
        result.trajectories.append(trajectory)
        result.images.append(images)
        result.terminals.append(ended)
        result.inference_tokens += int(np.asarray(trajectory.prompt_mask)[active].sum()
                                       + np.asarray(trajectory.response_mask).sum()
                                       + np.asarray(trajectory.feedback_mask).sum())
        result.truncated_feedback += verifier.truncated_feedback
        for b in np.flatnonzero(ended):
            result.finished.append(rows[b])
            if replace is not None:
                rows[b] = replace()
            else:
                active[b] = False
        result.calls += 1
    # finished routes, then the routes still in an active row that answered (a replaced row's fresh route has not)
    result.played = result.finished + [row for b, row in enumerate(rows) if active[b] and row.verdicts]
    return result


def training_statistics(result: Play) -> dict[str, float]:
    """An update's rollout statistics, with the keys GeneralPoints logs: reward_mean and response_length over the
    valid transitions; episode_return, episode_success (route success) and episode_length (answers) over the
    routes that ended in this update (NaN when none did); per_step_accuracy over every answer; routes_finished,
    decision_points (rollout calls x rows), inference_tokens."""
    from tasks.virl import per_step_accuracy, route_success

    valid = np.concatenate([np.asarray(t.valid) for t in result.trajectories], axis=1)
    rewards = np.concatenate([np.asarray(t.rewards) for t in result.trajectories], axis=1)
    tokens = np.concatenate([np.asarray(t.response_mask).sum(-1) for t in result.trajectories], axis=1)
    answers = [v for episode in result.played for v in episode.verdicts]
    finished = result.finished
    nan = float("nan")
    return {
        "reward_mean": float(rewards[valid].sum() / max(valid.sum(), 1)),
        "response_length": float(tokens[valid].sum() / max(valid.sum(), 1)),
        "episode_return": float(np.mean([sum(v.reward for v in e.verdicts) for e in finished])) if finished else nan,
        "episode_success": float(np.mean([route_success(e.verdicts) for e in finished])) if finished else nan,
        "episode_length": float(np.mean([len(e.verdicts) for e in finished])) if finished else nan,
        "per_step_accuracy": per_step_accuracy(answers),
        "routes_finished": float(len(finished)),
        "decision_points": float(result.calls * len(result.rows)),
        "inference_tokens": float(result.inference_tokens),
    }


def make_buffer_fn(config, reference_fn=None) -> Callable:
    """A jitted (trajectories, images, terminals, bootstrap_value, reference_params) -> the flat PPO buffer of an
    update: `rl.buffer.transition_arrays` per call, concatenated along K, then `ppo_buffer_from_transitions` (with
    the reference's log-probs from `reference_fn(reference_params, transitions)` when config.kl_mode is set). With
    config.episode_rows each call's conversation is one row of the buffer (rows x decision points rows)."""
    from rl.buffer import (answer_key_weights, concatenate_transitions, ppo_buffer_from_transitions, reference,
                           transition_arrays)

    @jax.jit
    def build(trajectories, images, terminals, bootstrap_value, reference_params, answer_starts):
        parts = [transition_arrays(t, i, terminal, rows=config.episode_rows)
                 for t, i, terminal in zip(trajectories, images, terminals)]
        transitions = concatenate_transitions(parts)
        answer_start = None if answer_starts is None else jnp.concatenate(answer_starts, axis=1)
        return ppo_buffer_from_transitions(
            transitions, bootstrap_value, config,
            token_weights=answer_key_weights(transitions["response_mask"], answer_start, config),
            ref_token_logprobs=reference(reference_fn, reference_params, transitions))
    return build


def update_buffer(build, runner, params, result: Play, reference_params=None, answer_key_weight: float = 1.0,
                  freeze_vision: bool = False):
    """The PPO buffer of a training `play`: bootstrap values of the rows' next prompts (unused for rows whose last
    transition ended a route), the answer key's position in every response when answer_key_weight != 1
    (`launch.rl_common.answer_key_starts`, key "action"), and `build` (make_buffer_fn); the images without their
    pixels with `freeze_vision` (RLConfig.freeze_vision)."""
    from launch.rl_common import answer_key_starts

    bootstrap = runner.values(params, result.rows)
    images = [None if i is None else i.without_pixels() if freeze_vision else i for i in result.images]
    answer_starts = None
    if answer_key_weight != 1.0:
        answer_starts = [answer_key_starts(runner.policy.tokenizer, t.response_ids, t.response_mask, "virl")
                         for t in result.trajectories]
    return build(result.trajectories, images, [np.asarray(t) for t in result.terminals], bootstrap, reference_params,
                 answer_starts)


def evaluate_virl(policy, params, episodes: EpisodeConfig, *, split: str, budget: int, num_episodes: int,
                  n_samples: int, seed: int, runners: dict, make_runner: Callable,
                  max_rows: int | None = None) -> dict:
    """Route success of `num_episodes` routes of `split` within `budget` answers per decision (each route played
    `n_samples` times; pass@k over route success when > 1), and per-step accuracy over every answer, each with its
    binomial standard error. Returns eval_record fields (plus episode_length: answers per route). `max_rows`: at
    most that many rows per rollout batch, in chunks of whole routes (as `launch.rl_common.evaluate`)."""
    from launch.rl_common import evaluation_chunk, in_chunks
    from rl.metrics import binomial_standard_error
    from tasks.virl import per_step_accuracy, route_success

    splits = evaluation_splits(episodes, budget)
    if split not in splits:
        raise ConfigError(f"split {split!r} does not exist for V-IRL {episodes.modality}; choose from "
                          f"{', '.join(splits)}")
    rows = evaluation_episodes(episodes, split, splits[split], seed, num_episodes, n_samples)
    chunk = evaluation_chunk(num_episodes, n_samples, max_rows) * n_samples
    key = ("virl", budget, chunk)
    if key not in runners:
        runners[key] = make_runner(rollout_steps(budget), chunk)
    rows = [row for part in in_chunks(rows, chunk, seed, lambda part, rng, n: play(runners[key], params, part,
                                                                                    rng).rows[:n])
            for row in part]
    solved = np.array([route_success(e.verdicts) for e in rows]).reshape(-1, n_samples)
    answers = [v for e in rows for v in e.verdicts]
    rate, accuracy = float(solved.mean()), per_step_accuracy(answers)
    fields = dict(split=split, n=int(solved.size), success=rate,
                  success_se=float(binomial_standard_error(rate, solved.size)), verify_budget=budget,
                  episode_length=float(np.mean([len(e.verdicts) for e in rows])),
                  per_step_accuracy=float(accuracy),
                  per_step_accuracy_se=float(binomial_standard_error(accuracy, max(len(answers), 1))))
    if n_samples > 1:
        from launch.rl_common import pass_at_k_fields
        fields.update(pass_at_k_fields(solved, n_samples))
    return fields
