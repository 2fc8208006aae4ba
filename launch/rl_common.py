"""What `memgen rl` and `memgen eval` share: where the policy comes from, GeneralPoints episodes as rollout
prompts, one compiled rollout per shape (`RolloutRunner`), and the evaluation of a policy on a split at a
verification budget. Host side (I/O, numpy episode states); the pure pieces are rl.rollout and rl.buffer.

`load_policy` is `launch.model_source.load_model` (what `memgen sft` uses) plus run directories (their final/) and a
value head; `save_policy` is model_source's.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from launch.config import ConfigError
from launch.episodes import EpisodeVerifier
from launch.mesh import host_arrays, place_full_batch
from launch.model_source import ModelSource, ModelSourceError, load_model, save_policy  # noqa: F401 (re-exported)
from launch.rl_config import EpisodeConfig
from model.chat import batch_conversations
from model.sampler import SamplingConfig
from rl.buffer import Images
from rl.rollout import RolloutConfig, prompt_value, rollout

FINAL_DIR = "final"
TASK_NAMES = {("general_points", "language"): "gp-l", ("general_points", "vision"): "gp-vl",
              ("virl", "language"): "virl-l", ("virl", "vision"): "virl-vl"}


Policy = ModelSource  # config, float32 params (with a value head here), tokenizer, tokenizer_dir, image_config


def load_policy(spec: str, *, seed: int, mesh: jax.sharding.Mesh | None = None,
                param_dtype: str = "float32", compute_dtype: str | None = None) -> ModelSource:
    """`spec`: what `launch.model_source.load_model` takes (a model preset: random init from `seed` with the
    offline tokenizer; or a Hugging Face mllama directory), or a run directory of `memgen sft` / `memgen rl` (its
    final/ policy). A value head is initialised from `seed` when the source has none. With `mesh` the model's
    params are made on it (`load_model`); a new value head is not (`place_params` places it). Params (and a new
    value head) in `param_dtype`; the model config computes in `compute_dtype` (None: the params' dtype), as a run
    that trains or evaluates the policy sets it."""
    from model.value_head import init_value_head

    if not spec:
        raise ConfigError("this preset needs init=DIR: a `memgen sft` run directory or a Hugging Face mllama "
                          "directory (or a model preset name such as tiny for a random policy)")
    path = Path(spec)
    if (path / FINAL_DIR).is_dir():
        spec = str(path / FINAL_DIR)
    try:
        source = load_model(spec, seed=seed, mesh=mesh, param_dtype=param_dtype)
    except ModelSourceError as error:
        raise ConfigError(str(error)) from None
    if "value_head" not in source.params:
        params = dict(source.params, value_head=init_value_head(jax.random.key(seed), source.config))
        source = dataclasses.replace(source, params=params)
    if compute_dtype is not None:
        source = dataclasses.replace(source, config=source.config.replace(dtype=compute_dtype))
    return source


# --------------------------------------------------------------------------------------------- the mesh
def make_rl_mesh(shape: tuple[int, int, int]) -> jax.sharding.Mesh:
    """The (data, fsdp, tensor) mesh of RLConfig.mesh / EvalConfig.mesh, as `memgen sft` builds SFTConfig.mesh
    (`launch.sft_run.make_mesh_from_config`: -1 takes the remaining devices; sizes without a -1 that multiply to
    fewer than the visible devices use the first that many, so (1, 1, 1) is one device; in a run over several
    processes the mesh must span all of their devices). Over several processes every host runs the same loop on
    the same host values: the rollout's verifier judges every row on every host (`rl.rollout.call_verifier`),
    trajectories come back whole to each (`launch.mesh.host_arrays`) and each host feeds its rows of every batch
    (`launch.mesh.place_full_batch`)."""
    from launch.sft_run import make_mesh_from_config
    return make_mesh_from_config(tuple(shape))


def mesh_context(mesh: jax.sharding.Mesh | None):
    """`jax.set_mesh(mesh)` (the model's activation constraints, `model.sharding.constrain_batch`, apply while
    tracing under it), or nothing without a mesh."""
    import contextlib
    return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)


def place_params(params, config, mesh: jax.sharding.Mesh | None):
    """Policy params (value head included) placed on `mesh` by `model.sharding`'s rules (embed -> fsdp; heads,
    kv_heads, mlp, vocab -> tensor); unchanged without a mesh."""
    if mesh is None:
        return params
    from launch.mesh import place_tree
    from model.sharding import param_shardings
    return place_tree(params, param_shardings(config, mesh, params))


def train_state_shardings(state, config, mesh: jax.sharding.Mesh, optimizer):
    """NamedShardings for an `rl.update.TrainState` (arrays or shapes): params by the rules (`place_params`),
    every optimizer moment like its param (`launch.mesh.optimizer_state_specs`), counters and injected
    hyperparameters replicated."""
    from jax.sharding import NamedSharding, PartitionSpec

    from launch.mesh import optimizer_state_specs
    from model.sharding import param_shardings

    params_sh = param_shardings(config, mesh, state.params)
    specs = jax.tree.map(lambda sharding: sharding.spec, params_sh)
    opt_specs = optimizer_state_specs(optimizer, state.opt_state, specs)
    named = lambda spec: NamedSharding(mesh, spec)  # noqa: E731
    return type(state)(params=params_sh,
                       opt_state=jax.tree.map(named, opt_specs, is_leaf=lambda x: isinstance(x, PartitionSpec)),
                       step=named(PartitionSpec()))


# --------------------------------------------------------------------------------------------- episodes
def task_config(episodes: EpisodeConfig, max_verify_steps: int | None = None):
    """The task config of the training split (GeneralPointsConfig, or VirlConfig for task "virl")."""
    from tasks.general_points import GeneralPointsConfig

    if episodes.task == "virl":
        from launch.rl_virl import virl_config
        return virl_config(episodes, max_verify_steps)

    return GeneralPointsConfig(target=episodes.target, num_cards=episodes.num_cards, face_cards=episodes.face_cards,
                               modality=episodes.modality, suits=episodes.suits, hand_pool=episodes.hand_pool,
                               max_verify_steps=max_verify_steps or episodes.max_verify_steps,
                               prompt_template=episodes.prompt_template,
                               feedback_template=episodes.feedback_template)


def checked_task_config(episodes: EpisodeConfig):
    """`task_config(episodes)`, its task's own checks of the settings (GeneralPoints' num_cards, V-IRL's prompt_len,
    ...) failing as one sentence (ConfigError) before a run starts."""
    try:
        return task_config(episodes)
    except ValueError as error:
        raise ConfigError(f"the episodes' task settings are invalid: {error}") from None


def digit_share(text: str) -> float:
    """The share of characters of `text` that are digits (0 for an empty text): the "digits" reward."""
    return sum(ch.isdigit() for ch in text) / len(text) if text else 0.0


def step_function(reward: str, task: str = "general_points"):
    """The episode step of the task (GeneralPoints' `step`, V-IRL's `launch.rl_virl.decision_step`), with the
    verifier's reward or the "digits" reward (EpisodeConfig)."""
    from tasks.common import Verdict

    if task == "virl":
        from launch.rl_virl import decision_step as step
    else:
        from tasks.general_points import step
    if reward == "task":
        return step

    def digits_step(state, response):
        state, transition = step(state, response)
        verdict = transition.verdict
        return state, dataclasses.replace(transition, verdict=Verdict(digit_share(response), verdict.success,
                                                                      verdict.feedback, verdict.category))
    return digits_step


