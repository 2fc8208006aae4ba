"""`memgen rl` and `memgen eval` on the tiny model: a short seeded run raises the mean "digits" reward (the share of
digit characters in a response, EpisodeConfig.reward), a run stopped and resumed ends exactly as an uninterrupted
one, and `memgen eval` writes one eval record per split and verification budget (with pass@k when sampling)."""


import jax
import numpy as np
import pytest

import launch.rl_config  # noqa: F401  (registers the presets)
from launch.cli import main
from launch.config import resolve
from launch.metrics import read_metrics
from launch.metrics_schema import load_run
from launch.rl_run import run_rl
from tests.launch.resume_check import assert_resume_is_exact, without_wall_times


# The k1 KL to the frozen initial policy in the reward and an entropy bonus (both small). The same PPO settings in
# both runs below: they share one compiled update (the schedule's horizon is optimizer state).
KL_AND_ENTROPY = ["ppo.kl_mode=k1_reward", "ppo.kl_coef=0.001", "ppo.entropy_coef=0.001"]


def test_rl_raises_the_mean_reward(tmp_path, templates):
    """With the k1 KL in the reward and the entropy bonus on."""
    config = resolve("rl-tiny", templates + ["updates=8"] + KL_AND_ENTROPY)
    run_rl(config, tmp_path / "run", show_progress=False)
    train = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    rewards = [r["reward_mean"] for r in train]
    assert len(rewards) == 8
    print("rl-tiny reward_mean per update:", np.round(rewards, 3).tolist())  # measured 0.026 -> 0.23
    assert np.mean(rewards[-2:]) > np.mean(rewards[:2]) + 0.1, rewards
    assert all(r["entropy"] > 0 for r in train)
    # the first rollout is sampled by the reference itself; then the policy moves away from it
    assert abs(train[0]["kl_k1"]) < 1e-4 and train[-1]["kl_k1"] > 0.1
    run = load_run(tmp_path / "run")  # what memgen report reads
    assert {r["split"] for r in run.evals()} == {"in_distribution", "rule_ood"}
    assert (tmp_path / "run" / "final" / "config.json").is_file()


def test_resume_equals_uninterrupted(tmp_path, templates):
    """With the KL and the entropy bonus: the resumed run rebuilds the same frozen reference."""
    config = resolve("rl-tiny", templates + ["updates=2"] + KL_AND_ENTROPY)
    _, records = assert_resume_is_exact(config, tmp_path)
    train = [r for r in records if r["kind"] == "train"]
    assert abs(train[0]["kl_k1"]) < 1e-4 and train[1]["kl_k1"] != 0  # sampled by the reference itself at first
    # the process-wide runner caches keep no params (they would stay in device memory after the run)
    from launch import rl_run
    runners = [*rl_run._RUNNERS.values(), *(r for cache in rl_run._EVAL_RUNNERS.values() for r in cache.values())]
    assert runners and all(runner.policy.params is None for runner in runners)


