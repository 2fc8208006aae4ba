"""Benchmark of one PPO update (rl.ppo_update with rl.rollout.transition_policy, the update `memgen rl` runs) and
the same update in transformers + torch, on the same weights, the same buffer and the same minibatches.

The buffer: B episodes x K verification steps = N transitions, text only; each transition is a prompt of C tokens
(bos + random tokens) and a response of S token slots (a random length between S/2 and S, padded), GeneralPoints-
like rewards (-1 per wrong answer, +5 or -1 at the last step, done there), GAE (gamma 0.9, lambda 0.95) through
rl.buffer.ppo_buffer_from_transitions. The rollout-time log-probs and values are the policy's own (one forward
of memgen's policy_fn at the initial params) plus a little noise (so some ratios and value changes are clipped),
and the tokens before a random answer-key position weigh 0.5 (the reference's answer_key_weight).

The update: the paper's PPO settings (launch.rl_config.PAPER_PPO: clip 0.1, value clip 0.1, value coefficient
0.5, buffer-level advantage normalisation, grad-norm clip 0.01, Adam lr 1e-6 eps 1e-7 with cosine decay to 1e-9,
4 epochs) except the minibatch size, which must divide N (the paper's 64 is larger than this buffer). memgen: the
jitted, donating `rl.ppo_update`, compiled ahead of time (compile seconds reported apart), median of --repeats
updates. Peer: `MllamaForConditionalGeneration.from_pretrained` on the weights `model.save_hf` wrote, a torch
value head of the same shape with the same weights (D -> 256 -> ReLU -> 128 -> ReLU -> 1 for `small`, on the
hidden state after the final norm at the last prompt token), the same clipped PPO loss (policy + 0.5 x clipped
value loss), the same answer-key weights, torch.nn.utils.clip_grad_norm_ + torch.optim.Adam with the same
cosine factor (LambdaLR), over the same minibatch indices (rl.update.minibatch_indices of the same key). Both
first-minibatch losses are reported (memgen's from rl.ppo.ppo_loss on its policy_fn's output at the initial
params) as the check that both do the same work; so is each update's mean loss.

`--early-end F`: a share F of the episodes end after their first transition (+5, done), leaving K - 1 padded
transitions each (valid False, no response token), as a rollout whose episodes succeed early does. With
`--skip-padding` memgen runs PPOConfig.skip_padding (minibatches of the valid transitions only) and the peer is
given the same minibatches (rl.update.valid_first_orders of the same key, ceil(valid / minibatch) per epoch).

Train tokens/s = epochs x N x (C + S) / update seconds (the plain update's work, so that runs with and without
--skip-padding compare by their seconds). One JSON line. Examples:
  PYTHONPATH=. JAX_PLATFORMS=cpu python benchmarks/bench_ppo_update.py
  PYTHONPATH=. JAX_PLATFORMS=cpu python benchmarks/bench_ppo_update.py --preset tiny --episodes 2 --steps 2 \
      --prompt 16 --response 8 --minibatch 2 --repeats 1
  PYTHONPATH=. JAX_PLATFORMS=cpu python benchmarks/bench_ppo_update.py --minibatch 4 --early-end 0.5 --skip-padding
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import model
from launch.rl_config import PAPER_PPO
from rl.buffer import answer_key_weights, ppo_buffer_from_transitions
from rl.compute import parameter_count
from rl.ppo import normalize_buffer_advantages, optimizer_steps_per_update, ppo_loss, ppo_optimizer, ppo_update
from rl.rollout import transition_policy
from rl.update import init_train_state, minibatch_indices, valid_first_orders

LOSS_RTOL = 1e-3  # first-minibatch losses of memgen and the peer must agree this closely (fp32, same weights)


def make_transitions(config, episodes: int, steps: int, prompt: int, response: int, seed: int = 0,
                     early_end: float = 0.0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The (B, K, ...) transition arrays of rl.buffer.transition_arrays without the rollout-time log-probs and
    values (filled in by `rollout_policy_outputs`), and answer_start (B, K). A share `early_end` of the episodes
    ends at its first transition (the rest of its row padding)."""
    rng = np.random.default_rng(seed)
    text = config.text
    shape = (episodes, steps)
    context = rng.integers(0, text.vocab_size - 16, (*shape, prompt)).astype(np.int32)
    context[..., 0] = text.bos_token_id
    responses = rng.integers(0, text.vocab_size - 16, (*shape, response)).astype(np.int32)
    lengths = rng.integers(max(1, response // 2), response + 1, shape)
    response_mask = (np.arange(response) < lengths[..., None]).astype(np.int32)
    responses = np.where(response_mask == 1, responses, text.pad_token_id).astype(np.int32)
    rewards = np.full(shape, -1.0, np.float32)
    rewards[:, -1] = np.where(rng.random(episodes) < 0.5, 5.0, -1.0)
    dones = np.zeros(shape, bool)
    dones[:, -1] = True
    answer_start = rng.integers(0, lengths)
    valid = np.ones(shape, bool)
    early = rng.permutation(episodes)[:round(early_end * episodes)]
    rewards[early, 0], dones[early, 0], valid[early, 1:] = 5.0, True, False
    response_mask = np.where(valid[..., None], response_mask, 0).astype(np.int32)
    responses = np.where(response_mask == 1, responses, text.pad_token_id).astype(np.int32)
    rewards = np.where(valid, rewards, 0.0).astype(np.float32)
    dones &= valid
    return dict(context_ids=context, context_mask=np.ones((*shape, prompt), np.int32), response_ids=responses,
                response_mask=response_mask, rewards=rewards, dones=dones, valid=valid), answer_start


def build_buffer(config, params, policy_fn, ppo_config, episodes, steps, prompt, response, seed=0, early_end=0.0):
    """(the flat PPO buffer (N, ...), the token log-probs (N, S) and values (N,) of the initial params)."""
    transitions, answer_start = make_transitions(config, episodes, steps, prompt, response, seed, early_end)
    n = episodes * steps
    flat = {k: jnp.asarray(transitions[k].reshape(n, -1)) for k in
            ("context_ids", "context_mask", "response_ids", "response_mask")}
    token_logprobs, values, _ = jax.jit(policy_fn)(params, flat)
    token_logprobs, values = np.asarray(token_logprobs), np.asarray(values)
    rng = np.random.default_rng(seed + 1)
    transitions["old_token_logprobs"] = (token_logprobs + 0.01 * rng.standard_normal(token_logprobs.shape)
                                         ).astype(np.float32).reshape(episodes, steps, response)
    transitions["old_values"] = (values + 0.05 * rng.standard_normal(n)).astype(np.float32).reshape(episodes, steps)
    transitions = {k: jnp.asarray(v) for k, v in transitions.items()}
    weights = answer_key_weights(transitions["response_mask"], jnp.asarray(answer_start), ppo_config)
    buffer = ppo_buffer_from_transitions(transitions, jnp.zeros(episodes, jnp.float32), ppo_config,
                                         token_weights=weights)
    return buffer, token_logprobs, values


def memgen_first_loss(buffer, token_logprobs, values, indices, ppo_config) -> float:
    """rl.ppo.ppo_loss of the update's first minibatch at the initial params (the policy_fn output given)."""
    normalized = dict(buffer, advantages=normalize_buffer_advantages(buffer["advantages"], buffer["valid"],
                                                                     ppo_config))
    idx = np.asarray(indices[0, 0])
    mb = {k: np.asarray(v)[idx] for k, v in normalized.items()}
    loss, _ = ppo_loss(jnp.asarray(token_logprobs[idx]), mb["old_logprob"], mb["advantages"],
                       jnp.asarray(values[idx]), mb["old_values"], mb["returns"], mb["response_mask"], mb["valid"],
                       ppo_config, token_weights=mb.get("token_weights"))
    return float(loss)


def cosine_factor(step: int, total_steps: int, final_fraction: float) -> float:
    """rl.ppo.scale_by_cosine's factor at optimizer step `step` (0 = the first update)."""
    fraction = min(step, total_steps) / total_steps
    return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * fraction))


