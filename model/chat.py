"""Conversations -> token ids, loss masks and vision inputs for the policy (numpy only; the model converts to jax).

A conversation (`tasks.common.Conversation`, a tuple of `Message(role, content, image)`) is encoded turn by turn
in Llama 3.2 Vision's chat format (the same text `model.tokenizer.CHAT_TEMPLATE` renders):

  <|begin_of_text|>
  per message: <|start_header_id|> role <|end_header_id|> "\\n\\n" [<|image|>] content <|eot_id|>
  generation prompt: <|start_header_id|> assistant <|end_header_id|> "\\n\\n"

Every piece of text sits between special tokens, so no BPE merge crosses a message boundary and encoding turn by
turn equals encoding the whole: a rollout appends `encode_turn(feedback)` to prompt + sampled ids and gets exactly
the ids of the longer conversation (the ids are the trajectory; nothing is re-tokenised). The header's "\\n\\n" is
encoded apart from the content, as the sampler sees it (the prompt ends with the generation header); for content
not starting with whitespace this equals tokenising the rendered template.

When the tokenizer directory carries its own chat template (`ChatTokenizer.chat_template`, e.g. Llama 3.2 Vision
Instruct's, which writes a "Cutting Knowledge Date" system turn before text-only prompts), conversations are
rendered with it instead (jinja2, as transformers' apply_chat_template), template text and message contents are
told apart by rendering with markers, and appended turns are the difference of two renderings; the same
guarantees hold (docs/processor.md).

`assistant_mask` is 1 on the tokens an assistant turn generates (its content and its `<|eot_id|>`), the SFT loss
mask. Arrays of a batch (B batch, S sequence, I images per sample, T tiles):
  input_ids, attention_mask, assistant_mask, position_ids   (B, S) int32
  pixel_values (B, I, T, 3, tile, tile) float32, aspect_ratio_ids (B, I), aspect_ratio_mask (B, I, T),
  num_tiles (B, I), cross_attention_mask (B, S, I, T) int32 -- or all None when no sample has an image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, Sequence

import numpy as np

from model.processor import ImageProcessorConfig, VisionInputs, cross_attention_mask, preprocess_images
from model.tokenizer import CHAT_TEMPLATE, ChatTokenizer, render_chat_template


class Message(Protocol):
    """What the encoders read from a chat turn: `tasks.common.Message` fits (model/ does not import tasks/,
    dependencies point down only)."""

    @property
    def role(self) -> str: ...

    @property
    def content(self) -> str: ...

    @property
    def image(self) -> np.ndarray | None: ...


Conversation = Sequence[Message]


@dataclass(frozen=True)
class EncodedTurns:
    """The ids of some messages, their assistant (loss) mask, and the images they carry, in order."""

    token_ids: np.ndarray  # (S,) int32
    assistant_mask: np.ndarray  # (S,) int32
    images: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class _Turn:
    role: str
    content: str
    image: np.ndarray | None = None


# A context the template-driven encoders render appended turns after (a user prompt and an answer, no image).
_PRIOR = (_Turn("user", ""), _Turn("assistant", ""))


def _hf_message(role: str, text: str, has_image: bool) -> dict:
    if not has_image:
        return {"role": role, "content": text}
    return {"role": role, "content": [{"type": "image"}, {"type": "text", "text": text}]}


def _template_pieces(tokenizer: ChatTokenizer, messages: Sequence[Message], add_generation_prompt: bool
                     ) -> tuple[list[str], str]:
    """The directory's template rendered with each message's text replaced by a marker, split at the markers:
    frames[0], content 0, frames[1], ..., frames[n]. Raises when the template does not write every content
    exactly once, in order and unchanged (then memgen cannot tell template text from message text)."""
    template = tokenizer.chat_template
    contents = [m.content for m in messages]
    nonce = 0
    while any(f"\ue000{nonce}:" in c for c in contents):
        nonce += 1
    markers = [f"\ue000{nonce}:{i}\ue001" for i in range(len(messages))]
    marked = render_chat_template(template, [_hf_message(m.role, marker, m.image is not None)
                                             for m, marker in zip(messages, markers)],
                                  add_generation_prompt=add_generation_prompt, date_string=tokenizer.date_string)
    frames, rest = [], marked
    for marker in markers:
        head, found, rest = rest.partition(marker)
        if not found or marker in rest:
            raise ValueError("the tokenizer directory's chat template does not write each message's content exactly "
                             "once and in order; load the tokenizer with use_chat_template=False to use memgen's "
                             "turn format.")
        frames.append(head)
    frames.append(rest)
    real = render_chat_template(template, to_hf_messages(messages), add_generation_prompt=add_generation_prompt,
                                date_string=tokenizer.date_string)
    rebuilt = frames[0] + "".join(c + f for c, f in zip(contents, frames[1:]))
    if rebuilt != real:
        raise ValueError("the tokenizer directory's chat template changes message contents (e.g. trims a system "
                         "message); memgen keeps contents as given: strip them first, or load the tokenizer with "
                         "use_chat_template=False.")
    return frames, real


def _encode_with_template(tokenizer: ChatTokenizer, messages: Sequence[Message], add_generation_prompt: bool
                          ) -> tuple[list[int], list[int]]:
    """ids and assistant mask of the template rendering: template text through `encode_template_text` (its
    special-token strings become ids), message contents through `encode_text` (never parsed for special tokens).
    The mask covers each assistant content and the end-of-turn token the template writes right after it."""
    frames, _ = _template_pieces(tokenizer, messages, add_generation_prompt)
    ids = tokenizer.encode_template_text(frames[0])
    mask = [0] * len(ids)
    for message, frame in zip(messages, frames[1:]):
        body = tokenizer.encode_text(message.content)
        after = tokenizer.encode_template_text(frame)
        assistant = int(message.role == "assistant")
        ids += body + after
        mask += [assistant] * len(body)
        if after:
            mask += [assistant if after[0] in (tokenizer.eot_id, tokenizer.eom_id) else 0] + [0] * (len(after) - 1)
    return ids, mask


def render_conversation(tokenizer: ChatTokenizer, conversation: Conversation, *,
                        add_generation_prompt: bool = False) -> str:
    """The text `encode_conversation` encodes: the directory's chat template when the tokenizer has one
    (`tokenizer.chat_template`), else memgen's CHAT_TEMPLATE format."""
    if tokenizer.chat_template is not None:
        return _template_pieces(tokenizer, conversation, add_generation_prompt)[1]
    return render_chat_template(CHAT_TEMPLATE, to_hf_messages(conversation),
                                add_generation_prompt=add_generation_prompt, date_string=tokenizer.date_string)


