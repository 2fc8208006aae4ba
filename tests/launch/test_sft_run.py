"""`memgen sft` end to end on the tiny preset: the command, metrics in the report's schema, learning, exact resume,
non-finite steps, freezing, greedy-success records and clear errors. Runs share one compiled step (the step is
memoised per model/optimizer shape), so only the first run and the frozen one compile."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from launch.cli import main
from launch.config import resolve
from launch.metrics import read_metrics
from launch.metrics_schema import load_runs
from launch.sft_run import run_sft
from tests.launch.resume_check import saved_weights

STEPS = 10
# eval at 0, 5, 10; checkpoints at 4, 8 (and 10, forced): an interruption after step 6 resumes from 4.
OVERRIDES = [f"steps={STEPS}", "eval_every=5", "checkpoint.every_steps=4", "checkpoint.keep=3", "eval_examples=8",
             "train_examples=32"]


@pytest.fixture(scope="module")
def cli_run(cache, tmp_path_factory):
    """The uninterrupted reference run, through the command line."""
    out = tmp_path_factory.mktemp("uninterrupted")
    assert main(["sft", "--preset", "sft-tiny", "--out", str(out), *OVERRIDES]) == 0
    return out


def test_the_command_writes_a_run_the_report_reads_and_the_loss_falls(cli_run):
    run, = load_runs([cli_run])
    train = run.of_kind("train")
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    for record in train:
        assert {"step", "loss", "lr", "tokens", "gflops"} <= set(record) and record["arm"] == "sft"
    gflops = [r["gflops"] for r in train]
    assert all(b > a for a, b in zip(gflops, gflops[1:]))
    # 6 N D: N every parameter of the model, D the real (non-padding) tokens of the batches.
    config = json.loads((cli_run / "config.json").read_text())
    assert config["steps"] == STEPS
    num_params = sum(a.size for a in saved_weights(cli_run / "final").values())
    assert train[-1]["gflops"] == pytest.approx(6 * num_params * sum(r["tokens"] for r in train) / 1e9)
    assert train[-1]["loss"] < train[0]["loss"] - 0.3
    heldout = [r for r in run.records if "heldout_loss" in r]
    assert [r["step"] for r in heldout] == [0, 5, 10]
    assert heldout[-1]["heldout_loss"] < heldout[0]["heldout_loss"]
    assert (cli_run / "tensorboard").is_dir() and (cli_run / "final" / "tokenizer.json").is_file()


def test_an_interrupted_run_resumed_with_the_same_command_ends_identically(cli_run, tmp_path):
    config = resolve("sft-tiny", OVERRIDES)
    partial = run_sft(config, tmp_path, stop_after=6)
    assert partial["stopped_early"] and partial["final_dir"] is None
    assert max(r["step"] for r in read_metrics(tmp_path)) == 6  # records 5 and 6 come after checkpoint 4
    assert main(["sft", "--preset", "sft-tiny", "--out", str(tmp_path), *OVERRIDES]) == 0
    assert (tmp_path / "metrics.jsonl").read_text() == (cli_run / "metrics.jsonl").read_text()
    resumed, uninterrupted = saved_weights(tmp_path / "final"), saved_weights(cli_run / "final")
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        np.testing.assert_array_equal(resumed[name], uninterrupted[name], err_msg=name)


@pytest.mark.slow
def test_a_run_killed_mid_save_resumes_to_the_same_end(cli_run, cache, tmp_path):
    """kill -9 of a subprocess while the checkpoint of step 8 is being written: the same command then resumes
    (from step 4, or 8 if its files happened to be complete) and ends as the uninterrupted run."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "MEMGEN_CACHE": str(cache)}
    result = subprocess.run([sys.executable, str(repo / "tests/launch/sft_kill_script.py"), str(tmp_path), "8",
                             *OVERRIDES], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == -9, result.stderr[-2000:]
    assert max(r["step"] for r in read_metrics(tmp_path)) == 8 and not (tmp_path / "final").exists()
    assert main(["sft", "--preset", "sft-tiny", "--out", str(tmp_path), *OVERRIDES]) == 0
    assert (tmp_path / "metrics.jsonl").read_text() == (cli_run / "metrics.jsonl").read_text()
    resumed, uninterrupted = saved_weights(tmp_path / "final"), saved_weights(cli_run / "final")
    for name in uninterrupted:
        np.testing.assert_array_equal(resumed[name], uninterrupted[name], err_msg=name)


def test_a_run_directory_of_another_config_is_not_resumed(cli_run, capsys):
    assert main(["sft", "--preset", "sft-tiny", "--out", str(cli_run), *OVERRIDES, "seed=1"]) == 2
    assert "holds a run with another config (differs in: seed)" in capsys.readouterr().err


def test_consecutive_non_finite_steps_stop_the_run_with_a_clear_message(cache, tmp_path, capsys):
    code = main(["sft", "--preset", "sft-tiny", "--out", str(tmp_path), *OVERRIDES, "optimizer.lr=1e30",
                 "max_consecutive_skips=2"])
    assert code == 2
    error = capsys.readouterr().err
    assert "was not finite for 2 steps in a row (max_consecutive_skips=2); lower optimizer.lr" in error
    train = [r for r in read_metrics(tmp_path) if r["kind"] == "train"]
    assert [r["skipped"] for r in train[-2:]] == [1, 1] and train[-1]["loss"] is None
    assert train[-1]["tokens"] == 0  # a skipped step adds no training compute


def test_freezing_the_vision_tower_leaves_it_bit_identical(cache, tmp_path):
    from launch.model_source import load_model

    config = resolve("sft-tiny", OVERRIDES[1:] + ["steps=2", "freeze=[vision_encoder,projector]"])
    run_sft(config, tmp_path)
    initial = load_model("tiny", seed=0).params
    final = load_model(str(tmp_path / "final"), seed=0).params
    for group in ("vision_encoder", "projector"):
        for a, b in zip(jax.tree.leaves(initial[group]), jax.tree.leaves(final[group])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(initial["language_model"]),
                                                        jax.tree.leaves(final["language_model"]))]
    assert any(changed)


