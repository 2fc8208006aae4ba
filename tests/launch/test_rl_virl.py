"""V-IRL in the RL loop (launch/rl_virl.py) on the tiny model with the real rollout and real episode states: a
scripted policy that always answers right / always wrong (the verifier judges the oracle's answer or a non-JSON
text instead of the model's) gives the expected rewards, decision-point counts, masks and episode ends, and the
PPO buffer's terminals are the route ends only; `memgen rl` on rl-virl-tiny runs and resumes exactly, and
`memgen eval` writes per-step accuracy and route success with standard errors."""


import jax
import numpy as np
import pytest

import launch.rl_config  # noqa: F401  (registers the presets)
from launch.cli import main
from launch.config import resolve
from launch.metrics import read_metrics
from launch.rl_common import RolloutRunner, load_policy
from launch.rl_run import run_rl
from launch.rl_virl import (TrainingRoutes, decision_step, make_buffer_fn, play, rollout_steps, training_statistics,
                            update_buffer)
from tasks.virl import oracle_response
from tests.launch.resume_check import assert_resume_is_exact

ROWS = 2


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A short V-IRL prompt template, so the tiny model's prompts (its tokenizer has few merges) stay short: the
    first two decision points of a 2-step route fit 640 tokens (measured at most 622, relative actions); feedback
    turns are cut to 64 tokens (head + the closing tokens, counted as truncated_feedback)."""
    path = tmp_path_factory.mktemp("virl") / "prompt.txt"
    path.write_text("{instruction}\n{action_space}\n{history}\nAnswer in JSON.")
    return [f"episodes.prompt_template={path}", "episodes.prompt_len=640", "episodes.feedback_len=64"]


SCRIPT = {}  # the scripted policy's answer(state) -> text; one runner (one compilation) serves every script


def scripted(answer):
    """Judge `answer(state)` instead of the model's text in the scripted runner."""
    SCRIPT["answer"] = answer
    return answer


@pytest.fixture(scope="module")
def scripted_setup(template):
    # whole routes (12 decision points): their later prompts need more room than the first two
    config = resolve("rl-virl-tiny", template + ["episodes.prompt_len=1024"])
    policy = load_policy(config.init, seed=0)
    routes = TrainingRoutes(config.episodes, seed=0)
    runner = RolloutRunner(policy, config.episodes, rollout_steps(config.episodes.max_verify_steps), ROWS,
                           step_fn=lambda state, text: decision_step(state, SCRIPT["answer"](state)))
    return config, policy, routes, {"right": runner, "wrong": runner}


RIGHT = oracle_response
WRONG = lambda state: "no json here"  # noqa: E731


def test_always_right_walks_every_route_to_the_end(scripted_setup):
    config, policy, routes, runners = scripted_setup
    scripted(RIGHT)
    supply = routes.supply((0, 0))
    rows = [supply() for _ in range(ROWS)]
    rails = [len(row.rail) for row in rows]
    result = play(runners["right"], policy.params, rows, jax.random.key(0))  # evaluation mode: to the end
    assert result.calls == max(rails)
    valid = np.stack([t.valid for t in result.trajectories], 1)  # (B, calls, K)
    for b in range(ROWS):
        # one answer per decision point, at the first verification step, each +1; then the row is inactive
        np.testing.assert_array_equal(valid[b, :, 0], np.arange(result.calls) < rails[b])
        assert not valid[b, :, 1:].any()
        rewards = np.stack([t.rewards for t in result.trajectories], 1)[b]
        np.testing.assert_array_equal(rewards[:, 0], np.where(np.arange(result.calls) < rails[b], 1.0, 0.0))
        dones = np.stack([t.dones for t in result.trajectories], 1)[b]
        np.testing.assert_array_equal(dones[:, 0], valid[b, :, 0])  # every decision point ends at its answer
        terminals = np.array([t[b] for t in result.terminals])
        np.testing.assert_array_equal(terminals, np.arange(result.calls) == rails[b] - 1)  # the route: at stop()
        final = result.rows[b]  # the states are immutable: the rows' states at the end, not the ones passed in
        assert final.done and final.solved and len(final.verdicts) == rails[b]
        assert all(v.category == "correct" for v in final.verdicts) and not rows[b].verdicts
        assert any(f is final for f in result.finished)
        assert not np.stack([t.feedback_mask for t in result.trajectories], 1)[b].any()  # nothing appended
    assert len(result.finished) == ROWS


