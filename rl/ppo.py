"""PPO with a value head for whole-response actions: sequence log-probs, the clipped losses, KL shaping, the
optimizer of the paper and the update (epochs x shuffled minibatches).

An action is a whole response, so the policy ratio is taken on the sequence log-prob
log pi(a|s) = sum_s w_s * log pi(token_s | ...) over the response tokens (weights w default to 1; the reference
weights the tokens before the answer key by 0.5, see `answer_key_token_weights`).

Axes: N transitions (flattened B x T rollout transitions, or one minibatch of them), S response tokens (padded;
`response_mask` marks the model's own tokens). Per-transition arrays are (N,), per-token arrays (N, S); `valid`
(N,) marks real transitions (padding slots of the rollout are excluded from every mean).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal, Mapping

import jax
import jax.numpy as jnp
import optax

from model.dtypes import keep_dtypes
from rl.gae import GAEConfig
from rl.masked import masked_count, masked_mean, masked_normalize, masked_share, masked_var
from rl.update import TrainState, as_transitions, buffer_size, check_microbatches, holds_rows, minibatch_update

KLMode = Literal["k1_reward", "k3_loss"]
AdvantageNormalization = Literal["buffer", "minibatch", "none"]


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """PPO hyperparameters; defaults are the paper's (reference protocol, "Training") where it gives them.

    clip_eps: ratio clip (paper 0.1). value_clip_eps: clip of the value change around the rollout value (the
    reference clips the value with the same 0.1; None = unclipped value loss). vf_coef: value-loss weight (0.5).
    advantage_normalization: "buffer" (the reference: mean/std over the whole rollout before the epochs),
    "minibatch" (per minibatch, as Stable-Baselines3) or "none"; advantage_eps is added to the std.
    entropy_coef: entropy bonus (paper 0; needs policy_fn to return per-token entropy).
    kl_mode / kl_coef: no KL (paper), "k1_reward" (subtract kl_coef * (log pi - log pi_ref) from each transition's
    reward, see `kl_penalized_rewards`) or "k3_loss" (add kl_coef * k3 per token to the loss; needs
    `ref_token_logprobs` in the buffer). max_grad_norm: global-norm clipping in the optimizer (0.01).
    epochs / minibatch_size: passes over the buffer and transitions per gradient step; microbatches: each
    minibatch's gradient accumulated over that many microbatches (activations of minibatch_size / microbatches
    transitions at a time; the same gradient, `rl.update.minibatch_update`; not with advantage_normalization
    "minibatch", whose statistics span the minibatch). learning_rate,
    final_learning_rate, adam_eps: Adam with cosine decay from 1e-6 to 1e-9 over the run, eps 1e-7.
    answer_key_weight: weight of the tokens before the answer key in the sequence log-prob (reference 0.5, a
    legacy coefficient; 1.0 = the true log-prob); used by `answer_key_token_weights`.
    max_log_ratio: the sequence log-ratio is clamped to +-max_log_ratio before exp (a long response's log-ratio
    can be large; an unclamped exp overflows to inf and the gradient to NaN). value_loss_trains_trunk: True (the
    reference) lets the value loss's gradient reach the shared transformer; False stops it at the value head's
    input (`rl.rollout.transition_policy`'s detach_value_input), so only the policy loss moves the trunk and the
    critic is a head on the policy's features: the ablation that separates what the critic's regression does to
    the policy from what the policy gradient does. value_lr_scale: the value head's updates are multiplied by it
    (its learning rate is value_lr_scale x the policy's, along the same cosine); a head initialised from random
    learns nothing in a short run at a policy's learning rate (docs/miniature.md), separate critics usually get a
    larger rate. skip_padding: each epoch's minibatches are drawn from the valid transitions only (an episode
    that ends early leaves padded ones, which a plain minibatch computes and masks out), as the reference's
    buffer of real transitions: ceil(n_valid / minibatch_size) gradient steps per epoch instead of
    N / minibatch_size (`rl.update.minibatch_update`'s `valid`); the run loop keeps the cosine where the plain
    update would leave it (`advance_schedule`). Default False, the plain minibatches. episode_rows: the buffer's
    items are conversation rows, not transitions: each row's whole conversation (prompt, K responses and
    feedback turns, as the rollout's cache holds it) is one training sequence, and one forward scores all its K
    transitions (the causal mask shows each response exactly its transition's context), where per-transition
    rows repeat the context for every turn: up to K x fewer tokens through the model. The loss of each transition
    is the same; minibatches then hold whole conversations, and minibatch_size / microbatches count rows
    (episodes), not transitions. Default False (the reference's buffer of transitions).
    """

    clip_eps: float = 0.1
    value_clip_eps: float | None = 0.1
    vf_coef: float = 0.5
    advantage_normalization: AdvantageNormalization = "buffer"
    advantage_eps: float = 1e-5
    entropy_coef: float = 0.0
    kl_mode: KLMode | None = None
    kl_coef: float = 0.0
    max_grad_norm: float = 0.01
    epochs: int = 4
    minibatch_size: int = 64
    microbatches: int = 1
    learning_rate: float = 1e-6
    final_learning_rate: float = 1e-9
    adam_eps: float = 1e-7
    answer_key_weight: float = 1.0
    max_log_ratio: float = 20.0
    gae: GAEConfig = GAEConfig()
    value_loss_trains_trunk: bool = True
    value_lr_scale: float = 1.0
    skip_padding: bool = False
    episode_rows: bool = False

    def __post_init__(self):
        if self.advantage_normalization not in ("buffer", "minibatch", "none"):
            raise ValueError(f"PPOConfig.advantage_normalization must be 'buffer', 'minibatch' or 'none', got "
                             f"{self.advantage_normalization!r}.")
        if self.kl_mode not in (None, "k1_reward", "k3_loss"):
            raise ValueError(f"PPOConfig.kl_mode must be None, 'k1_reward' or 'k3_loss', got {self.kl_mode!r}.")
        if self.clip_eps <= 0 or (self.value_clip_eps is not None and self.value_clip_eps <= 0):
            raise ValueError("PPOConfig.clip_eps and value_clip_eps must be positive (value_clip_eps may be None).")
        if not 0.0 < self.final_learning_rate <= self.learning_rate:
            raise ValueError(f"PPOConfig needs 0 < final_learning_rate <= learning_rate, got "
                             f"{self.final_learning_rate} and {self.learning_rate}.")
        if self.value_lr_scale <= 0:
            raise ValueError(f"PPOConfig.value_lr_scale must be positive, got {self.value_lr_scale}.")
        if self.epochs < 1 or self.minibatch_size < 1:
            raise ValueError(f"PPOConfig.epochs and minibatch_size must be at least 1, got {self.epochs}, "
                             f"{self.minibatch_size}.")
        check_microbatches("PPOConfig", self.minibatch_size, self.microbatches)
        if self.microbatches > 1 and self.advantage_normalization == "minibatch":
            raise ValueError("PPOConfig: advantage_normalization='minibatch' needs the whole minibatch at once; use "
                             "'buffer' (the reference) or microbatches=1.")


def sequence_logprob(token_logprobs: jax.Array, response_mask: jax.Array,
                     token_weights: jax.Array | None = None) -> jax.Array:
    """(N,) log-prob of each whole response: the (weighted) sum of its (N, S) token log-probs under the mask."""
    weighted = token_logprobs if token_weights is None else token_logprobs * token_weights
    return jnp.sum(jnp.where(response_mask, weighted, 0.0), axis=-1)


def answer_key_token_weights(answer_start: jax.Array, response_mask: jax.Array, weight: float) -> jax.Array:
    """(N, S) float32 weights: `weight` for response positions before `answer_start` (N,), 1 from there on, 0 off
    the mask. The caller finds answer_start (the first token of the answer key, e.g. "formula"/"action", S if
    absent) from its own token ids; this function only does the arithmetic."""
    positions = jnp.arange(response_mask.shape[-1])[None, :]
    weights = jnp.where(positions < jnp.asarray(answer_start)[:, None], weight, 1.0)
    return jnp.where(response_mask, weights, 0.0).astype(jnp.float32)


def kl_penalized_rewards(rewards: jax.Array, seq_logprob: jax.Array, ref_seq_logprob: jax.Array,
                         kl_coef: float, valid: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """k1 KL shaping in the reward: r - kl_coef * (log pi(a|s) - log pi_ref(a|s)) per transition (any shape, e.g.
    (B, T)), before GAE. Returns the shaped rewards and {"kl_k1": mean k1 over valid transitions}."""
    kl = seq_logprob - ref_seq_logprob
    valid = jnp.ones(jnp.shape(rewards), bool) if valid is None else valid
    shaped = jnp.where(valid, rewards - kl_coef * kl, rewards)
    return shaped, {"kl_k1": masked_mean(kl, valid)}


def k3_kl(logprobs: jax.Array, ref_logprobs: jax.Array) -> jax.Array:
    """Per-entry k3 estimate of KL(pi || pi_ref) = exp(ref - logp) - (ref - logp) - 1 >= 0, from samples of pi.
    The log-ratio is clamped to [-20, 20] and the estimate to at most 10 (as verl's "low_var_kl")."""
    log_ratio = jnp.clip(ref_logprobs - logprobs, -20.0, 20.0)
    return jnp.minimum(jnp.exp(log_ratio) - log_ratio - 1.0, 10.0)


def explained_variance(predictions: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """1 - Var(targets - predictions) / Var(targets) over the mask; 0 when the targets do not vary."""
    target_var = masked_var(targets, mask)
    residual_var = masked_var(targets - predictions, mask)
    return jnp.where(target_var > 0, 1.0 - residual_var / jnp.where(target_var > 0, target_var, 1.0), 0.0)


def ppo_loss(new_token_logprobs: jax.Array, old_seq_logprob: jax.Array, advantages: jax.Array,
             new_values: jax.Array, old_values: jax.Array, returns: jax.Array, response_mask: jax.Array,
             valid: jax.Array, config: PPOConfig, *, token_weights: jax.Array | None = None,
             entropy: jax.Array | None = None, ref_token_logprobs: jax.Array | None = None,
             totals: Mapping[str, jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The PPO loss of one minibatch of N transitions, and its metrics.

    new_token_logprobs (N, S): the current policy's token log-probs of the sampled responses; old_seq_logprob
    (N,): the rollout policy's sequence log-probs (same weights); advantages, new_values, old_values, returns
    (N,); response_mask (N, S); valid (N,); token_weights (N, S) or None; entropy (N, S) per-token entropy or
    None; ref_token_logprobs (N, S), needed for kl_mode "k3_loss".

    loss = policy_loss + vf_coef * value_loss - entropy_coef * entropy + [kl_coef * k3]
    policy_loss = -mean(min(rho * A, clip(rho, 1 - eps, 1 + eps) * A)), rho = exp(log pi - log pi_old) per
    sequence; value_loss = 0.5 * mean(max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)).
    totals (`ppo_totals` of a larger minibatch these N transitions are a microbatch of): every mean divides by
    the minibatch's counts, so the loss and metrics are this part's shares of the minibatch's and add up over its
    parts (explained_variance: the part's own, weighted by its share of the valid transitions).
    """
    if entropy is None and config.entropy_coef != 0.0:
        raise ValueError("PPOConfig.entropy_coef is non-zero but no per-token entropy was given; make policy_fn "
                         "return it or set entropy_coef=0.")
    if config.kl_mode == "k3_loss" and ref_token_logprobs is None:
        raise ValueError("PPOConfig.kl_mode='k3_loss' needs reference token log-probs "
                         "(buffer key 'ref_token_logprobs', shape (N, S)).")
    valid = jnp.asarray(valid, bool)
    token_mask = jnp.logical_and(response_mask, valid[:, None])
    totals = ppo_totals({"valid": valid, "response_mask": response_mask}) if totals is None else totals

    def over_transitions(x):
        return masked_share(x, valid, totals["transitions"])

    def over_tokens(x):
        return masked_share(x, token_mask, totals["tokens"])
    advantages = jax.lax.stop_gradient(advantages)
    if config.advantage_normalization == "minibatch":
        advantages = masked_normalize(advantages, valid, eps=config.advantage_eps)

    new_seq_logprob = sequence_logprob(new_token_logprobs, response_mask, token_weights)
    log_ratio = jnp.clip(new_seq_logprob - old_seq_logprob, -config.max_log_ratio, config.max_log_ratio)
    ratio = jnp.exp(log_ratio)
    clipped_ratio = jnp.clip(ratio, 1.0 - config.clip_eps, 1.0 + config.clip_eps)
    surrogate = jnp.minimum(ratio * advantages, clipped_ratio * advantages)
    policy_loss = -over_transitions(surrogate)

    value_error = jnp.square(new_values - returns)
    if config.value_clip_eps is not None:
        clipped_values = old_values + jnp.clip(new_values - old_values, -config.value_clip_eps,
                                               config.value_clip_eps)
        value_error = jnp.maximum(value_error, jnp.square(clipped_values - returns))
    value_loss = 0.5 * over_transitions(value_error)

    loss = policy_loss + config.vf_coef * value_loss
    ratio_sg = jax.lax.stop_gradient(ratio)
    log_ratio_sg = jax.lax.stop_gradient(log_ratio)
    metrics = {
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "clip_fraction": over_transitions(jnp.abs(ratio_sg - 1.0) > config.clip_eps),
        # Schulman's k3 estimate of KL(pi_old || pi) on the sequence ratio: E[(rho - 1) - log rho].
        "approx_kl": over_transitions((ratio_sg - 1.0) - log_ratio_sg),
        "ratio": over_transitions(ratio_sg),
        "explained_variance": explained_variance(jax.lax.stop_gradient(new_values), returns, valid)
        * (masked_count(valid) / jnp.maximum(totals["transitions"], 1.0)),
        "value_mean": over_transitions(jax.lax.stop_gradient(new_values)),
        "transitions": masked_count(valid),
    }
    if entropy is not None:
        mean_entropy = over_tokens(entropy)
        loss = loss - config.entropy_coef * mean_entropy
        metrics["entropy"] = jax.lax.stop_gradient(mean_entropy)

    if config.kl_mode == "k3_loss":
        kl = over_tokens(k3_kl(new_token_logprobs, ref_token_logprobs))
        loss = loss + config.kl_coef * kl
        metrics["kl_k3"] = jax.lax.stop_gradient(kl)
    return loss, metrics


def ppo_totals(minibatch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """The counts `ppo_loss`'s means divide by: valid transitions and their response tokens (transitions (n,)
    or conversation rows (m, K))."""
    valid = jnp.asarray(minibatch["valid"], bool)
    return {"transitions": masked_count(valid),
            "tokens": masked_count(jnp.logical_and(minibatch["response_mask"], valid[..., None]))}


def normalize_buffer_advantages(advantages: jax.Array, valid: jax.Array, config: PPOConfig) -> jax.Array:
    """Buffer-level normalisation (the reference's choice: Bessel-corrected std + eps) when the config asks for it."""
    if config.advantage_normalization != "buffer":
        return advantages
    return masked_normalize(advantages, valid, eps=config.advantage_eps)


def ppo_optimizer(config: PPOConfig, total_steps: int) -> optax.GradientTransformation:
    """The paper's optimizer: global-norm clipping to max_grad_norm, then Adam (eps adam_eps) at learning_rate,
    then a cosine factor decaying from 1 to final_learning_rate / learning_rate over `total_steps` optimizer steps
    (one per minibatch; see `optimizer_steps_per_update`).

    The peak learning rate is `inject_hyperparams` state, not a constant of the compiled program: read it with
    `peak_learning_rate(opt_state)` and change it with `with_peak_learning_rate(opt_state, lr)` (a sweep can
    even vmap an update over learning rates) without retracing. The cosine's horizon and final fraction are state
    too (`scale_by_cosine`; `with_schedule` sets all three), so runs of different lengths share one compiled
    update; `learning_rate(opt_state)` is the rate the next step applies."""
    if total_steps < 1:
        raise ValueError(f"ppo_optimizer needs total_steps >= 1 optimizer steps, got {total_steps}.")
    # float32 hyperparameters whatever the params' dtype: inject_hyperparams would otherwise cast them to the
    # params' dtype, and in bf16 Adam's b2 0.999 rounds to 1.0 (its bias correction then divides by 0: NaN updates)
    # and a cosine horizon of thousands of steps loses its last digits
    transforms = [optax.clip_by_global_norm(config.max_grad_norm),
                  optax.inject_hyperparams(optax.adam, hyperparam_dtype=jnp.float32)(
                      learning_rate=config.learning_rate, eps=config.adam_eps),
                  optax.inject_hyperparams(scale_by_cosine, hyperparam_dtype=jnp.float32)(
                      total_steps=float(total_steps),
                      final_fraction=config.final_learning_rate / config.learning_rate)]
    if config.value_lr_scale != 1.0:  # only then: the default optimizer state keeps its structure (checkpoints)
        transforms.append(optax.masked(optax.scale(config.value_lr_scale),
                                       lambda params: {name: name == "value_head" for name in params}))
    return keep_dtypes(optax.chain(*transforms))  # bf16 params keep bf16 moments and updates (model.dtypes)


def scale_by_cosine(total_steps: float | jax.Array, final_fraction: float | jax.Array) -> optax.GradientTransformation:
    """Scale updates by optax.cosine_decay_schedule(1, total_steps, final_fraction) at the step count: a factor
    that falls along a cosine from 1 to final_fraction over total_steps steps, then stays. Written out (rather than
    optax.scale_by_schedule) so that, under `optax.inject_hyperparams`, both numbers are optimizer state and not
    constants of the compiled program."""

    def init_fn(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        del params
        factor = cosine_factor(state.count, total_steps, final_fraction)
        updates = jax.tree.map(lambda u: (factor * u).astype(u.dtype), updates)
        return updates, optax.ScaleByScheduleState(count=optax.safe_int32_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def cosine_factor(count: jax.Array, total_steps: float | jax.Array, final_fraction: float | jax.Array) -> jax.Array:
    """optax.cosine_decay_schedule(1, total_steps, final_fraction) at step `count`, with both numbers traceable."""
    horizon = jnp.asarray(total_steps, jnp.float32)
    fraction = jnp.minimum(jnp.asarray(count).astype(jnp.float32), horizon) / horizon
    return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + jnp.cos(jnp.pi * fraction))


_ADAM_INDEX, _COSINE_INDEX = 1, 2  # positions of the injected Adam and cosine in ppo_optimizer's chain


def peak_learning_rate(opt_state: Any) -> jax.Array:
    """The (undecayed) learning rate held in a `ppo_optimizer` state."""
    return opt_state[_ADAM_INDEX].hyperparams["learning_rate"]


def learning_rate(opt_state: Any) -> jax.Array:
    """The learning rate the next step of a `ppo_optimizer` state applies to the policy: its peak learning rate
    times its cosine factor at its step count (read from the state, so it is what the optimizer does)."""
    cosine = opt_state[_COSINE_INDEX]
    return peak_learning_rate(opt_state) * cosine_factor(cosine.inner_state.count, cosine.hyperparams["total_steps"],
                                                         cosine.hyperparams["final_fraction"])


def with_schedule(opt_state: Any, *, learning_rate: float | jax.Array | None = None,
                  total_steps: float | jax.Array | None = None,
                  final_fraction: float | jax.Array | None = None) -> Any:
    """A copy of a `ppo_optimizer` state with the given peak learning rate, cosine horizon (optimizer steps) and
    final fraction of the peak; None keeps a value, and the Adam moments and step counts are kept. The state's
    hyperparams are arrays, so a compiled update serves every schedule (a fresh state's come from the config its
    optimizer was built with: runs that share a compiled program set their own here)."""
    def replaced(state, **values):
        values = {name: jnp.asarray(value, state.hyperparams[name].dtype)
                  for name, value in values.items() if value is not None}
        return state._replace(hyperparams=dict(state.hyperparams, **values))

    states = list(opt_state)  # optax.chain's state is a plain tuple
    states[_ADAM_INDEX] = replaced(states[_ADAM_INDEX], learning_rate=learning_rate)
    states[_COSINE_INDEX] = replaced(states[_COSINE_INDEX], total_steps=total_steps, final_fraction=final_fraction)
    return tuple(states)


def advance_schedule(opt_state: Any, steps: int | jax.Array) -> Any:
    """A copy of a `ppo_optimizer` state whose cosine has moved on by `steps` optimizer steps that were not taken
    (an update that skipped the padding, `PPOConfig.skip_padding`): the schedule then stands where the plain
    update would have left it, so the run's learning rates do not depend on how many transitions were padding.
    Adam's moments and step count (its bias correction) are the steps really taken, and stay."""
    states = list(opt_state)
    cosine = states[_COSINE_INDEX]
    count = cosine.inner_state.count
    states[_COSINE_INDEX] = cosine._replace(inner_state=cosine.inner_state._replace(
        count=(count + jnp.asarray(steps, count.dtype)).astype(count.dtype)))
    return tuple(states)


def with_peak_learning_rate(opt_state: Any, learning_rate: float | jax.Array) -> Any:
    """A copy of a `ppo_optimizer` state whose peak learning rate is `learning_rate` (the cosine factor and the
    Adam moments are kept)."""
    return with_schedule(opt_state, learning_rate=learning_rate)


def optimizer_steps_per_update(num_items: int, config: PPOConfig) -> int:
    """Gradient steps that one plain update over a buffer of `num_items` (transitions, or conversation rows with
    `episode_rows`) takes: epochs x minibatches (the config: a PPOConfig, or anything with `epochs` and
    `minibatch_size`, e.g. a GRPOConfig); with `skip_padding`, the steps an update would take were every item
    valid."""
    return config.epochs * (num_items // config.minibatch_size)


PolicyFn = Callable[[Any, Any], tuple[jax.Array, jax.Array, jax.Array | None]]

REQUIRED_BUFFER_KEYS = ("old_logprob", "advantages", "returns", "old_values", "response_mask", "valid")
LOSS_KEYS = REQUIRED_BUFFER_KEYS + ("token_weights", "ref_token_logprobs")


def ppo_update(train_state: TrainState, buffer: dict[str, Any], rng: jax.Array, *, policy_fn: PolicyFn,
               optimizer: optax.GradientTransformation, config: PPOConfig,
               critic_only: bool = False) -> tuple[TrainState, dict[str, jax.Array]]:
    """One PPO update: `config.epochs` passes of shuffled minibatches of `config.minibatch_size` transitions.

    buffer: a dict of arrays with leading axis N: "old_logprob" (N,) sequence log-probs at rollout time,
    "advantages" (N,) (raw GAE; normalised here per the config), "returns" (N,), "old_values" (N,),
    "response_mask" (N, S), "valid" (N,) bool, optionally "token_weights" (N, S) and "ref_token_logprobs" (N, S),
    plus whatever `policy_fn` reads (token ids, attention masks, pixel values ...).
    policy_fn(params, minibatch) -> (token_logprobs (n, S), values (n,), entropy (n, S) or None) for a minibatch
    of n = minibatch_size transitions. Jit with policy_fn, optimizer, config and critic_only static.
    Conversation rows (`episode_rows`; `rl.update.holds_rows`): the per-transition keys are (N, K, ...) and
    policy_fn's outputs (m, K, ...) for m rows; the loss sees the m * K transitions (`rl.update.as_transitions`).
    critic_only: the loss is vf_coef x the value loss alone (a critic warm-up: the value head learns on the
    policy's rollouts while the policy stays as it is); give it a policy_fn whose value head reads its input
    through a stop-gradient (`transition_policy(detach_value_input=True)`), so that every other param gets a zero
    gradient and, under Adam, a zero update. The metrics are the full loss's (policy_loss etc. as if trained).
    """
    missing = [key for key in REQUIRED_BUFFER_KEYS if key not in buffer]
    if missing:
        raise ValueError(f"the PPO buffer lacks {missing}; build it with these keys: {list(REQUIRED_BUFFER_KEYS)}.")
    buffer_size(buffer)
    buffer = dict(buffer, advantages=normalize_buffer_advantages(buffer["advantages"], buffer["valid"], config))

    rows = holds_rows(buffer)

    def loss_fn(params, minibatch, totals):
        token_logprobs, values, entropy = as_transitions(policy_fn(params, minibatch), rows)
        batch = as_transitions({key: minibatch[key] for key in LOSS_KEYS if key in minibatch}, rows)
        loss, metrics = ppo_loss(token_logprobs, batch["old_logprob"], batch["advantages"], values,
                                 batch["old_values"], batch["returns"], batch["response_mask"], batch["valid"], config,
                                 token_weights=batch.get("token_weights"), entropy=entropy,
                                 ref_token_logprobs=batch.get("ref_token_logprobs"), totals=totals)
        if critic_only:
            loss = config.vf_coef * metrics["value_loss"]
        return loss, metrics

    return minibatch_update(train_state, buffer, rng, loss_fn=loss_fn, optimizer=optimizer, epochs=config.epochs,
                            minibatch_size=config.minibatch_size, microbatches=config.microbatches,
                            totals_fn=ppo_totals, valid=buffer["valid"] if config.skip_padding else None)
