"""Packing: several short SFT examples in one row of a batch, each still seeing only itself. Host-side numpy for
the batch, one jnp function for the forward pass.

A packed batch is an ``sft_batch`` (sft/batches.py) with one more entry, ``segment_ids`` (B, S) int32: 1, 2, ...
for the examples of a row in order, 0 on padding. Every example keeps what it has alone:

  input_ids, loss_mask      its tokens and its assistant mask, copied at its offset in the row (an example's
                            first token is <|begin_of_text|>, never a target, so no target crosses a boundary)
  position_ids              0, 1, ... restarting at every example (RoPE sees the positions it sees alone)
  attention_mask            1 on every real token of the row
  pixel_values, aspect_ratio_ids, aspect_ratio_mask (B, I, ...)
                            the row's images in example order: example j's images take the slots after
                            those of examples 1..j-1 (I = the most images a packed row may hold)
  cross_attention_mask (B, S, I, T)
                            each token's own example's tiles, at that example's slots
  image_segment_ids (B, I)  the example (segment id) each image slot belongs to, 0 for an empty slot

and ``packed_forward_from_batch`` runs the model with a block-diagonal causal self-attention mask: query i sees
key j when j <= i, j is a real token and both are in the same example (padding queries see what a right-padded
row's padding sees). Cross-attention: a token with allowed tiles sees exactly those; a token with none (the text
before an example's first <|image|>) attends, as in transformers, to every vision token of "its row", which for
a packed token means every tile of its own example's images (``image_segment_ids``), never another example's;
its cross-attention MLP output is zeroed by the row mask as usual. So in a vision batch every example must carry
an image (a text-only example alone has no vision tokens to fall back on; packing refuses it). The loss
(sft.loss) is unchanged: a token mean over the supervised tokens of the batch, so a packed batch gives the same
loss and per-example NLL as the same examples unpacked (tested).

``pack_rows`` plans which examples share a row: first fit in the given order, so a plan is a pure function of
the examples' lengths (and image counts).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from model.chat import Conversation, batch_conversations
from model.processor import ImageProcessorConfig
from model.tokenizer import ChatTokenizer
from sft.batches import encoded_lengths


def pack_rows(lengths: Sequence[int], length: int, *, images: Sequence[int] | None = None,
              num_image_slots: int = 0) -> list[list[int]]:
    """Rows of example indices (first fit, in order): each row's total length is at most ``length`` and, with
    ``images`` (per-example image counts), its total images at most ``num_image_slots``."""
    images = [0] * len(lengths) if images is None else list(images)
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (tokens left, image slots left) per row
    for index, (size, count) in enumerate(zip(lengths, images)):
        size, count = int(size), int(count)
        if size > length or count > num_image_slots:
            raise ValueError(f"example {index} has {size} tokens and {count} images; a packed row holds "
                             f"{length} tokens and {num_image_slots} images: raise the length or the image slots")
        for r, (tokens_left, slots_left) in enumerate(room):
            if size <= tokens_left and count <= slots_left:
                rows[r].append(index)
                room[r] = (tokens_left - size, slots_left - count)
                break
        else:
            rows.append([index])
            room.append((length - size, num_image_slots - count))
    return rows


def packed_batch(tokenizer: ChatTokenizer, conversations: Sequence[Conversation],
                 image_config: ImageProcessorConfig, *, length: int, rows: Sequence[Sequence[int]],
                 num_rows: int | None = None, num_image_slots: int = 0) -> dict[str, np.ndarray]:
    """The packed batch (module docstring) of ``conversations`` laid out as ``rows`` (lists of indices into
    ``conversations``, e.g. from ``pack_rows``), padded to ``num_rows`` rows (default ``len(rows)``; extra rows
    are all padding, loss mask 0) of ``length`` tokens, with ``num_image_slots`` image slots per row when the
    examples carry images."""
    num_rows = len(rows) if num_rows is None else int(num_rows)
    if len(rows) > num_rows:
        raise ValueError(f"the packing plan has {len(rows)} rows, more than num_rows={num_rows}")
    batch = {"input_ids": np.full((num_rows, length), tokenizer.pad_id, np.int32),
             "attention_mask": np.zeros((num_rows, length), np.int32),
             "position_ids": np.zeros((num_rows, length), np.int32),
             "loss_mask": np.zeros((num_rows, length), np.int32),
             "segment_ids": np.zeros((num_rows, length), np.int32)}
    vision = num_image_slots > 0
    if vision:
        batch["image_segment_ids"] = np.zeros((num_rows, num_image_slots), np.int32)
    for r, row in enumerate(rows):
        offset = slot = 0
        for segment, index in enumerate(row, start=1):
            conversation = conversations[index]
            count = sum(m.image is not None for m in conversation)
            if vision and not count:
                raise ValueError(f"example {index} has no image; a packed vision batch needs an image in every "
                                 "example (module docstring)")
            encoded = batch_conversations(tokenizer, [conversation], image_config, add_generation_prompt=False,
                                          padding_side="right", bucket=1, num_image_slots=count or None)
            size = int(encoded.lengths[0])
            if offset + size > length or slot + count > max(num_image_slots, 0):
                raise ValueError(f"row {r} of the packing plan does not fit {length} tokens and "
                                 f"{num_image_slots} image slots; plan it with pack_rows")
            span = slice(offset, offset + size)
            batch["input_ids"][r, span] = encoded.input_ids[0, :size]
            batch["attention_mask"][r, span] = 1
            batch["position_ids"][r, span] = np.arange(size, dtype=np.int32)
            batch["loss_mask"][r, span] = encoded.assistant_mask[0, :size]
            batch["segment_ids"][r, span] = segment
            if batch["loss_mask"][r, offset]:
                raise ValueError(f"example {index} starts with a supervised token; its first token must be the "
                                 "prompt's")
            if count:
                if "pixel_values" not in batch:
                    tiles = encoded.pixel_values.shape[2:]
                    batch.update(pixel_values=np.zeros((num_rows, num_image_slots, *tiles), np.float32),
                                 aspect_ratio_ids=np.zeros((num_rows, num_image_slots), np.int32),
                                 aspect_ratio_mask=np.zeros((num_rows, num_image_slots, tiles[0]), np.int32),
                                 cross_attention_mask=np.zeros((num_rows, length, num_image_slots, tiles[0]),
                                                               np.int32))
                slots = slice(slot, slot + count)
                batch["image_segment_ids"][r, slots] = segment
                batch["pixel_values"][r, slots] = encoded.pixel_values[0, :count]
                batch["aspect_ratio_ids"][r, slots] = encoded.aspect_ratio_ids[0, :count]
                batch["aspect_ratio_mask"][r, slots] = encoded.aspect_ratio_mask[0, :count]
                batch["cross_attention_mask"][r, span, slots] = encoded.cross_attention_mask[0, :size, :count]
            offset += size
            slot += count
    if vision and "pixel_values" not in batch:
        raise ValueError("num_image_slots > 0 but no example carries an image; pass num_image_slots=0")
    return batch


def pack(tokenizer: ChatTokenizer, conversations: Sequence[Conversation], image_config: ImageProcessorConfig, *,
         length: int, num_rows: int | None = None, num_image_slots: int = 0) -> dict[str, np.ndarray]:
    """``packed_batch`` with the first-fit plan of ``pack_rows``."""
    lengths = encoded_lengths(tokenizer, conversations)
    images = [sum(m.image is not None for m in c) for c in conversations]
    rows = pack_rows(lengths, length, images=images, num_image_slots=num_image_slots)
    return packed_batch(tokenizer, conversations, image_config, length=length, rows=rows, num_rows=num_rows,
                        num_image_slots=num_image_slots)


def segment_attention_allowed(attention_mask, segment_ids):
    """(B, S, S) bool: query i sees key j when j <= i, j is a real token and (i, j) are in one segment; padding
    queries (segment 0) see every real key before them, as in a right-padded row."""
    import jax.numpy as jnp

    slots = jnp.arange(attention_mask.shape[1])
    causal = slots[None, :] <= slots[:, None]
    query, key = segment_ids[:, :, None], segment_ids[:, None, :]
    return causal[None] & (attention_mask != 0)[:, None, :] & ((query == key) | (query == 0))


def packed_cross_attention_inputs(cross_attention_mask, image_segment_ids, segment_ids, num_patches: int, dtype):
    """``model.text.cross_attention_inputs`` for packed rows: (B, S, I, T) tile mask -> bias (B, S, V) and row mask
    (B, S, 1), where a token without any allowed tile falls back to every tile of its own example's image slots
    (``image_segment_ids`` (B, I)) instead of every vision token of the row."""
    import jax.numpy as jnp

    from model import text as T

    b, s, num_images, tiles = cross_attention_mask.shape
    allowed_tiles = cross_attention_mask.reshape(b, s, -1) != 0
    row_mask = jnp.any(allowed_tiles, axis=-1, keepdims=True)
    own = image_segment_ids[:, None, :, None] == segment_ids[:, :, None, None]  # (B, S, I, 1)
    own_tiles = jnp.broadcast_to(own, (b, s, num_images, tiles)).reshape(b, s, -1)
    allowed = jnp.where(row_mask, allowed_tiles, own_tiles)
    return T.CrossAttentionInputs(T.additive_mask(jnp.repeat(allowed, num_patches, axis=-1), dtype),
                                  row_mask.astype(dtype))


def packed_forward_from_batch(params: Any, batch: Mapping[str, Any], *, config: Any) -> Any:
    """``logits_fn`` for packed batches: ``model.forward``'s computation (model/forward.py ``forward_hidden``) with
    the segment-aware self-attention mask of ``segment_attention_allowed`` and the batch's per-example position
    ids -> logits (B, S, V). A batch without ``segment_ids`` is one segment per row (``forward_from_batch``)."""
    import jax.numpy as jnp

    from model import text as T
    from model.forward import compute_dtype, vision_states

    input_ids = batch["input_ids"]
    dtype = compute_dtype(config)
    attention_mask = batch["attention_mask"]
    segment_ids = batch.get("segment_ids")
    if segment_ids is None:
        segment_ids = (attention_mask != 0).astype(jnp.int32)
    cos, sin = T.rope_cos_sin(config.text, batch["position_ids"], dtype)
    allowed = segment_attention_allowed(attention_mask, segment_ids)
    self_inputs = T.SelfAttentionInputs(cos, sin, T.additive_mask(allowed, dtype))
    cross_kv = cross_inputs = None
    if batch.get("pixel_values") is not None:
        states = vision_states(params, config, batch["pixel_values"], batch["aspect_ratio_ids"],
                               batch["aspect_ratio_mask"]).astype(dtype)
        cross_kv = T.stacked_cross_kv(params, states, config)
        cross_inputs = packed_cross_attention_inputs(batch["cross_attention_mask"], batch["image_segment_ids"],
                                                     segment_ids, config.vision.num_patches, dtype)
    hidden, _ = T.decoder(params, config, T.embed(params, input_ids, dtype), self_inputs, cross_kv, cross_inputs)
    return T.lm_head(params, hidden)
