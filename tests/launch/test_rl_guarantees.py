"""What issue 7 promises of `memgen rl`, checked end to end on the tiny model with short templates:

- a scripted GeneralPoints policy (always right / always wrong) through the real verifier path: the real rollout,
  `launch.episodes.EpisodeVerifier` (ids -> text -> Verdict -> feedback ids, cached per (row, step)) and
  `tasks.general_points.step`; the scripted text replaces the model's decoded response, as the V-IRL scripted
  tests of test_rl_virl.py substitute the oracle's answer;
- the logged X_RL: every train record's gflops is 6 N (D_init + D_RL) + 2 N D_buffer with D_init from the SFT run
  the policy starts from, and D_RL, D_buffer counted here from the rollouts' own trajectories;
- kill -9 during a checkpoint save, then the same command, ends with the uninterrupted run's params and metrics;
- GP-VL (episodes.modality=vision) trains and evaluates with recognition accuracy.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import launch.rl_config  # noqa: F401  (registers the presets)
from launch.cli import main
from launch.config import resolve
from launch.episodes import EpisodeVerifier
from launch.metrics import read_metrics
from launch.rl_common import RolloutRunner, load_policy, new_episodes, step_function, task_config
from launch.rl_run import run_rl
from model.chat import encode_messages
from tasks.common import Message
from tasks.general_points import REWARDS, expert_response, step as gp_step
from tasks.general_points.prompts import feedback_text
from tests.launch.resume_check import saved_weights, without_wall_times

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------ scripted policy
ROWS, BUDGET = 3, 3
SCRIPT = {}  # answer(state) -> the text judged instead of the model's; one runner (one compilation) for all


def right_answer(state):
    return expert_response(state.hand, state.config)


# Always wrong, a different category at each verification step (so rewards and feedback differ per step).
WRONG_CATEGORIES = ("illegal_formula", "wrong_value", "illegal_numbers")


def wrong_answer(state):
    values = [min(card.rank, 10) for card in state.hand]  # face_cards "ten"
    kind = WRONG_CATEGORIES[state.steps_taken]
    if kind == "illegal_formula":
        return "no json here"
    if kind == "wrong_value":  # at most 10 - 1 - 1 - 1 < 24
        return json.dumps({"formula": "-".join(map(str, values))})
    return json.dumps({"formula": "+".join(map(str, values + [1]))})  # a number that is not a card


@pytest.fixture(scope="module")
def scripted(templates):
    # feedback_len 96: no feedback turn is cut (the longest, closing <|eot_id|> included, is 65 tokens)
    config = resolve("rl-tiny", templates + ["episodes.reward=task", f"episodes.max_verify_steps={BUDGET}",
                                             "episodes.feedback_len=96"])
    policy = load_policy("tiny", seed=0)
    judged = []  # (row state's hand, scripted text) per step_fn call

    def scripted_step(state, text):
        answer = SCRIPT["answer"](state)
        judged.append(answer)
        return gp_step(state, answer)

    runner = RolloutRunner(policy, config.episodes, BUDGET, ROWS, step_fn=scripted_step)
    return config, policy, runner, judged


def play_scripted(scripted, answer, seed):
    config, policy, runner, judged = scripted
    SCRIPT["answer"] = answer
    judged.clear()
    states = new_episodes(task_config(config.episodes), (seed, 0), ROWS)
    trajectory, verifier, _ = runner(policy.params, states, jax.random.key(seed))
    return states, trajectory, verifier, list(judged)


def test_scripted_always_right_through_the_episode_verifier(scripted):
    states, t, verifier, judged = play_scripted(scripted, right_answer, seed=0)
    assert len(judged) == ROWS  # one step_fn call per (row, step), though JAX may run the callback again
    np.testing.assert_array_equal(t.rewards[:, 0], REWARDS["correct"])
    np.testing.assert_array_equal(t.rewards[:, 1:], 0.0)
    np.testing.assert_array_equal(t.dones, np.arange(BUDGET)[None].repeat(ROWS, 0) == 0)
    np.testing.assert_array_equal(t.success[:, 0], True)
    np.testing.assert_array_equal(t.valid.sum(axis=1), 1)  # episode length 1
    assert not t.valid[:, 1:].any()
    assert not t.response_mask[:, 1:].any() and t.response_mask[:, 0].any(axis=-1).all()  # later steps masked
    assert not t.feedback_mask.any()  # nothing appended after a solved step
    np.testing.assert_array_equal(t.bootstrap_value, 0.0)
    for b in range(ROWS):
        assert [v.category for v in verifier.verdicts[b]] == ["correct"] and len(verifier.responses[b]) == 1
        assert verifier.states[b].solved and verifier.states[b].steps_taken == 1
        # the verifier saw the model's own sampled ids decoded (special tokens skipped)
        n = int(t.response_mask[b, 0].sum())
        assert verifier.responses[b][0] == scripted[1].tokenizer.decode(t.response_ids[b, 0, :n],
                                                                        skip_special_tokens=True)
    assert verifier.truncated_feedback == 0


def test_scripted_always_wrong_through_the_episode_verifier(scripted):
    config, policy, runner, _ = scripted
    states, t, verifier, judged = play_scripted(scripted, wrong_answer, seed=1)
    tokenizer = policy.tokenizer
    assert len(judged) == ROWS * BUDGET
    expected = np.array([REWARDS[c] for c in WRONG_CATEGORIES], np.float32)
    np.testing.assert_array_equal(t.rewards, np.broadcast_to(expected, (ROWS, BUDGET)))
    np.testing.assert_array_equal(t.dones, np.broadcast_to(np.arange(BUDGET) == BUDGET - 1, (ROWS, BUDGET)))
    assert t.valid.all() and not t.success.any()  # episode length = the budget
    np.testing.assert_array_equal(t.bootstrap_value, 0.0)  # the budget ended every episode: nothing to bootstrap
    # feedback after every judged step but the last
    assert t.feedback_mask[:, : BUDGET - 1].any(axis=-1).all() and not t.feedback_mask[:, BUDGET - 1].any()
    cut = []  # per feedback turn: did it follow a response that did not end with <|eot_id|>?
    for b in range(ROWS):
        final = verifier.states[b]
        assert [v.category for v in verifier.verdicts[b]] == list(WRONG_CATEGORIES)
        assert final.steps_taken == BUDGET and not final.solved and final.done
        conversation = final.conversation  # user, (assistant, feedback user) x (BUDGET - 1)
        assert len(conversation) == 1 + 2 * (BUDGET - 1)
        for k in range(BUDGET - 1):
            fb = t.feedback_ids[b, k][t.feedback_mask[b, k] != 0]
            # the feedback ids are the turn the longer conversation adds: its encoding minus the shorter one's
            longer = encode_messages(tokenizer, conversation[: 2 * k + 3], add_bos=True,
                                     add_generation_prompt=True).token_ids
            shorter = encode_messages(tokenizer, conversation[: 2 * k + 2], add_bos=True,
                                      add_generation_prompt=False).token_ids
            np.testing.assert_array_equal(longer[: len(shorter)], shorter)
            turn = longer[len(shorter):]
            # after a response that did not end its turn (cut at max_new_tokens, or <|end_of_text|>) the feedback
            # first closes it
            response = t.response_ids[b, k][t.response_mask[b, k] != 0]
            closed = len(response) > 0 and int(response[-1]) == tokenizer.eot_id
            np.testing.assert_array_equal(fb, turn if closed else np.concatenate([[tokenizer.eot_id], turn]))
            assert np.concatenate([response, fb])[-len(turn) - 1] == tokenizer.eot_id
            assert conversation[2 * k + 2] == Message(
                "user", feedback_text(verifier.verdicts[b][k].feedback, final.config))
            cut.append(not closed)
            decoded = tokenizer.decode(fb, skip_special_tokens=True)  # the headers' role names stay as text
            assert decoded == f"user\n\n{conversation[2 * k + 2].content}assistant\n\n", decoded
            assert feedback_text(verifier.verdicts[b][k].feedback, final.config).startswith("Wrong: ")
    assert any(cut)  # the tiny model's 8-token responses: the closing <|eot_id|> is exercised
    assert verifier.truncated_feedback == 0
    # and they were appended to the context: the training context of step k + 1 ends with response k + feedback k
    from rl.rollout import transition_sequences

    sequences = jax.device_get(transition_sequences(t))
    for b in range(ROWS):
        for k in range(BUDGET - 1):
            context = sequences["context_ids"][b, k + 1][sequences["context_mask"][b, k + 1] != 0]
            response = t.response_ids[b, k][t.response_mask[b, k] != 0]
            fb = t.feedback_ids[b, k][t.feedback_mask[b, k] != 0]
            np.testing.assert_array_equal(context[-(len(response) + len(fb)):], np.concatenate([response, fb]))


# ------------------------------------------------------------------------- EpisodeVerifier, no compilation
@pytest.fixture(scope="module")
def tokenizer():
    from launch.model_source import load_model

    return load_model("tiny", seed=0).tokenizer


def _gp_states(count, budget=3):
    from tasks.general_points import GeneralPointsConfig

    return new_episodes(GeneralPointsConfig(max_verify_steps=budget), (7,), count)


def test_episode_verifier_caches_per_row_and_step(tokenizer):
    """A repeated callback (JAX may evaluate a pure callback more than once) returns the first answer and never
    advances an episode twice; inactive rows are not judged; the answers are the task step's."""
    calls = []

    def counting_step(state, text):
        calls.append(text)
        return step_function("task")(state, text)

    states = _gp_states(3)
    verifier = EpisodeVerifier(tokenizer, states, counting_step, feedback_len=96)
    texts = ["no json", expert_response(states[1].hand, states[1].config), "{}"]
    width = 256
    tokens = np.full((3, width), tokenizer.pad_id, np.int32)
    lengths = np.zeros((3,), np.int32)
    for b, text in enumerate(texts):
        ids = tokenizer.encode_text(text) + [tokenizer.eot_id]
        tokens[b, : len(ids)], lengths[b] = ids, len(ids)
    active = np.array([True, True, False])
    first = verifier(tokens, lengths, active, np.int32(0))
    again = verifier(tokens, lengths, active, np.int32(0))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert calls == texts[:2]  # once per active row, the eot stripped as a special token
    rewards, done, success, feedback_ids, feedback_mask = first
    np.testing.assert_array_equal(rewards, [REWARDS["illegal_formula"], REWARDS["correct"], 0.0])
    np.testing.assert_array_equal(done, [False, True, False])
    np.testing.assert_array_equal(success, [False, True, False])
    assert feedback_mask[0].any() and not feedback_mask[1:].any()
    assert (feedback_ids[1:] == tokenizer.pad_id).all()
    assert verifier.states[0].steps_taken == 1 and verifier.states[1].solved and verifier.states[2].steps_taken == 0
    # the next step judges again (another key), only the row still playing
    verifier(tokens, lengths, np.array([True, False, False]), np.int32(1))
    assert len(calls) == 3 and verifier.states[0].steps_taken == 2
    # reset: a fresh cache, so step 0 is judged again
    verifier.reset(_gp_states(3))
    verifier(tokens, lengths, active, np.int32(0))
    assert len(calls) == 5 and len(verifier.responses[0]) == 1