def header_ids(tokenizer: ChatTokenizer, role: str) -> list[int]:
    """`<|start_header_id|>{role}<|end_header_id|>\\n\\n` as ids."""
    return [tokenizer.start_header_id, *tokenizer.encode_text(role), tokenizer.end_header_id,
            *tokenizer.encode_text("\n\n")]


def generation_prompt_ids(tokenizer: ChatTokenizer) -> list[int]:
    """The assistant header that ends a prompt the model answers."""
    if tokenizer.chat_template is not None:
        return _appended(tokenizer, [], add_generation_prompt=True)[0]
    return header_ids(tokenizer, "assistant")


def _appended(tokenizer: ChatTokenizer, messages: Sequence[Message], *, add_generation_prompt: bool
              ) -> tuple[list[int], list[int]]:
    """Template mode: the ids (and mask) `messages` add after a context, i.e. the rendering of context + messages
    minus that of the context. Raises when the template re-renders the context (e.g. an image turn appended to a
    text-only context drops the Llama Instruct system preamble): such a turn cannot be appended as ids."""
    prior_ids, _ = _encode_with_template(tokenizer, _PRIOR, False)
    ids, mask = _encode_with_template(tokenizer, (*_PRIOR, *messages), add_generation_prompt)
    if ids[: len(prior_ids)] != prior_ids:
        raise ValueError("with this tokenizer directory's chat template the turn changes how the earlier turns "
                         "render (an image after a text-only context?), so it cannot be appended as ids; put images "
                         "in the first prompt.")
    return ids[len(prior_ids):], mask[len(prior_ids):]


