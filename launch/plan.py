"""`memgen plan`: bytes per device of a training / sampling setup on a mesh, and whether it fits a GPU.

Every figure is a per-device byte count of arrays whose global shapes come from the real code (`model.param_shapes`,
`model.init_cache`, the SFT optimizer's `init` under `jax.eval_shape`) and whose shard shapes come from the real
placement rules (`model.sharding.partition_spec` with `model.sharding.DEFAULT_RULES`; a mesh axis that does not
divide a dim leaves it replicated, as the sharding code does). Nothing is allocated: a 90B plan runs on a laptop.

Categories (details and the activation formula in docs/plan.md):
  params      all params in `param_dtype`.
  gradients   trainable params only (frozen groups get none), in `param_dtype`; x2 with gradient accumulation
              (the running sum and one microbatch's gradient).
  optimizer   the SFT optimizer (`sft.optim.make_optimizer`, AdamW) initialised on the trainable partition:
              two moments per trainable param plus replicated scalars (count, injected hyperparameters).
  activations a training step's saved activations per layer (remat "none" / "dots" / "full") x layers, plus one
              layer's working set and the logits/loss tensors, for one microbatch.
  kv_cache    the sampler's cache (self K/V (L_self, B, S, KV, Dh), cross K/V (L_cross, B, V, KV, Dh)).
  reference   with `kl_reference`: RL's frozen KL reference policy (the initial params, placed as the params).
  prefill     with `rollout_prompt`: the rollout prefill's attention at work in one layer, its scores over the
              whole cache (B, H, P, S_cache) (or, with images, a cross-attention layer's over the vision tokens,
              whichever is larger) in the compute dtype and float32; P is the query block when smaller.
  buffer      with `transitions` (an RL plan): the update's rollout buffer, what `rl.buffer.ppo_buffer` (with a
              value head) or `rl.buffer.grpo_buffer` builds from the rollout (under `jax.eval_shape`), placed
              with its items over data x fsdp (`launch.mesh.place_full_batch`): per transition its context,
              response, log-probs, advantages and, with images, the pixels (or the encoded images with
              `vision_states`) and cross-attention mask.
  images      with `transitions` and images: what the rollout holds of the episodes' images, their encoded
              states (B, V, D) and pixels (`rl.buffer.Images`), placed like the buffer.
  minibatch   with `transitions`: what the update takes from the buffer at a time, whole on every device (XLA
              takes rows of the batch-sharded buffer by a masked gather and an all-reduce of the result): the
              minibatch's item arrays (`batch_size` items) and one microbatch's rows of the shared images.
Totals: train = params + gradients + optimizer + activations(remat) + reference + buffer + minibatch; rollout =
params + optimizer + kv_cache + reference + prefill + images (the optimizer state and the reference stay resident
all run; `memgen rl` frees the rollout's images before the update and the buffer after it). The verdict uses the
larger.
XLA checks (compile only, tiny / small configs): `xla_train_step_memory` (the SFT step), `xla_rl_update_memory`
(the PPO update of an RL plan).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any, Literal, Sequence

import jax
import numpy as np
from jax.sharding import PartitionSpec

from launch.mesh import MeshConfig, MeshError, abstract_mesh, cache_partition_specs, optimizer_state_specs
from model.config import ModelConfig, load_hf_config, preset
from model.sharding import BATCH_AXES, DEFAULT_RULES, logical_axes, partition_spec
from model.vision import padded_tile_length

GiB = 1024 ** 3
# Nominal memory (decimal GB, as sold) and what a process can actually allocate (the CUDA context, cuBLAS and
# NCCL workspaces take the rest; XLA's default preallocation is 75% of this unless XLA_PYTHON_CLIENT_MEM_FRACTION
# is raised).
GPUS: dict[str, dict[str, float]] = {
    "h100": {"nominal_gb": 80, "usable_bytes": 78 * GiB},
    "h200": {"nominal_gb": 141, "usable_bytes": 139 * GiB},
}
TIGHT_FRACTION = 0.9  # above 90% of usable memory: "tight" (fragmentation and XLA scratch may not fit)
REMATS = ("none", "dots", "full")


class PlanError(ValueError):
    """A planner input that cannot be used; the message names it and what to do."""


@dataclasses.dataclass(frozen=True)
class PlanConfig:
    """One plan. `model`: a preset (tiny, small, 11b, 90b), a Hugging Face model directory, or a ModelConfig
    (e.g. a preset with fewer layers, as the GPU benchmarks use). `batch_size` global rows per optimizer step
    (split into `grad_accum_steps` microbatches for activations), `seq_len` tokens per row, `num_images` images
    per row (0: text only); `logit_positions` the positions per row the head scores (None: all; an RL update:
    the response slots); `rollout_batch` / `rollout_seq` the sampler's cache (rows, slots), None = the same as
    the step's (an RL run samples all of an update's episodes at once, each cache `rl.rollout.cache_length`
    slots long, but trains on minibatches of transitions); `rollout_prompt` the prompt tokens of a rollout's
    prefill (None: no prefill term). `freeze`: group names or whole-path regexes (as the SFT
    config). `param_dtype` / `compute_dtype`: None = the model config's. `value_head`: PPO's value head (a
    trainable group). `kl_reference`: an RL run with a KL penalty (PPO's kl_mode, GRPO's kl_coef) keeps the initial
    params as its frozen reference all run (`launch.rl_run`): one more copy of the params. `attention_block`: the
    model's ModelConfig.attention_block (None: the model config's; 0: all queries at once). `transitions`: an RL
    plan's K transitions per episode (verification steps): counts the update's buffer of rollout_batch x K
    transitions and the rollout's images (needs `rollout_prompt` and `logit_positions`, the response slots; the
    feedback slots per turn are what is left of `rollout_seq`: (rollout_seq - rollout_prompt) / K -
    logit_positions; `rl_turn_slots`). `episode_rows`: the buffer's items are conversation rows
    (`PPOConfig.episode_rows`; `logit_positions` then K x the response slots).
    `vision_states`: RLConfig.freeze_vision, the update reads the rollout's encoded images (the buffer holds them
    instead of the pixels, and the update runs no vision layer)."""

    model: str | ModelConfig = "11b"
    mesh: MeshConfig = MeshConfig()
    devices: int = 8
    gpu: Literal["h100", "h200"] = "h100"
    freeze: tuple[str, ...] = ()
    batch_size: int = 8
    seq_len: int = 2048
    rollout_batch: int | None = None
    rollout_seq: int | None = None
    rollout_prompt: int | None = None
    logit_positions: int | None = None
    num_images: int = 1
    grad_accum_steps: int = 1
    remat: Literal["none", "dots", "full"] = "full"
    param_dtype: str | None = None
    compute_dtype: str | None = None
    value_head: bool = False
    kl_reference: bool = False
    attention_block: int | None = None
    transitions: int | None = None
    episode_rows: bool = False
    vision_states: bool = False


# ------------------------------------------------------------------------------------------------ helpers
def model_config(config: PlanConfig) -> ModelConfig:
    if isinstance(config.model, ModelConfig):
        model = config.model
    elif Path(config.model).is_dir() or "/" in config.model:
        model = load_hf_config(config.model)
    else:
        model = preset(config.model)
    changes = {}
    if config.param_dtype:
        changes["param_dtype"] = config.param_dtype
    if config.compute_dtype:
        changes["dtype"] = config.compute_dtype
    if config.attention_block is not None:
        changes["attention_block"] = config.attention_block
    return model.replace(**changes)


def shard_shape(shape: Sequence[int], spec: PartitionSpec, mesh_shape: dict[str, int]) -> tuple[int, ...]:
    """The per-device block of an array of `shape` placed by `spec` (the specs come from `partition_spec`, so
    every sharded dim divides exactly)."""
    out = []
    for i, size in enumerate(shape):
        entry = spec[i] if i < len(spec) else None
        axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        out.append(size // math.prod(mesh_shape[a] for a in axes))
    return tuple(out)


def device_bytes(shape: Sequence[int], dtype: Any, spec: PartitionSpec, mesh_shape: dict[str, int]) -> int:
    return math.prod(shard_shape(shape, spec, mesh_shape)) * np.dtype(dtype).itemsize


def tree_device_bytes(tree: Any, specs: Any, mesh_shape: dict[str, int]) -> int:
    leaves = jax.tree.leaves(tree)
    spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    return sum(device_bytes(leaf.shape, leaf.dtype, spec, mesh_shape) for leaf, spec in zip(leaves, spec_leaves))


def param_specs(model: ModelConfig, params: Any, mesh, rules=DEFAULT_RULES) -> Any:
    """PartitionSpecs of `params` (any subset of the groups) by the rules, via model.sharding."""
    return jax.tree.map(lambda leaf, axes: partition_spec(leaf.shape, axes, mesh, rules), params,
                        logical_axes(model, params), is_leaf=lambda x: isinstance(x, tuple))


# ------------------------------------------------------------------------------------------------ activations
def _tensor(shape, axes, dtype_bytes):
    return (tuple(int(s) for s in shape), tuple(axes), int(dtype_bytes))


def layer_tensors(rows: int, tokens: int, keys: int, hidden: int, heads: int, kv_heads: int, head_dim: int,
                  mlp: int, dtype_bytes: int, *, mlp_tensors: int = 3, kv_from_input: bool = True,
                  query_block: int = 0):
    """The activations one transformer layer keeps for its backward pass without remat, as (shape, logical axes,
    bytes per element): the layer input and both normed inputs (B, S, D), q (B, S, H*Dh), k and v (B, S, KV*Dh)
    when they come from this layer's input (self-attention), the attention probabilities (B, H, S, K) in the
    compute dtype and in float32 (the softmax runs in float32), the attention output (B, S, H*Dh), the residual
    after attention (B, S, D) and `mlp_tensors` MLP intermediates (B, S, F) (gate, up, their product for SwiGLU).
    `query_block` > 0 (ModelConfig.attention_block): the probabilities of one block of queries, (B, H, block, K).
    (Under remat none a blocked layer keeps no probabilities at all, one block's at a time being recomputed in the
    backward pass, so counting a block per layer overcounts there.)"""
    b, s = rows, tokens
    x = ("batch", None, None)
    out = [_tensor((b, s, hidden), x, dtype_bytes) for _ in range(4)]           # input, normed, residual, normed
    out.append(_tensor((b, s, heads * head_dim), ("batch", None, "heads"), dtype_bytes))        # q
    out.append(_tensor((b, s, heads * head_dim), ("batch", None, "heads"), dtype_bytes))        # attention out
    if kv_from_input:
        out += [_tensor((b, s, kv_heads * head_dim), ("batch", None, "kv_heads"), dtype_bytes)] * 2
    queries = min(s, query_block) if query_block > 0 else s
    out.append(_tensor((b, heads, queries, keys), ("batch", "heads", None, None), dtype_bytes))  # probs
    out.append(_tensor((b, heads, queries, keys), ("batch", "heads", None, None), 4))           # fp32 softmax
    out += [_tensor((b, s, mlp), ("batch", None, "mlp"), dtype_bytes)] * mlp_tensors
    return out


def saved_tensors(remat: str, rows: int, tokens: int, hidden: int, heads: int, kv_heads: int, head_dim: int,
                  mlp: int, dtype_bytes: int, *, mlp_tensors: int = 3, kv_from_input: bool = True):
    """What one layer keeps between forward and backward under a remat policy. "none": `layer_tensors`.
    "dots" (save matmul outputs without batch dims): the input and the projections' outputs q, k, v, o (B, S, D),
    the MLP's up-projections (mlp_tensors - 1 of them, B, S, F) and down (B, S, D); the attention einsums have
    batch dims and are recomputed. "full": the layer input only."""
    b, s = rows, tokens
    x = _tensor((b, s, hidden), ("batch", None, None), dtype_bytes)
    if remat == "full":
        return [x]
    if remat == "dots":
        out = [x, x, x, _tensor((b, s, heads * head_dim), ("batch", None, "heads"), dtype_bytes)]   # in, o, down, q
        if kv_from_input:
            out += [_tensor((b, s, kv_heads * head_dim), ("batch", None, "kv_heads"), dtype_bytes)] * 2
        out += [_tensor((b, s, mlp), ("batch", None, "mlp"), dtype_bytes)] * (mlp_tensors - 1)
        return out
    raise PlanError(f"remat {remat!r} is not one of {', '.join(REMATS)}")


def activation_tensors(model: ModelConfig, remat: str, rows: int, seq: int, images: int, trainable_groups: set[str],
                       logit_positions: int | None = None, vision_states: bool = False):
    """(per-layer saved tensors x layer count) + one layer's working set + logits/loss, as a list of
    (shape, logical axes, bytes per element, multiplicity). The vision encoder's saved tensors count only when it
    trains; one vision layer at work (recomputed, or a frozen tower's forward) counts whenever there are images,
    unless the step reads encoded images (`vision_states`: RL's freeze_vision). `logit_positions`: the positions
    per row the head scores (None: all `seq`, the SFT loss; PPO / GRPO score the response slots only,
    `rl.rollout.transition_policy`)."""
    t, v = model.text, model.vision
    itemsize = np.dtype(model.dtype).itemsize
    vision_tokens = images * v.max_num_tiles * v.num_patches
    text_args = dict(rows=rows, tokens=seq, hidden=t.hidden_size, heads=t.num_attention_heads,
                     kv_heads=t.num_key_value_heads, head_dim=t.head_dim, mlp=t.intermediate_size,
                     dtype_bytes=itemsize)
    block = dict(query_block=model.attention_block)
    out = []

    def add(tensors, count):
        out.extend((shape, axes, nbytes, count) for shape, axes, nbytes in tensors)

    num_self, num_cross = len(t.self_attention_layers), len(t.cross_attention_layers) if images else 0
    if remat == "none":
        add(layer_tensors(keys=seq, **text_args, **block), num_self)
        if num_cross:
            add(layer_tensors(keys=vision_tokens, kv_from_input=False, **text_args, **block), num_cross)
    else:
        add(saved_tensors(remat, **text_args), num_self)
        if num_cross:
            add(saved_tensors(remat, kv_from_input=False, **text_args), num_cross)
        add(layer_tensors(keys=max(seq, vision_tokens if num_cross else 0), **text_args, **block), 1)  # recomputed
    if num_cross:
        # vision states (B, V, D) and the stacked cross-attention K/V (L_cross, B, V, KV, Dh) x 2
        add([_tensor((rows, vision_tokens, t.hidden_size), ("batch", None, None), itemsize)], 1)
        add([_tensor((num_cross, rows, vision_tokens, t.num_key_value_heads, t.head_dim),
                     ("layers", "batch", None, "kv_heads", None), itemsize)], 2)
        vision_args = dict(rows=rows * images, tokens=v.max_num_tiles * padded_tile_length(v), hidden=v.hidden_size,
                           heads=v.attention_heads, kv_heads=v.attention_heads, head_dim=v.head_dim,
                           mlp=v.intermediate_size, dtype_bytes=itemsize, mlp_tensors=2)
        layers = v.num_hidden_layers + v.num_global_layers
        if vision_states:
            pass  # the encoded images are an input: no vision layer runs
        elif "vision_encoder" in trainable_groups and remat == "none":
            add(layer_tensors(keys=vision_args["tokens"], **vision_args, **block), layers)
        else:
            if "vision_encoder" in trainable_groups:
                add(saved_tensors(remat, **vision_args), layers)
            # one vision layer at work: the one being recomputed under remat, or, frozen, the forward's current
            # layer. Its (B x images, heads, T x P, T x P) attention probabilities over all tiles are the largest
            # tensors of an 11B step with an image (4 x 1608 tokens a side).
            add(layer_tensors(keys=vision_args["tokens"], **vision_args, **block), 1)
    # logits (B, S, vocab) in the compute dtype, their float32 copy and log-softmax (sft.loss; the RL losses alike
    # over the response positions)
    logits = ((rows, logit_positions or seq, t.vocab_size), ("batch", None, "vocab"))
    add([_tensor(*logits, itemsize), _tensor(*logits, 4), _tensor(*logits, 4)], 1)
    return out


def prefill_tensors(model: ModelConfig, rows: int, prompt: int, cache_slots: int, images: int):
    """The attention tensors of one layer of a rollout's prefill (`model.sampler.start`: all prompt queries
    against the whole cache), in `activation_tensors`' format: the scores in the compute dtype and the float32
    softmax, (B, H, P, S_cache) for a self-attention layer, (B, H, P, V) for a cross-attention layer with images;
    the larger of the two, as one layer is at work at a time. P is `model.attention_block` when that is smaller
    (cached calls with many queries run in blocks too)."""
    t, v = model.text, model.vision
    queries = min(prompt, model.attention_block) if model.attention_block > 0 else prompt
    keys = max(cache_slots, images * v.max_num_tiles * v.num_patches)
    shape, axes = (rows, t.num_attention_heads, queries, keys), ("batch", "heads", None, None)
    return [(shape, axes, np.dtype(model.dtype).itemsize, 1), (shape, axes, 4, 1)]


def activation_bytes(tensors, mesh, mesh_shape) -> int:
    rules = {**DEFAULT_RULES, "batch": BATCH_AXES}
    total = 0
    for shape, axes, nbytes, count in tensors:
        spec = partition_spec(shape, axes, mesh, rules)
        total += math.prod(shard_shape(shape, spec, mesh_shape)) * nbytes * count
    return total


def batch_bytes(tree: Any, mesh, mesh_shape) -> int:
    """Per-device bytes of `tree`'s arrays placed as `launch.mesh.place_full_batch` places them: the leading axis
    over data x fsdp where they divide it, the rest replicated."""
    return activation_bytes([(x.shape, ("batch",) + (None,) * (len(x.shape) - 1), np.dtype(x.dtype).itemsize, 1)
                             for x in jax.tree.leaves(tree)], mesh, mesh_shape)


def rollout_outputs(model: ModelConfig, rows: int, prompt: int, transitions: int, response: int, feedback: int,
                    images: int):
    """What an RL update's buffer is built from, as abstract arrays: the `rl.rollout.Trajectory` of `rows`
    episodes of `transitions` turns (a prompt of `prompt` slots; per turn `response` and `feedback` slots) and,
    with `images` per prompt, the `rl.buffer.Images` the rollout keeps (its pixels in the compute dtype, as
    `launch.rl_common.RolloutRunner` places them), else None."""
    from rl.buffer import Images
    from rl.rollout import Trajectory

    def shape(dtype, *dims):
        return jax.ShapeDtypeStruct(dims, np.dtype(dtype))

    b, k = rows, transitions
    trajectory = Trajectory(
        prompt_ids=shape(np.int32, b, prompt), prompt_mask=shape(np.int32, b, prompt),
        response_ids=shape(np.int32, b, k, response), response_logprobs=shape(np.float32, b, k, response),
        response_mask=shape(bool, b, k, response), feedback_ids=shape(np.int32, b, k, feedback),
        feedback_mask=shape(np.int32, b, k, feedback), values=shape(np.float32, b, k),
        rewards=shape(np.float32, b, k), dones=shape(bool, b, k), success=shape(bool, b, k),
        valid=shape(bool, b, k), bootstrap_value=shape(np.float32, b))
    if not images:
        return trajectory, None
    v, dtype = model.vision, jax.numpy.dtype(model.dtype)
    return trajectory, Images(
        states=shape(dtype, b, images * v.max_num_tiles * v.num_patches, model.text.hidden_size),
        cross_attention_mask=shape(np.int32, b, prompt, images, v.max_num_tiles),
        pixel_values=shape(dtype, b, images, v.max_num_tiles, v.num_channels, v.image_size, v.image_size),
        aspect_ratio_ids=shape(np.int32, b, images), aspect_ratio_mask=shape(np.int32, b, images, v.max_num_tiles))


def buffer_shapes(config: PlanConfig, trajectory, images) -> dict[str, jax.ShapeDtypeStruct]:
    """The RL update's buffer (`rl.buffer.ppo_buffer` with a value head, else `rl.buffer.grpo_buffer`) of the
    rollout's outputs (`rollout_outputs`), under `jax.eval_shape`: conversation rows with `config.episode_rows`,
    the encoded images instead of the pixels with `config.vision_states`, the reference's token log-probs with
    `config.kl_reference`."""
    from rl.buffer import grpo_buffer, ppo_buffer
    from rl.grpo import GRPOConfig
    from rl.ppo import PPOConfig

    if images is not None and config.vision_states:
        images = images.without_pixels()
    kl = config.kl_reference

    def reference_fn(params, transitions):  # the shape of `rl.rollout.reference_token_logprobs`' (B, T, N)
        return jax.numpy.zeros(transitions["response_mask"].shape, jax.numpy.float32)

    reference = dict(reference_fn=reference_fn, reference_params=0) if kl else {}
    if config.value_head:
        ppo = PPOConfig(episode_rows=config.episode_rows, kl_mode="k3_loss" if kl else None, kl_coef=0.1 if kl else 0)

        def build(trajectory, images):
            return ppo_buffer(trajectory, ppo, images, **reference)
    else:
        # one episode per group (dr_grpo needs no group std): the buffer's arrays do not depend on the grouping
        grpo = GRPOConfig(group_size=1, dr_grpo=True, episode_rows=config.episode_rows, kl_coef=0.1 if kl else 0)

        def build(trajectory, images):
            return grpo_buffer(trajectory, grpo, images, **reference)
    return jax.eval_shape(build, trajectory, images)


def minibatch_bytes(buffer: dict[str, Any], minibatch: int, microbatches: int) -> int:
    """Per-device bytes of what an update over `buffer` (`buffer_shapes`) takes from it at a time: `minibatch`
    items of every item array and, per microbatch (`rl.update.reading_shared`), the rows of the shared arrays its
    minibatch / microbatches items read. Whole on every device: on a mesh XLA's SPMD partitioner takes rows of the
    batch-sharded buffer by a masked gather on each device and an all-reduce of the result (docs/plan.md); on one
    device they are the gathers' outputs."""
    from rl.update import SHARED, item_arrays

    def rows_bytes(tree: Any, rows: int) -> int:
        return sum(rows * math.prod(x.shape[1:]) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))

    return rows_bytes(item_arrays(buffer), minibatch) + rows_bytes(buffer.get(SHARED, {}), minibatch // microbatches)


def rl_buffer(config: PlanConfig, model: ModelConfig, rollout_rows: int, rollout_len: int):
    """(the update's buffer (`buffer_shapes`), the rollout's images or None, the feedback slots per turn) of an
    RL plan whose rollout samples `rollout_rows` episodes into caches of `rollout_len` slots (`rl_turn_slots`,
    `rollout_outputs`)."""
    response, feedback = rl_turn_slots(config, rollout_len)
    trajectory, images = rollout_outputs(model, rollout_rows, config.rollout_prompt, config.transitions, response,
                                         feedback, config.num_images)
    return buffer_shapes(config, trajectory, images), images, feedback


def rl_turn_slots(config: PlanConfig, rollout_len: int) -> tuple[int, int]:
    """(response, feedback) slots per turn of an RL plan's episodes: the response slots are `logit_positions` (with
    `episode_rows` a row scores its K responses: logit_positions / K), the feedback what the cache of
    `rollout_len` slots leaves after the prompt and K responses, (rollout_len - prompt) / K - response
    (`rl.rollout.cache_length` backwards)."""
    k, prompt, response = config.transitions, config.rollout_prompt, config.logit_positions
    if k < 1:
        raise PlanError(f"an RL plan needs at least one transition per episode, got {k}")
    if prompt is None or response is None:
        raise PlanError("an RL plan's buffer (transitions) needs the rollout's prompt (rollout_prompt) and the "
                        "response slots per turn (logit_positions)")
    if config.episode_rows:
        if response % k:
            raise PlanError(f"conversation rows score K x response slots, but {response} logit positions are not a "
                            f"multiple of {k} transitions")
        response //= k
    per_turn, left = divmod(rollout_len - prompt, k)
    if left or per_turn < response:
        raise PlanError(f"a cache of {rollout_len} slots is not a {prompt}-slot prompt plus {k} turns of "
                        f"{response} response slots and the same feedback slots each")
    return response, per_turn - response


# ------------------------------------------------------------------------------------------------ the plan
def plan(config: PlanConfig) -> dict[str, Any]:
    """The plan as a JSON-able dict: per-device bytes by category, totals, the GPU and the verdict."""
    from model.forward import init_cache
    from model.params import param_shapes
    from rl.update import check_microbatches, check_minibatch_size
    from sft.optim import OptimizerConfig, make_optimizer, partition, trainable_mask

    if config.gpu not in GPUS:
        raise PlanError(f"unknown GPU {config.gpu!r}; choose one of {', '.join(GPUS)}")
    if config.remat not in REMATS:
        raise PlanError(f"remat {config.remat!r} is not one of {', '.join(REMATS)}")
    if config.batch_size < 1 or config.seq_len < 1 or config.num_images < 0:
        raise PlanError("batch size and sequence length must be positive and images >= 0")
    if any(n is not None and n < 1 for n in (config.rollout_batch, config.rollout_seq, config.logit_positions,
                                             config.rollout_prompt)):
        raise PlanError("the rollout's batch, sequence length and prompt and the logit positions must be positive")
    if (config.logit_positions or 0) > config.seq_len:
        raise PlanError(f"{config.logit_positions} logit positions do not fit rows of {config.seq_len} tokens")
    try:
        check_microbatches("PlanConfig", config.batch_size, config.grad_accum_steps, field="grad_accum_steps")
    except ValueError as error:
        raise PlanError(str(error)) from None
    model = model_config(config)
    mesh = abstract_mesh(config.mesh, config.devices)
    mesh_shape = dict(mesh.shape)

    params = param_shapes(model, value_head=config.value_head)
    specs = param_specs(model, params, mesh)
    try:
        mask = trainable_mask(params, config.freeze)
    except ValueError as error:
        raise PlanError(str(error)) from None
    trainable, _ = partition(params, mask)
    trainable_specs, _ = partition(specs, mask) if trainable else ({}, {})
    optimizer = make_optimizer(OptimizerConfig(), total_steps=1)
    opt_state = jax.eval_shape(optimizer.init, trainable)
    opt_specs = optimizer_state_specs(optimizer, opt_state, trainable_specs)

    param_b = tree_device_bytes(params, specs, mesh_shape)
    trainable_b = tree_device_bytes(trainable, trainable_specs, mesh_shape)
    grads_b = trainable_b * (2 if config.grad_accum_steps > 1 else 1)
    opt_b = tree_device_bytes(opt_state, opt_specs, mesh_shape)

    rows = config.batch_size // config.grad_accum_steps
    groups = {path for path in trainable}
    activations = {remat: activation_bytes(
        activation_tensors(model, remat, rows, config.seq_len, config.num_images, groups, config.logit_positions,
                           config.vision_states),
        mesh, mesh_shape)
        for remat in REMATS}

    rollout_rows, rollout_len = config.rollout_batch or config.batch_size, config.rollout_seq or config.seq_len
    cache = jax.eval_shape(lambda: init_cache(model, rollout_rows, rollout_len,
                                              num_images=config.num_images))
    kv_b = tree_device_bytes(cache, cache_partition_specs(cache, mesh), mesh_shape)
    if config.rollout_prompt is not None and config.rollout_prompt > rollout_len:
        raise PlanError(f"a {config.rollout_prompt}-token prompt does not fit a cache of {rollout_len} slots")
    prefill_b = 0 if config.rollout_prompt is None else activation_bytes(
        prefill_tensors(model, rollout_rows, config.rollout_prompt, rollout_len, config.num_images), mesh, mesh_shape)

    buffer_b = images_b = minibatch_b = feedback = buffer_items = 0
    if config.transitions is not None:
        buffer, images, feedback = rl_buffer(config, model, rollout_rows, rollout_len)
        buffer_b, buffer_items = batch_bytes(buffer, mesh, mesh_shape), buffer["valid"].shape[0]
        images_b = 0 if images is None else batch_bytes(images, mesh, mesh_shape)
        try:
            check_minibatch_size(buffer_items, config.batch_size)
        except ValueError as error:
            raise PlanError(f"{error} (--batch is the minibatch)") from None
        minibatch_b = minibatch_bytes(buffer, config.batch_size, config.grad_accum_steps)

    reference_b = param_b if config.kl_reference else 0
    train_total = param_b + grads_b + opt_b + activations[config.remat] + reference_b + buffer_b + minibatch_b
    rollout_total = param_b + opt_b + kv_b + reference_b + prefill_b + images_b
    usable = int(GPUS[config.gpu]["usable_bytes"])
    peak = max(train_total, rollout_total)
    verdict = "fits" if peak <= TIGHT_FRACTION * usable else "tight" if peak <= usable else "does not fit"
    counts = {group: sum(math.prod(x.shape) for x in jax.tree.leaves(params[group])) for group in params}
    return {
        "model": config.model if isinstance(config.model, str) else "ModelConfig", "mesh": mesh_shape,
        "devices": config.devices, "gpu": config.gpu,
        "freeze": list(config.freeze), "trainable_groups": sorted(groups),
        "param_counts": counts, "param_dtype": model.param_dtype, "compute_dtype": model.dtype,
        "batch_size": config.batch_size, "seq_len": config.seq_len, "num_images": config.num_images,
        "rollout_batch": rollout_rows, "rollout_seq": rollout_len, "rollout_prompt": config.rollout_prompt,
        "logit_positions": config.logit_positions or config.seq_len,
        "grad_accum_steps": config.grad_accum_steps, "remat": config.remat, "attention_block": model.attention_block,
        "transitions": config.transitions, "feedback_slots": feedback, "buffer_items": buffer_items,
        "episode_rows": config.episode_rows, "vision_states": config.vision_states,
        "bytes_per_device": {"params": param_b, "gradients": grads_b, "optimizer": opt_b,
                             "activations": activations[config.remat], "kv_cache": kv_b,
                             "reference": reference_b, "prefill": prefill_b, "buffer": buffer_b, "images": images_b,
                             "minibatch": minibatch_b},
        "activations_by_remat": activations,
        "train_total": train_total, "rollout_total": rollout_total,
        "usable_bytes": usable, "headroom_bytes": usable - peak, "verdict": verdict,
    }


# ------------------------------------------------------------------------------------------------ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="11b", help="preset (tiny, small, 11b, 90b) or a Hugging Face model dir")
    parser.add_argument("--mesh", default="data=1,fsdp=-1,tensor=1",
                        help="axis sizes, e.g. data=1,fsdp=8,tensor=1 (-1: the rest)")
    parser.add_argument("--devices", type=int, default=None,
                        help="devices in all (hosts x GPUs per host); default: the mesh product, or 8")
    parser.add_argument("--gpu", choices=sorted(GPUS), default="h100")
    parser.add_argument("--freeze", nargs="*", default=[], help="param groups or whole-path regexes to freeze")
    parser.add_argument("--batch", type=int, default=8, help="global batch (rows per optimizer step)")
    parser.add_argument("--seq", type=int, default=2048,
                        help="tokens per row (also the KV cache length unless --rollout-seq)")
    parser.add_argument("--images", type=int, default=1, help="images per row (0: text only)")
    parser.add_argument("--attention-block", type=int, default=None,
                        help="queries per attention block (ModelConfig.attention_block; 0: all at once)")
    parser.add_argument("--logits", type=int, default=None,
                        help="positions per row the head scores (RL: the response slots); default --seq")
    parser.add_argument("--rollout-batch", type=int, default=None,
                        help="rows sampled at once (RL: episodes per update); default --batch")
    parser.add_argument("--rollout-seq", type=int, default=None,
                        help="KV cache slots per row (RL: prompt + K x (new tokens + feedback)); default --seq")
    parser.add_argument("--rollout-prompt", type=int, default=None,
                        help="prompt tokens of a rollout's prefill: counts its attention over the cache (RL)")
    parser.add_argument("--transitions", type=int, default=None,
                        help="RL: transitions per episode (K): counts the update's buffer and the rollout's images")
    parser.add_argument("--episode-rows", action="store_true", help="RL: the buffer holds conversation rows")
    parser.add_argument("--freeze-vision", action="store_true",
                        help="RL's freeze_vision: the update reads the rollout's encoded images, no vision layer runs")
    parser.add_argument("--grad-accum", type=int, default=1, help="microbatches per step")
    parser.add_argument("--remat", choices=REMATS, default="full")
    parser.add_argument("--param-dtype", choices=("float32", "bfloat16"), default=None)
    parser.add_argument("--compute-dtype", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--value-head", action="store_true", help="include PPO's value head")
    parser.add_argument("--kl-reference", action="store_true",
                        help="an RL run with a KL penalty: count its frozen reference policy (a copy of the params)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def config_from_args(args: argparse.Namespace) -> PlanConfig:
    mesh = MeshConfig.parse(args.mesh)
    devices = args.devices if args.devices is not None else mesh.fixed_device_count(default=8)
    return PlanConfig(model=args.model, mesh=mesh, devices=devices, gpu=args.gpu, freeze=tuple(args.freeze),
                      batch_size=args.batch, seq_len=args.seq, num_images=args.images,
                      rollout_batch=args.rollout_batch, rollout_seq=args.rollout_seq,
                      rollout_prompt=args.rollout_prompt, logit_positions=args.logits,
                      grad_accum_steps=args.grad_accum, remat=args.remat, param_dtype=args.param_dtype,
                      compute_dtype=args.compute_dtype, value_head=args.value_head,
                      kl_reference=args.kl_reference, attention_block=args.attention_block,
                      transitions=args.transitions, episode_rows=args.episode_rows,
                      vision_states=args.freeze_vision)


def _gib(value: int) -> str:
    return f"{value / GiB:,.2f} GiB"


def render(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    mesh = ",".join(f"{k}={v}" for k, v in result["mesh"].items())
    table = Table(title=f"memgen plan: {result['model']} on {result['devices']} x {result['gpu']} ({mesh}), "
                        f"per device")
    table.add_column("what")
    table.add_column("bytes per device", justify="right")
    for name, value in result["bytes_per_device"].items():
        if name in ("reference", "prefill", "buffer", "images", "minibatch") and not value:
            continue
        label = {"activations": f"activations (remat {result['remat']})", "reference": "KL reference params",
                 "prefill": f"rollout prefill attention ({result['rollout_prompt']}-token prompt, one layer)",
                 "buffer": f"RL update buffer ({result['buffer_items']} "
                           f"{'conversations' if result['episode_rows'] else 'transitions'})",
                 "images": "rollout's images (encoded and pixels)",
                 "minibatch": "RL update's minibatch (+ a microbatch's images), whole per device",
                 "kv_cache": f"kv cache ({result['rollout_batch']} rows x {result['rollout_seq']} slots)"
                 }.get(name, name)
        table.add_row(label, _gib(value))
    for remat, value in result["activations_by_remat"].items():
        if remat != result["remat"]:
            table.add_row(f"  (activations with remat {remat})", _gib(value))
    table.add_row("train step total", _gib(result["train_total"]))
    table.add_row("rollout total", _gib(result["rollout_total"]))
    table.add_row(f"usable on {result['gpu']}", _gib(result["usable_bytes"]))
    table.add_row("headroom", _gib(result["headroom_bytes"]))
    console = Console()
    console.print(table)
    frozen = ", ".join(result["freeze"]) or "nothing"
    console.print(f"{result['verdict'].upper()}: batch {result['batch_size']} x {result['seq_len']} tokens, "
                  f"{result['num_images']} image(s)/row, {result['grad_accum_steps']} microbatch(es), params "
                  f"{result['param_dtype']}, compute {result['compute_dtype']}, frozen: {frozen}.")


def run(args: argparse.Namespace) -> int:
    try:
        result = plan(config_from_args(args))
    except (PlanError, MeshError, ValueError) as error:
        print(f"memgen plan: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        render(result)
    return 0 if result["verdict"] != "does not fit" else 1


# ------------------------------------------------------------------------------------------------ XLA check
def xla_train_step_memory(config: PlanConfig) -> dict[str, Any]:
    """Compile the real SFT train step (`sft.train_step` over `model.forward`, with `config.num_images` full-tile
    images per row or text only) sharded by the same rules on this process's first `config.devices` devices, and
    return XLA's per-device memory analysis next to the plan. Nothing is allocated (abstract params, lower +
    compile only); use tiny/small configs."""
    import functools

    import jax.numpy as jnp
    from jax.sharding import NamedSharding

    import sft
    from launch.mesh import make_mesh
    from model.params import param_shapes
    from model.processor import image_input_shapes
    from model.sharding import batch_sharding
    from sft.batches import forward_from_batch

    result = plan(config)
    # scanned layers, as the 11B / 90B the planner is for (ModelConfig.scan_layers): an unrolled small model lets
    # XLA schedule several layers' temporaries at once, which the per-layer activation model does not describe
    cfg = model_config(config).replace(remat=config.remat, scan_layers=True)
    mesh = make_mesh(config.mesh, jax.devices()[:config.devices])
    params = param_shapes(cfg, value_head=config.value_head)
    mask = sft.trainable_mask(params, config.freeze)
    trainable, frozen = sft.partition(params, mask)
    trainable_specs, frozen_specs = sft.partition(param_specs(cfg, params, mesh), mask)
    optimizer = sft.make_optimizer(sft.OptimizerConfig(), total_steps=10)
    opt_state = jax.eval_shape(optimizer.init, trainable)
    state = sft.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), trainable=trainable, frozen=frozen,
                           opt_state=opt_state, rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
    state_specs = sft.TrainState(step=PartitionSpec(), trainable=trainable_specs, frozen=frozen_specs,
                                 opt_state=optimizer_state_specs(optimizer, opt_state, trainable_specs),
                                 rng=PartitionSpec())
    rows, seq = config.batch_size, config.seq_len
    shapes = {name: ((rows, seq), np.int32) for name in ("input_ids", "attention_mask", "loss_mask")}
    if config.num_images:
        shapes.update(image_input_shapes(rows, seq, config.num_images, cfg.vision.max_num_tiles,
                                         cfg.vision.image_size))
    batch = {name: jax.ShapeDtypeStruct(shape, dtype) for name, (shape, dtype) in shapes.items()}
    batch_specs = {name: batch_sharding(mesh, shape).spec for name, (shape, _) in shapes.items()}
    logits_fn = functools.partial(forward_from_batch, config=cfg)
    named = lambda tree: jax.tree.map(lambda spec: NamedSharding(mesh, spec), tree,  # noqa: E731
                                      is_leaf=lambda x: isinstance(x, PartitionSpec))
    step = functools.partial(sft.train_step, logits_fn=logits_fn, optimizer=optimizer,
                             grad_accum_steps=config.grad_accum_steps)
    jitted = jax.jit(step, in_shardings=(named(state_specs), named(batch_specs)),
                     out_shardings=(named(state_specs), None), donate_argnums=0)
    analysis = jitted.lower(state, batch).compile().memory_analysis()
    mesh_shape = dict(mesh.shape)
    planned = result["bytes_per_device"]
    return {
        "plan": result,
        # what the planner says the step's arguments are: params + optimizer + the batch + step and rng
        "planned_argument_bytes": (planned["params"] + planned["optimizer"]
                                   + tree_device_bytes(batch, batch_specs, mesh_shape) + 4 + 8),
        "planned_temp_bytes": planned["gradients"] + planned["activations"],
        "argument_bytes": int(analysis.argument_size_in_bytes),
        "output_bytes": int(analysis.output_size_in_bytes),
        "alias_bytes": int(analysis.alias_size_in_bytes),
        "temp_bytes": int(analysis.temp_size_in_bytes),
    }


def xla_rl_update_memory(config: PlanConfig) -> dict[str, Any]:
    """Compile the real PPO update (`rl.ppo_update`, one epoch, over `rl.rollout.transition_policy`, with
    `rl.ppo.ppo_optimizer`) of an RL plan (`transitions` and `value_head` set, one device) on the buffer the plan
    counts (`buffer_shapes`), and return XLA's memory analysis next to the plan: its arguments are the train state
    (params, Adam's moments) and the buffer; its temporaries hold the gradients, a microbatch's activations and what
    the update takes from the buffer (the plan's `minibatch`).
    Nothing is allocated (abstract inputs, lower + compile only); use tiny/small configs."""
    import functools

    from rl.ppo import PPOConfig, ppo_optimizer, ppo_update
    from rl.rollout import transition_policy
    from rl.update import init_train_state
    from model.params import param_shapes

    if config.transitions is None or not config.value_head or config.devices != 1:
        raise PlanError("the XLA check of an RL update needs a one-device PPO plan: transitions, value_head, "
                        "devices=1")
    result = plan(config)
    model = model_config(config).replace(remat=config.remat, scan_layers=True)  # as xla_train_step_memory
    buffer = rl_buffer(config, model, result["rollout_batch"], result["rollout_seq"])[0]
    length = buffer["context_ids"].shape[1] + buffer["response_ids"].shape[1] if "context_ids" in buffer else \
        buffer["stream_ids"].shape[1]
    if length != config.seq_len:
        raise PlanError(f"the plan's seq_len {config.seq_len} is not its buffer's {length}-token rows; plan the "
                        f"update at the rows it trains on")
    ppo = PPOConfig(minibatch_size=config.batch_size, microbatches=config.grad_accum_steps, epochs=1,
                    episode_rows=config.episode_rows)
    optimizer = ppo_optimizer(ppo, total_steps=10)
    state = jax.eval_shape(lambda params: init_train_state(params, optimizer), param_shapes(model, value_head=True))
    policy = functools.partial(transition_policy, config=model, temperature=1.0)
    update = jax.jit(functools.partial(ppo_update, policy_fn=policy, optimizer=optimizer, config=ppo),
                     donate_argnums=0)
    analysis = update.lower(state, buffer, jax.eval_shape(lambda: jax.random.key(0))).compile().memory_analysis()
    planned = result["bytes_per_device"]
    return {
        "plan": result,
        "planned_argument_bytes": planned["params"] + planned["optimizer"] + planned["buffer"],
        "planned_temp_bytes": planned["gradients"] + planned["activations"] + planned["minibatch"],
        "argument_bytes": int(analysis.argument_size_in_bytes),
        "temp_bytes": int(analysis.temp_size_in_bytes),
    }