def test_episode_verifier_judges_each_row_once_when_every_device_calls_at_once(tokenizer):
    """On a mesh every device calls the verifier with the same arguments, each from its own thread
    (rl.rollout.call_verifier): all get the same answers, each row is judged once, one call at a time."""
    import sys
    import threading

    inside, most, judged = [0], [0], []

    def slow_step(state, text):  # counts the calls inside the task step at once; busy work invites thread switches
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        sum(i * i for i in range(20_000))
        judged.append(text)
        inside[0] -= 1
        return step_function("task")(state, text)

    verifier = EpisodeVerifier(tokenizer, _gp_states(4), slow_step, feedback_len=96)
    ids = tokenizer.encode_text("no json") + [tokenizer.eot_id]
    tokens = np.tile(np.asarray(ids, np.int32), (4, 1))
    lengths = np.full((4,), len(ids), np.int32)
    answers = [None] * 8

    def device(d):
        answers[d] = verifier(tokens, lengths, np.ones((4,), bool), np.int32(0))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=device, args=(d,)) for d in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert len(judged) == 4 and most[0] == 1
    assert all(state.steps_taken == 1 for state in verifier.states)
    for answer in answers[1:]:
        for got, want in zip(answer, answers[0]):
            np.testing.assert_array_equal(got, want)


