"""The RL pieces on a device mesh (8 CPU devices, tests/conftest.py) equal their single-device results in fp32: the
scan rollout (greedy) token for token with log-probs and values within 1e-5, and the PPO update (params after the
update, every metric) within 1e-5, on a data=2 x fsdp=2 x tensor=2 mesh with the params placed by
`model.sharding`'s rules (really split: embed over fsdp, heads / mlp / vocab over tensor), the optimizer moments
like their params, the prompts / KV cache / buffer over data x fsdp. The placement helpers are the ones
`memgen rl` and `memgen eval` use (launch.rl_common); the jitted update is built as launch.rl_run builds it."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

import model
from launch.mesh import MeshConfig, make_mesh
from launch.mesh import place_full_batch
from launch.rl_common import mesh_context, place_params, train_state_shardings
from model.sampler import SamplingConfig
from rl.buffer import ppo_buffer
from rl.ppo import PPOConfig, ppo_optimizer, ppo_update
from rl.rollout import RolloutConfig, rollout, transition_policy
from rl.update import init_train_state

B, K, N, F, P = 4, 2, 6, 5, 9
PROMPT_LENGTHS = (7, 4, 9, 5)
MESH = MeshConfig(data=2, fsdp=2, tensor=2)


class ScriptedVerifier:
    """Row 0 is solved at step 0, the others never: reward -1 and a feedback turn of 3 + b distinct ids."""

    def __call__(self, tokens, lengths, active, step):
        step = int(step)
        rewards, done, success = np.zeros((B,), np.float32), np.zeros((B,), bool), np.zeros((B,), bool)
        ids, mask = np.zeros((B, F), np.int32), np.zeros((B, F), np.int32)
        for b in range(B):
            if not active[b]:
                continue
            solved = b == 0 and step == 0
            rewards[b], success[b], done[b] = (5.0 if solved else -1.0), solved, solved or step == K - 1
            length = min(3 + b, F)
            ids[b, :length], mask[b, :length] = (np.arange(length) * 7 + 11 * b + 3 * step + 1) % 250, 1
        return rewards, done, success, ids, mask


VERIFIER = ScriptedVerifier()


@pytest.fixture(scope="module")
def tiny():
    config = model.preset("tiny")
    params = model.init_params(jax.random.key(0), config, value_head=True)
    rng = np.random.default_rng(0)
    ids = np.full((B, P), config.text.pad_token_id, np.int32)
    mask = np.zeros((B, P), np.int32)
    for b, length in enumerate(PROMPT_LENGTHS):
        ids[b, P - length:] = rng.integers(0, config.text.vocab_size - 16, length)
        mask[b, P - length:] = 1
    return config, params, ids, mask


@pytest.fixture(scope="module")
def mesh():
    mesh = make_mesh(MESH)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    return mesh


def run_rollout(config, params, ids, mask, mesh, cache_stages=1):
    fn = jax.jit(functools.partial(rollout, config=config, verifier=VERIFIER, mesh=mesh,
                                   rollout_config=RolloutConfig(SamplingConfig(N), K, F, cache_stages=cache_stages)))
    if mesh is not None:
        params = place_params(params, config, mesh)
        ids, mask = place_full_batch(ids, mesh), place_full_batch(mask, mesh)
    with mesh_context(mesh):
        return fn(params, prompt_ids=ids, prompt_mask=mask, rng=jax.random.key(0))


@pytest.fixture(scope="module")
def single_trajectory(tiny):
    config, params, ids, mask = tiny
    return jax.device_get(run_rollout(config, params, ids, mask, None))


def test_params_are_really_split_by_the_rules(tiny, mesh):
    config, params, _, _ = tiny
    placed = place_params(params, config, mesh)
    q = placed["language_model"]["layers"]["self_attn"]["q_proj"]["kernel"]
    assert q.sharding.mesh == mesh and "fsdp" in str(q.sharding.spec) and "tensor" in str(q.sharding.spec)
    assert q.addressable_shards[0].data.size == q.size // 4
    lm_head = placed["language_model"]["lm_head"]["kernel"]
    assert lm_head.addressable_shards[0].data.size == lm_head.size // 4
    assert place_full_batch(np.zeros((B, P)), mesh).sharding.spec == PartitionSpec(("data", "fsdp"), None)


@pytest.mark.parametrize("cache_stages", [1, 2])
def test_sharded_rollout_equals_single_device(tiny, single_trajectory, mesh, cache_stages):
    """Greedy, with rows finishing at different steps and feedback of different lengths: the same tokens, and
    log-probs and values within 1e-5; also with the cache grown per step on the mesh (against one cache on one
    device)."""
    config, params, ids, mask = tiny
    single, sharded = single_trajectory, run_rollout(config, params, ids, mask, mesh, cache_stages)
    assert sharded.response_ids.sharding.mesh == mesh
    sharded = jax.device_get(sharded)
    np.testing.assert_array_equal(sharded.valid, single.valid)
    assert single.valid.sum() == 1 + (B - 1) * K  # row 0 stops after one step, the others play K
    for name in ("response_ids", "response_mask", "feedback_ids", "feedback_mask", "dones", "success"):
        np.testing.assert_array_equal(getattr(sharded, name), getattr(single, name), err_msg=name)
    for name in ("response_logprobs", "values", "rewards", "bootstrap_value"):
        np.testing.assert_allclose(getattr(sharded, name), getattr(single, name), atol=1e-5, rtol=1e-5,
                                   err_msg=name)


@pytest.mark.parametrize("rows", [False, True], ids=["transitions", "conversation rows"])
def test_sharded_ppo_update_equals_single_device(tiny, single_trajectory, mesh, rows):
    """Two epochs of two minibatches (four Adam steps) with the value and entropy terms: params after the update
    and every metric within 1e-5. The buffer is the single-device rollout's, placed over data x fsdp. Learning
    rate 2e-4: Adam's first steps move a param by ~lr whatever its gradient's size, so a gradient near zero whose
    last bits differ between the two reduction orders moves by a visibly different amount (at lr 1e-3 one of 12288
    up_proj entries differed by 1.5e-5, everything else and every metric by < 1e-5). Conversation rows
    (`episode_rows`): the 4 rows, one minibatch per epoch."""
    config, params, _, _ = tiny
    single_traj = single_trajectory
    ppo = PPOConfig(epochs=2, minibatch_size=4, learning_rate=2e-4, final_learning_rate=2e-5, max_grad_norm=1.0,
                    entropy_coef=0.01, episode_rows=rows)
    optimizer = ppo_optimizer(ppo, total_steps=4)
    policy_fn = functools.partial(transition_policy, config=config, temperature=1.0, return_entropy=True)
    update = functools.partial(ppo_update, policy_fn=policy_fn, optimizer=optimizer, config=ppo)
    buffer = jax.device_get(ppo_buffer(single_traj, ppo))
    key = jax.random.key(7)

    single_state, single_metrics = jax.jit(update)(init_train_state(params, optimizer), buffer, key)

    abstract = jax.eval_shape(lambda p: init_train_state(p, optimizer), params)
    shardings = train_state_shardings(abstract, config, mesh, optimizer)
    mu = shardings.opt_state[1].inner_state[0].mu["language_model"]["layers"]["mlp"]["up_proj"]["kernel"]
    assert mu == shardings.params["language_model"]["layers"]["mlp"]["up_proj"]["kernel"] and mu.spec != PartitionSpec()
    # a copy: a replicated leaf may share device 0's buffer with `params`, and the update donates the state
    state = jax.device_put(init_train_state(place_params(jax.tree.map(jnp.copy, params), config, mesh), optimizer),
                           shardings)
    with mesh_context(mesh):
        sharded_state, sharded_metrics = jax.jit(update, donate_argnums=0, out_shardings=(shardings, None))(
            state, place_full_batch(buffer, mesh), key)
    assert jax.tree.leaves(sharded_state.params)[0].sharding.mesh == mesh

    single_state, sharded_state = jax.device_get(single_state), jax.device_get(sharded_state)
    assert int(sharded_state.step) == int(single_state.step) == (2 if rows else 4)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(single_state.params),
                                                           jax.tree.leaves(params)))
    assert moved > 2e-4  # the update really moved the params (so 1e-5 is a real tolerance)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(sharded_state.params),
                            jax.tree.leaves(single_state.params)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=jax.tree_util.keystr(path))
    for name, value in single_metrics.items():
        np.testing.assert_allclose(sharded_metrics[name], value, atol=1e-5, rtol=1e-5, err_msg=name)


def test_memgen_eval_on_a_mesh_writes_the_records_of_one_device(tmp_path):
    """`memgen eval` (eval-tiny, short templates, 4 episodes, budget 2, the held-out loss of 4 expert
    conversations) with mesh=2,2,2: the policy, the rollouts and the held-out batches on the mesh; the same records
    as mesh=1,1,1 (the default, one device), the held-out loss within 1e-5."""
    import launch.rl_config  # noqa: F401  (registers the presets)
    from launch.config import resolve
    from launch.eval_run import run_eval

    (tmp_path / "prompt.txt").write_text("Cards ${cards}. Make ${target}. Answer in JSON.")
    (tmp_path / "feedback.txt").write_text("Wrong: ${reason}")
    overrides = [f"sampling.prompt_template={tmp_path / 'prompt.txt'}",
                 f"sampling.feedback_template={tmp_path / 'feedback.txt'}", "sampling.feedback_len=64", "episodes=4",
                 "verify_budgets=2", "heldout_examples=4", "heldout_batch_size=4"]
    one = run_eval(resolve("eval-tiny", overrides), tmp_path / "one", show_progress=False)
    sharded = run_eval(resolve("eval-tiny", overrides + ["mesh=2,2,2"]), tmp_path / "mesh", show_progress=False)
    assert len(one) == len(sharded) == 2 and all("heldout_loss" in r for r in one)
    for a, b in zip(sharded, one):
        assert a.keys() == b.keys()
        for key, value in b.items():
            if isinstance(value, float):
                np.testing.assert_allclose(a[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
            else:
                assert a[key] == value, key


@pytest.mark.slow
def test_memgen_rl_on_a_mesh_resumes_exactly_and_matches_one_device(tmp_path):
    """`memgen rl` (rl-tiny, short templates, 2 updates of 4 episodes, 2 epochs of minibatch 4, lr 1e-4) with
    mesh=2,2,2: stopped after update 1 and resumed it ends bit for bit as the uninterrupted mesh run (params and
    metrics; the Orbax restore lands on the mesh's shardings), and its metrics equal those of mesh=1,1,1 within
    1e-5 (absolute plus relative; explained_variance, 1 - var(residual) / var(returns) with a near-zero variance
    of the returns, 1e-4 relative). 72 s alone on the shared 2-CPU machine (load ~4),
    43 s after the eval test (shared compilations), hence slow."""
    import launch.rl_config  # noqa: F401  (registers the presets)
    from launch.config import resolve
    from launch.metrics import read_metrics
    from launch.rl_run import run_rl
    from tests.launch.resume_check import assert_resume_is_exact, without_wall_times

    (tmp_path / "prompt.txt").write_text("Cards ${cards}. Make ${target}. Answer in JSON.")
    (tmp_path / "feedback.txt").write_text("Wrong: ${reason}")
    overrides = [f"episodes.prompt_template={tmp_path / 'prompt.txt'}",
                 f"episodes.feedback_template={tmp_path / 'feedback.txt'}", "episodes.feedback_len=64", "updates=2",
                 "episodes_per_update=4", "ppo.minibatch_size=4", "ppo.epochs=2", "eval_episodes=4",
                 "ppo.final_learning_rate=1e-5", "ppo.learning_rate=1e-4"]
    on_mesh = resolve("rl-tiny", overrides + ["mesh=2,2,2"])
    whole, sharded = assert_resume_is_exact(on_mesh, tmp_path)
    assert jax.tree.leaves(whole["params"])[0].sharding.mesh.size == 8

    run_rl(resolve("rl-tiny", overrides), tmp_path / "one", show_progress=False)
    one = without_wall_times(read_metrics(tmp_path / "one"))
    assert [r["kind"] for r in one] == [r["kind"] for r in sharded] == ["train", "train", "eval", "eval"]
    for a, b in zip(sharded, one):
        assert a.keys() == b.keys()
        for key, value in b.items():
            if isinstance(value, float):
                rtol = 1e-4 if key == "explained_variance" else 1e-5
                np.testing.assert_allclose(a[key], value, rtol=rtol, atol=1e-5, err_msg=f"{b['kind']} {key}")
            else:
                assert a[key] == value, key