def test_always_wrong_ends_each_route_after_the_budget(scripted_setup):
    config, policy, routes, runners = scripted_setup
    scripted(WRONG)
    supply = routes.supply((0, 1))
    decision_points = 2
    result = play(runners["wrong"], policy.params, [supply() for _ in range(ROWS)], jax.random.key(1),
                  calls=decision_points, replace=supply)
    budget = config.episodes.max_verify_steps
    for trajectory, terminal in zip(result.trajectories, result.terminals):
        assert trajectory.valid.all()  # budget answers + the one past it, every row, every call
        np.testing.assert_array_equal(trajectory.rewards, -1.0)  # invalid format -1, budget exceeded -1
        last = np.arange(budget + 1) == budget
        np.testing.assert_array_equal(trajectory.dones, np.broadcast_to(last, (ROWS, budget + 1)))
        assert terminal.all()
        # feedback turns after the judged wrong answers, none after the last
        assert trajectory.feedback_mask[:, :budget].any(-1).all() and not trajectory.feedback_mask[:, budget].any()
    assert len(result.finished) == ROWS * decision_points  # a new route per row after each call
    assert [v.category for v in result.finished[0].verdicts] == ["invalid_format"] * budget + ["budget_exceeded"]
    stats = training_statistics(result)
    assert stats["episode_return"] == -(budget + 1) and stats["episode_success"] == 0
    assert stats["per_step_accuracy"] == 0 and stats["routes_finished"] == ROWS * decision_points

    buffer = update_buffer(make_buffer_fn(config.ppo), runners["wrong"], policy.params, result)
    k = rollout_steps(budget)
    assert buffer["valid"].shape == (ROWS * decision_points * k,) and bool(buffer["valid"].all())


def test_buffer_carries_value_across_decision_points(scripted_setup):
    """Always right: a decision point ends at every answer but the route goes on, so GAE bootstraps from the next
    decision point's value: with lambda = 1 the return of a non-final answer is r + gamma * R_next."""
    import dataclasses
    from rl.gae import GAEConfig

    config, policy, routes, runners = scripted_setup
    scripted(RIGHT)
    supply = routes.supply((0, 2))
    result = play(runners["right"], policy.params, [supply() for _ in range(ROWS)], jax.random.key(2), calls=3,
                  replace=supply)
    ppo = dataclasses.replace(config.ppo, gae=GAEConfig(gamma=0.5, lam=1.0))
    buffer = jax.device_get(update_buffer(make_buffer_fn(ppo), runners["right"], policy.params, result))
    k = rollout_steps(config.episodes.max_verify_steps)
    returns = buffer["returns"].reshape(ROWS, 3, k)[:, :, 0]
    bootstrap = np.asarray(runners["right"].values(policy.params, result.rows))
    expected = np.zeros((ROWS, 3))
    following = bootstrap
    for d in (2, 1, 0):
        following = expected[:, d] = 1.0 + 0.5 * following
    np.testing.assert_allclose(returns, expected, rtol=1e-5)
    # as conversation rows (ppo.episode_rows): one row per decision point's conversation, the same GAE
    rows = jax.device_get(update_buffer(make_buffer_fn(dataclasses.replace(ppo, episode_rows=True)), runners["right"],
                                        policy.params, result))
    assert rows["stream_ids"].shape[0] == ROWS * 3 and rows["valid"].shape == (ROWS * 3, k)
    for name in ("returns", "advantages", "valid"):
        np.testing.assert_allclose(rows[name].reshape(-1), buffer[name], rtol=1e-6, err_msg=name)