def test_episode_verifier_closes_a_cut_response_before_its_feedback(tokenizer):
    """A response that ended with `<|eot_id|>` gets the feedback turn as is; one cut at max_new_tokens, stopped
    by `<|end_of_text|>` or empty gets `<|eot_id|>` first, so every assistant turn of the context is closed."""
    from model.chat import encode_turn

    states = _gp_states(4)
    verifier = EpisodeVerifier(tokenizer, states, step_function("task"), feedback_len=256)
    text = tokenizer.encode_text("no json")
    tokens = np.full((4, 16), tokenizer.pad_id, np.int32)
    tokens[0, : len(text) + 1] = text + [tokenizer.eot_id]
    tokens[1, : len(text)] = text
    tokens[3, : len(text) + 1] = text + [tokenizer.end_of_text_id]
    lengths = np.array([len(text) + 1, len(text), 0, len(text) + 1], np.int32)
    _, done, _, ids, mask = verifier(tokens, lengths, np.ones((4,), bool), np.int32(0))
    assert not done.any()
    turn = encode_turn(tokenizer, Message("user", feedback_text(verifier.verdicts[0][0].feedback,
                                                                 states[0].config)))
    np.testing.assert_array_equal(ids[0][mask[0] != 0], turn)
    for b in (1, 2, 3):
        np.testing.assert_array_equal(ids[b][mask[b] != 0], np.concatenate([[tokenizer.eot_id], turn]))
    assert verifier.responses[0] == verifier.responses[1] == verifier.responses[3] == ["no json"]
    assert verifier.responses[2] == [""]