def test_eval_sweeps_the_verification_budget(tmp_path, templates):
    """Records per split x budget with pass@k, the held-out loss (checked against numpy over model.forward's logits
    of the same expert conversations) and the arm; `memgen predict` reads an SFT-arm and an RL-arm evaluation."""
    from launch.predict import checkpoint_from_run_dir
    from launch.rl_common import heldout_expert_conversations, load_policy
    from launch.expert_data import HELDOUT_SEED_OFFSET
    from sft.batches import encoded_lengths, padded_length, sft_batch
    import model

    overrides = [o.replace("episodes.", "sampling.") for o in templates]
    assert main(["eval", "--preset", "eval-tiny", "--out", str(tmp_path / "ckpt" / "sft"), *overrides,
                 "n_samples=2", "sampling.temperature=1.0", "episodes=2", "heldout_examples=3", "arm=sft"]) == 0
    records = [r for r in read_metrics(tmp_path / "ckpt" / "sft") if r["kind"] == "eval"]
    assert sorted((r["split"], r["verify_budget"]) for r in records) == sorted(
        (s, b) for s in ("in_distribution", "rule_ood") for b in (1, 2))
    for r in records:
        assert r["n"] == 4 and set(r["pass_at_k"]) == {"1", "2"} and 0 <= r["success"] <= 1
        assert r["episode_length"] <= r["verify_budget"] and r["arm"] == "sft"

    config = resolve("eval-tiny", overrides)
    policy = load_policy("tiny", seed=config.seed)
    for split in ("in_distribution", "rule_ood"):
        conversations = heldout_expert_conversations(config.sampling, split, 1, config.seed + HELDOUT_SEED_OFFSET, 3)
        batch = sft_batch(policy.tokenizer, conversations, policy.image_config,
                          length=padded_length(encoded_lengths(policy.tokenizer, conversations), 64))
        logits = np.asarray(model.forward(policy.params, policy.config, batch["input_ids"],
                                          attention_mask=batch["attention_mask"]), np.float64)[:, :-1]
        logits -= logits.max(-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        targets = np.take_along_axis(log_probs, batch["input_ids"][:, 1:, None], -1)[..., 0]
        weights = batch["loss_mask"][:, 1:] != 0
        expected = -targets[weights].mean()
        for r in (r for r in records if r["split"] == split):
            np.testing.assert_allclose(r["heldout_loss"], expected, rtol=1e-4)
            assert r["heldout_tokens"] == weights.sum()

    assert main(["eval", "--preset", "eval-tiny", "--out", str(tmp_path / "ckpt" / "rl"), *overrides, "episodes=2",
                 "verify_budgets=1", "arm=rl"]) == 0
    checkpoint = checkpoint_from_run_dir(tmp_path / "ckpt", "in_distribution", None)
    first = next(r for r in records if r["split"] == "in_distribution")  # all at step 0: predict takes the first
    assert checkpoint["heldout_loss"] == first["heldout_loss"] and checkpoint["pass_at_k"] == first["pass_at_k"]
    assert checkpoint["post_rl_success"] == read_metrics(tmp_path / "ckpt" / "rl")[0]["success"]


def test_grpo_runs_and_raises_the_mean_reward(tmp_path, templates):
    config = resolve("rl-tiny", templates + ["updates=5", "algorithm=grpo", "grpo.group_size=4",
                                             "grpo.minibatch_size=8", "grpo.epochs=4", "grpo.kl_coef=0.001"])
    run_rl(config, tmp_path / "grpo", show_progress=False)
    records = [r for r in read_metrics(tmp_path / "grpo") if r["kind"] == "train"]
    rewards = [r["reward_mean"] for r in records]
    print("rl-tiny GRPO reward_mean per update:", np.round(rewards, 3).tolist())
    assert "response_tokens" in records[0] and "value_loss" not in records[0]  # the GRPO update ran
    assert records[-1]["kl_k3"] > 0  # the k3 term against the frozen reference
    assert np.mean(rewards[-2:]) > np.mean(rewards[:2]) + 0.05, rewards  # measured 0.027 -> 0.11


def solves_even_hands(state, text):
    """A scripted GeneralPoints step: the expert's answer on hands whose ranks sum to an even number, else the
    model's text (some episodes end at their first try, some play on)."""
    from tasks.general_points import expert_response, step

    solve = sum(card.rank for card in state.hand) % 2 == 0
    return step(state, expert_response(state.hand, state.config) if solve else text)


def test_the_updates_memory_settings_train_as_the_plain_update(tmp_path, templates, monkeypatch):
    """`ppo.microbatches=2` (gradient accumulation), `remat=full`, `attention_block=4` (attention over blocks of
    4 queries, in the update and in the rollout's prefill and appends) and `episodes.cache_stages=2` (the rollout's
    cache grown per step) change what the update and the rollout hold in memory, not what they compute: over the
    real policy, prompts and padding of `memgen rl` an update ends with the plain update's params and loss (up to
    what Adam makes of last-bit differences, below). bf16 compute with bf16 params (and Adam moments) runs the
    same update to a loss near fp32's."""
    import rl.update
    from launch import rl_run

    splits = []
    split = rl.update.split_microbatches
    monkeypatch.setattr(rl.update, "split_microbatches", lambda batch, count: splits.append(count) or split(batch,
                                                                                                         count))
    settings = {"plain": [], "memory": ["ppo.microbatches=2", "remat=full", "attention_block=4",
                                        "episodes.cache_stages=2"],
                "bf16": ["compute_dtype=bfloat16", "param_dtype=bfloat16"]}
    params, loss = {}, {}
    for name, overrides in settings.items():
        config = resolve("rl-tiny", templates + ["updates=1", "eval_every=0", *overrides])
        params[name] = run_rl(config, tmp_path / name, show_progress=False)["params"]
        loss[name] = [r for r in read_metrics(tmp_path / name) if r["kind"] == "train"][0]["loss"]
    # Adam turns float-rounding differences of near-zero gradients into steps far above the rounding: the blocked,
    # staged rollout's log-probs differ from the plain one's in their last bits, and a few dozen of the model's
    # entries end up to ~1.3e-4 apart (the rest within 2e-5), against 8 steps of lr 1e-2; a gradient off by any
    # factor would move most entries by far more
    diff = np.concatenate([np.abs(np.asarray(parts, np.float64) - np.asarray(whole, np.float64)).ravel() for
                           whole, parts in zip(jax.tree.leaves(params["plain"]), jax.tree.leaves(params["memory"]))])
    assert diff.max() <= 5e-4 and np.mean(diff > 2e-5) < 1e-3, (diff.max(), np.sum(diff > 2e-5), diff.size)
    assert loss["memory"] == pytest.approx(loss["plain"], abs=1e-4)  # the mean over 8 steps of those params
    assert splits == [2]  # traced once: the run with microbatches splits its minibatches in two
    policies = {key[0] for key in rl_run._COMPILED}  # the compiled programs' model configs
    assert any(c.remat == "full" and c.attention_block == 4 for c in policies)
    assert any(c.dtype == "bfloat16" for c in policies)
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params["plain"]))  # fp32 master weights
    assert all(leaf.dtype == jax.numpy.bfloat16 for leaf in jax.tree.leaves(params["bf16"]))
    assert loss["bf16"] == pytest.approx(loss["plain"], rel=0.05) and loss["bf16"] != loss["plain"]