def test_evaluation_in_chunks_of_whole_routes_equals_one_batch(scripted_setup):
    """max_rows splits a V-IRL evaluation into rollout batches of whole routes (the last padded with a repeat that
    is dropped): with a script that walks only the first route right (which route is which shows in every field),
    two chunks of 2 rows give the one batch of 3's fields exactly."""
    from launch.rl_common import evaluate
    from launch.rl_virl import evaluation_episodes, evaluation_splits

    config, policy, _, runners = scripted_setup
    budget = config.episodes.max_verify_steps
    common = dict(split="in_distribution", budget=budget, num_episodes=3, n_samples=1, seed=5)
    split = evaluation_splits(config.episodes, budget)["in_distribution"]
    first = evaluation_episodes(config.episodes, "in_distribution", split, 5, 1)[0].route.dest.name
    scripted(lambda state: RIGHT(state) if state.route.dest.name == first else WRONG(state))
    cache = {("virl", budget, 2): runners["right"],
             ("virl", budget, 3): RolloutRunner(policy, config.episodes, rollout_steps(budget), 3,
                                                step_fn=lambda state, text: decision_step(state, SCRIPT["answer"](state)))}
    whole = evaluate(policy, policy.params, config.episodes, runners=cache, **common)
    assert whole["success"] == pytest.approx(1 / 3) and whole["n"] == 3, whole
    two_rows = {("virl", budget, 2): runners["right"]}  # one batch of 3 rows would build an unscripted runner
    assert evaluate(policy, policy.params, config.episodes, runners=two_rows, max_rows=2, **common) == whole


def test_memgen_rl_virl_runs_and_resumes(tmp_path, template):
    config = resolve("rl-virl-tiny", template)
    _, records = assert_resume_is_exact(config, tmp_path)
    train = [r for r in records if r["kind"] == "train"]
    assert len(train) == 2 and all(r["task"] == "virl-l" and "per_step_accuracy" in r for r in train)
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["split"] for r in evals] == ["in_distribution", "rule_ood"]
    for r in evals:
        assert 0 <= r["per_step_accuracy"] <= 1 and "per_step_accuracy_se" in r and "success_se" in r


def test_memgen_rl_virl_trains_on_conversation_rows(tmp_path, template):
    """ppo.episode_rows: each decision point's conversation is a row, 2 rows x 2 decision points = 4 per update."""
    config = resolve("rl-virl-tiny", template + ["updates=1", "ppo.episode_rows=true", "ppo.minibatch_size=2"])
    run_rl(config, tmp_path / "run", show_progress=False)
    train = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert [r["optimizer_steps"] for r in train] == [config.ppo.epochs * 4 // 2]
    assert np.isfinite(train[0]["loss"]) and train[0]["tokens"] > 0


def test_memgen_eval_virl(tmp_path, template):
    overrides = [o.replace("episodes.", "sampling.") for o in template]
    assert main(["eval", "--preset", "eval-virl-tiny", "--out", str(tmp_path / "eval"), *overrides,
                 "verify_budgets=1", "episodes=2"]) == 0
    records = [r for r in read_metrics(tmp_path / "eval") if r["kind"] == "eval"]
    assert [(r["split"], r["verify_budget"]) for r in records] == [("in_distribution", 1), ("rule_ood", 1)]
    for r in records:
        assert r["task"] == "virl-l" and r["n"] == 2 and r["success_se"] >= 0 and r["per_step_accuracy_se"] >= 0
        assert r["episode_length"] >= 2  # a random policy answers twice (budget 1 + the one past it) at least


@pytest.mark.parametrize("task, text", [
    ("general_points", 'Let me think: 10 * 2 + 4. {"cards": ["10", "2", "4", "K"], "formula": "10*2+4"}'),
    ("virl", '{"current observation": "No landmarks nearby; élan", "action": "forward()"}'),
    ("virl", "no key here at all"),
])
def test_answer_key_starts_against_prefix_decoding(task, text):
    """The answer key's first token, from per-token decoding of the ids, equals a brute-force search over decoded
    prefixes (the shortest prefix whose decoding, plus one token, reaches the key's first character)."""
    from launch.rl_common import ANSWER_KEYS, answer_key_starts
    from launch.model_source import load_model

    tokenizer = load_model("tiny", seed=0).tokenizer
    ids = tokenizer.encode_text(text)
    length = len(ids) + 3
    response = np.full((1, 1, length), tokenizer.pad_id, np.int32)
    response[0, 0, :len(ids)] = ids
    mask = np.zeros_like(response)
    mask[0, 0, :len(ids)] = 1
    start = int(answer_key_starts(tokenizer, response, mask, task)[0, 0])
    key = f'"{ANSWER_KEYS[task]}"'
    if key not in text:
        assert start == length
        return
    at = text.find(key)
    expected = next(i for i in range(len(ids)) if len(tokenizer.decode(ids[:i + 1])) > at)
    assert start == expected and key not in tokenizer.decode(ids[:start])
    assert key in tokenizer.decode(ids[start:])  # the token holding the opening quote (e.g. ' "') starts it
