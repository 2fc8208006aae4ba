"""Types and helpers that every task shares: verdicts, conversation turns, episode transitions, and the
lenient JSON parser that reads a model's (untrusted) response.

A conversation is a tuple of `Message`s. The image of a vision task rides on the first user message only
(`Message.image`); later turns are text. Episodes return `Transition`s; `Transition.fresh_context` tells the
rollout whether the next prompt continues the same context (append the feedback turn's tokens to the KV cache)
or starts a new one (V-IRL after a correct action).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Role = Literal["system", "user", "assistant"]

# A response longer than this is cut before parsing: parsing time and memory stay bounded for any input.
MAX_RESPONSE_CHARS = 8192


@dataclass(frozen=True)
class Verdict:
    """A verifier's judgement of one response: the reward, whether it solves the task, a feedback sentence for
    the model, and a machine-readable category (e.g. "correct", "illegal_formula")."""

    reward: float
    success: bool
    feedback: str
    category: str


@dataclass(frozen=True)
class Message:
    """One chat turn. `image` (H, W, 3) uint8 is shown before the text of this turn (the `<|image|>` token)."""

    role: Role
    content: str
    image: np.ndarray | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        same_image = (self.image is None and other.image is None) or (
            self.image is not None and other.image is not None and np.array_equal(self.image, other.image)
        )
        return self.role == other.role and self.content == other.content and same_image

    __hash__ = None  # type: ignore[assignment]  # holds an array


Conversation = tuple[Message, ...]


@dataclass(frozen=True)
class Transition:
    """What an episode's `step(response)` returns.

    verdict:       the verifier's judgement of the response.
    done:          the episode is over (solved, budget spent, or the route ended).
    feedback:      the user turn to append after the response when the context continues, else None.
    next_prompt:   the full conversation the model answers next (None when done).
    fresh_context: True when `next_prompt` starts a new context instead of extending the previous one.
    """

    verdict: Verdict
    done: bool
    feedback: Message | None
    next_prompt: Conversation | None
    fresh_context: bool = False


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
# Bare card labels or words inside arrays, e.g. [J, Q, 10, 'K'] -> quote the bare identifiers.
_BARE_WORD = re.compile(r'(?<=[\[,])\s*([A-Za-z][A-Za-z0-9_]*)\s*(?=[,\]])')


def _balanced_object(text: str) -> str | None:
    """The earliest-starting brace-balanced `{...}` span of `text`; braces inside string literals (which only
    exist inside braces, so an apostrophe in surrounding prose is harmless) do not count. One linear pass."""
    stack: list[int] = []
    best: tuple[int, int] | None = None
    quote, escaped = "", False
    for i, ch in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "\"'" and stack:
            quote = ch
        elif ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            opened = stack.pop()
            if best is None or opened < best[0]:
                best = (opened, i)
    return None if best is None else text[best[0] : best[1] + 1]


def _single_to_double_quotes(text: str) -> str:
    """Turn 'single-quoted' JSON strings into "double-quoted" ones, escaping inner double quotes."""
    out, quote = [], ""
    for ch in text:
        if quote == "'":
            if ch == "'":
                out.append('"')
                quote = ""
            elif ch == '"':
                out.append('\\"')
            else:
                out.append(ch)
        elif quote == '"':
            out.append(ch)
            if ch == '"':
                quote = ""
        elif ch == "'":
            out.append('"')
            quote = "'"
        else:
            if ch == '"':
                quote = '"'
            out.append(ch)
    return "".join(out)


def _loads_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def parse_json_object(response: str) -> dict[str, Any] | None:
    """Read a JSON object out of a model's response, strictly first, then leniently; None if there is none.

    Lenient forms accepted: a ```json fenced block, an object surrounded by other text, single quotes,
    trailing commas, and bare identifiers inside arrays (e.g. unquoted card labels J, Q, K). Never evaluates
    the text. The input is cut to MAX_RESPONSE_CHARS first, so time is linear in a bounded length.
    """
    if not isinstance(response, str):
        return None
    text = response[:MAX_RESPONSE_CHARS].strip()
    parsed = _loads_object(text)
    if parsed is not None:
        return parsed
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for candidate in candidates:
        span = _balanced_object(candidate)
        if span is None:
            continue
        parsed = _loads_object(span)
        if parsed is not None:
            return parsed
        repaired = _single_to_double_quotes(span)
        repaired = _TRAILING_COMMA.sub(r"\1", repaired)
        repaired = _BARE_WORD.sub(r'"\1"', repaired)
        parsed = _loads_object(repaired)
        if parsed is not None:
            return parsed
    return None


def file_stamp(path: str | os.PathLike | None) -> tuple[int, int] | None:
    """(modification time in ns, size) of a file, or None when `path` is None or names no readable file: part of
    the cache key of what is read from a user's file (a prompt template), so that an edited file is read again in
    the same process (a notebook) instead of served stale from the cache."""
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except (OSError, ValueError):
        return None
    return stat.st_mtime_ns, stat.st_size