def encode_messages(
    tokenizer: ChatTokenizer, messages: Sequence[Message], *, add_bos: bool, add_generation_prompt: bool
) -> EncodedTurns:
    """Encode messages in chat format; `add_bos` for the start of a context, not for appended turns. With a
    directory chat template (`tokenizer.chat_template`) the start of a context is whatever the template writes
    before the first message (bos, and for Llama 3.2 Instruct a system preamble on text-only prompts)."""
    if tokenizer.chat_template is not None:
        images = tuple(m.image for m in messages if m.image is not None)
        if add_bos:
            ids, mask = _encode_with_template(tokenizer, messages, add_generation_prompt)
        else:
            ids, mask = _appended(tokenizer, messages, add_generation_prompt=add_generation_prompt)
        return EncodedTurns(np.asarray(ids, dtype=np.int32), np.asarray(mask, dtype=np.int32), images)
    ids: list[int] = [tokenizer.bos_id] if add_bos else []
    mask: list[int] = [0] * len(ids)
    images = []
    for message in messages:
        head = header_ids(tokenizer, message.role)
        if message.image is not None:
            head.append(tokenizer.image_id)
            images.append(message.image)
        body = [*tokenizer.encode_text(message.content), tokenizer.eot_id]
        ids += head + body
        mask += [0] * len(head) + [int(message.role == "assistant")] * len(body)
    if add_generation_prompt:
        head = generation_prompt_ids(tokenizer)
        ids += head
        mask += [0] * len(head)
    return EncodedTurns(np.asarray(ids, dtype=np.int32), np.asarray(mask, dtype=np.int32), tuple(images))


def encode_conversation(
    tokenizer: ChatTokenizer, conversation: Conversation, *, add_generation_prompt: bool = False
) -> EncodedTurns:
    """A whole conversation from `<|begin_of_text|>`; with `add_generation_prompt` it ends in the assistant header."""
    return encode_messages(tokenizer, conversation, add_bos=True, add_generation_prompt=add_generation_prompt)


def encode_turn(tokenizer: ChatTokenizer, message: Message, *, add_generation_prompt: bool = True) -> np.ndarray:
    """(S,) int32 ids of ONE appended turn (no bos), by default followed by the assistant header, e.g. a verifier's
    feedback after a sampled response: context + response ids (ending in `<|eot_id|>`) + these ids = the encoding of
    the longer conversation. An image on the message adds an `<|image|>` token; its pixels are the caller's."""
    return encode_messages(tokenizer, [message], add_bos=False, add_generation_prompt=add_generation_prompt).token_ids


def encode_response(tokenizer: ChatTokenizer, text: str) -> np.ndarray:
    """(S,) int32 ids of an assistant response as its turn holds them: content then `<|eot_id|>` (for expert
    answers and tests; a sampled response is already ids). With a directory chat template: the ids its
    assistant mask covers (the content and the end-of-turn token the template writes after it)."""
    if tokenizer.chat_template is not None:
        ids, mask = _appended(tokenizer, [_Turn("assistant", text)], add_generation_prompt=False)
        return np.asarray([i for i, m in zip(ids, mask) if m], dtype=np.int32)
    return np.asarray([*tokenizer.encode_text(text), tokenizer.eot_id], dtype=np.int32)


