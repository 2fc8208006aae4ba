"""SFT batches from expert conversations: chat-template token ids, the loss mask on assistant tokens only, vision
inputs, and padding to one fixed length so a run's train step compiles once. numpy only (host side); the arrays
go to the device as they are.

A batch is the dict ``train_step`` takes and ``forward_from_batch`` reads (B batch, S sequence, I images per
example, T tiles):

  input_ids, attention_mask, position_ids   (B, S) int32   right-padded with the tokenizer's pad id
  loss_mask                                 (B, S) int32   1 on supervised TARGET tokens: the assistant turns'
                                                            content and <|eot_id|> (model.chat's assistant_mask)
  pixel_values (B, I, T, 3, tile, tile) float32, aspect_ratio_ids (B, I), aspect_ratio_mask (B, I, T),
  cross_attention_mask (B, S, I, T) int32   only when the examples carry images

Packing several short examples into one row is sft/packing.py: the same entries plus ``segment_ids``, per-example
position ids, image slots per example, and its own ``logits_fn`` (a block-diagonal causal mask).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from model.chat import Conversation, batch_conversations, bucket_length, encode_conversation
from model.processor import ImageProcessorConfig
from model.tokenizer import ChatTokenizer

VISION_KEYS = ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask")
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "position_ids") + VISION_KEYS


def encoded_lengths(tokenizer: ChatTokenizer, conversations: Sequence[Conversation]) -> np.ndarray:
    """(N,) int32 token counts of the conversations in chat format (no generation prompt)."""
    return np.asarray([len(encode_conversation(tokenizer, c).token_ids) for c in conversations], np.int32)


def padded_length(lengths: Sequence[int] | np.ndarray, multiple: int = 64) -> int:
    """The one sequence length S of a run: the longest example rounded up to a multiple of ``multiple``."""
    return bucket_length(int(np.max(lengths, initial=1)), int(multiple))


def image_slots(conversations: Sequence[Conversation]) -> int:
    """I: the most images one conversation carries (0 for text-only data), a static shape for the whole run."""
    return max((sum(m.image is not None for m in c) for c in conversations), default=0)


def sft_batch(tokenizer: ChatTokenizer, conversations: Sequence[Conversation], image_config: ImageProcessorConfig,
              *, length: int, num_image_slots: int = 0) -> dict[str, np.ndarray]:
    """The train-step batch of ``conversations`` padded to exactly ``length`` tokens (an example longer than that is
    an error, never truncated). With ``num_image_slots`` > 0 the vision entries are present with I = that many
    slots, also for a batch whose examples happen to hold fewer images, so every batch has the same shapes."""
    encoded = batch_conversations(tokenizer, conversations, image_config, add_generation_prompt=False,
                                  padding_side="right", bucket=int(length), max_length=int(length),
                                  num_image_slots=num_image_slots or None)
    batch = {"input_ids": encoded.input_ids, "attention_mask": encoded.attention_mask,
             "position_ids": encoded.position_ids, "loss_mask": encoded.assistant_mask}
    if num_image_slots:
        batch.update(pixel_values=encoded.pixel_values, aspect_ratio_ids=encoded.aspect_ratio_ids,
                     aspect_ratio_mask=encoded.aspect_ratio_mask, cross_attention_mask=encoded.cross_attention_mask)
    return batch


def mask_rows(batch: Mapping[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    """The batch with the loss mask zeroed on rows where ``keep`` (B,) is False: filler rows that pad the last
    evaluation batch to the fixed batch size add nothing to the summed loss or token counts."""
    out = dict(batch)
    out["loss_mask"] = batch["loss_mask"] * np.asarray(keep, batch["loss_mask"].dtype)[:, None]
    return out


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a batch that ``model.forward`` takes as keyword arguments."""
    return {key: batch[key] for key in MODEL_INPUT_KEYS if key in batch}


def forward_from_batch(params: Any, batch: Mapping[str, Any], *, config: Any) -> Any:
    """``logits_fn`` for ``sft.step``: ``model.forward(params, config, **model_inputs(batch))`` -> (B, S, V)."""
    from model.forward import forward

    inputs = model_inputs(batch)
    return forward(params, config, inputs.pop("input_ids"), **inputs)


def prompt_of(conversation: Conversation) -> Conversation:
    """The conversation up to (not including) its last assistant turn: what a policy is asked to answer."""
    last = max(i for i, m in enumerate(conversation) if m.role == "assistant")
    return tuple(conversation[:last])