class TorchPPO:
    """The peer: transformers' Mllama + a torch value head + torch Adam, one PPO update per call."""

    def __init__(self, directory, config, params, ppo_config, total_steps, temperature):
        import torch
        import transformers

        self.torch = torch
        self.hf = transformers.MllamaForConditionalGeneration.from_pretrained(directory,
                                                                              dtype=torch.float32).train()
        head = params["value_head"]
        names = sorted((k for k in head if k.startswith("dense_")), key=lambda k: int(k.split("_")[1])) + ["output"]
        layers = []
        for i, name in enumerate(names):
            kernel = np.asarray(head[name]["kernel"], np.float32)
            linear = torch.nn.Linear(*kernel.shape)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(kernel.T.copy()))
                linear.bias.copy_(torch.from_numpy(np.array(head[name]["bias"], np.float32)))
            layers += [linear] if i == len(names) - 1 else [linear, torch.nn.ReLU()]
        self.value_head = torch.nn.Sequential(*layers).train()
        self.parameters = list(self.hf.parameters()) + list(self.value_head.parameters())
        self.config, self.ppo, self.temperature = config, ppo_config, temperature
        self.optimizer = torch.optim.Adam(self.parameters, lr=ppo_config.learning_rate, betas=(0.9, 0.999),
                                          eps=ppo_config.adam_eps)
        final = ppo_config.final_learning_rate / ppo_config.learning_rate
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: cosine_factor(step, total_steps, final))

    def loss(self, mb):
        torch, cfg = self.torch, self.ppo
        context, response = mb["context_ids"], mb["response_ids"]
        c = context.shape[1]
        ids = torch.cat([context, response], 1)
        mask = torch.cat([mb["context_mask"], mb["response_mask"]], 1)
        hidden = self.hf.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        logits = self.hf.lm_head(hidden[:, c - 1:-1]).float()
        scale = 1.0 if self.temperature == 0.0 else self.temperature
        logp = torch.log_softmax(logits / scale, -1).gather(-1, response.long()[..., None])[..., 0]
        values = self.value_head(hidden[:, c - 1].float())[..., 0]
        weights = mb.get("token_weights")
        weighted = logp if weights is None else logp * weights
        seq = torch.where(mb["response_mask"] != 0, weighted, torch.zeros_like(weighted)).sum(-1)
        valid = mb["valid"].float()
        count = valid.sum().clamp(min=1.0)
        ratio = torch.exp(torch.clamp(seq - mb["old_logprob"], -cfg.max_log_ratio, cfg.max_log_ratio))
        advantages = mb["advantages"]
        surrogate = torch.minimum(ratio * advantages, torch.clamp(ratio, 1 - cfg.clip_eps, 1 + cfg.clip_eps)
                                  * advantages)
        policy_loss = -(surrogate * valid).sum() / count
        error = (values - mb["returns"]) ** 2
        if cfg.value_clip_eps is not None:
            clipped = mb["old_values"] + torch.clamp(values - mb["old_values"], -cfg.value_clip_eps,
                                                     cfg.value_clip_eps)
            error = torch.maximum(error, (clipped - mb["returns"]) ** 2)
        value_loss = 0.5 * (error * valid).sum() / count
        return policy_loss + cfg.vf_coef * value_loss

    def update(self, buffer, indices) -> tuple[float, float]:
        """One update over indices (epochs, minibatches, minibatch_size); (first minibatch loss, mean loss)."""
        torch, cfg = self.torch, self.ppo
        data = {k: torch.from_numpy(np.array(v)) for k, v in buffer.items()}
        valid = data["valid"].bool()
        a = data["advantages"]
        if cfg.advantage_normalization == "buffer":  # Bessel std + eps over the valid transitions
            mean = a[valid].mean()
            std = torch.sqrt(((a[valid] - mean) ** 2).sum() / max(int(valid.sum()) - 1, 1))
            data["advantages"] = torch.where(valid, (a - mean) / (std + cfg.advantage_eps), torch.zeros_like(a))
        losses = []
        for epoch in np.asarray(indices):
            for idx in epoch:
                index = torch.from_numpy(idx.astype(np.int64))
                mb = {k: v[index] for k, v in data.items()}
                self.optimizer.zero_grad(set_to_none=True)
                loss = self.loss(mb)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.parameters, cfg.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                losses.append(float(loss.detach()))
        return losses[0], float(np.mean(losses))