def test_episode_verifier_refuses_a_feedback_len_below_the_closing_tokens(tokenizer):
    from launch.config import ConfigError
    from model.chat import generation_prompt_ids

    tail = len(generation_prompt_ids(tokenizer)) + 1
    with pytest.raises(ConfigError, match=f"feedback_len={tail} cannot hold a feedback turn"):
        EpisodeVerifier(tokenizer, _gp_states(1), step_function("task"), feedback_len=tail)
    EpisodeVerifier(tokenizer, _gp_states(1), step_function("task"), feedback_len=tail + 1)


def test_memgen_rl_refuses_a_too_short_feedback_len_in_one_sentence(tmp_path, capsys):
    assert main(["rl", "--preset", "rl-tiny", "--out", str(tmp_path), "episodes.feedback_len=3"]) == 2
    assert "feedback_len=3 cannot hold a feedback turn" in capsys.readouterr().err


def test_episode_verifier_truncates_long_feedback_keeping_its_end(tokenizer):
    from model.chat import encode_turn, generation_prompt_ids

    states = _gp_states(1)
    short = 12
    verifier = EpisodeVerifier(tokenizer, states, step_function("task"), feedback_len=short)
    tokens = np.array([tokenizer.encode_text("no json at all") + [tokenizer.eot_id]], np.int32)
    _, _, _, ids, mask = verifier(tokens, np.array([tokens.shape[1]]), np.array([True]), np.int32(0))
    whole = encode_turn(tokenizer, Message("user", feedback_text(verifier.verdicts[0][0].feedback,
                                                                 states[0].config)))
    assert len(whole) > short and verifier.truncated_feedback == 1 and mask.sum() == short
    tail = len(generation_prompt_ids(tokenizer)) + 1  # <|eot_id|> + the assistant header
    np.testing.assert_array_equal(ids[0], np.concatenate([whole[: short - tail], whole[-tail:]]))
    assert ids[0, short - tail] == tokenizer.eot_id


# ------------------------------------------------------------------------------ X_RL and kill -9, from SFT
# 3 updates of 4 episodes x 2 verification steps; a checkpoint after every update, written in the background, so
# the kill of the subprocess below lands mid-save; evaluation only at the end.
RUN = ["updates=3", "episodes_per_update=4", "ppo.minibatch_size=8", "eval_episodes=2", "checkpoint.every_steps=1",
       "checkpoint.keep=3", "checkpoint.async_save=true"]


@pytest.fixture(scope="module")
def sft_init(tmp_path_factory):
    """A 2-step tiny SFT run directory: the RL policy starts from its final/ (D_init > 0)."""
    from launch.sft_run import run_sft

    out = tmp_path_factory.mktemp("sft")
    run_sft(resolve("sft-tiny", ["steps=2", "eval_every=0", "greedy_examples=0", "train_examples=8"]), out)
    return out


@pytest.fixture(scope="module")
def rl_overrides(templates, sft_init):
    return templates + RUN + [f"init={sft_init}"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, rl_overrides):
    """The uninterrupted run, with every training rollout's trajectory kept (the runner is wrapped, not
    replaced: the compiled rollout is the run's own)."""
    import launch.rl_common

    out = tmp_path_factory.mktemp("rl-whole")
    config = resolve("rl-tiny", rl_overrides)
    trajectories = []
    call = launch.rl_common.RolloutRunner.__call__

    def keeping(self, *args, **kwargs):
        result = call(self, *args, **kwargs)
        if self.batch_size == config.episodes_per_update and self.episodes.temperature == config.episodes.temperature:
            trajectories.append(result[0])
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(launch.rl_common.RolloutRunner, "__call__", keeping)
        summary = run_rl(config, out, show_progress=False)
    return config, out, summary, trajectories


