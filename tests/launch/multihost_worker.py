"""One process of the multi-host test: a few SFT train steps (sft.train_step over model.forward, tiny preset,
text groups) on a ("data", "fsdp", "tensor") = (1, 8, 1) mesh over 8 CPU devices (FSDP across the processes),
each process feeding only its host-local rows of a fixed global batch, then greedy answers of the trained
params to the batch's first 8 tokens on the same mesh, then a two-step rollout with a recording host verifier.
Each process prints one JSON line {"process": i, "judged": [...], "rollout_tokens": [...]}; process 0's (or the
single process's) also has "losses", "tokens", ...

Usage: python multihost_worker.py single | python multihost_worker.py COORDINATOR_ADDRESS PROCESS_ID
(the caller sets XLA_FLAGS device counts and JAX_PLATFORMS=cpu)."""

import functools
import json
import sys

import jax
import numpy as np

STEPS, BATCH, SEQ, GENERATED = 3, 8, 16, 6


def main(argv: list[str]) -> None:
    from launch.mesh import DistributedConfig, MeshConfig, host_local_batch_slice, initialize, make_global_batch, \
        make_mesh

    if argv[0] != "single":
        initialize(DistributedConfig(coordinator_address=argv[0], num_processes=2, process_id=int(argv[1])))
    import model
    import sft

    config = model.preset("tiny")
    mesh = make_mesh(MeshConfig(data=1, fsdp=-1, tensor=1))
    assert jax.device_count() == 8
    # The same params on every host, drawn with numpy from the real shapes (model.init_params' jitted init of
    # the whole tree costs seconds of compilation per process).
    # Text only: the vision groups would only add unused arguments and compile time.
    draw = np.random.default_rng(0)
    shapes = model.param_shapes(config)
    text_groups = {group: shapes[group] for group in ("language_model", "cross_attention")}
    host_params = jax.tree.map(lambda s: (np.ones(s.shape) if len(s.shape) == 1 else
                                          draw.normal(0.0, 0.02, s.shape)).astype(s.dtype), text_groups)
    shardings = model.sharding.param_shardings(config, mesh, host_params)
    params = jax.tree.map(lambda x, s: jax.make_array_from_callback(x.shape, s, lambda index: x[index]),
                          host_params, shardings)
    optimizer = sft.make_optimizer(sft.OptimizerConfig(lr=1e-2, warmup_fraction=0.0), total_steps=STEPS)
    state = jax.jit(lambda p: sft.init_train_state(p, optimizer, (), jax.random.key(1)))(params)

    rng = np.random.default_rng(0)
    global_batch = {"input_ids": rng.integers(0, config.text.vocab_size, (BATCH, SEQ), dtype=np.int32),
                    "loss_mask": (rng.random((BATCH, SEQ)) < 0.7).astype(np.int32)}
    rows = host_local_batch_slice(BATCH)
    batch = make_global_batch({k: v[rows] for k, v in global_batch.items()}, mesh)

    def logits_fn(params, batch):
        return model.forward(params, config, batch["input_ids"])

    # The state keeps its placement from step to step (otherwise step 2 would compile again for the placement
    # XLA chose for step 1's outputs).
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    step = jax.jit(functools.partial(sft.train_step, logits_fn=logits_fn, optimizer=optimizer),
                   out_shardings=(state_shardings, None), donate_argnums=0)
    losses = []
    for _ in range(STEPS):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    # Greedy answers of the trained params to the global batch's prompts, each process feeding its rows
    # (launch.sft_eval.generate_on_mesh: the greedy hook of `memgen sft`).
    from launch.sft_eval import generate_on_mesh
    generation = generate_on_mesh(model.generate, mesh)(state.params, config, global_batch["input_ids"][:, :8],
                                                        max_new_tokens=GENERATED, stop_tokens=())
    judged, rollout_tokens = verifier_rollout(config, state.params, mesh, global_batch["input_ids"][:, :8])
    report = {"process": jax.process_index(), "judged": judged, "rollout_tokens": rollout_tokens}
    if jax.process_index() == 0:
        report.update(processes=jax.process_count(), rows=[rows.start, rows.stop], losses=losses,
                      tokens=np.asarray(generation.tokens).tolist())
    print(json.dumps(report), flush=True)


class RecordingVerifier:
    """A stateful host verifier with rl.rollout's contract (cached per (row, step), thread-safe): the reward is
    the response's first token mod 3, a row is done when that is 0, the feedback turn is the response's first
    two tokens. `judged` lists every (row, step, response) this process judged."""

    def __init__(self):
        import threading
        self.judged, self._results, self._lock = [], {}, threading.Lock()

    def __call__(self, tokens, lengths, active, step):
        with self._lock:
            batch, step = len(tokens), int(step)
            out = (np.zeros(batch, np.float32), np.zeros(batch, bool), np.zeros(batch, bool),
                   np.zeros((batch, 2), np.int32), np.zeros((batch, 2), np.int32))
            for row in np.flatnonzero(active):
                if (row, step) not in self._results:
                    response = np.asarray(tokens[row, :lengths[row]]).tolist()
                    self.judged.append([int(row), step, response])
                    self._results[row, step] = (response[0] % 3, response[0] % 3 == 0, response[:2])
                reward, done, feedback = self._results[row, step]
                out[0][row], out[1][row], out[2][row] = reward, done, done
                out[3][row, :len(feedback)], out[4][row, :len(feedback)] = feedback, 1
            return out


def verifier_rollout(config, params, mesh, prompts):
    """A two-step rl.rollout of the trained params with a value head on `mesh` (each process feeding its rows of
    `prompts`): every process's verifier must judge every row (rl.rollout.call_verifier), so that their episode
    states agree. Returns (this process's judged list sorted, the trajectory's response ids)."""
    from launch.mesh import host_arrays, place_full_batch
    from model.sampler import SamplingConfig
    from model.sharding import param_shardings
    from model.value_head import init_value_head
    from rl.rollout import RolloutConfig, rollout

    params = dict(params, value_head=init_value_head(jax.random.key(2), config))
    params = jax.device_put(params, param_shardings(config, mesh, params))
    verifier = RecordingVerifier()
    rollout_config = RolloutConfig(SamplingConfig(GENERATED, 1.0, stop_tokens=()), max_verify_steps=2,
                                   feedback_len=2)
    placed = place_full_batch({"ids": prompts, "mask": np.ones_like(prompts)}, mesh)
    run = jax.jit(functools.partial(rollout, config=config, verifier=verifier, rollout_config=rollout_config,
                                    mesh=mesh))
    with jax.set_mesh(mesh):
        trajectory = run(params, prompt_ids=placed["ids"], prompt_mask=placed["mask"], rng=jax.random.key(3))
    tokens = host_arrays(trajectory.response_ids).tolist()  # waits for the rollout (dispatch is asynchronous)
    return sorted(verifier.judged), tokens


if __name__ == "__main__":
    main(sys.argv[1:])