def test_runners_take_the_episodes_cache_stages_at_most_one_per_step():
    """`episodes.cache_stages` reaches the rollout (rl.rollout's equivalence test covers what it does), at most one
    stage per verification step (an evaluation at a smaller budget than training's)."""
    from launch.rl_common import RolloutRunner, load_policy

    config = resolve("rl-tiny", ["episodes.cache_stages=3"])
    policy = load_policy(config.init, seed=0)
    assert [RolloutRunner(policy, config.episodes, steps, 2).rollout_config.cache_stages for steps in (5, 3, 1)] == [
        3, 3, 1]


def test_the_rollout_keeps_pixels_in_the_compute_dtype_which_encodes_them_exactly():
    """The pixels the rollout keeps for the update (`rl.buffer.Images`) are in the compute dtype: half of float32's
    bytes in bfloat16, and the same encoded images, as the vision encoder casts them to that dtype first."""
    from launch.rl_common import RolloutRunner, _encode_images, load_policy, new_episodes, task_config

    config = resolve("rl-tiny", ["episodes.modality=vision"])
    policy = load_policy(config.init, seed=0, compute_dtype="bfloat16")
    runner = RolloutRunner(policy, config.episodes, 1, 2)
    states = new_episodes(task_config(config.episodes), (0, 0), 2)
    _, _, images = runner(policy.params, states, jax.random.key(0))
    assert images.pixel_values.dtype == jax.numpy.bfloat16
    batch = runner.prompts(states)
    assert batch.pixel_values.dtype == np.float32
    from_float32 = _encode_images(policy.params, policy.config, batch.pixel_values, batch.aspect_ratio_ids,
                                  batch.aspect_ratio_mask)  # the program the rollout encodes with (eager differs)
    np.testing.assert_array_equal(np.asarray(images.states, np.float32), np.asarray(from_float32, np.float32))