def measure(preset: str = "small", episodes: int = 4, steps: int = 4, prompt: int = 128, response: int = 64,
            minibatch: int = 8, epochs: int | None = None, repeats: int = 2, temperature: float = 1.0,
            peer: bool = True, seed: int = 0, early_end: float = 0.0, skip_padding: bool = False) -> dict:
    """Time memgen's PPO update (compile apart) and, with `peer`, the transformers + torch one; one dict."""
    config = model.preset(preset)
    ppo_config = dataclasses.replace(PAPER_PPO, minibatch_size=minibatch, skip_padding=skip_padding,
                                     **({} if epochs is None else {"epochs": epochs}))
    n = episodes * steps
    if n % minibatch:
        raise ValueError(f"the buffer's {n} transitions are not a multiple of the minibatch size {minibatch}.")
    params = model.init_params(jax.random.key(seed), config, value_head=True)
    policy_fn = functools.partial(transition_policy, config=config, temperature=temperature)
    buffer, token_logprobs, values = build_buffer(config, params, policy_fn, ppo_config, episodes, steps, prompt,
                                                  response, seed, early_end)
    steps_per_update = optimizer_steps_per_update(n, ppo_config)
    total_steps = steps_per_update * (repeats + 1)
    rngs = [jax.random.key(seed + 100 + r) for r in range(repeats + 1)]
    indices = [np.asarray(minibatch_indices(rng, n, epochs=ppo_config.epochs, minibatch_size=minibatch))
               for rng in rngs]
    valid_transitions = int(np.asarray(buffer["valid"]).sum())
    if skip_padding:  # the minibatches memgen's update takes: valid first, ceil(valid / minibatch) per epoch
        taken = -(-valid_transitions // minibatch)
        indices = [np.asarray(valid_first_orders(rng, buffer["valid"], epochs=ppo_config.epochs)).reshape(
            ppo_config.epochs, -1, minibatch)[:, :taken] for rng in rngs]
        steps_per_update = ppo_config.epochs * taken
    train_tokens = ppo_config.epochs * n * (prompt + response)
    result = dict(benchmark="ppo_update", preset=preset, episodes=episodes, steps=steps, transitions=n,
                  prompt_tokens=prompt, response_tokens=response, images=0, minibatch_size=minibatch,
                  epochs=ppo_config.epochs, optimizer_steps=steps_per_update, train_tokens=train_tokens,
                  valid_transitions=valid_transitions, skip_padding=skip_padding,
                  response_tokens_in_buffer=int(np.asarray(buffer["response_mask"]).sum()),
                  num_params=parameter_count(params), device=jax.devices()[0].device_kind, repeats=repeats,
                  memgen_first_loss=round(memgen_first_loss(buffer, token_logprobs, values, indices[0], ppo_config),
                                          6))

    if peer:
        import torch
        import transformers
        with tempfile.TemporaryDirectory() as directory:
            model.save_hf(directory, config, params)
            theirs = TorchPPO(directory, config, params, ppo_config, total_steps, temperature)
        times, means = [], []
        for r in range(repeats + 1):
            start = time.perf_counter()
            first, mean = theirs.update(buffer, indices[r])
            times.append(time.perf_counter() - start)
            means.append(mean)
            if r == 0:
                result["transformers_first_loss"] = round(first, 6)
        seconds = statistics.median(times[1:]) if repeats else times[0]
        result.update(transformers_first_update_s=round(times[0], 3), transformers_update_s=round(seconds, 4),
                      transformers_best_update_s=round(min(times[1:] or times), 4),
                      transformers_update_times_s=[round(t, 3) for t in times],
                      transformers_tokens_per_s=round(train_tokens / seconds, 1),
                      transformers_mean_losses=[round(m, 6) for m in means], transformers=transformers.__version__,
                      torch=torch.__version__, torch_threads=torch.get_num_threads())
        gap = abs(result["transformers_first_loss"] - result["memgen_first_loss"])
        result["first_loss_abs_diff"] = gap
        result["losses_agree"] = bool(gap <= LOSS_RTOL * max(1.0, abs(result["memgen_first_loss"])))

    optimizer = ppo_optimizer(ppo_config, total_steps)
    update = jax.jit(functools.partial(ppo_update, policy_fn=policy_fn, optimizer=optimizer, config=ppo_config),
                     donate_argnums=0)
    state = init_train_state(params, optimizer)
    start = time.perf_counter()
    compiled = update.lower(state, buffer, rngs[0]).compile()
    compile_s = time.perf_counter() - start
    times, means = [], []
    for r in range(repeats + 1):
        start = time.perf_counter()
        state, metrics = compiled(state, buffer, rngs[r])
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
        means.append(float(metrics["loss"]))
    seconds = statistics.median(times[1:]) if repeats else times[0]
    result.update(memgen_compile_s=round(compile_s, 2), memgen_first_update_s=round(times[0], 3),
                  memgen_update_s=round(seconds, 4), memgen_best_update_s=round(min(times[1:] or times), 4),
                  memgen_update_times_s=[round(t, 3) for t in times],
                  memgen_tokens_per_s=round(train_tokens / seconds, 1),
                  memgen_mean_losses=[round(m, 6) for m in means])
    if peer:
        result["speedup"] = round(result["memgen_tokens_per_s"] / result["transformers_tokens_per_s"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--episodes", type=int, default=4, help="B episodes in the buffer")
    parser.add_argument("--steps", type=int, default=4, help="K transitions (verification steps) per episode")
    parser.add_argument("--prompt", type=int, default=128, help="C prompt tokens per transition")
    parser.add_argument("--response", type=int, default=64, help="S response token slots per transition")
    parser.add_argument("--minibatch", type=int, default=8, help="transitions per gradient step (divides B x K)")
    parser.add_argument("--epochs", type=int, default=None, help="default: the paper's 4")
    parser.add_argument("--repeats", type=int, default=2, help="timed updates after the first one")
    parser.add_argument("--no-peer", action="store_true", help="skip transformers + torch")
    parser.add_argument("--early-end", type=float, default=0.0,
                        help="share of the episodes that end after their first transition (the rest padding)")
    parser.add_argument("--skip-padding", action="store_true",
                        help="PPOConfig.skip_padding (the peer gets the same minibatches)")
    args = parser.parse_args()
    print(json.dumps(measure(args.preset, args.episodes, args.steps, args.prompt, args.response, args.minibatch,
                             args.epochs, args.repeats, peer=not args.no_peer, early_end=args.early_end,
                             skip_padding=args.skip_padding)))


if __name__ == "__main__":
    from launch.hugepages import reexec_with_huge_pages

    reexec_with_huge_pages()  # before any XLA buffer is allocated; the same process then times the peer too
    main()
