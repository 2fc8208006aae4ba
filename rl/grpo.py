"""GRPO: critic-free policy optimisation with group-normalised outcome rewards (the RL of "Quagmires in SFT-RL
Post-Training"), with the Dr. GRPO variant.

Axes: G groups (prompts), n responses per group (the group size), N = G * n flattened responses (row-major:
response j of group g is row g * n + j), S response tokens (padded; `response_mask` marks the model's tokens).

    A_gj = (r_gj - mean_j r_g) / (std_j r_g + eps)        (std Bessel-corrected, as verl/TRL)
    Dr. GRPO: A_gj = r_gj - mean_j r_g,  and the token loss is summed per sequence and divided by a constant
    rho_t = exp(log pi(o_t) - log pi_old(o_t)) per token; per-token loss -min(rho_t A, clip(rho_t) A) + beta k3_t
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Literal, Mapping

import jax
import jax.numpy as jnp
import optax

from rl.masked import masked_count, masked_share
from rl.ppo import k3_kl, sequence_logprob
from rl.update import TrainState, as_transitions, check_microbatches, holds_rows, minibatch_update

Aggregation = Literal["token_mean", "sequence_mean", "token_sum_norm"]


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """GRPO hyperparameters.

    group_size: responses per prompt (n >= 2). eps: added to the group std (verl 1e-6; TRL 1e-4).
    dr_grpo: Dr. GRPO (no std division, no per-sequence length normalisation: aggregation "token_sum_norm").
    aggregation: how per-token losses become one number: "token_mean" (all tokens of the minibatch weigh the same;
    verl's default, TRL's "dapo"), "sequence_mean" (mean over each response's tokens, then over responses: the
    original GRPO), "token_sum_norm" (sum over all tokens / (responses * norm_length): Dr. GRPO, TRL "dr_grpo").
    None = "token_mean", or "token_sum_norm" under dr_grpo. norm_length: the constant of "token_sum_norm"; None
    = the padded response length S. clip_eps / clip_eps_high: the ratio clip range [1 - clip_eps,
    1 + clip_eps_high] (clip_eps_high None = clip_eps; DAPO raises it). kl_coef: weight of the per-token k3 KL
    to a reference policy (needs reference log-probs; 0 = off, as verl/TRL). epochs / minibatch_size: passes and
    responses per gradient step of `grpo_update`; microbatches: each minibatch's gradient accumulated over that
    many microbatches (the same gradient, `rl.update.minibatch_update`). skip_padding: minibatches drawn from the
    buffer's valid transitions only, as `PPOConfig.skip_padding` (needs the buffer's "valid"; "token_sum_norm"
    then divides by rows that are almost all real responses). episode_rows: the buffer's items are conversation
    rows scored by one forward each, as `PPOConfig.episode_rows` (minibatch_size then counts episodes).
    """

    group_size: int = 8
    eps: float = 1e-6
    dr_grpo: bool = False
    aggregation: Aggregation | None = None
    norm_length: int | None = None
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    kl_coef: float = 0.0
    epochs: int = 1
    minibatch_size: int = 64
    microbatches: int = 1
    skip_padding: bool = False
    episode_rows: bool = False

    def __post_init__(self):
        if self.aggregation not in (None, "token_mean", "sequence_mean", "token_sum_norm"):
            raise ValueError(f"GRPOConfig.aggregation must be 'token_mean', 'sequence_mean', 'token_sum_norm' or "
                             f"None, got {self.aggregation!r}.")
        if self.dr_grpo and self.aggregation == "sequence_mean":
            raise ValueError("GRPOConfig: dr_grpo removes the per-sequence length normalisation, so it cannot use "
                             "aggregation='sequence_mean'; leave aggregation None or pick another.")
        check_microbatches("GRPOConfig", self.minibatch_size, self.microbatches)
        if self.group_size < 2 and not self.dr_grpo:
            raise ValueError(f"GRPOConfig.group_size must be at least 2 for a group std, got {self.group_size}.")

    @property
    def loss_aggregation(self) -> Aggregation:
        if self.aggregation is not None:
            return self.aggregation
        return "token_sum_norm" if self.dr_grpo else "token_mean"


def group_advantages(rewards: jax.Array, config: GRPOConfig) -> jax.Array:
    """(G, n) advantages from (G, n) rewards: centred by the group mean, and divided by the group's
    Bessel-corrected std + eps unless dr_grpo. A group whose rewards are all equal gets advantages 0."""
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim != 2 or rewards.shape[1] != config.group_size:
        raise ValueError(f"group_advantages expects rewards of shape (groups, group_size={config.group_size}), got "
                         f"{rewards.shape}; reshape them to (-1, group_size) or set GRPOConfig.group_size.")
    centred = rewards - jnp.mean(rewards, axis=1, keepdims=True)
    if config.dr_grpo:
        return centred
    return centred / (jnp.std(rewards, axis=1, ddof=1, keepdims=True) + config.eps)


def grpo_totals(minibatch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """The counts `grpo_loss`'s means divide by: response tokens, responses with tokens, responses (rows; of a
    minibatch of responses (n, S) or of conversation rows (m, K, S))."""
    token_mask = jnp.asarray(minibatch["response_mask"], bool)
    return {"tokens": masked_count(token_mask), "sequences": masked_count(jnp.any(token_mask, axis=-1)),
            "rows": jnp.asarray(math.prod(token_mask.shape[:-1]), jnp.float32)}


def aggregate_token_loss(token_loss: jax.Array, token_mask: jax.Array, config: GRPOConfig,
                         totals: Mapping[str, jax.Array] | None = None) -> jax.Array:
    """One scalar from (N, S) per-token losses under the (N, S) mask, per config.loss_aggregation; with `totals`
    (`grpo_totals` of the minibatch these rows are part of) this part's share of the minibatch's."""
    totals = grpo_totals({"response_mask": token_mask}) if totals is None else totals
    token_loss = jnp.where(token_mask, token_loss, 0.0)
    mode = config.loss_aggregation
    if mode == "token_mean":
        return jnp.sum(token_loss) / jnp.maximum(totals["tokens"], 1.0)
    if mode == "sequence_mean":
        lengths = jnp.sum(jnp.asarray(token_mask, jnp.float32), axis=-1)
        per_sequence = jnp.sum(token_loss, axis=-1) / jnp.maximum(lengths, 1.0)
        return masked_share(per_sequence, lengths > 0, totals["sequences"])
    norm_length = token_loss.shape[-1] if config.norm_length is None else config.norm_length
    return jnp.sum(token_loss) / (totals["rows"] * norm_length)


def _sequence_k3(token_log_ratio: jax.Array, token_mask: jax.Array, sequences: jax.Array) -> jax.Array:
    """Mean over responses with tokens (`sequences` of them) of (rho - 1) - log rho, rho = exp(sum of the
    response's token log-ratios, clamped to +-20 as PPO's)."""
    log_ratio = jnp.clip(sequence_logprob(token_log_ratio, token_mask), -20.0, 20.0)
    return masked_share(jnp.exp(log_ratio) - 1.0 - log_ratio, jnp.any(token_mask, axis=-1), sequences)


def grpo_loss(new_token_logprobs: jax.Array, old_token_logprobs: jax.Array, advantages: jax.Array,
              response_mask: jax.Array, config: GRPOConfig, *, ref_token_logprobs: jax.Array | None = None,
              totals: Mapping[str, jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The GRPO loss of N responses and its metrics.

    new_token_logprobs, old_token_logprobs (N, S): current and sampling-time token log-probs; advantages (N,)
    (from `group_advantages`, flattened); response_mask (N, S); ref_token_logprobs (N, S), needed when kl_coef > 0.
    totals (`grpo_totals` of a larger minibatch these N responses are a microbatch of): the loss and metrics are
    this part's shares of the minibatch's, which add up over its parts.
    """
    if config.kl_coef != 0.0 and ref_token_logprobs is None:
        raise ValueError("GRPOConfig.kl_coef is non-zero but no reference token log-probs were given "
                         "(buffer key 'ref_token_logprobs', shape (N, S)).")
    token_mask = jnp.asarray(response_mask, bool)
    totals = grpo_totals({"response_mask": token_mask}) if totals is None else totals

    def over_tokens(x):
        return masked_share(x, token_mask, totals["tokens"])

    advantages = jax.lax.stop_gradient(advantages)[:, None]
    log_ratio = jnp.clip(new_token_logprobs - old_token_logprobs, -20.0, 20.0)
    ratio = jnp.exp(log_ratio)
    clip_high = config.clip_eps if config.clip_eps_high is None else config.clip_eps_high
    clipped_ratio = jnp.clip(ratio, 1.0 - config.clip_eps, 1.0 + clip_high)
    policy_token_loss = -jnp.minimum(ratio * advantages, clipped_ratio * advantages)
    policy_loss = aggregate_token_loss(policy_token_loss, token_mask, config, totals)
    loss = policy_loss

    ratio_sg = jax.lax.stop_gradient(ratio)
    metrics = {
        "policy_loss": policy_loss,
        "clip_fraction": over_tokens((ratio_sg < 1.0 - config.clip_eps) | (ratio_sg > 1.0 + clip_high)),
        "approx_kl": over_tokens((ratio_sg - 1.0) - jax.lax.stop_gradient(log_ratio)),
        # PPO's approx_kl (k3 of the whole response's ratio, rl.ppo): a response's log-ratio is the sum of its
        # tokens', so the token-level number above is ~response-length times smaller for the same change
        "sequence_approx_kl": _sequence_k3(jax.lax.stop_gradient(log_ratio), token_mask, totals["sequences"]),
        "ratio": over_tokens(ratio_sg),
        "response_tokens": masked_count(token_mask),
    }
    if config.kl_coef != 0.0:
        kl_tokens = k3_kl(new_token_logprobs, ref_token_logprobs)
        kl_loss = aggregate_token_loss(kl_tokens, token_mask, config, totals)
        loss = loss + config.kl_coef * kl_loss
        metrics["kl_k3"] = jax.lax.stop_gradient(over_tokens(kl_tokens))
    return loss, metrics


