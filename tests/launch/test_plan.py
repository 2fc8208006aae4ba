"""launch.plan (`memgen plan`): per-device bytes from the real shapes and placement rules, checked against JAX's
own shard shapes, the freezing rules, the KV cache's real size, an RL update's buffer and a rollout's images as
placed from a real rollout, and XLA's compiled memory analysis of the real SFT train step."""

import json
import math

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

import model
from launch import plan as P
from launch.mesh import MeshConfig, make_mesh
from model.vision import padded_tile_length


def _jax_device_bytes(tree, specs, mesh):
    """Per-device bytes by JAX's own NamedSharding.shard_shape (independent of the planner's arithmetic)."""
    leaves = jax.tree.leaves(tree)
    spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    return sum(math.prod(NamedSharding(mesh, s).shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
               for x, s in zip(leaves, spec_leaves))


@pytest.mark.parametrize("mesh_config, devices", [(MeshConfig(data=1, fsdp=2, tensor=4), 8),
                                                   (MeshConfig(data=1, fsdp=3, tensor=2), 6)])
def test_param_bytes_are_the_shards_jax_places(mesh_config, devices):
    config = model.preset("tiny")
    mesh = make_mesh(mesh_config, jax.devices()[:devices])
    params = model.param_shapes(config, value_head=True)
    specs = jax.tree.map(lambda s: s.spec, model.sharding.param_shardings(config, mesh, params))
    result = P.plan(P.PlanConfig(model="tiny", mesh=mesh_config, devices=devices, value_head=True, num_images=0))
    assert result["bytes_per_device"]["params"] == _jax_device_bytes(params, specs, mesh)
    if mesh_config.fsdp == 3:  # hidden 64 is not divisible by 3: those dims stay replicated, as placed
        full = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
        assert result["bytes_per_device"]["params"] > full / 6


def test_frozen_groups_get_no_gradients_and_no_optimizer_state():
    base = P.PlanConfig(model="tiny", mesh=MeshConfig(fsdp=2, tensor=4), devices=8, num_images=0)
    everything = P.plan(base)["bytes_per_device"]
    frozen = P.plan(P.PlanConfig(**{**base.__dict__, "freeze": ("vision_encoder", "projector",
                                                                 "cross_attention/.*")}))
    b = frozen["bytes_per_device"]
    assert frozen["trainable_groups"] == ["language_model"]
    assert b["params"] == everything["params"]
    mesh = make_mesh(base.mesh)
    shapes = model.param_shapes(model.preset("tiny"))
    lm = {"language_model": shapes["language_model"]}
    lm_specs = jax.tree.map(lambda s: s.spec, model.sharding.param_shardings(model.preset("tiny"), mesh, lm))
    assert b["gradients"] == _jax_device_bytes(lm, lm_specs, mesh)
    # AdamW: two moments per trainable param (fp32 like the params) + a few replicated scalars
    assert 0 <= b["optimizer"] - 2 * b["gradients"] < 256
    assert everything["gradients"] == everything["params"]
    with pytest.raises(P.PlanError, match="matches no parameter"):
        P.plan(P.PlanConfig(**{**base.__dict__, "freeze": ("visoin_encoder",)}))


def test_kv_cache_is_the_samplers_cache_split_by_batch_and_kv_heads():
    config = model.preset("tiny")
    cache = jax.eval_shape(lambda: model.init_cache(config, 4, 32, num_images=1))
    full = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))
    one = P.plan(P.PlanConfig(model="tiny", mesh=MeshConfig(fsdp=1), devices=1, batch_size=4, seq_len=32,
                              compute_dtype="float32"))
    assert one["bytes_per_device"]["kv_cache"] == full
    t = config.text
    self_kv = 2 * len(t.self_attention_layers) * 4 * 32 * t.num_key_value_heads * t.head_dim * 4
    assert full > self_kv
    # data 2 x tensor 2 (KV heads 2): K/V divided by 4, the per-row mask and positions by 2, the index whole
    four = P.plan(P.PlanConfig(model="tiny", mesh=MeshConfig(data=2, fsdp=1, tensor=2), devices=4, batch_size=4,
                               seq_len=32, compute_dtype="float32"))
    kv = [x for x in jax.tree.leaves(cache) if x.ndim == 5]
    rest = [x for x in jax.tree.leaves(cache) if x.ndim != 5]
    expected = (sum(x.size * x.dtype.itemsize for x in kv) // 4
                + sum(x.size * x.dtype.itemsize // (2 if x.ndim else 1) for x in rest))
    assert four["bytes_per_device"]["kv_cache"] == expected


def test_an_rl_plan_samples_and_trains_at_their_own_shapes():
    """An RL update trains minibatches of transitions whose head scores the response slots only, and samples all
    of an update's episodes at once with caches of prompt + K turns: the cache follows rollout_batch x
    rollout_seq, the activations the step's rows and seq, the logits `logit_positions`."""
    config = model.preset("tiny")
    base = dict(model="tiny", mesh=MeshConfig(fsdp=1), devices=1, batch_size=4, seq_len=64, num_images=0,
                compute_dtype="float32", value_head=True)
    step = P.plan(P.PlanConfig(**base))
    rl = P.plan(P.PlanConfig(**base, rollout_batch=12, rollout_seq=96, logit_positions=16))
    sampled = P.plan(P.PlanConfig(**{**base, "batch_size": 12, "seq_len": 96}))
    assert rl["bytes_per_device"]["kv_cache"] == sampled["bytes_per_device"]["kv_cache"] > \
        step["bytes_per_device"]["kv_cache"]
    # the logits (rows, positions, vocab) in the compute dtype, their float32 copy and log-softmax
    shrunk = 4 * (64 - 16) * config.text.vocab_size * (4 + 4 + 4)
    assert {r: step["activations_by_remat"][r] - rl["activations_by_remat"][r] for r in P.REMATS} == \
        dict.fromkeys(P.REMATS, shrunk)
    assert (rl["rollout_batch"], rl["rollout_seq"], rl["logit_positions"]) == (12, 96, 16)
    assert (step["rollout_batch"], step["rollout_seq"], step["logit_positions"]) == (4, 64, 64)
    with pytest.raises(P.PlanError, match="logit positions do not fit"):
        P.plan(P.PlanConfig(**base, logit_positions=65))


def test_a_rollout_plan_counts_its_prefills_attention_over_the_cache():
    """`rollout_prompt`: the prefill's scores over the whole cache, (B, H, P, S_cache) in the compute dtype and
    float32, sharded like activations; in query blocks when the model's block is smaller than P; with images a
    cross-attention layer's (B, H, P, V) when its V is larger than the cache; added to the rollout total only.
    (XLA's CPU analysis of the small rollout, batch 8, 384-token prompts, 1,344 slots: 480 MB of temporaries
    against the plan's 44 MB cache + 198 MB prefill, 2.0x; in blocks of 64: 166 MB against 77 MB, 2.2x.)"""
    text, vision = model.preset("tiny").text, model.preset("tiny").vision
    base = dict(model="tiny", mesh=MeshConfig(data=2, fsdp=1), devices=2, batch_size=4, seq_len=64, num_images=0,
                compute_dtype="bfloat16", rollout_batch=8, rollout_seq=96)
    plain = P.plan(P.PlanConfig(**base))
    with_prompt = P.plan(P.PlanConfig(**base, rollout_prompt=40))
    prefill = with_prompt["bytes_per_device"]["prefill"]
    assert prefill == (8 // 2) * text.num_attention_heads * 40 * 96 * (2 + 4)  # rows over data=2
    assert with_prompt["rollout_total"] == plain["rollout_total"] + prefill and plain["bytes_per_device"][
        "prefill"] == 0
    assert with_prompt["train_total"] == plain["train_total"]
    blocked = P.plan(P.PlanConfig(**base, rollout_prompt=40, attention_block=16))
    assert blocked["bytes_per_device"]["prefill"] == prefill * 16 // 40
    vision_tokens = vision.max_num_tiles * vision.num_patches
    image = P.plan(P.PlanConfig(**{**base, "num_images": 1}, rollout_prompt=40))
    assert image["bytes_per_device"]["prefill"] == 4 * text.num_attention_heads * 40 * max(96, vision_tokens) * 6
    with pytest.raises(P.PlanError, match="a 97-token prompt does not fit a cache of 96 slots"):
        P.plan(P.PlanConfig(**base, rollout_prompt=97))


@pytest.fixture(scope="module")
def tiny_vision_rollout():
    """A real GP-VL rollout of the tiny policy (rl-tiny: K = 2 turns of 8 response and 160 feedback slots) and its
    config: what `memgen rl` builds its update's buffer from."""
    import launch.rl_config  # noqa: F401  (registers the presets)
    from launch.config import resolve
    from launch.rl_common import RolloutRunner, load_policy, new_episodes, task_config

    config = resolve("rl-tiny", ["episodes.modality=vision"])
    policy = load_policy(config.init, seed=0)
    runner = RolloutRunner(policy, config.episodes, config.episodes.max_verify_steps, 4)
    states = new_episodes(task_config(config.episodes), (0, 0), 4)
    trajectory, _, images = runner(policy.params, states, jax.random.key(0))
    return config, trajectory, images


@pytest.mark.parametrize("algorithm, rows, vision_states, kl", [("ppo", False, False, False),
                                                                ("ppo", False, True, True),
                                                                ("ppo", True, False, False),
                                                                ("grpo", False, False, True)])
def test_an_rl_plan_counts_the_updates_buffer_and_the_rollouts_images(tiny_vision_rollout, algorithm, rows,
                                                                      vision_states, kl):
    """`transitions`: the buffer the update trains on and the images the rollout holds, per device as JAX places
    the real ones: a real rollout's trajectory and images (rl.buffer.Images) -> the real buffer builder ->
    `place_full_batch` on data=2 -> the bytes of one device's shards. The planner's abstract rollout has the
    real one's shapes and dtypes. The buffer is added to the train total, the images to the rollout total, and
    to the train total what the update takes at a time (`minibatch`): the real update's functions take 4 items of
    the item arrays and a microbatch's 2 rows of the shared images."""
    import dataclasses

    from launch.mesh import place_full_batch
    from rl.buffer import grpo_buffer, ppo_buffer
    from rl.update import SHARED, item_arrays, reading_shared, take_items

    config, trajectory, images = tiny_vision_rollout
    batch, steps, response = trajectory.response_ids.shape
    prompt, feedback = trajectory.prompt_ids.shape[1], trajectory.feedback_ids.shape[-1]
    mesh_config = MeshConfig(data=2, fsdp=1)
    mesh = make_mesh(mesh_config, jax.devices()[:2])
    base = dict(model="tiny", mesh=mesh_config, devices=2, batch_size=4, seq_len=prompt + steps * response,
                num_images=1, grad_accum_steps=2, compute_dtype="float32", value_head=algorithm == "ppo",
                rollout_batch=batch, rollout_seq=prompt + steps * (response + feedback), rollout_prompt=prompt,
                logit_positions=response * (steps if rows else 1), kl_reference=kl)
    plain = P.plan(P.PlanConfig(**base))
    planned = P.plan(P.PlanConfig(**base, transitions=steps, episode_rows=rows, vision_states=vision_states))

    shapes = lambda tree: jax.tree.map(lambda x: (x.shape, np.dtype(x.dtype)), tree)  # noqa: E731
    abstract_trajectory, abstract_images = P.rollout_outputs(model.preset("tiny").replace(dtype="float32"), batch,
                                                             prompt, steps, response, feedback, 1)
    assert shapes(abstract_trajectory) == shapes(trajectory) and shapes(abstract_images) == shapes(images)

    def device_bytes(tree):
        return sum(leaf.addressable_shards[0].data.nbytes for leaf in jax.tree.leaves(place_full_batch(tree, mesh)))

    used = images.without_pixels() if vision_states else images
    reference = dict(reference_fn=lambda params, t: jax.numpy.zeros(t["response_mask"].shape), reference_params=0)
    if algorithm == "ppo":
        ppo = dataclasses.replace(config.ppo, episode_rows=rows, **({"kl_mode": "k3_loss", "kl_coef": 0.1} if kl
                                                                    else {}))
        buffer = ppo_buffer(trajectory, ppo, used, **reference)
    else:
        buffer = grpo_buffer(trajectory, dataclasses.replace(config.grpo, group_size=2, kl_coef=0.1 if kl else 0.0,
                                                             episode_rows=rows), used, **reference)
    item = take_items(buffer, jax.numpy.arange(1))  # what a transition (or row) reads
    assert ("ref_token_logprobs" in item) == kl and ("pixel_values" in item) != vision_states
    b = planned["bytes_per_device"]
    assert b["buffer"] == device_bytes(buffer) and planned["buffer_items"] == (batch if rows else batch * steps)
    assert b["images"] == device_bytes(images) and planned["feedback_slots"] == feedback
    minibatch = jax.tree.map(lambda leaf: leaf[:4], item_arrays(buffer))
    microbatch = reading_shared(buffer, jax.tree.map(lambda leaf: leaf[:2], minibatch))
    taken = sum(leaf.nbytes for leaf in jax.tree.leaves(minibatch)) + sum(
        microbatch[name].nbytes for name in buffer.get(SHARED, {}))
    assert (SHARED in buffer) != rows and b["minibatch"] == taken  # a row holds its episode's images
    assert plain["bytes_per_device"]["buffer"] == plain["bytes_per_device"]["images"] == 0
    assert plain["bytes_per_device"]["minibatch"] == 0
    assert planned["rollout_total"] == plain["rollout_total"] + b["images"]
    assert planned["train_total"] - b["buffer"] - b["minibatch"] == plain["train_total"] - (
        plain["bytes_per_device"]["activations"] - b["activations"])  # vision_states also drops the vision layer


def test_an_rl_plans_vision_states_run_no_vision_layer_and_its_turns_must_fill_the_cache():
    """`vision_states` (RL's freeze_vision): the update reads the rollout's encoded images, so no vision layer
    is at work (the text model's cross-attention to the states remains); the buffer's turns must add up to the
    rollout's cache, a minibatch must divide the buffer and its microbatches the minibatch (as the update requires)."""
    config = model.preset("11b").replace(dtype="bfloat16")
    vision = config.vision
    tiles = vision.max_num_tiles * padded_tile_length(vision)
    probs = (2, vision.attention_heads, tiles, tiles)
    groups = {"vision_encoder", "language_model"}
    with_tower = P.activation_tensors(config, "full", rows=2, seq=2048, images=1, trainable_groups=groups)
    states = P.activation_tensors(config, "full", rows=2, seq=2048, images=1, trainable_groups=groups,
                                  vision_states=True)
    assert [t for t in with_tower if t[0] == probs] and not [t for t in states if t[0] == probs]
    vision_tokens = vision.max_num_tiles * vision.num_patches
    assert [t for t in states if t[0] == (2, vision_tokens, config.text.hidden_size)]  # the states themselves
    base = dict(model="tiny", mesh=MeshConfig(fsdp=1), devices=1, batch_size=4, seq_len=64, value_head=True,
                rollout_batch=4, rollout_seq=100, rollout_prompt=40, logit_positions=8)
    assert P.plan(P.PlanConfig(**base, transitions=3))["feedback_slots"] == 12
    with pytest.raises(P.PlanError, match="is not a 40-slot prompt plus 7 turns of 8 response slots"):
        P.plan(P.PlanConfig(**base, transitions=7))
    with pytest.raises(P.PlanError, match="needs the rollout's prompt"):
        P.plan(P.PlanConfig(**{**base, "rollout_prompt": None}, transitions=3))
    with pytest.raises(P.PlanError, match="not a multiple of 3 transitions"):
        P.plan(P.PlanConfig(**base, transitions=3, episode_rows=True))
    with pytest.raises(P.PlanError, match="buffer holds 12 items, which is not a multiple of minibatch_size=5"):
        P.plan(P.PlanConfig(**{**base, "batch_size": 5}, transitions=3))  # 4 episodes x 3 transitions
    with pytest.raises(P.PlanError, match="grad_accum_steps=5 must be at least 1 and divide minibatch_size=12"):
        P.plan(P.PlanConfig(**{**base, "batch_size": 12, "grad_accum_steps": 5}, transitions=3))


def test_attention_blocks_hold_one_block_of_probabilities():
    """ModelConfig.attention_block: the recomputed layer's attention probabilities, (B, H, S, K) in the compute
    dtype and float32, shrink to one block of queries; nothing else changes."""
    config = model.preset("tiny")
    base = dict(model="tiny", mesh=MeshConfig(fsdp=1), devices=1, batch_size=4, seq_len=64, num_images=0,
                compute_dtype="float32", remat="full")
    whole, blocked = (P.plan(P.PlanConfig(**base, attention_block=block)) for block in (0, 16))
    heads = config.text.num_attention_heads
    assert whole["activations_by_remat"]["full"] - blocked["activations_by_remat"]["full"] == \
        4 * heads * (64 - 16) * 64 * (4 + 4)
    assert (whole["attention_block"], blocked["attention_block"]) == (0, 16)
    assert P.plan(P.PlanConfig(**base, attention_block=64))["activations_by_remat"] == whole["activations_by_remat"]


def test_activations_order_and_batch_split():
    def acts(**kw):
        cfg = {"model": "tiny", "mesh": MeshConfig(fsdp=1), "devices": 1, "batch_size": 4, "seq_len": 64, **kw}
        return P.plan(P.PlanConfig(**cfg))["activations_by_remat"]
    one = acts()
    assert one["none"] > one["dots"] > one["full"] > 0
    split = acts(mesh=MeshConfig(data=2, fsdp=1), devices=2)
    assert all(split[r] * 2 == one[r] for r in P.REMATS)  # every activation has the batch axis
    assert acts(batch_size=3, mesh=MeshConfig(data=2, fsdp=1), devices=2) == acts(batch_size=3)  # 3 rows: replicated
    more = acts(freeze=())["none"]
    assert acts(freeze=("vision_encoder",))["none"] < more  # a frozen vision encoder keeps no activations


def test_one_vision_layer_at_work_is_counted_with_its_attention_over_all_tiles():
    """The vision layer being recomputed under remat, or a frozen tower's current forward layer: its attention
    probabilities over all four tiles, in the compute dtype and fp32, once; without remat a trained tower keeps
    every layer's."""
    config = model.preset("11b").replace(dtype="bfloat16")
    vision = config.vision
    tiles = vision.max_num_tiles * padded_tile_length(vision)  # 4 x 1608 padded patches
    probs = (2, vision.attention_heads, tiles, tiles)
    trained, frozen = {"vision_encoder", "language_model"}, {"language_model"}
    layers = vision.num_hidden_layers + vision.num_global_layers
    for remat, groups, count in [("full", trained, 1), ("dots", trained, 1), ("full", frozen, 1),
                                 ("none", frozen, 1), ("none", trained, layers)]:
        tensors = P.activation_tensors(config, remat, rows=2, seq=2048, images=1, trainable_groups=groups)
        assert [(n, c) for shape, _, n, c in tensors if shape == probs] == [(2, count), (4, count)], (remat, groups)
    text_only = P.activation_tensors(config, "full", rows=2, seq=2048, images=0, trainable_groups=trained)
    assert not [t for t in text_only if t[0] == probs]


def test_11b_and_90b_plans():
    r11 = P.plan(P.PlanConfig(model="11b", mesh=MeshConfig(fsdp=8), devices=8, gpu="h100"))
    total = r11["param_counts"]
    assert sum(total.values()) == 10_670_220_835
    # fp32 params over fsdp 8: all but the norms / gates / biases split 8 ways
    assert abs(r11["bytes_per_device"]["params"] / (4 * sum(total.values()) / 8) - 1) < 2e-3
    assert r11["verdict"] == "fits"
    r90 = P.plan(P.PlanConfig(model="90b", mesh=MeshConfig(fsdp=8), devices=8, gpu="h200"))
    assert r90["verdict"] == "does not fit" and r90["headroom_bytes"] < 0


def test_cli_json_hf_directory_and_errors(tmp_path, capsys):
    import argparse
    (tmp_path / "config.json").write_text(json.dumps(model.to_hf_dict(model.preset("tiny"))))
    parser = argparse.ArgumentParser()
    P.add_arguments(parser)
    code = P.run(parser.parse_args(["--model", str(tmp_path), "--mesh", "fsdp=2,tensor=4", "--json",
                                    "--freeze", "vision_encoder", "--images", "0"]))
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["devices"] == 8 and out["mesh"] == {"data": 1, "fsdp": 2, "tensor": 4}
    assert out["bytes_per_device"]["params"] == P.plan(P.PlanConfig(
        model="tiny", mesh=MeshConfig(fsdp=2, tensor=4), freeze=("vision_encoder",), num_images=0,
        compute_dtype="bfloat16"))["bytes_per_device"]["params"]
    assert out["bytes_per_device"]["reference"] == 0
    # an RL run with a KL penalty keeps its initial params as the reference: one more params row in both totals
    rl_args = ["--model", str(tmp_path), "--mesh", "fsdp=2,tensor=4", "--json", "--images", "0", "--value-head"]
    plain, kl = [json.loads((P.run(parser.parse_args(rl_args + extra)), capsys.readouterr().out)[1])
                 for extra in ([], ["--kl-reference"])]
    assert plain["bytes_per_device"]["reference"] == 0
    assert kl["bytes_per_device"]["reference"] == kl["bytes_per_device"]["params"] > 0
    for total in ("train_total", "rollout_total"):
        assert kl[total] - plain[total] == kl["bytes_per_device"]["params"]
    P.run(parser.parse_args(["--model", "tiny", "--kl-reference", "--mesh", "fsdp=8"]))
    assert "KL reference params" in capsys.readouterr().out
    assert P.run(parser.parse_args(["--model", "tiny", "--mesh", "fsdp=3", "--devices", "8"])) == 2
    assert "has 3 devices but 8 are available" in capsys.readouterr().err
    assert P.run(parser.parse_args(["--model", "90b", "--mesh", "fsdp=8"])) == 1  # does not fit
    assert "DOES NOT FIT" in capsys.readouterr().out


@pytest.mark.parametrize("mesh, devices, images, freeze", [
    (MeshConfig(data=2, fsdp=2, tensor=2), 8, 0, ("vision_encoder",)),  # text only, sharded
    (MeshConfig(data=1, fsdp=1, tensor=1), 1, 1, ()),                     # one image per row, the tower trained
])
def test_planner_agrees_with_xla_memory_analysis(mesh, devices, images, freeze):
    """The real SFT step (small preset) compiled with the planned shardings: XLA's argument bytes are the
    planner's params + optimizer + batch exactly; its temporaries (gradients + activations + XLA's scratch)
    within a factor 1..2.5 of the planner's gradients + activations (docs/plan.md lists the measured factors)."""
    config = P.PlanConfig(model="small", mesh=mesh, devices=devices, batch_size=8, seq_len=128, num_images=images,
                          remat="full", compute_dtype="float32", freeze=freeze)
    result = P.xla_train_step_memory(config)
    assert abs(result["argument_bytes"] / result["planned_argument_bytes"] - 1) < 1e-3, result
    assert result["alias_bytes"] >= result["plan"]["bytes_per_device"]["optimizer"]  # the state is donated
    factor = result["temp_bytes"] / result["planned_temp_bytes"]
    assert 1.0 <= factor <= 2.5, (factor, result)


@pytest.mark.parametrize("rows, micro", [(False, 2), (True, 1)])
def test_an_rl_plan_agrees_with_xla_memory_analysis_of_the_ppo_update(rows, micro):
    """The real PPO update (small preset, an image per episode, K = 2) compiled on the buffer the plan counts:
    XLA's arguments are the plan's params + optimizer + buffer (to the optimizer's few scalars: PPO's
    schedule state is not AdamW's); its temporaries within a factor 1..2.5 of the plan's gradients + activations,
    as the SFT step's (docs/plan.md lists the measured factors). A plan whose rows are not the buffer's stops."""
    prompt, response, feedback, steps = 64, 32, 16, 2
    cache = prompt + steps * (response + feedback)
    config = P.PlanConfig(model="small", mesh=MeshConfig(fsdp=1), devices=1, batch_size=4 if rows else 8,
                          seq_len=cache - feedback, num_images=1, grad_accum_steps=micro, remat="full",
                          compute_dtype="float32", value_head=True, rollout_batch=8, rollout_seq=cache,
                          rollout_prompt=prompt, logit_positions=response * (steps if rows else 1),
                          transitions=steps, episode_rows=rows)
    result = P.xla_rl_update_memory(config)
    assert abs(result["argument_bytes"] - result["planned_argument_bytes"]) < 256, result
    factor = result["temp_bytes"] / result["planned_temp_bytes"]
    assert 1.0 <= factor <= 2.5, (factor, result)
    with pytest.raises(P.PlanError, match=f"seq_len {cache} is not its buffer's {cache - feedback}-token rows"):
        P.xla_rl_update_memory(P.PlanConfig(**{**config.__dict__, "seq_len": cache}))