def test_remat_and_attention_blocks_train_as_the_plain_step(cache, tmp_path, monkeypatch):
    """`remat=full attention_block=8`: the tiny model's attention over blocks of 8 queries (GP-L rows are tens of
    tokens long), each layer recomputed in the backward pass; two steps end where the plain step's do."""
    import launch.sft_run
    from launch.model_source import load_model

    configs = []
    compiled = launch.sft_run.compiled_train_step
    monkeypatch.setattr(launch.sft_run, "compiled_train_step",
                        lambda model_config, *a, **k: configs.append(model_config) or compiled(model_config, *a, **k))
    finals = []
    for name, extra in (("plain", []), ("blocked", ["remat=full", "attention_block=8"])):
        run_sft(resolve("sft-tiny", OVERRIDES[1:] + ["steps=2", "eval_every=0", *extra]), tmp_path / name)
        finals.append(load_model(str(tmp_path / name / "final"), seed=0).params)
    assert [(c.remat, c.attention_block) for c in configs] == [("none", 0), ("full", 8)]
    for a, b in zip(jax.tree.leaves(finals[0]), jax.tree.leaves(finals[1])):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=2e-5)


def test_bfloat16_master_weights_train_and_are_saved_in_bfloat16(cache, tmp_path):
    """`param_dtype=bfloat16` (what a 90B on one host needs, `memgen plan --param-dtype`): the params and Adam's
    moments are bf16, two steps train to a loss near the float32 masters', and final/ holds bf16 tensors."""
    losses = {}
    for dtype in ("float32", "bfloat16"):
        config = resolve("sft-tiny", OVERRIDES[1:] + ["steps=2", "eval_every=0", f"param_dtype={dtype}"])
        run_sft(config, tmp_path / dtype)
        losses[dtype] = [r["loss"] for r in read_metrics(tmp_path / dtype) if r["kind"] == "train"]
    saved = json.loads((tmp_path / "bfloat16" / "final" / "config.json").read_text())
    assert saved["dtype"] == "bfloat16"
    assert json.loads((tmp_path / "float32" / "final" / "config.json").read_text())["dtype"] == "float32"
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=0.05)
    assert losses["bfloat16"] != losses["float32"]