def new_episodes(gp_config, seed_sequence: tuple[int, ...], count: int, repeats: int = 1) -> list:
    """`count` fresh episodes on hands drawn from numpy's Generator(seed_sequence), each repeated `repeats` times
    (consecutive rows)."""
    from tasks.general_points import reset, sample_hands

    hands = sample_hands(gp_config, np.random.default_rng(list(seed_sequence)), count)
    return [reset(gp_config, hand=tuple(hand)) for hand in hands for _ in range(repeats)]


class RolloutRunner:
    """One compiled rollout per (batch, prompt bucket): prompts from episode states, then `rl.rollout.rollout`
    with a single `EpisodeVerifier` reset per call (a static argument: the same object keeps the compilation)."""

    def __init__(self, policy: Policy, episodes: EpisodeConfig, max_verify_steps: int, batch_size: int,
                 step_fn=None, mesh: jax.sharding.Mesh | None = None):
        """`step_fn(state, text) -> (state, Transition)` replaces the task's step (`step_function`), e.g. a
        scripted policy in tests. `mesh`: the prompts (and images) are placed with the batch over data x fsdp,
        the KV cache is constrained to the sampler's placement and the model's activation constraints apply
        (`rl.rollout.rollout`'s mesh); pass params placed on the same mesh (`place_params`). None: one device.
        The runner keeps the policy's config, tokenizer and image config, never its params (each call takes
        them): runners live in process-wide caches (`launch.rl_run`), where params would stay in device memory
        after their run (a whole extra copy of an 11B policy per device during `memgen rl`, which drops its
        loaded params once the train state holds them)."""
        self.policy = dataclasses.replace(policy, params=None)
        self.episodes, self.batch_size, self.mesh = episodes, batch_size, mesh
        tokenizer = policy.tokenizer
        sampling = SamplingConfig(episodes.max_new_tokens, episodes.temperature, stop_tokens=tokenizer.stop_ids)
        # at most one cache stage per turn: an evaluation at a smaller budget than the training's has fewer turns
        self.rollout_config = RolloutConfig(sampling, max_verify_steps, episodes.feedback_len,
                                            cache_stages=min(episodes.cache_stages, max_verify_steps))
        self.verifier = EpisodeVerifier(tokenizer, [], step_fn or step_function(episodes.reward, episodes.task),
                                        episodes.feedback_len)
        self._rollout = jax.jit(functools.partial(rollout, config=policy.config, verifier=self.verifier,
                                                  rollout_config=self.rollout_config, mesh=mesh))
        self._values = jax.jit(functools.partial(prompt_value, config=policy.config, mesh=mesh))

    def prompts(self, states):
        """The left-padded prompt batch (`model.chat.ConversationBatch`; one image slot in the vision modality):
        padded to a multiple of episodes.prompt_bucket, or to exactly episodes.prompt_len when that is set."""
        vision = self.episodes.modality == "vision"
        fixed = self.episodes.prompt_len
        try:
            return batch_conversations(self.policy.tokenizer, [s.conversation for s in states],
                                       self.policy.image_config, add_generation_prompt=True, padding_side="left",
                                       bucket=fixed or self.episodes.prompt_bucket, max_length=fixed or None,
                                       num_image_slots=1 if vision else None)
        except ValueError as error:
            raise ConfigError(f"{error} (the prompt length is episodes.prompt_len)") from None

    def _place(self, array, dtype=None):
        """A host array -> a device array, on the mesh with its batch axis over data x fsdp when there is one."""
        array = np.asarray(array) if dtype is None else np.asarray(array, dtype)
        return place_full_batch(array, self.mesh)

    def _inputs(self, params, states):
        batch = self.prompts(states)
        images = None
        image_inputs = {}
        if batch.pixel_values is not None:
            # the vision encoder's first step casts the pixels to the compute dtype, so holding them in it loses
            # nothing and halves (bfloat16) what the update's buffer keeps: at 11B a 4-tile image is 15 MB in float32
            pixels = [self._place(batch.pixel_values, jnp.dtype(self.policy.config.dtype)),
                      self._place(batch.aspect_ratio_ids), self._place(batch.aspect_ratio_mask)]
            with mesh_context(self.mesh):
                encoded = _encode_images(params, self.policy.config, *pixels)
            images = Images(encoded, self._place(batch.cross_attention_mask, np.int32), *pixels)
            image_inputs = dict(cross_attention_states=images.states, cross_attention_mask=images.cross_attention_mask)
        return batch, images, image_inputs

    def __call__(self, params, states, rng: jax.Array, active=None):
        """(trajectory, verifier, images): images (`rl.buffer.Images`: the encoded images (B, V, D), the prompts'
        cross-attention mask (B, P, I, T) and the pixel inputs) for the vision modality (what the buffer needs),
        else None. `active` (B,) bool: the rows that play (default all)."""
        if len(states) != self.batch_size:
            raise ValueError(f"the rollout was built for {self.batch_size} episodes, got {len(states)}")
        batch, images, image_inputs = self._inputs(params, states)
        self.verifier.reset(states)
        active = self._place(np.ones((len(states),), bool) if active is None else active, bool)
        with mesh_context(self.mesh):
            trajectory = self._rollout(params, prompt_ids=self._place(batch.input_ids),
                                       prompt_mask=self._place(batch.attention_mask), rng=rng, active=active,
                                       **image_inputs)
        return host_arrays(trajectory), self.verifier, images

    def values(self, params, states) -> jax.Array:
        """The value head (B,) at the last token of each state's current prompt (`rl.rollout.prompt_value`)."""
        batch, _, image_inputs = self._inputs(params, states)
        with mesh_context(self.mesh):
            return self._values(params, prompt_ids=self._place(batch.input_ids),
                                prompt_mask=self._place(batch.attention_mask), **image_inputs)