def test_runs_of_one_process_follow_their_own_learning_rate_schedules(tmp_path, templates):
    """Runs that share the compiled update (they differ only in their rates and lengths) each get their own peak
    learning rate and cosine horizon: the optimizer state's, which the train records' lr reads."""
    for lr, updates in ((1e-2, 8), (3e-3, 2)):
        config = resolve("rl-tiny", templates + [f"updates={updates}", f"ppo.learning_rate={lr}",
                                                 f"ppo.final_learning_rate={lr / 10}", "eval_every=0"])
        run_rl(config, tmp_path / str(updates), stop_after=2, show_progress=False)
        horizon = updates * 8  # optimizer steps: 8 episodes x 2 verification steps / minibatches of 8 x 4 epochs
        expected = [lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / horizon))) for step in (0, 8)]
        records = [r for r in read_metrics(tmp_path / str(updates)) if r["kind"] == "train"]
        np.testing.assert_allclose([r["lr"] for r in records], expected, rtol=1e-5)


def test_skip_padding_keeps_the_schedule_and_computes_fewer_steps(tmp_path, templates, monkeypatch):
    """`ppo.skip_padding`: with a scripted policy that solves some hands at the first try (their episodes end
    there, leaving a padded transition), the update takes fewer optimizer steps than the plain one, over the same
    valid transitions (the same train tokens), and the next update starts at the plain run's learning rate: the
    cosine is advanced by the skipped steps. The state's step counts what was taken. `ppo.episode_rows` on the same
    rollout: as many steps over conversations as the plain update's over pairs of transitions, fewer tokens."""
    from launch import rl_run
    from launch.rl_common import RolloutRunner

    monkeypatch.setattr(rl_run, "_COMPILED", {})
    monkeypatch.setattr(rl_run, "shared_runner", lambda policy, episodes, steps, batch, mesh=None: RolloutRunner(
        policy, episodes, steps, batch, mesh=mesh, step_fn=solves_even_hands))
    records = {}
    for name, extra in (("plain", []), ("skip", ["ppo.skip_padding=true"]),
                        ("rows", ["ppo.episode_rows=true", "ppo.minibatch_size=1"])):
        config = resolve("rl-tiny", templates + ["updates=2", "eval_every=0", "episodes.reward=task",
                                                 "ppo.minibatch_size=2", "ppo.epochs=1", *extra])
        run_rl(config, tmp_path / name, show_progress=False)
        records[name] = [r for r in read_metrics(tmp_path / name) if r["kind"] == "train"]
    plain, skip = records["plain"], records["skip"]
    assert all(0 < r["episode_length"] < 2 for r in plain)  # some episodes ended after one transition
    assert [r["optimizer_steps"] for r in plain] == [8, 8]  # 8 episodes x 2 transitions / minibatches of 2
    # ceil(valid / 2): the valid transitions are 8 x episode_length
    assert [r["optimizer_steps"] for r in skip] == [-(-round(8 * r["episode_length"]) // 2) for r in skip]
    assert all(r["optimizer_steps"] < 8 for r in skip)
    assert skip[0]["tokens"] == plain[0]["tokens"]  # the same rollout (the policies differ after it)
    assert [r["lr"] for r in skip] == pytest.approx([r["lr"] for r in plain], rel=1e-6)
    assert skip[-1]["loss"] != plain[-1]["loss"]
    # ppo.episode_rows: minibatches of 1 conversation (2 transitions), 8 steps as the plain update's and the same
    # schedule; one forward per episode scores fewer tokens than its transitions' contexts + responses
    rows = records["rows"]
    assert [r["optimizer_steps"] for r in rows] == [8, 8]
    assert [r["lr"] for r in rows] == pytest.approx([r["lr"] for r in plain], rel=1e-6)
    assert rows[0]["inference_tokens"] == plain[0]["inference_tokens"] and rows[0]["tokens"] < plain[0]["tokens"]


def test_runs_of_one_process_evaluate_at_their_own_eval_temperature(tmp_path, templates, monkeypatch):
    """The evaluation runners a run reuses from an earlier run in the process sample at its eval_temperature (they
    were shared by the training settings alone, so a sampled evaluation after a greedy one was greedy)."""
    import launch.rl_run

    seen = []
    evaluate = launch.rl_run.evaluate

    def recording(policy, params, episodes, **kwargs):
        fields = evaluate(policy, params, episodes, **kwargs)
        seen.append((episodes.temperature, {r.episodes.temperature for r in kwargs["runners"].values()}))
        return fields

    monkeypatch.setattr(launch.rl_run, "evaluate", recording)
    for index, temperature in enumerate((0.0, 1.0, 0.0)):
        config = resolve("rl-tiny", templates + [f"eval_temperature={temperature}", "eval_episodes=2", "eval_every=1"])
        run_rl(config, tmp_path / str(index), stop_after=0, show_progress=False)  # the step-0 evaluation only
    assert [temperature for temperature, _ in seen] == [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]  # two splits each
    assert all(runners == {temperature} for temperature, runners in seen), seen


def test_critic_warmup_updates_train_the_value_head_alone_and_grpo_refuses_them(tmp_path, templates):
    """critic_warmup: the run's first updates leave every policy param as loaded (bit for bit) and move the value
    head at the constant peak rate; then PPO starts from a fresh optimizer state, so the policy's first step is an
    ordinary first Adam step (every param moves by at most the peak rate, those with a gradient well above eps by
    it; a continued Adam count would shrink that step to ~0.74x and the cosine to its middle)."""
    import jax

    from launch.config import ConfigError
    from launch.rl_common import load_policy

    # one optimizer step per update (16 transitions, one minibatch, one epoch)
    config = resolve("rl-tiny", templates + ["updates=2", "critic_warmup=1", "ppo.epochs=1", "ppo.minibatch_size=16"])
    initial = load_policy(config.init, seed=config.seed).params
    trunk = lambda params: {k: v for k, v in params.items() if k != "value_head"}  # noqa: E731
    changed = lambda a, b: any(not np.array_equal(np.asarray(x), np.asarray(y))  # noqa: E731
                               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    warmed = run_rl(config, tmp_path / "run", stop_after=1, show_progress=False)["params"]
    assert not changed(trunk(warmed), trunk(initial)) and changed(warmed["value_head"], initial["value_head"])
    trained = run_rl(config, tmp_path / "run", show_progress=False)["params"]  # resumes for the PPO update
    steps = np.concatenate([np.abs(np.asarray(a) - np.asarray(b)).ravel()
                            for a, b in zip(jax.tree.leaves(trunk(trained)), jax.tree.leaves(trunk(warmed)))])
    assert steps.max() == pytest.approx(1e-2, rel=1e-3) and steps.max() <= 1e-2 * (1 + 1e-4)
    records = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert [r.get("critic_warmup", False) for r in records] == [True, False]
    assert [r["lr"] for r in records] == pytest.approx([1e-2, 1e-2])
    # uninterrupted, the run passes from warm-up to PPO inside its loop: the same params and records
    whole = run_rl(config, tmp_path / "whole", show_progress=False)["params"]
    assert not changed(whole, trained)
    assert without_wall_times(read_metrics(tmp_path / "whole")) == without_wall_times(read_metrics(tmp_path / "run"))
    assert records[0]["loss"] == pytest.approx(0.5 * records[0]["value_loss"], rel=1e-5)
    for bad in (["critic_warmup=3"], ["critic_warmup=1", "algorithm=grpo", "grpo.group_size=4",
                                      "grpo.minibatch_size=8"]):
        with pytest.raises(ConfigError, match="critic_warmup=.* must be between 0 and updates=2"):
            run_rl(resolve("rl-tiny", templates + ["updates=2", *bad]), tmp_path / "bad", show_progress=False)


def test_eval_vision_reports_recognition_and_visual_ood(tmp_path, templates):
    overrides = [o.replace("episodes.", "sampling.") for o in templates]
    assert main(["eval", "--preset", "eval-tiny", "--out", str(tmp_path / "vl"), *overrides, "episodes=2",
                 "verify_budgets=1", "splits=in_distribution,visual_ood", "sampling.modality=vision"]) == 0
    records = [r for r in read_metrics(tmp_path / "vl") if r["kind"] == "eval"]
    assert [r["split"] for r in records] == ["in_distribution", "visual_ood"]
    for r in records:
        assert r["task"] == "gp-vl" and 0 <= r["recognition_accuracy"] <= 1 and "recognition_accuracy_se" in r


def test_eval_bf16_params_give_the_bf16_compute_records(tmp_path, templates, monkeypatch):
    """`param_dtype=bfloat16` (the reference eval presets': a 90B's fp32 params would not fit) loads the params in
    bf16 and, under bf16 compute, evaluates as fp32 params cast at use: the same rounding, once at load, so the
    same records to the bit, held-out loss included. (With images the encoder's layer norms apply their weights in
    fp32, so fp32 params keep a few more bits there: measured 5.765905 vs 5.765913 held-out loss on gp-vl.)"""
    import launch.eval_run
    from launch.eval_run import run_eval

    dtypes = []
    evaluate = launch.eval_run.evaluate
    monkeypatch.setattr(launch.eval_run, "evaluate", lambda policy, params, *a, **k: dtypes.append(
        {leaf.dtype.name for leaf in jax.tree.leaves(params)}) or evaluate(policy, params, *a, **k))
    overrides = [o.replace("episodes.", "sampling.") for o in templates] + [
        "episodes=2", "verify_budgets=1", "splits=in_distribution", "heldout_examples=2", "compute_dtype=bfloat16"]
    records = {dtype: without_wall_times(run_eval(resolve("eval-tiny", overrides + [f"param_dtype={dtype}"]),
                                                  tmp_path / dtype, show_progress=False))
               for dtype in ("float32", "bfloat16")}
    assert dtypes == [{"float32"}, {"bfloat16"}]
    assert records["bfloat16"] == records["float32"] and records["float32"][0]["heldout_tokens"] > 0
    assert resolve("eval-gp-vl", ["init=tiny"]).param_dtype == "bfloat16"


def test_predict_measures_policies_as_the_rl_run_evaluates():
    """`memgen predict` measures the SFT checkpoint and each RL run's policy in the RL config's param and compute
    dtypes, as `memgen rl`'s own evaluations (a reference RL preset: bf16), so predictors and targets agree."""
    from pathlib import Path

    from launch.predict_run import _policy_as_rl_evaluates

    rl_config = resolve("rl-tiny", ["compute_dtype=bfloat16", "param_dtype=bfloat16"])
    policy = _policy_as_rl_evaluates(Path("tiny"), rl_config, 0)  # a preset name stands for a directory here
    assert policy.config.dtype == "bfloat16"
    assert {leaf.dtype for leaf in jax.tree.leaves(policy.params)} == {jax.numpy.dtype("bfloat16")}
    plain = _policy_as_rl_evaluates(Path("tiny"), resolve("rl-tiny", []), 0)
    assert plain.config.dtype == "float32" and {leaf.dtype for leaf in jax.tree.leaves(plain.params)} == {
        jax.numpy.dtype("float32")}


def test_eval_resumes_the_cells_it_has_not_written(tmp_path, templates, monkeypatch):
    """A re-run keeps the complete records, drops a torn last line, evaluates only the missing cells and ends
    with the file an uninterrupted evaluation writes; a directory holding another config is refused."""
    import launch.eval_run
    from launch.config import ConfigError
    from launch.eval_run import run_eval

    overrides = [o.replace("episodes.", "sampling.") for o in templates] + ["episodes=2"]
    config = resolve("eval-tiny", overrides)
    whole = run_eval(config, tmp_path / "whole", show_progress=False)
    assert len(whole) == 4  # 2 budgets x 2 splits
    run_eval(config, tmp_path / "parts", show_progress=False)
    path = tmp_path / "parts" / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[1][:25])  # killed while writing the second cell's record
    evaluated = []
    evaluate = launch.eval_run.evaluate
    monkeypatch.setattr(launch.eval_run, "evaluate", lambda policy, *a, **k: evaluated.append(
        (k["split"], k["max_rows"], policy.config.dtype)) or evaluate(policy, *a, **k))
    assert run_eval(config, tmp_path / "parts", show_progress=False) == whole
    assert [rows for _, rows, _ in evaluated] == [None] * 3  # only the cells without a complete record
    run_eval(resolve("eval-tiny", overrides + ["max_rows=1", "verify_budgets=1", "compute_dtype=bfloat16"]),
             tmp_path / "chunked", show_progress=False)
    assert evaluated[3:] == [("in_distribution", 1, "bfloat16"), ("rule_ood", 1, "bfloat16")]
    with pytest.raises(ConfigError, match="max_rows=0 must be at least 1"):
        run_eval(resolve("eval-tiny", overrides + ["max_rows=0"]), tmp_path / "bad", show_progress=False)
    assert read_metrics(tmp_path / "parts") == read_metrics(tmp_path / "whole")
    with pytest.raises(ConfigError, match="another config"):
        run_eval(resolve("eval-tiny", overrides + ["episodes=3"]), tmp_path / "parts", show_progress=False)


def test_evaluate_in_chunks_of_whole_instances_equals_one_batch_when_greedy(tmp_path, templates):
    """max_rows splits an evaluation into rollout batches of whole instances (the last padded with repeats that are
    dropped). With a scripted answer that solves some instances and not others (which rows are which shows up in
    every field), greedy chunks give the one batch's fields exactly. Sampled, a max_rows that holds every row
    keeps the one batch and its draws."""
    import dataclasses

    from launch.rl_common import RolloutRunner, evaluate, evaluation_chunk, load_policy

    config = resolve("rl-tiny", templates + ["episodes.reward=task"])
    policy = load_policy(config.init, seed=0)

    def runners(episodes):
        return {(2, rows): RolloutRunner(policy, episodes, 2, rows, step_fn=solves_even_hands) for rows in (4, 6)}

    common = dict(split="in_distribution", budget=2, num_episodes=3, n_samples=2, seed=5)
    greedy = dataclasses.replace(config.episodes, temperature=0.0)
    cache = runners(greedy)
    whole = evaluate(policy, policy.params, greedy, runners=cache, **common)
    assert 0 < whole["success"] < 1, whole  # some instances solved, some not
    assert evaluate(policy, policy.params, greedy, runners=cache, max_rows=4, **common) == whole  # 2 + 1 instances
    sampled = dataclasses.replace(config.episodes, temperature=1.0)
    cache = runners(sampled)
    one = evaluate(policy, policy.params, sampled, runners=cache, **common)
    assert evaluate(policy, policy.params, sampled, runners=cache, max_rows=6, **common) == one
    assert evaluate(policy, policy.params, sampled, runners=cache, max_rows=5, **common)["n"] == 6
    assert [evaluation_chunk(10, 4, m) for m in (None, 40, 39, 8, 3)] == [10, 10, 9, 2, 1]