def test_greedy_success_becomes_eval_records_per_split(cache, tmp_path):
    """The greedy hook with a sampler that answers the expert answer for the in-distribution hands: every split is
    evaluated and verified by the task's verifier (rule-OOD hands need other formulas, so some fail there)."""
    from model.chat import encode_response
    from tasks.general_points import expert_response, GeneralPointsConfig, sample_hands
    from launch.expert_data import GREEDY_SEED_OFFSET

    config = resolve("sft-tiny", OVERRIDES + ["greedy_examples=3"])
    tokenizer = None
    hands = sample_hands(GeneralPointsConfig(), config.seed + GREEDY_SEED_OFFSET, 3)
    calls = []

    def generate(params, model_config, input_ids, *, max_new_tokens, temperature, attention_mask, stop_tokens,
                 **vision):
        nonlocal tokenizer
        from launch.model_source import load_model
        tokenizer = tokenizer or load_model("tiny", seed=0).tokenizer
        calls.append(input_ids.shape)
        rows = [encode_response(tokenizer, expert_response(hand, GeneralPointsConfig())) for hand in hands]
        rows += [rows[0]] * (input_ids.shape[0] - len(rows))
        width = max(len(r) for r in rows)
        tokens = np.stack([np.pad(r, (0, width - len(r))) for r in rows])

        class Generation:
            pass
        out = Generation()
        out.tokens, out.lengths = tokens, np.asarray([len(r) for r in rows])
        return out

    run_sft(config, tmp_path, generate=generate, stop_after=1)  # the same compiled step as the other runs
    run, = load_runs([tmp_path])
    evals = run.of_kind("eval")
    assert sorted({r["split"] for r in evals}) == ["in_distribution", "rule_ood"]
    first = [r for r in evals if r["step"] == 0]
    assert len(first) == len(evals) == 2
    in_dist = next(r for r in first if r["split"] == "in_distribution")
    assert in_dist["success"] == 1.0 and in_dist["n"] == 3 and in_dist["success_se"] == 0.0
    assert "heldout_loss" in in_dist and in_dist["task"] == "gp-l"
    assert all(shape[0] == config.batch_size for shape in calls)