@functools.partial(jax.jit, static_argnums=1)
def _encode_images(params, config, pixel_values, aspect_ratio_ids, aspect_ratio_mask):
    """The images' projected vision states (B, V, D), once per episode batch."""
    from model.forward import vision_states
    return vision_states(params, config, pixel_values, aspect_ratio_ids, aspect_ratio_mask)


def heldout_expert_conversations(episodes: EpisodeConfig, split: str, budget: int, seed: int, size: int) -> list:
    """`size` expert conversations (prompt + the ideal answer) on fresh instances of `split`, drawn with `seed`:
    GeneralPoints' `expert_conversations` of the split's config, V-IRL's per-decision expert conversations on the
    split's routes (`launch.rl_virl.heldout_conversations`). The held-out generalisation loss is their token NLL."""
    if episodes.task == "virl":
        from launch.rl_virl import evaluation_splits as virl_splits, heldout_conversations

        splits = virl_splits(episodes, budget)
        if split not in splits:
            raise ConfigError(f"split {split!r} does not exist for V-IRL {episodes.modality}; choose from "
                              f"{', '.join(splits)}")
        return heldout_conversations(episodes, split, splits[split], seed, size)
    from tasks.general_points import evaluation_splits, expert_conversations

    splits = evaluation_splits(task_config(episodes, budget))
    if split not in splits:
        raise ConfigError(f"split {split!r} does not exist for this task; choose from {', '.join(splits)}")
    return expert_conversations(splits[split], seed, size)