def _transition_tokens(t):
    """(D_RL per epoch, D_buffer) of one GeneralPoints rollout, counted here from the trajectory: every valid
    transition's context (prompt + earlier responses and feedback turns) + response; the rollout's prompt, sampled
    and feedback tokens."""
    prompt = t.prompt_mask.sum(axis=1)  # (B,)
    response = t.response_mask.sum(axis=-1)  # (B, K)
    feedback = t.feedback_mask.sum(axis=-1)  # (B, K)
    trained = 0
    for b in range(t.valid.shape[0]):
        context = int(prompt[b])
        for k in range(t.valid.shape[1]):
            if t.valid[b, k]:
                trained += context + int(response[b, k])
            context += int(response[b, k]) + int(feedback[b, k])
    return trained, int(prompt.sum() + response.sum() + feedback.sum())


def test_logged_gflops_are_x_rl_of_the_measured_tokens(reference_run, sft_init):
    """gflops = 6 N (D_init + D_RL) + 2 N D_buffer per train record (cumulative): D_init the SFT run's trained
    tokens (its train records), D_RL the record's `tokens` (= epochs x the context + response tokens of the valid
    transitions, recounted from the trajectory), D_buffer the rollout's tokens (recounted; each record logs its
    update's as `inference_tokens` and the cumulative counts as `compute_tokens`), N every parameter of the saved
    policy (value head included)."""
    from rl.compute import parameter_count

    config, out, summary, trajectories = reference_run
    train = [r for r in read_metrics(out) if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3] and len(trajectories) == 3
    d_init = sum(r["tokens"] for r in read_metrics(sft_init) if r["kind"] == "train")
    assert d_init > 0
    num_params = sum(a.size for a in saved_weights(out / "final").values())
    assert num_params == parameter_count(summary["params"])
    d_rl = d_buffer = 0
    for record, trajectory in zip(train, trajectories):
        trained, rollout = _transition_tokens(trajectory)
        assert record["tokens"] == config.ppo.epochs * trained
        assert trajectory.feedback_mask.any()  # the feedback turns are counted (2 verification steps)
        d_rl += record["tokens"]
        d_buffer += rollout
        assert record["inference_tokens"] == rollout
        assert record["compute_tokens"] == {"init_tokens": d_init, "train_tokens": d_rl, "inference_tokens": d_buffer}
        expected = (6 * num_params * (d_init + d_rl) + 2 * num_params * d_buffer) / 1e9
        assert record["gflops"] == pytest.approx(expected, rel=1e-12), record["step"]
    evals = [r for r in read_metrics(out) if r["kind"] == "eval"]
    assert evals and all(r["gflops"] == train[-1]["gflops"] for r in evals)  # evaluation is not training compute
    assert summary["gflops"] == pytest.approx(train[-1]["gflops"], rel=1e-12)
    # the final policy's compute record: the next run's D_init
    counts = json.loads((out / "final" / "memgen_compute.json").read_text())
    assert counts == {"init_tokens": d_init, "train_tokens": d_rl, "inference_tokens": d_buffer}


@pytest.mark.slow
def test_a_run_killed_mid_save_resumes_to_the_same_end(reference_run, rl_overrides, tmp_path):
    """kill -9 of a subprocess while the checkpoint of update 2 is being written: the same command then resumes
    (from update 1, or 2 if its files happened to be complete) and ends with the uninterrupted run's params and
    metrics."""
    _, whole, _, _ = reference_run
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(REPO / "tests/launch/rl_kill_script.py"), str(tmp_path), "2",
                             *rl_overrides], env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert result.returncode == -9, result.stderr[-3000:]
    assert max(r["step"] for r in read_metrics(tmp_path)) == 2 and not (tmp_path / "final").exists()
    print("checkpoints after the kill:", sorted(p.name for p in (tmp_path / "checkpoints").iterdir()))
    assert main(["rl", "--preset", "rl-tiny", "--out", str(tmp_path), *rl_overrides]) == 0
    assert without_wall_times(read_metrics(tmp_path)) == without_wall_times(read_metrics(whole))
    resumed, uninterrupted = saved_weights(tmp_path / "final"), saved_weights(whole / "final")
    assert resumed.keys() == uninterrupted.keys()
    assert any(name.startswith("value_head.safetensors:") for name in resumed)
    for name in uninterrupted:
        np.testing.assert_array_equal(resumed[name], uninterrupted[name], err_msg=name)
    assert json.loads((tmp_path / "final" / "memgen_compute.json").read_text()) == json.loads(
        (whole / "final" / "memgen_compute.json").read_text())