@pytest.mark.parametrize("overrides, message", [
    (["optimizer.lrr=1"], "unknown config key 'optimizer.lrr' (did you mean 'optimizer.lr'?); valid keys are: "),
    (["model=/nonexistent/llama"], "the model directory /nonexistent/llama does not exist; pass model=PATH"),
    (["data.path=/nonexistent/expert.jsonl"], "the expert data file /nonexistent/expert.jsonl does not exist"),
    (["freeze=[vision]"], "freeze entry 'vision' matches no parameter; use a param group"),
    (["attention_block=-1"], "attention_block=-1 must be at least 0"),
    (["log_every=0"], "log_every=0 must be at least 1"),
])
def test_bad_input_stops_with_one_sentence(cache, tmp_path, capsys, overrides, message):
    assert main(["sft", "--preset", "sft-tiny", "--out", str(tmp_path), *overrides]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not (tmp_path / "config.json").exists()  # a failed start leaves no run behind to conflict with
    if "unknown" in message:
        assert "checkpoint.every_steps" in error and "data.path" in error


def test_the_state_is_placed_on_the_mesh_with_moments_sharded_like_their_params():
    """On a 2 x 2 x 2 (data x fsdp x tensor) mesh of the 8 virtual CPU devices: each Adam moment gets its param's
    sharding (some of them really split), scalars are replicated, every leaf is committed to the mesh. The
    states `memgen sft` starts from (initial_states: one jitted program, a peak learning rate each) are the
    eager init's values, so placed."""
    from jax.sharding import PartitionSpec

    from launch.sft_run import initial_states, make_mesh_from_config, place_state
    from sft.optim import with_peak_learning_rate
    from model.config import preset
    from model.params import init_params
    from model.sharding import param_shardings
    from sft.optim import OptimizerConfig, flatten_paths, make_optimizer
    from sft.step import init_train_state

    config = preset("tiny")
    params = init_params(jax.random.PRNGKey(0), config)
    mesh = make_mesh_from_config((-1, 2, 2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    freeze = ("vision_encoder",)
    optimizer = make_optimizer(OptimizerConfig(), 10)
    state = init_train_state(params, optimizer, freeze, jax.random.PRNGKey(0))
    placed = place_state(state, param_shardings(config, mesh, params), freeze, mesh, optimizer)
    trainable = flatten_paths(placed.trainable)
    adam, = [node for node in jax.tree.leaves(placed.opt_state, is_leaf=lambda x: hasattr(x, "mu"))
             if hasattr(node, "mu")]  # optax's ScaleByAdamState(count, mu, nu) inside the chain
    split = 0
    for moments in (adam.mu, adam.nu):
        for path, moment in flatten_paths(moments).items():
            assert moment.sharding == trainable[path].sharding, path
            split += moment.sharding.spec != PartitionSpec(*[None] * moment.ndim)
    assert split > 0
    assert placed.step.sharding.spec == PartitionSpec() and placed.rng.sharding.mesh == mesh
    assert all(leaf.sharding.mesh == mesh for leaf in jax.tree.leaves(placed))

    shardings = param_shardings(config, mesh, params)
    built = initial_states(params, optimizer, freeze, 0, [1e-3, 3e-2], shardings, mesh)
    for state, lr in zip(built, [1e-3, 3e-2]):
        want = placed.replace(opt_state=with_peak_learning_rate(placed.opt_state, lr))
        assert jax.tree.structure(state) == jax.tree.structure(want)
        for got, expected, placement in zip(*map(jax.tree.leaves, (state, want, placed))):
            assert got.sharding == placement.sharding and got.dtype == expected.dtype
            np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_expert_data_from_a_jsonl_file_and_a_held_out_set_that_shares_no_prompt(cache, tmp_path):
    from launch.expert_data import heldout_conversations, load_expert_data, prompt_key
    from tasks.general_points import GeneralPointsConfig, expert_conversations, write_jsonl

    path = write_jsonl(expert_conversations(GeneralPointsConfig(), seed=5, size=12), tmp_path / "data" / "gp.jsonl")
    data = load_expert_data(task="general_points", modality="language", seed=0, train_examples=0,
                            eval_examples=40, path=str(path))
    assert len(data.train) == 12 and len(data.heldout) == 40
    assert not {prompt_key(c) for c in data.train} & {prompt_key(c) for c in data.heldout}
    # Drawn with the training data's own seed, every first candidate is a training prompt: all are replaced by
    # later draws of the same seed.
    train = expert_conversations(GeneralPointsConfig(), seed=7, size=10)
    heldout = heldout_conversations("general_points", "language", 7, 10, exclude=train)
    assert len(heldout) == 10 and not {prompt_key(c) for c in train} & {prompt_key(c) for c in heldout}
    summary = run_sft(resolve("sft-tiny", OVERRIDES + [f"data.path={path}"]), tmp_path / "run", stop_after=1)
    assert summary["step"] == 1 and summary["train_tokens"] > 0


def test_a_held_out_file_replaces_the_generated_held_out_set_and_must_not_repeat_a_training_question(tmp_path):
    """A data file in another format than the task's default (here 3-card hands with the target 12) gets its
    held-out set from data.heldout_path: the generated one would measure the loss on the default's prompts."""
    from launch.expert_data import DataError, load_expert_data, prompt_key
    from tasks.general_points import GeneralPointsConfig, expert_conversations, write_jsonl

    custom = GeneralPointsConfig(num_cards=3, target=12)
    train = write_jsonl(expert_conversations(custom, seed=5, size=12), tmp_path / "train.jsonl")
    heldout_examples = [c for c in expert_conversations(custom, seed=6, size=40)
                        if prompt_key(c) not in {prompt_key(t) for t in expert_conversations(custom, 5, 12)}]
    heldout = write_jsonl(heldout_examples, tmp_path / "heldout.jsonl")
    data = load_expert_data(task="general_points", modality="language", seed=0, train_examples=0, eval_examples=8,
                            path=str(train), heldout_path=str(heldout))
    assert [[m.content for m in c] for c in data.heldout] == [[m.content for m in c] for c in heldout_examples[:8]]
    generated = load_expert_data(task="general_points", modality="language", seed=0, train_examples=0,
                                 eval_examples=8, path=str(train))
    assert {prompt_key(c) for c in generated.heldout}.isdisjoint(prompt_key(c) for c in data.heldout)
    with pytest.raises(DataError, match=f"holds {len(heldout_examples)} conversations, eval_examples asks for 99"):
        load_expert_data(task="general_points", modality="language", seed=0, train_examples=0, eval_examples=99,
                         path=str(train), heldout_path=str(heldout))
    with pytest.raises(DataError, match=r"12 of the first 12 conversations .* \(line 1 first\)"):
        load_expert_data(task="general_points", modality="language", seed=0, train_examples=0, eval_examples=12,
                         path=str(train), heldout_path=str(train))
    with pytest.raises(DataError, match="does not exist"):
        load_expert_data(task="general_points", modality="language", seed=0, train_examples=0, eval_examples=2,
                         path=str(train), heldout_path=str(tmp_path / "missing.jsonl"))


VIRL_OVERRIDES = ["steps=2", "eval_every=2", "train_examples=8", "eval_examples=4", "greedy_examples=2",
                  "max_new_tokens=8", "checkpoint.every_steps=2"]


def _check_virl_run(out, task, splits):
    run, = load_runs([out])
    assert [r["step"] for r in run.of_kind("train")] == [1, 2]
    evals = run.of_kind("eval")
    assert sorted((r["step"], r["split"]) for r in evals) == sorted((s, split) for s in (0, 2) for split in splits)
    for record in evals:
        # greedy route success (one answer per decision) and per-step accuracy, as `memgen eval` measures them
        assert record["task"] == task and record["n"] == 2 and record["verify_budget"] == 1
        assert 0.0 <= record["success"] <= 1.0 and 0.0 <= record["per_step_accuracy"] <= 1.0
        assert ("heldout_loss" in record) == (record["split"] == "in_distribution")
    losses = [r["heldout_loss"] for r in evals if "heldout_loss" in r]
    assert len(losses) == 2 and all(np.isfinite(losses)) and losses[1] < losses[0]
    assert (out / "final" / "config.json").is_file()


def test_virl_l_sft_runs_with_held_out_loss_and_greedy_route_success(cache, tmp_path):
    """`memgen sft` on the tiny V-IRL-L preset: per-decision expert data from tasks.virl.expert, the held-out
    loss and greedy route success on in-distribution and rule-OOD routes."""
    assert main(["sft", "--preset", "virl-l-sft-init-tiny", "--out", str(tmp_path), *VIRL_OVERRIDES]) == 0
    _check_virl_run(tmp_path, "virl-l", ["in_distribution", "rule_ood"])


@pytest.mark.slow
def test_virl_vl_sft_runs_with_images_and_a_visual_ood_split(cache, tmp_path):
    """The vision variant (~100 s here): every example carries its 2x2 view grid; visual OOD is evaluated."""
    run_sft(resolve("virl-vl-sft-init-tiny", VIRL_OVERRIDES), tmp_path)
    _check_virl_run(tmp_path, "virl-vl", ["in_distribution", "rule_ood", "visual_ood"])


def test_virl_expert_data_generated_and_from_a_jsonl_with_images_and_the_suboptimal_ablation(tmp_path):
    from launch.data_cmd import task_data
    from launch.expert_data import load_expert_data, prompt_key
    from tasks.virl import VirlConfig
    from tasks.virl.expert import write_jsonl

    data = load_expert_data(task="virl", modality="language", seed=0, train_examples=30, eval_examples=5)
    assert len(data.train) == 30 and len(data.heldout) == 5
    assert not {prompt_key(c) for c in data.train} & {prompt_key(c) for c in data.heldout}
    # the same examples as `memgen data --task virl-l --kind expert` writes (its routes, in order)
    written = task_data("virl-l").expert(VirlConfig(), 0, 3)
    assert len(written) >= 30 and list(data.train) == written[:30]
    sub = load_expert_data(task="virl", modality="vision", seed=0, train_examples=3, eval_examples=0,
                           kind="suboptimal").train
    assert len(sub) == 3 and all([m.role for m in c] == ["user", "assistant", "user", "assistant"] for c in sub)
    assert all(c[0].image is not None for c in sub)
    path = write_jsonl(sub, tmp_path / "virl_vl_suboptimal.jsonl")
    read = load_expert_data(task="virl", modality="vision", seed=0, train_examples=0, eval_examples=2,
                            path=str(path))
    assert len(read.train) == 3 and len(read.heldout) == 2
    for got, want in zip(read.train, sub):
        assert [m.content for m in got] == [m.content for m in want]
        np.testing.assert_array_equal(got[0].image, want[0].image)


def test_remat_reaches_the_train_step_and_gives_the_losses_of_a_run_without_it(cli_run, tmp_path, monkeypatch):
    """remat=full (gradient checkpointing, the reference presets' setting) recomputes each layer in the backward
    pass: the same float32 losses and gradient norms as the run without it, up to rounding."""
    import launch.sft_run as sft_run

    seen = []
    original = sft_run.compiled_train_step

    def recording(model_config, *args, **kwargs):
        seen.append(model_config.remat)
        return original(model_config, *args, **kwargs)

    monkeypatch.setattr(sft_run, "compiled_train_step", recording)
    config = resolve("sft-tiny", OVERRIDES + ["remat=full", "eval_every=0"])
    assert config.remat == "full" and resolve("sft-gp-l").remat == resolve("gp-vl-sft-init").remat == "full"
    run_sft(config, tmp_path, stop_after=3)
    assert seen == ["full"]
    with_remat = [r for r in read_metrics(tmp_path) if r["kind"] == "train"]
    without = [r for r in read_metrics(cli_run) if r["kind"] == "train"][:3]
    assert [r["step"] for r in with_remat] == [1, 2, 3]
    for a, b in zip(with_remat, without):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)


def test_length_buckets_group_batches_by_length_and_pad_each_to_its_bucket(cache, tmp_path, monkeypatch):
    """data.length_buckets=2 on a mix of single-turn and (longer) multi-turn examples: every batch is padded to
    the shortest of the two bucket lengths that fits its longest example, both buckets occur, batches hold
    examples of similar length (sorted within chunks of 16 batches), and the run trains."""
    import launch.sft_run as sft_run
    from launch.model_source import load_model
    from sft.batches import encoded_lengths, padded_length
    from sft.data_order import bucket_for, length_buckets
    from tasks.general_points import GeneralPointsConfig, expert_conversations, suboptimal_trajectories, write_jsonl

    mixed = expert_conversations(GeneralPointsConfig(), 3, 16) + suboptimal_trajectories(GeneralPointsConfig(), 3, 16)
    path = write_jsonl(mixed, tmp_path / "mixed.jsonl")
    tokenizer = load_model("tiny", seed=0).tokenizer
    lengths = encoded_lengths(tokenizer, mixed)
    buckets = length_buckets(lengths, 2, 64)
    assert len(buckets) == 2 and buckets[0] < padded_length(lengths, 64) == buckets[1]
    padded = []
    original = sft_run.sft_batch

    def recording(tokenizer, conversations, image_config, *, length, num_image_slots=0):
        padded.append((length, encoded_lengths(tokenizer, conversations)))
        return original(tokenizer, conversations, image_config, length=length, num_image_slots=num_image_slots)

    monkeypatch.setattr(sft_run, "sft_batch", recording)
    config = resolve("sft-tiny", OVERRIDES + [f"data.path={path}", "data.length_buckets=2", "eval_every=0"])
    summary = run_sft(config, tmp_path / "run", stop_after=8)  # one epoch: 32 examples in 8 batches of 4
    assert summary["step"] == 8 and summary["skipped"] == 0
    assert len(padded) == 8 and {length for length, _ in padded} == set(buckets)
    for length, batch_lengths in padded:
        assert length == bucket_for(batch_lengths, buckets)
    # sorted by length within the chunk: the epoch's batches are in ascending order of length
    assert [max(b) for _, b in padded] == sorted(max(b) for _, b in padded)
    assert sum(length for length, _ in padded) < 8 * buckets[1]


def test_a_packed_run_trains_on_rows_of_several_examples_with_their_unpacked_loss(cache, tmp_path):
    """data.pack_length=1536 holds two GP examples (705 tokens with the tiny tokenizer) per row: the first step
    sees 2 x batch_size examples, in the data order (sft.data_order.packed_layout), and its loss is the token-mean
    loss of those examples unpacked under the initial params."""
    from launch.expert_data import load_expert_data
    from launch.model_source import load_model
    from sft.batches import encoded_lengths, forward_from_batch, sft_batch
    from sft.data_order import packed_layout
    from sft.loss import sft_loss

    config = resolve("sft-tiny", OVERRIDES + ["data.pack_length=1536", "eval_every=0"])
    summary = run_sft(config, tmp_path, stop_after=2)
    train = [r for r in read_metrics(tmp_path) if r["kind"] == "train"]
    assert summary["step"] == 2 and [r["step"] for r in train] == [1, 2]
    source = load_model("tiny", seed=0)
    data = load_expert_data(task="general_points", modality="language", seed=0, train_examples=32, eval_examples=8)
    lengths = encoded_lengths(source.tokenizer, data.train)
    first = packed_layout(0, 1, config.batch_size, 1536, lengths)[0]
    examples = [data.train[i] for row in first for i in row]
    assert len(examples) == 2 * config.batch_size
    assert train[0]["tokens"] == int(lengths[[i for row in first for i in row]].sum())
    batch = sft_batch(source.tokenizer, examples, source.image_config, length=int(lengths.max()))
    loss, metrics = sft_loss(forward_from_batch(source.params, batch, config=source.config), batch)
    assert train[0]["target_tokens"] == int(metrics["tokens"])
    assert train[0]["loss"] == pytest.approx(float(loss), rel=1e-5)
    assert np.isfinite(train[1]["loss"]) and train[1]["loss"] < train[0]["loss"]


def test_packing_and_length_buckets_do_not_combine(cache, tmp_path, capsys):
    assert main(["sft", "--preset", "sft-tiny", "--out", str(tmp_path), "data.pack_length=1536",
                 "data.length_buckets=2"]) == 2
    assert "data.pack_length and data.length_buckets > 1 do not combine" in capsys.readouterr().err