# --------------------------------------------------------------------------------------------- answer key
# The key of the answer in a response's JSON: the reference weights the tokens before it (PPOConfig.answer_key_weight).
ANSWER_KEYS = {"general_points": "formula", "virl": "action"}


def answer_key_starts(tokenizer, response_ids: np.ndarray, response_mask: np.ndarray, task: str) -> np.ndarray:
    """(B, K) int32: for every response (B, K, N) the index of the token holding the first character of the first
    quoted answer key ('"formula"' for GeneralPoints, '"action"' for V-IRL, ANSWER_KEYS), N when the response has
    none (then every token gets the pre-key weight). Host side, from the sampled ids: each token is decoded on its
    own (special tokens to nothing) and the offsets are the cumulative lengths, so nothing is re-tokenised; the key
    is ASCII, whose bytes never sit inside a multi-byte character, so a token's partial UTF-8 cannot shift it."""
    key = f'"{ANSWER_KEYS[task]}"'
    ids, mask = np.asarray(response_ids), np.asarray(response_mask) != 0
    batch, steps, length = ids.shape
    starts = np.full((batch, steps), length, np.int32)
    for b in range(batch):
        for k in range(steps):
            n = int(mask[b, k].sum())
            if n == 0:
                continue
            pieces = tokenizer.tokenizer.decode_batch([[int(t)] for t in ids[b, k, :n]], skip_special_tokens=True)
            at = "".join(pieces).find(key)
            if at >= 0:
                ends = np.cumsum([len(p) for p in pieces])
                starts[b, k] = int(np.searchsorted(ends, at, side="right"))
    return starts