TokenLogprobFn = Callable[[Any, Any], jax.Array]

REQUIRED_BUFFER_KEYS = ("old_token_logprobs", "advantages", "response_mask")
LOSS_KEYS = REQUIRED_BUFFER_KEYS + ("ref_token_logprobs",)


def grpo_update(train_state: TrainState, buffer: dict[str, Any], rng: jax.Array, *, logprob_fn: TokenLogprobFn,
                optimizer: optax.GradientTransformation,
                config: GRPOConfig) -> tuple[TrainState, dict[str, jax.Array]]:
    """One GRPO update: config.epochs passes of shuffled minibatches of config.minibatch_size responses.

    buffer: dict with leading axis N: "old_token_logprobs" (N, S), "advantages" (N,) (group_advantages,
    flattened), "response_mask" (N, S), optionally "ref_token_logprobs" (N, S) and "valid" (N,) (needed with
    config.skip_padding), plus what `logprob_fn` reads.
    logprob_fn(params, minibatch) -> token_logprobs (n, S). Conversation rows (`episode_rows`): per-transition
    keys (N, K, ...), logprob_fn's output (m, K, S), flattened for the loss as in `rl.ppo_update`. Jit with
    logprob_fn, optimizer and config static.
    """
    required = REQUIRED_BUFFER_KEYS + (("valid",) if config.skip_padding else ())
    missing = [key for key in required if key not in buffer]
    if missing:
        raise ValueError(f"the GRPO buffer lacks {missing}; build it with these keys: {list(required)}.")

    rows = holds_rows(buffer)

    def loss_fn(params, minibatch, totals):
        batch = as_transitions({key: minibatch[key] for key in LOSS_KEYS if key in minibatch}, rows)
        return grpo_loss(as_transitions(logprob_fn(params, minibatch), rows), batch["old_token_logprobs"],
                         batch["advantages"], batch["response_mask"], config,
                         ref_token_logprobs=batch.get("ref_token_logprobs"), totals=totals)

    return minibatch_update(train_state, buffer, rng, loss_fn=loss_fn, optimizer=optimizer, epochs=config.epochs,
                            minibatch_size=config.minibatch_size, microbatches=config.microbatches,
                            totals_fn=grpo_totals, valid=buffer["valid"] if config.skip_padding else None)
