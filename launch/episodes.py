"""The host side of a rollout: the episode registry that `rl.rollout`'s `jax.pure_callback` calls to judge a
batch of responses (the one imperative boundary of a rollout).

`EpisodeVerifier(tokenizer, states, step_fn, feedback_len)` holds one task episode state per row (numpy/PIL,
task-side, e.g. `tasks.general_points.EpisodeState`) and is called with the sampled token ids (B, N), their lengths
(B,), the active rows (B,) and the verification step k. For each active row it decodes the ids (skipping special
tokens), calls `step_fn(state, text) -> (state, Transition)`, and returns the reward, done, success and the
feedback turn's ids (`model.chat.encode_turn`: the user turn plus the next assistant header) right-padded to F.
A response that does not end with `<|eot_id|>` (cut at max_new_tokens, or stopped by `<|end_of_text|>` /
`<|eom_id|>`) gets its feedback prefixed with `<|eot_id|>`, so every assistant turn of the context is closed before
the next user turn, as in the chat the text conversation encodes (and as the reference's rollouts, which re-render
the conversation as text, see it); the token is environment text, not part of the response's mask.

JAX may evaluate a pure callback more than once with the same arguments (on a mesh it does, once per device, from
several threads: calls take a lock), so results are cached per (row, k): a repeated call returns the first answer
and never advances an episode twice. A feedback turn longer than F keeps
its first tokens and its closing `<|eot_id|>` + assistant header (counted in `truncated_feedback`).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Sequence

import numpy as np

from launch.config import ConfigError
from model.chat import encode_turn, generation_prompt_ids
from model.tokenizer import ChatTokenizer

StepFn = Callable[[Any, str], tuple[Any, Any]]


class EpisodeVerifier:
    """Per-row episode states and the verifier callback of `rl.rollout.rollout` (module docstring).

    After a rollout: `states` (the final episode states), `responses[b]` (the decoded texts, one per verified
    step), `verdicts[b]` (the task's Verdicts) and `truncated_feedback` (feedback turns cut to F)."""

    def __init__(self, tokenizer: ChatTokenizer, states: Sequence[Any], step_fn: StepFn, feedback_len: int):
        self.tokenizer = tokenizer
        self.step_fn = step_fn
        self.feedback_len = int(feedback_len)
        self._lock = threading.Lock()
        self._tail = len(generation_prompt_ids(tokenizer)) + 1  # <|eot_id|> + the assistant header
        if self.feedback_len <= self._tail:
            raise ConfigError(f"feedback_len={self.feedback_len} cannot hold a feedback turn: its closing "
                              f"<|eot_id|> and the next assistant header alone take {self._tail} tokens; raise "
                              f"episodes.feedback_len (sampling.feedback_len for memgen eval) to the turn's "
                              f"length, typically 64-160")
        self.reset(states)

    def reset(self, states: Sequence[Any]) -> "EpisodeVerifier":
        """Start over on new episode states. Reuse one verifier across rollouts: it is a static argument of the
        jitted rollout, so a new object would compile the rollout again."""
        self.states = list(states)
        self.responses: list[list[str]] = [[] for _ in self.states]
        self.verdicts: list[list[Any]] = [[] for _ in self.states]
        self.truncated_feedback = 0
        self.seconds = 0.0  # host time spent in the callback (decode, verify, encode the feedback)
        self._results: dict[tuple[int, int], tuple] = {}
        return self

    def _fit(self, ids: np.ndarray) -> np.ndarray:
        if len(ids) <= self.feedback_len:
            return ids
        self.truncated_feedback += 1
        return np.concatenate([ids[: self.feedback_len - self._tail], ids[-self._tail:]])

    def _judge(self, row: int, tokens: np.ndarray) -> tuple:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        state, transition = self.step_fn(self.states[row], text)
        self.states[row] = state
        self.responses[row].append(text)
        self.verdicts[row].append(transition.verdict)
        feedback = np.zeros((0,), np.int32)
        if not transition.done and transition.feedback is not None:
            feedback = encode_turn(self.tokenizer, transition.feedback)
            if len(tokens) == 0 or int(tokens[-1]) != self.tokenizer.eot_id:  # close the assistant turn first
                feedback = np.concatenate([np.asarray([self.tokenizer.eot_id], np.int32), feedback])
            feedback = self._fit(feedback)
        return float(transition.verdict.reward), bool(transition.done), bool(transition.verdict.success), feedback

    def __call__(self, tokens, lengths, active, step):
        # On a mesh every device calls with the same arguments, from its own thread (rl.rollout.call_verifier): one
        # call at a time, the first judges and the others read its cached results.
        with self._lock:
            began = time.perf_counter()
            try:
                return self._call(tokens, lengths, active, step)
            finally:
                self.seconds += time.perf_counter() - began

    def _call(self, tokens, lengths, active, step):
        tokens, lengths, active, step = np.asarray(tokens), np.asarray(lengths), np.asarray(active), int(step)
        batch = tokens.shape[0]
        rewards = np.zeros((batch,), np.float32)
        done = np.zeros((batch,), bool)
        success = np.zeros((batch,), bool)
        feedback_ids = np.full((batch, self.feedback_len), self.tokenizer.pad_id, np.int32)
        feedback_mask = np.zeros((batch, self.feedback_len), np.int32)
        for row in range(batch):
            if not active[row]:
                continue
            key = (row, step)
            if key not in self._results:
                self._results[key] = self._judge(row, tokens[row, : int(lengths[row])])
            rewards[row], done[row], success[row], feedback = self._results[key]
            feedback_ids[row, : len(feedback)] = feedback
            feedback_mask[row, : len(feedback)] = 1
        return rewards, done, success, feedback_ids, feedback_mask