# --------------------------------------------------------------------------------------------- evaluation
def pass_at_k_fields(successes: np.ndarray, n_samples: int) -> dict[str, dict[int, float]]:
    """{"pass_at_k": {k: mean}, "pass_at_k_se": {k: standard error over instances}} for k = 1, 2, 4, ... <=
    n_samples, from successes (instances x n_samples) (rl.metrics.pass_at_k_curve / pass_at_k_standard_error)."""
    from rl.metrics import pass_at_k_curve, pass_at_k_standard_error

    ks = [1 << i for i in range(n_samples.bit_length()) if 1 << i <= n_samples]
    counts = successes.sum(axis=1).astype(int).tolist()
    ns = [n_samples] * len(counts)
    kept, values = pass_at_k_curve(ns, counts, ks)
    _, errors = pass_at_k_standard_error(ns, counts, ks)
    return {"pass_at_k": {int(k): float(v) for k, v in zip(kept, values)},
            "pass_at_k_se": {int(k): float(e) for k, e in zip(kept, errors)}}


def evaluation_splits_of(episodes: EpisodeConfig, budget: int) -> dict:
    """{split: GeneralPoints config} of the evaluation (the held-out hand pool when training uses the train pool)."""
    from tasks.general_points import evaluation_splits

    splits = evaluation_splits(task_config(episodes, budget))
    if episodes.hand_pool == "train":  # trained on the training pool: evaluate on hands never trained on
        splits = {name: dataclasses.replace(value, hand_pool="heldout") for name, value in splits.items()}
    return splits


def evaluation_episodes(episodes: EpisodeConfig, *, split: str, budget: int, num_episodes: int, n_samples: int,
                        seed: int) -> list:
    """The fresh episodes `evaluate` plays: `num_episodes` instances of `split`, each `n_samples` times."""
    splits = evaluation_splits_of(episodes, budget)
    if split not in splits:
        raise ConfigError(f"split {split!r} does not exist for this task; choose from {', '.join(splits)}")
    return new_episodes(splits[split], (seed, budget, sorted(splits).index(split)), num_episodes, n_samples)