# ------------------------------------------------------------------------------------------------- GP-VL
def vision_change(run_dir) -> dict[str, float]:
    """The largest change of each param group of a tiny run's final policy from its initial one (seed 0)."""
    from launch.rl_common import load_policy
    initial, final = load_policy("tiny", seed=0).params, load_policy(str(run_dir), seed=0).params
    return {name: max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                      for a, b in zip(jax.tree.leaves(final[name]), jax.tree.leaves(initial[name])))
            for name in ("vision_encoder", "projector", "language_model")}


@pytest.mark.slow
def test_gp_vl_trains_and_evaluates_recognition(tmp_path, templates, monkeypatch):
    """`memgen rl` with episodes.modality=vision, 1 update of 4 episodes: a train record with a finite loss, and
    eval records on the three splits (visual OOD included) with recognition accuracy. Measured ~35 s of CPU (90 s
    wall at load average 8 on the shared 2-core machine): the vision rollout and update compile. The update
    encodes the images from their pixels, so the vision encoder and projector train with the rest (as the
    reference's); `freeze_vision=true` (the update reads the rollout's encoded images) leaves them as they were.
    While the update runs, the rollout's encoded images (4, V, D) are no longer in device memory (the buffer holds
    what the update reads: the pixels, once per episode), and the buffer is gone when the evaluation runs."""
    from launch import rl_run

    compiled, evaluate, live_during_update, live_during_evaluation = rl_run._compiled, rl_run.evaluate, [], []

    def watched(policy, config, mesh):
        runner, update, *rest = compiled(policy, config, mesh)

        def update_watched(state, buffer, rng):
            live_during_update.append({array.shape for array in jax.live_arrays()})
            return update(state, buffer, rng)
        return runner, update_watched, *rest

    def evaluate_watched(*args, **kwargs):
        # on the CPU a jax.Array read as numpy keeps a zero-copy view of itself (a reference cycle, which only the
        # collector frees; a GPU array's numpy value is a host copy): count only what the run still references
        gc.collect()
        live_during_evaluation.append({array.shape for array in jax.live_arrays()})
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(rl_run, "_compiled", watched)
    monkeypatch.setattr(rl_run, "evaluate", evaluate_watched)
    common = [*templates, "updates=1", "episodes.modality=vision", "episodes_per_update=4", "ppo.minibatch_size=8"]
    assert main(["rl", "--preset", "rl-tiny", "--out", str(tmp_path), *common, "eval_episodes=2"]) == 0
    assert all(change > 0 for change in vision_change(tmp_path).values())
    from model.config import preset
    model = preset("tiny")  # the run's policy config (init=tiny)
    encoded_images = (4, model.vision.max_num_tiles * model.vision.num_patches, model.text.hidden_size)
    assert len(live_during_update) == 1 and encoded_images not in live_during_update[0]
    buffer_pixels = [shape for shape in live_during_update[0] if len(shape) == 6]  # (E, I, T, C, H, W)
    assert [shape[0] for shape in buffer_pixels] == [4]  # once per episode, not per transition (4 x 2)
    assert buffer_pixels[0] not in set().union(*live_during_evaluation[-3:])  # the evaluation after the update
    assert main(["rl", "--preset", "rl-tiny", "--out", str(tmp_path / "frozen"), *common, "eval_episodes=1",
                 "freeze_vision=true"]) == 0
    frozen = vision_change(tmp_path / "frozen")
    assert frozen["vision_encoder"] == frozen["projector"] == 0 and frozen["language_model"] > 0
    records = read_metrics(tmp_path)
    train = [r for r in records if r["kind"] == "train"]
    assert len(train) == 1 and train[0]["task"] == "gp-vl" and np.isfinite(train[0]["loss"])
    assert train[0]["tokens"] > 0 and train[0]["gflops"] > 0
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["split"] for r in evals] == ["in_distribution", "rule_ood", "visual_ood"]
    for r in evals:
        assert r["task"] == "gp-vl" and 0 <= r["recognition_accuracy"] <= 1 and "recognition_accuracy_se" in r
    assert (tmp_path / "final" / "config.json").is_file()