def bucket_length(length: int, bucket: int | Literal["pow2"]) -> int:
    """The padded length for `length` tokens: the next multiple of `bucket`, or the next power of two."""
    if bucket == "pow2":
        return 1 << max(0, (length - 1).bit_length())
    if not isinstance(bucket, int) or bucket <= 0:
        raise ValueError(f"bucket must be a positive int or 'pow2', got {bucket!r}.")
    return max(bucket, -(-length // bucket) * bucket)


@dataclass(frozen=True)
class ConversationBatch:
    """A padded batch (shapes in the module docstring). `lengths` (B,) counts each sample's real tokens."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    assistant_mask: np.ndarray
    position_ids: np.ndarray
    lengths: np.ndarray
    pixel_values: np.ndarray | None
    aspect_ratio_ids: np.ndarray | None
    aspect_ratio_mask: np.ndarray | None
    num_tiles: np.ndarray | None
    cross_attention_mask: np.ndarray | None


def batch_conversations(
    tokenizer: ChatTokenizer,
    conversations: Sequence[Conversation],
    image_config: ImageProcessorConfig,
    *,
    add_generation_prompt: bool,
    padding_side: Literal["left", "right"] = "right",
    bucket: int | Literal["pow2"] = 64,
    max_length: int | None = None,
    num_image_slots: int | None = None,
) -> ConversationBatch:
    """Encode and pad conversations to one bucketed length S with `tokenizer.pad_id`.

    Right padding is for training (the loss reads `assistant_mask`); left padding for generation prompts, so every
    sample's next token is at position S. `position_ids` count real tokens only (0 on padding), as transformers'
    generate derives them from the attention mask. `num_image_slots` fixes I for a static shape (see
    `model.processor.preprocess_images`). Sequences longer than `max_length` are an error, never truncated.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
    encoded = [encode_conversation(tokenizer, c, add_generation_prompt=add_generation_prompt) for c in conversations]
    lengths = np.asarray([len(e.token_ids) for e in encoded], dtype=np.int32)
    longest = int(lengths.max(initial=1))
    if max_length is not None and longest > max_length:
        raise ValueError(f"a conversation has {longest} tokens, more than max_length={max_length}; raise it.")
    size = bucket_length(longest, bucket)
    if max_length is not None:
        size = min(size, max_length)
    batch = len(encoded)
    input_ids = np.full((batch, size), tokenizer.pad_id, dtype=np.int32)
    attention_mask = np.zeros((batch, size), dtype=np.int32)
    assistant_mask = np.zeros((batch, size), dtype=np.int32)
    for b, e in enumerate(encoded):
        span = slice(size - len(e.token_ids), size) if padding_side == "left" else slice(0, len(e.token_ids))
        input_ids[b, span] = e.token_ids
        attention_mask[b, span] = 1
        assistant_mask[b, span] = e.assistant_mask
    position_ids = np.maximum(np.cumsum(attention_mask, axis=1, dtype=np.int32) - 1, 0) * attention_mask
    vision: VisionInputs | None = None
    cross_mask = None
    if any(e.images for e in encoded) or (num_image_slots or 0) > 0:
        vision = preprocess_images([e.images for e in encoded], image_config, num_image_slots)
        cross_mask = cross_attention_mask(input_ids, tokenizer.image_id, vision.num_tiles, image_config.max_image_tiles)
    return ConversationBatch(
        input_ids=input_ids, attention_mask=attention_mask, assistant_mask=assistant_mask,
        position_ids=position_ids.astype(np.int32), lengths=lengths,
        pixel_values=None if vision is None else vision.pixel_values,
        aspect_ratio_ids=None if vision is None else vision.aspect_ratio_ids,
        aspect_ratio_mask=None if vision is None else vision.aspect_ratio_mask,
        num_tiles=None if vision is None else vision.num_tiles,
        cross_attention_mask=cross_mask,
    )


def to_hf_messages(conversation: Conversation) -> list[dict]:
    """The conversation in transformers' chat format (an image becomes {"type": "image"} before the text), for
    `tokenizer.apply_chat_template`."""
    out = []
    for message in conversation:
        if message.image is None:
            out.append({"role": message.role, "content": message.content})
        else:
            out.append({"role": message.role,
                        "content": [{"type": "image"}, {"type": "text", "text": message.content}]})
    return out