def evaluation_chunk(num_episodes: int, n_samples: int, max_rows: Optional[int]) -> int:
    """Instances per rollout batch when `evaluate` plays at most `max_rows` rows at once (all of them when
    max_rows is None or they fit; at least one instance, with all its samples)."""
    if max_rows is None or num_episodes * n_samples <= max_rows:
        return num_episodes
    return max(1, max_rows // n_samples)


def in_chunks(states: list, chunk: int, seed: int, play_chunk: Callable) -> list:
    """`play_chunk(rows, rng, n)` over `states` in rollout batches of `chunk` rows (the last padded with repeats of
    its first row, so one compiled batch shape serves all; `play_chunk` keeps the first n results). One batch samples
    with key(seed), several with fold_in(key(seed), c) for chunk c. Returns the chunks' results in order."""
    results = []
    for index, start in enumerate(range(0, len(states), chunk)):
        part = states[start:start + chunk]
        rng = jax.random.key(seed) if chunk >= len(states) else jax.random.fold_in(jax.random.key(seed), index)
        results.append(play_chunk(part + part[:1] * (chunk - len(part)), rng, len(part)))
    return results


def evaluate(policy: Policy, params, episodes: EpisodeConfig, *, split: str, budget: int, num_episodes: int,
             n_samples: int, seed: int, runners: dict, mesh: jax.sharding.Mesh | None = None,
             max_rows: Optional[int] = None) -> dict:
    """Success of `num_episodes` instances of `split` within `budget` verification steps (each instance sampled
    `n_samples` times; pass@k when > 1). Returns eval_record fields: split, n, success, success_se, verify_budget,
    pass_at_k; also the mean episode length. V-IRL: `launch.rl_virl.evaluate_virl` (route success and per-step
    accuracy). `mesh`: the rollouts run on it (`RolloutRunner`; `params` placed on it), and `runners` must be a
    cache of that mesh's runners. `max_rows`: play at most that many rows (instances x samples) per rollout
    batch, in chunks of whole instances (`evaluation_chunk`, `in_chunks`), so memory stays bounded for many
    samples; chunk c samples with fold_in(key(seed), c), so chunked results are other draws from the same
    distribution than one batch's (greedy results are the same)."""
    from rl.metrics import binomial_standard_error

    if episodes.task == "virl":
        from launch.rl_virl import evaluate_virl
        return evaluate_virl(policy, params, episodes, split=split, budget=budget, num_episodes=num_episodes,
                             n_samples=n_samples, seed=seed, runners=runners,
                             make_runner=functools.partial(RolloutRunner, policy, episodes, mesh=mesh),
                             max_rows=max_rows)
    states = evaluation_episodes(episodes, split=split, budget=budget, num_episodes=num_episodes,
                                 n_samples=n_samples, seed=seed)
    splits = evaluation_splits_of(episodes, budget)
    chunk = evaluation_chunk(num_episodes, n_samples, max_rows) * n_samples  # rows per rollout batch
    key = (budget, chunk)
    if key not in runners:
        runners[key] = RolloutRunner(policy, episodes, budget, chunk, mesh=mesh)

    def play_chunk(rows, rng, n):
        trajectory, verifier, _ = runners[key](params, rows, rng)
        return (np.asarray(trajectory.success).any(axis=1)[:n], np.asarray(trajectory.valid).sum(axis=1)[:n],
                verifier.responses[:n])

    success, lengths, responses = zip(*in_chunks(states, chunk, seed, play_chunk))
    responses = [texts for part in responses for texts in part]
    solved = np.concatenate(success).reshape(num_episodes, n_samples)
    rate = float(solved.mean())
    fields = dict(split=split, n=int(solved.size), success=rate,
                  success_se=float(binomial_standard_error(rate, solved.size)), verify_budget=budget,
                  episode_length=float(np.concatenate(lengths).mean()))
    from tasks.general_points import rule_followed

    # the first answer of each episode: did its "number" field apply the split's face-card rule?
    followed = [rule_followed(texts[0], state.hand, splits[split]) for state, texts in zip(states, responses)
                if texts]
    if followed:
        followed_rate = float(np.mean(followed))
        fields.update(rule_accuracy=followed_rate,
                      rule_accuracy_se=float(binomial_standard_error(followed_rate, len(followed))))
    if episodes.modality == "vision":
        from rl.metrics import recognition_accuracy
        from tasks.general_points import recognition_correct

        # every verified response of every episode: did it name the hand's cards (GP-VL's recognition)?
        cards_ok = [recognition_correct(text, state.hand, splits[split])
                    for state, texts in zip(states, responses) for text in texts]
        accuracy, se = recognition_accuracy(jnp.asarray(cards_ok, bool))
        fields.update(recognition_accuracy=float(accuracy), recognition_accuracy_se=float(se))
    if n_samples > 1:
        fields.update(pass_at_k_fields(solved, n_samples))
    return fields
